"""Bounded-memory ``minivz data prepare``: a log larger than its memory budget is cut into shards of users,
and each shard goes through the in-memory path's own steps, so the files written hold the same tables.

``prepare`` takes this path for ``--input`` logs when the estimated working set (``BYTES_PER_EVENT`` per
input row) exceeds ``memory_gb`` (default: half the machine's memory), or when ``--set shards=N`` asks::

    minivz data prepare --input warehouse/views/ --out data/views --set memory_gb=4
    minivz data prepare --input warehouse/views/ --out data/views --set shards=8

1. **scan**: every file once, validated as in memory (``events_from_table``, the catalog check): the kept
   user ids with their event counts and the kept item ids. Sorted, they are the in-memory path's dense
   codes (``examples.id_order``), so a user's code does not depend on its shard.
2. **spill**: every file again; each row goes to the shard that owns its user. Shards are contiguous
   ranges of user codes holding about equal events, so a row finds its shard by comparing its id with
   the shards' first ids (no lookup table). Rows are written as Arrow IPC under ``OUT/.shards/``,
   removed at the end.
3. **per shard**: validate, drop duplicates (copies share their user, so their shard), encode, order,
   sessions, series runs, split, examples: the kernels of the in-memory path. A shard's events in
   (user, ts, item) order are one contiguous block of the in-memory order, so its global rows, sessions
   and runs are its own plus the counts of the shards before it; each target's negatives are seeded by
   (seed, user code, position in the user's rows) and come out the same. Each shard is appended as row
   groups of the same files (``events.parquet``, ``train.parquet``, ...): readers see one layout.

A time split or popularity negatives need numbers of the whole deduplicated log (event-time
quantiles, item counts) before any example is drawn: then step 3 runs twice, first to count.
Peak memory is one shard's working set plus the id dictionaries (and, for a time split, 8 bytes per
event of times).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from minivz.config import DataConfig
from minivz.events import (
    EVENT_OPTIONAL, EVENT_REQUIRED, _Rejects, _as_string_ids, _combine, _resolve_map, check_catalog, check_maps,
    drop_duplicates, events_from_table, id_sources, read_catalog, text_sources, write_rejects,
)
from minivz.examples import (
    SPLITS, CatalogSeries, PrepareSummary, SortedLog, _catalog, _events_table, _runs_table, _text_columns,
    build_split_examples, check_candidates, id_order, id_sort_keys, numeric_ids, order_log, session_runs,
    split_tables, time_quantiles,
)
from minivz.log import Files, as_text, input_files, mixed_columns, read_file
from minivz.timestamps import ts_window_us

# Peak bytes per input event of one shard: 8.11 GiB for 12.6M events per shard at 100M events of the
# benchmark log (~670 B; in memory at 10M ~410 B: a shard also holds its spilled raw rows).
BYTES_PER_EVENT = 700
# RSS of the process before any data (Python, NumPy, Arrow, the compiled kernels): ~240 MB measured
BASE_BYTES = 300 * 2**20
# A local Ray cluster's own processes (GCS, raylet, agents), beside each worker's BASE_BYTES, and the
# share of the budget its object store gets (the shards' results pass through it)
RAY_BASE_BYTES = 768 * 2**20
RAY_STORE_SHARE = 0.2
_ROW, _FILE = "__minivz_row", "__minivz_file"


def memory_total(cfg: DataConfig) -> int:
    """Bytes the whole command may hold: ``memory_gb``, or half of this machine's memory."""
    if cfg.memory_gb > 0:
        return int(cfg.memory_gb * 2**30)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)


def memory_budget(cfg: DataConfig) -> int:
    """Bytes ``prepare``'s data may hold: ``memory_total`` less the process's own ``BASE_BYTES`` (at
    least 64 MB)."""
    return max(memory_total(cfg) - BASE_BYTES, 64 * 2**20)


def estimate_rows(found: Files) -> int:
    """Input rows, from Parquet footers (exact) or from text files' sizes over their first lines' length."""
    n = 0
    for f in found.files:
        if found.kind == "parquet":
            n += pq.ParquetFile(f).metadata.num_rows
            continue
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(1 << 16)
        lines = max(head.count(b"\n"), 1)
        n += int(size / (len(head) / lines))
    return n


