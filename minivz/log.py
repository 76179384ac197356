"""Log: raw log files (CSV / TSV / Parquet / JSONL, any column names) -> an Arrow table of their columns.

How to run::

    from minivz.log import read_input, read_table
    table, row_numbers, bad_rows = read_table("views.csv", string_columns=["uid", "movie", "time"])
    src = read_input("logs/", string_columns=["uid"])     # a file, a directory, a glob, hive partitions
    src.table, src.rows, src.file, src.files, src.bad     # each row's file and 1-based row in it

An input is a file, a directory (every file under it, recursively, except names starting with ``.`` or
``_`` such as ``_SUCCESS``) or a glob (``logs/dt=*/*.parquet``, ``**`` recursive). Files are found by
``pyarrow.dataset``; ``key=value`` directories (hive partitioning) become string columns named ``key``,
mapped like any other column. Every file is read by ``read_table`` so each row keeps its file and row.
One format per input. The format comes from the file's magic bytes (Parquet) or suffix
(``.gz``/``.bz2``/``.zst``/``.lz4`` compression allowed), or ``fmt``. A CSV's delimiter is ``,`` unless
the header holds no comma and exactly one of ``;``, ``|`` or a tab (then that one), or ``delimiter``. Nothing is dropped silently: a record the parser cannot read comes back
in ``bad_rows`` as ``(row, reason, raw_json)`` (``row``: 1-based data row, header excluded; for CSV the
file line number minus the header line), blank lines are neither read nor reported, and
``minivz.events`` turns both into canonical events and rejects.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Files", "IngestError", "Input", "input_columns", "input_files", "is_glob", "read_input",
           "read_table", "sniff_delimiter"]

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


# Defined in the first stage of the data path so that timestamps and events raise this same class
# without importing each other (the CLI maps it to a one-line usage error).
class IngestError(ValueError):
    """A log cannot be ingested as given; the message names the column or row and the fix."""


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


def read_table(
    path, fmt: str | None = None, string_columns=(), encoding: str = "utf-8", delimiter: str | None = None
) -> tuple[pa.Table, np.ndarray, list]:
    """Read one file as an Arrow table of its source columns.

    Returns ``(table, row_numbers, bad_rows)``: ``row_numbers[i]`` is the 1-based data row of table row
    ``i``; ``bad_rows`` are records the parser itself could not read, as ``(row, reason, raw_json)``.
    ``string_columns`` (source names) are read as strings so IDs keep leading zeros and timestamps are
    not guessed by the parser (it would mix naive and offset ISO strings into one naive column).
    ``encoding`` is the text encoding of CSV/TSV/JSONL (e.g. ``latin-1``); text that is not valid in it
    is an error naming the line and the fix. Duplicate column names are an error naming them.
    ``delimiter`` (CSV only): None = ``sniff_delimiter``; a TSV is always tab-separated.
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
        out = _read_csv(path, _delimiter(path, kind, delimiter, encoding), string_columns, encoding)
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


# ------------------------------------------------------------------------------ headers, delimiters

_OTHER_DELIMITERS = {";": "semicolon", "|": "pipe", "\t": "tab"}


def _header_line(path: Path, encoding: str) -> str:
    """The first non-blank line of a text file (decompressed), BOM stripped; '' when there is none."""
    with pa.input_stream(str(path), compression="detect") as f:
        head = f.read(1 << 16)
    text = head.decode(encoding if encoding else "utf-8", errors="replace").lstrip("\ufeff")
    for line in text.splitlines():
        if line.strip():
            return line
    return ""


def sniff_delimiter(path, encoding: str = "utf-8", header: str | None = None) -> str:
    """``,`` unless the header holds no comma and exactly one of ``;`` ``|`` tab: then that one.

    A header holding several of them and no comma is ambiguous: an error naming them and the flag.
    ``header``: the file's first line when the caller has read it already."""
    header = _header_line(Path(path), encoding) if header is None else header
    if "," in header:
        return ","
    found = [d for d in _OTHER_DELIMITERS if d in header]
    if len(found) > 1:
        names = " and ".join(f"{d!r} ({_OTHER_DELIMITERS[d]})" for d in found)
        raise IngestError(
            f"{str(path)!r}: the header {header[:80]!r} holds no comma but both {names}; say which one "
            f"separates the columns: --set delimiter={found[0]!r}"
        )
    return found[0] if found else ","


