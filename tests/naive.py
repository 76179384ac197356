"""Slow, obvious references for minivz.kernels (the stumpy tests/naive.py pattern).

Plain Python loops and NumPy; no Numba. Each mirrors one public kernel.
"""

from __future__ import annotations

import math

import numpy as np


def stable_order(user, ts, tiebreak=None):
    if tiebreak is None:
        return np.lexsort((ts, user))
    return np.lexsort((tiebreak, ts, user))


def sessionize(user, ts, gap):
    out, s = [], -1
    for i in range(len(user)):
        if i == 0 or user[i] != user[i - 1] or ts[i] - ts[i - 1] > gap:
            s += 1
        out.append(s)
    return np.array(out, dtype=np.int64)


def aggregate_series(session, series, season, episode, duration, ts):
    """List of dicts, one per run, plus run_of_event."""
    runs, run_of_event = [], []
    for i in range(len(session)):
        new = (i == 0 or session[i] != session[i - 1] or series[i] == -1 or series[i] != series[i - 1])
        if new:
            runs.append(dict(rows=[]))
        runs[-1]["rows"].append(i)
        run_of_event.append(len(runs) - 1)
    out = []
    for run in runs:
        rows = run["rows"]
        durs = [duration[i] for i in rows if not math.isnan(duration[i])]
        out.append(dict(
            start=rows[0], length=len(rows), series=series[rows[0]],
            first_season=season[rows[0]], first_episode=episode[rows[0]],
            last_season=season[rows[-1]], last_episode=episode[rows[-1]],
            total_duration=sum(durs) if durs else float("nan"),
            first_ts=ts[rows[0]], last_ts=ts[rows[-1]],
        ))
    return np.array(run_of_event, dtype=np.int64), out


def split_leave_last_out(user, eligible):
    out = np.full(len(user), -1, dtype=np.int8)
    for u in set(user.tolist()):
        rows = [i for i in range(len(user)) if user[i] == u and eligible[i]]
        for k, i in enumerate(reversed(rows)):
            out[i] = 2 if k == 0 else 1 if k == 1 else 0
    return out


def split_by_time(ts, valid_start, test_start, eligible):
    out = []
    for t, e in zip(ts, eligible):
        out.append(-1 if not e else 0 if t < valid_start else 1 if t < test_start else 2)
    return np.array(out, dtype=np.int8)


def plateau_length_reward(ratio, lo, hi, softness=0.25):
    out = []
    for r in np.asarray(ratio, dtype=np.float64).ravel():
        if math.isnan(r):
            out.append(0.0)
        elif r < lo:
            out.append(math.exp(-0.5 * ((lo - r) / (softness * lo)) ** 2))
        elif r > hi:
            out.append(math.exp(-0.5 * ((r - hi) / (softness * hi)) ** 2))
        else:
            out.append(1.0)
    return np.array(out).reshape(np.shape(ratio))


def group_advantages(rewards, group_size, eps=1e-4, scale=True):
    r = np.asarray(rewards, dtype=np.float64).reshape(-1, group_size)
    adv = r - r.mean(axis=1, keepdims=True)
    if scale:
        adv = adv / (r.std(axis=1, ddof=1, keepdims=True) + eps)
    return adv.ravel()


def example_structure(user, ts, item, split, *, history_len, tie_rule, min_history, title_of_item=None):
    """Per-target expectations of build_examples, without the random part.

    Returns (examples, n_targets, n_short) where examples is a list of dicts with target_row,
    hist_start, hist_end, discovery (title never seen before), item_discovery (item never seen
    before), split, user and `excluded`, the set of
    items no negative may be (everything the user touched up to the target, ties included
    for "strict"). Whether an example is kept also depends on n_candidates (see
    `enough_negatives`).
    """
    n = len(user)

    def title(x):
        return int(x) if title_of_item is None else int(title_of_item[int(x)])

    examples, n_targets, n_short = [], 0, 0
    for t in range(n):
        if split[t] < 0:
            continue
        n_targets += 1
        user_rows = [i for i in range(n) if user[i] == user[t]]
        us = user_rows[0]
        tied = [i for i in user_rows if ts[i] == ts[t]]
        g_start, g_end = tied[0], tied[-1] + 1
        if tie_rule == "strict":
            hs, he = max(us, g_start - history_len), g_start
            excluded = {int(item[i]) for i in range(us, g_end)}
        else:
            hs, he = max(us, t - history_len), t
            excluded = {int(item[i]) for i in range(us, t + 1)}
        if he - hs < min_history:
            n_short += 1
            continue
        examples.append(dict(
            target_row=t, hist_start=hs, hist_end=he, split=int(split[t]), user=int(user[t]),
            item_discovery=int(item[t]) not in {int(item[i]) for i in range(us, he)},
            discovery=title(item[t]) not in {title(item[i]) for i in range(us, he)},
            excluded=excluded,
        ))
    return examples, n_targets, n_short


def enough_negatives(excluded, n_items, n_candidates, item_weights=None):
    pool = range(n_items) if item_weights is None else [x for x in range(n_items) if item_weights[x] > 0]
    return len([x for x in pool if x not in excluded]) >= n_candidates - 1
