"""Reading and writing a run directory: the one place for its JSONL logs, checkpoints and records.

    from minivz.rundir import append_jsonl, resume_jsonl, resume_step
    done = resume_jsonl(run / "samples.jsonl")          # {example_id: record}, a cut last line removed
    append_jsonl(run / "samples.jsonl", [{"example_id": 7, ...}])
    step, ckpt = resume_step(run / "checkpoints", resume=True)   # (0, None) when there is none

The layout (STYLE rule 10): ``RUN/config.yaml`` (the resolved config), ``RUN/env.json`` (versions,
hardware), ``RUN/metrics.jsonl`` / ``RUN/samples.jsonl`` (one JSON object a line, appended as the run
goes, so a killed run leaves whole lines and at most one cut last line), ``RUN/checkpoints/step_000200/``
(TRL checkpoints renamed from ``checkpoint-200``). No torch/transformers at import: the TRL callback is
built on first use.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable

from minivz.config import dump_yaml
from minivz.envinfo import collect

_STEP_DIR = re.compile(r"^step_(\d+)$")


# -- JSONL logs ----------------------------------------------------------------------------------------


def read_jsonl(path: Path, *, stop_at_bad: bool = False) -> list[dict]:
    """The records of a JSONL file ([] when it is missing). An unreadable line (one cut by a kill) is
    skipped (per-example files: that example is redone), or with ``stop_at_bad`` ends the read
    (per-step logs: what follows a torn step is not trusted)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                if stop_at_bad:
                    break
    return rows


def append_jsonl(path: Path, records: Iterable[dict]) -> None:
    """Append one JSON line per record (creates the file, also for no records)."""
    with path.open("a") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")


def drop_partial_line(path: Path) -> None:
    """A run killed mid-write leaves a cut last line: cut the file back to its last newline."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def resume_jsonl(path: Path, write: bool = True) -> dict[int, dict]:
    """Make a per-example JSONL ready to append to again (a cut last line removed) and return the
    records already in it by ``example_id``; an unreadable line or one without an id is redone.
    ``write=False`` only reads (a process that does not own the file: another may be appending)."""
    if write:
        drop_partial_line(path)
    done = {}
    for rec in read_jsonl(path):
        try:
            done[int(rec["example_id"])] = rec
        except (ValueError, KeyError):
            continue
    return done


def truncate_jsonl(path: Path, keep: Callable[[dict], bool]) -> None:
    """Keep the lines whose record ``keep`` accepts (a resumed run redoes the steps after its
    checkpoint); the first unreadable line (cut by a kill) and everything after it are dropped."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if keep(json.loads(line)):
                kept.append(line)
        except (ValueError, KeyError):
            break
    path.write_text("".join(x + "\n" for x in kept))


# -- checkpoints -----------------------------------------------------------------------------------------


def step_checkpoints(ckpt_dir: Path, resumable: bool = False) -> list[tuple[int, Path]]:
    """``(step, dir)`` of the run-contract checkpoints ``step_NNNNNN`` in ``ckpt_dir``, oldest first;
    ``resumable=True`` keeps only those a trainer can resume from (trainer_state.json written)."""
    found = (((int(m.group(1)), p) for p in ckpt_dir.glob("step_*") if (m := _STEP_DIR.match(p.name)))
             if ckpt_dir.is_dir() else ())
    return sorted((s, p) for s, p in found if not resumable or (p / "trainer_state.json").is_file())


def latest_checkpoint(ckpt_dir: Path) -> tuple[int, Path] | None:
    """``(step, dir)`` of the newest resumable checkpoint in ``ckpt_dir``, or None."""
    ckpts = step_checkpoints(ckpt_dir, resumable=True)
    return ckpts[-1] if ckpts else None


def checkpoint_finished(ckpt: Path, max_steps: int) -> bool:
    """Whether a checkpoint already holds the whole stage (``max_steps``, or its own planned total).
    A trainer resumed from such a checkpoint would take one step past it before noticing it is done."""
    state = json.loads((ckpt / "trainer_state.json").read_text())
    return int(state["global_step"]) >= (max_steps or int(state.get("max_steps") or 0) or 1 << 62)


