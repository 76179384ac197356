"""Events: one interaction log (and optionally an item catalog) -> canonical Arrow tables + rejects.

How to run::

    from minivz.events import read_log, write_rejects
    res = read_log("views.csv", {"user_id": "uid", "item_id": "movie", "ts": "time"},
                   items_path="catalog.parquet", items_map={"title": "name"})
    write_rejects(res.rejects, "runs/x/rejects.parquet")

What flows out (pyarrow, one row per kept input row; NOT sorted — the kernels sort):

- ``events``: ``user_id`` string, ``ts`` timestamp[us, UTC], ``item_id`` string, ``interaction`` string,
  ``duration_s`` float64 (nullable), then every other source column as metadata (extra ``column_map``
  keys such as ``rating`` are renamed to their canonical key).
- ``items`` (only with ``items_path``): ``item_id`` string, ``title`` string, ``genres`` list<string>,
  ``year`` int32, ``series_id`` string, ``season`` int32, ``episode`` int32, ``description`` string
  (all but the first three nullable), then other catalog columns as metadata.
- ``rejects``: ``source`` ('events' | 'items'), ``file`` (the file the row is in; null for built-in
  sources), ``row`` (1-based data row: the record's position in its file, header excluded; for CSV this
  is the file line number minus the header line), ``reason``, ``raw`` (the source row as JSON). Nothing
  is dropped silently: ``n_read == events.num_rows + #event rejects``.
- Exact duplicate events (source rows equal in every column as delivered, partition keys included;
  ``dedupe=True``, the default) keep their first row; the others are rejects whose reason names that row (``n_duplicates`` counts them).
  Logs delivered at-least-once repeat events; ``dedupe=False`` keeps them.

``path`` is a file, a directory, a glob or a hive-partitioned dataset (``minivz.log.read_input``).
Every column the maps name is checked against the files' headers before any data is read.

Reading the file is ``minivz.log``; the timestamp rules (``ts_unit``, ``naive_tz``, the plausible-date
window ``ts_min``/``ts_max``) are in ``minivz.timestamps``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from minivz.log import IngestError, input_columns, input_files, read_input
from minivz.timestamps import DEFAULT_TS_WINDOW, NUMERIC_RE, TS_TYPE, TS_UNITS, check_tz, parse_ts, ts_window_us

__all__ = [
    "IngestResult",
    "EVENTS_SCHEMA",
    "ITEMS_SCHEMA",
    "REJECTS_SCHEMA",
    "read_log",
    "events_from_table",
    "items_from_table",
    "check_catalog",
    "check_maps",
    "drop_duplicates",
    "write_rejects",
]

EVENTS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("ts", TS_TYPE),
        ("item_id", pa.string()),
        ("interaction", pa.string()),
        ("duration_s", pa.float64()),
    ]
)
ITEMS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("genres", pa.list_(pa.string())),
        ("year", pa.int32()),
        ("series_id", pa.string()),
        ("season", pa.int32()),
        ("episode", pa.int32()),
        ("description", pa.string()),
    ]
)
REJECTS_SCHEMA = pa.schema(
    [("source", pa.string()), ("file", pa.string()), ("row", pa.int64()), ("reason", pa.string()),
     ("raw", pa.string())]
)

EVENT_REQUIRED = ("user_id", "item_id", "ts")
EVENT_OPTIONAL = ("interaction", "duration_s")
ITEM_REQUIRED = ("item_id", "title")
ITEM_OPTIONAL = ("genres", "year", "series_id", "season", "episode", "description")


@dataclass
class IngestResult:
    """Canonical tables out of one ingest. ``events`` is unsorted; ``items`` is None without a catalog."""

    events: pa.Table
    items: pa.Table | None
    rejects: pa.Table
    n_read: int
    source: str
    n_duplicates: int = 0  # exact duplicate events dropped (they are among the rejects)
    delimiters: list = field(default_factory=list)  # CSV delimiters the files were read with

    @property
    def n_rejected(self) -> int:
        """Rejected event rows (catalog rejects are not counted: they are not events)."""
        return int(pc.sum(pc.equal(self.rejects["source"], "events")).as_py() or 0)

    def summary(self) -> str:
        """One paragraph: counts and the most common reject reasons (the text before the first quote)."""
        lines = [
            f"{self.source}: read {self.n_read:,} events, kept {self.events.num_rows:,}, "
            f"rejected {self.n_rejected:,}"
            + (f" (of them {self.n_duplicates:,} exact duplicates)" if self.n_duplicates else "")
            + (f"; catalog {self.items.num_rows:,} items" if self.items is not None else "")
            + ("; delimiter " + " ".join(repr(d) for d in self.delimiters)
               if self.delimiters and self.delimiters != [","] else "")
        ]
        if self.rejects.num_rows:
            kinds: dict[str, int] = {}
            for src, reason in zip(
                self.rejects["source"].to_pylist(), self.rejects["reason"].to_pylist()
            ):
                key = f"{src}: {reason.split(chr(34))[0].strip()}"
                kinds[key] = kinds.get(key, 0) + 1
            for key, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:5]:
                lines.append(f"  {n:,} × {key}")
        return "\n".join(lines)


@dataclass
class _Rejects:
    """Accumulates rejects from one source table; rendered to Arrow once at the end."""

    source: str
    files: list = field(default_factory=list)  # file names; ``codes`` index it (empty: no files)
    rows: list = field(default_factory=list)
    codes: list = field(default_factory=list)
    reasons: list = field(default_factory=list)
    raws: list = field(default_factory=list)

    def add_from_table(self, table: pa.Table, row_numbers: np.ndarray, idx: np.ndarray, reasons,
                       file_codes: np.ndarray | None = None):
        if len(idx) == 0:
            return
        self.rows.extend(int(r) for r in row_numbers[idx])
        self.codes.extend([0] * len(idx) if file_codes is None else (int(c) for c in file_codes[idx]))
        self.reasons.extend(reasons)
        for rec in table.take(pa.array(idx, pa.int64())).to_pylist():
            self.raws.append(json.dumps(rec, default=str, ensure_ascii=False))

    def to_table(self) -> pa.Table:
        order = np.lexsort((np.asarray(self.rows, np.int64), np.asarray(self.codes, np.int64)))
        return pa.table(
            {
                "source": pa.array([self.source] * len(order), pa.string()),
                "file": pa.array([self.files[self.codes[i]] if self.files else None for i in order], pa.string()),
                "row": pa.array(np.asarray(self.rows, np.int64)[order], pa.int64()),
                "reason": pa.array([self.reasons[i] for i in order], pa.string()),
                "raw": pa.array([self.raws[i] for i in order], pa.string()),
            },
            schema=REJECTS_SCHEMA,
        )


# ------------------------------------------------------------------------------------ column mapping


def _resolve_map(
    available: list[str], column_map: dict | None, required, optional, flag: str, what: str
) -> dict[str, str]:
    """canonical name → source column; raises one IngestError naming every missing required column."""
    column_map = dict(column_map or {})
    resolved, missing = {}, []
    for canon in list(required) + list(optional):
        src = column_map.pop(canon, None)
        if src is None:
            if canon in available:
                resolved[canon] = canon
            elif canon in required:
                missing.append(f"{canon} (looked for a column named {canon!r})")
        elif src in available:
            resolved[canon] = src
        else:
            missing.append(f"{canon} (mapped to {src!r}, which is not a column)")
    for canon, src in column_map.items():  # extra metadata fields renamed to their canonical key
        if src in available:
            resolved[canon] = src
        else:
            missing.append(f"{canon} (mapped to {src!r}, which is not a column)")
    if missing:
        example = ",".join(f"{c}=<col>" for c in required)
        raise IngestError(
            f"the {what} has no column for: {'; '.join(missing)}. Available columns: "
            f"{', '.join(repr(c) for c in available) or '(none)'}. Map them explicitly, e.g. "
            f"{flag} {example} (Python: the column_map/items_map argument, canonical name → source column)."
        )
    return resolved


def _metadata_columns(table: pa.Table, resolved: dict[str, str], canonical) -> dict[str, pa.ChunkedArray]:
    """Extra mapped keys under their canonical name, then every unused source column under its own name
    (prefixed ``src_`` when that name is taken by a canonical field)."""
    out = {}
    for canon, src in resolved.items():
        if canon not in canonical:
            out[canon] = table[src]
    used = set(resolved.values())
    for name in table.column_names:
        if name in used:
            continue
        key = name
        while key in canonical or key in out:
            key = "src_" + key
        out[key] = table[name]
    return out


# ---------------------------------------------------------------------------------- value conversion


def _as_string_ids(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """IDs → strings; integral floats (242.0, from a NaN-bearing numeric column) print as 242."""
    t = col.type
    if pa.types.is_dictionary(t):
        col = pc.cast(col, t.value_type)
        t = col.type
    if pa.types.is_floating(t):
        vals = col.to_numpy(zero_copy_only=False)
        finite = vals[~np.isnan(vals)]
        if finite.size == 0 or np.all(np.floor(finite) == finite):
            col = pc.cast(pc.cast(col, pa.int64(), safe=False), pa.string())
    if not pa.types.is_string(col.type):
        col = pc.cast(col, pa.string())
    return pc.utf8_trim_whitespace(col)


def _parse_float(col: pa.ChunkedArray, name: str):
    """Optional numeric column → (float64 values with NaN for null, reason per row or None)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    reasons = np.full(n, None, dtype=object)
    t = arr.type
    if pa.types.is_null(t):
        return np.full(n, np.nan), reasons
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return np.asarray(pc.fill_null(arr.cast(pa.float64()), np.nan)), reasons
    arr = pc.utf8_trim_whitespace(arr.cast(pa.string()))
    numeric = np.asarray(pc.fill_null(pc.match_substring_regex(arr, NUMERIC_RE), False))
    blank = np.asarray(pc.fill_null(pc.equal(arr, ""), True))
    vals = np.full(n, np.nan)
    if numeric.any():
        idx = np.flatnonzero(numeric)
        vals[idx] = np.asarray(pc.cast(arr.take(pa.array(idx)), pa.float64()))
    for i in np.flatnonzero(~numeric & ~blank):
        reasons[i] = f'{name}: cannot parse "{arr[int(i)].as_py()}" as a number'
    return vals, reasons


