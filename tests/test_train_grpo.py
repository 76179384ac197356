"""GRPO verbalizer training end to end on CPU: tiny random Llama policy, real MovieLens-100K data.

The policy is built in a fixture (2 layers, hidden 32, a BPE tokenizer trained here on the data's
own template text, a ChatML chat template); the oracle is a real text-reading object following the
Reasoner protocol (candidates scored by word overlap with the verbalization), so the accuracy
reward depends on what the policy writes. Nothing is downloaded.

    pytest tests/test_train_grpo.py            # fast parts + the slow end-to-end runs
    pytest tests/test_train_grpo.py -m "not slow"
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP crawls on shared cores

import numpy as np
import pytest
from conftest import loaded_after, require_deepspeed

from minivz.config import ConfigError, resolve, to_dict
from minivz.config import VerbalizerTrainConfig

torch = pytest.importorskip("torch", reason="pip install torch==2.13.0")
pytest.importorskip("trl", reason="pip install -e '.[train]'")
pytest.importorskip("peft", reason="pip install -e '.[train]'")


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml_data(tmp_path_factory):
    from minivz.config import DataConfig
    from minivz.examples import prepare

    out = tmp_path_factory.mktemp("ml100k")
    prepare(resolve(DataConfig, recipe="tiny-cpu", overrides=["max_train_per_user=1"]), out)
    return out


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory, ml_data):
    """A random 2-layer Llama (hidden 32) + byte-level BPE trained on template lines and titles."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from minivz.dataset import PreparedData
    from minivz.prompt import load_prompt
    from minivz.verbalize.template import template_text

    data = PreparedData.load(ml_data)
    ex = data.examples("train", limit=60)
    corpus = [template_text(h) for h in data.histories(ex, max_events=10)]
    corpus += data.items["title"].to_pylist()[:300]
    p = load_prompt("verbalizer_rewrite_v1", "verbalizer")
    corpus += [p.system, p.user] * 5
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    path = tmp_path_factory.mktemp("tiny_policy")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(path)
    return path


class OverlapOracle:
    """Reads the text: candidate score = share of its title words found in the verbalization."""

    name = "overlap"

    def __init__(self):
        self.calls = 0

    def predict(self, queries):
        from minivz.reason.base import Prediction

        self.calls += 1
        out = []
        for q in queries:
            ctx = set(re.findall(r"\w+", q.context.lower()))
            scores = []
            for c in q.candidates:
                words = re.findall(r"\w+", c.lower())
                scores.append(sum(w in ctx for w in words) / max(len(words), 1))
            out.append(Prediction.from_scores(np.array(scores)))
        return out


def tiny_cfg(policy_dir, **over):
    base = dict(policy_model=str(policy_dir), backend="peft", max_steps=2, num_generations=4,
                per_device_train_batch_size=4, train_examples=16, train_history=5, max_prompt_length=1024,
                max_completion_length=24, learning_rate=5e-2, lora_r=4, lora_alpha=8, save_steps=1,
                accuracy_reward="rank", w_length=0.5, seed=0)
    base.update(over)
    return resolve(VerbalizerTrainConfig, overrides=[f"{k}={v}" for k, v in base.items()])


def read_jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# -- fast tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, needle", [
    (["num_generations=3"], r"num_generations=3 must divide .* try --set num_generations=4"),
    (["num_generations=1"], "group of >= 2"),
    (["backend=gpu"], "backend"),
    (["variant=summary"], "variant"),
    (["accuracy_reward=fuzzy"], "accuracy_reward"),
    (["length_lo=0.8", "length_hi=0.2"], "length_lo"),
    (["temperature=0"], "temperature"),
    (["variant=action", "max_completion_length=64"], "max_completion_length=148"),
    (["vllm_mode=remote"], "vllm_mode"),
    (["w_accuracy=0", "w_length=0"], "not both 0"),
])
def test_config_errors_say_how_to_fix(override, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve(VerbalizerTrainConfig, overrides=override)


def test_group_check_counts_the_processes_of_a_launch(monkeypatch):
    """TRL's generation batch is per-device batch x accumulation x world size: 2 prompts' completions per
    process make whole groups of 4 across 2 processes, not in one."""
    over = ["num_generations=4", "per_device_train_batch_size=2", "gradient_accumulation_steps=1"]
    with pytest.raises(ConfigError, match=r"= 2 \(TRL's generation batch"):
        resolve(VerbalizerTrainConfig, overrides=over)
    monkeypatch.setenv("WORLD_SIZE", "2")  # what accelerate launch / torchrun set in every process
    assert resolve(VerbalizerTrainConfig, overrides=over).num_generations == 4
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"\* 3 processes = 6 .* try --set num_generations=6"):
        resolve(VerbalizerTrainConfig, overrides=over)


