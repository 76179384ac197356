"""Ingest: formats, column maps, timestamps, rejects, catalog. Run: pytest tests/test_ingest.py -q"""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivz.events import (
    EVENTS_SCHEMA,
    ITEMS_SCHEMA,
    REJECTS_SCHEMA,
    read_log,
    write_rejects,
)
from minivz.log import IngestError

MAP = {"user_id": "uid", "item_id": "movie", "ts": "time", "duration_s": "secs", "interaction": "kind"}
ROWS = [
    {"uid": 7, "movie": 242, "time": 1704268800, "secs": 30.5, "kind": "play", "device": "tv"},
    {"uid": 8, "movie": 17, "time": 1704272400, "secs": None, "kind": "preview", "device": "phone"},
    {"uid": 7, "movie": 5, "time": 1704276000, "secs": 0.0, "kind": "play", "device": "tv"},
]


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def write_csv(path, rows, sep=","):
    cols = list(rows[0])
    lines = [sep.join(cols)] + [
        sep.join(_cell(r.get(c), sep) for c in cols) for r in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _cell(v, sep):
    text = "" if v is None else str(v)
    return f'"{text}"' if sep in text else text


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def canonical(res):
    return res.events.select(EVENTS_SCHEMA.names).to_pylist()


# ------------------------------------------------------------------------------------------- formats


def test_csv_parquet_jsonl_round_trip_with_renamed_columns(tmp_path):
    results = {
        "csv": read_log(write_csv(tmp_path / "log.csv", ROWS), MAP),
        "tsv": read_log(write_csv(tmp_path / "log.tsv", ROWS, sep="\t"), MAP),
        "jsonl": read_log(write_jsonl(tmp_path / "log.jsonl", ROWS), MAP),
    }
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "log.parquet")
    results["parquet"] = read_log(tmp_path / "log.parquet", MAP)
    gz = tmp_path / "log.csv.gz"
    gz.write_bytes(gzip.compress((tmp_path / "log.csv").read_bytes()))
    results["csv.gz"] = read_log(gz, MAP)

    expected = [
        {"user_id": "7", "ts": utc(2024, 1, 3, 8), "item_id": "242", "interaction": "play", "duration_s": 30.5},
        {"user_id": "8", "ts": utc(2024, 1, 3, 9), "item_id": "17", "interaction": "preview", "duration_s": None},
        {"user_id": "7", "ts": utc(2024, 1, 3, 10), "item_id": "5", "interaction": "play", "duration_s": 0.0},
    ]
    for fmt, res in results.items():
        assert res.events.schema.field("ts").type == pa.timestamp("us", tz="UTC"), fmt
        assert res.events.schema.names[:5] == EVENTS_SCHEMA.names, fmt
        assert canonical(res) == expected, fmt
        assert res.events["device"].to_pylist() == ["tv", "phone", "tv"], fmt  # metadata kept
        assert res.n_read == 3 and res.rejects.num_rows == 0 and res.items is None, fmt


def test_defaults_same_named_columns_and_default_interaction(tmp_path):
    path = write_csv(tmp_path / "x.csv", [{"user_id": "a", "item_id": "i1", "ts": "2024-01-01T00:00:00Z"}])
    res = read_log(path, default_interaction="click")
    assert canonical(res) == [
        {"user_id": "a", "ts": utc(2024, 1, 1), "item_id": "i1", "interaction": "click", "duration_s": None}
    ]


def test_ids_keep_leading_zeros_and_extra_map_keys_become_metadata(tmp_path):
    rows = [{"u": "007", "i": "0042", "t": 1704067200, "stars": 4}]
    res = read_log(write_csv(tmp_path / "x.csv", rows), {"user_id": "u", "item_id": "i", "ts": "t", "rating": "stars"})
    assert res.events["user_id"].to_pylist() == ["007"]
    assert res.events["item_id"].to_pylist() == ["0042"]
    assert res.events["rating"].to_pylist() == [4]


def test_unknown_format_and_missing_file_are_clear(tmp_path):
    with pytest.raises(IngestError, match="does not exist"):
        read_log(tmp_path / "nope.csv")
    (tmp_path / "log.dat").write_text("a\n")
    with pytest.raises(IngestError, match="fmt="):
        read_log(tmp_path / "log.dat")


# ---------------------------------------------------------------------------------------- timestamps


