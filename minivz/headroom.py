"""The headroom check: is anything better than the template for this oracle, before any training?

    minivz headroom --data data/ml100k --reasoner mention --split valid --limit 500 --history 20 --out runs/headroom

    from minivz.headroom import headroom
    report = headroom("data/ml100k", "mention", "runs/headroom", split="valid", limit=500, history=20)
    report["best"]        # the rule with the highest Recall@1, chosen on this split

Scores the template and the rule verbalizers (``minivz.verbalize.rules``: recent-k, noise
cleaning, one line per series run, titles only, ...) under one reasoner on the same examples, and
compares each rule with the template by a paired bootstrap. If no rule beats the template, a
learned verbalizer has little to find for that oracle; if one does, it is the bar to clear. Run it
on the *valid* split to choose (the recipe does), and report the chosen rule on test.

Writes ``OUT/<rule>/`` (one ``minivz eval`` run each, resumable), ``OUT/headroom.json`` and
``OUT/headroom.md``. With a fast oracle (mention, knn, embedding) it takes seconds to minutes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from minivz.report import cell, fmt
from minivz.verbalize.rules import DEFAULT_RULES


def run_dir_name(spec: str) -> str:
    """A directory name for a verbalizer spec: ``recent:recent=4`` -> ``recent-recent=4``."""
    return re.sub(r"[^\w=.+-]+", "-", spec).strip("-") or "verbalizer"


def headroom(data: str | Path, reasoner: str, out: str | Path, *, split: str = "valid", limit: int = 500,
             history: int = 20, rules: tuple[str, ...] | list[str] = DEFAULT_RULES, n_boot: int = 1000,
             seed: int = 0, say: Callable[[str], None] = print) -> dict:
    """Evaluate ``template`` and each rule in ``rules`` under ``reasoner``; rows paired vs the template."""
    from minivz.config import EvalConfig
    from minivz.evaluate import evaluate
    from minivz.report import compare_runs

    out = Path(out)
    specs = ["template"] + [r for r in rules if r != "template"]
    dirs = []
    for spec in specs:
        d = out / run_dir_name(spec)
        evaluate(EvalConfig(data=str(data), verbalizer=spec, reasoner=reasoner, eval_split=split, limit=limit,
                            eval_history=history, n_boot=n_boot, out=str(d), seed=seed))
        dirs.append(d)
    rows = compare_runs(dirs, labels=specs, n_boot=n_boot)
    best = max(rows[1:], key=lambda r: (r["all_recall@1"] or 0.0, -len(r["label"])), default=None)
    report = {"data": str(data), "reasoner": reasoner, "split": split, "limit": limit, "history": history,
              "rows": rows, "best": best["label"] if best else None,
              "best_beats_template": bool(best and best.get("all_diff_ci") and best["all_diff_ci"][0] > 0)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "headroom.json").write_text(json.dumps(report, indent=2))
    (out / "headroom.md").write_text(to_markdown(report))
    for r in rows:
        say(_line(r))
    if best:
        verdict = ("beats the template (paired CI above 0): a learned verbalizer has something to find"
                   if report["best_beats_template"] else
                   "does not beat the template with a CI above 0: little headroom for this oracle")
        say(f"best rule on {split}: {best['label']} -- {verdict}")
    return report


def _line(row: dict) -> str:
    return (f"  {row['label']:<32} n={row['n']:<5} all R@1 {fmt(row.get('all_recall@1'))}  vs template {cell(row, 'all_diff', 'diff'):<24} "
            f"discovery R@1 {fmt(row.get('discovery_recall@1'))} (n={row.get('discovery_n') or 0})")


def to_markdown(report: dict) -> str:
    head = (f"Headroom under `{report['reasoner']}` on {report['split']} (first {report['limit'] or 'all'} examples, "
            f"{report['history']}-event histories); difference vs template: paired bootstrap 95% CI.\n\n")
    lines = ["| verbalizer | n | Discovery R@1 | vs template | All R@1 | vs template |", "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['label']} | {r['n']} | {fmt(r.get('discovery_recall@1'))} | {cell(r, 'discovery_diff', 'diff')} | "
                     f"{fmt(r.get('all_recall@1'))} | {cell(r, 'all_diff', 'diff')} |")
    tail = f"\nBest rule: `{report['best']}`.\n" if report.get("best") else "\n"
    return head + "\n".join(lines) + "\n" + tail
