"""Bounded memory: a log prepared in shards of users writes the same tables as in memory.
Run: pytest tests/test_shards.py -q"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import minivz.shards
from minivz.config import DataConfig
from minivz.examples import SPLITS, prepare
from minivz.shards import shard_bounds, shard_of

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
MAP = {"user_id": "uid", "item_id": "sku", "ts": "at", "duration_s": "secs", "interaction": "kind"}
FILES = ("events", "items", "runs", "rejects") + SPLITS


def _part(rng, n, day, users):
    ts = [T0 + timedelta(days=day, seconds=int(s)) for s in rng.integers(0, 86_400, n)]
    t = pa.table({
        "uid": pa.array(rng.choice(users, n)),
        "sku": pa.array(rng.integers(100, 190, n), pa.int64()),
        "at": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "kind": pa.array(rng.choice(["play", "preview"], n)).dictionary_encode(),
        "secs": pa.array(rng.integers(0, 3600, n), pa.int32()),
    })
    return t


def _with_copies(rng, t):
    dup = rng.choice(np.arange(6, t.num_rows), 4, replace=False)  # at-least-once delivery: exact copies
    return pa.concat_tables([t, t.take(pa.array(dup))])


def _log(root, users, seed=0):
    """4 days x 2 parts, hive-partitioned: copies, a bad time, a file with an extra column, one where
    ``secs`` is a float (read as text in every file), one without ``secs``."""
    rng = np.random.default_rng(seed)
    for day in range(4):
        d = root / f"dt=2024-03-0{day + 1}"
        d.mkdir(parents=True)
        for part in range(2):
            t = _part(rng, 120, day, users)
            if (day, part) == (1, 0):
                t = t.append_column("device", pa.array(rng.choice(["tv", "web"], t.num_rows)))
            if (day, part) == (2, 1):
                t = t.set_column(4, "secs", pa.array(rng.random(t.num_rows) * 100))
            if (day, part) == (3, 0):
                t = t.drop_columns(["secs"])
            if (day, part) == (0, 1):
                at = t["at"].to_pylist()
                at[5] = None
                t = t.set_column(2, "at", pa.array(at, pa.timestamp("us", tz="UTC")))
            pq.write_table(_with_copies(rng, t), d / f"part-{part}.parquet")
    (root / "_SUCCESS").write_text("")
    return root


def _prepare(log, out, shards, **over):
    cfg = DataConfig(input=str(log), map=dict(MAP), history_len=8, min_history=1, shards=shards, **over)
    return prepare(cfg, out)


def _same(a, b):
    for name in FILES:
        ta, tb = pq.read_table(a / f"{name}.parquet"), pq.read_table(b / f"{name}.parquet")
        assert ta.schema == tb.schema, name
        for c in ta.column_names:  # Arrow's equality holds NaN != NaN (a run with no durations)
            if pa.types.is_floating(ta.schema.field(c).type):
                assert np.array_equal(ta[c].to_numpy(), tb[c].to_numpy(), equal_nan=True), (name, c)
            else:
                assert ta[c].equals(tb[c]), (name, c)


@pytest.mark.parametrize("users,over", [
    (np.arange(1, 60, dtype=np.int64), {}),                                   # numeric ids
    (np.array([f"u{k:x}" for k in range(60)]), {"negatives": "popularity"}),  # text ids, counts first
    (np.array([f"0{k}" for k in range(60)] + [str(k) for k in range(40)]), {"split": "time"}),
])
def test_shards_write_the_in_memory_tables(tmp_path, users, over):
    log = _log(tmp_path / "log", users)
    s1 = _prepare(log, tmp_path / "mem", 1, **over)
    s4 = _prepare(log, tmp_path / "sh", 4, **over)
    assert (s1.shards, s4.shards) == (1, 4)
    _same(tmp_path / "mem", tmp_path / "sh")
    for f in ("n_read", "n_rejected", "n_duplicates", "n_events", "n_users", "n_items", "n_sessions", "n_runs",
              "examples", "discovery_share", "skipped"):
        assert getattr(s1, f) == getattr(s4, f), f
    assert s4.n_duplicates == 32 and s4.n_rejected == 33  # 8 files x 4 copies, one unparsable time
    assert s4.n_read == s4.n_events + s4.n_rejected
    assert not (tmp_path / "sh" / ".shards").exists()
    man = json.loads((tmp_path / "sh" / "manifest.json").read_text())
    assert man["summary"]["shards"] == 4 and "spill" in man["summary"]["seconds"]


def test_a_memory_budget_picks_the_shards(tmp_path, monkeypatch):
    log = _log(tmp_path / "log", np.arange(1, 60, dtype=np.int64))
    # as if each event took 300 kB: 992 rows (~298 MB) over 0.4 GiB less the process's 300 MiB: 3 shards
    monkeypatch.setattr(minivz.shards, "BYTES_PER_EVENT", 300_000)
    s = prepare(DataConfig(input=str(log), map=dict(MAP), memory_gb=0.4), tmp_path / "out")
    assert s.shards == 3
    assert prepare(DataConfig(input=str(log), map=dict(MAP)), tmp_path / "mem").shards == 1


def test_shard_of_agrees_with_the_id_order():
    ids = pa.array(["7", "007", "10", "9", "0", "100", "70"])
    numeric_order = ["0", "7", "007", "9", "10", "70", "100"]  # by value, then the zero-padded form
    firsts = pa.array(["0", "9", "70"])
    got = shard_of(ids, firsts, numeric=True)
    want = [sum(numeric_order.index(i) >= numeric_order.index(f) for f in firsts.to_pylist()) - 1
            for i in ids.to_pylist()]
    assert got.tolist() == [w for w in want]
    text = pa.array(["b", "a", "ab", None, "c"])
    assert shard_of(text, pa.array(["a", "b"]), numeric=False).tolist() == [1, 0, 0, 0, 1]
    assert shard_bounds(np.array([5, 5, 5, 5]), 2).tolist() == [0, 2]
    assert shard_bounds(np.array([100, 1, 1]), 3).tolist() == [0, 1]  # no empty shard


def test_csv_files_with_a_catalog_and_unreadable_rows(tmp_path):
    """Text logs: types inferred per file (``secs`` int here, float there: text in both), a row the parser
    cannot read, items missing from the catalog; rejects name their file and row in either path."""
    rng = np.random.default_rng(1)
    root = tmp_path / "log"
    root.mkdir()
    for part in range(3):
        lines = ["uid;sku;at;secs"]
        for _ in range(150):
            secs = f"{rng.random() * 99:.2f}" if part == 1 else str(int(rng.integers(0, 99)))
            hh, mm = int(rng.integers(0, 24)), int(rng.integers(0, 60))
            lines.append(f"c{int(rng.integers(0, 30))};{int(rng.integers(100, 150))};"
                         f"2024-03-0{part + 1}T{hh:02d}:{mm:02d}:00Z;{secs}")
        lines.insert(40, "c1;101;2024-03-01T00:00:00Z;5;extra")  # one field too many
        lines.append(lines[10])  # a copy
        (root / f"part-{part}.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "items.csv").write_text("sku,name\n" + "".join(f"{k},Item {k}\n" for k in range(100, 145)))
    over = dict(items=str(tmp_path / "items.csv"), items_map={"item_id": "sku", "title": "name"},
                map={"user_id": "uid", "item_id": "sku", "ts": "at", "duration_s": "secs"}, history_len=5)
    s1 = prepare(DataConfig(input=str(root), shards=1, **over), tmp_path / "mem")
    s3 = prepare(DataConfig(input=str(root), shards=3, **over), tmp_path / "sh")
    _same(tmp_path / "mem", tmp_path / "sh")
    # a copy of a row whose item the catalog lacks is rejected for that, not as a copy
    assert s3.n_duplicates == s1.n_duplicates >= 1 and s3.n_rejected == s1.n_rejected > 3 + s3.n_duplicates
    reasons = pq.read_table(tmp_path / "sh" / "rejects.parquet")["reason"].to_pylist()
    assert any("not in the item catalog" in r for r in reasons)


@pytest.mark.slow
def test_a_two_worker_ray_cluster_writes_the_same_tables(tmp_path):
    """The shard function on an existing engine: scan, spill, count and build run as Ray tasks on a local
    two-worker cluster; the tables are the in-memory ones (~20 s, most of it starting Ray)."""
    from conftest import require_ray

    require_ray()
    log = _log(tmp_path / "log", np.array([f"u{k:x}" for k in range(60)]))
    s1 = _prepare(log, tmp_path / "mem", 1, negatives="popularity")
    sr = _prepare(log, tmp_path / "ray", 3, negatives="popularity", engine="ray", engine_workers=2)
    _same(tmp_path / "mem", tmp_path / "ray")
    assert sr.shards == 3 and (sr.n_events, sr.n_duplicates, sr.examples) == (s1.n_events, s1.n_duplicates,
                                                                               s1.examples)
    # engine=ray with no shard count: a log well inside the budget still goes to both workers
    sa = _prepare(log, tmp_path / "auto", 0, negatives="popularity", engine="ray", engine_workers=2)
    _same(tmp_path / "mem", tmp_path / "auto")
    assert sa.shards == 2


def test_the_ray_engine_keeps_at_most_its_workers_pending_and_totals_own_their_rejects():
    """A finished task's result stays in Ray's object store while its ref (or any buffer of it) lives:
    the engine submits at most ``workers`` tasks ahead, and the totals copy each shard's rejects out
    of its result (holding them pinned every shard's tables at 100M events)."""
    from types import SimpleNamespace

    live, peak = set(), [0]

    class Ref:
        def __init__(self, v):
            self.v = v
            live.add(id(self))
            peak[0] = max(peak[0], len(live))

    def get(ref):
        live.discard(id(ref))
        return ref.v

    ray = SimpleNamespace(remote=lambda num_cpus: lambda fn: SimpleNamespace(remote=lambda *a: Ref(fn(*a))),
                          get=get)
    engine = minivz.shards.RayEngine.__new__(minivz.shards.RayEngine)
    engine.ray, engine.workers, engine.started = ray, 2, False
    assert list(engine.map(lambda x: x * x, [(i,) for i in range(7)])) == [i * i for i in range(7)]
    assert peak[0] == 2 and not live

    rejects = pa.table({"row": pa.array([3, 5], pa.int64()), "reason": ["a", "b"]})
    counts = SimpleNamespace(item_counts=np.array([1, 2]), n_events=3, n_sessions=1, n_runs=1)
    out = minivz.shards.ShardOut({}, rejects, 0, counts)
    tot = minivz.shards._Totals(np.zeros(2, np.int64))
    tot.add(out)
    kept = tot.rejects[0]
    assert kept.equals(rejects)
    mine = {b.address for c in kept.columns for ch in c.chunks for b in ch.buffers() if b is not None}
    theirs = {b.address for c in rejects.columns for ch in c.chunks for b in ch.buffers() if b is not None}
    assert not mine & theirs
