"""`minivz recipe` end to end: a shortened tiny-cpu run through every stage, then its table.

Real MovieLens-100K, real SmolLM2-135M (verbalizer policy and reasoner), real GRPO / SFT steps,
real GGUF export: only the sizes are cut (2 GRPO steps, 2 SFT steps, a handful of test examples).
"""

import json
import re
import subprocess
import sys

import pytest

pytest.importorskip("trl", reason="pip install -e '.[train]'")
pytest.importorskip("llama_cpp", reason="pip install llama-cpp-python==0.3.36")
pytest.importorskip("recbole", reason="pip install --no-deps recbole==1.2.1")

SHORT = [
    "max_train_per_user=2", "eval_history=5", "eval_limit=20", "llm_eval_limit=3", "stage2_limit=3",
    "headroom_limit=20", "headroom_rules=recent:recent=2;titles",
    "baseline_verbalizers=zero-shot:max_new_tokens=16",  # row "zero-shot"
    "max_steps=2", "save_steps=1", "train_examples=16", "train_history=5", "max_completion_length=16",
    "per_device_train_batch_size=4", "gradient_accumulation_steps=1", "reasoner_max_steps=2",
    "reasoner_train_examples=8", "reasoner_history=5", "reasoner_save_steps=1", "export_quant=q8_0",
    "stage2_baselines=popularity",  # the recipe's sasrec row trains on every train sequence: minutes
]
STAGE1 = {"template", "best-rule", "zero-shot", "policy-step0", "learned", "popularity", "knn"}
STAGE2 = {"base-template", "reasoner-only", "two-stage", "stage2-popularity"}


