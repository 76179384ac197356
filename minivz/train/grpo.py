"""GRPO training of the verbalizer (stage 1 of the paper) with TRL's ``GRPOTrainer``.

    from minivz.config import VerbalizerTrainConfig, resolve
    from minivz.train.grpo import train_verbalizer
    cfg = resolve(VerbalizerTrainConfig, recipe="tiny-cpu")
    summary = train_verbalizer(cfg, data_dir="runs/tiny-cpu/data", out="runs/tiny-cpu/verbalizer")

What flows through one optimizer step (one process):
    P = prompts_per_step prompts (train examples: chat messages of ``verbalizer_rewrite_v1`` -- the
        prompt ``rewrite:model=RUN/final/merged`` uses at inference -- filled with the template text
        of the most recent ``train_history`` events, oldest cut first to fit ``max_prompt_length``)
    -> policy samples G = num_generations completions each: B*G = generation_batch_size texts
    -> rewards (minivz.train.rewards): accuracy from the frozen oracle reading each text, length
       plateau on chars(text) / chars(template); (B*G,) each, None = excluded
    -> TRL: total = sum_k w_k r_k, group advantages (r - mean_g) / (std_g + 1e-4), policy-gradient
       loss on the LoRA weights.

The run directory is the contract:
    RUN/config.yaml     the resolved VerbalizerTrainConfig       RUN/env.json   versions, hardware
    RUN/trl_args.json   the GRPOConfig TRL actually ran with
    RUN/metrics.jsonl   one line per step: step, reward/accuracy/length means, compression ratio,
                        step/oracle seconds, excluded samples, TRL's loss/kl/grad_norm on log steps
    RUN/samples.jsonl   one line per completion: step, example_id, history (template text), completion
                        (the policy's raw answer), verbalization (what the oracle read), rewards,
                        advantage (minivz.kernels.group_advantages)
    RUN/checkpoints/step_000050/   TRL checkpoints (LoRA adapter, optimizer, RNG, trainer state)
    RUN/final/          LoRA adapter + tokenizer;  RUN/final/merged/  merged HF model dir

A killed run resumes from its latest ``checkpoints/step_*`` when started again with the same
``out`` (``resume=False`` starts over); lines of metrics/samples past that step are dropped first.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from minivz.config import trl_args
from minivz.envinfo import passive_omp
from minivz.install import VLLM, pip
from minivz.rundir import (checkpoint_finished, is_main_process, leave_launch, record_run_config, resumable_on_cpu_ranks,
                           resume_step, rotate_checkpoints, step_checkpoints_callback, truncate_jsonl, write_env,
                           write_trl_args)


# -- the prompt dataset ------------------------------------------------------------------------------


def policy_verbalizer(variant: str, train_history: int):
    """The inference-time verbalizer whose prompt the policy is trained on (no model is loaded)."""
    from minivz.verbalize.llm import ActionVerbalizer, RewriteVerbalizer, SelectVerbalizer

    cls = {"rewrite": RewriteVerbalizer, "action": ActionVerbalizer, "select": SelectVerbalizer}[variant]
    return cls(max_events=train_history)  # the prompt does not depend on select's render


def build_prompt_rows(cfg, data, tokenizer=None) -> list[dict]:
    """One dict per train example with the policy prompt and the columns the rewards read.

    ``tokenizer`` (the policy's) fits the history into ``max_prompt_length`` tokens, dropping the
    oldest events (as ``RewriteVerbalizer`` does at inference); None = no fitting.
    """
    from minivz.evaluate import build_queries
    from minivz.prompt import fit_lines
    from minivz.verbalize.llm import select_units
    from minivz.verbalize.template import template_text

    ex = data.examples("train")
    n = min(cfg.train_examples, ex.num_rows)
    rng = np.random.default_rng(cfg.seed)
    ex = ex.take(np.sort(rng.choice(ex.num_rows, size=n, replace=False)))  # a seeded sample, all users
    hists = data.histories(ex, max_events=cfg.train_history)
    hist_ids = data.history_ids(ex, max_events=cfg.train_history)
    verb = policy_verbalizer(cfg.variant, cfg.train_history)
    count = None
    budget = cfg.max_prompt_length
    if tokenizer is not None:
        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        empty = tokenizer.apply_chat_template(verb._messages([]), tokenize=False, add_generation_prompt=True,
                                              enable_thinking=cfg.enable_thinking)
        budget = cfg.max_prompt_length - count(empty)
    queries = build_queries(data, ex, [""] * n, hist_ids)  # candidate texts and ids, as eval builds them
    rows = []
    for row, hist, ids, q in zip(ex.to_pylist(), hists, hist_ids, queries):
        if count is not None:
            lines = [verb._line(i, e) for i, e in enumerate(hist, 1)]
            kept = fit_lines(lines, budget, count)
            hist, ids = hist[len(hist) - kept:], ids[len(ids) - kept:]
        if not hist:
            continue
        text = template_text(hist)
        rows.append({
            # verb._messages is exactly what verbalize() sends for these events
            "prompt": verb._messages(hist),
            "example_id": int(row["example_id"]),
            "history_text": text,
            "template_chars": len(text),
            "n_events": len(hist),
            "history_ids": [int(i) for i in ids],
            "candidates": list(q.candidates),
            "candidate_ids": [int(i) for i in q.candidate_ids],
            "label": int(row["label"]),
            # what code renders the policy's answer from: template lines (select) or event fields (action)
            "events_json": (json.dumps(select_units(hist, cfg.select_render)) if cfg.variant == "select" else
                            json.dumps([{k: e.get(k) for k in ("title", "year", "genres", "series_id", "season",
                                                               "episode")} for e in hist], default=str)),
        })
    return rows


# -- training -----------------------------------------------------------------------------------------


def _check_vllm(cfg, on_gpu: bool) -> None:
    """TRL's own vLLM rollouts (use_vllm, vllm_mode: colocated with training, or a `trl vllm-serve`
    server) need a GPU; say so before TRL fails deep inside."""
    if cfg.use_vllm and not on_gpu:
        raise ImportError(f"use_vllm=true needs CUDA and vllm ({pip(VLLM)}); "
                          "on CPU use --set use_vllm=false")


def train_verbalizer(cfg, data_dir: str | Path, out: str | Path, *, oracle: Any = None,
                     resume: bool = True, progress: bool = True) -> dict:
    """Train (or resume) the verbalizer policy with GRPO; returns a summary dict.

    ``oracle``: a ready Reasoner object (tests); default ``make_reasoner(cfg.oracle, ...)``.
    """
    passive_omp()
    from minivz.train.policy import final_paths, load_policy, resolve_backend, save_final

    backend = resolve_backend(cfg.backend)  # first: may import unsloth before trl/transformers/peft

    import torch
    from datasets import Dataset

    from minivz.dataset import PreparedData

    run = Path(out)
    on_gpu = torch.cuda.is_available()
    step, ckpt = open_run(run, cfg, data_dir, resume, backend, on_gpu)
    main = is_main_process()  # under a launch (N processes) only rank 0 writes the run directory
    torch.manual_seed(cfg.seed)
    data = PreparedData.load(data_dir)
    model, tokenizer = load_policy(cfg, backend)
    rows = build_prompt_rows(cfg, data, tokenizer)
    if not rows:
        raise ValueError(f"{data_dir}: no train examples with a history; check `minivz data prepare`")
    rstate, funcs, weights = reward_state(cfg, data, model, tokenizer, oracle)
    args = grpo_args(cfg, run, weights, on_gpu)
    write_trl_args(run / "trl_args.json", args)
    trainer = grpo_trainer(cfg, run, model, tokenizer, Dataset.from_list(rows), rstate, funcs, weights, args, progress)
    t0 = time.perf_counter()
    finished = run_training(trainer, cfg, run, step, ckpt)
    seconds = time.perf_counter() - t0
    paths = save_final(trainer.model, tokenizer, run / "final", backend) if main else final_paths(run / "final")
    leave_launch()  # every rank waits for rank 0's final save, then the process group ends
    return {
        "run": str(run),
        "backend": backend,
        "steps": step if finished else int(trainer.state.global_step),
        "resumed_from": str(ckpt) if ckpt else None,
        "seconds": round(seconds, 1),
        "prompts": len(rows),
        "completions": rstate.totals["completions"],
        "excluded": rstate.totals["excluded"],
        **paths,
    }


def open_run(run: Path, cfg, data_dir: str | Path, resume: bool, backend: str,
             on_gpu: bool) -> tuple[int, Path | None]:
    """The run directory before training: config and environment recorded, the checkpoint to resume
    from (``resume_step``), and metrics/samples lines past it dropped (a fresh run: removed)."""
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    record_run_config(run, cfg, data_dir, resume)
    write_env(run, train_backend=backend, torch_device="cuda" if on_gpu else "cpu")
    step, ckpt = resume_step(run / "checkpoints", resume)
    if not is_main_process():
        return step, ckpt
    for name in ("metrics.jsonl", "samples.jsonl"):
        if ckpt is None:
            (run / name).unlink(missing_ok=True)
        else:
            truncate_jsonl(run / name, lambda rec: int(rec["step"]) <= step)
    if ckpt is not None:
        print(f"resuming from {ckpt} (step {step})", file=sys.stderr)
    return step, ckpt


def reward_state(cfg, data, model, tokenizer, oracle: Any = None):
    """(RewardState, TRL reward functions, their weights): the frozen oracle (``cfg.oracle``, or
    ``oracle`` when given; ``policy`` = this model with its adapter disabled, no second copy) read
    by the accuracy and length rewards."""
    from minivz.evaluate import item_stats_for
    from minivz.reason import make_reasoner
    from minivz.train.rewards import RewardState, build_reward_funcs

    if oracle is None:
        oracle = make_reasoner(cfg.oracle, item_stats=item_stats_for(data), policy=(model, tokenizer))
    rstate = RewardState(oracle, accuracy=cfg.accuracy_reward, lo=cfg.length_lo, hi=cfg.length_hi,
                         softness=cfg.length_softness, variant=cfg.variant, max_retries=cfg.max_oracle_retries,
                         render=cfg.select_render)
    funcs, weights = build_reward_funcs(["accuracy", "length"], rstate, [cfg.w_accuracy, cfg.w_length])
    return rstate, funcs, weights


def grpo_args(cfg, run: Path, weights: list[float], on_gpu: bool):
    """TRL's GRPOConfig from the recipe: num_generations, batch sizes, max_steps, learning_rate, beta,
    temperature, save/logging steps, gradient_checkpointing, seed, use_vllm/vllm_mode, report_to are
    the recipe's fields by name (``config.trl_args``); the rest is fixed here."""
    import torch
    from trl import GRPOConfig

    _check_vllm(cfg, on_gpu)
    resumable_on_cpu_ranks()
    return trl_args(
        GRPOConfig, cfg,
        output_dir=str(run / "checkpoints"),
        chat_template_kwargs={"enable_thinking": cfg.enable_thinking},
        reward_weights=weights,
        # TRL's own group advantages: (r - mean_g) / (std_g + 1e-4), which tests/test_advantages_trl.py
        # proves equal to minivz.kernels.group_advantages (used for samples.jsonl).
        scale_rewards="group",
        save_strategy="steps",
        save_total_limit=None,  # StepCheckpoints rotates step_* dirs (cfg.save_total_limit of them)
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        use_cpu=not on_gpu,
        disable_tqdm=True,  # LiveProgress draws the bar
        log_completions=False,
        dataloader_num_workers=0,
    )


