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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from minivz.config import DataConfig
from minivz.events import (
    EVENT_REQUIRED, _Rejects, _as_string_ids, _combine, _resolve_map, EVENT_OPTIONAL, check_catalog,
    check_maps, drop_duplicates, events_from_table, items_from_table, write_rejects,
)
from minivz.examples import (
    SPLITS, CatalogSeries, PrepareSummary, SortedLog, _catalog, _events_table, _examples_table, _runs_table,
    _text_columns, build_split_examples, check_candidates, id_order, id_sort_keys, numeric_ids, session_runs,
    time_quantiles,
)
from minivz.log import Files, as_text, input_files, mixed_columns, read_file, read_input
from minivz.timestamps import ts_window_us

# Peak bytes per input event of the in-memory path (10M events of the 120-file benchmark log: 4.36 GB,
# ~440 B; the rest is margin for wider metadata).
BYTES_PER_EVENT = 600
# RSS of the process before any data (Python, NumPy, Arrow, the compiled kernels): ~240 MB measured
BASE_BYTES = 300 * 2**20
_ROW, _FILE = "__minivz_row", "__minivz_file"


def memory_budget(cfg: DataConfig) -> int:
    """Bytes ``prepare``'s data may hold: ``memory_gb`` (or half of this machine's memory) less the
    process's own ``BASE_BYTES`` (at least 64 MB)."""
    if cfg.memory_gb > 0:
        total = int(cfg.memory_gb * 2**30)
    else:
        total = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    return max(total - BASE_BYTES, 64 * 2**20)


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
    """How many shards the log needs (1: prepare it in memory)."""
    if cfg.shards:
        return int(cfg.shards)
    return max(1, math.ceil(estimate_rows(found) * BYTES_PER_EVENT / memory_budget(cfg)))


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
    delimiters: list = field(default_factory=list)


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


def scan(cfg: DataConfig, found: Files, cmap: dict, items: pa.Table | None, say) -> Scan:
    """Step 1: read and validate every file once; keep only ids, counts and schemas."""
    window = ts_window_us(cfg.ts_min, cfg.ts_max)
    text = [cmap.get(c, c) for c in ("user_id", "item_id", "ts")]
    mapped = _mapped_sources(cmap)
    users, items_seen, schemas, bad, delims = [], [], [], [], []
    n_read, pending = 0, 0
    for i in range(len(found.files)):
        say(f"scan {i + 1}/{len(found.files)}")
        table, rows, b, d = read_file(found, i, text, cfg.encoding, cfg.delimiter)
        if d is not None and d not in delims:
            delims.append(d)
        schemas.append(table.schema)
        n_read += table.num_rows + len(b)
        bad.extend((i, row, reason, raw) for row, reason, raw in b)
        for c in mapped:  # a column this file lacks is null here, as in the concatenated log
            if c not in table.column_names:
                table = table.append_column(c, pa.nulls(table.num_rows, pa.string()))
        ev, _ = events_from_table(table, cmap, row_numbers=rows, ts_unit=cfg.ts_unit, naive_tz=cfg.naive_tz,
                                  window=window)
        if items is not None:
            ev = ev.filter(pc.is_in(ev["item_id"], value_set=items["item_id"].combine_chunks()))
        vc = pc.value_counts(ev["user_id"])
        users.append(pa.table({"id": vc.field("values"), "n": vc.field("counts")}))
        items_seen.append(pc.unique(ev["item_id"]))
        pending += len(vc)
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
                uitems.take(pa.array(id_order(uitems))), unified, mixed, n_read, bad, delims)


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


def spill(cfg: DataConfig, found: Files, cmap: dict, sc: Scan, firsts: pa.Array, tmp: Path, say) -> list[Path]:
    """Step 2: every file's rows, conformed to the one schema, into the shard files of their users."""
    text = [cmap.get(c, c) for c in ("user_id", "item_id", "ts")]
    user_col = cmap.get("user_id", "user_id")
    schema = sc.schema.append(pa.field(_ROW, pa.int64())).append(pa.field(_FILE, pa.int32()))
    paths = [tmp / f"shard-{k:05d}.arrow" for k in range(len(firsts))]
    opts = pa.ipc.IpcWriteOptions(compression="lz4")
    # a stream, not an IPC file: each input file's dictionary columns may bring their own dictionary
    writers = [pa.ipc.new_stream(str(p), schema, options=opts) for p in paths]
    try:
        for i in range(len(found.files)):
            say(f"spill {i + 1}/{len(found.files)}")
            table, rows, _, _ = read_file(found, i, text, cfg.encoding, cfg.delimiter)
            table = _conform(as_text(table, sc.mixed), sc.schema)
            table = table.append_column(_ROW, pa.array(rows, pa.int64()))
            table = table.append_column(_FILE, pa.array(np.full(table.num_rows, i, np.int32)))
            shard = shard_of(_as_string_ids(table[user_col]).combine_chunks(), firsts, sc.numeric_users)
            order = np.argsort(shard, kind="stable")
            table = table.take(pa.array(order))
            ends = np.cumsum(np.bincount(shard, minlength=len(paths)))
            start = 0
            for k, end in enumerate(ends):
                if end > start:
                    writers[k].write_table(table.slice(start, end - start))
                start = int(end)
    finally:
        for w in writers:
            w.close()
    return paths


