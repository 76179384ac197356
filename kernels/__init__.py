"""Numba kernels of the data path, imported as ``minivz.kernels``.

Each public function checks and converts its input (NumPy or pyarrow arrays) and calls a
private ``@njit(cache=True)`` kernel. Typical order on an event log:

    perm = stable_order(user, ts, item)                 # sort by (user, ts, item)
    user, ts, item = apply_order(perm, user, ts, item)  # == user[perm], ...
    session = sessionize(user, ts, gap=1800)
    runs = aggregate_series(session, series, season, episode, duration, ts)
    split = split_leave_last_out(user, eligible)        # or split_by_time
    ex = build_examples(user, ts, item, n_items, split, history_len=100, n_candidates=10)

GRPO helpers: plateau_length_reward, group_advantages.
"""

from .examples import Examples, build_examples
from .order import apply_order, sessionize, stable_order
from .rewards import group_advantages, plateau_length_reward
from .series import SeriesRuns, aggregate_series
from .splits import split_by_time, split_leave_last_out

__all__ = [
    "Examples",
    "SeriesRuns",
    "aggregate_series",
    "apply_order",
    "build_examples",
    "group_advantages",
    "plateau_length_reward",
    "sessionize",
    "split_by_time",
    "split_leave_last_out",
    "stable_order",
]
