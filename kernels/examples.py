"""Next-item examples: history window, candidate list with sampled negatives, discovery flag.

    perm = stable_order(user, ts, item)
    user, ts, item = user[perm], ts[perm], item[perm]
    split = split_leave_last_out(user, None)
    ex = build_examples(user, ts, item, n_items, split, history_len=100, n_candidates=10)
    ex.candidates[e, ex.label[e]] == item[ex.target_row[e]]
    history of example e = item[ex.hist_start[e]:ex.hist_end[e]]  (oldest first)

Randomness. Each example draws from its own 32-bit xorshift stream seeded by a hash of
(seed, user code, target's position within the user's rows). So an example depends only
on its user's rows: it does not change when other users are added or removed, nor with
the order examples are processed in, and it is the same with and without JIT. All PRNG
arithmetic stays below 2**63 (32-bit values times constants below 2**31, then masked),
so it never overflows int64 when run as plain Python under NUMBA_DISABLE_JIT=1.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange

from ._convert import as_float, as_int, check_lengths
from .order import check_sorted


class Examples(NamedTuple):
    """One row per example (E rows) plus counters over all targets."""

    target_row: np.ndarray  # int64 (E,) row of the target event
    hist_start: np.ndarray  # int64 (E,) history = rows [hist_start, hist_end)
    hist_end: np.ndarray  # int64 (E,)
    candidates: np.ndarray  # int32 (E, n_candidates) target + negatives, shuffled
    label: np.ndarray  # int8 (E,) column of the target in candidates
    discovery: np.ndarray  # bool (E,) target's TITLE absent from the user's rows before hist_end
    split: np.ndarray  # int8 (E,) 0 train, 1 valid, 2 test
    user: np.ndarray  # int64 (E,)
    n_targets: int  # events with split >= 0
    n_skipped_short_history: int  # targets with fewer than min_history history rows
    n_skipped_no_negatives: int  # targets with fewer than n_candidates - 1 eligible items
    item_discovery: np.ndarray  # bool (E,) target ITEM absent from the user's rows before hist_end


@njit(cache=True)
def _mix32(h, v):
    # One round of a 32-bit integer hash; every product is < 2**32 * 2**31 < 2**63.
    h = h ^ (v & 0xFFFFFFFF)
    h = (h * 0x7FEB352D) & 0xFFFFFFFF
    h = h ^ (h >> 15)
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return h


@njit(cache=True)
def _seed_state(seed_lo, seed_hi, user, offset):
    h = 0x3C6EF372
    h = _mix32(h, seed_lo)
    h = _mix32(h, seed_hi)
    h = _mix32(h, user & 0xFFFFFFFF)
    h = _mix32(h, (user >> 32) & 0xFFFFFFFF)
    h = _mix32(h, offset & 0xFFFFFFFF)
    h = _mix32(h, (offset >> 32) & 0xFFFFFFFF)
    if h == 0:  # xorshift's one fixed point
        h = 0x6D2B79F5
    return h


@njit(cache=True)
def _xorshift32(x):
    x = x ^ ((x << 13) & 0xFFFFFFFF)
    x = x ^ (x >> 17)
    x = x ^ ((x << 5) & 0xFFFFFFFF)
    return x


@njit(cache=True)
def _below(x, n):
    # Value in [0, n) from a 32-bit state x (n < 2**31): Lemire's multiply-shift.
    return (x * n) >> 32


@njit(cache=True)
def _chunk(lo, hi, user, ts, item, split, n_items, history_len, n_neg, strict, popularity, cumw, positive,
           seed_lo, seed_hi, min_history, max_tries, title, n_titles, write, e,
           target_row, hist_start, hist_end, cands, label, discovery, out_split, out_user, item_discovery):
    """Examples of the users whose rows are [lo, hi) (whole users). ``write=False`` only counts
    (no draws): returns (examples, targets, skipped short, skipped no negatives); ``write=True``
    also writes the examples at rows e, e+1, ... of the outputs."""
    n_cand = n_neg + 1
    # Per-user O(1) membership: item x occurs in the current user's rows [us, L)
    # iff stamp[x] == us and first_pos[x] < L.
    stamp = np.full(n_items, -1, np.int64)
    first_pos = np.empty(n_items, np.int64)
    # the same for titles (an episode's title is its series): title x occurs in rows [us, L)
    # iff t_stamp[x] == us and t_first[x] < L
    t_stamp = np.full(n_titles, -1, np.int64)
    t_first = np.empty(n_titles, np.int64)
    chosen = np.full(n_items if write else 0, -1, np.int64)  # == target row once drawn for that example
    n_pool = n_items
    if popularity:
        n_pool = 0
        for x in range(n_items):
            if positive[x]:
                n_pool += 1
    total = cumw[cumw.shape[0] - 1] if popularity else 0.0

    e0 = e
    n_targets = 0
    n_short = 0
    n_noneg = 0
    us = lo
    while us < hi:
        ue = us + 1
        while ue < hi and user[ue] == user[us]:
            ue += 1
        for r in range(us, ue):
            x = item[r]
            if stamp[x] != us:
                stamp[x] = us
                first_pos[x] = r
            g = title[x]
            if t_stamp[g] != us:
                t_stamp[g] = us
                t_first[g] = r
        p = us  # rows [us, p) are counted in n_excluded
        n_excluded = 0  # distinct pool items among rows [us, p)
        g_start = us
        g_end = us
        for t in range(us, ue):
            if t >= g_end:  # a new tie group starts at t
                g_start = t
                g_end = t + 1
                while g_end < ue and ts[g_end] == ts[t]:
                    g_end += 1
            if split[t] < 0:
                continue
            n_targets += 1
            if strict:
                hs = max(us, g_start - history_len)
                he = g_start
                limit = g_end
            else:
                hs = max(us, t - history_len)
                he = t
                limit = t + 1
            if he - hs < min_history:
                n_short += 1
                continue
            while p < limit:
                x = item[p]
                if first_pos[x] == p and (not popularity or positive[x]):
                    n_excluded += 1
                p += 1
            if n_pool - n_excluded < n_neg:
                n_noneg += 1
                continue
            if not write:
                e += 1
                continue

            target = item[t]
            state = _seed_state(seed_lo, seed_hi, user[t], t - us)
            cands[e, 0] = target
            k = 1
            tries = 0
            while k < n_cand and tries < max_tries:
                tries += 1
                state = _xorshift32(state)
                if popularity:
                    hi_bits = state
                    state = _xorshift32(state)
                    u = ((hi_bits << 21) | (state >> 11)) / 9007199254740992.0  # 53-bit uniform in [0, 1)
                    x = np.searchsorted(cumw, u * total, side="right")
                    if x >= n_items:  # u * total rounded up to total
                        continue
                else:
                    x = _below(state, n_items)
                if (stamp[x] == us and first_pos[x] < limit) or chosen[x] == t:
                    continue
                chosen[x] = t
                cands[e, k] = x
                k += 1
            if k < n_cand:
                # Rejection ran out of tries (most of the pool is excluded): take the
                # next eligible items cyclically from a random offset; always finishes
                # because n_pool - n_excluded >= n_neg.
                state = _xorshift32(state)
                off = _below(state, n_items)
                for j in range(n_items):
                    if k >= n_cand:
                        break
                    x = off + j
                    if x >= n_items:
                        x -= n_items
                    if popularity and not positive[x]:
                        continue
                    if (stamp[x] == us and first_pos[x] < limit) or chosen[x] == t:
                        continue
                    chosen[x] = t
                    cands[e, k] = x
                    k += 1
            # Fisher-Yates shuffle so the target's column carries no signal.
            for i in range(n_cand - 1, 0, -1):
                state = _xorshift32(state)
                j = _below(state, i + 1)
                tmp = cands[e, i]
                cands[e, i] = cands[e, j]
                cands[e, j] = tmp
            for i in range(n_cand):
                if cands[e, i] == target:
                    label[e] = i
                    break
            target_row[e] = t
            hist_start[e] = hs
            hist_end[e] = he
            item_discovery[e] = first_pos[target] >= he
            discovery[e] = t_first[title[target]] >= he
            out_split[e] = split[t]
            out_user[e] = user[t]
            e += 1
        us = ue
    return e - e0, n_targets, n_short, n_noneg


@njit(cache=True)
def _user_bounds(user, n_chunks):
    """Row bounds of n_chunks runs of whole users, of about equal row counts (some may be empty)."""
    n = user.shape[0]
    bounds = np.empty(n_chunks + 1, np.int64)
    bounds[0] = 0
    for c in range(1, n_chunks):
        b = max(bounds[c - 1], n * c // n_chunks)
        while 0 < b < n and user[b] == user[b - 1]:
            b += 1
        bounds[c] = b
    bounds[n_chunks] = n
    return bounds


@njit(cache=True, parallel=True)
def _build(user, ts, item, split, n_items, history_len, n_neg, strict, popularity, cumw, positive,
           seed_lo, seed_hi, min_history, max_tries, title, n_titles, n_chunks):
    # Two passes over the same chunks of whole users, in parallel: count each chunk's examples,
    # then write them from the chunk's offset. Every example draws from its own stream
    # (seed, user, position), so the result is the same for any number of chunks or threads.
    bounds = _user_bounds(user, n_chunks)
    stats = np.zeros((n_chunks, 4), np.int64)
    n_cand = n_neg + 1
    no_i64 = np.empty(0, np.int64)
    no_i8 = np.empty(0, np.int8)
    no_b = np.empty(0, np.bool_)
    no_c = np.empty((0, n_cand), np.int32)
    for c in prange(n_chunks):
        r = _chunk(bounds[c], bounds[c + 1], user, ts, item, split, n_items, history_len, n_neg, strict,
                   popularity, cumw, positive, seed_lo, seed_hi, min_history, max_tries, title, n_titles,
                   False, 0, no_i64, no_i64, no_i64, no_c, no_i8, no_b, no_i8, no_i64, no_b)
        stats[c, 0] = r[0]
        stats[c, 1] = r[1]
        stats[c, 2] = r[2]
        stats[c, 3] = r[3]
    offset = np.zeros(n_chunks + 1, np.int64)
    for c in range(n_chunks):
        offset[c + 1] = offset[c] + stats[c, 0]
    n_ex = offset[n_chunks]
    target_row = np.empty(n_ex, np.int64)
    hist_start = np.empty(n_ex, np.int64)
    hist_end = np.empty(n_ex, np.int64)
    cands = np.empty((n_ex, n_cand), np.int32)
    label = np.empty(n_ex, np.int8)
    discovery = np.empty(n_ex, np.bool_)
    item_discovery = np.empty(n_ex, np.bool_)
    out_split = np.empty(n_ex, np.int8)
    out_user = np.empty(n_ex, np.int64)
    for c in prange(n_chunks):
        _chunk(bounds[c], bounds[c + 1], user, ts, item, split, n_items, history_len, n_neg, strict,
               popularity, cumw, positive, seed_lo, seed_hi, min_history, max_tries, title, n_titles,
               True, offset[c], target_row, hist_start, hist_end, cands, label, discovery, out_split,
               out_user, item_discovery)
    return (target_row, hist_start, hist_end, cands, label, discovery, out_split, out_user,
            stats[:, 1].sum(), stats[:, 2].sum(), stats[:, 3].sum(), item_discovery)


def _n_chunks(n: int, n_items: int, n_titles: int) -> int:
    """Chunks for _build: one per Numba thread, fewer for small inputs (a chunk per ~64k rows) and
    as many as keep the per-chunk scratch (5 arrays over items and titles) under ~1 GiB."""
    per_chunk = 8 * (3 * n_items + 2 * n_titles)
    return max(1, min(numba.get_num_threads(), n // 65536, (1 << 30) // max(per_chunk, 1)))


def build_examples(
    user,
    ts,
    item,
    n_items: int,
    split,
    *,
    history_len: int = 100,
    n_candidates: int = 10,
    negatives: str = "uniform",
    item_weights=None,
    seed: int = 0,
    tie_rule: str = "strict",
    min_history: int = 1,
    title_of_item=None,
    n_chunks: int | None = None,
) -> Examples:
    """Build next-item examples, one per event with split >= 0.

    Args:
        user, ts: int, shape (n,), sorted by (user, ts, tiebreak) (use stable_order).
        item: int item codes in [0, n_items), shape (n,).
        n_items: catalog size.
        split: int8 per event, -1 not a target, 0 train, 1 valid, 2 test
            (from split_leave_last_out or split_by_time).
        history_len: at most this many history rows (the most recent ones).
        n_candidates: target + n_candidates - 1 negatives per example.
        negatives: "uniform" over items, or "popularity": proportional to item_weights
            (float64 (n_items,), e.g. interaction counts; zero weight is never drawn).
        seed: any int; results are a function of (seed, the user's own rows).
        tie_rule: "strict": history = the user's events strictly earlier than the target's
            timestamp; items tied with the target are neither history nor negatives.
            "order": history = the rows before the target in sorted order; ties are
            broken by the sort's tiebreak.
        min_history: targets with fewer history rows are skipped and counted.
        title_of_item: int code per item of its title, shape (n_items,): an episode's title is
            its series, so the next episode of a show in progress is not a discovery. None = every
            item is its own title (MovieLens).
        n_chunks: runs of whole users built in parallel (None: one per Numba thread, see
            ``_n_chunks``); the result does not depend on it.

    Negatives are distinct, differ from the target, and are never items the user
    interacted with before the target (nor, for "strict", tied with it). A target with
    fewer eligible items than needed is skipped and counted in n_skipped_no_negatives.

    Returns:
        Examples with E rows; candidates has shape (E, n_candidates). ``discovery``: the user never
        interacted with the target's title before (the paper's Discovery); ``item_discovery``: nor
        with the target item itself.
    """
    user = as_int(user, "user")
    n = user.shape[0]
    ts = as_int(ts, "ts")
    item = as_int(item, "item", np.int32)
    split = as_int(split, "split", np.int8)
    check_lengths(n, ("ts", ts), ("item", item), ("split", split))
    n_items = _as_pos_int(n_items, "n_items", 1)
    if n_items >= 2**31:
        raise ValueError(f"n_items={n_items} must be < 2**31 (item codes are int32)")
    history_len = _as_pos_int(history_len, "history_len", 1)
    n_candidates = _as_pos_int(n_candidates, "n_candidates", 2)
    min_history = _as_pos_int(min_history, "min_history", 0)
    if n_candidates > n_items:
        raise ValueError(f"n_candidates={n_candidates} exceeds n_items={n_items}; lower n_candidates")
    if tie_rule not in ("strict", "order"):
        raise ValueError(f"tie_rule={tie_rule!r} must be 'strict' or 'order'")
    if negatives not in ("uniform", "popularity"):
        raise ValueError(f"negatives={negatives!r} must be 'uniform' or 'popularity'")
    if n and (item.min() < 0 or item.max() >= n_items):
        raise ValueError(
            f"item codes must lie in [0, n_items={n_items}), got [{item.min()}, {item.max()}]; "
            f"pass n_items = number of catalog items"
        )
    if n and (split.min() < -1 or split.max() > 2):
        raise ValueError("split must hold -1 (not a target), 0 (train), 1 (valid) or 2 (test)")
    check_sorted(user, ts)
    popularity = negatives == "popularity"
    if popularity:
        if item_weights is None:
            raise ValueError("negatives='popularity' needs item_weights (e.g. np.bincount(item, minlength=n_items))")
        w = as_float(item_weights, "item_weights", allow_nan=False)
        if w.shape[0] != n_items:
            raise ValueError(f"item_weights has length {w.shape[0]}; pass one weight per item (n_items={n_items})")
        if not np.all(np.isfinite(w)) or w.min() < 0:
            raise ValueError("item_weights must be finite and >= 0")
        if not np.any(w > 0):
            raise ValueError("item_weights are all zero; use negatives='uniform' or pass interaction counts")
        cumw = np.cumsum(w)
        positive = w > 0
    else:
        if item_weights is not None:
            raise ValueError("item_weights is only used with negatives='popularity'; drop it or set negatives")
        cumw = np.zeros(1, np.float64)
        positive = np.zeros(1, np.bool_)
    if title_of_item is None:
        title = np.arange(n_items, dtype=np.int64)
    else:
        title = as_int(title_of_item, "title_of_item")
        if title.shape[0] != n_items:
            raise ValueError(f"title_of_item has length {title.shape[0]}; pass one title code per item "
                             f"(n_items={n_items})")
        if n_items and title.min() < 0:
            raise ValueError("title_of_item codes must be >= 0")
    n_titles = int(title.max()) + 1 if n_items else 1
    seed = int(seed)
    if n_chunks is not None:
        n_chunks = _as_pos_int(n_chunks, "n_chunks", 1)
    n_neg = n_candidates - 1
    out = _build(user, ts, item, split, np.int64(n_items), np.int64(history_len), np.int64(n_neg),
                 tie_rule == "strict", popularity, cumw, positive,
                 np.int64(seed & 0xFFFFFFFF), np.int64((seed >> 32) & 0xFFFFFFFF),
                 np.int64(min_history), np.int64(16 * n_neg + 64), title, np.int64(n_titles),
                 np.int64(_n_chunks(n, n_items, n_titles) if n_chunks is None else n_chunks))
    return Examples(*out[:8], int(out[8]), int(out[9]), int(out[10]), out[11])


def _as_pos_int(v, name: str, lo: int) -> int:
    if isinstance(v, (bool, np.bool_)) or int(v) != v or v < lo:
        raise ValueError(f"{name}={v!r} must be an integer >= {lo}")
    return int(v)
