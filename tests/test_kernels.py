"""minivz.kernels against the slow references in tests/naive.py.

    pytest tests/test_kernels.py
    NUMBA_DISABLE_JIT=1 pytest tests/test_kernels.py   # must pass too
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivz import kernels
from minivz.kernels import (
    aggregate_series,
    apply_order,
    build_examples,
    group_advantages,
    plateau_length_reward,
    sessionize,
    split_by_time,
    split_leave_last_out,
    stable_order,
)

import naive

FEW = settings(max_examples=60, deadline=None)


def ints(n, lo, hi):
    return st.lists(st.integers(lo, hi), min_size=n, max_size=n)


@st.composite
def raw_events(draw, max_n=30, max_users=4, max_ts=6, max_items=12):
    """Unsorted (user, ts, item, n_items) with many ties."""
    n_items = draw(st.integers(2, max_items))
    n = draw(st.integers(0, max_n))
    user = np.array(draw(ints(n, 0, max_users - 1)), dtype=np.int64)
    ts = np.array(draw(ints(n, 0, max_ts)), dtype=np.int64)
    item = np.array(draw(ints(n, 0, n_items - 1)), dtype=np.int32)
    return user, ts, item, n_items


@st.composite
def sorted_events(draw, **kw):
    user, ts, item, n_items = draw(raw_events(**kw))
    perm = np.lexsort((item, ts, user))
    return user[perm], ts[perm], item[perm], n_items


# ---------------------------------------------------------------- stable_order

@FEW
@given(raw_events(max_n=60), st.booleans())
def test_stable_order_matches_lexsort(ev, with_tiebreak):
    user, ts, item, _ = ev
    tb = item if with_tiebreak else None
    np.testing.assert_array_equal(stable_order(user, ts, tb), naive.stable_order(user, ts, tb))


@FEW
@given(raw_events(max_n=40), st.integers(1, 2**40))
def test_stable_order_sparse_user_codes(ev, scale):
    user, ts, item, _ = ev
    user = user * scale - 7  # far from dense: takes the argsort path
    np.testing.assert_array_equal(stable_order(user, ts, item), naive.stable_order(user, ts, item))


def test_stable_order_long_segments_and_arrow():
    rng = np.random.default_rng(1)
    n = 500  # one user with > run length rows exercises the merge sort
    user = rng.integers(0, 3, n)
    ts = rng.integers(0, 20, n)
    item = rng.integers(0, 50, n)
    expect = np.lexsort((item, ts, user))
    np.testing.assert_array_equal(stable_order(user, ts, item), expect)
    wide = ts * 2**58  # generic path (no packed key)
    np.testing.assert_array_equal(stable_order(user, wide, item), np.lexsort((item, wide, user)))
    np.testing.assert_array_equal(stable_order(user, ts), np.lexsort((ts, user)))
    got = stable_order(pa.chunked_array([user[:200], user[200:]]), pa.array(ts), pa.array(item.astype(np.int32)))
    np.testing.assert_array_equal(got, expect)
    assert stable_order([], [], []).dtype == np.int64
    np.testing.assert_array_equal(stable_order([5], [1], [0]), [0])


@FEW
@given(raw_events(max_n=40))
def test_stable_order_wide_keys(ev):
    user, ts, item, _ = ev
    ts = ts * 2**55 - 2**58  # (ts, tiebreak) cannot pack into one int64: generic comparison path
    tb = item.astype(np.int64) * 2**40
    np.testing.assert_array_equal(stable_order(user, ts, tb), naive.stable_order(user, ts, tb))


def test_stable_order_all_ties_keeps_input_order():
    n = 100
    np.testing.assert_array_equal(stable_order(np.zeros(n, int), np.zeros(n, int)), np.arange(n))


def test_stable_order_errors():
    with pytest.raises(ValueError, match="ts has length"):
        stable_order([1, 2], [1])
    with pytest.raises(ValueError, match="user must hold integers"):
        stable_order([1.5, 2.0], [1, 2])
    with pytest.raises(ValueError, match="null"):
        stable_order(pa.array([1, None]), [1, 2])


# ---------------------------------------------------------------- sessionize

@FEW
@given(sorted_events(max_n=40), st.integers(0, 4))
def test_sessionize_matches_naive(ev, gap):
    user, ts, _, _ = ev
    got = sessionize(user, ts, gap)
    np.testing.assert_array_equal(got, naive.sessionize(user, ts, gap))
    assert got.dtype == np.int64
    if len(got):
        assert got[0] == 0 and np.all(np.diff(got) >= 0) and np.all(np.diff(got) <= 1)


def test_sessionize_errors_and_edges():
    with pytest.raises(ValueError, match="sort with stable_order first"):
        sessionize([0, 0], [5, 1], 10)
    with pytest.raises(ValueError, match="sort with stable_order first"):
        sessionize([1, 0], [0, 1], 10)
    with pytest.raises(ValueError, match="gap"):
        sessionize([0], [0], -1)
    assert sessionize([], [], 3).shape == (0,)
    np.testing.assert_array_equal(sessionize([0, 0, 0, 1], [0, 10, 11, 11], 5), [0, 1, 1, 2])


# ---------------------------------------------------------------- aggregate_series

@st.composite
def series_events(draw):
    n = draw(st.integers(0, 30))
    session = np.sort(np.array(draw(ints(n, 0, 4)), dtype=np.int64))
    series = np.array(draw(ints(n, -1, 2)), dtype=np.int32)
    season = np.array(draw(ints(n, -1, 3)), dtype=np.int32)
    episode = np.array(draw(ints(n, -1, 9)), dtype=np.int32)
    duration = np.array(draw(st.lists(st.one_of(st.just(float("nan")), st.floats(0, 1e4)), min_size=n, max_size=n)),
                        dtype=np.float64)
    ts = np.cumsum(np.array(draw(ints(n, 0, 3)), dtype=np.int64))
    return session, series, season, episode, duration, ts


def _check_runs(runs, ev):
    run_of_event, expect = naive.aggregate_series(*ev)
    np.testing.assert_array_equal(runs.run_of_event, run_of_event)
    assert len(runs.start) == len(expect)
    for r, e in enumerate(expect):
        for key, val in e.items():
            got = getattr(runs, key)[r]
            if key == "total_duration" and math.isnan(val):
                assert math.isnan(got)
            elif key == "total_duration":
                assert got == pytest.approx(val, rel=1e-12, abs=1e-9)
            else:
                assert got == val, (key, r)


@FEW
@given(series_events())
def test_aggregate_series_matches_naive(ev):
    runs = aggregate_series(*ev)
    _check_runs(runs, ev)
    assert runs.length.dtype == np.int32 and runs.start.dtype == np.int64
    assert runs.series.dtype == np.int32 and runs.total_duration.dtype == np.float64
    assert runs.length.sum() == len(ev[0])


def test_aggregate_series_example_and_arrow_nulls():
    # Two episodes of series 7, a non-series event, then series 7 again in a new session.
    session = pa.array([0, 0, 0, 1])
    series = pa.array([7, 7, None, 7], pa.int32())
    season = pa.array([1, 1, None, 2], pa.int32())
    episode = pa.array([1, 2, None, 1], pa.int32())
    duration = pa.array([100.0, None, None, None])
    ts = pa.array([0, 50, 60, 5000])
    runs = aggregate_series(session, series, season, episode, duration, ts)
    np.testing.assert_array_equal(runs.run_of_event, [0, 0, 1, 2])
    np.testing.assert_array_equal(runs.length, [2, 1, 1])
    np.testing.assert_array_equal(runs.series, [7, -1, 7])
    np.testing.assert_array_equal(runs.last_episode, [2, -1, 1])
    np.testing.assert_array_equal(runs.total_duration[:1], [100.0])
    assert np.isnan(runs.total_duration[1:]).all()
    empty = aggregate_series([], [], [], [], [], [])
    assert empty.run_of_event.shape == (0,) and empty.start.shape == (0,)


def test_aggregate_series_errors():
    with pytest.raises(ValueError, match="non-decreasing"):
        aggregate_series([1, 0], [0, 0], [0, 0], [0, 0], [1.0, 1.0], [0, 1])
    with pytest.raises(ValueError, match="duration has length"):
        aggregate_series([0, 0], [0, 0], [0, 0], [0, 0], [1.0], [0, 1])


# ---------------------------------------------------------------- splits

@FEW
@given(raw_events(max_n=40), st.data())
def test_split_leave_last_out_matches_naive(ev, data):
    user = ev[0]
    eligible = np.array(data.draw(st.lists(st.booleans(), min_size=len(user), max_size=len(user))), dtype=bool)
    got = split_leave_last_out(user, eligible)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, naive.split_leave_last_out(user, eligible))
    np.testing.assert_array_equal(split_leave_last_out(user * 10**12, eligible), got)  # sparse codes


@FEW
@given(raw_events(max_n=40), st.integers(0, 7), st.integers(0, 7), st.data())
def test_split_by_time_matches_naive(ev, a, b, data):
    ts = ev[1]
    lo, hi = min(a, b), max(a, b)
    eligible = np.array(data.draw(st.lists(st.booleans(), min_size=len(ts), max_size=len(ts))), dtype=bool)
    got = split_by_time(ts, lo, hi, eligible)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, naive.split_by_time(ts, lo, hi, eligible))


def test_split_errors_and_defaults():
    with pytest.raises(ValueError, match="valid_start"):
        split_by_time([1, 2], 5, 3)
    with pytest.raises(ValueError, match="eligible has length"):
        split_leave_last_out([0, 0], np.array([True]))
    np.testing.assert_array_equal(split_leave_last_out([0, 0, 0, 1]), [0, 1, 2, 2])
    np.testing.assert_array_equal(split_by_time([0, 5, 9], 5, 9), [0, 1, 2])
    assert split_leave_last_out([]).shape == (0,)


# ---------------------------------------------------------------- rewards

finite = st.floats(-10, 10, allow_nan=False)


@FEW
@given(st.lists(st.one_of(finite, st.just(float("nan")), st.just(float("inf"))), max_size=20),
       st.floats(0.01, 2), st.floats(0, 2), st.floats(0.01, 2))
def test_plateau_matches_naive(ratio, lo, width, softness):
    hi = lo + width
    got = plateau_length_reward(np.array(ratio), lo, hi, softness)
    np.testing.assert_allclose(got, naive.plateau_length_reward(np.array(ratio), lo, hi, softness), rtol=1e-12)
    assert np.all((got >= 0) & (got <= 1))


@FEW
@given(st.floats(0.01, 2), st.floats(0, 2), st.floats(0.01, 2), st.floats(1e-6, 1), st.floats(1e-6, 1))
def test_plateau_continuous_and_monotone(lo, width, softness, d1, d2):
    hi = lo + width
    f = lambda r: float(plateau_length_reward(np.array([r]), lo, hi, softness)[0])  # noqa: E731
    assert f(lo) == 1.0 and f(hi) == 1.0
    assert f(lo - 1e-9 * lo) == pytest.approx(1.0, abs=1e-6)
    assert f(hi + 1e-9 * hi) == pytest.approx(1.0, abs=1e-6)
    near, far = sorted([d1, d2])
    assert f(lo - far * lo) <= f(lo - near * lo)  # non-decreasing below lo
    assert f(hi + far * hi) <= f(hi + near * hi)  # non-increasing above hi


def test_plateau_edges():
    assert plateau_length_reward(np.array([np.nan]), 0.2, 0.6)[0] == 0.0
    assert plateau_length_reward(0.5, 0.2, 0.6).shape == ()
    np.testing.assert_allclose(plateau_length_reward([0.2 * 0.75], 0.2, 0.6), [math.exp(-0.5)])
    for lo, hi, s in [(0, 1, 0.25), (0.6, 0.2, 0.25), (0.2, 0.6, 0)]:
        with pytest.raises(ValueError):
            plateau_length_reward([0.5], lo, hi, s)


@FEW
@given(st.integers(2, 6), st.integers(0, 5), st.data(), st.booleans())
def test_group_advantages_matches_numpy(g, n_groups, data, scale):
    r = np.array(data.draw(st.lists(st.one_of(st.sampled_from([0.0, 1.0]), finite),
                                    min_size=g * n_groups, max_size=g * n_groups)))
    got = group_advantages(r, g, scale=scale)
    np.testing.assert_allclose(got, naive.group_advantages(r, g, scale=scale), rtol=1e-9, atol=1e-9)


def test_group_advantages_trl_formula_and_errors():
    r = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(r, 4)
    std = np.std([1, 0, 0, 0], ddof=1)  # torch.std default (unbiased), as TRL
    np.testing.assert_allclose(adv[:4], (r[:4] - 0.25) / (std + 1e-4))
    np.testing.assert_array_equal(adv[4:], 0.0)  # identical rewards: zero advantage
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(r[:7], 4)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(r, 1)
    with pytest.raises(ValueError, match="NaN"):
        group_advantages([np.nan, 1.0], 2)


# ---------------------------------------------------------------- build_examples

@st.composite
def example_case(draw):
    user, ts, item, n_items = draw(sorted_events(max_n=30, max_items=14))
    split = np.array(draw(ints(len(user), -1, 2)), dtype=np.int8)
    kw = dict(
        history_len=draw(st.integers(1, 5)),
        n_candidates=draw(st.integers(2, min(6, n_items))),
        tie_rule=draw(st.sampled_from(["strict", "order"])),
        min_history=draw(st.integers(0, 2)),
        seed=draw(st.integers(-(2**40), 2**40)),
    )
    if draw(st.booleans()):
        w = np.array(draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=n_items, max_size=n_items)))
        if w.sum() > 0:
            kw.update(negatives="popularity", item_weights=w)
    if draw(st.booleans()):  # items grouped into titles (episodes of a series share one)
        kw["title_of_item"] = np.array(draw(ints(n_items, 0, max(0, n_items // 2))), dtype=np.int64)
    return user, ts, item, n_items, split, kw


def _check_examples(ex, user, ts, item, n_items, split, kw):
    expect, n_targets, n_short = naive.example_structure(
        user, ts, item, split, history_len=kw["history_len"], tie_rule=kw["tie_rule"],
        min_history=kw["min_history"], title_of_item=kw.get("title_of_item"))
    weights = kw.get("item_weights")
    kept = [e for e in expect if naive.enough_negatives(e["excluded"], n_items, kw["n_candidates"], weights)]
    assert ex.n_targets == n_targets
    assert ex.n_skipped_short_history == n_short
    assert ex.n_skipped_no_negatives == len(expect) - len(kept)
    for key in ("target_row", "hist_start", "hist_end", "discovery", "item_discovery", "split", "user"):
        np.testing.assert_array_equal(getattr(ex, key), [e[key] for e in kept], err_msg=key)
    assert ex.candidates.shape == (len(kept), kw["n_candidates"]) and ex.candidates.dtype == np.int32
    assert ex.label.dtype == np.int8 and ex.discovery.dtype == np.bool_
    for row, e, lab in zip(ex.candidates, kept, ex.label):
        target = item[e["target_row"]]
        assert row[lab] == target
        assert len(set(row.tolist())) == len(row)  # distinct
        negs = [x for x in row.tolist() if x != target]
        assert len(negs) == kw["n_candidates"] - 1
        assert all(0 <= x < n_items and x not in e["excluded"] for x in negs)
        if weights is not None:
            assert all(weights[x] > 0 for x in negs)


@settings(max_examples=80, deadline=None)
@given(example_case())
def test_build_examples_matches_naive(case):
    user, ts, item, n_items, split, kw = case
    ex = build_examples(user, ts, item, n_items, split, **kw)
    _check_examples(ex, user, ts, item, n_items, split, kw)
    again = build_examples(user, ts, item, n_items, split, **kw)  # same seed, same arrays
    for a, b in zip(ex, again):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=40, deadline=None)
@given(example_case(), st.data())
def test_build_examples_independent_of_other_users(case, data):
    user, ts, item, n_items, split, kw = case
    if len(user) == 0:
        return
    drop = data.draw(st.sampled_from(sorted(set(user.tolist()))))
    keep = user != drop
    full = build_examples(user, ts, item, n_items, split, **kw)
    part = build_examples(user[keep], ts[keep], item[keep], n_items, split[keep], **kw)
    new_row = np.cumsum(keep) - 1  # old row -> row after dropping
    sel = full.user != drop
    np.testing.assert_array_equal(new_row[full.target_row[sel]], part.target_row)
    np.testing.assert_array_equal(new_row[full.hist_start[sel]], part.hist_start)
    np.testing.assert_array_equal(full.candidates[sel], part.candidates)
    np.testing.assert_array_equal(full.label[sel], part.label)


@settings(max_examples=60, deadline=None)
@given(example_case(), st.integers(2, 9))
def test_build_examples_same_for_any_number_of_parallel_chunks(case, n_chunks):
    """Chunks of whole users are built in parallel (two passes: count, then write at the chunk's
    offset); the result, counters included, equals one chunk's."""
    user, ts, item, n_items, split, kw = case
    one = build_examples(user, ts, item, n_items, split, n_chunks=1, **kw)
    many = build_examples(user, ts, item, n_items, split, n_chunks=n_chunks, **kw)
    for name, a, b in zip(one._fields, one, many):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_apply_order_equals_fancy_indexing():
    rng = np.random.default_rng(0)
    n = 1000
    perm = rng.permutation(n)
    cols = [rng.integers(0, 9, n).astype(np.int8), rng.integers(0, 2**40, n), rng.random(n).astype(np.float32),
            rng.random(n) < 0.5, np.arange(n).astype(np.uint16), np.array([f"s{i}" for i in range(n)]),
            rng.random(n)[::1]]
    out = apply_order(perm, *cols)
    for c, o in zip(cols, out):
        assert o.dtype == c.dtype
        np.testing.assert_array_equal(o, c[perm])
    assert apply_order(np.zeros(0, np.int64), np.zeros(0))[0].shape == (0,)
    with pytest.raises(ValueError, match="outside"):
        apply_order(np.array([0, 2]), np.zeros(2))
    with pytest.raises(ValueError, match="column 1 has length 3"):
        apply_order(np.array([1, 0]), np.zeros(2), np.zeros(3))


