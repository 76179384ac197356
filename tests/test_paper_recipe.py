"""paper-8b in miniature on the CPU: the recipe file a one-GPU user runs, with only sizes overridden.

The models are a tiny random-weight Qwen3ForCausalLM with a Qwen-style tokenizer and Qwen3's
``enable_thinking`` switch (tests/tiny_qwen3.py); every stage runs: data -> baselines -> GRPO
verbalizer against the co-located oracle (``oracle: policy``) -> learned row -> reasoner SFT + GRPO
-> Qwen3 GGUF export -> table, then ``minivz serve --run`` answers a request. The policy and the
reasoner are loaded in 4-bit as the recipe says (NF4 through bitsandbytes' CPU backend) and merged
into a float32 copy of the base. What differs from the GPU run, and why: ``backend=peft`` (unsloth
needs CUDA), float32 compute instead of bf16, and the sizes.
"""

import glob
import json

import numpy as np
import pytest

pytest.importorskip("trl", reason="pip install -e '.[train]'")
pytest.importorskip("llama_cpp", reason="pip install llama-cpp-python==0.3.36")
pytest.importorskip("recbole", reason="pip install --no-deps recbole==1.2.1")
pytest.importorskip("bitsandbytes", reason="pip install 'bitsandbytes>=0.49' (the dev extra): paper-8b loads in 4-bit")

CLOSED = "<|im_start|>assistant\n<think>\n\n</think>\n\n"  # Qwen3's generation prompt with thinking off


def sizes(model: str) -> list[str]:
    return [
        f"policy_model={model}", f"reasoner_model={model}", "backend=peft", "history_len=20", "max_train_per_user=2",
        "eval_history=5", "eval_limit=10",
        "llm_eval_limit=3", "stage2_limit=3", "headroom_limit=10", "headroom_rules=recent:recent=2;titles",
        "max_steps=2", "save_steps=1", "train_examples=16", "train_history=5", "max_prompt_length=512",
        "max_completion_length=16", "num_generations=4", "per_device_train_batch_size=4",
        "gradient_accumulation_steps=1", "reasoner_max_steps=2", "reasoner_train_examples=8", "reasoner_history=5",
        "reasoner_max_length=1024", "reasoner_per_device_train_batch_size=2", "reasoner_gradient_accumulation_steps=1",
        "reasoner_save_steps=1", "reasoner_grpo_max_steps=2", "reasoner_grpo_num_generations=4",
        "reasoner_grpo_max_completion_length=8", "export_quant=q8_0", "stage2_baselines=popularity",
    ]


def _queries(run, n: int):
    """The first ``n`` test users of the run as reasoner queries (template text of 5 events)."""
    from minivz.dataset import PreparedData
    from minivz.evaluate import build_queries
    from minivz.verbalize.template import template_text

    data = PreparedData.load(run / "data")
    ex = data.examples("test").slice(0, n)
    return build_queries(data, ex, [template_text(h) for h in data.histories(ex, max_events=5)],
                         data.history_ids(ex, max_events=5))


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    from minivz.config import DataConfig, resolve
    from minivz.dataset import PreparedData
    from minivz.examples import prepare
    from minivz.pipeline import Pipeline

    from tiny_qwen3 import build_tiny_qwen3

    root = tmp_path_factory.mktemp("paper8b")
    prepare(resolve(DataConfig, recipe="paper-8b"), root / "ml")
    model = build_tiny_qwen3(root / "qwen3", PreparedData.load(root / "ml"))
    report = Pipeline("paper-8b", root / "run", sizes(model), say=print).run()
    return root / "run", model, report