def is_main_process() -> bool:
    """True in the one process that writes the run directory: the only process, or rank 0 of a launch
    (torchrun, ``accelerate launch`` and DeepSpeed set RANK in every process they start)."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """Processes training together (WORLD_SIZE of a launch; 1 alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def leave_launch() -> None:
    """End a launch's process group in every process: wait until all ranks get here (rank 0 has written
    the final model), then destroy the group. A rank that simply exited while rank 0 was still saving
    could abort in teardown ("terminate called without an active exception", SIGABRT: seen once in
    CI on a 2-process gloo run), failing the whole launch. No-op outside a launch."""
    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


@functools.cache
def resumable_on_cpu_ranks() -> None:
    """Let a trainer resume under a CPU launch (gloo, N processes, no CUDA): each process's device is
    ``cpu:RANK``, transformers loads the optimizer state with that as map_location, and torch's
    registry only knows "cpu" ("don't know how to restore data location of torch.storage.UntypedStorage
    (tagged with cpu:0)"). An added deserializer, after torch's own, keeps storages tagged ``cpu:N`` on
    the CPU (torch's public hook ``register_package``). Both training stages call it before building
    their trainer; functools.cache: registered at most once per process."""
    if world_size() > 1:
        import torch
        import torch.serialization as ts

        if not torch.cuda.is_available():
            ts.register_package(90, lambda storage: None,
                                lambda storage, location: storage if location.startswith("cpu:") else None)


def resume_step(ckpt_dir: Path, resume: bool) -> tuple[int, Path | None]:
    """``(step, dir)`` a trainer starts from: the latest resumable checkpoint, or ``(0, None)`` when
    there is none. ``resume=False`` starts over: the old checkpoints are deleted first, since they
    would mix into the rotation and into a later resume."""
    if resume:
        return latest_checkpoint(ckpt_dir) or (0, None)
    old = [p for p in ckpt_dir.iterdir() if p.is_dir()] if ckpt_dir.is_dir() and is_main_process() else []
    if old:
        print(f"starting over: deleting {len(old)} old checkpoints in {ckpt_dir}", file=sys.stderr)
    for p in old:
        shutil.rmtree(p)
    return 0, None


def rotate_checkpoints(ckpt_dir: Path, step: int, keep: int) -> None:
    """Rename TRL's ``checkpoint-N`` to ``step_%06d`` (the run-dir contract) and keep the newest ``keep``."""
    src = ckpt_dir / f"checkpoint-{step}"
    dst = ckpt_dir / f"step_{step:06d}"
    if src.is_dir():
        if dst.exists():
            shutil.rmtree(dst)
        src.rename(dst)
    for _s, p in step_checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def step_checkpoints_callback(ckpt_dir: Path, keep: int, *, save_last: bool = False):
    """A TRL ``TrainerCallback``: TRL saves ``checkpoint-N``; the run contract names them
    ``step_00000N`` and keeps the newest ``keep`` (TRL's own rotation only knows its naming, so run it
    with ``save_total_limit=None``). ``save_last`` also saves at the last step, so a finished stage can
    be resumed past."""
    from transformers import TrainerCallback

    class StepCheckpoints(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if save_last and state.global_step >= state.max_steps:
                control.should_save = True

        def on_save(self, args, state, control, **kw):
            if state.is_world_process_zero:  # the process that saved (and owns the run dir)
                rotate_checkpoints(ckpt_dir, state.global_step, keep)

    return StepCheckpoints()


# -- the run's records ------------------------------------------------------------------------------------

# Settings a resumed run may change: how long it runs and what it keeps, not what it learns.
RESUME_SAFE = frozenset({"max_steps", "save_steps", "save_total_limit", "logging_steps", "max_oracle_retries",
                         "gpu_memory_gib", "report_to",
                         "reasoner_max_steps", "reasoner_save_steps", "reasoner_eval_limit", "reasoner_eval_split",
                         "reasoner_grpo_max_steps", "reasoner_report_to"})  # + reasoner_grpo_* before GRPO starts


def record_run_config(run: Path, cfg, data_dir: str | Path, resume: bool) -> None:
    """Write RUN/config.yaml (the run's record: its settings, the data dir in the first line), or, when
    resuming from a checkpoint, refuse settings that would change the training, naming the keys."""
    import yaml

    from minivz.config import ConfigError

    path = run / "config.yaml"
    head = f"# data_dir: {Path(data_dir).resolve()}\n"
    text = head + dump_yaml(cfg)
    if resume and path.is_file() and latest_checkpoint(run / "checkpoints"):
        old_text = path.read_text()
        old, new = yaml.safe_load(old_text) or {}, yaml.safe_load(text)
        # the reasoner's GRPO settings shape nothing trained before its first GRPO checkpoint: GRPO
        # may be added to (or retuned on) a finished SFT
        grpo_started = latest_checkpoint(run / "grpo" / "checkpoints") is not None
        changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in dict.fromkeys([*old, *new])
                   if k not in RESUME_SAFE and old.get(k) != new.get(k)
                   and (grpo_started or not k.startswith("reasoner_grpo_"))]
        old_head = old_text.splitlines()[0] if old_text.startswith("# data_dir: ") else None
        if old_head is not None and old_head != head.strip():
            changed.append(f"data_dir: {old_head[len('# data_dir: '):]} -> {Path(data_dir).resolve()}")
        if changed:
            raise ConfigError(
                f"{run} was trained with other settings ({'; '.join(changed)}); resuming would mix them. "
                f"Resume with the recorded settings ({path}), train into a new --out, or start over "
                "with --no-resume. Only " + ", ".join(sorted(RESUME_SAFE)) + " may change on resume.")
    if is_main_process():  # every process checks the settings; one writes the record
        path.write_text(text)


def read_run_config(run: Path, cls):
    """The ``cls`` settings a run recorded in RUN/config.yaml (``record_run_config``), defaults for fields
    added since; a missing record is an error naming the file and how to get one."""
    import dataclasses

    import yaml

    path = run / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run} a run directory? Train into it first "
                                "(minivz recipe / minivz train verbalizer / minivz train reasoner)")
    recorded = yaml.safe_load(path.read_text()) or {}
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in recorded.items() if k in names})


def write_trl_args(path: Path, args) -> None:
    """``trl_args.json``: the arguments the trainer actually ran with (its ``to_dict``), by the main process."""
    if is_main_process():
        path.write_text(json.dumps(args.to_dict(), indent=2, default=str))


def write_env(run: Path, **extra) -> None:
    """RUN/env.json: versions and hardware (``minivz.envinfo.collect``) plus ``extra`` fields."""
    if not is_main_process():
        return
    env = collect()
    env.update(extra)
    (run / "env.json").write_text(json.dumps(env, indent=2))