def test_build_examples_tie_rules():
    # One user: items 3, 4 at ts 0; items 5, 6 at ts 1 (tied); target = row 3 (item 6).
    user = np.zeros(4, np.int64)
    ts = np.array([0, 0, 1, 1])
    item = np.array([3, 4, 5, 6], np.int32)
    split = np.array([-1, -1, -1, 2], np.int8)
    strict = build_examples(user, ts, item, 12, split, n_candidates=8, seed=3)
    assert (strict.hist_start[0], strict.hist_end[0]) == (0, 2)
    assert not ({3, 4, 5} & set(strict.candidates[0].tolist()))
    order = build_examples(user, ts, item, 12, split, n_candidates=8, tie_rule="order", seed=3)
    assert (order.hist_start[0], order.hist_end[0]) == (0, 3)
    # Target row 2 (item 5): "strict" also excludes the tied item 6, "order" does not.
    split2 = np.array([-1, -1, 2, -1], np.int8)
    s5 = build_examples(user, ts, item, 8, split2, n_candidates=5, seed=1)
    assert set(s5.candidates[0].tolist()) == {0, 1, 2, 5, 7}
    s6 = build_examples(user, ts, item, 8, split2, n_candidates=6, seed=1)
    assert s6.n_skipped_no_negatives == 1 and s6.candidates.shape == (0, 6)
    o6 = build_examples(user, ts, item, 8, split2, n_candidates=6, seed=1, tie_rule="order")
    assert set(o6.candidates[0].tolist()) == {0, 1, 2, 5, 6, 7}
    assert o6.discovery.tolist() == [True]
    none = build_examples(user, ts, item, 12, split, n_candidates=8, history_len=1, min_history=3)
    assert none.n_skipped_short_history == 1 and len(none.label) == 0


