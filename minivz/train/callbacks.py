"""The TRL ``TrainerCallback``s of minivz's trainers: what each writes into the run directory.

    RunLogger      GRPO verbalizer: metrics.jsonl (one line per optimizer step; on log steps every
                   number TRL logs merged in: loss, kl, grad_norm, rewards/*, TRL's reward as trl_reward) and samples.jsonl (one line per
                   completion, with its rewards and group advantage), from the reward state
    LiveProgress   GRPO verbalizer: a rich progress bar with the live reward (a plain line per step
                   when stderr is not a TTY)
    MetricsLogger  reasoner SFT / GRPO: metrics.jsonl, one line per logging step with TRL's numbers

Importing this module imports transformers; the trainers import it when they train.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from minivz.rundir import append_jsonl, world_size


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def step_advantages(total: np.ndarray, group_size: int) -> np.ndarray:
    """TRL's advantages from logged totals (NaN = excluded: left out of its group's mean/std and
    given advantage 0, as TRL does), computed with ``minivz.kernels.group_advantages``."""
    from minivz.kernels import group_advantages

    adv = np.zeros_like(total)
    for s in range(0, len(total) - len(total) % group_size, group_size):
        g = total[s:s + group_size]
        ok = np.isfinite(g)
        if ok.sum() >= 2:
            adv[s:s + group_size][ok] = group_advantages(g[ok], int(ok.sum()))
    return adv


class RunLogger(TrainerCallback):
    """metrics.jsonl and samples.jsonl from the reward state, one flush per optimizer step."""

    def __init__(self, run: Path | None, state, weights: dict[str, float], group_size: int,
                 histories: dict[int, str]) -> None:
        # run=None: a process other than rank 0 (it computes its share, writes nothing)
        self.run, self.rstate, self.weights, self.g = run, state, weights, group_size
        self.world = world_size()
        self.histories = histories
        self.t_step = time.perf_counter()
        self.pending: dict | None = None
        self.last: dict = {}

    def on_train_begin(self, args, state, control, **kw):
        self.t_step = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        now = time.perf_counter()
        st = self.rstate.flush()
        n = st.n
        acc = np.array([np.nan if v is None else v for v in st.accuracy] or [np.nan] * n, dtype=float)
        ln = np.array([np.nan if v is None else v for v in st.length] or [np.nan] * n, dtype=float)
        w_a, w_l = self.weights.get("accuracy", 0.0), self.weights.get("length", 0.0)
        total = np.where(np.isnan(acc) & np.isnan(ln), np.nan,
                         w_a * np.nan_to_num(acc) + w_l * np.nan_to_num(ln)) if n else np.zeros(0)
        adv = step_advantages(total, self.g) if n else np.zeros(0)
        rec = {
            "step": int(state.global_step),
            "reward": _nan_to_none(np.nanmean(total)) if np.isfinite(total).any() else None,
            "accuracy": _nan_to_none(np.nanmean(acc)) if np.isfinite(acc).any() else None,
            "length": _nan_to_none(np.nanmean(ln)) if np.isfinite(ln).any() else None,
            "compression_ratio": _nan_to_none(float(np.mean(st.ratio))) if st.ratio else None,
            "step_seconds": round(now - self.t_step, 3),
            "oracle_seconds": round(st.oracle_seconds, 3),
            "reward_seconds": round(st.reward_seconds, 3),
            "completions": n,  # this process's share when several train together (processes)
            "processes": self.world,
            "excluded": st.excluded,
            "oracle_errors": st.oracle_errors,
            "oracle_invalid": st.oracle_invalid,
        }
        if st.last_error:
            rec["oracle_last_error"] = st.last_error
        self.t_step = now
        samples = []
        for i in range(n):
            eid = st.example_id[i] if i < len(st.example_id) else -1
            samples.append({
                "step": rec["step"], "example_id": eid, "history": self.histories.get(eid, ""),
                "completion": st.completion[i] if i < len(st.completion) else "",
                "verbalization": st.verbalization[i] if i < len(st.verbalization) else "",
                "rewards": {"accuracy": _nan_to_none(acc[i]), "length": _nan_to_none(ln[i]),
                            "total": _nan_to_none(total[i])},
                "compression_ratio": st.ratio[i] if i < len(st.ratio) else None,
                "advantage": float(adv[i]), "excluded": bool(np.isnan(total[i])),
            })
        if self.run is not None:
            append_jsonl(self.run / "samples.jsonl", samples)
        self.last = rec
        if control.should_log:  # TRL's loss / kl / grad_norm arrive in on_log right after
            self.pending = rec
        else:
            self._write(rec)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.pending is None or not logs:
            return
        for k, v in logs.items():
            # every number TRL logs is kept: its "reward" (unscorable samples left out, as minivz's;
            # the mean over ALL processes' completions since the last log) beside minivz's own (this
            # process's share of this step) as "trl_reward"
            if isinstance(v, (int, float)) and k != "epoch":
                self.pending[f"trl_{k}" if k in self.pending else k] = v
        self._write(self.pending)
        self.pending = None

    def on_train_end(self, args, state, control, **kw):
        if self.pending is not None:
            self._write(self.pending)
            self.pending = None

    def _write(self, rec: dict) -> None:
        if self.run is not None:  # None in the processes other than rank 0
            append_jsonl(self.run / "metrics.jsonl", [rec])

class LiveProgress(TrainerCallback):
    """A rich progress bar with the live reward; one plain line per step when not a TTY."""

    def __init__(self, logger: RunLogger) -> None:
        from rich.console import Console

        self.logger = logger
        self.console = Console(stderr=True)
        self.bar = None

    def on_train_begin(self, args, state, control, **kw):
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("GRPO"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.description}"), console=self.console)
            self.bar.start()
            self.task = self.bar.add_task("", total=args.max_steps, completed=state.global_step)

    def on_step_end(self, args, state, control, **kw):
        r = self.logger.last
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        desc = (f"reward {fmt(r.get('reward'))}  acc {fmt(r.get('accuracy'))}  len {fmt(r.get('length'))}  "
                f"ratio {fmt(r.get('compression_ratio'))}  {r.get('step_seconds', 0):.1f}s/step"
                + (f"  excluded {r['excluded']}" if r.get("excluded") else ""))
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step, description=desc)
        else:
            print(f"step {state.global_step}/{args.max_steps}  {desc}", file=sys.stderr, flush=True)

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.stop()


class MetricsLogger(TrainerCallback):
    """metrics.jsonl: one line per logging step with TRL's numbers + wall seconds per step."""

    def __init__(self, path: Path, stage: str, progress: bool) -> None:
        self.path, self.stage, self.progress = path, stage, progress
        self.t = time.perf_counter()
        self.last_step = 0

    def on_train_begin(self, args, state, control, **kw):
        self.t, self.last_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "loss" not in logs and "reward" not in logs:
            return  # the end-of-training summary (train_loss, train_runtime) is not a step
        if not state.is_world_process_zero:  # under a launch every process logs; rank 0 owns the run dir
            return
        now = time.perf_counter()
        steps = max(state.global_step - self.last_step, 1)
        rec = {"stage": self.stage, "step": int(state.global_step),
               "step_seconds": round((now - self.t) / steps, 3)}
        for k, v in logs.items():
            if isinstance(v, (int, float)) and k != "epoch":
                rec["lr" if k == "learning_rate" else k] = v
        self.t, self.last_step = now, state.global_step
        append_jsonl(self.path, [rec])
        if self.progress:
            extra = f"loss {rec['loss']:.4f}" if "loss" in rec else ""
            if "reward" in rec:
                extra += f"  reward {rec['reward']:.3f}"
            print(f"{self.stage} step {state.global_step}/{state.max_steps}  {extra}  lr {rec.get('lr', 0):.2e}  "
                  f"{rec['step_seconds']:.1f}s/step", file=sys.stderr, flush=True)
