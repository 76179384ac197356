"""Held-out reward curve of a GRPO verbalizer run (``minivz train curve RUN --data DIR``).

The per-step reward in metrics.jsonl is measured on that step's few training prompts, so on a
small run it moves more with which users were drawn than with learning. This evaluates the base
policy (step 0) and every kept checkpoint on one fixed set of held-out examples (the valid split
by default), with the run's own variant, oracle, history length and completion budget, greedy decoding:

    from minivz.train.curve import heldout_curve
    rows = heldout_curve("runs/tiny-cpu/verbalizer", "runs/tiny-cpu/data", limit=60)

Each point is a full ``minivz eval`` run in ``RUN/heldout/step_NNNNNN/`` (resumable, so a rerun
only evaluates new checkpoints). Writes ``RUN/heldout.jsonl`` (step, n, Recall@1 and MRR with
95% CIs; MRR is the mean of the rank reward the policy was trained on) and
``RUN/plots/heldout.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def _points(run: Path) -> list[tuple[int, Path | None]]:
    """(step, adapter dir) for the base policy (None) and each kept checkpoint, by step."""
    from minivz.rundir import step_checkpoints

    found = [(s, p) for s, p in step_checkpoints(run / "checkpoints") if (p / "adapter_config.json").is_file()]
    if not found:
        raise FileNotFoundError(f"{run / 'checkpoints'}: no checkpoints with a LoRA adapter (adapter_config.json); "
                                "train with `minivz train verbalizer` first")
    return [(0, None)] + found


def heldout_curve(run: str | Path, data: str | Path, split: str = "valid", limit: int = 60,
                  oracle: str | None = None, sampled: bool = False,
                  say: Callable[[str], None] = print) -> list[dict]:
    """Evaluate step 0 and every checkpoint of ``run`` on the same held-out examples; greedy, or
    (``sampled``) at the run's training temperature with a fixed seed."""
    from minivz.config import EvalConfig
    from minivz.evaluate import evaluate
    from minivz.models import adapter_base
    from minivz.pipeline import verbalizer_spec
    from minivz.plot import plot_heldout
    from minivz.config import VerbalizerTrainConfig
    from minivz.rundir import read_run_config
    from minivz.train.policy import eval_oracle

    run = Path(run)
    cfg = read_run_config(run, VerbalizerTrainConfig)  # the run's own settings, validated
    points = _points(run)
    base = adapter_base(points[1][1])  # the base the adapters were trained on (the policy's HF dir)
    tag = "heldout-sampled" if sampled else "heldout"
    oracle = oracle or eval_oracle(cfg)  # `policy` -> hf: on the same base model
    rows = []
    for step, adapter in points:
        # the decoding the policy is used with (its variant, render and completion budget): the pipeline's spec
        spec = (verbalizer_spec(cfg, base, sampled=sampled) if adapter is None
                else verbalizer_spec(cfg, adapter=adapter, sampled=sampled))
        out = run / tag / f"step_{step:06d}"
        m = evaluate(EvalConfig(data=str(data), verbalizer=spec, reasoner=oracle, eval_split=split, limit=limit,
                                eval_history=cfg.train_history, out=str(out), seed=cfg.seed))["all"]
        row = {"step": step, "n": m["n"], "split": split, "oracle": oracle, "decoding": "sampled" if sampled else "greedy",
               **{k: m[k] for k in ("recall@1", "recall@1_ci", "mrr", "mrr_ci")}, "eval_dir": str(out)}
        rows.append(row)
        say(f"  step {step:>4}: R@1 {row['recall@1']:.3f} [{row['recall@1_ci'][0]:.3f}, "
            f"{row['recall@1_ci'][1]:.3f}]  MRR {row['mrr']:.3f} (n={row['n']})")
    (run / f"{tag}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_heldout(rows, run / "plots" / f"{tag}.png")
    return rows