def _parse_int32(col: pa.ChunkedArray, name: str):
    vals, reasons = _parse_float(col, name)
    bad = ~np.isnan(vals) & ((np.floor(vals) != vals) | (np.abs(vals) > 2**31 - 1))
    for i in np.flatnonzero(bad & np.equal(reasons, None)):
        reasons[i] = f'{name}: "{vals[i]:g}" is not a whole number'
    mask = np.isnan(vals) | bad
    return pa.array(np.where(mask, 0, vals).astype(np.int32), pa.int32(), mask=mask), reasons


def _first_reason(reasons: np.ndarray, new: np.ndarray) -> None:
    """Record a reason only where a row has none yet (a row's first problem is its reason)."""
    free = np.equal(reasons, None)
    reasons[free] = new[free]


def _id_reason(ids: pa.ChunkedArray, name: str) -> np.ndarray:
    blank = np.asarray(pc.fill_null(pc.equal(ids, ""), True))
    return np.where(blank, f"{name}: missing (null or empty)", None)


# ------------------------------------------------------------------------------- canonical tables


def events_from_table(
    table: pa.Table,
    column_map: dict | None = None,
    *,
    row_numbers: np.ndarray | None = None,
    file_codes: np.ndarray | None = None,
    files: list[str] | None = None,
    ts_unit: str = "auto",
    naive_tz: str = "UTC",
    default_interaction: str = "interact",
    window: tuple[int, int] | None = None,
) -> tuple[pa.Table, _Rejects]:
    """Source table → (canonical events + ``_pos`` column, rejects). Used by ``read_log`` and ``minivz.sources``.

    ``row_numbers`` / ``file_codes`` / ``files``: where each source row came from (``minivz.log.Input``)."""
    if ts_unit not in TS_UNITS:
        raise IngestError(f"ts_unit={ts_unit!r} is not one of {', '.join(TS_UNITS)}; try ts_unit='auto'.")
    check_tz(naive_tz)
    n = table.num_rows
    rows = np.arange(1, n + 1, dtype=np.int64) if row_numbers is None else row_numbers
    m = _resolve_map(table.column_names, column_map, EVENT_REQUIRED, EVENT_OPTIONAL, "--map", "events log")
    reasons = np.full(n, None, dtype=object)

    ts_us, r = parse_ts(table[m["ts"]], ts_unit, naive_tz, m["ts"], window)
    _first_reason(reasons, r)
    user = _as_string_ids(table[m["user_id"]])
    _first_reason(reasons, _id_reason(user, "user_id"))
    item = _as_string_ids(table[m["item_id"]])
    _first_reason(reasons, _id_reason(item, "item_id"))
    if "duration_s" in m:
        dur, r = _parse_float(table[m["duration_s"]], "duration_s")
        _first_reason(reasons, r)
        neg = dur < 0
        for i in np.flatnonzero(neg):
            if reasons[i] is None:
                reasons[i] = f'duration_s: negative value "{dur[i]:g}"'
    else:
        dur = np.full(n, np.nan)
    if "interaction" in m:
        inter = pc.utf8_trim_whitespace(pc.cast(table[m["interaction"]], pa.string()))
        inter = pc.fill_null(pc.if_else(pc.equal(inter, ""), None, inter), default_interaction)
    else:
        inter = pa.array(np.full(n, default_interaction, dtype=object), pa.string())

    columns = {
        "user_id": user,
        "ts": pa.array(ts_us, pa.int64()).cast(TS_TYPE),
        "item_id": item,
        "interaction": inter,
        "duration_s": pa.array(dur, pa.float64(), from_pandas=True),  # NaN → null
    }
    columns.update(_metadata_columns(table, m, EVENTS_SCHEMA.names))
    events = pa.table(columns)
    rej = _Rejects("events", files=list(files or []))
    keep = np.equal(reasons, None)
    bad = np.flatnonzero(~keep)
    rej.add_from_table(table, rows, bad, list(reasons[bad]), file_codes)
    if bad.size:
        events = events.filter(pa.array(keep))
    # source-table position of each kept row, for later rejects (catalog check); dropped by read_log
    events = events.append_column("_pos", pa.array(np.flatnonzero(keep), pa.int64()))
    return events, rej