@pytest.mark.slow
def test_every_stage_of_paper_8b_runs_on_a_tiny_qwen3(paper_run):
    run, model, report = paper_run
    assert [r["stage"] for r in report] == ["data", "baselines", "verbalizer", "learned", "reasoner", "export", "table"]
    res = json.loads((run / "results.json").read_text())
    assert {"template", "learned", "policy-step0"} <= {r["row"] for r in res["stage1"]}
    assert {"base-template", "reasoner-only", "two-stage"} <= {r["row"] for r in res["stage2"]}
    assert res["oracle"].startswith(f"hf:model={model}")  # `policy` is evaluated as its frozen base
    summary = json.loads((run / "reasoner-learned" / "summary.json").read_text())
    assert summary["sft_steps"] == 2 and summary["grpo_steps"] == 2  # SFT warm start, then the paper's GRPO
    assert (run / "report.html").is_file()
    # trained on NF4 base weights (the recipe's load_in_4bit, kept), merged into a plain float copy
    import yaml

    from minivz.models import load_model

    for train, flag in (("verbalizer", "load_in_4bit"), ("reasoner-learned", "reasoner_load_in_4bit")):
        assert yaml.safe_load((run / train / "config.yaml").read_text())[flag] is True
        merged = run / train / "final" / "merged"
        assert "quantization_config" not in json.loads((merged / "config.json").read_text())
        m, _ = load_model(str(merged))
        assert type(m).__name__ == "Qwen3ForCausalLM" and not any("4bit" in type(x).__name__ for x in m.modules())


@pytest.mark.slow
def test_thinking_is_off_everywhere_a_prompt_is_rendered(paper_run):
    """TRL renders the verbalizer's and the reasoner's GRPO prompts with enable_thinking=False; the hf
    reasoner, and llama.cpp reading the exported GGUF's own template, render the same closed block."""
    from minivz.reason import make_reasoner

    run, model, _ = paper_run
    for args in (run / "verbalizer" / "trl_args.json", run / "reasoner-learned" / "grpo" / "trl_args.json"):
        assert json.loads(args.read_text())["chat_template_kwargs"] == {"enable_thinking": False}
    queries = _queries(run, 4)
    hf = make_reasoner(f"hf:model={run / 'reasoner-learned' / 'final' / 'merged'}")
    ll = make_reasoner(f"llamacpp:model={glob.glob(str(run / 'export' / 'reasoner' / '*.gguf'))[0]},n_ctx=1024")
    for q in queries:
        text, _ = hf.prompt_text(q.context)
        assert text.endswith(CLOSED) and text.count("<think>") == 1
        assert ll.prompt_text(q.context) == text  # the GGUF's template, rendered by llama-cpp-python
        assert ll.prepare(q) == hf.prepare(q)
    # llama.cpp's scores of the exported Qwen3 GGUF (q8_0) against torch on the merged model: measured
    # up to 0.055 nats on these 4 users
    for a, b in zip(ll.predict(queries), hf.predict(queries)):
        assert np.abs(a.scores - b.scores).max() < 0.1 and np.argmax(a.scores) == np.argmax(b.scores)
    ll.close()


@pytest.mark.slow
def test_colocated_oracle_scores_are_the_frozen_base_scores(paper_run):
    """`oracle: policy` reads the policy's own weights with the trained adapter disabled: the same
    scores as the untouched base model, while the adapter itself is trained (not all zeros)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from minivz.reason import make_reasoner

    run, model, _ = paper_run
    tok = AutoTokenizer.from_pretrained(model)
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), run / "verbalizer" / "final")
    lora_b = [p for n, p in policy.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().max()) > 0 for p in lora_b)
    queries = _queries(run, 3)
    oracle = make_reasoner("policy", policy=(policy, tok))
    base = make_reasoner(f"hf:model={model}")
    with torch.no_grad():
        for a, b in zip(oracle.predict(queries), base.predict(queries)):
            np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_serve_run_answers_with_the_exported_qwen3_pair(paper_run):
    import httpx

    from test_serve import _start_server, _stop

    run, _, _ = paper_run
    proc, url = _start_server("--run", str(run), "--max-new-tokens", "16", reasoner=False)
    try:
        history = [{"ts": 881250949 + i, "item": t, "interaction": "rate", "rating": 4}
                   for i, t in enumerate(["Star Wars (1977)", "Fargo (1996)", "Contact (1997)"])]
        r = httpx.post(f"{url}/v1/recommend", timeout=120,
                       json={"history": history, "candidates": ["Heat (1995)", "Babe (1995)", "Casino (1995)"], "k": 3})
        assert r.status_code == 200, r.text
        assert len(r.json()["ranking"]) == 3 and isinstance(r.json()["verbalization"], str)
    finally:
        _stop(proc)
