"""Ingest: raw interaction logs (CSV / TSV / Parquet / JSONL, any column names) → canonical Arrow tables.

How to run::

    from minivz.ingest import read_log, write_rejects
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
- ``rejects``: ``source`` ('events' | 'items'), ``row`` (1-based data row: the record's position in the
  input, header excluded; for CSV this is the file line number minus the header line), ``reason``,
  ``raw`` (the source row as JSON). Nothing is dropped silently: ``n_read == events.num_rows + #event rejects``.

Timestamps (``ts_unit``):

- ``"s" | "ms" | "us"``: epoch numbers (or numeric strings) in that unit. ``"iso"``: ISO-8601 strings.
- ``"auto"``: numbers are epochs whose unit is decided **per value** by its magnitude: ``< 1e11`` →
  seconds (1e11 s is the year 5138), ``< 1e14`` → milliseconds, ``< 1e17`` → microseconds, else
  nanoseconds. So one column may mix seconds and milliseconds (for dates after 1973-03-03 the bands do
  not overlap). A millisecond value before 1973-03-03 reads as seconds far in the future and is
  rejected by the window below, with the value in the reason: pass ``ts_unit`` for such logs. Strings
  are tried as numbers first (the same rule), then as ISO-8601.
- Every timestamp must fall in ``[ts_min, ts_max)`` (default 1971-01-01 to 2100-01-01, UTC); others are
  rejected with a reason naming the date and the fix (``--set ts_min=1900-01-01``), never kept silently.
- ISO-8601 with an offset (``+02:00``, ``+0200``, ``+02``, ``Z``) is converted to UTC; naive strings are
  wall time in ``naive_tz`` (a zoneinfo name; ambiguous or nonexistent DST wall times take the earliest
  instant). The common shape ``YYYY-MM-DD[(T| )HH:MM[:SS[.f]]][zone]`` is parsed vectorized; only rows
  that do not match fall back to ``datetime.fromisoformat`` one by one, so one odd row never costs the
  column its fast path, and a row neither path reads is rejected with its value in the reason.
"""

from __future__ import annotations

import io
import json
import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "IngestError",
    "IngestResult",
    "EVENTS_SCHEMA",
    "ITEMS_SCHEMA",
    "REJECTS_SCHEMA",
    "read_log",
    "read_table",
    "events_from_table",
    "items_from_table",
    "check_catalog",
    "write_rejects",
    "ts_window_us",
]

TS_TYPE = pa.timestamp("us", tz="UTC")
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
    [("source", pa.string()), ("row", pa.int64()), ("reason", pa.string()), ("raw", pa.string())]
)

EVENT_REQUIRED = ("user_id", "item_id", "ts")
ITEM_REQUIRED = ("item_id", "title")
TS_UNITS = ("auto", "s", "ms", "us", "iso")
_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_US_PER = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}  # ns divides by 1000
# Python's datetime (used to render rejects and by downstream code) stops at year 9999.
_MAX_ABS_US = 253_402_300_799_999_999
_NUMERIC_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
_ISO_RE = (
    r"^\s*(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:[T ](?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,9}))?)?)?"
    r"\s*(?P<tz>[Zz]|[+-]\d{2}(?::?\d{2})?)?\s*$"
)


class IngestError(ValueError):
    """A log cannot be ingested as given; the message names the column or row and the fix."""


