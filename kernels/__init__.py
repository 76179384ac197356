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

import numba

from minivz.envinfo import numba_threading_layer

# One OpenMP runtime per process. Numba's default "omp" layer runs prange on the system libgomp,
# torch on its own bundled copy: two runtimes whose idle threads wait apart. Measured on 2 cores
# (Zen 4 EPYC, SmolLM2-135M bf16 forward on 900 tokens, after one prange kernel in the process):
# 2.8 s with OMP_WAIT_POLICY=active (the idle numba pool spun a core for the rest of the process:
# `minivz recipe` scored stage 2 at 4.0 s per example after stage 1, 1.3 s in a fresh process) and
# 1.7 s passive, against 1.2 / 1.4 s without it. Numba's own "workqueue" layer starts no OpenMP
# runtime (1.2 / 1.4 s); build_examples runs ~25% slower on it (1.1 vs 0.9 s at 10M events), the
# ordering kernels the same. Set NUMBA_THREADING_LAYER=omp to choose numba's default back.
numba.config.THREADING_LAYER = numba_threading_layer()

from .examples import Examples, build_examples  # noqa: E402
from .order import apply_order, sessionize, stable_order  # noqa: E402
from .rewards import group_advantages, plateau_length_reward  # noqa: E402
from .series import SeriesRuns, aggregate_series  # noqa: E402
from .splits import split_by_time, split_leave_last_out  # noqa: E402

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