def test_build_examples_discovery_is_per_title():
    # One user watches episode 0 of a series (items 0, 1, 2 share title 0), then a movie (item 3).
    user = np.zeros(4, np.int64)
    ts = np.arange(4)
    item = np.array([0, 3, 1, 4], np.int32)
    split = np.array([-1, -1, 2, 1], np.int8)  # targets: episode 1 (row 2), movie 4 (row 3)
    title = np.array([0, 0, 0, 3, 4, 5, 6, 7, 8, 9], np.int64)
    ex = build_examples(user, ts, item, 10, split, n_candidates=3, title_of_item=title)
    by_row = {int(r): (bool(d), bool(i)) for r, d, i in zip(ex.target_row, ex.discovery, ex.item_discovery)}
    assert by_row[2] == (False, True)  # the next episode of a show in progress: a new item, not a discovery
    assert by_row[3] == (True, True)
    plain = build_examples(user, ts, item, 10, split, n_candidates=3)  # each item its own title
    assert plain.discovery.tolist() == plain.item_discovery.tolist() == [True, True]
    with pytest.raises(ValueError, match="title_of_item"):
        build_examples(user, ts, item, 10, split, n_candidates=3, title_of_item=title[:5])


def test_build_examples_fallback_when_pool_nearly_exhausted():
    # The user saw 995 of 1000 items: rejection sampling runs out, the scan fills the rest.
    n_items = 1000
    item = np.arange(995, dtype=np.int32)
    user = np.zeros(995, np.int64)
    ts = np.arange(995)
    split = np.full(995, -1, np.int8)
    split[-1] = 2
    ex = build_examples(user, ts, item, n_items, split, n_candidates=6, history_len=5)
    assert sorted(set(ex.candidates[0].tolist()) - {994}) == [995, 996, 997, 998, 999]
    ex7 = build_examples(user, ts, item, n_items, split, n_candidates=7, history_len=5)
    assert ex7.n_skipped_no_negatives == 1


