"""Event ordering and sessions.

    perm = stable_order(user, ts, item)          # int64 (n,), == np.lexsort((item, ts, user))
    user, ts, item = apply_order(perm, user, ts, item)   # == user[perm], ts[perm], item[perm]
    session = sessionize(user, ts, gap=30 * 60)  # int64 (n,), 0..S-1, non-decreasing
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._convert import as_int, check_lengths

# Segments up to this length are insertion-sorted; longer ones are merge-sorted
# from insertion-sorted runs of this length (passed to the kernel as an argument).
_RUN = 24


@njit(cache=True)
def _less(ts, tb, use_tb, a, b):
    # Total order on rows: (ts, tiebreak, row). The row index makes any sort
    # algorithm reproduce a stable sort exactly.
    if ts[a] != ts[b]:
        return ts[a] < ts[b]
    if use_tb and tb[a] != tb[b]:
        return tb[a] < tb[b]
    return a < b


@njit(cache=True)
def _insertion_sort(perm, lo, hi, ts, tb, use_tb):
    for i in range(lo + 1, hi):
        x = perm[i]
        j = i - 1
        while j >= lo and _less(ts, tb, use_tb, x, perm[j]):
            perm[j + 1] = perm[j]
            j -= 1
        perm[j + 1] = x


@njit(cache=True)
def _merge_sort(perm, lo, hi, buf, ts, tb, use_tb, run):
    for b in range(lo, hi, run):
        _insertion_sort(perm, b, min(b + run, hi), ts, tb, use_tb)
    src = perm
    dst = buf
    in_buf = False
    width = run
    while width < hi - lo:
        for a in range(lo, hi, 2 * width):
            mid = min(a + width, hi)
            end = min(a + 2 * width, hi)
            i = a
            j = mid
            k = a
            while i < mid and j < end:
                if _less(ts, tb, use_tb, src[j], src[i]):
                    dst[k] = src[j]
                    j += 1
                else:
                    dst[k] = src[i]
                    i += 1
                k += 1
            while i < mid:
                dst[k] = src[i]
                i += 1
                k += 1
            while j < end:
                dst[k] = src[j]
                j += 1
                k += 1
        tmp = src
        src = dst
        dst = tmp
        in_buf = not in_buf
        width *= 2
    if in_buf:
        for k in range(lo, hi):
            perm[k] = buf[k]


@njit(cache=True)
def _bucket_starts(user, umin, n_codes):
    # start[c] = first output row of user code c (c = user - umin); start[n_codes] = n.
    start = np.zeros(n_codes + 1, np.int64)
    for i in range(user.shape[0]):
        start[user[i] - umin + 1] += 1
    for c in range(n_codes):
        start[c + 1] += start[c]
    return start


@njit(cache=True)
def _counting_sort(user, umin, n_codes):
    # Stable counting sort on the dense user code: O(n + n_codes).
    n = user.shape[0]
    start = _bucket_starts(user, umin, n_codes)
    perm = np.empty(n, np.int64)
    for i in range(n):
        c = user[i] - umin
        perm[start[c]] = i
        start[c] += 1
    return perm


@njit(cache=True)
def _sort_user_segments(perm, user, ts, tb, use_tb, run):
    # perm is already grouped by user (stably); sort each user's rows by (ts, tb, row).
    n = perm.shape[0]
    buf = np.empty(0, np.int64)
    lo = 0
    while lo < n:
        u = user[perm[lo]]
        hi = lo + 1
        is_sorted = True
        while hi < n and user[perm[hi]] == u:
            if is_sorted and _less(ts, tb, use_tb, perm[hi], perm[hi - 1]):
                is_sorted = False
            hi += 1
        if not is_sorted:
            if hi - lo <= run:
                _insertion_sort(perm, lo, hi, ts, tb, use_tb)
            else:
                if buf.shape[0] == 0:
                    buf = np.empty(n, np.int64)
                _merge_sort(perm, lo, hi, buf, ts, tb, use_tb, run)
        lo = hi
    return perm


@njit(cache=True)
def _sort_pairs(key, val, lo, hi, kbuf, vbuf, run):
    # Stable sort of key[lo:hi] carrying val along: insertion-sorted runs, then
    # bottom-up merges ping-ponging with (kbuf, vbuf). Contiguous, so cache-friendly.
    for b in range(lo, hi, run):
        e = min(b + run, hi)
        for i in range(b + 1, e):
            k = key[i]
            v = val[i]
            j = i - 1
            while j >= b and key[j] > k:
                key[j + 1] = key[j]
                val[j + 1] = val[j]
                j -= 1
            key[j + 1] = k
            val[j + 1] = v
    sk, sv, dk, dv = key, val, kbuf, vbuf
    in_buf = False
    width = run
    while width < hi - lo:
        for a in range(lo, hi, 2 * width):
            mid = min(a + width, hi)
            end = min(a + 2 * width, hi)
            i = a
            j = mid
            k = a
            while i < mid and j < end:
                if sk[j] < sk[i]:
                    dk[k] = sk[j]
                    dv[k] = sv[j]
                    j += 1
                else:
                    dk[k] = sk[i]
                    dv[k] = sv[i]
                    i += 1
                k += 1
            while i < mid:
                dk[k] = sk[i]
                dv[k] = sv[i]
                i += 1
                k += 1
            while j < end:
                dk[k] = sk[j]
                dv[k] = sv[j]
                j += 1
                k += 1
        sk, sv, dk, dv = dk, dv, sk, sv
        in_buf = not in_buf
        width *= 2
    if in_buf:
        for k in range(lo, hi):
            key[k] = kbuf[k]
            val[k] = vbuf[k]


@njit(cache=True)
def _user_segment_keys(perm, user, ts, tb, ts_min, tb_min, tb_span):
    # For a perm grouped by user (stably): each row's packed (ts, tb) key, gathered once into a
    # contiguous array so the per-user sorts never chase perm into ts / tb, and the users' segment
    # bounds in perm (_counting_sort_packed's outputs, for sparse user codes).
    n = perm.shape[0]
    key = np.empty(n, np.int64)
    bounds = np.empty(n + 1, np.int64)
    n_seg = 0
    for i in range(n):
        r = perm[i]
        key[i] = (ts[r] - ts_min) * tb_span + (tb[r] - tb_min)
        if i == 0 or user[r] != user[perm[i - 1]]:
            bounds[n_seg] = i
            n_seg += 1
    bounds[n_seg] = n
    return key, bounds[: n_seg + 1]


@njit(cache=True)
def _counting_sort_packed(user, ts, tb, umin, n_codes, ts_min, tb_min, tb_span):
    # The dense-code path: a stable counting sort on user that scatters each row's packed (ts, tb)
    # key beside its row index (then _sort_segments sorts each user's contiguous key segment).
    # The rows are read in input order only; the only random accesses are the two scatters (at
    # 10M shuffled rows, gathering ts[perm[i]] and user[perm[i]] afterwards missed the cache on
    # every row and made the sort 2x slower per row than at 1M).
    n = user.shape[0]
    start = _bucket_starts(user, umin, n_codes)
    bounds = start.copy()
    perm = np.empty(n, np.int64)
    key = np.empty(n, np.int64)
    for i in range(n):
        c = user[i] - umin
        j = start[c]
        perm[j] = i
        key[j] = (ts[i] - ts_min) * tb_span + (tb[i] - tb_min)
        start[c] = j + 1
    return perm, key, bounds


# Parallel kernels (prange) are called from Python only, never from another cached @njit
# function: a cached caller of a parallel function can crash when loaded from the cache
# (numba/numba#8578; it did here, in `minivz data prepare`).
@njit(cache=True, parallel=True)
def _sort_segments(key, perm, bounds, run):
    # Sort each segment [bounds[c], bounds[c+1]) of key, carrying perm, the segments in parallel:
    # they are disjoint, and so are the ranges of the merge buffers each one uses.
    n_seg = bounds.shape[0] - 1
    longest = 0
    for c in range(n_seg):
        longest = max(longest, bounds[c + 1] - bounds[c])
    n_buf = key.shape[0] if longest > run else 0
    kbuf = np.empty(n_buf, np.int64)
    vbuf = np.empty(n_buf, np.int64)
    for c in prange(n_seg):
        lo = bounds[c]
        hi = bounds[c + 1]
        is_sorted = True
        for k in range(lo + 1, hi):
            if key[k] < key[k - 1]:
                is_sorted = False
                break
        if not is_sorted:
            _sort_pairs(key, perm, lo, hi, kbuf, vbuf, run)


def stable_order(user, ts, tiebreak=None) -> np.ndarray:
    """Permutation that sorts events by (user, ts, tiebreak), stable on equal keys.

    Args:
        user: int codes, shape (n,). Dense codes (e.g. 0..U-1) take an O(n + U)
            counting sort; sparse codes fall back to NumPy's stable argsort.
        ts: int timestamps, shape (n,) (any unit; Arrow/NumPy datetimes are read as int64).
        tiebreak: optional int key, shape (n,), e.g. the item code. None: input order
            breaks ties.

    Returns:
        perm: int64, shape (n,); exactly ``np.lexsort((tiebreak, ts, user))``.
        Apply it with ``user[perm]``, ``ts[perm]``, ... before the other kernels.
    """
    user = as_int(user, "user")
    ts = as_int(ts, "ts")
    n = user.shape[0]
    check_lengths(n, ("ts", ts))
    if tiebreak is None:
        tb, use_tb = np.zeros(1, np.int64), False
    else:
        tb, use_tb = as_int(tiebreak, "tiebreak"), True
        check_lengths(n, ("tiebreak", tb))
    if n == 0:
        return np.zeros(0, np.int64)
    umin, umax = int(user.min()), int(user.max())
    dense = umax - umin <= 2 * n + 1024  # else a counting array would be larger than the data
    ts_min, ts_max = int(ts.min()), int(ts.max())
    tb_min, tb_max = (int(tb.min()), int(tb.max())) if use_tb else (0, 0)
    tb_span = tb_max - tb_min + 1
    packs = (ts_max - ts_min + 1) * tb_span < 2**62
    if packs:  # sort each user's contiguous segment of packed (ts, tb) keys, in parallel
        tbp = tb if use_tb else np.zeros(n, np.int64)
        if dense:
            perm, key, bounds = _counting_sort_packed(user, ts, tbp, np.int64(umin), np.int64(umax - umin + 1),
                                                      np.int64(ts_min), np.int64(tb_min), np.int64(tb_span))
        else:
            perm = np.argsort(user, kind="stable").astype(np.int64, copy=False)
            key, bounds = _user_segment_keys(perm, user, ts, tbp, np.int64(ts_min), np.int64(tb_min),
                                             np.int64(tb_span))
        _sort_segments(key, perm, bounds, _RUN)
        return perm
    if dense:
        perm = _counting_sort(user, np.int64(umin), np.int64(umax - umin + 1))
    else:
        perm = np.argsort(user, kind="stable").astype(np.int64, copy=False)
    return _sort_user_segments(perm, user, ts, tb, use_tb, _RUN)


@njit(cache=True, parallel=True)
def _gather(perm, src, dst):
    for i in prange(perm.shape[0]):
        dst[i] = src[perm[i]]


def apply_order(perm, *columns) -> list[np.ndarray]:
    """``[col[perm] for col in columns]``, each gathered in parallel (NumPy's fancy indexing is one
    thread: 10M rows x 7 columns, 0.98 s vs 0.31 s on 2 cores). Numeric and bool NumPy columns go
    through the kernel; any other dtype (strings, objects) through NumPy. Every column must have one
    value per row of ``perm`` and ``perm`` must index them (e.g. ``stable_order``'s result)."""
    perm = as_int(perm, "perm")
    n = perm.shape[0]
    cols = [np.asarray(c) for c in columns]
    check_lengths(n, *((f"column {k}", c) for k, c in enumerate(cols)))
    if n and (perm.min() < 0 or perm.max() >= n):
        raise ValueError(f"perm holds values outside [0, {n}); pass an order of the rows (stable_order)")
    out = []
    for c in cols:
        if c.ndim != 1 or c.dtype.kind not in "biuf":
            out.append(c[perm])
            continue
        dst = np.empty(n, c.dtype)
        _gather(perm, c, dst)
        out.append(dst)
    return out


@njit(cache=True)
def _first_unsorted(user, ts):
    # First row i with (user, ts)[i] < (user, ts)[i-1], or -1.
    for i in range(1, user.shape[0]):
        if user[i] < user[i - 1] or (user[i] == user[i - 1] and ts[i] < ts[i - 1]):
            return i
    return -1


def check_sorted(user, ts) -> None:
    """Raise ValueError unless rows are sorted by (user, ts)."""
    bad = _first_unsorted(user, ts)
    if bad >= 0:
        raise ValueError(
            f"events are not sorted by (user, ts) at row {bad}; sort with stable_order first "
            f"(perm = stable_order(user, ts, item); user, ts, ... = user[perm], ts[perm], ...)"
        )


@njit(cache=True)
def _sessionize(user, ts, gap, session):
    # Fills session; returns whether some row is out of (user, ts) order (checked in the same pass).
    n = user.shape[0]
    if n == 0:
        return False
    s = 0
    bad = False
    session[0] = 0
    for i in range(1, n):  # branch-free: session starts are data-dependent and mispredict
        bad |= (user[i] < user[i - 1]) | ((user[i] == user[i - 1]) & (ts[i] < ts[i - 1]))
        s += (user[i] != user[i - 1]) | (ts[i] - ts[i - 1] > gap)
        session[i] = s
    return bad


def sessionize(user, ts, gap) -> np.ndarray:
    """Global session index per event.

    A session starts at each user's first event and whenever ``ts - previous ts > gap``.

    Args:
        user, ts: int, shape (n,), sorted by (user, ts) (use stable_order).
        gap: int >= 0, in the unit of ts (e.g. 1800 for 30 minutes of epoch seconds).

    Returns:
        session: int64, shape (n,), values 0..S-1, non-decreasing.
    """
    user = as_int(user, "user")
    ts = as_int(ts, "ts")
    check_lengths(user.shape[0], ("ts", ts))
    if int(gap) != gap or gap < 0:
        raise ValueError(f"gap={gap!r} must be a non-negative integer in the unit of ts (e.g. 1800 seconds)")
    session = np.empty(user.shape[0], np.int64)  # allocated by NumPy: faster than inside the kernel
    if _sessionize(user, ts, np.int64(gap), session):
        check_sorted(user, ts)  # names the first row out of order
    return session