@dataclass
class IngestResult:
    """Canonical tables out of one ingest. ``events`` is unsorted; ``items`` is None without a catalog."""

    events: pa.Table
    items: pa.Table | None
    rejects: pa.Table
    n_read: int
    source: str

    @property
    def n_rejected(self) -> int:
        """Rejected event rows (catalog rejects are not counted: they are not events)."""
        return int(pc.sum(pc.equal(self.rejects["source"], "events")).as_py() or 0)

    def summary(self) -> str:
        """One paragraph: counts and the most common reject reasons (the text before the first quote)."""
        lines = [
            f"{self.source}: read {self.n_read:,} events, kept {self.events.num_rows:,}, "
            f"rejected {self.n_rejected:,}"
            + (f"; catalog {self.items.num_rows:,} items" if self.items is not None else "")
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
    rows: list = field(default_factory=list)
    reasons: list = field(default_factory=list)
    raws: list = field(default_factory=list)

    def add_from_table(self, table: pa.Table, row_numbers: np.ndarray, idx: np.ndarray, reasons):
        if len(idx) == 0:
            return
        self.rows.extend(int(r) for r in row_numbers[idx])
        self.reasons.extend(reasons)
        for rec in table.take(pa.array(idx, pa.int64())).to_pylist():
            self.raws.append(json.dumps(rec, default=str, ensure_ascii=False))

    def to_table(self) -> pa.Table:
        order = np.argsort(np.asarray(self.rows, np.int64), kind="stable")
        return pa.table(
            {
                "source": pa.array([self.source] * len(order), pa.string()),
                "row": pa.array(np.asarray(self.rows, np.int64)[order], pa.int64()),
                "reason": pa.array([self.reasons[i] for i in order], pa.string()),
                "raw": pa.array([self.raws[i] for i in order], pa.string()),
            },
            schema=REJECTS_SCHEMA,
        )


# --------------------------------------------------------------------------------------------- reading


def _infer_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        f = fmt.lower().lstrip(".")
        f = {"pq": "parquet", "ndjson": "jsonl", "json": "jsonl"}.get(f, f)
        if f not in ("csv", "tsv", "parquet", "jsonl"):
            raise IngestError(f"fmt={fmt!r} is not supported; use one of csv, tsv, parquet, jsonl.")
        return f
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"PAR1":  # Parquet's magic bytes: Parquet whatever the file is called
                return "parquet"
    except OSError:
        pass
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".zst", ".lz4"):
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _FORMATS:
        return _FORMATS[suffixes[-1]]
    raise IngestError(
        f"cannot tell the format of {str(path)!r} from its suffix; name the file .csv, .tsv, .parquet, "
        ".jsonl (optionally .gz) or pass fmt='csv'|'tsv'|'parquet'|'jsonl' (CLI: --set fmt=csv)."
    )


def read_table(path, fmt: str | None = None, string_columns=(), encoding: str = "utf-8") -> tuple[pa.Table, np.ndarray, list]:
    """Read one file as an Arrow table of its source columns.

    Returns ``(table, row_numbers, bad_rows)``: ``row_numbers[i]`` is the 1-based data row of table row
    ``i``; ``bad_rows`` are records the parser itself could not read, as ``(row, reason, raw_json)``.
    ``string_columns`` (source names) are read as strings so IDs keep leading zeros and timestamps are
    not guessed by the parser (it would mix naive and offset ISO strings into one naive column).
    ``encoding`` is the text encoding of CSV/TSV/JSONL (e.g. ``latin-1``); text that is not valid in it
    is an error naming the line and the fix. Duplicate column names are an error naming them.
    """
    path = Path(path)
    if not path.exists():
        raise IngestError(f"log file {str(path)!r} does not exist; check the path.")
    kind = _infer_format(path, fmt)
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise IngestError(f"cannot read {str(path)!r} as Parquet: {e}") from e
        out = table, np.arange(1, table.num_rows + 1, dtype=np.int64), []
    elif kind in ("csv", "tsv"):
        out = _read_csv(path, "\t" if kind == "tsv" else ",", string_columns, encoding)
    else:
        out = _read_json(path, string_columns, encoding)
    names = out[0].column_names
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise IngestError(
            f"{str(path)!r} has duplicate column names {', '.join(repr(c) for c in dup)}; rename them in the "
            "header so each column has one name, then map the one you mean (--map ts=<col>)."
        )
    return out


def _not_encoded(path: Path, data: bytes, encoding: str) -> IngestError:
    """The error for text that is not valid in ``encoding``: the line and byte, and how to fix it."""
    try:
        data.decode(encoding)
        where = ""
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        where = f" at line {line} (byte {e.start}: {data[e.start:e.start + 1]!r})"
    except LookupError:
        return IngestError(f"encoding={encoding!r} is not a known text encoding; try utf-8 or latin-1")
    return IngestError(
        f"{str(path)!r} is not valid {encoding}{where}. If the file is Latin-1 / Windows-1252, pass "
        "--set encoding=latin-1 (or cp1252), or convert it: iconv -f latin1 -t utf-8 FILE > FILE.utf8"
    )