def test_plan_and_dry_run_need_no_models(tmp_path):
    from minivz.pipeline import STAGES, Pipeline, plan

    p = plan("paper-32b")
    assert [s["stage"] for s in p["stages"]] == list(STAGES)
    argv = Pipeline("paper-32b", tmp_path).launch_command("verbalizer", tmp_path / "v")
    assert argv[:4] == ["accelerate", "launch", "--config_file", "recipes/accelerate/zero3.yaml"]
    assert "--num_processes" in argv and argv[argv.index("-m") + 1] == "minivz"
    from pathlib import Path

    recipes = sorted(p.stem for p in (Path(__file__).parents[1] / "recipes").glob("*.yaml"))
    assert {"tiny-cpu", "tiny-cpu-streaming", "gpu-smol", "paper-8b", "paper-32b"} <= set(recipes)
    for recipe in recipes:  # every recipe's --dry-run, offline, no models loaded
        out = subprocess.run([sys.executable, "-m", "minivz.cli", "recipe", recipe, "--dry-run"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "memory plan" in out.stdout and "policy_model" in out.stdout


def test_paper_8b_dry_run_shows_the_one_gpu_plan_and_refuses_what_does_not_fit():
    out = subprocess.run([sys.executable, "-m", "minivz.cli", "recipe", "paper-8b", "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ("reasoner_model: Qwen/Qwen3-8B", "policy_model: Qwen/Qwen3-8B", "reasoner_history: 100",
                   "eval_history: 100", "train_history: 100", "n_candidates: 10", "accuracy_reward: binary",
                   "oracle: policy", "enable_thinking: false", "reasoner_grpo_max_steps: 300",
                   "co-located: the policy's base weights", "GPU budget gpu_memory_gib=24"):
        assert needle in text, needle
    total = float(re.search(r"#   total\s+([\d.]+) GiB", text).group(1))
    assert 6 < total < 24
    # the same policy with its oracle as a second copy of Qwen3-8B on the GPU does not fit 24 GB:
    # refused, with the setting that fixes it
    bad = subprocess.run([sys.executable, "-m", "minivz.cli", "recipe", "paper-8b", "--dry-run",
                          "--set", "oracle=hf:model=Qwen/Qwen3-8B"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "gpu_memory_gib=24" in bad.stderr and "--set oracle=policy" in bad.stderr


@pytest.mark.slow
def test_tiny_cpu_end_to_end_and_resume(tmp_path):
    from minivz.pipeline import Pipeline

    out = tmp_path / "run"
    report = Pipeline("tiny-cpu", out, SHORT, say=print).run()
    assert [r["stage"] for r in report] == ["data", "baselines", "verbalizer", "learned", "reasoner", "export", "table"]
    res = json.loads((out / "results.json").read_text())
    assert {r["row"] for r in res["stage1"]} == STAGE1 and {r["row"] for r in res["stage2"]} == STAGE2
    # the rule is chosen on valid users, then reported on test
    assert res["best_rule"] in ("recent:recent=2", "titles")
    assert json.loads((out / "headroom" / "headroom.json").read_text())["split"] == "valid"
    for key, base in (("stage1", "template"), ("stage2", "base-template")):
        rows = res[key]
        assert rows[0]["row"] == base  # every row of a table is compared with its first
        for r in rows:
            assert 0.0 <= r["all_recall@1"] <= 1.0 and len(r["all_recall@1_ci"]) == 2
            assert "discovery_recall@1" in r
            if r["row"] != base:
                assert "all_rel" in r and "all_diff" in r  # paired on the same examples
    n = {r["row"]: r["all_n"] for r in res["stage1"] + res["stage2"]}
    assert n["template"] == n["popularity"] == n["best-rule"] == n["learned"] == 20  # eval_limit
    assert n["zero-shot"] == n["policy-step0"] == 3  # llm_eval_limit
    assert n["base-template"] == n["reasoner-only"] == n["two-stage"] == n["stage2-popularity"] == 3  # stage2_limit
    # the trained verbalizer's test text is generated once per history length and reused
    assert len((out / "verbalized" / "learned-test-h5.jsonl").read_text().splitlines()) == 20
    md = (out / "results.md").read_text()
    assert "| template |" in md and "| two-stage (trained on the learned text) |" in md
    assert "Stage 2" in md and (out / "results.png").stat().st_size > 0
    assert list((out / "export" / "verbalizer").glob("*.gguf")) and list((out / "export" / "reasoner").glob("*.gguf"))
    # the run's exported pair is one flag away, served the way the verbalizer was trained (select)
    from minivz.pipeline import run_models

    reasoner, verbalizer = run_models(out)
    assert reasoner.endswith("model-q8_0.gguf") and verbalizer.startswith("select:model=") and "backend=llama" in verbalizer
    from minivz.verbalize import make_verbalizer
    from minivz.verbalize.template import template_text

    hist = [{"ts": 881250949 + i, "title": f"Movie {i} (1995)", "interaction": "rate", "rating": 4} for i in range(6)]
    text = make_verbalizer(verbalizer).verbalize([hist])[0]
    assert text and all(line in template_text(hist).splitlines() for line in text.splitlines())
    # a rerun resumes: every stage is already complete, nothing runs again
    assert Pipeline("tiny-cpu", out, SHORT, say=print).run() == []

    # `minivz recipe` killed with SIGKILL inside GRPO (after its step-1 checkpoint), then rerun:
    # it resumes and writes the same table as the uninterrupted run above
    import os
    import signal
    import time

    killed = tmp_path / "killed"
    argv = [sys.executable, "-m", "minivz.cli", "recipe", "tiny-cpu", "--out", str(killed),
            *[x for s in SHORT for x in ("--set", s)]]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    while not (killed / "verbalizer" / "checkpoints" / "step_000001" / "trainer_state.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the recipe ended before it could be killed"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "[done] data" in p.stdout and "[done] baselines" in p.stdout
    again = json.loads((killed / "results.json").read_text())
    for key in ("stage1", "stage2"):
        assert [(r["row"], r["all_n"], r["all_recall@1"]) for r in again[key]] == \
               [(r["row"], r["all_n"], r["all_recall@1"]) for r in res[key]]


@pytest.mark.slow
def test_gpu_recipe_and_its_benchmark_script_run_shortened_on_cpu(tmp_path):
    """The GPU recipe (gpu-smol) through benchmarks/gpu_recipe.py, cut to CI size on the CPU: every
    stage, the record with stage times, GRPO step times and the tables, and the co-located oracle run."""
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "gpu_recipe.py"
    sets = [x for s in SHORT + ["num_generations=4", "reasoner_per_device_train_batch_size=2"] for x in ("--set", s)]
    p = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "run"), "--results", str(tmp_path),
                        "--colocated-steps", "1", *sets], capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.loads((tmp_path / "gpu_recipe_cpu.json").read_text())
    assert list(rec["stages"]) == ["data", "baselines", "verbalizer", "learned", "reasoner", "export", "table"]
    assert rec["grpo"]["steps"] == 2 and rec["grpo"]["step_seconds_median"] > 0
    assert {r["row"] for r in rec["stage1"]} >= {"template", "best-rule", "learned"} and rec["stage2"]
    assert rec["colocated"]["grpo"]["steps"] == 1 and rec["plan_gib"] > 0