def grpo_trainer(cfg, run: Path, model, tokenizer, dataset, rstate, funcs, weights, args, progress: bool):
    """The GRPOTrainer with minivz's callbacks (metrics/samples, step_* checkpoints, the progress
    bar) in place of TRL's printer."""
    from transformers import PrinterCallback
    from trl import GRPOTrainer

    from minivz.train.callbacks import LiveProgress, RunLogger

    histories = dict(zip(dataset["example_id"], dataset["history_text"]))
    logger = RunLogger(run if is_main_process() else None, rstate, dict(zip([f.__name__ for f in funcs], weights)),
                       cfg.num_generations, histories)
    callbacks = [logger, step_checkpoints_callback(run / "checkpoints", cfg.save_total_limit)]
    if progress:
        callbacks.append(LiveProgress(logger))
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # metrics.jsonl + LiveProgress replace its dict dumps
    return trainer


def run_training(trainer, cfg, run: Path, step: int, ckpt: Path | None) -> bool:
    """Train from ``ckpt`` (None: from scratch); True when ``ckpt`` already held the whole run (its
    adapter is loaded, nothing is trained). An oracle that stays down stops training with a full
    checkpoint at the last finished step and says how to resume."""
    from minivz.train.policy import load_adapter
    from minivz.train.rewards import OracleDown

    if ckpt is not None and checkpoint_finished(ckpt, cfg.max_steps):
        # a finished run rerun: Trainer.train would take one step past max_steps; load the adapter
        print(f"{run}: already trained to step {step} (max_steps={cfg.max_steps}); nothing to train",
              file=sys.stderr)
        load_adapter(trainer.model, ckpt)
        return True
    try:
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    except OracleDown as e:
        # keep the work done so far: a full checkpoint at the last finished step (the failed step had
        # not updated the weights yet: rewards come before the loss), then stop with what to do
        done = int(trainer.state.global_step)
        if done > step:
            trainer._save_checkpoint(trainer.model, trial=None)
            if is_main_process():
                rotate_checkpoints(run / "checkpoints", done, max(cfg.save_total_limit, 1))
        raise OracleDown(
            f"{e} Training stopped at step {done + 1}; "
            + (f"saved a checkpoint at step {done} ({run / 'checkpoints' / f'step_{done:06d}'}). " if done > step
               else "no new step to save. ")
            + "Bring the oracle back and rerun the same command: it resumes from the checkpoint.") from None
    return False