def _read_bytes(path: Path) -> bytes:
    with pa.input_stream(str(path), compression="detect") as f:
        return f.read()


def _read_csv(path: Path, delimiter: str, string_columns, encoding: str = "utf-8") -> tuple[pa.Table, np.ndarray, list]:
    import pyarrow.csv as pcsv

    def read(use_threads: bool):
        invalid = []

        def handler(row):
            invalid.append(row)
            return "skip"

        # Empty lines are not skipped by the parser but handed to the handler (they have too few
        # columns), so every physical line is either a table row or a reported line: with one thread
        # the reported line numbers then give every table row its line number.
        table = pcsv.read_csv(
            pa.input_stream(str(path), compression="detect"),
            read_options=pcsv.ReadOptions(use_threads=use_threads, encoding=encoding),
            parse_options=pcsv.ParseOptions(
                delimiter=delimiter, invalid_row_handler=handler, ignore_empty_lines=False
            ),
            convert_options=pcsv.ConvertOptions(
                column_types={c: pa.string() for c in string_columns}
            ),
        )
        return table, invalid

    try:
        table, invalid = read(True)
        if invalid:  # line numbers are only known single-threaded; pay that only when needed
            table, invalid = read(False)
    except (pa.ArrowInvalid, UnicodeDecodeError, LookupError) as e:
        if "UTF8" in str(e) or isinstance(e, (UnicodeDecodeError, LookupError)):
            raise _not_encoded(path, _read_bytes(path), encoding) from e
        raise IngestError(
            f"cannot parse {str(path)!r} as {'TSV' if delimiter == chr(9) else 'CSV'}: {e}. "
            "Check the delimiter (pass fmt='tsv' for tab-separated files) and the quoting."
        ) from e
    bad, skipped = [], []
    for r in invalid:
        skipped.append(r.number - 1)
        if r.text.strip() == "":
            continue  # a blank line is not a record: neither read nor rejected
        bad.append(
            (
                r.number - 1,
                f"csv: expected {r.expected_columns} columns, got {r.actual_columns}",
                json.dumps(r.text, ensure_ascii=False),
            )
        )
    total = table.num_rows + len(skipped)
    rows = np.setdiff1d(np.arange(1, total + 1, dtype=np.int64), np.asarray(skipped, np.int64))
    # With ignore_empty_lines=False a blank line comes back as a row of empty values: drop those (a
    # blank line, or a line of bare delimiters, is not a record, so it is neither read nor rejected).
    blank = np.ones(table.num_rows, bool)
    for col in table.columns:
        empty = pc.is_null(col)
        if pa.types.is_string(col.type):
            empty = pc.or_(empty, pc.equal(col, ""))
        blank &= np.asarray(pc.fill_null(empty, True))
    if table.num_columns and blank.any():
        table, rows = table.filter(pa.array(~blank)), rows[~blank]
    return table, rows, bad


def _read_json(path: Path, string_columns, encoding: str = "utf-8") -> tuple[pa.Table, np.ndarray, list]:
    import pyarrow.json as pj

    data = _read_bytes(path)
    try:  # Arrow's JSON reader lets invalid UTF-8 through into string columns: validate here
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as e:
        raise _not_encoded(path, data, encoding) from e
    if encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
        data = text.encode("utf-8")
    if data.lstrip()[:1] == b"[":  # a JSON array file, not JSON lines
        return _json_records_to_table(path, data, array=True)
    try:
        table = pj.read_json(io.BytesIO(data))
        # Arrow infers ISO strings as timestamps but folds offsets and naive values into one naive
        # column; re-read those columns as plain strings and parse them ourselves.
        retype = [
            c
            for c in string_columns
            if c in table.column_names and pa.types.is_timestamp(table.schema.field(c).type)
        ]
        if retype:
            schema = pa.schema([(c, pa.string()) for c in retype])
            table = pj.read_json(
                io.BytesIO(data),
                parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer"),
            )
    except pa.ArrowInvalid:
        # Mixed types in one field (user 7 and user "x7") or a broken line: go record by record.
        return _json_records_to_table(path, data, array=False)
    return table, np.arange(1, table.num_rows + 1, dtype=np.int64), []