def items_from_table(
    table: pa.Table, items_map: dict | None = None, *, row_numbers: np.ndarray | None = None,
    file_codes: np.ndarray | None = None, files: list[str] | None = None,
) -> tuple[pa.Table, _Rejects]:
    """Source catalog → (canonical items, rejects). Duplicate item_ids keep their first row."""
    n = table.num_rows
    rows = np.arange(1, n + 1, dtype=np.int64) if row_numbers is None else row_numbers
    items_map = dict(items_map or {})
    onehot = None
    if "|" in (items_map.get("genres") or ""):  # one 0/1 column per genre: genres=Action|Comedy|...
        table, onehot = _onehot_genres(table, items_map.pop("genres"))
    m = _resolve_map(table.column_names, items_map, ITEM_REQUIRED, ITEM_OPTIONAL, "--items-map", "item catalog")
    reasons = np.full(n, None, dtype=object)
    item = _as_string_ids(table[m["item_id"]])
    _first_reason(reasons, _id_reason(item, "item_id"))
    title = pc.utf8_trim_whitespace(pc.cast(table[m["title"]], pa.string()))
    _first_reason(reasons, _id_reason(title, "title"))

    if onehot is not None:
        genres = onehot
    elif "genres" in m:
        genres = _genres(table[m["genres"]])
    else:
        genres = pa.array([[]] * n, pa.list_(pa.string()))
    ints = {}
    for name in ("year", "season", "episode"):
        if name in m:
            ints[name], r = _parse_int32(table[m[name]], name)
            _first_reason(reasons, r)
        else:
            ints[name] = pa.nulls(n, pa.int32())
    texts = {}
    for name in ("series_id", "description"):
        if name in m:
            col = table[m[name]]
            col = _as_string_ids(col) if name == "series_id" else pc.cast(col, pa.string())
            texts[name] = pc.if_else(pc.equal(col, ""), None, col)
        else:
            texts[name] = pa.nulls(n, pa.string())

    # Duplicates: the first row of an item_id wins; later ones are rejected (only among valid rows).
    valid = np.equal(reasons, None)
    codes = np.asarray(pc.fill_null(pc.dictionary_encode(item).combine_chunks().indices, -1))
    _, first = np.unique(np.where(valid, codes, -1), return_index=True)
    is_first = np.zeros(n, bool)
    is_first[first] = True
    item_py = None
    for i in np.flatnonzero(valid & ~is_first):
        item_py = item_py if item_py is not None else item.to_pylist()
        reasons[i] = f'item_id: duplicate "{item_py[i]}" in the catalog (the first row is kept)'

    columns = {
        "item_id": item,
        "title": title,
        "genres": genres,
        "year": ints["year"],
        "series_id": texts["series_id"],
        "season": ints["season"],
        "episode": ints["episode"],
        "description": texts["description"],
    }
    columns.update(_metadata_columns(table, m, ITEMS_SCHEMA.names))
    items = pa.table(columns)
    keep = np.equal(reasons, None)
    bad = np.flatnonzero(~keep)
    rej = _Rejects("items", files=list(files or []))
    rej.add_from_table(table, rows, bad, list(reasons[bad]), file_codes)
    return items.filter(pa.array(keep)), rej