def plan_shards(cfg: DataConfig, found: Files) -> int:
    """How many shards the log needs (1: prepare it in memory). With an engine other than local, at least
    2 (``_prepare_sharded`` raises it to the engine's workers): the user asked for its workers."""
    if cfg.shards:
        return int(cfg.shards)
    need = max(1, math.ceil(estimate_rows(found) * BYTES_PER_EVENT / memory_budget(cfg)))
    return need if cfg.engine == "local" else max(2, need)


@dataclass
class Scan:
    """What step 1 learns: the kept users (sorted, with their events) and items, the columns' one schema."""
    users: pa.Array
    user_events: np.ndarray
    numeric_users: bool
    items: pa.Array
    schema: pa.Schema
    mixed: set
    n_read: int
    bad: list = field(default_factory=list)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with every column of ``schema``, in its order and types (missing ones null): the table
    ``log._concat`` would hold for this file."""
    cols = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def _mapped_sources(cmap: dict) -> list[str]:
    return list(dict.fromkeys([cmap.get(c, c) for c in EVENT_REQUIRED] + list(cmap.values())))


def _merge_counts(parts: list[pa.Table]) -> pa.Table:
    t = pa.concat_tables(parts)
    return t.group_by("id", use_threads=False).aggregate([("n", "sum")]).rename_columns(["id", "n"])


# ----------------------------------------------------------------------------------- engines

class LocalEngine:
    """Runs each task in this process, one after another."""

    workers = 1
    reserved = 0

    def put(self, value):
        return value

    def map(self, fn, args: list[tuple]):
        for a in args:
            yield fn(*a)

    def close(self) -> None:
        pass


class RayEngine:
    """Runs each task on a Ray cluster: a local one (``engine_workers`` CPUs, default all) or the one at
    ``ray_address`` (``auto``: the running cluster; its nodes must see ``--out``, where shards spill).
    Results come back in task order; the tasks run ``engine_workers`` at a time."""

    def __init__(self, cfg: DataConfig):
        try:
            import ray
        except ImportError as e:
            raise ImportError("engine=ray needs Ray: pip install 'minivz[distributed]'") from e
        self.ray = ray
        self.started = not ray.is_initialized()
        # bytes of the budget that are Ray's, not the shards': on a local cluster this process starts,
        # its object store (RAY_STORE_SHARE of the budget), its own processes and each worker's base
        self.reserved = 0
        if self.started:
            opts = {"include_dashboard": False, "log_to_driver": False}
            if cfg.ray_address:
                ray.init(address=cfg.ray_address, **opts)
            else:
                workers = cfg.engine_workers or os.cpu_count()
                store = max(128 * 2**20, int(RAY_STORE_SHARE * memory_total(cfg)))
                ray.init(num_cpus=workers, object_store_memory=store, **opts)
                self.reserved = store + RAY_BASE_BYTES + workers * BASE_BYTES
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def put(self, value):
        return self.ray.put(value)

    def map(self, fn, args: list[tuple]):
        """``fn(*a)`` for each of ``args`` as Ray tasks, results in order (the caller appends each shard's
        tables to the files), at most ``workers`` tasks pending: Ray's "limit pending tasks" pattern.
        A result stays in the object store while its ref lives: with every task submitted at once, each
        finished shard's tables would wait there until the caller reached it."""
        remote = self.ray.remote(num_cpus=1)(fn)
        todo = iter(args)
        pending = deque(remote.remote(*a) for a in islice(todo, self.workers))
        while pending:
            value = self.ray.get(pending.popleft())  # its ref dropped: freed once the caller is done
            a = next(todo, None)
            if a is not None:
                pending.append(remote.remote(*a))
            yield value
            del value

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def engine_of(cfg: DataConfig):
    return RayEngine(cfg) if cfg.engine == "ray" else LocalEngine()


# ----------------------------------------------------------------------------- step 1: scan

@dataclass
class FileScan:
    users: pa.Table  # id, n: kept events per user id in this file
    items: pa.Array  # distinct kept item ids
    schema: pa.Schema
    n_read: int
    bad: list