def _json_records_to_table(path: Path, data: bytes, array: bool):
    """Slow path for JSON: one record at a time; unreadable lines are rejected, mixed types become text."""
    bad: list = []
    records: list[dict] = []
    rows: list[int] = []
    if array:
        try:
            items = json.loads(data)
        except json.JSONDecodeError as e:
            raise IngestError(f"{str(path)!r} is not valid JSON: {e}; fix it or write JSON lines.") from e
        for i, rec in enumerate(items, start=1):
            if isinstance(rec, dict):
                records.append(rec)
                rows.append(i)
            else:
                bad.append((i, "json: record is not an object", json.dumps(rec, default=str)))
    else:
        n = 0
        for line in data.decode("utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            n += 1
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                bad.append((n, f"json: invalid line ({e.msg})", json.dumps(line, ensure_ascii=False)))
                continue
            if not isinstance(rec, dict):
                bad.append((n, "json: record is not an object", json.dumps(line, ensure_ascii=False)))
                continue
            records.append(rec)
            rows.append(n)
    names: dict[str, None] = {}
    for rec in records:
        for k in rec:
            names.setdefault(k, None)
    columns = {}
    for name in names:
        values = [rec.get(name) for rec in records]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array(
                [None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in values],
                pa.string(),
            )
    table = pa.table(columns)  # no columns at all → the caller's "missing columns" error
    return table, np.asarray(rows, np.int64), bad


# ------------------------------------------------------------------------------------ column mapping


def _resolve_map(
    table: pa.Table, column_map: dict | None, required, optional, flag: str, what: str
) -> dict[str, str]:
    """canonical name → source column; raises one IngestError naming every missing required column."""
    column_map = dict(column_map or {})
    available = table.column_names
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


def _to_numpy(arr) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, 0) if arr.null_count else arr).astype(np.int64, copy=False)


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