def _onehot_genres(table: pa.Table, spec: str) -> tuple[pa.Table, pa.Array]:
    """``genres=Action|Comedy|...``: one column per genre, truthy (non-zero, true, "1") where the item has
    it; the column's name is the genre. Returns the table without those columns and the genre lists."""
    cols = _onehot_columns(spec, table.column_names)
    has = np.zeros((table.num_rows, len(cols)), bool)
    for j, c in enumerate(cols):
        col = table[c]
        if pa.types.is_boolean(col.type):
            has[:, j] = np.asarray(pc.fill_null(col, False))
        else:
            vals, _ = _parse_float(col, c)
            has[:, j] = np.nan_to_num(vals) != 0
    names = np.asarray(cols, dtype=object)
    offsets = np.concatenate([[0], np.cumsum(has.sum(1))]).astype(np.int32)
    flat = pa.array(np.broadcast_to(names, has.shape)[has].tolist(), pa.string())
    return table.drop_columns(cols), pa.ListArray.from_arrays(pa.array(offsets), flat)


def _onehot_columns(spec: str, available: list[str]) -> list[str]:
    """The columns of ``genres=Action|Comedy|...``; an error naming those the catalog lacks."""
    cols = [c.strip() for c in spec.split("|") if c.strip()]
    missing = [c for c in cols if c not in available]
    if missing:
        raise IngestError(
            f"--items-map genres={spec!r}: {', '.join(repr(c) for c in missing)} not a column of the catalog. "
            f"One-hot genres are mapped as genres=<col>|<col>|... (each column 0/1, named by its genre); "
            f"columns: {', '.join(repr(c) for c in available)}")
    return cols


