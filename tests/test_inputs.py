"""Inputs a data platform hands over: directories, globs, hive partitions, duplicates, delimiters, and
mapping errors before any data is read. Run: pytest tests/test_inputs.py -q"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minivz.log
from minivz.events import EVENTS_SCHEMA, REJECTS_SCHEMA, read_log
from minivz.log import IngestError, input_files, sniff_delimiter

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
MAP = {"user_id": "uid", "item_id": "sku", "ts": "at", "duration_s": "secs", "interaction": "kind"}


def _day(rng, n, day):
    """One day of a production-style log: int64 ids, timestamp[us, UTC], dictionary kind, int32 secs."""
    ts = [T0 + timedelta(days=day, seconds=int(s)) for s in rng.integers(0, 86_400, n)]
    return pa.table({
        "uid": pa.array(rng.integers(1, 40, n), pa.int64()),
        "sku": pa.array(rng.integers(100, 160, n), pa.int64()),
        "at": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "kind": pa.array(rng.choice(["play", "preview"], n)).dictionary_encode(),
        "secs": pa.array(rng.integers(0, 3600, n), pa.int32()),
    })


@pytest.fixture
def hive(tmp_path):
    """3 days x 2 part files, hive-partitioned by dt, plus the marker files platforms leave behind."""
    rng = np.random.default_rng(0)
    root = tmp_path / "log"
    days = []
    for day in range(3):
        d = root / f"dt=2024-03-0{day + 1}"
        d.mkdir(parents=True)
        for part in range(2):
            t = _day(rng, 50, day)
            pq.write_table(t, d / f"part-{part}.parquet")
            days.append(t.append_column("dt", pa.array([f"2024-03-0{day + 1}"] * t.num_rows)))
    (root / "_SUCCESS").write_text("")
    (root / ".part-0.parquet.crc").write_text("x")
    return root, pa.concat_tables(days)


def test_hive_directory_equals_the_concatenated_file(hive, tmp_path):
    root, whole = hive
    one = tmp_path / "whole.parquet"
    pq.write_table(whole, one)
    by_dir = read_log(root, MAP)
    by_file = read_log(one, MAP)
    assert by_dir.n_read == by_file.n_read == whole.num_rows == 300
    assert by_dir.events.equals(by_file.events)  # the partition key is a column: dt
    assert by_dir.events["dt"].to_pylist() == whole["dt"].to_pylist()
    files, parts, kind = input_files(root)
    assert kind == "parquet" and len(files) == 6 and parts[0] == {"dt": "2024-03-01"}
    # a glob over the same files reads the same rows
    by_glob = read_log(f"{root}/dt=*/*.parquet", MAP)
    assert by_glob.events.equals(by_dir.events)


def test_partition_key_maps_like_a_column_and_rejects_name_their_file(tmp_path):
    root = tmp_path / "log"
    for kind in ("play", "preview"):
        (root / f"kind={kind}").mkdir(parents=True)
        (root / f"kind={kind}" / "a.csv").write_text(
            "uid,sku,at\n1,10,2024-03-01T00:00:00Z\n2,11,2024-03-01T00:01:00Z\n3,12,not-a-time\n")
    res = read_log(root, {"user_id": "uid", "item_id": "sku", "ts": "at", "interaction": "kind"})
    assert res.n_read == 6 and res.events.num_rows == 4
    assert sorted(set(res.events["interaction"].to_pylist())) == ["play", "preview"]
    assert res.rejects.schema == REJECTS_SCHEMA
    rej = res.rejects.to_pylist()
    assert [(r["file"], r["row"]) for r in rej] == [
        (str(root / "kind=play" / "a.csv"), 3), (str(root / "kind=preview" / "a.csv"), 3)]


def test_files_with_different_columns_or_types_lose_no_row(tmp_path):
    root = tmp_path / "log"
    root.mkdir()
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [5, 6], "ts": [1709251200, 1709251260]}),
                   root / "a.parquet")
    pq.write_table(pa.table({"user_id": ["u3"], "item_id": [7], "ts": [1709251320], "device": ["tv"]}),
                   root / "b.parquet")
    res = read_log(root)
    assert res.n_read == 3 and res.events.num_rows == 3
    assert res.events["user_id"].to_pylist() == ["1", "2", "u3"]
    assert res.events["device"].to_pylist() == [None, None, "tv"]


def test_mixed_formats_and_empty_matches_are_clear(tmp_path):
    root = tmp_path / "log"
    root.mkdir()
    (root / "a.csv").write_text("user_id,item_id,ts\n1,2,1709251200\n")
    pq.write_table(pa.table({"user_id": [1], "item_id": [2], "ts": [1709251200]}), root / "b.parquet")
    with pytest.raises(IngestError, match=r"mixes formats: 1 csv .*1 parquet.*\*\*/\*\.parquet"):
        read_log(root)
    assert read_log(f"{root}/*.csv").n_read == 1
    with pytest.raises(IngestError, match="no file matches"):
        read_log(f"{root}/*.jsonl")


# ----------------------------------------------------------------------------------------- duplicates


def _naive_first_rows(recs):
    """Reference: the positions of the first copy of each record (every field compared)."""
    seen, keep = set(), []
    for i, r in enumerate(recs):
        key = json.dumps(r, sort_keys=True)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=st.lists(st.fixed_dictionaries({
    "user_id": st.sampled_from(["u1", "u2"]),
    "item_id": st.sampled_from(["a", "b"]),
    "ts": st.sampled_from([1709251200, 1709251260]),
    "interaction": st.sampled_from(["play", "stop"]),
    "duration_s": st.sampled_from([None, 1.5, 3.0]),
}), min_size=1, max_size=30))
def test_dedupe_keeps_the_first_copy_of_every_exact_event(tmp_path, recs):
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = read_log(path)
    keep = _naive_first_rows(recs)
    assert res.n_read == len(recs) == res.events.num_rows + res.n_rejected
    assert res.n_duplicates == len(recs) - len(keep) == res.n_rejected
    got = res.events.select(["item_id", "interaction", "duration_s"]).to_pylist()
    assert got == [{k: recs[i][k] for k in ("item_id", "interaction", "duration_s")} for i in keep]
    for r in res.rejects.to_pylist():  # each names the row it repeats, which is kept and equal
        first = int(r["reason"].split('row "')[1].split('"')[0])
        assert first - 1 in keep and recs[first - 1] == recs[r["row"] - 1]
    assert read_log(path, dedupe=False).events.num_rows == len(recs)


def test_planted_duplicates_are_counted_in_the_manifest(tmp_path):
    rows = ["user,movie,t,device"] + [f"u{i % 7},m{i % 23},{1709251200 + 60 * i},tv" for i in range(300)]
    planted = rows[1:32]  # 31 re-delivered events, appended as an at-least-once pipeline would
    log = tmp_path / "clicks.csv"
    log.write_text("\n".join(rows + planted) + "\n")
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "minivz", "data", "prepare", "--input", str(log), "--out", str(out),
           "--map", "user_id=user,item_id=movie,ts=t", "--set", "min_history=1"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert (summary["n_read"], summary["n_events"], summary["n_duplicates"]) == (331, 300, 31)
    rej = pq.read_table(out / "rejects.parquet").to_pylist()
    assert [r["row"] for r in rej] == list(range(301, 332)) and all(r["file"] == str(log) for r in rej)
    p = subprocess.run(cmd[:-2] + ["--set", "dedupe=false", "--set", "min_history=1"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "manifest.json").read_text())["summary"]["n_events"] == 331


# ----------------------------------------------------------------------------------------- delimiters


@pytest.mark.parametrize("sep", [";", "|", "\t"])
def test_a_one_column_header_holding_a_delimiter_is_read_with_it(tmp_path, sep):
    log = tmp_path / "log.csv"
    log.write_text(sep.join(["uid", "sku", "at"]) + "\n" + sep.join(["1", "10", "1709251200"]) + "\n")
    cat = tmp_path / "catalog.csv"
    cat.write_text(sep.join(["sku", "name", "category"]) + "\n" + sep.join(["10", "Heat, 1995", "drama"]) + "\n")
    res = read_log(log, {"user_id": "uid", "item_id": "sku", "ts": "at"}, items_path=cat,
                   items_map={"item_id": "sku", "title": "name", "genres": "category"})
    assert res.events.num_rows == 1 and res.items["title"].to_pylist() == ["Heat, 1995"]
    assert res.delimiters == [sep] and repr(sep) in res.summary()


def test_an_ambiguous_header_names_the_delimiter_flag(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("uid;sku|at\n1;2|3\n")
    with pytest.raises(IngestError, match=r"holds no comma but both ';' \(semicolon\) and '\|' \(pipe\).*--set delimiter=';'"):
        read_log(log)
    res = read_log(log, {"user_id": "uid", "item_id": "sku|at", "ts": "sku|at"}, delimiter=";")
    assert res.n_read == 1
    plain = tmp_path / "plain.csv"
    plain.write_text("title\nHeat; the film\n")  # one column, no delimiter in its header
    assert sniff_delimiter(plain) == ","


# ------------------------------------------------------------------- mapping errors before any data


def test_mapping_errors_come_before_any_data_is_read(tmp_path, monkeypatch):
    log = tmp_path / "log.parquet"
    pq.write_table(pa.table({"uid": [1], "sku": [2], "at": [1709251200]}), log)
    cat = tmp_path / "items.csv"
    cat.write_text("sku,name,Action,Comedy\n2,Heat,1,0\n")

    def no_read(*a, **k):
        raise AssertionError("data was read before the maps were checked")

    monkeypatch.setattr(minivz.log, "read_table", no_read)
    with pytest.raises(IngestError, match=r"user_id \(looked for a column named 'user_id'\).*'uid', 'sku', 'at'"):
        read_log(log, {"item_id": "sku", "ts": "at"})
    good = {"user_id": "uid", "item_id": "sku", "ts": "at"}
    with pytest.raises(IngestError, match=r"item catalog has no column for: title.*--items-map"):
        read_log(log, good, items_path=cat, items_map={"item_id": "sku"})
    with pytest.raises(IngestError, match=r"'Drama' not a column of the catalog"):
        read_log(log, good, items_path=cat, items_map={"item_id": "sku", "title": "name", "genres": "Action|Drama"})
    monkeypatch.undo()
    res = read_log(log, good, items_path=cat, items_map={"item_id": "sku", "title": "name", "genres": "Action|Comedy"})
    assert res.items["genres"].to_pylist() == [["Action"]]
    assert res.events.schema.names[:5] == EVENTS_SCHEMA.names
