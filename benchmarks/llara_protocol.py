"""A finished `minivz recipe` run's stage-2 readers under LLaRA's protocol (issue: stage 2, item 4).

    python benchmarks/llara_protocol.py --run runs/tiny-cpu --out runs/tiny-cpu/llara --limit 500

LLaRA (SIGIR'24) evaluates on MovieLens-100K with 20 candidates (the target and 19 random items)
listed in the prompt, histories of at most 10 items, and reports HitRatio@1 over the VALID answers
only (an answer that names no candidate leaves the count) beside the valid ratio. This script
prepares the run's data again with ``n_candidates=20`` (the same users, split and seed; the
negatives are drawn anew), then scores on the same first ``--limit`` test users:

- the run's base reasoner untrained, read the way the run reads (its ``reasoner_scoring``), and the
  same model reading the labels greedily (``answer=label,constrain=false``: LLaRA's zero-shot read,
  the one with a valid ratio below 1);
- the run's reasoner-only and two-stage reasoners, trained on 10 candidates, now reading 20;
- popularity, item-kNN and the run's sequential baselines (ids only).

HR@1 is printed both ways (over all examples, invalid answers as misses; over the valid ones, as
LLaRA) with the valid ratio and paired 95% CIs against row 1, LLaRA's published figures beside.
Protocol differences that remain: minivz splits leave-last-out per user (LLaRA splits its sequences
8:1:1), and its reasoners are SmolLM2-135M, not Llama-2-7B. Writes OUT/table.md and OUT/table.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from minivz.dataset import PreparedData
from minivz.metrics import paired_difference_ci, rank_metrics, summarize
from minivz.pipeline import Pipeline, run_scoring
from minivz.report import _samples, fmt
from minivz.spec import parse_spec
from minivz.train.reasoner import base_model_source
from minivz.verbalize.cache import verbalize_split

# ljy0ustc/LLaRA README (2024.7, after their bug fixes): MovieLens, Llama-2-7B, HR@1 over valid answers
LLARA = [("LLaRA (GRU4Rec)", 0.9684, 0.4000), ("LLaRA (Caser)", 0.9684, 0.4211), ("LLaRA (SASRec)", 0.9789, 0.4526)]


def _greedy_labels(scoring: str) -> str:
    """The run's scoring options with the answer read as LLaRA reads it: the greedy token after the
    list, valid only when it is a candidate's label."""
    opts = [o for o in scoring.split(",") if o and not o.startswith(("answer=", "constrain="))]
    return ",".join(["answer=label", "constrain=false", *opts])


def hr_row(run: Path) -> dict:
    """HR@1 both ways and the valid ratio of one eval run, and its per-example hits by example id
    (samples.jsonl read once)."""
    rows = _samples(run)
    scores = np.array([[(-np.inf if s is None else s) for s in r["scores"]] for r in rows], dtype=float)
    labels, valid = np.array([r["label"] for r in rows]), np.array([r["valid"] for r in rows])
    s = summarize(scores, labels, valid, hr_at_1=True)["all"]
    hits = rank_metrics(scores, labels, valid)["recall@1"]
    return {"n": s["n"], "hr@1": s["hr@1"], "hr@1_ci": s["hr@1_ci"], "hr@1_valid": s["hr@1_valid"],
            "hr@1_valid_ci": s["hr@1_valid_ci"], "valid_ratio": s["valid_rate"],
            "hits": {int(r["example_id"]): float(h) for r, h in zip(rows, hits)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished `minivz recipe` run dir")
    ap.add_argument("--recipe", default="tiny-cpu", help="the recipe the run was made with")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--history", type=int, default=10)
    ap.add_argument("--no-greedy-row", action="store_true", help="skip the untrained greedy-label row")
    ap.add_argument("--set", action="append", default=[], help="recipe overrides the run was made with")
    args = ap.parse_args()
    main_run = Pipeline(args.recipe, args.run, args.set)
    p = Pipeline(args.recipe, args.out, [*args.set, f"n_candidates={args.candidates}"])
    if not (p.data_dir / "manifest.json").exists():
        p.stage_data()
    pipe, rc = p.cfg["pipeline"], p.cfg["reasoner"]
    scoring = run_scoring(args.run)
    dt = f",dtype={pipe.stage2_dtype}"
    learned = args.out / "verbalized" / f"learned-test-h{args.history}.jsonl"
    verbalize_split(PreparedData.load(p.data_dir), main_run.learned_spec, "test", args.limit, args.history,
                    learned, progress=True)
    rows = [("template + untrained reasoner", "base-template", "template",
             f"hf:model={base_model_source(rc)}{dt},{scoring}")]
    if not args.no_greedy_row:
        rows.append(("template + untrained reasoner, labels read greedily", "base-template-greedy", "template",
                     f"hf:model={base_model_source(rc)}{dt},{_greedy_labels(scoring)}"))
    rows += [("reasoner-only (trained on template text)", "reasoner-only", "template",
              f"hf:model={args.run / 'reasoner-template' / 'final' / 'merged'}{dt},{scoring}"),
             ("two-stage (trained on the learned text)", "two-stage", f"cached:path={learned}",
              f"hf:model={args.run / 'reasoner-learned' / 'final' / 'merged'}{dt},{scoring}")]
    ids_only = {parse_spec(b)[0]: b for b in ["popularity", "knn", *pipe.stage2_baselines]}  # the run's own specs win
    rows += [(f"{name} (ids only)", f"stage2-{name}", "template", spec) for name, spec in ids_only.items()]
    seconds, results = {}, []
    for label, name, verb, reasoner in rows:
        t0 = time.perf_counter()
        out = p._eval(name, verb, reasoner, args.limit, args.history)
        seconds[name] = round(time.perf_counter() - t0, 1)
        results.append((label, hr_row(out)))
    table = _table(results, args)
    (args.out / "table.md").write_text(table)
    (args.out / "table.json").write_text(json.dumps(
        {"rows": [{"row": lab, **{k: v for k, v in r.items() if k != "hits"}} for lab, r in results],
         "seconds": seconds, "llara": LLARA, "run": str(args.run), "limit": args.limit,
         "candidates": args.candidates, "history": args.history}, indent=2))
    print(table)


def _table(results: list[tuple[str, dict]], args) -> str:
    base = results[0][1]["hits"]
    lines = [f"LLaRA's protocol: {args.candidates} uniform candidates, histories <= {args.history}, the first "
             f"{args.limit} test users (run {args.run}); HR@1 [95% CI], paired difference vs row 1", "",
             "| row | n | valid ratio | HR@1 over valid (LLaRA's way) | HR@1 over all | vs row 1 (all) |",
             "|---|---|---|---|---|---|"]
    for i, (label, r) in enumerate(results):
        vs = "—"
        if i:
            common = sorted(set(r["hits"]) & set(base))
            d = paired_difference_ci([r["hits"][k] for k in common], [base[k] for k in common])
            vs = fmt(d["value"], d["ci"], style="diff")
        lines.append(f"| {label} | {r['n']} | {r['valid_ratio']:.3f} | {fmt(r['hr@1_valid'], r['hr@1_valid_ci'])} "
                     f"| {fmt(r['hr@1'], r['hr@1_ci'])} | {vs} |")
    for label, vr, hr in LLARA:
        lines.append(f"| {label}, Llama-2-7B, published | — | {vr:.4f} | {hr:.4f} | ≈{hr * vr:.3f} | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