def _genres(col: pa.ChunkedArray) -> pa.Array:
    """A list column, or strings split on '|' or ',' (blank parts dropped)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = arr.cast(pa.list_(pa.string()))
    else:
        arr = pc.split_pattern_regex(pc.cast(arr, pa.string()), r"\s*[|,]\s*")
    flat = pc.utf8_trim_whitespace(pc.list_flatten(arr))
    offsets = np.asarray(arr.offsets) if arr.null_count == 0 else None
    if offsets is None:  # null genres → empty list
        arr = pa.array([[] if v is None else v for v in arr.to_pylist()], pa.list_(pa.string()))
        return _genres(arr)
    keep = np.asarray(pc.fill_null(pc.not_equal(flat, ""), False))
    if keep.all():
        return pa.ListArray.from_arrays(pa.array(offsets - offsets[0], pa.int32()), flat)
    owner = np.repeat(np.arange(len(arr)), np.diff(offsets))
    counts = np.bincount(owner[keep], minlength=len(arr))
    new_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(new_offsets), flat.filter(pa.array(keep)))


def check_catalog(
    events: pa.Table, items: pa.Table, rej: _Rejects, raw: pa.Table, row_numbers: np.ndarray,
    file_codes: np.ndarray | None = None,
) -> pa.Table:
    """Reject events whose item_id is not in the catalog (``events`` still carries ``_pos``)."""
    known = np.asarray(pc.is_in(events["item_id"], value_set=items["item_id"].combine_chunks()))
    if known.all():
        return events
    bad = np.flatnonzero(~known)
    ids = events["item_id"].take(pa.array(bad)).to_pylist()
    pos = np.asarray(events["_pos"])[bad]
    rej.add_from_table(raw, row_numbers, pos, [f'item_id "{x}" not in the item catalog' for x in ids], file_codes)
    return events.filter(pa.array(known))


def _key_codes(events: pa.Table, raw: pa.Table, name: str, source: str | None) -> np.ndarray:
    """One uint64 per event identifying its ``name`` id: the source integers where the source column is
    an integer column (no string work), else the codes of the canonical string ids."""
    if source in raw.column_names and pa.types.is_integer(raw.schema.field(source).type):
        col = raw[source].take(pa.array(np.asarray(events["_pos"])))
        if col.null_count == 0:
            return np.asarray(col.combine_chunks().to_numpy(), np.int64).view(np.uint64)
    enc = pc.dictionary_encode(events[name].combine_chunks())
    return np.asarray(enc.indices).astype(np.uint64)


def drop_duplicates(
    events: pa.Table, rej: _Rejects, raw: pa.Table, row_numbers: np.ndarray,
    file_codes: np.ndarray | None = None, id_columns: tuple = (None, None),
) -> tuple[pa.Table, int]:
    """Keep the first of each group of exact duplicate events; the others become rejects naming it.

    Exact: the source rows are equal in every column as delivered (``1704268800`` and
    ``2024-01-03T08:00:00Z`` are the same instant but not the same record). Candidates share a 64-bit
    key of (user, time, item), found with one sort of that key; only those (a small share of any
    log) are compared column by column. ``events`` carries ``_pos`` (its row in ``raw``);
    ``id_columns``: the source columns of user_id and item_id (integer ones need no string work)."""
    n = events.num_rows
    if n < 2:
        return events, 0
    with np.errstate(over="ignore"):
        key = _key_codes(events, raw, "user_id", id_columns[0]) * np.uint64(0x9E3779B97F4A7C15)
        key ^= _key_codes(events, raw, "item_id", id_columns[1]) * np.uint64(0xC2B2AE3D27D4EB4F)
        key ^= np.asarray(events["ts"].cast(pa.int64()).combine_chunks().to_numpy()).view(np.uint64) \
            * np.uint64(0x165667B19E3779F9)
    s = np.sort(key)
    repeated = s[1:][s[1:] == s[:-1]]
    if repeated.size == 0:
        return events, 0
    cand = np.flatnonzero(np.asarray(pc.is_in(pa.array(key), value_set=pa.array(np.unique(repeated)))))  # input order
    pos = np.asarray(events["_pos"])
    # exact comparison of the candidates' source rows, every column (nested values as JSON text)
    rows = raw.take(pa.array(pos[cand]))
    cols = {}
    for i, name in enumerate(rows.column_names):
        col = rows.column(i)
        if pa.types.is_nested(col.type):
            col = pa.array([None if v is None else json.dumps(v, sort_keys=True, default=str)
                            for v in col.to_pylist()], pa.string())
        elif pa.types.is_dictionary(col.type):
            col = pc.cast(col, col.type.value_type)
        cols[f"c{i}"] = col
    cols["_key"] = pa.array(key[cand])
    cols["_i"] = pa.array(np.arange(len(cand), dtype=np.int64))
    groups = pa.table(cols).group_by([c for c in cols if c != "_i"], use_threads=False).aggregate(
        [("_i", "list")])
    dup, reasons = [], []
    for members in groups["_i_list"].to_pylist():
        if len(members) < 2:
            continue
        members = sorted(members)
        src = int(pos[cand[members[0]]])
        where = f'row "{int(row_numbers[src])}"'
        if len(rej.files) > 1:
            where += f' of "{rej.files[int(file_codes[src])]}"'
        for m in members[1:]:
            dup.append(int(cand[m]))
            reasons.append(f"duplicate: an exact copy of the event at {where} (kept); --set dedupe=false keeps copies")
    if not dup:
        return events, 0
    order = np.argsort(dup, kind="stable")
    dup = np.asarray(dup, np.int64)[order]
    rej.add_from_table(raw, row_numbers, pos[dup], [reasons[i] for i in order], file_codes)
    keep = np.ones(n, bool)
    keep[dup] = False
    return events.filter(pa.array(keep)), len(dup)


def _combine(rej: _Rejects, table_bad: list) -> None:
    for code, row, reason, raw in table_bad:
        rej.codes.append(int(code))
        rej.rows.append(int(row))
        rej.reasons.append(reason)
        rej.raws.append(raw)


def check_maps(
    path, column_map: dict | None, *, fmt: str | None = None, delimiter: str | None = None,
    items_path=None, items_map: dict | None = None, encoding: str = "utf-8",
) -> None:
    """Check both column maps against the files' headers and schemas before any data is read.

    Raises the same IngestError the full read would (every missing column, the columns there are).
    JSONL inputs are schemaless: their maps are checked once read. ``path`` / ``items_path``: as for
    ``minivz.log.input_files``, or its result."""
    cols = input_columns(path, fmt, delimiter, encoding)
    if cols is not None:
        _resolve_map(cols, column_map, EVENT_REQUIRED, EVENT_OPTIONAL, "--map", "events log")
    if items_path is None:
        return
    cols = input_columns(items_path, None, None, encoding)
    if cols is None:
        return
    imap = dict(items_map or {})
    if "|" in (imap.get("genres") or ""):
        _onehot_columns(imap.pop("genres"), cols)
    _resolve_map(cols, imap, ITEM_REQUIRED, ITEM_OPTIONAL, "--items-map", "item catalog")


def text_sources(cmap: dict) -> list[str]:
    """The source columns read as text whatever their type: the ids keep leading zeros, times are not
    guessed by the parser."""
    return [cmap.get(c, c) for c in ("user_id", "item_id", "ts")]


def id_sources(cmap: dict) -> tuple[str, str]:
    """The source columns of user_id and item_id (``drop_duplicates`` reads integer ones without strings)."""
    return cmap.get("user_id", "user_id"), cmap.get("item_id", "item_id")


def read_catalog(found, items_map: dict | None, encoding: str = "utf-8") -> tuple[pa.Table, _Rejects]:
    """The item catalog (``input_files``' result or a path) read whole: (canonical items, its rejects)."""
    imap = dict(items_map or {})
    isrc = read_input(found, string_columns=[imap.get("item_id", "item_id")], encoding=encoding)
    items, item_rej = items_from_table(isrc.table, imap, row_numbers=isrc.rows, file_codes=isrc.file,
                                       files=isrc.files)
    _combine(item_rej, isrc.bad)
    return items, item_rej


def read_log(
    path,
    column_map: dict[str, str] | None = None,
    *,
    fmt: str | None = None,
    delimiter: str | None = None,
    ts_unit: str = "auto",
    naive_tz: str = "UTC",
    items_path=None,
    items_map: dict[str, str] | None = None,
    default_interaction: str = "interact",
    encoding: str = "utf-8",
    ts_min: str = DEFAULT_TS_WINDOW[0],
    ts_max: str = DEFAULT_TS_WINDOW[1],
    dedupe: bool = True,
) -> IngestResult:
    """Read an interaction log (and optionally an item catalog) into canonical tables.

    ``path`` / ``items_path``: a file, a directory or a glob (``minivz.log.read_input``). ``column_map`` /
    ``items_map``: canonical name → source column (unmapped canonical names default to a same-named
    column; extra keys add metadata columns under the key). ``delimiter``: the log's CSV delimiter
    (None: from the header; the catalog's is always from its header). See the module docstring for
    the timestamp rules, duplicates and the shapes that come out.
    """
    if ts_unit not in TS_UNITS:
        raise IngestError(f"ts_unit={ts_unit!r} is not one of {', '.join(TS_UNITS)}; try ts_unit='auto'.")
    check_tz(naive_tz)
    cmap = dict(column_map or {})
    window = ts_window_us(ts_min, ts_max)
    found = input_files(path, fmt)  # each input discovered once, for the map check and the read
    ifound = input_files(items_path) if items_path is not None else None
    check_maps(found, cmap, delimiter=delimiter, items_path=ifound, items_map=items_map, encoding=encoding)
    src = read_input(found, string_columns=text_sources(cmap), encoding=encoding, delimiter=delimiter)
    raw, rows = src.table, src.rows
    events, rej = events_from_table(
        raw, cmap, row_numbers=rows, file_codes=src.file, files=src.files, ts_unit=ts_unit,
        naive_tz=naive_tz, default_interaction=default_interaction, window=window,
    )
    _combine(rej, src.bad)
    items, item_rej = read_catalog(ifound, items_map, encoding) if ifound is not None else (None, None)
    if items is not None:
        events = check_catalog(events, items, rej, raw, rows, src.file)
    n_dup = 0
    if dedupe:
        events, n_dup = drop_duplicates(events, rej, raw, rows, src.file, id_sources(cmap))
    events = events.drop_columns(["_pos"])
    rejects = rej.to_table()
    n_read = src.n_read
    # the contract callers rely on: nothing vanished between reading and the two outputs
    assert n_read == events.num_rows + rejects.num_rows, (n_read, events.num_rows, rejects.num_rows)
    if item_rej is not None:
        rejects = pa.concat_tables([rejects, item_rej.to_table()])
    return IngestResult(events=events, items=items, rejects=rejects, n_read=n_read, source=str(path),
                        n_duplicates=n_dup, delimiters=src.delimiters)


def write_rejects(rejects: pa.Table, path) -> None:
    """Write the rejects table: ``.parquet``/``.pq`` → Parquet, ``.csv``/``.tsv`` → CSV (parent dirs made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        pq.write_table(rejects, path)
    elif suffix in (".csv", ".tsv"):
        import pyarrow.csv as pcsv

        pcsv.write_csv(
            rejects, path, write_options=pcsv.WriteOptions(delimiter="\t" if suffix == ".tsv" else ",")
        )
    else:
        raise ValueError(f"write_rejects: cannot tell the format of {str(path)!r}; end it in .parquet or .csv.")