def test_build_examples_popularity_never_draws_zero_weight():
    rng = np.random.default_rng(0)
    n_items = 50
    user = np.repeat(np.arange(20), 5)
    ts = np.tile(np.arange(5), 20)
    item = rng.integers(0, 10, 100).astype(np.int32)  # users touch items 0..9 only
    w = np.zeros(n_items)
    w[10:20] = 1.0
    w[20] = 1000.0  # dominant item: shows up in nearly every example
    split = np.where(ts >= 3, 0, -1).astype(np.int8)
    ex = build_examples(user, ts, item, n_items, split, n_candidates=4, negatives="popularity", item_weights=w)
    negs = ex.candidates[ex.candidates != item[ex.target_row][:, None]]
    assert set(negs.tolist()) <= set(range(10, 21))
    assert (ex.candidates == 20).any(axis=1).mean() > 0.9


def test_build_examples_golden_values():
    # Fixed output: guards the PRNG against drift, with and without NUMBA_DISABLE_JIT.
    user = np.array([0, 0, 0, 1, 1], np.int64)
    ts = np.array([0, 1, 2, 0, 1])
    item = np.array([0, 1, 2, 3, 4], np.int32)
    split = np.array([-1, 0, 2, -1, 2], np.int8)
    ex = build_examples(user, ts, item, 20, split, n_candidates=5, seed=42)
    assert ex.candidates.tolist() == GOLDEN_CANDIDATES
    assert ex.label.tolist() == GOLDEN_LABELS
    w = np.arange(20, dtype=np.float64)
    pop = build_examples(user, ts, item, 20, split, n_candidates=5, seed=42, negatives="popularity", item_weights=w)
    assert pop.candidates.tolist() == GOLDEN_POP


