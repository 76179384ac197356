"""Named sources: MovieLens-100K from the recbole wheel, the synthetic streaming generator.

Run: pytest tests/test_sources.py -q
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from minivz.events import EVENTS_SCHEMA, ITEMS_SCHEMA, REJECTS_SCHEMA
from minivz.sources import (
    SOURCES,
    generate_streaming,
    load_source,
    movielens_100k_dir,
)

HAVE_RECBOLE = importlib.util.find_spec("recbole") is not None


# ------------------------------------------------------------------------------------- MovieLens-100K


@pytest.mark.skipif(not HAVE_RECBOLE, reason="MovieLens-100K ships in recbole: pip install --no-deps recbole==1.2.1")
def test_movielens_100k_loads_fast_and_complete():
    t0 = time.perf_counter()
    res = load_source("movielens-100k")
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, f"ML-100K took {elapsed:.1f}s"  # ~0.5 s on 2 cores; generous for shared CPUs
    ev, items = res.events, res.items
    assert ev.num_rows == 100_000 and res.n_read == 100_000 and res.rejects.num_rows == 0
    assert ev.schema.names == EVENTS_SCHEMA.names + ["rating"]
    assert ev.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert ev.schema.field("rating").type == pa.float64()
    assert len(pc.unique(ev["user_id"])) == 943
    assert len(pc.unique(ev["item_id"])) == 1682
    assert items.num_rows == 1682 and items.schema == ITEMS_SCHEMA
    assert pc.all(pc.equal(ev["interaction"], "rate")).as_py()
    assert ev["duration_s"].null_count == 100_000
    first = ev.slice(0, 1).to_pylist()[0]  # first line of ml-100k.inter: 196 242 3 881250949
    assert (first["user_id"], first["item_id"], first["rating"]) == ("196", "242", 3.0)
    assert int(ev["ts"].cast(pa.int64())[0].as_py()) == 881250949 * 10**6
    toy = items.slice(0, 1).to_pylist()[0]
    assert toy["title"] == "Toy Story" and toy["year"] == 1995
    assert toy["genres"] == ["Animation", "Children's", "Comedy"]
    assert res.source == "movielens-100k"


def test_movielens_dir_without_recbole_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "recbole" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install --no-deps recbole==1\.2\.1"):
        movielens_100k_dir()


def test_unknown_source_lists_the_known_ones():
    with pytest.raises(ValueError, match="movielens-100k, synthetic-streaming"):
        load_source("netflix-prize")
    assert set(SOURCES) == {"movielens-100k", "synthetic-streaming"}


# --------------------------------------------------------------------------------- synthetic streaming


@pytest.fixture(scope="module")
def syn():
    return generate_streaming(n_users=200, n_events=20_000, n_series=40, n_movies=150, seed=3)


def test_synthetic_is_deterministic_per_seed():
    a = generate_streaming(n_users=50, n_events=3_000, n_series=10, n_movies=30, seed=11)
    b = generate_streaming(n_users=50, n_events=3_000, n_series=10, n_movies=30, seed=11)
    c = generate_streaming(n_users=50, n_events=3_000, n_series=10, n_movies=30, seed=12)
    assert a.events.equals(b.events) and a.items.equals(b.items)
    assert not a.events.equals(c.events)


def test_synthetic_schema_and_catalog(syn):
    ev, items = syn.events, syn.items
    assert ev.schema == EVENTS_SCHEMA
    assert items.schema.names == ITEMS_SCHEMA.names + ["series_title"]
    assert items.select(ITEMS_SCHEMA.names).schema == ITEMS_SCHEMA
    assert ev.num_rows == syn.n_read == 20_000
    assert syn.rejects.schema == REJECTS_SCHEMA and syn.rejects.num_rows == 0
    assert "synthetic" in syn.source
    assert pc.all(pc.is_in(ev["item_id"], value_set=items["item_id"])).as_py()
    assert len(pc.unique(items["item_id"])) == items.num_rows
    assert ev["duration_s"].null_count == 0 and pc.min(ev["duration_s"]).as_py() > 0
    # series items carry series/season/episode; movies do not
    is_ep = items["series_id"].is_valid()
    assert pc.all(pc.equal(is_ep, items["season"].is_valid())).as_py()
    assert 0 < pc.sum(is_ep).as_py() < items.num_rows
    assert all(len(g) >= 1 for g in items["genres"].to_pylist())
    assert items["description"].null_count == 0


def test_synthetic_has_binge_runs_autoplay_previews_and_abandons(syn):
    ev = syn.events
    kinds = dict(zip(*[c.to_pylist() for c in pc.value_counts(ev["interaction"]).flatten()]))
    assert set(kinds) == {"play", "autoplay", "preview"}
    assert kinds["autoplay"] > 0.02 * ev.num_rows and kinds["preview"] > 0.05 * ev.num_rows
    previews = ev.filter(pc.equal(ev["interaction"], "preview"))["duration_s"].to_numpy()
    assert 20 < np.median(previews) < 40
    autoplay = ev.filter(pc.equal(ev["interaction"], "autoplay"))["duration_s"].to_numpy()
    assert autoplay.max() <= 90
    plays = ev.filter(pc.equal(ev["interaction"], "play"))["duration_s"].to_numpy()
    assert np.sum(plays < 600) > 0  # abandoned starts

    # binge runs: per user in time order, the next event is the next episode of the same series
    items = syn.items.select(["item_id", "series_id", "season", "episode"])
    pos = pc.index_in(ev["item_id"], value_set=items["item_id"]).to_numpy()
    series = np.asarray(items["series_id"].fill_null("").to_pylist(), dtype=object)[pos]
    ep_index = np.arange(items.num_rows)[pos]  # episodes of a series are consecutive catalog rows
    users = ev["user_id"].to_numpy(zero_copy_only=False)
    ts = ev["ts"].cast(pa.int64()).to_numpy()
    o = np.lexsort((ts, users))
    same_user = users[o][1:] == users[o][:-1]
    next_ep = (series[o][1:] == series[o][:-1]) & (series[o][1:] != "") & (ep_index[o][1:] == ep_index[o][:-1] + 1)
    assert np.sum(same_user & next_ep) > 0.2 * ev.num_rows
    # sessions of one user never overlap: each event starts after the previous one ended
    dur = ev["duration_s"].to_numpy()
    assert np.all(~same_user | (ts[o][1:] >= ts[o][:-1] + dur[o][:-1] * 1e6 - 1))


def test_synthetic_users_have_planted_tastes(syn):
    """Each user's plays concentrate on few genres (a random taste would spread over all 14)."""
    ev = syn.events.filter(pc.equal(syn.events["interaction"], "play"))
    items = syn.items
    pos = pc.index_in(ev["item_id"], value_set=items["item_id"]).to_numpy()
    primary = np.asarray([g[0] for g in items["genres"].to_pylist()], dtype=object)[pos]
    users = ev["user_id"].to_numpy(zero_copy_only=False)
    shares = []
    for u in np.unique(users)[:50]:
        _, counts = np.unique(primary[users == u], return_counts=True)
        if counts.sum() >= 30:
            shares.append(np.sort(counts)[::-1][:3].sum() / counts.sum())
    assert shares and np.median(shares) > 0.6


def test_synthetic_scale_smoke():
    t0 = time.perf_counter()
    res = generate_streaming(n_users=2_000, n_events=200_000, seed=1)
    elapsed = time.perf_counter() - t0
    assert res.events.num_rows == 200_000
    assert elapsed < 10, f"200k synthetic events took {elapsed:.1f}s"  # ~0.2 s on 2 cores


def test_synthetic_edge_sizes():
    assert generate_streaming(n_users=3, n_events=0, n_series=1, n_movies=1).events.num_rows == 0
    assert generate_streaming(n_users=1, n_events=1, n_series=1, n_movies=1).events.num_rows == 1
    with pytest.raises(ValueError, match="n_users"):
        generate_streaming(n_users=0)