def scan_file(cfg: DataConfig, found: Files, cmap: dict, items: pa.Table | None, i: int) -> FileScan:
    """File ``i`` read and validated as in memory; only its ids, counts and schema are kept."""
    window = ts_window_us(cfg.ts_min, cfg.ts_max)
    table, rows, b, _ = read_file(found, i, text_sources(cmap), cfg.encoding, cfg.delimiter)
    schema = table.schema
    for c in _mapped_sources(cmap):  # a column this file lacks is null here, as in the concatenated log
        if c not in table.column_names:
            table = table.append_column(c, pa.nulls(table.num_rows, pa.string()))
    ev, _ = events_from_table(table, cmap, row_numbers=rows, ts_unit=cfg.ts_unit, naive_tz=cfg.naive_tz,
                              window=window)
    if items is not None:
        ev = ev.filter(pc.is_in(ev["item_id"], value_set=items["item_id"].combine_chunks()))
    vc = pc.value_counts(ev["user_id"])
    return FileScan(pa.table({"id": vc.field("values"), "n": vc.field("counts")}), pc.unique(ev["item_id"]),
                    schema, table.num_rows + len(b), [(i, row, reason, raw) for row, reason, raw in b])


def scan(cfg: DataConfig, found: Files, cmap: dict, items: pa.Table | None, engine, say) -> Scan:
    """Step 1: every file read and validated once (``scan_file``, one task per file), merged."""
    users, items_seen, schemas, bad = [], [], [], []
    n_read, pending = 0, 0
    args = [(cfg, found, cmap, items, i) for i in range(len(found.files))]
    for i, fs in enumerate(engine.map(scan_file, args)):
        say(f"scan {i + 1}/{len(found.files)}")
        schemas.append(fs.schema)
        n_read += fs.n_read
        bad.extend(fs.bad)
        users.append(fs.users)
        items_seen.append(fs.items)
        pending += fs.users.num_rows
        if pending > 4_000_000:  # merge as we go: memory follows the distinct users, not the files
            users, pending = [_merge_counts(users)], 0
            items_seen = [pc.unique(pa.chunked_array(items_seen).combine_chunks())]
    names = {f.name for s in schemas for f in s}
    _resolve_map(list(names), cmap, EVENT_REQUIRED, EVENT_OPTIONAL, "--map", "events log")  # as in memory
    mixed = mixed_columns(schemas)
    unified = pa.unify_schemas([_text_schema(s, mixed) for s in schemas], promote_options="permissive")
    counts = _merge_counts(users)
    uniq = counts["id"].combine_chunks()
    order = id_order(uniq)
    uitems = pc.unique(pa.chunked_array(items_seen, pa.string()).combine_chunks())
    return Scan(uniq.take(pa.array(order)), counts["n"].to_numpy()[order], numeric_ids(uniq),
                uitems.take(pa.array(id_order(uitems))), unified, mixed, n_read, bad)


def _text_schema(schema: pa.Schema, mixed: set) -> pa.Schema:
    return pa.schema([pa.field(f.name, pa.string()) if f.name in mixed else f for f in schema])


def shard_bounds(user_events: np.ndarray, n_shards: int) -> np.ndarray:
    """First user code of each shard (0 first): cuts at equal shares of the events."""
    before = np.cumsum(user_events) - user_events  # events of the users before each one
    total = int(user_events.sum())
    cuts = np.searchsorted(before, [total * k / n_shards for k in range(1, n_shards)], side="left")
    return np.unique(np.concatenate([[0], cuts[cuts < len(before)]])).astype(np.int64)


def shard_of(ids: pa.Array, firsts: pa.Array, numeric: bool) -> np.ndarray:
    """Each id's shard: how many shards' first ids sort at or before it (null ids: shard 0)."""
    shard = np.zeros(len(ids), np.int32)
    if len(firsts) <= 1:
        return shard
    keys = id_sort_keys(pc.fill_null(ids, ""), numeric)
    for first in id_sort_keys(firsts, numeric).slice(1).to_pylist():
        after = None  # id >= first, lexicographic over the sort keys
        equal = None
        for name in keys.column_names:
            col, val = keys[name], first[name]
            gt = pc.greater(col, val)
            term = gt if equal is None else pc.and_(equal, gt)
            after = term if after is None else pc.or_(after, term)
            eq = pc.equal(col, val)
            equal = eq if equal is None else pc.and_(equal, eq)
        shard += np.asarray(pc.or_(after, equal), bool)
    return np.where(np.asarray(pc.is_null(ids)), 0, shard).astype(np.int32)