def _days_from_civil(y, m, d):
    """Days since 1970-01-01 for proleptic Gregorian dates (H. Hinnant's algorithm), vectorized."""
    y = y - (m <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _localize(local_us: np.ndarray, naive_tz: str) -> np.ndarray:
    """Wall-clock microseconds in ``naive_tz`` → UTC microseconds (vectorized via Arrow's tz database)."""
    if naive_tz in ("UTC", "Etc/UTC", "utc") or local_us.size == 0:
        return local_us
    arr = pa.array(local_us, pa.timestamp("us"))
    utc = pc.assume_timezone(arr, timezone=naive_tz, ambiguous="earliest", nonexistent="earliest")
    return np.asarray(utc.cast(pa.int64()))


def _iso_vectorized(s: pa.Array, naive_tz: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse ISO-8601 strings of the common shape. Returns (utc_us, ok)."""
    n = len(s)
    st = pc.extract_regex(s, _ISO_RE)
    ok = np.asarray(pc.fill_null(st.is_valid(), False))
    out = np.zeros(n, np.int64)
    if not ok.any():
        return out, ok

    def num(name, default=0):
        f = pc.struct_field(st, name)
        f = pc.if_else(pc.equal(f, ""), None, f)
        return _to_numpy(pc.cast(pc.fill_null(f, str(default)), pa.int64()))

    y, mo, d = num("y"), num("mo", 1), num("d", 1)
    h, mi, sec = num("h"), num("mi"), num("s")
    frac = pc.utf8_slice_codeunits(pc.utf8_rpad(pc.struct_field(st, "f"), 6, "0"), 0, 6)
    us = _digits(frac)
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    dim = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[np.clip(mo, 1, 12) - 1] + (
        (mo == 2) & leap
    )
    ok &= (mo >= 1) & (mo <= 12) & (d >= 1) & (d <= dim) & (h <= 23) & (mi <= 59) & (sec <= 59)
    ok &= y >= 1
    local = ((_days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60 + sec
    local = local * 1_000_000 + us

    tz = pc.struct_field(st, "tz")
    has_tz = np.asarray(pc.fill_null(pc.not_equal(tz, ""), False)) & ok
    z = np.asarray(pc.fill_null(pc.match_substring_regex(tz, "^[Zz]$"), False))
    digits = pc.replace_substring(pc.utf8_slice_codeunits(tz, 1), ":", "")
    tzh = _digits(pc.utf8_slice_codeunits(digits, 0, 2))
    tzm = _digits(pc.utf8_slice_codeunits(digits, 2, 4))
    sign = np.where(np.asarray(pc.fill_null(pc.starts_with(tz, "-"), False)), -1, 1)
    offset_us = np.where(z, 0, sign * (tzh * 60 + tzm) * 60_000_000)
    ok &= ~has_tz | z | ((tzh <= 23) & (tzm <= 59))
    naive = ok & ~has_tz
    out[has_tz] = local[has_tz] - offset_us[has_tz]
    out[naive] = _localize(local[naive], naive_tz)
    return out, ok


def _digits(s) -> np.ndarray:
    """Digit strings (possibly empty or null) → int64, 0 where empty."""
    s = pc.if_else(pc.fill_null(pc.equal(s, ""), True), "0", s)
    return _to_numpy(pc.cast(s, pa.int64()))


def _iso_python(value: str, naive_tz: str) -> int | None:
    """Slow path for one string: whatever ``datetime.fromisoformat`` reads (week dates, basic format…)."""
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zoneinfo.ZoneInfo(naive_tz))
    delta = dt.astimezone(timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


DEFAULT_TS_WINDOW = ("1971-01-01", "2100-01-01")
_EPOCH_UNITS = ("s", "ms", "us", "ns")


def ts_window_us(ts_min: str = DEFAULT_TS_WINDOW[0], ts_max: str = DEFAULT_TS_WINDOW[1]) -> tuple[int, int]:
    """The plausible-date window as UTC microseconds; a clear error for a bad bound."""
    out = []
    for name, value in (("ts_min", ts_min), ("ts_max", ts_max)):
        v = _iso_python(str(value), "UTC")
        if v is None:
            raise IngestError(f"{name}={value!r} is not a date; give an ISO date such as --set {name}=1971-01-01")
        out.append(v)
    if out[0] >= out[1]:
        raise IngestError(f"ts_min={ts_min!r} must be before ts_max={ts_max!r}")
    return out[0], out[1]


def _epoch_units(values: np.ndarray) -> np.ndarray:
    """Per value, the epoch unit (index into s, ms, us, ns) its magnitude says: < 1e11 seconds (1e11 s is
    the year 5138), < 1e14 ms, < 1e17 µs, else ns."""
    a = np.abs(values.astype(np.float64))
    return np.select([a < 1e11, a < 1e14, a < 1e17], [0, 1, 2], 3)


def _epochs_to_us(vals: np.ndarray, ts_unit: str) -> tuple[np.ndarray, np.ndarray, list]:
    """Epoch numbers → (utc_us, ok, unit name per value): one unit, or per value for ``auto``."""
    names = list(_EPOCH_UNITS)
    if ts_unit == "auto":
        per = _epoch_units(vals)
    else:
        per = np.full(len(vals), names.index(ts_unit))
    us = np.zeros(len(vals), np.int64)
    ok = np.zeros(len(vals), bool)
    for k, name in enumerate(names):
        sel = np.flatnonzero(per == k)
        if sel.size:
            us[sel], ok[sel] = _epoch_to_us(vals[sel], name)
    return us, ok, [names[k] for k in per]


def _epoch_to_us(values: np.ndarray, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Epoch numbers (float64 or int64) → (utc_us, ok); out-of-range and NaN are not ok."""
    if values.dtype.kind in "iu":
        v = values.astype(np.int64)
        ok = np.ones(v.shape, bool)
        if unit == "ns":
            us = v // 1000
        else:
            k = _US_PER[unit]
            ok = np.abs(v) <= _MAX_ABS_US // k
            us = np.where(ok, v, 0) * k
    else:
        v = values.astype(np.float64)
        scaled = v / 1000.0 if unit == "ns" else v * _US_PER[unit]
        ok = np.isfinite(scaled) & (np.abs(scaled) <= _MAX_ABS_US)
        us = np.where(ok, np.round(np.where(ok, scaled, 0.0)), 0).astype(np.int64)
    ok &= np.abs(us) <= _MAX_ABS_US
    return us, ok


def _parse_ts(col: pa.ChunkedArray, ts_unit: str, naive_tz: str, src: str, window: tuple[int, int] | None = None):
    """Any timestamp column → (utc_us int64, reason per row or None). Vectorized; per-row only on failures.
    Parsed values outside ``window`` (UTC µs, default 1971–2100) are rejected with the date in the reason."""
    window = window or ts_window_us()
    out, reasons = _parse_ts_values(col, ts_unit, naive_tz, src)
    fine = np.equal(reasons, None)
    outside = fine & ((out < window[0]) | (out >= window[1]))
    if outside.any():
        lo, hi = (_fmt_us(w)[:10] for w in window)
        for i in np.flatnonzero(outside):
            reasons[i] = (f"ts: {_fmt_us(int(out[i]))} is outside the plausible window [{lo}, {hi}); if it is "
                          f"real, widen it (--set ts_min=... / --set ts_max=...), else fix the value or ts_unit")
    return out, reasons


def _fmt_us(us: int) -> str:
    try:
        return (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=int(us))).isoformat()
    except OverflowError:
        return f"{us} µs since 1970"


def _parse_ts_values(col, ts_unit: str, naive_tz: str, src: str):
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    out = np.zeros(n, np.int64)
    reasons = np.full(n, None, dtype=object)
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    valid = np.asarray(arr.is_valid())
    reasons[~valid] = "ts: missing (null)"

    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        if ts_unit not in ("auto", "iso"):
            raise IngestError(
                f"ts column {src!r} already holds timestamps ({t}); ts_unit={ts_unit!r} applies to epoch "
                "numbers only. Use ts_unit='auto' (CLI: --set ts_unit=auto)."
            )
        if pa.types.is_date(t):
            arr = arr.cast(pa.timestamp("us"))
            t = arr.type
        if t.tz is None:
            local = _to_numpy(arr.cast(pa.timestamp("us")).cast(pa.int64()))
            out = _localize(local, naive_tz)
        else:
            out = _to_numpy(arr.cast(TS_TYPE).cast(pa.int64()))
        return out, reasons

    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        if ts_unit == "iso":
            raise IngestError(
                f"ts column {src!r} is numeric ({t}) but ts_unit='iso'. Use ts_unit='auto' or the epoch "
                "unit s|ms|us (CLI: --set ts_unit=ms)."
            )
        vals = arr.cast(pa.int64() if pa.types.is_integer(t) else pa.float64()).to_numpy(
            zero_copy_only=False
        )
        if vals.dtype == object:
            vals = np.asarray([0 if v is None else v for v in vals], np.int64)
        us, ok, units = _epochs_to_us(vals, ts_unit)
        ok &= valid
        out = np.where(ok, us, 0)
        for i in np.flatnonzero(valid & ~ok):
            reasons[i] = f'ts: epoch value "{vals[i]}" ({units[i]}) is out of range (NaN or past year 9999)'
        return out, reasons

    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        arr = arr.cast(pa.string())
    arr = pc.utf8_trim_whitespace(arr)
    empty = np.asarray(pc.fill_null(pc.equal(arr, ""), False))
    reasons[empty] = "ts: missing (empty)"
    todo = valid & ~empty
    unit_label = "ISO-8601 or epoch" if ts_unit == "auto" else ("ISO-8601" if ts_unit == "iso" else f"epoch {ts_unit}")
    done = np.zeros(n, bool)
    if ts_unit != "iso":
        numeric = np.asarray(pc.fill_null(pc.match_substring_regex(arr, _NUMERIC_RE), False)) & todo
        if numeric.any():
            idx = np.flatnonzero(numeric)
            vals = np.asarray(pc.cast(arr.take(pa.array(idx)), pa.float64()))
            us, ok, units = _epochs_to_us(vals, ts_unit)
            out[idx[ok]] = us[ok]
            done[idx[ok]] = True
            for j in np.flatnonzero(~ok):
                i = idx[j]
                reasons[i] = f'ts: epoch value "{vals[j]}" ({units[j]}) is out of range (past year 9999)'
                done[i] = True  # reason already given
                todo[i] = False
    if ts_unit in ("auto", "iso"):
        rest = np.flatnonzero(todo & ~done)
        if rest.size:
            us, ok = _iso_vectorized(arr.take(pa.array(rest)), naive_tz)
            out[rest[ok]] = us[ok]
            done[rest[ok]] = True
            for i in rest[~ok]:  # the per-row fallback, only for rows the fast path could not read
                v = _iso_python(arr[int(i)].as_py(), naive_tz)
                if v is not None and abs(v) <= _MAX_ABS_US:
                    out[i] = v
                    done[i] = True
    for i in np.flatnonzero(todo & ~done):
        reasons[i] = f'ts: cannot parse "{arr[int(i)].as_py()}" as {unit_label}'
    return out, reasons


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
    numeric = np.asarray(pc.fill_null(pc.match_substring_regex(arr, _NUMERIC_RE), False))
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
    ts_unit: str = "auto",
    naive_tz: str = "UTC",
    default_interaction: str = "interact",
    window: tuple[int, int] | None = None,
) -> tuple[pa.Table, _Rejects]:
    """Source table → (canonical events + ``_pos`` column, rejects). Used by ``read_log`` and ``minivz.sources``."""
    if ts_unit not in TS_UNITS:
        raise IngestError(f"ts_unit={ts_unit!r} is not one of {', '.join(TS_UNITS)}; try ts_unit='auto'.")
    _check_tz(naive_tz)
    n = table.num_rows
    rows = np.arange(1, n + 1, dtype=np.int64) if row_numbers is None else row_numbers
    m = _resolve_map(
        table, column_map, EVENT_REQUIRED, ("interaction", "duration_s"), "--map", "events log"
    )
    reasons = np.full(n, None, dtype=object)

    ts_us, r = _parse_ts(table[m["ts"]], ts_unit, naive_tz, m["ts"], window)
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
    rej = _Rejects("events")
    keep = np.equal(reasons, None)
    bad = np.flatnonzero(~keep)
    rej.add_from_table(table, rows, bad, list(reasons[bad]))
    if bad.size:
        events = events.filter(pa.array(keep))
    # source-table position of each kept row, for later rejects (catalog check); dropped by read_log
    events = events.append_column("_pos", pa.array(np.flatnonzero(keep), pa.int64()))
    return events, rej