GOLDEN_CANDIDATES = [[1, 2, 6, 16, 5], [4, 2, 18, 12, 9], [0, 18, 7, 4, 10]]
GOLDEN_LABELS = [0, 1, 3]
GOLDEN_POP = [[1, 18, 7, 10, 16], [13, 12, 19, 16, 2], [9, 15, 4, 7, 14]]


def test_build_examples_errors():
    u, t, i, s = [0, 0], [0, 1], [0, 1], [-1, 2]
    with pytest.raises(ValueError, match="n_candidates"):
        build_examples(u, t, i, 5, s, n_candidates=1)
    with pytest.raises(ValueError, match="n_candidates=6 exceeds"):
        build_examples(u, t, i, 5, s, n_candidates=6)
    with pytest.raises(ValueError, match="item codes"):
        build_examples(u, t, [0, 12], 12, s)
    with pytest.raises(ValueError, match="history_len"):
        build_examples(u, t, i, 12, s, history_len=0)
    with pytest.raises(ValueError, match="sort with stable_order first"):
        build_examples(u, [1, 0], i, 12, s)
    with pytest.raises(ValueError, match="item_weights"):
        build_examples(u, t, i, 12, s, negatives="popularity")
    with pytest.raises(ValueError, match="item_weights"):
        build_examples(u, t, i, 12, s, negatives="popularity", item_weights=[1.0, -1] + [1.0] * 10)
    with pytest.raises(ValueError, match="item_weights has length"):
        build_examples(u, t, i, 12, s, negatives="popularity", item_weights=[1.0])
    with pytest.raises(ValueError, match="tie_rule"):
        build_examples(u, t, i, 12, s, tie_rule="nope")
    with pytest.raises(ValueError, match="split"):
        build_examples(u, t, i, 12, [3, 0])