def _delimiter(path: Path, kind: str, given: str | None, encoding: str, header: str | None = None) -> str:
    """The one delimiter rule: a TSV is tab-separated, else ``given``, else ``sniff_delimiter``."""
    if kind == "tsv":
        return "\t"
    return given if given is not None else sniff_delimiter(path, encoding, header)


def _file_columns(path: Path, kind: str, delimiter: str | None, encoding: str) -> list[str] | None:
    """Column names from a file's header or schema alone (no data read); None for JSONL (schemaless)."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as e:
            raise IngestError(f"cannot read {str(path)!r} as Parquet: {e}") from e
    if kind == "jsonl":
        return None
    header = _header_line(path, encoding)
    if not header:
        return []
    return next(csv.reader([header], delimiter=_delimiter(path, kind, delimiter, encoding, header)), [])


# --------------------------------------------------------------------- inputs: file, directory, glob

_GLOB = re.compile(r"[*?[]")


def is_glob(path) -> bool:
    """Whether ``path`` is a pattern (``*``, ``?``, ``[``) rather than a file or directory name."""
    return bool(_GLOB.search(str(path)))


class Files(NamedTuple):
    """An input's files (sorted), each one's partition keys, and their one format."""

    files: list[Path]
    parts: list[dict[str, str | None]]
    kind: str


def input_files(path, fmt: str | None = None) -> Files:
    """``(files, partition keys per file, format)`` for a file, a directory or a glob, in sorted order.
    ``input_columns`` and ``read_input`` take the result, so an input is discovered once.

    Discovery and hive partitions (``dt=2024-01-01/``) are ``pyarrow.dataset``'s; partition values are
    strings (``__HIVE_DEFAULT_PARTITION__`` is null). All files must share one format."""
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    if isinstance(path, Files):
        return path
    given = str(path)
    p = Path(given)
    if p.is_file():
        return Files([p], [{}], _infer_format(p, fmt))
    if p.is_dir():
        base, source = p, pafs.FileSelector(str(p.resolve()), recursive=True)
    elif is_glob(given):
        hits = sorted(h for h in glob.glob(given, recursive=True) if os.path.isfile(h))
        hits = [h for h in hits if not os.path.basename(h).startswith((".", "_"))]
        if not hits:
            raise IngestError(f"--input {given!r}: no file matches this pattern; check it (quote it so "
                              "the shell does not expand it, and use ** to match subdirectories).")
        parts = Path(given).parts
        magic = next(i for i, part in enumerate(parts) if _GLOB.search(part))
        base = Path(*parts[:magic]) if magic else Path(".")
        source = [str(Path(h).resolve()) for h in hits]
    else:
        raise IngestError(f"log file {given!r} does not exist; check the path.")
    opts = ds.FileSystemFactoryOptions(partition_base_dir=str(base.resolve()))
    opts.partitioning_factory = ds.HivePartitioning.discover(infer_dictionary=False)
    factory = ds.FileSystemDatasetFactory(pafs.LocalFileSystem(), source, ds.ParquetFileFormat(), opts)
    dataset = factory.finish(factory.inspect(fragments=0))  # partition schema only: no file is opened
    found = []
    for frag in dataset.get_fragments():
        keys = ds.get_partition_keys(frag.partition_expression)
        rel = os.path.relpath(frag.path, str(base.resolve()))
        found.append((base / rel, {k: None if v is None else str(v) for k, v in keys.items()}))
    if not found:
        raise IngestError(f"--input {given!r} is a directory with no files (names starting with '.' or "
                          "'_' are skipped); point it at the log's files.")
    found.sort(key=lambda fp: str(fp[0]))
    kinds: dict[str, list[Path]] = {}
    for f, _ in found:
        kinds.setdefault(_infer_format(f, fmt), []).append(f)
    if len(kinds) > 1:
        listed = "; ".join(f"{len(v)} {k} (e.g. {str(v[0])!r})" for k, v in kinds.items())
        raise IngestError(f"--input {given!r} mixes formats: {listed}. Keep one format per input, or "
                          f"select one with a glob, e.g. --input '{base}/**/*.parquet'.")
    return Files([f for f, _ in found], [k for _, k in found], next(iter(kinds)))


@dataclass
class Input:
    """The rows of one input (one or more files) and where each came from.

    ``rows[i]`` is table row ``i``'s 1-based data row inside ``files[file[i]]``; ``bad`` holds records the
    parser could not read as ``(file index, row, reason, raw JSON)``; ``delimiters`` the CSV delimiters
    used (empty for Parquet and JSONL)."""

    table: pa.Table
    rows: np.ndarray
    file: np.ndarray
    files: list[str]
    bad: list
    delimiters: list[str]

    @property
    def n_read(self) -> int:
        return self.table.num_rows + len(self.bad)


def input_columns(path, fmt: str | None = None, delimiter: str | None = None, encoding: str = "utf-8"):
    """Every column an input offers (the union of its files' headers, then partition keys), read from
    headers and schemas only; None when a file is JSONL (its fields are known only once read).
    ``path``: as for ``input_files``, or its result."""
    files, parts, kind = input_files(path, fmt)
    names: dict[str, None] = {}
    for f in files:
        cols = _file_columns(f, kind, delimiter, encoding)
        if cols is None:
            return None
        names.update(dict.fromkeys(cols))
    for keys in parts:
        names.update(dict.fromkeys(keys))
    return list(names)


def read_input(
    path, fmt: str | None = None, string_columns=(), encoding: str = "utf-8", delimiter: str | None = None
) -> Input:
    """Read a file, a directory or a glob (see the module docstring; or ``input_files``' result) into one table.

    Files are concatenated in sorted path order; a column missing from a file is null there, a column
    whose type differs between files is read as text in all of them. Partition keys are string columns."""
    found = input_files(path, fmt)
    files = found.files
    tables, rows, codes, bad, delims = [], [], [], [], []
    for i in range(len(files)):
        table, r, b, d = read_file(found, i, string_columns, encoding, delimiter)
        if d is not None and d not in delims:
            delims.append(d)
        tables.append(table)
        rows.append(r)
        codes.append(np.full(len(r), i, np.int32))
        bad.extend((i, row, reason, raw) for row, reason, raw in b)
    if len(tables) == 1:
        table = tables[0]
    else:
        table = _concat(tables)
    return Input(table, np.concatenate(rows), np.concatenate(codes), [str(f) for f in files], bad, delims)


def read_file(found: Files, i: int, string_columns=(), encoding: str = "utf-8", delimiter: str | None = None):
    """File ``i`` of an input (``input_files``' result) with its partition keys as string columns:
    ``(table, row_numbers, bad_rows, delimiter used or None)``, as ``read_table``."""
    f, keys, kind = found.files[i], found.parts[i], found.kind
    d = _delimiter(f, kind, delimiter, encoding) if kind in ("csv", "tsv") else None
    table, r, b = read_table(f, kind, string_columns, encoding, d)
    for key, value in keys.items():
        if key in table.column_names:
            raise IngestError(f"{str(f)!r} has a column {key!r} and sits in a partition directory "
                              f"{key}={value}; rename one of them so each column has one source.")
        table = table.append_column(key, pa.array([value] * table.num_rows, pa.string()))
    return table, r, b, d


def mixed_columns(schemas) -> set:
    """Columns whose (non-null) type differs between files: ``_concat`` reads them as text."""
    types: dict[str, set] = {}
    for schema in schemas:
        for field in schema:
            if not pa.types.is_null(field.type):
                types.setdefault(field.name, set()).add(field.type)
    return {name for name, ts in types.items() if len(ts) > 1}


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Concatenate files' tables: missing columns become null, columns of differing types become text."""
    mixed = mixed_columns(t.schema for t in tables)
    if mixed:
        tables = [as_text(t, mixed) for t in tables]
    return pa.concat_tables(tables, promote_options="permissive")


def as_text(table: pa.Table, names: set) -> pa.Table:
    for c in names & set(table.column_names):
        col = table[c]
        if pa.types.is_dictionary(col.type):
            col = pc.cast(col, col.type.value_type)
        table = table.set_column(table.column_names.index(c), c, pc.cast(col, pa.string()))
    return table


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
            f"It was read with delimiter {delimiter!r}; check the delimiter (--set delimiter=';', or "
            "fmt='tsv' for tab-separated files) and the quoting."
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

