"""Input conversion shared by the public kernel wrappers.

The wrappers accept NumPy arrays, Python sequences, and pyarrow Arrays /
ChunkedArrays, and hand the private Numba kernels contiguous NumPy arrays of one
exact dtype. Every error names the argument and says how to fix it.
"""

from __future__ import annotations

import numpy as np


def _is_arrow(x) -> bool:
    return type(x).__module__.startswith("pyarrow")


def _arrow_to_numpy(x, name: str, null_fill):
    import pyarrow as pa  # lazy: pyarrow is only needed when Arrow data comes in

    if isinstance(x, pa.ChunkedArray):
        x = x.combine_chunks() if x.num_chunks != 1 else x.chunk(0)
    if pa.types.is_timestamp(x.type) or pa.types.is_date(x.type) or pa.types.is_duration(x.type):
        # Timestamps keep their own unit (s, ms, us, ns); callers pick a gap in that unit.
        x = x.cast(pa.int64())
    if pa.types.is_dictionary(x.type):
        raise ValueError(
            f"{name} is a dictionary-encoded Arrow array; pass its integer codes "
            f"({name}.indices) or encode it with ingest first"
        )
    if x.null_count:
        if null_fill is None:
            raise ValueError(
                f"{name} has {x.null_count} null value(s); drop or fill them before calling "
                f"(e.g. pyarrow.compute.fill_null)"
            )
        x = x.fill_null(null_fill)
    return x.to_numpy(zero_copy_only=False)


def as_int(x, name: str, dtype=np.int64, *, null_fill=None) -> np.ndarray:
    """1-D contiguous integer array of `dtype`; refuses floats, bools and values out of range."""
    if _is_arrow(x):
        arr = _arrow_to_numpy(x, name, null_fill)
    else:
        arr = np.asarray(x)
    if arr.dtype.kind == "M" or arr.dtype.kind == "m":
        arr = arr.view(np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}; pass one value per event")
    if arr.size == 0:
        return np.zeros(0, dtype=dtype)
    if arr.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must hold integers, got dtype {arr.dtype}; encode it to integer codes "
            f"(e.g. np.unique(..., return_inverse=True)) or cast it with .astype(np.int64)"
        )
    target = np.dtype(dtype)
    if arr.dtype != target:
        info = np.iinfo(target)
        lo, hi = arr.min(), arr.max()
        if lo < info.min or hi > info.max:
            raise ValueError(
                f"{name} has values in [{lo}, {hi}] that do not fit {target}; re-encode them as dense codes"
            )
        arr = arr.astype(target)
    return np.ascontiguousarray(arr)


def as_float(x, name: str, *, allow_nan: bool = True) -> np.ndarray:
    """1-D contiguous float64 array; Arrow nulls become NaN when `allow_nan`."""
    if _is_arrow(x):
        arr = _arrow_to_numpy(x, name, float("nan") if allow_nan else None)
    else:
        arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}; cast it with .astype(np.float64)")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not allow_nan and np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN; drop those rows or fill them before calling")
    return arr


def as_bool(x, name: str, n: int) -> np.ndarray:
    """1-D contiguous bool mask of length n; None means all True."""
    if x is None:
        return np.ones(n, dtype=np.bool_)
    if _is_arrow(x):
        arr = _arrow_to_numpy(x, name, None)
    else:
        arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind != "b":
        raise ValueError(f"{name} must be a boolean mask, got dtype {arr.dtype}; build it with a comparison")
    arr = np.ascontiguousarray(arr, dtype=np.bool_)
    check_lengths(n, (name, arr))
    return arr


def check_lengths(n: int, *named) -> None:
    """Raise unless every (name, array) pair has length n."""
    for name, arr in named:
        if len(arr) != n:
            raise ValueError(
                f"{name} has length {len(arr)} but the first argument has {n}; pass one value per event"
            )