# ---------------------------------------------------------------------------- step 2: spill

@dataclass
class SpillPlan:
    """What a spill task needs: the one schema, the shards' first ids, where shards go."""
    schema: pa.Schema
    mixed: set
    firsts: pa.Array
    numeric: bool
    dir: str


def spill_file(cfg: DataConfig, found: Files, cmap: dict, plan: SpillPlan, i: int) -> int:
    """File ``i``'s rows, conformed to the one schema, into ``s{shard}-f{i}.arrow`` of their users' shards
    (Arrow IPC streams). Returns the rows written."""
    table, rows, _, _ = read_file(found, i, text_sources(cmap), cfg.encoding, cfg.delimiter)
    table = _conform(as_text(table, plan.mixed), plan.schema)
    table = table.append_column(_ROW, pa.array(rows, pa.int64()))
    table = table.append_column(_FILE, pa.array(np.full(table.num_rows, i, np.int32)))
    shard = shard_of(_as_string_ids(table[cmap.get("user_id", "user_id")]).combine_chunks(), plan.firsts,
                     plan.numeric)
    order = np.argsort(shard, kind="stable")
    table = table.take(pa.array(order))
    ends = np.cumsum(np.bincount(shard, minlength=len(plan.firsts)))
    opts = pa.ipc.IpcWriteOptions(compression="lz4")
    start = 0
    for k, end in enumerate(ends):
        if end > start:
            # a stream, not an IPC file: a file's dictionary columns may bring several dictionaries
            with pa.ipc.new_stream(str(Path(plan.dir) / f"s{k:05d}-f{i:06d}.arrow"), table.schema,
                                   options=opts) as w:
                w.write_table(table.slice(start, end - start))
        start = int(end)
    return table.num_rows


# ---------------------------------------------------------------------------- step 3: shards

@dataclass
class ShardJob:
    """What a shard task reads (an engine ships it to its workers once)."""
    cfg: DataConfig
    cmap: dict
    files: list[str]
    items: pa.Table | None  # the canonical catalog, or None
    users: pa.Array  # every kept user id, in code order
    item_ids: pa.Array  # every kept item id, in code order
    bounds: np.ndarray  # first user code of each shard
    ends: np.ndarray  # one past its last
    dir: str  # the spill
    catalog: pa.Table  # n_events filled when popularity negatives need it
    series: CatalogSeries  # the catalog's series codes, seasons and episodes (read once)
    cuts: tuple | None = None  # the time split's cut-offs


class _ShardEvents(NamedTuple):
    log: SortedLog | None  # None: no row of the shard was kept
    rejects: pa.Table
    n_duplicates: int


def shard_events(job: ShardJob, k: int) -> _ShardEvents:
    """Shard ``k``'s spilled rows validated, checked against the catalog, deduplicated, encoded with the
    log's codes and ordered by (user, ts, item): ``encode_sorted`` for users ``bounds[k]..ends[k]``."""
    cfg, cmap = job.cfg, job.cmap
    parts = sorted(Path(job.dir).glob(f"s{k:05d}-f*.arrow"))  # in file order
    tables = []
    for path in parts:
        with pa.memory_map(str(path)) as src:
            tables.append(pa.ipc.open_stream(src).read_all())
    raw = pa.concat_tables(tables)
    del tables
    rows, codes = raw[_ROW].to_numpy(), raw[_FILE].to_numpy()
    raw = raw.drop_columns([_ROW, _FILE])
    events, rej = events_from_table(raw, cmap, row_numbers=rows, file_codes=codes, files=job.files,
                                    ts_unit=cfg.ts_unit, naive_tz=cfg.naive_tz,
                                    window=ts_window_us(cfg.ts_min, cfg.ts_max))
    if job.items is not None:
        events = check_catalog(events, job.items, rej, raw, rows, codes)
    n_dup = 0
    if cfg.dedupe:
        events, n_dup = drop_duplicates(events, rej, raw, rows, codes, id_sources(cmap))
    del raw
    if events.num_rows == 0:
        return _ShardEvents(None, rej.to_table(), n_dup)
    lo, hi = int(job.bounds[k]), int(job.ends[k])
    user_codes = np.asarray(pc.index_in(events["user_id"], value_set=job.users.slice(lo, hi - lo)), np.int64)
    user_codes += lo
    item_codes = np.asarray(pc.index_in(events["item_id"], value_set=job.item_ids), np.int64)
    log = order_log(events.drop_columns(["_pos"]), user_codes, job.users, item_codes, job.item_ids)
    return _ShardEvents(log, rej.to_table(), n_dup)