class _ShardEvents:
    """One shard's rows read back and taken through validation, the catalog check and dedupe."""

    def __init__(self, path: Path, cfg: DataConfig, cmap: dict, files: list[str], items: pa.Table | None):
        window = ts_window_us(cfg.ts_min, cfg.ts_max)
        with pa.memory_map(str(path)) as src:
            raw = pa.ipc.open_stream(src).read_all()
        rows = raw[_ROW].to_numpy()
        codes = raw[_FILE].to_numpy()
        raw = raw.drop_columns([_ROW, _FILE])
        events, rej = events_from_table(raw, cmap, row_numbers=rows, file_codes=codes, files=files,
                                        ts_unit=cfg.ts_unit, naive_tz=cfg.naive_tz, window=window)
        if items is not None:
            events = check_catalog(events, items, rej, raw, rows, codes)
        self.n_duplicates = 0
        if cfg.dedupe:
            events, self.n_duplicates = drop_duplicates(
                events, rej, raw, rows, codes, (cmap.get("user_id", "user_id"), cmap.get("item_id", "item_id")))
        self.events = events.drop_columns(["_pos"])
        self.rej = rej
        self.n_read = raw.num_rows


def _sorted(events: pa.Table, sc: Scan, lo: int, hi: int) -> SortedLog:
    """``encode_sorted`` with the log's codes: users of this shard are codes [lo, hi)."""
    from minivz import kernels

    user_codes = np.asarray(pc.index_in(events["user_id"], value_set=sc.users.slice(lo, hi - lo))).astype(np.int64)
    item_codes = np.asarray(pc.index_in(events["item_id"], value_set=sc.items)).astype(np.int64)
    user_codes += lo
    ts = pc.cast(events["ts"], pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    perm = kernels.stable_order(user_codes, ts, item_codes)
    ev = events.drop_columns(["user_id", "item_id", "ts"]).combine_chunks().take(pa.array(perm))
    user_codes, item_codes, ts = kernels.apply_order(perm, user_codes, item_codes, ts)
    return SortedLog(ev, user_codes, sc.users, item_codes, sc.items, ts)


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


def prepare_sharded(cfg: DataConfig, out: Path, n_shards: int, say) -> tuple[PrepareSummary, str, str]:
    """Steps 1-3 (module docstring): writes ``out`` as ``examples.prepare`` does; returns (summary, split
    rule, source) for the manifest."""
    secs: dict[str, float] = {}
    t0 = time.perf_counter()
    cmap = dict(cfg.map or {})
    found = input_files(cfg.input, cfg.fmt)
    ifound = input_files(cfg.items) if cfg.items is not None else None
    check_maps(found, cmap, delimiter=cfg.delimiter, items_path=ifound, items_map=cfg.items_map or None,
               encoding=cfg.encoding)
    items, item_rej = None, None
    if ifound is not None:
        imap = dict(cfg.items_map or {})
        isrc = read_input(ifound, string_columns=[imap.get("item_id", "item_id")], encoding=cfg.encoding)
        items, item_rej = items_from_table(isrc.table, imap, row_numbers=isrc.rows, file_codes=isrc.file,
                                           files=isrc.files)
        _combine(item_rej, isrc.bad)
    files = [str(f) for f in found.files]
    sc = scan(cfg, found, cmap, items, say)
    secs["scan"] = time.perf_counter() - t0
    if len(sc.users) == 0:
        raise NoEvents()
    check_candidates(cfg, len(sc.items))
    n_shards = max(1, min(n_shards, len(sc.users)))
    if not cfg.shards:  # the exact count of kept events may ask for more shards than the estimate
        n_shards = max(n_shards, math.ceil(int(sc.user_events.sum()) * BYTES_PER_EVENT / memory_budget(cfg)))
    bounds = shard_bounds(sc.user_events, n_shards)
    ends = np.append(bounds[1:], len(sc.users))
    tmp = out / ".shards"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        t0 = time.perf_counter()
        paths = spill(cfg, found, cmap, sc, sc.users.take(pa.array(bounds)), tmp, say)
        secs["spill"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        catalog = _catalog(items, sc.items.to_pylist(), np.zeros(len(sc.items), np.int64))
        counts, cuts = None, None
        if cfg.negatives == "popularity" or cfg.split == "time":
            counts, all_ts = np.zeros(len(sc.items), np.int64), []
            for k, path in enumerate(paths):
                say(f"count shard {k + 1}/{len(paths)}")
                log = _sorted(_ShardEvents(path, cfg, cmap, files, items).events, sc, int(bounds[k]), int(ends[k]))
                counts += np.bincount(log.item_codes, minlength=len(sc.items))
                all_ts.append(log.ts)
            catalog = catalog.set_column(catalog.column_names.index("n_events"), "n_events", pa.array(counts))
            if cfg.split == "time":
                cuts = time_quantiles(cfg, np.concatenate(all_ts))
            del all_ts
        result = _shards(cfg, out, paths, bounds, ends, sc, cmap, files, items, catalog, cuts, say)
        secs["shards"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    catalog = catalog.set_column(catalog.column_names.index("n_events"), "n_events", pa.array(result.counts))
    pq.write_table(catalog, out / "items.parquet", use_dictionary=_text_columns(catalog.schema))
    rej = _Rejects("events", files=files)
    _combine(rej, sc.bad)
    parts = [rej.to_table()] + result.rejects
    rejects = pa.concat_tables(parts).sort_by([("file", "ascending"), ("row", "ascending")])
    n_rejected = rejects.num_rows
    if item_rej is not None:
        rejects = pa.concat_tables([rejects, item_rej.to_table()])
    write_rejects(rejects, out / "rejects.parquet")
    secs["write_catalog_rejects"] = time.perf_counter() - t0
    assert sc.n_read == result.n_events + n_rejected, (sc.n_read, result.n_events, n_rejected)
    summary = PrepareSummary(
        out=out, n_read=sc.n_read, n_rejected=n_rejected, n_catalog_rejected=rejects.num_rows - n_rejected,
        n_duplicates=result.n_duplicates, n_events=result.n_events, n_users=len(sc.users),
        n_items=len(sc.items), n_sessions=result.n_sessions, n_runs=result.n_runs, examples=result.examples,
        discovery_share={s: result.discovery[s] / result.examples[s] if result.examples[s] else 0.0
                         for s in SPLITS},
        skipped=result.skipped, seconds={k: round(v, 3) for k, v in secs.items()}, shards=len(paths),
    )
    return summary, result.split_rule, str(cfg.input)


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


def _shards(cfg, out, paths, bounds, ends, sc, cmap, files, items, catalog, cuts, say) -> _Totals:
    """Step 3: each shard through the in-memory steps, appended to the output files."""
    from minivz import kernels

    tot = _Totals(np.zeros(len(sc.items), np.int64))
    cat = CatalogSeries.of(catalog)
    writers = _Writers(out)
    empty = {}
    try:
        for k, path in enumerate(paths):
            say(f"shard {k + 1}/{len(paths)}")
            sh = _ShardEvents(path, cfg, cmap, files, items)
            tot.rejects.append(sh.rej.to_table())
            tot.n_duplicates += sh.n_duplicates
            if sh.events.num_rows == 0:
                continue
            log = _sorted(sh.events, sc, int(bounds[k]), int(ends[k]))
            del sh
            tot.counts += np.bincount(log.item_codes, minlength=len(sc.items))
            session = kernels.sessionize(log.user_codes, log.ts, int(cfg.session_gap_s) * 1_000_000)
            series = session_runs(log, session, cat, lambda _m: None)
            ex, tot.split_rule = build_split_examples(cfg, log, catalog, series, time_cuts=cuts)
            row0, n = tot.n_events, len(log.ts)
            writers.write("events", _events_table(log.events, log.user_codes, log.item_codes, log.ts, sc.users,
                                                  sc.items, session + tot.n_sessions,
                                                  np.asarray(series.runs.run_of_event) + tot.n_runs))
            writers.write("runs", _runs_table(series.runs, series.series_names, tot.n_runs, row0))
            for code, name in enumerate(SPLITS):
                sel = np.flatnonzero(np.asarray(ex.split) == code)
                tbl = _examples_table(ex, sel, sc.users, log.item_codes, log.ts, cfg.n_candidates, row0)
                empty[name] = tbl.schema
                if len(sel):
                    writers.write(name, tbl)
                tot.examples[name] += int(len(sel))
                tot.discovery[name] += float(np.asarray(ex.discovery)[sel].sum())
            tot.skipped["short_history"] += int(ex.n_skipped_short_history)
            tot.skipped["no_negatives"] += int(ex.n_skipped_no_negatives)
            tot.n_events += n
            tot.n_sessions += int(session[-1]) + 1
            tot.n_runs += int(len(series.runs.start))
    finally:
        writers.close(empty)
    return tot
