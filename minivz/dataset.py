"""Read a prepared data directory (written by ``minivz data prepare``).

    from minivz.dataset import PreparedData
    data = PreparedData.load("data/ml100k")
    test = data.examples("test")                 # pyarrow.Table, schema in minivz.examples
    hists = data.histories(test, max_events=20)  # list[list[dict]], oldest event first
    texts = data.item_texts(test["candidates"][0].values.to_numpy())

A history event dict has: ts (datetime, UTC), item_id, item_idx, title, year,
genres (list[str]), interaction, duration_s, series_id, season, episode,
session, run, and the source's metadata columns (e.g. rating).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from minivz.examples import SCHEMA_VERSION, SPLITS

_CORE = ("user_id", "user_idx", "ts", "item_id", "item_idx", "interaction", "duration_s", "session", "run")


@dataclass
class PreparedData:
    path: Path
    manifest: dict
    events: pa.Table
    items: pa.Table

    @classmethod
    def load(cls, path: str | Path) -> "PreparedData":
        path = Path(path)
        man = path / "manifest.json"
        if not man.exists():
            raise FileNotFoundError(
                f"{path} is not a prepared data directory (no manifest.json); "
                f"create it with: minivz data prepare --source movielens-100k --out {path}"
            )
        manifest = json.loads(man.read_text())
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"{path}: schema_version {manifest.get('schema_version')} != {SCHEMA_VERSION}; "
                "re-run minivz data prepare with this version of minivz"
            )
        return cls(path, manifest, pq.read_table(path / "events.parquet"), pq.read_table(path / "items.parquet"))

    def examples(self, split: str, limit: int | None = None) -> pa.Table:
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: use one of {', '.join(SPLITS)}")
        path = self.path / f"{split}.parquet"
        if limit is None:
            return pq.read_table(path)
        f = pq.ParquetFile(path)  # only the row groups the first ``limit`` rows are in
        batches, n = [], 0
        for batch in f.iter_batches(batch_size=max(1, min(limit, 65_536))):
            if n >= limit:
                break
            batches.append(batch.slice(0, limit - n))
            n += batches[-1].num_rows
        return pa.Table.from_batches(batches, schema=f.schema_arrow)

    @property
    def n_items(self) -> int:
        return self.items.num_rows

    @cached_property
    def _titles(self) -> list[str]:
        return self.items["title"].to_pylist()

    @cached_property
    def _years(self) -> list:
        return self.items["year"].to_pylist()

    def item_text(self, item_idx: int) -> str:
        """``Title (year)``: how an item is named to a reasoner."""
        title, year = self._titles[item_idx], self._years[item_idx]
        return f"{title} ({year})" if year is not None and f"({year})" not in title else title

    def item_texts(self, item_idx) -> list[str]:
        return [self.item_text(int(i)) for i in item_idx]

    @cached_property
    def _event_cols(self) -> dict[str, np.ndarray | list]:
        ev = self.events
        cols: dict[str, np.ndarray | list] = {
            "ts": ev["ts"].cast(pa.int64()).to_numpy(),
            "item_idx": ev["item_idx"].to_numpy(),
            "session": ev["session"].to_numpy(),
            "run": ev["run"].to_numpy(),
            "interaction": ev["interaction"].to_pylist(),
            "duration_s": ev["duration_s"].to_pylist(),
        }
        for c in ev.column_names:
            if c not in _CORE:
                cols[c] = ev[c].to_pylist()
        return cols

    @cached_property
    def _item_cols(self) -> dict[str, list]:
        it = self.items
        return {c: it[c].to_pylist() for c in
                ("item_id", "title", "year", "genres", "series_id", "season", "episode", "description")}

    def event(self, row: int) -> dict:
        e, it = self._event_cols, self._item_cols
        i = int(e["item_idx"][row])
        d = {
            "ts": datetime.fromtimestamp(int(e["ts"][row]) / 1e6, tz=timezone.utc),
            "item_id": it["item_id"][i],
            "item_idx": i,
            "title": it["title"][i],
            "year": it["year"][i],
            "genres": it["genres"][i] or [],
            "interaction": e["interaction"][row],
            "duration_s": e["duration_s"][row],
            "series_id": it["series_id"][i],
            "season": it["season"][i],
            "episode": it["episode"][i],
            "session": int(e["session"][row]),
            "run": int(e["run"][row]),
        }
        for c in e:
            if c not in d and c not in ("item_idx",):
                d[c] = e[c][row]
        return d

    def histories(self, examples: pa.Table, max_events: int | None = None) -> list[list[dict]]:
        """The history of each example as event dicts, oldest first; ``max_events`` keeps the most recent."""
        starts = examples["hist_start"].to_numpy()
        ends = examples["hist_end"].to_numpy()
        out = []
        for s, e in zip(starts, ends):
            if max_events is not None:
                s = max(int(s), int(e) - max_events)
            out.append([self.event(r) for r in range(int(s), int(e))])
        return out

    def history_ids(self, examples: pa.Table, max_events: int | None = None) -> list[np.ndarray]:
        items = self._event_cols["item_idx"]
        out = []
        for s, e in zip(examples["hist_start"].to_numpy(), examples["hist_end"].to_numpy()):
            if max_events is not None:
                s = max(int(s), int(e) - max_events)
            out.append(np.asarray(items[int(s):int(e)], dtype=np.int32))
        return out

    def train_sequences(self) -> list[np.ndarray]:
        """Per-user item sequences of the events before each user's first valid/test target.

        Classical baselines (popularity, item-kNN) are fitted on these, so no test
        target leaks into them.
        """
        user = self.events["user_idx"].to_numpy()
        items = self._event_cols["item_idx"]
        cut = np.full(int(user.max()) + 1 if len(user) else 0, np.iinfo(np.int64).max, dtype=np.int64)
        for split in ("valid", "test"):
            ex = self.examples(split)
            if ex.num_rows:
                u = ex["user_idx"].to_numpy()
                h = ex["hist_end"].to_numpy()
                np.minimum.at(cut, u, h)
        bounds = np.flatnonzero(np.r_[True, user[1:] != user[:-1], True])
        seqs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            end = min(int(b), int(cut[user[a]]))
            seqs.append(np.asarray(items[a:end], dtype=np.int32))
        return seqs