class ShardCounts(NamedTuple):
    n_events: int
    n_sessions: int
    n_runs: int
    item_counts: np.ndarray
    ts: np.ndarray | None  # the kept times, for a time split's quantiles

    @classmethod
    def of(cls, job: ShardJob, log: SortedLog | None, series=None, keep_ts: bool = False) -> "ShardCounts":
        if log is None:
            return cls(0, 0, 0, np.zeros(len(job.item_ids), np.int64), None)
        return cls(len(log.ts), int(series.session[-1]) + 1, int(len(series.runs.start)),
                   np.bincount(log.item_codes, minlength=len(job.item_ids)), log.ts if keep_ts else None)


def _series(job: ShardJob, log: SortedLog):
    return session_runs(job.cfg, log, job.series, lambda _m: None)


def count_shard(job: ShardJob, k: int) -> ShardCounts:
    """Shard ``k``'s totals, which the shards after it offset by (and the whole log's counts need)."""
    log = shard_events(job, k).log
    return ShardCounts.of(job, log, _series(job, log) if log is not None else None, job.cfg.split == "time")


@dataclass
class ShardOut:
    """One shard's output tables (global rows, sessions, runs) and totals."""
    tables: dict
    rejects: pa.Table
    n_duplicates: int
    counts: ShardCounts
    examples: dict = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    discovery: dict = field(default_factory=lambda: dict.fromkeys(SPLITS, 0.0))
    skipped: dict = field(default_factory=lambda: {"short_history": 0, "no_negatives": 0})
    split_rule: str = ""


def build_shard(job: ShardJob, k: int, offsets: tuple[int, int, int]) -> ShardOut:
    """Shard ``k`` through the in-memory steps: its tables, offset by (events, sessions, runs) before it."""
    cfg = job.cfg
    sh = shard_events(job, k)
    log = sh.log
    if log is None:
        return ShardOut({}, sh.rejects, sh.n_duplicates, ShardCounts.of(job, None))
    row0, sess0, run0 = offsets
    series = _series(job, log)
    ex, split_rule = build_split_examples(cfg, log, job.catalog, series, time_cuts=job.cuts)
    tables = {
        "events": _events_table(log.events, log.user_codes, log.item_codes, log.ts, job.users, job.item_ids,
                                series.session + sess0, np.asarray(series.runs.run_of_event) + run0),
        "runs": _runs_table(series.runs, series.series_names, run0, row0),
    }
    n_ex, disc = {}, {}
    for name, table, n_discovery in split_tables(ex, log, cfg.n_candidates, row0):
        tables[name], n_ex[name], disc[name] = table, table.num_rows, n_discovery
    skipped = {"short_history": int(ex.n_skipped_short_history), "no_negatives": int(ex.n_skipped_no_negatives)}
    return ShardOut(tables, sh.rejects, sh.n_duplicates, ShardCounts.of(job, log, series), n_ex, disc, skipped,
                    split_rule)


