"""Run the GPU recipe end to end and record what a user sees: time per stage, GRPO step time, peak GPU
memory, the held-out table; then a short GRPO run with the co-located oracle (oracle=policy).

    python benchmarks/gpu_recipe.py [--out runs/gpu-smol] [--set KEY=VALUE ...] [--colocated-steps 20]
    python benchmarks/gpu_recipe.py --set max_steps=2 --set eval_limit=20 ...   # a CPU smoke of the script

Writes benchmarks/results/gpu_recipe_<device>.json (device = the GPU's name, or "cpu") with:
  stages        seconds per pipeline stage run by this call
  grpo          steps, median / p90 step seconds, completions per step (RUN/verbalizer/metrics.jsonl)
  peak_gpu_gib  torch.cuda.max_memory_allocated over the recipe (everything runs in this process)
  plan_gib      minivz's --dry-run estimate for the same settings, beside the measurement
  stage1/2      the result tables (Recall@1 with CIs, paired differences vs the template)
  colocated     the same GRPO for --colocated-steps steps with oracle=policy: step seconds, peak memory,
                the plan's estimate (skipped with --colocated-steps 0)
Nothing is downloaded: data and weights come from installed packages.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _peak_gib(torch) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def _grpo_stats(run: Path) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    secs = sorted(r["step_seconds"] for r in rows if "step_seconds" in r)
    if not secs:
        return {"steps": 0}
    return {"steps": len(secs), "step_seconds_median": round(statistics.median(secs), 3),
            "step_seconds_p90": round(secs[int(0.9 * (len(secs) - 1))], 3),
            "completions_per_step": rows[-1].get("completions"),
            "accuracy_first": rows[0].get("accuracy"), "accuracy_last": rows[-1].get("accuracy")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="gpu-smol")
    ap.add_argument("--out", type=Path, default=None, help="run directory (default runs/<recipe>-bench)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override a recipe field")
    ap.add_argument("--colocated-steps", type=int, default=20, help="GRPO steps with oracle=policy (0 = skip)")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)

    import torch

    from minivz.envinfo import collect
    from minivz.pipeline import Pipeline
    from minivz.train.memory import estimate_memory

    out = args.out or Path("runs") / f"{args.recipe}-bench"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    pipe = Pipeline(args.recipe, out, args.overrides, say=lambda m: print(m, flush=True))
    plan = estimate_memory(pipe.cfg["verbalizer"])["total_gib"]
    t_all = time.perf_counter()
    report = pipe.run()  # stages already complete in --out are skipped (and not timed)
    wall = time.perf_counter() - t_all
    res = json.loads((out / "results.json").read_text())
    record = {
        "recipe": args.recipe, "overrides": args.overrides, "device": device, "env": collect(),
        "wall_seconds": round(wall, 1), "stages": {r["stage"]: r["seconds"] for r in report},
        "grpo": _grpo_stats(out / "verbalizer"), "peak_gpu_gib": _peak_gib(torch), "plan_gib": plan,
        "stage1": res.get("stage1"), "stage2": res.get("stage2"), "best_rule": res.get("best_rule"),
    }
    print(f"recipe {args.recipe}: {wall:.0f} s on {device}; stages {record['stages']}; GRPO {record['grpo']}; "
          f"peak GPU {record['peak_gpu_gib']} GiB (plan {plan} GiB)", flush=True)

    if args.colocated_steps > 0:  # the co-located oracle path: same policy, oracle = its frozen base
        import dataclasses

        from minivz.train.grpo import train_verbalizer

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        cfg = dataclasses.replace(pipe.cfg["verbalizer"], oracle="policy", max_steps=args.colocated_steps,
                                  save_steps=args.colocated_steps)
        run = out / "colocated"
        t0 = time.perf_counter()
        train_verbalizer(cfg, pipe.data_dir, run, resume=False, progress=False)
        record["colocated"] = {"seconds": round(time.perf_counter() - t0, 1), "grpo": _grpo_stats(run),
                               "peak_gpu_gib": _peak_gib(torch), "plan_gib": estimate_memory(cfg)["total_gib"]}
        print(f"co-located oracle: {record['colocated']}", flush=True)
    record["total_seconds"] = round(time.perf_counter() - t_all, 1)
    args.results.mkdir(parents=True, exist_ok=True)
    name = "cpu" if device == "cpu" else device.split()[-1].lower()
    path = args.results / f"gpu_recipe_{name}.json"
    path.write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