def test_config_from_recipe_and_sections():
    from minivz.config import SECTIONS

    assert SECTIONS.count(VerbalizerTrainConfig) == 1
    cfg = resolve(VerbalizerTrainConfig, recipe="paper-8b")
    assert cfg.policy_model == "Qwen/Qwen3-8B" and cfg.backend == "unsloth" and cfg.load_in_4bit
    assert cfg.oracle == "policy"  # co-located on the policy's GPU
    assert cfg.generation_batch_size % cfg.num_generations == 0


def test_prompt_rows_use_the_inference_prompt(ml_data):
    """The policy is trained on exactly the messages RewriteVerbalizer sends at inference."""
    from minivz.dataset import PreparedData
    from minivz.train.grpo import build_prompt_rows
    from minivz.verbalize import make_verbalizer
    from minivz.verbalize.template import template_text

    data = PreparedData.load(ml_data)
    cfg = resolve(VerbalizerTrainConfig, overrides=["train_examples=5", "train_history=7"])
    rows = build_prompt_rows(cfg, data)
    assert len(rows) == 5
    ex = data.examples("train")
    by_id = {int(i): k for k, i in enumerate(ex["example_id"].to_numpy())}
    sel = ex.take([by_id[r["example_id"]] for r in rows])
    hists = data.histories(sel, max_events=7)
    assert [r["prompt"] for r in rows] == make_verbalizer("rewrite:max_events=7").build_prompts(hists, fit=False)
    for r, h, lab, cands in zip(rows, hists, sel["label"].to_pylist(), sel["candidates"].to_pylist()):
        assert r["history_text"] == template_text(h) and r["template_chars"] == len(r["history_text"])
        assert r["label"] == lab and r["candidate_ids"] == cands
        assert r["candidates"] == data.item_texts(cands) and len(r["history_ids"]) == r["n_events"] == len(h)


def test_prompt_rows_fit_the_token_budget(ml_data, tiny_policy):
    from transformers import AutoTokenizer

    from minivz.dataset import PreparedData
    from minivz.train.grpo import build_prompt_rows

    tok = AutoTokenizer.from_pretrained(tiny_policy)
    cfg = resolve(VerbalizerTrainConfig, overrides=["train_examples=4", "train_history=20", "max_prompt_length=300"])
    rows = build_prompt_rows(cfg, PreparedData.load(ml_data), tok)
    for r in rows:
        n = len(tok.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True)["input_ids"])
        assert n <= 300 and 1 <= r["n_events"] < 20  # oldest events dropped to fit


def test_step_advantages_match_trl_with_exclusions():
    """samples.jsonl's advantages = TRL's nan-aware formula (excluded rows: out of the baseline, 0)."""
    from trl.trainer.utils import nanstd

    from minivz.train.callbacks import step_advantages

    r = np.array([1.0, 0.2, np.nan, 0.5, 0.3, 0.3, 0.3, 0.9, np.nan, np.nan, np.nan, 0.4])
    t = torch.tensor(r).view(-1, 4)
    mean = torch.nanmean(t, dim=1).repeat_interleave(4)
    std = nanstd(t, dim=1).repeat_interleave(4)
    trl_adv = torch.nan_to_num((torch.tensor(r) - mean) / (std + 1e-4), nan=0.0).numpy()
    np.testing.assert_allclose(step_advantages(r, 4), trl_adv, rtol=1e-6, atol=1e-9)


def test_memory_estimate_without_torch_import():
    import subprocess
    import sys

    code = ("import sys; from minivz.config import resolve, to_dict; from minivz.config import VerbalizerTrainConfig;"
            "from minivz.train.memory import estimate_memory;"
            "e = estimate_memory(resolve(VerbalizerTrainConfig, recipe='paper-8b'));"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules);"
            "print(e['total_gib'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 6 < float(out.stdout) < 24  # 8B in 4-bit + LoRA fits the recipe's 24 GB GPU