class _Writers:
    """One Parquet writer per output file; each shard's table is appended as row groups."""

    def __init__(self, out: Path):
        self.out, self.open, self.schemas = out, {}, {}

    def write(self, name: str, table: pa.Table) -> None:
        w = self.open.get(name)
        if w is None:
            self.schemas[name] = table.schema
            w = self.open[name] = pq.ParquetWriter(self.out / f"{name}.parquet", table.schema,
                                                   use_dictionary=_text_columns(table.schema))
        schema = self.schemas[name]
        w.write_table(table if table.schema == schema else table.cast(schema))

    def close(self, empty: dict[str, pa.Schema]) -> None:
        for w in self.open.values():
            w.close()
        for name, schema in empty.items():  # a split no shard had: an empty file, as in memory
            if name not in self.open:
                pq.write_table(schema.empty_table(), self.out / f"{name}.parquet")


class NoEvents(Exception):
    """No row survives validation: ``prepare`` reads the log in memory, where the answer names the reasons."""


@dataclass
class _Totals:
    counts: np.ndarray
    rejects: list = field(default_factory=list)
    n_events: int = 0
    n_sessions: int = 0
    n_runs: int = 0
    n_duplicates: int = 0
    examples: dict = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    discovery: dict = field(default_factory=lambda: dict.fromkeys(SPLITS, 0.0))
    skipped: dict = field(default_factory=lambda: {"short_history": 0, "no_negatives": 0})
    split_rule: str = ""

    def add(self, o: ShardOut) -> None:
        # a copy: a table from a Ray task's result shares its buffers with that whole result in the
        # object store, and holding it pins every shard's tables there (22 GB at 100M events, 2026-12-08)
        self.rejects.append(o.rejects.take(pa.array(np.arange(o.rejects.num_rows))))
        self.n_duplicates += o.n_duplicates
        self.counts += o.counts.item_counts
        self.n_events += o.counts.n_events
        self.n_sessions += o.counts.n_sessions
        self.n_runs += o.counts.n_runs
        for s in SPLITS:
            self.examples[s] += o.examples[s]
            self.discovery[s] += o.discovery[s]
        for why in self.skipped:
            self.skipped[why] += o.skipped[why]
        self.split_rule = o.split_rule or self.split_rule


def _build_all(engine, job_ref, n: int, offsets: list | None):
    """Every shard's ``ShardOut`` in order: with known offsets as engine tasks, else one after another
    here, each offset by the ones before it (no count pass)."""
    if offsets is not None:
        yield from engine.map(build_shard, [(job_ref, k, offsets[k]) for k in range(n)])
        return
    off = (0, 0, 0)
    for k in range(n):
        o = build_shard(job_ref, k, off)
        yield o
        off = (off[0] + o.counts.n_events, off[1] + o.counts.n_sessions, off[2] + o.counts.n_runs)


def prepare_sharded(cfg: DataConfig, found: Files, out: Path, n_shards: int, say) -> tuple[PrepareSummary, str, str]:
    """Steps 1-3 (module docstring) for the log's files ``found`` (``input_files``' result): writes ``out``
    as ``examples.prepare`` does; returns (summary, split rule, source) for the manifest."""
    engine = engine_of(cfg)
    try:
        return _prepare_sharded(cfg, found, out, n_shards, engine, say)
    finally:
        engine.close()


def _with_counts(catalog: pa.Table, counts: np.ndarray) -> pa.Table:
    return catalog.set_column(catalog.column_names.index("n_events"), "n_events", pa.array(counts))


