"""Bad input gets a clear answer and nothing is lost (the data path and the CLI).

Each test plants one fault a user meets with their own log and checks the answer: a one-line error
naming the file/row/field and the fix, or rows rejected with a reason and counted.
Run: pytest tests/test_faults.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minivz.config import DataConfig
from minivz.examples import prepare
from minivz.events import read_log
from minivz.log import IngestError

T0 = 1_773_498_631  # 2026-03-14 in epoch seconds


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "minivz.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def own_log(tmp_path, text: str, name="log.csv", mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_header_only_log_is_one_clear_error(tmp_path):
    log = own_log(tmp_path, "user_id,item_id,ts\n")
    with pytest.raises(IngestError, match="has no rows"):
        prepare(DataConfig(source=None, input=str(log)), tmp_path / "out")


def test_every_row_rejected_keeps_the_reasons(tmp_path):
    log = own_log(tmp_path, "user_id,item_id,ts\nu,a,not-a-date\n,b,2025-06-01\nu,c,1773498631\n"
                            "u,d,20260314\n")
    with pytest.raises(IngestError, match=r"every row was rejected \(4 read, 4 rejected\)") as e:
        prepare(DataConfig(source=None, input=str(log), ts_max="2026-01-01"), tmp_path / "out")
    assert "rejects.parquet" in str(e.value)
    rej = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert [r["row"] for r in rej] == [1, 2, 3, 4]
    assert "cannot parse" in rej[0]["reason"] and "user_id: missing" in rej[1]["reason"]
    assert "outside the plausible window" in rej[2]["reason"] and "1970-08-23" in rej[3]["reason"]


@pytest.mark.parametrize("name", ["log.csv", "log.jsonl"])
def test_latin1_log_names_the_line_and_the_fix(tmp_path, name):
    if name.endswith(".csv"):
        text = f"user_id,item_id,ts\nu,cafe,{T0}\nu,caf\xe9,{T0 + 1}\n"
    else:
        text = f'{{"user_id": "u", "item_id": "cafe", "ts": {T0}}}\n{{"user_id": "u", "item_id": "caf\xe9", "ts": {T0 + 1}}}\n'
    log = own_log(tmp_path, text.encode("latin-1"), name, mode="wb")
    with pytest.raises(IngestError, match=r"not valid utf-8 at line \d+ .*--set encoding=latin-1"):
        read_log(log)
    assert read_log(log, encoding="latin-1").events["item_id"].to_pylist() == ["cafe", "café"]


def test_duplicate_column_names_are_named(tmp_path):
    log = own_log(tmp_path, f"user_id,item_id,time,time\nu,a,{T0},{T0}\n")
    with pytest.raises(IngestError, match="duplicate column names 'time'"):
        read_log(log, {"ts": "time"})


def test_more_candidates_than_items_says_the_limit(tmp_path):
    rows = "".join(f"u{u},i{(u + k) % 7},{T0 + 60 * k}\n" for u in range(4) for k in range(6))
    log = own_log(tmp_path, "user_id,item_id,ts\n" + rows)
    with pytest.raises(IngestError, match=r"n_candidates=10 but the log has only 7 distinct items.*--set n_candidates=7"):
        prepare(DataConfig(source=None, input=str(log)), tmp_path / "out")


def test_epoch_unit_is_decided_per_value_and_implausible_dates_are_rejected(tmp_path):
    """s and ms in one column (a foreign schema's mix) both land in 2026; year 3000 and 1970 are rejected."""
    log = own_log(tmp_path, f"user_id,item_id,ts\nu,a,{T0}\nu,b,{(T0 + 60) * 1000}\nu,c,{(T0 + 120) * 10**6}\n"
                            "u,d,20260314\nu,e,32503680000\nu,f,3000-01-01T00:00:00Z\n")
    res = read_log(log)
    days = {t.date().isoformat() for t in res.events["ts"].to_pylist()}
    assert days == {"2026-03-14"} and res.events.num_rows == 3
    reasons = res.rejects["reason"].to_pylist()
    assert len(reasons) == 3 and all("outside the plausible window [1971-01-01, 2100-01-01)" in r for r in reasons)
    assert "1970-08-23" in reasons[0] and reasons[1].startswith("ts: 3000-01-01")
    wide = read_log(log, ts_min="1900-01-01", ts_max="3001-01-01")
    assert wide.events.num_rows == 6


def test_parquet_is_recognised_by_content(tmp_path):
    path = tmp_path / "u.data.parquet.brotli"
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["a"], "ts": [T0]}), path, compression="brotli")
    assert read_log(path).events.num_rows == 1


# one planted row: (kind, value) -> how it is written in the ts column, and whether it must be kept
_TS_KINDS = {
    "s": lambda r: (str(T0 + r), True),
    "ms": lambda r: (str((T0 + r) * 1000), True),
    "us": lambda r: (str((T0 + r) * 10**6), True),
    "iso": lambda r: (datetime.fromtimestamp(T0 + r, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00"), True),
    "garbage": lambda r: ("soon", False),
    "empty": lambda r: ("", False),
    "1970": lambda r: (str(20260314 + r), False),
    "year3000": lambda r: (str(32503680000 + r), False),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.sampled_from(sorted(_TS_KINDS)), st.integers(0, 10**6),
                               st.booleans()), min_size=1, max_size=40),
       fmt=st.sampled_from(["csv", "jsonl", "parquet"]))