# -- slow: real GRPO steps ---------------------------------------------------------------------------


@pytest.mark.slow
def test_grpo_trains_lora_and_writes_run_dir(tmp_path, ml_data, tiny_policy):
    from safetensors.torch import load_file

    from minivz.train.grpo import train_verbalizer

    run = tmp_path / "run"
    oracle = OverlapOracle()
    summary = train_verbalizer(tiny_cfg(tiny_policy), ml_data, run, oracle=oracle, progress=False)
    assert summary["steps"] == 2 and summary["backend"] == "peft" and summary["excluded"] == 0
    assert oracle.calls == 2  # one batched oracle call per step

    for name in ("config.yaml", "env.json", "trl_args.json", "metrics.jsonl", "samples.jsonl"):
        assert (run / name).is_file(), name
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["length"] <= 1 and m["compression_ratio"] >= 0
        assert m["reward"] == pytest.approx(m["accuracy"] + 0.5 * m["length"])
        assert m["completions"] == 4 and m["excluded"] == 0 and m["step_seconds"] > 0
        assert m["rewards/accuracy/mean"] == pytest.approx(m["accuracy"], abs=1e-5)  # TRL saw the same
    samples = read_jsonl(run / "samples.jsonl")
    assert len(samples) == 8 and {s["step"] for s in samples} == {1, 2}
    for s in samples:
        assert s["history"] and isinstance(s["verbalization"], str) and "advantage" in s
    adv = np.array([s["advantage"] for s in samples]).reshape(2, 4)
    np.testing.assert_allclose(adv.sum(1), 0, atol=1e-6)  # group-relative
    assert np.abs(adv).max() > 0

    # checkpoints renamed to the run contract; final adapter + merged model
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000001", "step_000002"]
    assert (run / "final" / "adapter_model.safetensors").is_file()
    lora = load_file(run / "final" / "adapter_model.safetensors")
    b = [v for k, v in lora.items() if "lora_B" in k]
    assert b and any(v.abs().max() > 0 for v in b)  # LoRA B starts at zero: training moved it
    from minivz.verbalize.generate import HFGenerator

    gen = HFGenerator(str(run / "final" / "merged"), batch_size=2)
    assert len(gen.generate([[{"role": "user", "content": "hi"}]], max_new_tokens=4)) == 1


