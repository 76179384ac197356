"""Train / valid / test assignment per event.

    split = split_leave_last_out(user, eligible)                 # int8 (n,)
    split = split_by_time(ts, valid_start, test_start, eligible)  # int8 (n,)

Codes: -1 not a target, 0 train, 1 valid, 2 test (what build_examples reads).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._convert import as_bool, as_int


@njit(cache=True)
def _leave_last_out(user, eligible, umin, n_codes):
    n = user.shape[0]
    seen = np.zeros(n_codes, np.int8)  # eligible events already met per user, saturating at 2
    out = np.full(n, -1, np.int8)
    for i in range(n - 1, -1, -1):
        if eligible[i]:
            c = user[i] - umin
            k = seen[c]
            if k == 0:
                out[i] = 2
            elif k == 1:
                out[i] = 1
            else:
                out[i] = 0
            if k < 2:
                seen[c] = k + 1
    return out


def split_leave_last_out(user, eligible=None) -> np.ndarray:
    """Per user, the last eligible event is test (2), the one before valid (1), earlier ones train (0).

    Args:
        user: int codes, shape (n,). "Last" means last in row order, so sort rows by
            (user, ts, tiebreak) first (stable_order); rows need not be grouped.
        eligible: bool mask, shape (n,), events that may be targets; None = all.

    Returns:
        split: int8, shape (n,); -1 where not eligible.
    """
    user = as_int(user, "user")
    n = user.shape[0]
    eligible = as_bool(eligible, "eligible", n)
    if n == 0:
        return np.zeros(0, np.int8)
    umin, umax = int(user.min()), int(user.max())
    if umax - umin > 2 * n + 1024:  # sparse codes: make them dense so the counter array stays small
        user = np.unique(user, return_inverse=True)[1].astype(np.int64).ravel()
        umin, umax = 0, int(user.max())
    return _leave_last_out(user, eligible, np.int64(umin), np.int64(umax - umin + 1))


@njit(cache=True)
def _split_by_time(ts, eligible, valid_start, test_start):
    n = ts.shape[0]
    out = np.empty(n, np.int8)
    for i in range(n):
        if not eligible[i]:
            out[i] = -1
        elif ts[i] < valid_start:
            out[i] = 0
        elif ts[i] < test_start:
            out[i] = 1
        else:
            out[i] = 2
    return out


def split_by_time(ts, valid_start, test_start, eligible=None) -> np.ndarray:
    """Global time cut-offs: ts < valid_start -> 0, ts < test_start -> 1, else 2.

    Args:
        ts: int timestamps, shape (n,).
        valid_start, test_start: ints in the unit of ts, valid_start <= test_start.
        eligible: bool mask, shape (n,); None = all. Non-eligible events get -1.

    Returns:
        split: int8, shape (n,).
    """
    ts = as_int(ts, "ts")
    eligible = as_bool(eligible, "eligible", ts.shape[0])
    for name, v in (("valid_start", valid_start), ("test_start", test_start)):
        if isinstance(v, (bool, np.bool_)) or int(v) != v:
            raise ValueError(f"{name}={v!r} must be an integer in the unit of ts")
    if valid_start > test_start:
        raise ValueError(f"valid_start={valid_start} must be <= test_start={test_start}; swap them")
    return _split_by_time(ts, eligible, np.int64(valid_start), np.int64(test_start))
