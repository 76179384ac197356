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


# -- the run report: one self-contained HTML page ----------------------------------------------------

# rows of a recipe run shown per example: (eval row, what its text is, what reads it)
_EXAMPLE_ROWS = (("template", "template text", "oracle"), ("learned", "learned verbalizer", "oracle"),
                 ("base-template", "template text", "untrained reasoner"),
                 ("reasoner-only", "template text", "reasoner trained on template"),
                 ("two-stage", "learned verbalizer", "reasoner trained on the learned text"))
_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}
pre{white-space:pre-wrap;background:#f8f8f8;border:1px solid #e3e3e3;padding:6px;max-height:260px;overflow:auto;
margin:2px 0;font-size:12px}.hit{color:#17803d;font-weight:600}.miss{color:#b3261e;font-weight:600}
.ex{border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:12px 0}.grid{display:grid;
grid-template-columns:1fr 1fr;gap:10px}img{max-width:100%;border:1px solid #eee}.muted{color:#777}"""


def _esc(s) -> str:
    import html

    return html.escape(str(s))


def _html_table(rows: list[dict]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in table_cells(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png(path: Path) -> str:
    import base64

    return f'<img alt="{_esc(path.name)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


def _run_tables(run: Path) -> dict[str, list[dict]]:
    """The recipe's tables (RUN/results.json), else one table of whatever RUN/eval rows exist."""
    if (run / "results.json").is_file():
        results = json.loads((run / "results.json").read_text())
        return {k: results[k] for k in ("stage1", "stage2") if k in results}
    rows = sorted(p.parent for p in (run / "eval").glob("*/metrics.json"))
    rows.sort(key=lambda p: p.name != "template")  # the reference first
    return {"rows": compare_runs(rows, labels=[p.name for p in rows])} if rows else {}


def _examples_html(run: Path, n: int) -> str:
    import pyarrow.parquet as pq

    found = [row for row in _EXAMPLE_ROWS if (run / "eval" / row[0] / "samples.jsonl").is_file()]
    if not found:
        return "<p class=muted>no evaluated rows with samples yet</p>"
    samples = {name: {int(r["example_id"]): r for r in _samples(run / "eval" / name)} for name, _, _ in found}
    first = found[0][0]
    ids = [i for i in samples[first] if all(i in samples[name] for name, _, _ in found)][:n]
    if not ids:
        ids = list(samples[first])[:n]
    titles = pq.read_table(run / "data" / "items.parquet", columns=["title"])["title"].to_pylist() \
        if (run / "data" / "items.parquet").is_file() else None

    def title(code) -> str:
        return titles[code] if titles is not None and 0 <= code < len(titles) else f"item {code}"

    out = []
    for eid in ids:
        base = next(samples[name][eid] for name, _, _ in found if eid in samples[name])
        truth = title(base["candidates"][base["label"]])
        cells = []
        for name, what, reader in found:
            r = samples[name].get(eid)
            if r is None:
                continue
            hit = r.get("choice") == r["label"]
            pick = title(r["candidates"][r["choice"]]) if r.get("choice", -1) >= 0 else "no valid answer"
            cells.append(f"<div><b>{_esc(name)}</b> <span class=muted>({_esc(what)}, read by {_esc(reader)})</span>"
                         f"<pre>{_esc(r.get('verbalization', ''))}</pre>pick: <span class={'hit' if hit else 'miss'}>"
                         f"{_esc(pick)} {'✓' if hit else '✗'}</span></div>")
        out.append(f"<div class=ex><b>user {_esc(base.get('user_id', '?'))}</b>, example {eid}: "
                   f"truth <b>{_esc(truth)}</b>{' (never seen: discovery)' if base.get('discovery') else ''}"
                   f"<div class=grid>{''.join(cells)}</div></div>")
    return "".join(out)


def html_report(run: str | Path, out: str | Path | None = None, n_examples: int = 6) -> Path:
    """RUN/report.html: one self-contained page (CSS and PNGs inline) with the run's tables and
    their CIs, its plots (results, training curves), and for the first ``n_examples`` test users the
    template text beside the learned verbalization with each reader's pick and the truth."""
    import datetime

    from minivz.plot import plot_run

    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run directory")
    out = Path(out) if out else run / "report.html"
    parts = [f"<h1>minivz run report: {_esc(run.name)}</h1>"]
    env_file = next(iter(sorted(run.glob("eval/*/env.json"))), None)
    env = json.loads(env_file.read_text()) if env_file else {}
    from minivz.config import STAGES

    stages = {s: json.loads((run / "stages" / f"{s}.json").read_text()).get("seconds") for s in STAGES
              if (run / "stages" / f"{s}.json").is_file()}
    meta = [f"written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"]
    if env:
        meta.append(f"{env.get('cpu_model') or env.get('machine')}, {env.get('cpu_cores')} cores, "
                    f"{env.get('memory_gib')} GiB, GPU: {env.get('gpus')}")
    if stages:
        total = sum(s for s in stages.values() if s)
        meta.append("stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items() if v is not None)
                    + f" (total {total / 60:.1f} min)")
    parts.append("<p class=muted>" + "<br>".join(_esc(m) for m in meta) + "</p>")
    titles = {"stage1": "Stage 1: verbalizers under the frozen oracle (vs the template)",
              "stage2": "Stage 2: an LLM reasoner reads the text (vs the template read by the untrained reasoner)",
              "rows": "Evaluated rows (vs the first)"}
    tables = _run_tables(run)
    for key, rows in tables.items():
        parts.append(f"<h2>{_esc(titles[key])}</h2>{_html_table(rows)}")
    if not tables:
        parts.append("<p class=muted>no evaluated rows yet</p>")
    pngs = [p for p in (run / "results.png", run / "results-stage2.png") if p.is_file()]
    if (run / "verbalizer" / "metrics.jsonl").is_file():  # the GRPO curves: reward, compression, step time
        try:
            pngs += plot_run(run / "verbalizer")
        except ValueError:  # no steps logged yet
            pass
    if pngs:
        parts.append("<h2>Plots</h2><div class=grid>" + "".join(_png(p) for p in pngs) + "</div>")
    parts.append(f"<h2>What each reader saw: the first {n_examples} test users</h2>" + _examples_html(run, n_examples))
    out.write_text(f"<!doctype html><html><head><meta charset=utf-8><title>minivz {_esc(run.name)}</title>"
                   f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>", encoding="utf-8")
    return out
