"""Training curves from a run's metrics.jsonl, as PNGs (``minivz plot RUN``).

    from minivz.plot import plot_run
    paths = plot_run("runs/tiny-cpu/verbalizer")   # -> [RUN/plots/rewards.png, ...]

One figure per group: rewards (total, accuracy, length), compression ratio (with the length band
from RUN/config.yaml when present), seconds per step (step, oracle). Raw values are drawn thin,
a moving average (window ~ steps/10) thick. matplotlib with the Agg backend: no display needed.
"""

from __future__ import annotations

from pathlib import Path

from minivz.install import MATPLOTLIB, pip
from minivz.rundir import read_jsonl

FIGURES = {
    "rewards": ("reward", ["reward", "accuracy", "length"]),
    "compression_ratio": ("chars(verbalization) / chars(template)", ["compression_ratio"]),
    "step_seconds": ("seconds", ["step_seconds", "oracle_seconds"]),
}


def read_metrics(run: str | Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run} a `minivz train verbalizer` run directory?")
    return read_jsonl(path, stop_at_bad=True)


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc, q = [], 0.0, []
    for v in values:
        q.append(v)
        acc += v
        if len(q) > window:
            acc -= q.pop(0)
        out.append(acc / len(q))
    return out


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); a clear error when it is missing."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(f"minivz plots need matplotlib: {pip(MATPLOTLIB)}") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(run: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write one PNG per figure in FIGURES; returns their paths."""
    plt = pyplot()
    run = Path(run)
    rows = read_metrics(run)
    if not rows:
        raise ValueError(f"{run / 'metrics.jsonl'} has no steps yet")
    band = None
    cfg_path = run / "config.yaml"
    if cfg_path.is_file():
        import yaml

        cfg = yaml.safe_load(cfg_path.read_text()) or {}
        if "length_lo" in cfg and "length_hi" in cfg:
            band = (cfg["length_lo"], cfg["length_hi"])
    out = Path(out_dir) if out_dir else run / "plots"
    out.mkdir(parents=True, exist_ok=True)
    window = max(1, len(rows) // 10)
    written = []
    for name, (ylabel, keys) in FIGURES.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        drawn = False
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if not pts:
                continue
            steps, vals = zip(*pts)
            line, = ax.plot(steps, vals, lw=0.8, alpha=0.35)
            ax.plot(steps, _smooth(list(vals), window), lw=2, color=line.get_color(),
                    label=f"{key} (avg {window})" if window > 1 else key)
            drawn = True
        if name == "compression_ratio" and band:
            ax.axhspan(band[0], band[1], color="green", alpha=0.1, label=f"band [{band[0]}, {band[1]}]")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{run.name}: {name.replace('_', ' ')}")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend()
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def summarize_run(run: str | Path, n: int = 10) -> dict:
    """First-n vs last-n step means of the reward curves (what a report quotes)."""
    rows = read_metrics(run)

    def mean(sel, key):
        v = [r[key] for r in sel if r.get(key) is not None]
        return round(sum(v) / len(v), 4) if v else None

    first, last = rows[:n], rows[-n:]
    keys = ["reward", "accuracy", "length", "compression_ratio", "step_seconds", "oracle_seconds"]
    return {"steps": len(rows), "n": n, "first": {k: mean(first, k) for k in keys},
            "last": {k: mean(last, k) for k in keys}, "excluded": sum(r.get("excluded", 0) for r in rows)}


def plot_heldout(rows: list[dict], path: str | Path) -> Path:
    """The held-out curve (``minivz train curve``): Recall@1 and MRR with 95% CIs per GRPO step.
    ``rows``: dicts with step, n, split, oracle, recall@1(_ci), mrr(_ci), as in RUN/heldout.jsonl."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    for key, label in (("mrr", "MRR (= mean rank reward)"), ("recall@1", "Recall@1")):
        vals = [r[key] for r in rows]
        lo = [r[key] - r[f"{key}_ci"][0] for r in rows]
        hi = [r[f"{key}_ci"][1] - r[key] for r in rows]
        ax.errorbar(steps, vals, yerr=[lo, hi], marker="o", capsize=3, label=label)
    ax.set_xlabel("GRPO step (0 = base policy)")
    ax.set_ylabel(f"held-out ({rows[0]['split']}, n={rows[0]['n']}), 95% CI")
    ax.set_title(f"held-out curve, oracle {rows[0]['oracle']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