def test_report_to_tensorboard_and_trackio_offline(tmp_path, ml_data, tiny_policy, monkeypatch):
    """TRL's report_to passes through: TensorBoard event files and trackio's local store get the same
    loss TRL logged to metrics.jsonl, with no network (HF_HUB_OFFLINE, trackio without a Space)."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("trackio")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from minivz.train.grpo import train_verbalizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    cfg = tiny_cfg(tiny_policy, report_to="tensorboard,trackio", project="minivz-test")
    train_verbalizer(cfg, ml_data, run, oracle=OverlapOracle(), progress=False)
    assert json.loads((run / "trl_args.json").read_text())["report_to"] == ["tensorboard", "trackio"]
    events = list((run / "checkpoints" / "runs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tb_loss = [e.value for e in acc.Scalars("train/loss")]
    ours = [m["loss"] for m in read_jsonl(run / "metrics.jsonl") if "loss" in m]
    assert len(tb_loss) == 2 and tb_loss == pytest.approx(ours, abs=1e-6)
    from trackio.sqlite_storage import SQLiteStorage

    store = Path(os.environ["TRACKIO_DIR"])  # tests/conftest.py: a temporary folder
    assert (store / "minivz-test.db").is_file()  # the project's local database, nothing uploaded
    logged = SQLiteStorage.get_logs(project="minivz-test", run=SQLiteStorage.get_runs("minivz-test")[-1])
    assert [m["train/loss"] for m in logged if "train/loss" in m] == pytest.approx(ours, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["cpu", "zero3-cpu"])
def test_pipeline_launches_grpo_as_two_cpu_processes(tmp_path, ml_data, tiny_policy, launch):
    """hardware: multi-gpu, rehearsed on CPU: the pipeline's own `accelerate launch` (MULTI_CPU, gloo,
    2 processes; or DeepSpeed ZeRO-3 on its CPU accelerator) runs the verbalizer's GRPO to the end; the
    main process alone writes the run dir (one metrics line per step, one final adapter); a rerun with
    more steps resumes where it stopped."""
    pytest.importorskip("accelerate")
    if launch == "zero3-cpu":
        require_deepspeed()
    from minivz.pipeline import Pipeline

    out = tmp_path / "run"
    out.mkdir()
    (out / "data").symlink_to(ml_data)
    over = ["hardware=multi-gpu", f"accelerate_config=recipes/accelerate/{launch}.yaml", "num_processes=2",
            f"policy_model={tiny_policy}", "policy_gguf=", "backend=peft", "max_steps=2", "save_steps=1",
            "num_generations=4", "per_device_train_batch_size=4", "gradient_accumulation_steps=1",
            "train_examples=16", "train_history=5", "max_prompt_length=1024", "max_completion_length=16",
            "lora_layers=0", "oracle=knn"]
    said = []
    pipe = Pipeline("tiny-cpu", out, over, say=said.append)
    info = pipe.stage_verbalizer()
    argv = info["launched"]
    assert argv[:2] == ["accelerate", "launch"] and argv[argv.index("--num_processes") + 1] == "2"
    run = out / "verbalizer"
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]  # written once, by rank 0
    # two processes really trained: rank 0 logged its share (4 completions) of each 8-completion step
    assert all(m["processes"] == 2 and m["completions"] == 4 for m in metrics)
    assert len(read_jsonl(run / "samples.jsonl")) == 8
    assert (run / "final" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000001", "step_000002"]
    # a stopped run continued (the kill + rerun path: resume from the last checkpoint, train what is
    # left): both processes load the optimizer state saved on cpu:0 and train step 3 only
    Pipeline("tiny-cpu", out, [o if o != "max_steps=2" else "max_steps=3" for o in over], say=said.append
             ).stage_verbalizer()
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000002", "step_000003"]


@pytest.mark.slow
def test_lora_parameters_change(tmp_path, ml_data, tiny_policy):
    """Every LoRA tensor that gets gradient changes; the base weights do not."""
    from safetensors.torch import load_file

    from minivz.train.grpo import train_verbalizer

    run = tmp_path / "run"
    train_verbalizer(tiny_cfg(tiny_policy, max_steps=1), ml_data, run, oracle=OverlapOracle(), progress=False)
    after = load_file(run / "final" / "adapter_model.safetensors")
    # Re-create the initial adapter with the same seed: peft's init is seeded by torch.manual_seed(cfg.seed)
    from minivz.train.policy import load_policy

    torch.manual_seed(0)
    model, _tok = load_policy(tiny_cfg(tiny_policy), "peft")
    init = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}
    changed = 0
    for k, v in after.items():
        key = next(n for n in init if n.replace(".default", "").endswith(k.split("base_model.model.")[-1]))
        changed += not torch.allclose(init[key], v)
    assert changed >= len(after) // 2, f"only {changed}/{len(after)} LoRA tensors changed"
    base = load_file(run / "final" / "merged" / "model.safetensors")
    assert any("q_proj" in k for k in base)


@pytest.mark.slow
def test_colocated_policy_oracle_trains_with_the_frozen_base(tmp_path, ml_data, tiny_policy, monkeypatch):
    """oracle=policy: GRPO's rewards come from the policy's own base weights with the adapter
    disabled (no second model), and evaluation outside training reads the same base through hf:."""
    from minivz.reason import hf
    from minivz.train.policy import eval_oracle
    from minivz.train.grpo import train_verbalizer

    calls = []
    real = hf.FrozenBaseReasoner.predict

    def disabled():  # each LoRA layer's state (BaseTunerLayer.disable_adapters is a bool property)
        return [m.disable_adapters for m in calls_model[0].modules()
                if isinstance(getattr(type(m), "disable_adapters", None), property)]

    calls_model = []

    def spy(self, queries):
        calls_model[:] = [self.model]
        before = disabled()
        out = real(self, queries)
        calls.append((len(queries), self.model.training, before + disabled()))
        return out

    monkeypatch.setattr(hf.FrozenBaseReasoner, "predict", spy)
    cfg = tiny_cfg(tiny_policy, oracle="policy:norm=sum", gradient_checkpointing="true")
    summary = train_verbalizer(cfg, ml_data, tmp_path / "run", progress=False)
    assert summary["steps"] == 2
    assert [c[0] for c in calls] == [4, 4] and all(c[1] for c in calls)  # train mode restored after scoring
    # the adapter is on before and after each scoring, for the policy's own steps
    assert all(a and not any(a) for _, _, a in calls)
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2] and all(0 <= m["accuracy"] <= 1 for m in metrics)
    assert eval_oracle(cfg) == f"hf:model={tiny_policy},device=auto,dtype=auto,norm=sum"
    assert eval_oracle(tiny_cfg(tiny_policy, oracle="mention")) == "mention"


@pytest.mark.slow
def test_killed_run_resumes_from_last_checkpoint(tmp_path, ml_data, tiny_policy):
    from minivz.train.grpo import train_verbalizer

    run = tmp_path / "run"
    train_verbalizer(tiny_cfg(tiny_policy, max_steps=2, save_steps=1), ml_data, run, oracle=OverlapOracle(),
                     progress=False)
    # a "killed" run: a torn metrics line past the checkpoint is dropped on resume
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "reward": 0.1}\n{"step": 4, "rew')
    oracle = OverlapOracle()
    summary = train_verbalizer(tiny_cfg(tiny_policy, max_steps=3, save_steps=1), ml_data, run, oracle=oracle,
                               progress=False)
    assert summary["resumed_from"].endswith("step_000002") and summary["steps"] == 3
    assert oracle.calls == 1  # only step 3 was trained
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    assert {s["step"] for s in read_jsonl(run / "samples.jsonl")} == {1, 2, 3}
    state = json.loads((run / "checkpoints" / "step_000003" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    # resume=False starts over
    summary = train_verbalizer(tiny_cfg(tiny_policy, max_steps=1), ml_data, run, oracle=OverlapOracle(),
                               progress=False, resume=False)
    assert summary["resumed_from"] is None and [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1]


def test_rerunning_a_finished_run_trains_nothing(tmp_path, ml_data, tiny_policy):
    """The same command again on a finished run: no step past max_steps (resuming at max_steps used to
    train step max_steps + 1), the records untouched."""
    from minivz.train.grpo import train_verbalizer

    run = tmp_path / "run"
    cfg = tiny_cfg(tiny_policy, max_steps=2, save_steps=1)
    train_verbalizer(cfg, ml_data, run, oracle=OverlapOracle(), progress=False)
    before = (run / "metrics.jsonl").read_text()
    oracle = OverlapOracle()
    summary = train_verbalizer(cfg, ml_data, run, oracle=oracle, progress=False)
    assert summary["steps"] == 2 and summary["resumed_from"].endswith("step_000002") and oracle.calls == 0
    assert (run / "metrics.jsonl").read_text() == before
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000001", "step_000002"]


def test_oracle_down_mid_training_saves_a_checkpoint_and_a_rerun_resumes(tmp_path, ml_data, tiny_policy):
    """Training against an oracle that dies at step 3 stops with a clear message and a checkpoint at
    step 2 (save_steps=100 would have kept none); the rerun with the oracle back trains steps 3-4."""
    from minivz.reason.base import ReasonerError
    from minivz.rundir import latest_checkpoint
    from minivz.train.grpo import train_verbalizer
    from minivz.train.rewards import OracleDown

    class Dies(OverlapOracle):
        def predict(self, queries):
            if self.calls >= 2:
                raise ReasonerError("openai: POST http://127.0.0.1:9/v1/chat/completions failed: refused")
            return super().predict(queries)

    run = tmp_path / "run"
    cfg = tiny_cfg(tiny_policy, max_steps=4, save_steps=100)
    with pytest.raises(OracleDown, match=r"stopped at step 3; saved a checkpoint at step 2 .*rerun the same command"):
        train_verbalizer(cfg, ml_data, run, oracle=Dies(), progress=False)
    assert latest_checkpoint(run / "checkpoints")[0] == 2
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    oracle = OverlapOracle()
    summary = train_verbalizer(cfg, ml_data, run, oracle=oracle, progress=False)
    assert summary["resumed_from"].endswith("step_000002") and summary["steps"] == 4 and oracle.calls == 2


@pytest.mark.slow
def test_kill_9_mid_training_then_rerun_matches_an_uninterrupted_run(tmp_path, ml_data, tiny_policy):
    """`minivz train verbalizer` killed with SIGKILL after its step-2 checkpoint, then rerun: the same
    per-step rewards and the same final LoRA weights as one uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch
    from safetensors.torch import load_file

    cfg = tiny_cfg(tiny_policy, max_steps=4, save_steps=1, oracle="mention")
    sets = [x for k, v in to_dict(cfg).items() if v is not None and not isinstance(v, (list, dict))
            for x in ("--set", f"{k}={v}")]
    ref, run = tmp_path / "ref", tmp_path / "run"
    argv = [sys.executable, "-m", "minivz.cli", "train", "verbalizer", "--data", str(ml_data), *sets]
    subprocess.run([*argv, "--out", str(ref)], check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen([*argv, "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "step_000002" / "trainer_state.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before it could be killed"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "final").exists()
    p = subprocess.run([*argv, "--out", str(run)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resuming from" in p.stderr
    rewards = [[round(m["reward"], 6) for m in read_jsonl(d / "metrics.jsonl")] for d in (ref, run)]
    assert rewards[0] == rewards[1] and len(rewards[0]) == 4
    a, b = (load_file(d / "final" / "adapter_model.safetensors") for d in (ref, run))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


# -- CLI and plot (fast) -------------------------------------------------------------------------------


def test_cli_help_dry_run_and_usage_errors():
    from typer.testing import CliRunner

    from minivz.cli import train_app

    runner = CliRunner()
    res = runner.invoke(train_app, ["verbalizer", "--help"])
    assert res.exit_code == 0 and "--dry-run" in res.output and "Example" in res.output
    res = runner.invoke(train_app, ["verbalizer", "--recipe", "paper-8b", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "policy_model: Qwen/Qwen3-8B" in res.output and "# memory plan" in res.output
    assert "total" in res.output and "oracle_scoring" in res.output
    res = runner.invoke(train_app, ["verbalizer", "--recipe", "paper-8b", "--set", "num_generations=3", "--dry-run"])
    assert res.exit_code == 2 and "try --set num_generations=8" in res.output
    res = runner.invoke(train_app, ["verbalizer", "--set", "max_stepz=3", "--dry-run"])
    assert res.exit_code == 2 and "did you mean 'max_steps'" in res.output
    res = runner.invoke(train_app, ["verbalizer", "--recipe", "paper-8b"])
    assert res.exit_code == 2 and "--data DIR and --out RUN are required" in res.output


def test_plot_writes_pngs(tmp_path):
    from typer.testing import CliRunner

    from minivz.plot import plot_run, summarize_run

    rng = np.random.default_rng(0)
    with (tmp_path / "metrics.jsonl").open("w") as f:
        for s in range(1, 31):
            f.write(json.dumps({"step": s, "reward": 0.2 + s / 100, "accuracy": rng.random(), "length": 0.9,
                                "compression_ratio": 0.5, "step_seconds": 3.0, "oracle_seconds": 0.1}) + "\n")
        f.write('{"step": 31, "rew')  # a line torn by a kill is ignored
    (tmp_path / "config.yaml").write_text("length_lo: 0.2\nlength_hi: 0.6\n")
    paths = plot_run(tmp_path)
    assert {p.name for p in paths} == {"rewards.png", "compression_ratio.png", "step_seconds.png"}
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    s = summarize_run(tmp_path)
    assert s["steps"] == 30 and s["first"]["reward"] == pytest.approx(0.255) and s["last"]["reward"] == pytest.approx(0.455)

    import typer

    from minivz.cli import plot_command

    app = typer.Typer()
    app.command()(plot_command)
    res = CliRunner().invoke(app, [str(tmp_path)])
    assert res.exit_code == 0 and "rewards.png" in res.output
    res = CliRunner().invoke(app, [str(tmp_path / "nope")])
    assert res.exit_code == 2 and "metrics.jsonl not found" in res.output


def test_exactly_one_module_imports_unsloth():
    from pathlib import Path

    import minivz

    root = Path(minivz.__file__).parent
    hits = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                  if re.search(r"^\s*(import unsloth|from unsloth\b)", p.read_text(), re.M))
    assert hits == ["train/unsloth_policy.py"]


def test_importing_train_loads_no_torch():
    code = ("import minivz.train, minivz.cli, minivz.train.grpo, minivz.train.rewards, minivz.plot;"
            "from minivz.config import VerbalizerTrainConfig")
    assert loaded_after(code, ("torch", "trl", "transformers", "unsloth", "matplotlib")) == []


@pytest.mark.gpu
def test_unsloth_backend_on_gpu(tmp_path, ml_data, tiny_policy):
    """The GPU recipe path (Unsloth FastLanguageModel), in a fresh process: unsloth must be imported
    before trl/transformers/peft, which this test module has already imported."""
    import subprocess
    import sys

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("unsloth", reason="pip install unsloth==2026.10.9 trl==1.15.0")
    code = ("from minivz.config import resolve; from minivz.config import VerbalizerTrainConfig;"
            "from minivz.train.grpo import train_verbalizer;"
            f"cfg = resolve(VerbalizerTrainConfig, overrides=['policy_model={tiny_policy}', 'backend=unsloth',"
            "'max_steps=2', 'train_examples=8', 'train_history=5', 'max_completion_length=16', 'oracle=knn',"
            "'save_steps=1', 'lora_r=4']);"
            f"s = train_verbalizer(cfg, '{ml_data}', '{tmp_path / 'run'}', progress=False);"
            "assert s['backend'] == 'unsloth' and s['steps'] == 2, s")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_heldout_curve_evaluates_base_and_each_checkpoint(tmp_path, ml_data, tiny_policy):
    from minivz.train.curve import heldout_curve
    from minivz.train.grpo import train_verbalizer

    run = tmp_path / "run"
    train_verbalizer(tiny_cfg(tiny_policy), ml_data, run, oracle=OverlapOracle(), progress=False)
    said = []
    rows = heldout_curve(run, ml_data, split="valid", limit=4, oracle="mention", say=said.append)
    assert [r["step"] for r in rows] == [0, 1, 2] and len(said) == 3
    assert all(r["n"] == 4 and 0 <= r["recall@1"] <= 1 and r["mrr_ci"][0] <= r["mrr"] <= r["mrr_ci"][1]
               for r in rows)
    assert read_jsonl(run / "heldout.jsonl") == json.loads(json.dumps(rows))
    assert (run / "plots" / "heldout.png").stat().st_size > 0
    ids = [[s["example_id"] for s in read_jsonl(Path(r["eval_dir"]) / "samples.jsonl")] for r in rows]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 4  # one fixed held-out set
    cfgs = [(Path(r["eval_dir"]) / "config.yaml").read_text() for r in rows]
    assert "adapter=" not in cfgs[0] and str(tiny_policy) in cfgs[0]  # step 0 = the base policy
    assert "step_000001" in cfgs[1] and "max_new_tokens=24" in cfgs[1]  # the run's completion budget

    with pytest.raises(FileNotFoundError, match="config.yaml not found"):
        heldout_curve(tmp_path / "nothing", ml_data)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text("variant: rewrite\n")
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        heldout_curve(tmp_path / "empty", ml_data)


def test_select_variant_trains_on_rendered_lines_with_top_layer_lora(tmp_path, ml_data, tiny_policy):
    """The select policy: the oracle reads the template lines code renders from the answer; LoRA
    only on the last layer (lora_layers=1) leaves the first layer without adapters."""
    from safetensors.torch import load_file

    from minivz.train.curve import heldout_curve
    from minivz.train.grpo import train_verbalizer
    from minivz.verbalize import parse_selection, render_selection

    run = tmp_path / "run"
    cfg = tiny_cfg(tiny_policy, variant="select", lora_layers=1, accuracy_reward="soft", temperature=0.7)
    summary = train_verbalizer(cfg, ml_data, run, oracle=OverlapOracle(), progress=False)
    assert summary["steps"] == 2
    for s in read_jsonl(run / "samples.jsonl"):
        lines = s["history"].splitlines()
        picks, _ = parse_selection(s["completion"], len(lines))
        assert s["verbalization"] == render_selection(lines, picks)  # what the oracle read
        assert set(s["verbalization"].splitlines()) <= set(lines)  # never a line that was not there
        assert 0 <= s["rewards"]["accuracy"] <= 1
    lora = load_file(run / "final" / "adapter_model.safetensors")
    assert lora and all(".layers.1." in k for k in lora)  # the top layer only
    rows = heldout_curve(run, ml_data, split="valid", limit=3, oracle="mention", sampled=True, say=lambda _: None)
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["decoding"] == "sampled" for r in rows)
    cfg_text = (Path(rows[1]["eval_dir"]) / "config.yaml").read_text()
    assert "select:adapter=" in cfg_text and "temperature=0.7" in cfg_text
    assert (run / "heldout-sampled.jsonl").is_file()