def test_ingest_never_loses_a_row_and_keeps_only_plausible_dates(tmp_path, rows, fmt):
    """Mixed formats, mixed timestamp shapes and planted bad rows: rows read = kept + rejected, every kept
    timestamp lies in the window, and exactly the planted good rows are kept."""
    recs, expect = [], 0
    for i, (kind, r, blank_user) in enumerate(rows):
        ts, good = _TS_KINDS[kind](r)
        recs.append({"user_id": "" if blank_user else f"u{i % 3}", "item_id": f"i{i}", "ts": ts})
        expect += good and not blank_user
    path = tmp_path / f"log-{fmt}.{fmt}"
    if fmt == "csv":
        path.write_text("user_id,item_id,ts\n" + "".join(f"{r['user_id']},{r['item_id']},{r['ts']}\n" for r in recs))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    else:
        pq.write_table(pa.table({k: [r[k] for r in recs] for k in recs[0]}), path)
    res = read_log(path)
    assert res.n_read == len(recs) == res.events.num_rows + res.n_rejected
    assert res.events.num_rows == expect
    us = np.asarray([t.timestamp() for t in res.events["ts"].to_pylist()])
    assert ((us >= 31_536_000) & (us < 4_102_444_800)).all()
    assert all(r for r in res.rejects["reason"].to_pylist())


def test_cli_dead_oracle_is_one_line_and_debug_shows_the_traceback(tmp_path):
    rows = "".join(f"u{u},i{(u + k) % 12},{T0 + 60 * k}\n" for u in range(6) for k in range(8))
    log = own_log(tmp_path, "user_id,item_id,ts\n" + rows)
    data = tmp_path / "data"
    cli("data", "prepare", "--input", str(log), "--out", str(data), "--set", "n_candidates=3")
    spec = "openai:url=http://127.0.0.1:9/v1,model=x,max_retries=0"
    p = cli("eval", "--data", str(data), "--reasoner", spec, "--limit", "2", "--out", str(tmp_path / "run"))
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr and p.stderr.startswith("error: the reasoner failed")
    assert "Is the server running at http://127.0.0.1:9/v1" in p.stderr
    p = cli("--debug", "eval", "--data", str(data), "--reasoner", spec, "--limit", "2", "--out", str(tmp_path / "run2"))
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_resume_refuses_changed_training_settings(tmp_path):
    """D8: a resumed run keeps config.yaml as its record and refuses settings that would change training."""
    import dataclasses

    from minivz.config import ConfigError
    from minivz.config import VerbalizerTrainConfig
    from minivz.rundir import record_run_config

    run, data = tmp_path / "run", tmp_path / "data"
    cfg = VerbalizerTrainConfig(oracle="knn")
    (run / "checkpoints").mkdir(parents=True)
    record_run_config(run, cfg, data, resume=True)
    record = (run / "config.yaml").read_text()
    (run / "checkpoints" / "step_000002").mkdir()
    (run / "checkpoints" / "step_000002" / "trainer_state.json").write_text("{}")
    changed = dataclasses.replace(cfg, learning_rate=cfg.learning_rate * 10, temperature=0.5)
    with pytest.raises(ConfigError, match=r"learning_rate: 0\.0001 -> 0\.001; temperature: 1\.0 -> 0\.5.*--no-resume"):
        record_run_config(run, changed, data, resume=True)
    with pytest.raises(ConfigError, match="data_dir: "):
        record_run_config(run, cfg, tmp_path / "other", resume=True)
    assert (run / "config.yaml").read_text() == record  # the record is kept
    longer = dataclasses.replace(cfg, max_steps=cfg.max_steps * 2)
    record_run_config(run, longer, data, resume=True)  # running longer is a resume, not a change
    record_run_config(run, changed, data, resume=False)  # starting over records the new settings
    assert "temperature: 0.5" in (run / "config.yaml").read_text()