def test_epoch_units_and_iso_offsets_give_identical_utc(tmp_path):
    instant = utc(2024, 3, 10, 12, 30, 15)
    s = int(instant.timestamp())
    forms = {
        "s": s,
        "ms": s * 1000,
        "us": s * 1_000_000,
        "s_str": str(s),
        "iso_z": "2024-03-10T12:30:15Z",
        "iso_plus": "2024-03-10T14:30:15+02:00",
        "iso_minus_compact": "2024-03-10 07:30:15-0500",
        "iso_naive": "2024-03-10T12:30:15",
        "iso_frac": "2024-03-10T12:30:15.000000+00:00",
    }
    for name, value in forms.items():
        rows = [{"user_id": "u", "item_id": f"i{k}", "ts": value} for k in range(3)]  # 3 events, not copies
        for path in (write_csv(tmp_path / f"{name}.csv", rows), write_jsonl(tmp_path / f"{name}.jsonl", rows)):
            res = read_log(path)
            assert res.events["ts"].to_pylist() == [instant] * 3, (name, path.suffix)
    explicit = read_log(write_csv(tmp_path / "ms.csv", [{"user_id": "u", "item_id": "i", "ts": s * 1000}]), ts_unit="ms")
    assert explicit.events["ts"].to_pylist() == [instant]


def test_mixed_offsets_in_one_column(tmp_path):
    rows = [
        {"user_id": "u", "item_id": "i", "ts": "2024-01-03T10:00:00+02:00"},
        {"user_id": "u", "item_id": "i", "ts": "2024-01-03T08:00:00Z"},
        {"user_id": "u", "item_id": "i", "ts": "2024-01-03T08:00:00"},
        {"user_id": "u", "item_id": "i", "ts": "2024-01-03T03:00:00-05:00"},
        {"user_id": "u", "item_id": "i", "ts": "1704268800"},
    ]
    for path in (write_csv(tmp_path / "m.csv", rows), write_jsonl(tmp_path / "m.jsonl", rows)):
        assert read_log(path).events["ts"].to_pylist() == [utc(2024, 1, 3, 8)] * 5, path.suffix


def test_naive_tz_applies_to_naive_strings_only(tmp_path):
    rows = [
        {"user_id": "u", "item_id": "i", "ts": "2024-07-01T10:00:00"},  # Berlin summer: UTC+2
        {"user_id": "u", "item_id": "i", "ts": "2024-01-01T10:00:00"},  # Berlin winter: UTC+1
        {"user_id": "u", "item_id": "i", "ts": "2024-01-01T10:00:00Z"},
    ]
    res = read_log(write_csv(tmp_path / "b.csv", rows), naive_tz="Europe/Berlin")
    assert res.events["ts"].to_pylist() == [utc(2024, 7, 1, 8), utc(2024, 1, 1, 9), utc(2024, 1, 1, 10)]
    with pytest.raises(IngestError, match="naive_tz"):
        read_log(tmp_path / "b.csv", naive_tz="Mars/Olympus")


def test_parquet_timestamp_columns(tmp_path):
    naive = pa.array([datetime(2024, 1, 1, 10)], pa.timestamp("ms"))
    aware = pa.array([datetime(2024, 1, 1, 10)], pa.timestamp("s", tz="UTC"))
    for col in (naive, aware):
        pq.write_table(pa.table({"user_id": ["u"], "item_id": ["i"], "ts": col}), tmp_path / "t.parquet")
        assert read_log(tmp_path / "t.parquet").events["ts"].to_pylist() == [utc(2024, 1, 1, 10)]


def test_one_bad_timestamp_rejects_only_its_row(tmp_path):
    rows = [{"user_id": f"u{k}", "item_id": "i", "ts": f"2024-01-{k + 1:02d}T00:00:00+01:00"} for k in range(20)]
    rows[7]["ts"] = "abc"
    rows[9]["ts"] = "2024-02-30T00:00:00"  # impossible date: both paths refuse it
    rows[11]["ts"] = "2024-W01-3"  # not the common shape: the per-row fallback reads it
    res = read_log(write_csv(tmp_path / "t.csv", rows))
    assert res.events.num_rows == 18
    assert res.rejects["reason"].to_pylist() == [
        'ts: cannot parse "abc" as ISO-8601 or epoch',
        'ts: cannot parse "2024-02-30T00:00:00" as ISO-8601 or epoch',
    ]
    assert res.rejects["row"].to_pylist() == [8, 10]
    got = dict(zip(res.events["user_id"].to_pylist(), res.events["ts"].to_pylist()))
    assert got["u11"] == utc(2024, 1, 3)
    assert got["u0"] == utc(2023, 12, 31, 23)