def test_build_examples_empty_and_arrow():
    ex = build_examples([], [], [], 12, [])
    assert ex.candidates.shape == (0, 10) and ex.n_targets == 0
    ex = build_examples(pa.array([0, 0, 0]), pa.array([0, 1, 2]), pa.array([0, 1, 2], pa.int32()), 12,
                        pa.array([-1, -1, 2], pa.int8()), n_candidates=3)
    assert ex.target_row.tolist() == [2] and ex.hist_end.tolist() == [2] and ex.discovery.tolist() == [True]


def test_public_api():
    assert set(kernels.__all__) >= {"stable_order", "sessionize", "aggregate_series", "build_examples",
                                    "split_leave_last_out", "split_by_time", "plateau_length_reward",
                                    "group_advantages"}


_FROM_CACHE = """
import sys
import numpy as np
from minivz.kernels import apply_order, build_examples, split_leave_last_out, stable_order
rng = np.random.default_rng(0)
n = 300_000  # > 65,536 rows per chunk, users with more rows than the insertion-sort run
user, ts, item = rng.integers(0, 900, n), rng.integers(0, 10**9, n), rng.integers(0, 1700, n)
if sys.argv[1] == "read-only":  # as Arrow hands columns over: other types, other specializations
    item = item.astype(np.int32)
    for a in (user, ts, item):
        a.flags.writeable = False
perm = stable_order(user, ts, item)
assert np.array_equal(perm, np.lexsort((item, ts, user)))
user, ts, item = apply_order(perm, user, ts, item)
for a in (user, ts, item):
    a.flags.writeable = sys.argv[1] != "read-only"
ex = build_examples(user, ts, item, 1700, split_leave_last_out(user, None), history_len=20)
print(len(ex.target_row), int(ex.candidates.sum()))
"""


