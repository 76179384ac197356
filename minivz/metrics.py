"""Ranking metrics for next-item prediction over a fixed candidate set, with bootstrap CIs.

    per = rank_metrics(scores, labels, valid)      # scores (E, C) float, labels (E,) int, valid (E,) bool
    per["recall@1"]                                 # (E,) float per example, in [0, 1]
    report = summarize(scores, labels, valid, discovery, n_boot=1000, seed=0)
    report["discovery"]["recall@1"], report["discovery"]["recall@1_ci"]   # point, [lo, hi]

One relevant item per example (``labels[e]`` is its column in ``scores``), so NDCG@10 is
``1/log2(rank+1)`` if rank <= 10 else 0, and MRR is ``1/rank``.

Ties. A score tied with the target's is neither a win nor a loss: every metric is its *expected
value under uniformly random tie-breaking*. If ``g`` candidates score strictly higher than the
target and ``t`` (target included) score equal, the target's rank is uniform on ``g+1 .. g+t`` and
``metric = mean(f(r) for r in g+1..g+t)``. A constant scorer therefore scores exactly the random
floor (Recall@1 = 1/C), and no scorer gains from the order in which candidates were listed (an LLM
answering "A" always would otherwise look as good as its position bias). NaN scores count as -inf.

Invalid answers (``valid[e] == False``: the reasoner's output named no candidate) count as misses:
0 for every metric, whatever the scores say.
"""

from __future__ import annotations

import numpy as np

METRICS = ("recall@1", "recall@5", "ndcg@10", "mrr")


def _gain_table(num_candidates: int) -> dict[str, np.ndarray]:
    """``f(r)`` for ranks ``r = 1..C`` per metric, as cumulative sums with a leading 0, shape (C+1,),
    so ``sum(f(r) for r in a+1..b) = cum[b] - cum[a]``."""
    r = np.arange(1, num_candidates + 1, dtype=np.float64)
    f = {"recall@1": (r <= 1).astype(np.float64),
         "recall@5": (r <= 5).astype(np.float64),
         "ndcg@10": np.where(r <= 10, 1.0 / np.log2(r + 1.0), 0.0),
         "mrr": 1.0 / r}
    return {k: np.concatenate([[0.0], np.cumsum(v)]) for k, v in f.items()}


def random_floor(num_candidates: int) -> dict[str, float]:
    """Expected metrics of a uniformly random ranking of ``C`` candidates (R@1 = 1/C, R@5 = min(5,C)/C,
    NDCG@10 = mean over r<=10 of 1/log2(r+1) · 1/C summed, MRR = H_C / C)."""
    cum = _gain_table(num_candidates)
    return {k: float(v[-1] / num_candidates) for k, v in cum.items()}