@settings(max_examples=60, deadline=None)
@given(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 12, 31)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
    st.sampled_from(["T", " "]),
    st.booleans(),
)
def test_vectorized_iso_matches_python(dt, offset_min, sep, with_frac):
    """The vectorized ISO parser agrees with datetime.fromisoformat (the obvious reference)."""
    from minivz.timestamps import _iso_vectorized

    tz = timezone(timedelta(minutes=offset_min))
    aware = dt.replace(tzinfo=tz)
    text = aware.isoformat(sep=sep, timespec="microseconds" if with_frac else "seconds")
    us, ok = _iso_vectorized(pa.array([text]), "UTC")
    assert ok[0]
    expected = datetime.fromisoformat(text).astimezone(timezone.utc)
    if not with_frac:
        expected = expected.replace(microsecond=0)
    delta = expected - datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert us[0] == (delta.days * 86400 + delta.seconds) * 10**6 + delta.microseconds


# ------------------------------------------------------------------------------------ errors, rejects


def test_missing_columns_name_all_of_them_and_the_flag(tmp_path):
    path = write_csv(tmp_path / "x.csv", [{"uid": 1, "movie": 2, "when": 3}])
    with pytest.raises(IngestError) as err:
        read_log(path)
    msg = str(err.value)
    for needle in ("user_id", "item_id", "ts", "'uid'", "'movie'", "'when'", "--map user_id=<col>,item_id=<col>,ts=<col>"):
        assert needle in msg
    with pytest.raises(IngestError, match="mapped to 'time'"):
        read_log(path, {"user_id": "uid", "item_id": "movie", "ts": "time"})


def test_bad_rows_are_rejected_with_reasons_and_counted(tmp_path):
    catalog = write_csv(tmp_path / "items.csv", [{"id": "10", "name": "A"}, {"id": "11", "name": "B"}])
    text = (
        "uid,movie,time,secs\n"
        "1,10,2024-01-01T00:00:00Z,30\n"  # row 1 ok
        "2,10,abc,30\n"  # row 2 bad ts
        ",10,2024-01-01T00:00:00Z,30\n"  # row 3 null user
        "4,10,2024-01-01T00:00:00Z,-5\n"  # row 4 negative duration
        "5,99,2024-01-01T00:00:00Z,30\n"  # row 5 unknown item
        "6,,2024-01-01T00:00:00Z,30\n"  # row 6 null item
        "7,11,2024-01-01T00:00:00Z,lots\n"  # row 7 non-numeric duration
        "8,11,2024-01-01T00:00:00Z,1,extra\n"  # row 8 too many fields
        "\n"  # a blank line: not a record
        "9,11,1704067200,\n"  # row 10 ok, duration null
    )
    (tmp_path / "log.csv").write_text(text)
    res = read_log(
        tmp_path / "log.csv", {"user_id": "uid", "item_id": "movie", "ts": "time", "duration_s": "secs"},
        items_path=catalog, items_map={"item_id": "id", "title": "name"},
    )
    assert res.rejects.schema == REJECTS_SCHEMA
    assert res.n_read == 9
    assert res.n_read == res.events.num_rows + res.n_rejected
    assert res.events["user_id"].to_pylist() == ["1", "9"]
    got = dict(zip(res.rejects["row"].to_pylist(), res.rejects["reason"].to_pylist()))
    assert got == {
        2: 'ts: cannot parse "abc" as ISO-8601 or epoch',
        3: "user_id: missing (null or empty)",
        4: 'duration_s: negative value "-5"',
        5: 'item_id "99" not in the item catalog',
        6: "item_id: missing (null or empty)",
        7: 'duration_s: cannot parse "lots" as a number',
        8: "csv: expected 4 columns, got 5",
    }
    raw = dict(zip(res.rejects["row"].to_pylist(), res.rejects["raw"].to_pylist()))
    assert json.loads(raw[5]) == {"uid": "5", "movie": "99", "time": "2024-01-01T00:00:00Z", "secs": "30"}  # "lots" made secs text
    assert "rejected 7" in res.summary()

    for name in ("rej.parquet", "sub/rej.csv"):
        write_rejects(res.rejects, tmp_path / name)
    assert pq.read_table(tmp_path / "rej.parquet").equals(res.rejects)
    assert pcsv.read_csv(tmp_path / "sub/rej.csv").num_rows == 7
    with pytest.raises(ValueError, match=".parquet or .csv"):
        write_rejects(res.rejects, tmp_path / "rej.txt")


