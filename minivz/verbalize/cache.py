"""Verbalizations computed once and cached to JSONL, then served by the ``cached`` verbalizer.

    rows = verbalize_split(data, "rewrite:model=RUN/final/merged", "test", 200, 20, "RUN/verbalized/test.jsonl")
    make_verbalizer("cached:path=RUN/verbalized/test.jsonl").verbalize(histories)

Stage-2 training and evaluation both read the frozen verbalizer's text from here instead of
generating it again (generation is the slow part on a CPU).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from minivz.rundir import append_jsonl, is_main_process, read_jsonl, resume_jsonl


def history_key(history: list[dict]) -> str:
    """A stable key of a history (its template text): how cached verbalizations are looked up."""
    from minivz.verbalize.template import template_text

    return hashlib.sha1(template_text(history).encode("utf-8")).hexdigest()[:16]


def select_examples(data, split: str, limit: int, seed: int = 0):
    """Rows of ``split`` to use: train -> a seeded sample of ``limit`` (all users, not just the first
    ones); valid/test -> the first ``limit``, the rows ``minivz eval --limit`` takes. 0 = all."""
    ex = data.examples(split)
    if not limit or limit >= ex.num_rows:
        return ex
    if split == "train":
        rng = np.random.default_rng(seed)
        return ex.take(np.sort(rng.choice(ex.num_rows, size=limit, replace=False)))
    return ex.slice(0, limit)


def verbalize_split(data, verbalizer_spec: str, split: str, limit: int, history: int, out_path: str | Path,
                    *, seed: int = 0, batch_size: int = 16, verbalizer: Any = None,
                    progress: bool = False) -> list[dict]:
    """Verbalize the selected examples of ``split`` once and cache them to JSONL (resumable).

    One line per example: example_id, key (``history_key``), verbalization, label (index into
    candidates), candidates (item codes), n_events. Examples already in ``out_path`` are skipped;
    ``out_path.meta.json`` records the verbalizer spec and history, and a cache written by another
    verbalizer is an error rather than silently mixed in. Returns the rows of the selected
    examples, in split order. Under a launch (N processes) only the main process writes the cache;
    the others compute the same rows (deterministic verbalizers) without writing.
    """
    from minivz.verbalize import make_verbalizer

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    main = is_main_process()  # under a launch, the process that writes the cache
    meta_path = out_path.with_suffix(".meta.json")
    meta = {"verbalizer": verbalizer_spec, "history": history, "split": split}
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in meta} != meta:
            raise ValueError(f"{out_path} was verbalized with {old}, not {meta}; use another --out or delete "
                             f"{out_path} and {meta_path}")
    elif main:
        meta_path.write_text(json.dumps(meta, indent=2))
    done = resume_jsonl(out_path, write=main)

    ex = select_examples(data, split, limit, seed)
    ids = ex["example_id"].to_numpy()
    todo = np.flatnonzero(~np.isin(ids, np.fromiter(done, dtype=np.int64, count=len(done))))
    if len(todo):
        verb = verbalizer if verbalizer is not None else make_verbalizer(verbalizer_spec)
        t0 = time.perf_counter()
        for b in range(0, len(todo), batch_size):
            batch = ex.take(todo[b:b + batch_size])
            hists = data.histories(batch, max_events=history)
            texts = verb.verbalize(hists)
            recs = [{"example_id": int(row["example_id"]), "key": history_key(hist), "verbalization": text,
                     "label": int(row["label"]), "candidates": [int(c) for c in row["candidates"]],
                     "n_events": len(hist)} for row, hist, text in zip(batch.to_pylist(), hists, texts)]
            done.update((rec["example_id"], rec) for rec in recs)
            if main:
                append_jsonl(out_path, recs)
            if progress and (b // batch_size % 10 == 9 or b + batch_size >= len(todo)):
                n = b + len(batch)
                print(f"verbalize {split}: {n}/{len(todo)}  {(time.perf_counter() - t0) / n:.2f}s/example",
                      file=sys.stderr, flush=True)
    return [done[int(i)] for i in ids]


class CachedVerbalizer:
    """Serves verbalizations from ``verbalize_split`` caches, looked up by ``history_key``, so an
    evaluation reuses the frozen verbalizer's text instead of generating it again.

        make_verbalizer("cached:path=RUN/verbalized/valid.jsonl")

    A history that is not in the cache is an error (no silent fallback to another verbalizer).
    """

    name = "cached"

    def __init__(self, path: str = "") -> None:
        if not path:
            raise ValueError("the cached verbalizer needs path=FILE.jsonl (written by verbalize_split)")
        self.path = path
        self.texts = {r["key"]: r["verbalization"] for p in path.split(";") for r in read_jsonl(Path(p))}
        if not self.texts:
            raise ValueError(f"{path}: no cached verbalizations; run verbalize_split first")
        self.stats: dict = {"histories": 0, "cache_hits": 0}

    def verbalize(self, histories: list[list[dict]]) -> list[str]:
        out = []
        for h in histories:
            key = history_key(h)
            if key not in self.texts:
                raise KeyError(f"a history is not in {self.path}; verbalize this split with verbalize_split "
                               "(same history length) first")
            out.append(self.texts[key])
        self.stats["histories"] += len(histories)
        self.stats["cache_hits"] += len(histories)
        return out