def test_resume_lets_grpo_settings_change_until_grpo_starts(tmp_path):
    """GRPO may be added to a finished SFT (its settings shaped nothing yet); once it has a checkpoint
    they are training settings like any other."""
    import dataclasses

    from minivz.config import ConfigError, ReasonerTrainConfig
    from minivz.rundir import record_run_config

    run, data = tmp_path / "run", tmp_path / "data"
    cfg = ReasonerTrainConfig()
    (run / "checkpoints" / "step_000125").mkdir(parents=True)
    record_run_config(run, cfg, data, resume=True)
    (run / "checkpoints" / "step_000125" / "trainer_state.json").write_text("{}")
    grpo = dataclasses.replace(cfg, reasoner_grpo_max_steps=40, reasoner_grpo_learning_rate=1e-4,
                               reasoner_eval_split="valid")
    record_run_config(run, grpo, data, resume=True)  # SFT done, GRPO not started: accepted and recorded
    assert "reasoner_grpo_learning_rate: 0.0001" in (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"reasoner_learning_rate"):  # the SFT's own settings stay fixed
        record_run_config(run, dataclasses.replace(grpo, reasoner_learning_rate=1.0), data, resume=True)
    (run / "grpo" / "checkpoints" / "step_000010").mkdir(parents=True)
    (run / "grpo" / "checkpoints" / "step_000010" / "trainer_state.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"reasoner_grpo_learning_rate: 0\.0001 -> 0\.001"):
        record_run_config(run, dataclasses.replace(grpo, reasoner_grpo_learning_rate=1e-3), data, resume=True)
    record_run_config(run, dataclasses.replace(grpo, reasoner_grpo_max_steps=80), data, resume=True)  # longer


def test_onehot_genre_columns_map_to_genres(tmp_path):
    """Another distribution of MovieLens: genres as one 0/1 column per genre."""
    items = tmp_path / "items.csv"
    items.write_text("movie,name,Action,Comedy,Drama\nm1,Heat,1,0,1\nm2,Big,0,1,0\nm3,Odd,0,0,0\n")
    log = own_log(tmp_path, f"user_id,item_id,ts\nu,m1,{T0}\nu,m2,{T0 + 1}\nu,m3,{T0 + 2}\n")
    res = read_log(log, items_path=items, items_map={"item_id": "movie", "title": "name",
                                                     "genres": "Action|Comedy|Drama"})
    assert res.items["genres"].to_pylist() == [["Action", "Drama"], ["Comedy"], []]
    assert "Action" not in res.items.column_names
    with pytest.raises(IngestError, match=r"'Horror' not a column .*genres=<col>\|<col>"):
        read_log(log, items_path=items, items_map={"item_id": "movie", "title": "name", "genres": "Action|Horror"})


# -- the oracle: one retry layer, successes kept, a dead oracle stops training with a checkpoint ----


class _Oracle:
    """predict() answers by the first character of each context; 'x' fails (an HTTP backend that has
    already retried: PartialPredictions / ReasonerError), 'i' is an invalid answer."""

    name = "fake"

    def __init__(self):
        self.calls = []

    def predict(self, queries):
        from minivz.reason.base import PartialPredictions, Prediction

        self.calls.append([q.context for q in queries])
        preds = [None if q.context.startswith("x") else
                 Prediction(scores=np.array([1.0, 0.0]), choice=0 if q.context[0] != "i" else -1,
                            valid=q.context[0] != "i") for q in queries]
        if any(p is None for p in preds):
            raise PartialPredictions("1 of n failed", preds)
        return preds


def test_reward_keeps_a_failing_batchs_answers_and_does_not_retry_what_the_backend_retried():
    from minivz.train.rewards import OracleDown, RewardState, accuracy_reward

    oracle = _Oracle()
    state = RewardState(oracle, accuracy="binary", lo=0.0, hi=1.0, max_retries=2)
    kw = {"candidates": [["a", "b"]] * 3, "candidate_ids": [[0, 1]] * 3, "label": [0, 0, 0]}
    rewards = accuracy_reward(["ok", "x-dead", "invalid"], state=state, **kw)
    assert rewards == [1.0, None, None]
    # one batch call, then only the invalid answer is asked again (twice): never the failed one
    assert oracle.calls == [["ok", "x-dead", "invalid"], ["invalid"], ["invalid"]]
    assert state.step.excluded == 2 and state.step.oracle_errors == 1
    with pytest.raises(OracleDown, match="failed on all 2 completions"):
        accuracy_reward(["x1", "x2"], state=state, **{k: v[:2] for k, v in kw.items()})


@pytest.mark.parametrize("fault, needle", [
    ("busy", r"failed after 1 attempts .*deadline=2 s.*HTTP 503"),  # Retry-After: 3600 is capped, deadline holds
    ("hang", r"deadline=2 s.*ReadTimeout"),
    ("garbage", r"deadline=2 s.*body is not JSON: '<html>oops"),
])
def test_openai_bounded_retries_on_a_busy_hung_or_garbage_server(fault, needle):
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from minivz.reason import make_reasoner
    from minivz.reason.base import Query, ReasonerError

    class Faulty(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            if fault == "hang":
                time.sleep(3)
            self.send_response(503 if fault == "busy" else 200)
            if fault == "busy":
                self.send_header("Retry-After", "3600")
            self.end_headers()
            if fault == "garbage":
                self.wfile.write(b"<html>oops</html>")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Faulty)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        r = make_reasoner(f"openai:url={url},model=m,max_retries=5,deadline=2,timeout=0.5,backoff=0.2,concurrency=1")
        t0 = time.monotonic()
        with pytest.raises(ReasonerError, match=needle):
            r.predict([Query("ctx", ["a", "b"], np.arange(2))])
        assert time.monotonic() - t0 < 5
    finally:
        server.shutdown()
