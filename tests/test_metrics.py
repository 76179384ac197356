"""Ranking metrics: hand-computed cases, ties, invalid answers, bootstrap CIs, random floor."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivz.metrics import (bootstrap_ci, random_floor, rank_metrics, relative_change, relative_change_ci,
                            summarize)


def test_hand_computed_ranks():
    # target ranks 1, 3, 7, 12 (C = 12)
    scores = np.array([
        [9, 1, 2, 3, 4, 5, 6, 7, 8, 0, -1, -2],
        [1, 5, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0],   # label 0: 9 and 5 above -> rank 3
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],  # label 5: 6 above -> rank 7
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],  # label 0: rank 12
    ], dtype=float)
    labels = np.array([0, 0, 5, 0])
    per = rank_metrics(scores, labels)
    np.testing.assert_allclose(per["rank"], [1, 3, 7, 12])
    np.testing.assert_allclose(per["recall@1"], [1, 0, 0, 0])
    np.testing.assert_allclose(per["recall@5"], [1, 1, 0, 0])
    np.testing.assert_allclose(per["ndcg@10"], [1, 1 / math.log2(4), 1 / math.log2(8), 0])
    np.testing.assert_allclose(per["mrr"], [1, 1 / 3, 1 / 7, 1 / 12])


def test_ties_are_expected_value_of_random_tie_break():
    # target tied with 1 other at the top: rank 1 or 2 with prob 1/2 each
    scores = np.array([[3.0, 3.0, 1.0, 0.0]])
    per = rank_metrics(scores, np.array([1]))
    assert per["recall@1"][0] == pytest.approx(0.5)
    assert per["recall@5"][0] == pytest.approx(1.0)
    assert per["mrr"][0] == pytest.approx((1 + 1 / 2) / 2)
    assert per["ndcg@10"][0] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert per["rank"][0] == pytest.approx(1.5)
    # one strictly above, three tied (target included): rank uniform on 2..4
    per = rank_metrics(np.array([[5.0, 2, 2, 2, 0]]), np.array([3]))
    assert per["recall@1"][0] == 0
    assert per["mrr"][0] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)


def test_constant_scorer_hits_random_floor_exactly():
    c = 10
    scores = np.zeros((7, c))
    labels = np.arange(7) % c
    per = rank_metrics(scores, labels)
    floor = random_floor(c)
    for k in ("recall@1", "recall@5", "ndcg@10", "mrr"):
        np.testing.assert_allclose(per[k], floor[k])
    assert floor["recall@1"] == pytest.approx(0.1)
    assert floor["recall@5"] == pytest.approx(0.5)
    assert floor["mrr"] == pytest.approx(sum(1 / r for r in range(1, 11)) / 10)
    assert floor["ndcg@10"] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, 11)) / 10)
    assert random_floor(3)["recall@5"] == 1.0


def test_invalid_answers_are_misses_and_nan_is_lowest():
    scores = np.array([[9.0, 0, 0], [9.0, 0, 0], [np.nan, 1.0, 0]])
    per = rank_metrics(scores, np.array([0, 0, 0]), valid=np.array([True, False, True]))
    np.testing.assert_allclose(per["recall@1"], [1, 0, 0])
    np.testing.assert_allclose(per["mrr"], [1, 0, 1 / 3])
    np.testing.assert_allclose(per["valid"], [1, 0, 1])


def test_input_checks():
    with pytest.raises(ValueError, match="labels must index"):
        rank_metrics(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="scores must be"):
        rank_metrics(np.zeros(3), np.array([0]))
    with pytest.raises(ValueError, match="valid"):
        rank_metrics(np.zeros((2, 3)), np.array([0, 1]), valid=np.array([True]))


def test_summarize_subsets_ci_and_alias():
    rng = np.random.default_rng(0)
    e, c = 400, 10
    labels = rng.integers(0, c, e)
    scores = rng.normal(size=(e, c))
    scores[np.arange(e), labels] += 1.0  # informative scorer
    valid = rng.random(e) > 0.05
    disc = rng.random(e) > 0.5
    rep = summarize(scores, labels, valid, disc, n_boot=300, seed=1, hr_at_1=True)
    assert rep["all"]["n"] == e and rep["discovery"]["n"] == disc.sum()
    per = rank_metrics(scores, labels, valid)
    assert rep["discovery"]["recall@1"] == pytest.approx(per["recall@1"][disc].mean())
    assert rep["all"]["valid_rate"] == pytest.approx(valid.mean())
    for sub in ("all", "discovery"):
        for k in ("recall@1", "recall@5", "ndcg@10", "mrr", "valid_rate"):
            lo, hi = rep[sub][f"{k}_ci"]
            assert lo <= rep[sub][k] <= hi
        assert rep[sub]["hr@1"] == rep[sub]["recall@1"]
        # over valid answers only: hits / valid answers (LLaRA's way), never below the all-examples HR@1
        assert rep[sub]["hr@1_valid"] == pytest.approx(rep[sub]["recall@1"] / rep[sub]["valid_rate"])
    assert rep["random_floor"]["recall@1"] == pytest.approx(0.1)
    assert rep["all"]["recall@1"] > rep["random_floor"]["recall@1"]
    # reproducible
    assert summarize(scores, labels, valid, disc, n_boot=300, seed=1, hr_at_1=True) == rep


def test_summarize_empty_discovery_is_json_null():
    import json

    rep = summarize(np.zeros((3, 4)), np.array([0, 1, 2]), None, np.zeros(3, bool), n_boot=10)
    assert rep["discovery"]["n"] == 0 and rep["discovery"]["recall@1"] is None
    json.dumps(rep)  # no NaN, no numpy types
    assert "discovery" not in summarize(np.zeros((3, 4)), np.array([0, 1, 2]), n_boot=10)


def test_bootstrap_ci_chunks_consistent():
    v = np.random.default_rng(0).random(1000)
    a = bootstrap_ci(v, n_boot=200, seed=3)
    b = bootstrap_ci(v, n_boot=200, seed=3, axis_chunk=1000)  # one resample per chunk
    assert a == pytest.approx(b)
    assert a[0] < v.mean() < a[1]


def test_relative_change():
    assert relative_change(0.225, 0.2) == pytest.approx(0.125)
    assert math.isnan(relative_change(0.1, 0.0))
    np.testing.assert_allclose(relative_change(np.array([2.0, 3.0]), np.array([1.0, 2.0])), [1.0, 0.5])
    a = np.r_[np.ones(60), np.zeros(40)]
    b = np.r_[np.ones(40), np.zeros(60)]
    r = relative_change_ci(a, b, n_boot=300)
    assert r["value"] == pytest.approx(0.5)
    assert r["ci"][0] <= 0.5 <= r["ci"][1]


@settings(max_examples=40, deadline=None)
@given(c=st.integers(2, 20), seed=st.integers(0, 10_000))
def test_random_scorer_near_floor(c, seed):
    rng = np.random.default_rng(seed)
    e = 4000
    per = rank_metrics(rng.random((e, c)), rng.integers(0, c, e))
    floor = random_floor(c)
    for k in ("recall@1", "recall@5", "ndcg@10", "mrr"):
        # 5 standard errors of a mean of values in [0, 1]
        assert abs(per[k].mean() - floor[k]) < 5 * 0.5 / math.sqrt(e)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_tie_handling_matches_enumeration(data):
    """Reference: average the metric over every tie-broken ordering of the tied block."""
    c = data.draw(st.integers(1, 12))
    row = np.array(data.draw(st.lists(st.integers(0, 3), min_size=c, max_size=c)), dtype=float)
    label = data.draw(st.integers(0, c - 1))
    per = rank_metrics(row[None], np.array([label]))
    g = int((row > row[label]).sum())
    t = int((row == row[label]).sum())
    ranks = range(g + 1, g + t + 1)
    assert per["recall@1"][0] == pytest.approx(np.mean([r <= 1 for r in ranks]))
    assert per["recall@5"][0] == pytest.approx(np.mean([r <= 5 for r in ranks]))
    assert per["mrr"][0] == pytest.approx(np.mean([1 / r for r in ranks]))
    assert per["ndcg@10"][0] == pytest.approx(np.mean([1 / math.log2(r + 1) if r <= 10 else 0 for r in ranks]))
    # invariant to the order candidates are listed in
    perm = np.array(data.draw(st.permutations(list(range(c)))))
    per2 = rank_metrics(row[perm][None], np.array([int(np.where(perm == label)[0][0])]))
    assert per2["recall@1"][0] == pytest.approx(per["recall@1"][0])
