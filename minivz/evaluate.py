"""Evaluation harness: examples -> verbalizer -> reasoner -> metrics, per run directory.

    from minivz.evaluate import EvalConfig, evaluate
    evaluate(EvalConfig(data="data/ml100k", verbalizer="template", reasoner="knn",
                        eval_split="test", limit=500, out="runs/eval-knn"))

A run directory holds:
    config.yaml      the resolved EvalConfig
    samples.jsonl    one line per example: example_id, discovery, label, scores, choice, valid,
                     verbalization (text), audit fields; appended batch by batch, so a killed
                     run resumes where it stopped (examples already in the file are skipped)
    metrics.json     minivz.metrics.summarize over all samples (all / discovery, 95% CIs)
    audit.json       minivz.audit over the verbalizations
    env.json         versions and hardware
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from minivz.config import EvalConfig, dump_yaml
from minivz.rundir import append_jsonl, read_jsonl, resume_jsonl, write_env


def build_queries(data, examples, texts: list[str], history_ids: list[np.ndarray]):
    from minivz.reason.base import Query

    cands = examples["candidates"].to_pylist()
    return [
        Query(context=t, candidates=data.item_texts(c), candidate_ids=np.asarray(c, dtype=np.int32),
              history_ids=h)
        for t, c, h in zip(texts, cands, history_ids)
    ]


def item_stats_for(data):
    from minivz.reason.base import ItemStats

    genres = data.items["genres"].to_pylist() if "genres" in data.items.column_names else None
    return ItemStats.from_sequences(data.train_sequences(), data.n_items, titles=data.items["title"].to_pylist(),
                                    genres=[list(g or []) for g in genres] if genres is not None else None)


# What makes two evaluations' samples the same kind of thing; limit, batch size, n_boot may change
# between a run and its resumption (a larger --limit extends the run).
_SAMPLE_KEYS = ("data", "verbalizer", "reasoner", "eval_split", "eval_history", "seed")


def _check_same_run(out: Path, cfg: EvalConfig) -> None:
    """Refuse to resume ``out`` with settings that would mix two kinds of samples in one file."""
    import yaml

    old_path, samples = out / "config.yaml", out / "samples.jsonl"
    if not (old_path.is_file() and samples.is_file() and samples.stat().st_size):
        return
    old = yaml.safe_load(old_path.read_text()) or {}
    diff = [f"{k}: {old.get(k)!r} -> {getattr(cfg, k)!r}" for k in _SAMPLE_KEYS
            if k in old and str(old[k]) != str(getattr(cfg, k))]
    if diff:
        raise ValueError(f"{out} holds samples of another evaluation ({'; '.join(diff)}); resuming would mix "
                         f"them. Use a new --out, or delete {samples} to start over.")


def evaluate(cfg: EvalConfig, progress: Callable[[int, int], None] | None = None) -> dict:
    """Run (or resume) one evaluation; returns the metrics dict also written to metrics.json."""
    from minivz.audit import audit_verbalizations
    from minivz.dataset import PreparedData
    from minivz.metrics import summarize
    from minivz.reason import make_reasoner
    from minivz.verbalize import make_verbalizer
    from minivz.verbalize.template import TemplateVerbalizer

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_run(out, cfg)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    write_env(out)
    data = PreparedData.load(cfg.data)
    ex = data.examples(cfg.eval_split, limit=cfg.limit or None)
    samples_path = out / "samples.jsonl"
    done = resume_jsonl(samples_path)
    ids = ex["example_id"].to_numpy()
    todo = np.flatnonzero(~np.isin(ids, np.fromiter(done, dtype=np.int64, count=len(done))))

    verbalizer = make_verbalizer(cfg.verbalizer)
    template = TemplateVerbalizer()
    reasoner = make_reasoner(cfg.reasoner, item_stats=item_stats_for(data))
    t_verb = t_reason = 0.0
    n_total = ex.num_rows
    if progress:
        progress(n_total - len(todo), n_total)
    for b in range(0, len(todo), cfg.batch_size):
        sel = todo[b:b + cfg.batch_size]
        batch = ex.take(sel)
        hists = data.histories(batch, max_events=cfg.eval_history)
        t0 = time.perf_counter()
        texts = verbalizer.verbalize(hists)
        t1 = time.perf_counter()
        hist_ids = data.history_ids(batch, max_events=cfg.eval_history)
        preds = reasoner.predict(build_queries(data, batch, texts, hist_ids))
        t2 = time.perf_counter()
        t_verb += t1 - t0
        t_reason += t2 - t1
        tmpl = template.verbalize(hists)
        append_jsonl(samples_path, ({
            "example_id": int(row["example_id"]),
            "user_id": row["user_id"],
            "discovery": bool(row["discovery"]),
            "label": int(row["label"]),
            "candidates": row["candidates"],
            "scores": [float(s) if np.isfinite(s) else None for s in np.asarray(p.scores, dtype=float)],
            "choice": int(p.choice),
            "valid": bool(p.valid),
            "verbalization": text,
            "template_chars": len(tt),
        } for row, text, tt, p in zip(batch.to_pylist(), texts, tmpl, preds)))
        if progress:
            progress(n_total - len(todo) + b + len(sel), n_total)

    rows = [r for r in read_jsonl(samples_path) if r["example_id"] in set(ids.tolist())]
    scores = np.array([[(-np.inf if s is None else s) for s in r["scores"]] for r in rows], dtype=float)
    labels = np.array([r["label"] for r in rows], dtype=int)
    valid = np.array([r["valid"] for r in rows], dtype=bool)
    disc = np.array([r["discovery"] for r in rows], dtype=bool)
    metrics = summarize(scores, labels, valid, disc, n_boot=cfg.n_boot, seed=cfg.seed)
    metrics["run"] = {
        "verbalizer": cfg.verbalizer,
        "reasoner": cfg.reasoner,
        "split": cfg.eval_split,
        "n_examples": len(rows),
        "tie_rule": data.manifest.get("tie_rule"),
        "split_rule": data.manifest.get("split_rule"),
        "eval_history": cfg.eval_history,
        # the examples these metrics cover (samples.jsonl may hold more, from an earlier larger --limit)
        "example_ids": sorted(int(r["example_id"]) for r in rows),
        "seconds_verbalize_this_session": round(t_verb, 3),
        "seconds_reason_this_session": round(t_reason, 3),
        "verbalizer_stats": getattr(verbalizer, "stats", {}),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))

    # audit needs the histories again; rebuild them for the evaluated examples
    by_id = {r["example_id"]: r for r in rows}
    ordered = ex.filter(np.isin(ids, np.array(list(by_id), dtype=np.int64)))
    hists = data.histories(ordered, max_events=cfg.eval_history)
    texts = [by_id[int(i)]["verbalization"] for i in ordered["example_id"].to_numpy()]
    catalog = data.items["title"].to_pylist()
    audit = audit_verbalizations(texts, hists, catalog, template.verbalize(hists))
    (out / "audit.json").write_text(json.dumps(audit, indent=2, default=str))
    return metrics