def items_from_table(
    table: pa.Table, items_map: dict | None = None, *, row_numbers: np.ndarray | None = None
) -> tuple[pa.Table, _Rejects]:
    """Source catalog → (canonical items, rejects). Duplicate item_ids keep their first row."""
    n = table.num_rows
    rows = np.arange(1, n + 1, dtype=np.int64) if row_numbers is None else row_numbers
    items_map = dict(items_map or {})
    onehot = None
    if "|" in (items_map.get("genres") or ""):  # one 0/1 column per genre: genres=Action|Comedy|...
        table, onehot = _onehot_genres(table, items_map.pop("genres"))
    optional = ("genres", "year", "series_id", "season", "episode", "description")
    m = _resolve_map(table, items_map, ITEM_REQUIRED, optional, "--items-map", "item catalog")
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
    rej = _Rejects("items")
    rej.add_from_table(table, rows, bad, list(reasons[bad]))
    return items.filter(pa.array(keep)), rej


def _onehot_genres(table: pa.Table, spec: str) -> tuple[pa.Table, pa.Array]:
    """``genres=Action|Comedy|...``: one column per genre, truthy (non-zero, true, "1") where the item has
    it; the column's name is the genre. Returns the table without those columns and the genre lists."""
    cols = [c.strip() for c in spec.split("|") if c.strip()]
    missing = [c for c in cols if c not in table.column_names]
    if missing:
        raise IngestError(
            f"--items-map genres={spec!r}: {', '.join(repr(c) for c in missing)} not a column of the catalog. "
            f"One-hot genres are mapped as genres=<col>|<col>|... (each column 0/1, named by its genre); "
            f"columns: {', '.join(repr(c) for c in table.column_names)}")
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
    events: pa.Table, items: pa.Table, rej: _Rejects, raw: pa.Table, row_numbers: np.ndarray
) -> pa.Table:
    """Reject events whose item_id is not in the catalog (``events`` still carries ``_pos``)."""
    known = np.asarray(pc.is_in(events["item_id"], value_set=items["item_id"].combine_chunks()))
    if known.all():
        return events
    bad = np.flatnonzero(~known)
    ids = events["item_id"].take(pa.array(bad)).to_pylist()
    pos = np.asarray(events["_pos"])[bad]
    rej.add_from_table(raw, row_numbers, pos, [f'item_id "{x}" not in the item catalog' for x in ids])
    return events.filter(pa.array(known))