def _prepare_sharded(cfg, found, out, n_shards, engine, say):
    given = out
    secs: dict[str, float] = {}
    t0 = time.perf_counter()
    cmap = dict(cfg.map or {})
    ifound = input_files(cfg.items) if cfg.items is not None else None
    check_maps(found, cmap, delimiter=cfg.delimiter, items_path=ifound, items_map=cfg.items_map or None,
               encoding=cfg.encoding)
    items, item_rej = read_catalog(ifound, cfg.items_map, cfg.encoding) if ifound is not None else (None, None)
    files = [str(f) for f in found.files]  # as rejects name them
    if not isinstance(engine, LocalEngine):  # a worker's working directory need not be ours
        found = Files([f.resolve() for f in found.files], found.parts, found.kind)
        out = out.resolve()
    sc = scan(cfg, found, cmap, items, engine, say)
    secs["scan"] = time.perf_counter() - t0
    if len(sc.users) == 0:
        raise NoEvents()
    check_candidates(cfg, len(sc.items))
    if not cfg.shards:  # the exact count of kept events; shards run `workers` at a time, one each at least
        left = max(memory_budget(cfg) - engine.reserved, 64 * 2**20)  # Ray's share set aside
        n_shards = max(n_shards, engine.workers,
                       math.ceil(int(sc.user_events.sum()) * BYTES_PER_EVENT * engine.workers / left))
    n_shards = max(1, min(n_shards, len(sc.users)))
    bounds = shard_bounds(sc.user_events, n_shards)
    ends = np.append(bounds[1:], len(sc.users))
    tmp = out / ".shards"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        t0 = time.perf_counter()
        plan = SpillPlan(sc.schema, sc.mixed, sc.users.take(pa.array(bounds)), sc.numeric_users, str(tmp))
        for i, _ in enumerate(engine.map(spill_file, [(cfg, found, cmap, plan, i) for i in range(len(files))])):
            say(f"spill {i + 1}/{len(files)}")
        secs["spill"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        catalog = _catalog(items, sc.items.to_pylist(), np.zeros(len(sc.items), np.int64))
        job = ShardJob(cfg, cmap, files, items, sc.users, sc.items, bounds, ends, str(tmp), catalog,
                       CatalogSeries.of(catalog))
        offsets = None
        needs_totals = cfg.negatives == "popularity" or cfg.split == "time"
        if needs_totals or not isinstance(engine, LocalEngine):
            counts, job_ref = [], engine.put(job)
            for k, c in enumerate(engine.map(count_shard, [(job_ref, k) for k in range(len(bounds))])):
                say(f"count shard {k + 1}/{len(bounds)}")
                counts.append(c)
            cum = np.cumsum([[0, 0, 0]] + [[c.n_events, c.n_sessions, c.n_runs] for c in counts[:-1]], axis=0)
            offsets = [tuple(int(v) for v in row) for row in cum]
            n_events = np.sum([c.item_counts for c in counts], axis=0)
            job.catalog = _with_counts(catalog, n_events)
            if cfg.split == "time":
                job.cuts = time_quantiles(cfg, np.concatenate([c.ts for c in counts if c.ts is not None]))
            del counts
        tot = _Totals(np.zeros(len(sc.items), np.int64))
        writers, empty = _Writers(out), {}
        try:
            job_ref = engine.put(job) if offsets is not None else job
            for k, o in enumerate(_build_all(engine, job_ref, len(bounds), offsets)):
                say(f"shard {k + 1}/{len(bounds)}")
                for name, table in o.tables.items():
                    empty[name] = table.schema
                    if table.num_rows:
                        writers.write(name, table)
                tot.add(o)
                del o
        finally:
            writers.close(empty)
        secs["shards"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    catalog = _with_counts(catalog, tot.counts)
    pq.write_table(catalog, out / "items.parquet", use_dictionary=_text_columns(catalog.schema))
    rej = _Rejects("events", files=files)
    _combine(rej, sc.bad)
    rejects = pa.concat_tables([rej.to_table()] + tot.rejects).sort_by([("file", "ascending"), ("row", "ascending")])
    n_rejected = rejects.num_rows
    if item_rej is not None:
        rejects = pa.concat_tables([rejects, item_rej.to_table()])
    write_rejects(rejects, out / "rejects.parquet")
    secs["write_catalog_rejects"] = time.perf_counter() - t0
    assert sc.n_read == tot.n_events + n_rejected, (sc.n_read, tot.n_events, n_rejected)
    summary = PrepareSummary(
        out=given, n_read=sc.n_read, n_rejected=n_rejected, n_catalog_rejected=rejects.num_rows - n_rejected,
        n_duplicates=tot.n_duplicates, n_events=tot.n_events, n_users=len(sc.users),
        n_items=len(sc.items), n_sessions=tot.n_sessions, n_runs=tot.n_runs, examples=tot.examples,
        discovery_share={s: tot.discovery[s] / tot.examples[s] if tot.examples[s] else 0.0 for s in SPLITS},
        skipped=tot.skipped, seconds={k: round(v, 3) for k, v in secs.items()}, shards=len(bounds),
    )
    return summary, tot.split_rule, str(cfg.input)