@pytest.mark.slow
def test_parallel_kernels_run_from_a_cold_and_a_warm_cache(tmp_path):
    """The parallel kernels compiled into one cache by successive processes, each adding a
    specialization or loading one, give the same answers. (A cached @njit function calling a
    parallel one segfaulted when its second specialization was loaded from the cache,
    numba/numba#8578: `minivz data prepare` crashed after a test run had compiled another.)"""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    env.pop("NUMBA_DISABLE_JIT", None)
    runs = [subprocess.run([sys.executable, "-c", _FROM_CACHE, mode], env=env, capture_output=True, text=True,
                           timeout=600) for mode in ("writable", "read-only", "read-only", "writable")]
    for r in runs:
        assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert len({r.stdout for r in runs}) == 1
    assert any((tmp_path / "numba-cache").rglob("*.nbc"))


_LAYER = """
import numpy as np, numba
from minivz import kernels
u = np.repeat(np.arange(50), 4); t = np.arange(200)
kernels.stable_order(u, t)
from minivz.envinfo import collect
print(collect()["numba_threading_layer"], numba.threading_layer())
"""


def test_parallel_kernels_start_no_second_openmp_runtime():
    """torch runs on its bundled libgomp; numba's default "omp" layer would start the system one in
    the same process, whose idle threads (spinning under OMP_WAIT_POLICY=active) slowed every later
    torch op 2.3x. minivz.kernels picks numba's workqueue layer unless NUMBA_THREADING_LAYER is set;
    `minivz env` reports the layer the kernels run on."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "NUMBA_DISABLE_JIT")}
    for chosen, layer in ((None, "workqueue"), ("omp", "omp")):
        got = subprocess.run([sys.executable, "-c", _LAYER], capture_output=True, text=True, timeout=600,
                             env=env if chosen is None else {**env, "NUMBA_THREADING_LAYER": chosen})
        assert got.returncode == 0, got.stderr[-2000:]
        assert got.stdout.split()[-2:] == [layer, layer]