def _check_tz(naive_tz: str) -> None:
    try:
        zoneinfo.ZoneInfo(naive_tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
        raise IngestError(
            f"naive_tz={naive_tz!r} is not a known time zone; use a zoneinfo name such as 'UTC' or "
            "'Europe/Berlin' (CLI: --set naive_tz=Europe/Berlin)."
        ) from e


def _combine(rej: _Rejects, table_bad: list) -> None:
    for row, reason, raw in table_bad:
        rej.rows.append(int(row))
        rej.reasons.append(reason)
        rej.raws.append(raw)


def read_log(
    path,
    column_map: dict[str, str] | None = None,
    *,
    fmt: str | None = None,
    ts_unit: str = "auto",
    naive_tz: str = "UTC",
    items_path=None,
    items_map: dict[str, str] | None = None,
    default_interaction: str = "interact",
    encoding: str = "utf-8",
    ts_min: str = DEFAULT_TS_WINDOW[0],
    ts_max: str = DEFAULT_TS_WINDOW[1],
) -> IngestResult:
    """Read an interaction log (and optionally an item catalog) into canonical tables.

    ``column_map`` / ``items_map``: canonical name → source column (unmapped canonical names default to a
    same-named column; extra keys add metadata columns under the key). See the module docstring for the
    timestamp rules and the shapes that come out.
    """
    if ts_unit not in TS_UNITS:
        raise IngestError(f"ts_unit={ts_unit!r} is not one of {', '.join(TS_UNITS)}; try ts_unit='auto'.")
    _check_tz(naive_tz)
    cmap = dict(column_map or {})
    as_text = [cmap.get(c, c) for c in ("user_id", "item_id", "ts")]
    window = ts_window_us(ts_min, ts_max)
    raw, rows, parse_bad = read_table(path, fmt, string_columns=as_text, encoding=encoding)
    events, rej = events_from_table(
        raw, cmap, row_numbers=rows, ts_unit=ts_unit, naive_tz=naive_tz,
        default_interaction=default_interaction, window=window,
    )
    _combine(rej, parse_bad)
    items = None
    item_rej = None
    if items_path is not None:
        imap = dict(items_map or {})
        iraw, irows, ibad = read_table(items_path, None, string_columns=[imap.get("item_id", "item_id")],
                                       encoding=encoding)
        items, item_rej = items_from_table(iraw, imap, row_numbers=irows)
        _combine(item_rej, ibad)
        events = check_catalog(events, items, rej, raw, rows)
    events = events.drop_columns(["_pos"])
    rejects = rej.to_table()
    n_read = raw.num_rows + len(parse_bad)
    # the contract callers rely on: nothing vanished between reading and the two outputs
    assert n_read == events.num_rows + rejects.num_rows, (n_read, events.num_rows, rejects.num_rows)
    if item_rej is not None:
        rejects = pa.concat_tables([rejects, item_rej.to_table()])
    return IngestResult(events=events, items=items, rejects=rejects, n_read=n_read, source=str(path))


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