def test_jsonl_broken_line_and_mixed_id_types(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(
        '{"user_id": 1, "item_id": "a", "ts": 1704067200}\n'
        "{not json\n"
        '{"user_id": "u2", "item_id": "b", "ts": 1704067200}\n'
    )
    res = read_log(path)
    assert res.events["user_id"].to_pylist() == ["1", "u2"]
    assert res.rejects["row"].to_pylist() == [2]
    assert res.rejects["reason"][0].as_py().startswith("json: invalid line")
    assert res.n_read == 3


# -------------------------------------------------------------------------------------------- catalog


def test_catalog_fields_genres_and_duplicates(tmp_path):
    items = [
        {"item_id": "s1e1", "title": "Show S1E1", "genres": "Drama|Crime", "year": "2020", "series_id": "s1", "season": 1, "episode": 1},
        {"item_id": "m1", "title": "Film", "genres": "Comedy, Romance", "year": "", "series_id": "", "season": None, "episode": None},
        {"item_id": "m1", "title": "Film again", "genres": "", "year": "1999", "series_id": "", "season": None, "episode": None},
        {"item_id": "m2", "title": "", "genres": "", "year": "1999", "series_id": "", "season": None, "episode": None},
        {"item_id": "m3", "title": "Odd", "genres": "", "year": "soon", "series_id": "", "season": None, "episode": None},
    ]
    events = [
        {"user_id": "u", "item_id": "s1e1", "ts": 1704067201},
        {"user_id": "u", "item_id": "m1", "ts": 1704067202},
        {"user_id": "u", "item_id": "m2", "ts": 1704067203},
    ]
    res = read_log(write_csv(tmp_path / "e.csv", events), items_path=write_csv(tmp_path / "i.csv", items))
    assert res.items.schema.names[:8] == ITEMS_SCHEMA.names
    assert res.items.schema.field("genres").type == pa.list_(pa.string())
    assert res.items.select(ITEMS_SCHEMA.names).to_pylist() == [
        {"item_id": "s1e1", "title": "Show S1E1", "genres": ["Drama", "Crime"], "year": 2020,
         "series_id": "s1", "season": 1, "episode": 1, "description": None},
        {"item_id": "m1", "title": "Film", "genres": ["Comedy", "Romance"], "year": None,
         "series_id": None, "season": None, "episode": None, "description": None},
    ]  # fmt: skip
    item_rej = res.rejects.filter(pa.compute.equal(res.rejects["source"], "items")).to_pylist()
    assert [(r["row"], r["reason"]) for r in item_rej] == [
        (3, 'item_id: duplicate "m1" in the catalog (the first row is kept)'),
        (4, "title: missing (null or empty)"),
        (5, 'year: cannot parse "soon" as a number'),
    ]
    assert res.events["item_id"].to_pylist() == ["s1e1", "m1"]
    assert res.n_rejected == 1 and res.n_read == 3


def test_catalog_missing_title_names_items_map_flag(tmp_path):
    items = write_jsonl(tmp_path / "i.jsonl", [{"item_id": "a", "name": "A", "tags": ["x", "y"]}])
    events = write_csv(tmp_path / "e.csv", [{"user_id": "u", "item_id": "a", "ts": 1704067200}])
    with pytest.raises(IngestError, match="--items-map item_id=<col>,title=<col>"):
        read_log(events, items_path=items)
    res = read_log(events, items_path=items, items_map={"title": "name", "genres": "tags"})
    assert res.items["genres"].to_pylist() == [["x", "y"]]


def test_vectorized_path_scales(tmp_path):
    """100k rows with ISO offsets and a few bad ones: no per-row work for the good rows."""
    import time

    n = 100_000
    base = np.datetime64("2024-01-01T00:00:00") + np.arange(n).astype("timedelta64[s]")
    ts = np.char.add(base.astype(str), "+01:00").astype(object)
    ts[::25_000] = "bad"
    pq.write_table(pa.table({"user_id": np.arange(n) % 100, "item_id": np.arange(n) % 7, "ts": ts}), tmp_path / "big.parquet")
    t0 = time.perf_counter()
    res = read_log(tmp_path / "big.parquet")
    assert time.perf_counter() - t0 < 10
    assert res.events.num_rows == n - 4 and res.rejects.num_rows == 4
    assert res.events["ts"][0].as_py() == utc(2023, 12, 31, 23, 0, 1)
