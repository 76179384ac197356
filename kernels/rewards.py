"""GRPO reward helpers: the length plateau and group-relative advantages.

    r_len = plateau_length_reward(verbalized_len / template_len, lo=0.2, hi=0.6)  # float64, same shape
    adv = group_advantages(rewards, group_size=G)  # float64 (B*G,), rows grouped by prompt
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


def _as_float_array(x, name: str) -> np.ndarray:
    if type(x).__module__.startswith("pyarrow"):
        x = x.to_numpy(zero_copy_only=False)
    arr = np.asarray(x)
    if arr.size and arr.dtype.kind not in "iufb":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return np.asarray(arr, dtype=np.float64)


@njit(cache=True)
def _plateau(ratio, lo, hi, softness):
    out = np.empty(ratio.shape[0], np.float64)
    for i in range(ratio.shape[0]):
        r = ratio[i]
        if np.isnan(r):
            out[i] = 0.0
        elif r < lo:
            z = (lo - r) / (softness * lo)
            out[i] = math.exp(-0.5 * z * z)
        elif r > hi:
            z = (r - hi) / (softness * hi)
            out[i] = math.exp(-0.5 * z * z)
        else:
            out[i] = 1.0
    return out


def plateau_length_reward(ratio, lo: float, hi: float, softness: float = 0.25) -> np.ndarray:
    """Length reward: 1 inside [lo, hi], Gaussian decay outside, 0 for NaN.

    Below lo: exp(-0.5 * ((lo - r) / (softness * lo))**2); above hi: the same with hi.
    Continuous at lo and hi, non-decreasing below lo, non-increasing above hi.

    Args:
        ratio: compression ratio(s) (verbalized length / template length), any shape.
        lo, hi: the band, 0 < lo <= hi.
        softness: width of the decay relative to lo (below) or hi (above), > 0.

    Returns:
        float64 array of ratio's shape, values in [0, 1].
    """
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"need 0 < lo <= hi (finite), got lo={lo}, hi={hi}; e.g. lo=0.2, hi=0.6")
    if not (np.isfinite(softness) and softness > 0):
        raise ValueError(f"softness={softness} must be > 0 (e.g. 0.25)")
    arr = _as_float_array(ratio, "ratio")
    out = _plateau(np.ascontiguousarray(arr.ravel()), float(lo), float(hi), float(softness))
    return out.reshape(arr.shape)


@njit(cache=True)
def _group_advantages(r, g, eps, scale):
    n = r.shape[0]
    out = np.empty(n, np.float64)
    for s in range(0, n, g):
        mean = 0.0
        for i in range(s, s + g):
            mean += r[i]
        mean /= g
        if scale:
            ss = 0.0
            for i in range(s, s + g):
                d = r[i] - mean
                ss += d * d
            denom = math.sqrt(ss / (g - 1)) + eps  # unbiased std, as torch.std / TRL
            for i in range(s, s + g):
                out[i] = (r[i] - mean) / denom
        else:
            for i in range(s, s + g):
                out[i] = r[i] - mean
    return out


def group_advantages(rewards, group_size: int, eps: float = 1e-4, scale: bool = True) -> np.ndarray:
    """GRPO group-relative advantages, as TRL's GRPOTrainer computes them.

    rewards is (B * G,) with the G completions of each prompt contiguous. Per group:
    (r - mean) / (std + eps), std unbiased (ddof=1, torch.std's default); scale=False
    gives r - mean.

    Returns:
        float64, shape (B * G,).
    """
    r = np.ascontiguousarray(_as_float_array(rewards, "rewards").ravel())
    if isinstance(group_size, (bool, np.bool_)) or int(group_size) != group_size or group_size < 2:
        raise ValueError(f"group_size={group_size!r} must be an integer >= 2 (the number of generations per prompt)")
    group_size = int(group_size)
    if r.shape[0] % group_size:
        raise ValueError(
            f"len(rewards)={r.shape[0]} is not a multiple of group_size={group_size}; "
            f"pass all {group_size} rewards of every prompt"
        )
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards contain NaN or inf; replace missing rewards (e.g. with 0.0) first")
    if not (eps >= 0 and np.isfinite(eps)):
        raise ValueError(f"eps={eps} must be finite and >= 0")
    return _group_advantages(r, np.int64(group_size), float(eps), bool(scale))