def _check(scores, labels, valid):
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(f"scores must be (examples, candidates), got shape {scores.shape}")
    e, c = scores.shape
    labels = np.asarray(labels)
    if labels.shape != (e,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be ({e},) integers, got {labels.shape} {labels.dtype}")
    if e and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must index the {c} candidates (0..{c - 1}); got {labels.min()}..{labels.max()}")
    valid = np.ones(e, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != (e,):
        raise ValueError(f"valid must be ({e},) booleans, got shape {valid.shape}")
    return np.where(np.isnan(scores), -np.inf, scores), labels.astype(np.int64), valid


def rank_metrics(scores, labels, valid=None) -> dict[str, np.ndarray]:
    """Per-example metrics, each an (E,) float array; plus ``"valid"`` (E,) float 0/1 and
    ``"rank"`` (E,) the expected 1-based rank (ties split, invalid → C)."""
    scores, labels, valid = _check(scores, labels, valid)
    e, c = scores.shape
    target = scores[np.arange(e), labels][:, None]            # (E, 1)
    above = (scores > target).sum(axis=1)                      # g: strictly better candidates
    tied = (scores == target).sum(axis=1)                      # t >= 1: the target itself and its ties
    out = {}
    for k, cum in _gain_table(c).items():
        out[k] = np.where(valid, (cum[above + tied] - cum[above]) / tied, 0.0)
    out["rank"] = np.where(valid, above + (tied + 1) / 2.0, float(c))
    out["valid"] = valid.astype(np.float64)
    return out


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                 axis_chunk: int = 5_000_000) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (E,), resampling examples with replacement.
    Works in chunks of resamples so memory stays ~``axis_chunk`` floats for any E."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    if n == 0 or n_boot < 1:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    per_chunk = max(1, axis_chunk // n)
    means = np.empty(n_boot)
    for s in range(0, n_boot, per_chunk):
        b = min(per_chunk, n_boot - s)
        means[s:s + b] = values[rng.integers(0, n, size=(b, n))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def _subset_summary(per: dict[str, np.ndarray], mask: np.ndarray, n_boot: int, seed: int,
                    hr_at_1: bool) -> dict:
    n = int(mask.sum())
    out: dict = {"n": n}
    names = METRICS + ("valid",)
    for i, k in enumerate(names):
        key = "valid_rate" if k == "valid" else k
        if n == 0:  # JSON-friendly: null, not NaN
            out[key], out[f"{key}_ci"] = None, [None, None]
            continue
        v = per[k][mask]
        # Same seed per metric: the CIs of all metrics come from the same resamples of examples.
        lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=seed)
        out[key], out[f"{key}_ci"] = float(v.mean()), [lo, hi]
    if hr_at_1:
        out["hr@1"], out["hr@1_ci"] = out["recall@1"], out["recall@1_ci"]
        # LLaRA's own HR@1 divides by the VALID answers only (an invalid answer leaves the count)
        hits = per["recall@1"][mask & (per["valid"] > 0)]
        out["hr@1_valid"] = float(hits.mean()) if hits.size else None
        out["hr@1_valid_ci"] = list(bootstrap_ci(hits, n_boot=n_boot, seed=seed)) if hits.size else [None, None]
    return out


def summarize(scores, labels, valid=None, discovery=None, *, n_boot: int = 1000, seed: int = 0,
              hr_at_1: bool = False) -> dict:
    """Report for the ``"all"`` and ``"discovery"`` subsets (``discovery`` (E,) bool: the target is
    new to the user; ``None`` → only "all"). Each subset holds ``n``, ``recall@1``, ``recall@5``,
    ``ndcg@10``, ``mrr``, ``valid_rate`` and ``<metric>_ci = [lo, hi]`` (95% percentile bootstrap
    over examples). ``random_floor`` gives a random ranking's expected values for C candidates.
    ``hr_at_1=True`` adds ``hr@1`` (= Recall@1 over all examples, invalid answers as misses) and
    ``hr@1_valid`` (over the valid answers only: how LLaRA computes the HR@1 it reports).
    """
    per = rank_metrics(scores, labels, valid)
    e, c = np.shape(scores)
    report = {"num_candidates": int(c), "tie_rule": "expected value under random tie-breaking",
              "invalid_rule": "invalid answers count as misses",
              "all": _subset_summary(per, np.ones(e, dtype=bool), n_boot, seed, hr_at_1)}
    if discovery is not None:
        discovery = np.asarray(discovery, dtype=bool)
        if discovery.shape != (e,):
            raise ValueError(f"discovery must be ({e},) booleans, got shape {discovery.shape}")
        report["discovery"] = _subset_summary(per, discovery, n_boot, seed, hr_at_1)
    floor = random_floor(c)
    if hr_at_1:
        floor["hr@1"] = floor["recall@1"]
    report["random_floor"] = floor
    return report


def relative_change(value, baseline):
    """``value / baseline - 1`` (the paper's "+12.5% over template"); NaN where baseline is 0.
    Works on scalars and arrays."""
    value, baseline = np.asarray(value, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(baseline == 0, np.nan, value / np.where(baseline == 0, 1.0, baseline) - 1.0)
    return float(out) if out.ndim == 0 else out


def relative_change_ci(per_example, per_example_baseline, *, n_boot: int = 1000, seed: int = 0,
                       alpha: float = 0.05) -> dict:
    """Relative change of the mean of a metric between two systems scored on the *same* examples,
    with a paired bootstrap CI (the same resampled examples for both), e.g. discovery Recall@1 of
    the rewrite verbalizer vs template. Returns ``{"value", "ci": [lo, hi]}``."""
    a = np.asarray(per_example, dtype=np.float64)
    b = np.asarray(per_example_baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two (E,) arrays over the same examples, got {a.shape} and {b.shape}")
    n = a.size
    if n == 0:
        return {"value": None, "ci": [None, None]}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n)) if n_boot * n <= 20_000_000 else None
    if idx is None:  # huge E: loop to bound memory
        ra = np.empty(n_boot)
        rb = np.empty(n_boot)
        for i in range(n_boot):
            j = rng.integers(0, n, size=n)
            ra[i], rb[i] = a[j].mean(), b[j].mean()
    else:
        ra, rb = a[idx].mean(axis=1), b[idx].mean(axis=1)
    rel = relative_change(ra, rb)
    rel = rel[np.isfinite(rel)]
    lo, hi = np.quantile(rel, [alpha / 2, 1 - alpha / 2]) if rel.size else (np.nan, np.nan)
    val = relative_change(a.mean(), b.mean())
    nan2none = lambda x: None if not np.isfinite(x) else float(x)  # noqa: E731
    return {"value": nan2none(val), "ci": [nan2none(lo), nan2none(hi)]}


def paired_difference_ci(per_example, per_example_baseline, *, n_boot: int = 1000, seed: int = 0,
                         alpha: float = 0.05) -> dict:
    """Difference of means (system - baseline) over the *same* examples with a paired bootstrap CI,
    e.g. +0.042 [+0.014, +0.070] Recall@1 of a rule over the template. ``{"value", "ci": [lo, hi]}``."""
    a = np.asarray(per_example, dtype=np.float64)
    b = np.asarray(per_example_baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two (E,) arrays over the same examples, got {a.shape} and {b.shape}")
    if a.size == 0:
        return {"value": None, "ci": [None, None]}
    lo, hi = bootstrap_ci(a - b, n_boot=n_boot, seed=seed, alpha=alpha)
    return {"value": float((a - b).mean()), "ci": [lo, hi]}
