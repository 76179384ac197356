"""Side-by-side comparison of evaluation runs: table rows, Markdown, JSON and a PNG bar chart.

    from minivz.report import compare_runs, bar_chart, to_markdown
    rows = compare_runs(["runs/eval-template", "runs/eval-rewrite"])   # first run = baseline
    bar_chart(rows, "compare.png"); print(to_markdown(rows))

Relative change vs the first run uses a paired bootstrap over the examples both runs scored
(same example ids), so its CI reflects the comparison, not two independent samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SUBSETS = ("discovery", "all")


def _covered(run: Path) -> set[int] | None:
    """Example ids metrics.json was computed on (None: every sample, for runs written before this)."""
    ids = json.loads((run / "metrics.json").read_text()).get("run", {}).get("example_ids")
    return set(ids) if ids is not None else None


def _samples(run: Path) -> list[dict]:
    keep = _covered(run)
    rows = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in rows if keep is None or int(r["example_id"]) in keep]


def _per_example_recall1(run: Path) -> dict[int, float]:
    from minivz.metrics import rank_metrics

    rows = _samples(run)
    if not rows:
        return {}
    scores = np.array([[(-np.inf if s is None else s) for s in r["scores"]] for r in rows], dtype=float)
    per = rank_metrics(scores, np.array([r["label"] for r in rows]), np.array([r["valid"] for r in rows]))
    return {int(r["example_id"]): float(v) for r, v in zip(rows, per["recall@1"])}


def _discovery_ids(run: Path) -> set[int]:
    return {int(r["example_id"]) for r in _samples(run) if r["discovery"]}


def compare_runs(runs: list[str | Path], labels: list[str] | None = None, n_boot: int = 1000) -> list[dict]:
    """One row per run: Recall@1 (+CI) for discovery and all examples, relative change vs runs[0]."""
    from minivz.metrics import paired_difference_ci, relative_change_ci

    paths = [Path(r) for r in runs]
    for p in paths:
        if not (p / "metrics.json").exists():
            raise FileNotFoundError(f"{p}: no metrics.json; run `minivz eval ... --out {p}` first")
    base = _per_example_recall1(paths[0]) if (paths[0] / "samples.jsonl").exists() else {}
    base_disc = _discovery_ids(paths[0]) if base else set()
    rows = []
    for i, p in enumerate(paths):
        m = json.loads((p / "metrics.json").read_text())
        run = m.get("run", {})
        row = {
            "run": str(p),
            "label": labels[i] if labels else f"{run.get('verbalizer', '?')} / {run.get('reasoner', '?')}",
            "n": m["all"]["n"],
        }
        for sub in SUBSETS:
            s = m.get(sub) or {}
            row[f"{sub}_recall@1"] = s.get("recall@1")
            row[f"{sub}_recall@1_ci"] = s.get("recall@1_ci")
            row[f"{sub}_n"] = s.get("n")
        row["random_recall@1"] = m.get("random_floor", {}).get("recall@1")
        if i > 0 and base and (p / "samples.jsonl").exists():
            cur = _per_example_recall1(p)
            for sub in SUBSETS:
                common = sorted(k for k in cur if k in base and (sub == "all" or k in base_disc))
                if common:
                    a, b = [cur[k] for k in common], [base[k] for k in common]
                    rc = relative_change_ci(a, b, n_boot=n_boot)
                    row[f"{sub}_rel"] = rc["value"]
                    row[f"{sub}_rel_ci"] = rc["ci"]
                    diff = paired_difference_ci(a, b, n_boot=n_boot)
                    row[f"{sub}_diff"] = diff["value"]
                    row[f"{sub}_diff_ci"] = diff["ci"]
                    row[f"{sub}_paired_n"] = len(common)
        rows.append(row)
    return rows


_STYLES = {"value": ("{:.3f}", "{:.3f}"), "diff": ("{:+.3f}", "{:+.3f}"), "pct": ("{:+.1%}", "{:+.0%}")}


def fmt(v, ci=None, style: str = "value") -> str:
    """One table cell: ``0.392 [0.348, 0.436]`` (value), ``+0.074 [+0.038, +0.112]`` (diff) or
    ``+18.9% [+9%, +30%]`` (pct); the bracket only when the CI is known, "—" without a value."""
    if v is None:
        return "—"
    head, bound = _STYLES[style]
    s = head.format(v)
    return s + (f" [{bound.format(ci[0])}, {bound.format(ci[1])}]" if ci and ci[0] is not None else "")


def cell(row: dict, key: str, style: str = "value") -> str:
    """``fmt`` of ``row[key]`` with its CI ``row[key + "_ci"]``, as ``compare_runs`` writes them."""
    return fmt(row.get(key), row.get(f"{key}_ci"), style)


def table_cells(row: dict) -> list[str]:
    return [
        row["label"],
        str(row["n"]),
        cell(row, "discovery_recall@1"),
        cell(row, "discovery_rel", "pct"),
        cell(row, "all_recall@1"),
        cell(row, "all_rel", "pct"),
    ]


HEADER = ["system", "n", "Discovery R@1 [95% CI]", "vs first", "All R@1 [95% CI]", "vs first"]


def to_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    if rows and rows[0].get("random_recall@1") is not None:
        lines.append(f"\nRandom floor Recall@1 = {rows[0]['random_recall@1']:.3f}.")
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[dict], path: str | Path, title: str = "Recall@1 (95% CI)") -> Path:
    from minivz.plot import pyplot

    plt = pyplot()
    path = Path(path)
    x = np.arange(len(rows))
    w = 0.38
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows) + 2), 4.2))
    for k, (sub, color) in enumerate((("discovery", "#c0504d"), ("all", "#4f81bd"))):
        vals = np.array([r.get(f"{sub}_recall@1") or 0.0 for r in rows])
        cis = [r.get(f"{sub}_recall@1_ci") or [None, None] for r in rows]
        lo = np.array([v - (c[0] if c[0] is not None else v) for v, c in zip(vals, cis)])
        hi = np.array([(c[1] if c[1] is not None else v) - v for v, c in zip(vals, cis)])
        ax.bar(x + (k - 0.5) * w, vals, w, yerr=[lo, hi], capsize=3, color=color, label=sub)
    floor = rows[0].get("random_recall@1") if rows else None
    if floor:
        ax.axhline(floor, color="grey", ls="--", lw=1, label="random")
    ax.set_xticks(x, [r["label"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("Recall@1")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
