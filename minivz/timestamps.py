"""Timestamps: any timestamp column -> UTC microseconds (int64), with a reason for every row it cannot read.

How to run::

    from minivz.timestamps import parse_ts, ts_window_us
    us, reasons = parse_ts(table["time"], "auto", "UTC", "time", ts_window_us("1971-01-01", "2100-01-01"))

``us[i]`` is row ``i`` in µs since 1970-01-01 UTC (0 where ``reasons[i]`` is not None).

Timestamps (``ts_unit``):

- ``"s" | "ms" | "us"``: epoch numbers (or numeric strings) in that unit. ``"iso"``: ISO-8601 strings.
- ``"auto"``: numbers are epochs whose unit is decided **per value** by its magnitude: ``< 1e11`` →
  seconds (1e11 s is the year 5138), ``< 1e14`` → milliseconds, ``< 1e17`` → microseconds, else
  nanoseconds. So one column may mix seconds and milliseconds (for dates after 1973-03-03 the bands do
  not overlap). A millisecond value before 1973-03-03 reads as seconds far in the future and is
  rejected by the window below, with the value in the reason: pass ``ts_unit`` for such logs. Strings
  are tried as numbers first (the same rule), then as ISO-8601.
- Every timestamp must fall in ``[ts_min, ts_max)`` (default 1971-01-01 to 2100-01-01, UTC); others are
  rejected with a reason naming the date and the fix (``--set ts_min=1900-01-01``), never kept silently.
- ISO-8601 with an offset (``+02:00``, ``+0200``, ``+02``, ``Z``) is converted to UTC; naive strings are
  wall time in ``naive_tz`` (a zoneinfo name; ambiguous or nonexistent DST wall times take the earliest
  instant). The common shape ``YYYY-MM-DD[(T| )HH:MM[:SS[.f]]][zone]`` is parsed vectorized; only rows
  that do not match fall back to ``datetime.fromisoformat`` one by one, so one odd row never costs the
  column its fast path, and a row neither path reads is rejected with its value in the reason.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from minivz.log import IngestError

__all__ = ["TS_TYPE", "TS_UNITS", "DEFAULT_TS_WINDOW", "NUMERIC_RE", "parse_ts", "ts_window_us", "check_tz"]

TS_TYPE = pa.timestamp("us", tz="UTC")  # the canonical ``ts`` type
TS_UNITS = ("auto", "s", "ms", "us", "iso")
_US_PER = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}  # ns divides by 1000
# Python's datetime (used to render rejects and by downstream code) stops at year 9999.
_MAX_ABS_US = 253_402_300_799_999_999
NUMERIC_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
_ISO_RE = (
    r"^\s*(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:[T ](?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,9}))?)?)?"
    r"\s*(?P<tz>[Zz]|[+-]\d{2}(?::?\d{2})?)?\s*$"
)


def _to_numpy(arr) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, 0) if arr.null_count else arr).astype(np.int64, copy=False)


def _days_from_civil(y, m, d):
    """Days since 1970-01-01 for proleptic Gregorian dates (H. Hinnant's algorithm), vectorized."""
    y = y - (m <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _localize(local_us: np.ndarray, naive_tz: str) -> np.ndarray:
    """Wall-clock microseconds in ``naive_tz`` → UTC microseconds (vectorized via Arrow's tz database)."""
    if naive_tz in ("UTC", "Etc/UTC", "utc") or local_us.size == 0:
        return local_us
    arr = pa.array(local_us, pa.timestamp("us"))
    utc = pc.assume_timezone(arr, timezone=naive_tz, ambiguous="earliest", nonexistent="earliest")
    return np.asarray(utc.cast(pa.int64()))


def _iso_vectorized(s: pa.Array, naive_tz: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse ISO-8601 strings of the common shape. Returns (utc_us, ok)."""
    n = len(s)
    st = pc.extract_regex(s, _ISO_RE)
    ok = np.asarray(pc.fill_null(st.is_valid(), False))
    out = np.zeros(n, np.int64)
    if not ok.any():
        return out, ok

    def num(name, default=0):
        f = pc.struct_field(st, name)
        f = pc.if_else(pc.equal(f, ""), None, f)
        return _to_numpy(pc.cast(pc.fill_null(f, str(default)), pa.int64()))

    y, mo, d = num("y"), num("mo", 1), num("d", 1)
    h, mi, sec = num("h"), num("mi"), num("s")
    frac = pc.utf8_slice_codeunits(pc.utf8_rpad(pc.struct_field(st, "f"), 6, "0"), 0, 6)
    us = _digits(frac)
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    dim = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[np.clip(mo, 1, 12) - 1] + (
        (mo == 2) & leap
    )
    ok &= (mo >= 1) & (mo <= 12) & (d >= 1) & (d <= dim) & (h <= 23) & (mi <= 59) & (sec <= 59)
    ok &= y >= 1
    local = ((_days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60 + sec
    local = local * 1_000_000 + us

    tz = pc.struct_field(st, "tz")
    has_tz = np.asarray(pc.fill_null(pc.not_equal(tz, ""), False)) & ok
    z = np.asarray(pc.fill_null(pc.match_substring_regex(tz, "^[Zz]$"), False))
    digits = pc.replace_substring(pc.utf8_slice_codeunits(tz, 1), ":", "")
    tzh = _digits(pc.utf8_slice_codeunits(digits, 0, 2))
    tzm = _digits(pc.utf8_slice_codeunits(digits, 2, 4))
    sign = np.where(np.asarray(pc.fill_null(pc.starts_with(tz, "-"), False)), -1, 1)
    offset_us = np.where(z, 0, sign * (tzh * 60 + tzm) * 60_000_000)
    ok &= ~has_tz | z | ((tzh <= 23) & (tzm <= 59))
    naive = ok & ~has_tz
    out[has_tz] = local[has_tz] - offset_us[has_tz]
    out[naive] = _localize(local[naive], naive_tz)
    return out, ok


def _digits(s) -> np.ndarray:
    """Digit strings (possibly empty or null) → int64, 0 where empty."""
    s = pc.if_else(pc.fill_null(pc.equal(s, ""), True), "0", s)
    return _to_numpy(pc.cast(s, pa.int64()))


def _iso_python(value: str, naive_tz: str) -> int | None:
    """Slow path for one string: whatever ``datetime.fromisoformat`` reads (week dates, basic format…)."""
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zoneinfo.ZoneInfo(naive_tz))
    delta = dt.astimezone(timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


DEFAULT_TS_WINDOW = ("1971-01-01", "2100-01-01")
_EPOCH_UNITS = ("s", "ms", "us", "ns")


def ts_window_us(ts_min: str = DEFAULT_TS_WINDOW[0], ts_max: str = DEFAULT_TS_WINDOW[1]) -> tuple[int, int]:
    """The plausible-date window as UTC microseconds; a clear error for a bad bound."""
    out = []
    for name, value in (("ts_min", ts_min), ("ts_max", ts_max)):
        v = _iso_python(str(value), "UTC")
        if v is None:
            raise IngestError(f"{name}={value!r} is not a date; give an ISO date such as --set {name}=1971-01-01")
        out.append(v)
    if out[0] >= out[1]:
        raise IngestError(f"ts_min={ts_min!r} must be before ts_max={ts_max!r}")
    return out[0], out[1]


def _epoch_units(values: np.ndarray) -> np.ndarray:
    """Per value, the epoch unit (index into s, ms, us, ns) its magnitude says: < 1e11 seconds (1e11 s is
    the year 5138), < 1e14 ms, < 1e17 µs, else ns."""
    a = np.abs(values.astype(np.float64))
    return np.select([a < 1e11, a < 1e14, a < 1e17], [0, 1, 2], 3)


def _epochs_to_us(vals: np.ndarray, ts_unit: str) -> tuple[np.ndarray, np.ndarray, list]:
    """Epoch numbers → (utc_us, ok, unit name per value): one unit, or per value for ``auto``."""
    names = list(_EPOCH_UNITS)
    if ts_unit == "auto":
        per = _epoch_units(vals)
    else:
        per = np.full(len(vals), names.index(ts_unit))
    us = np.zeros(len(vals), np.int64)
    ok = np.zeros(len(vals), bool)
    for k, name in enumerate(names):
        sel = np.flatnonzero(per == k)
        if sel.size:
            us[sel], ok[sel] = _epoch_to_us(vals[sel], name)
    return us, ok, [names[k] for k in per]


def _epoch_to_us(values: np.ndarray, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Epoch numbers (float64 or int64) → (utc_us, ok); out-of-range and NaN are not ok."""
    if values.dtype.kind in "iu":
        v = values.astype(np.int64)
        ok = np.ones(v.shape, bool)
        if unit == "ns":
            us = v // 1000
        else:
            k = _US_PER[unit]
            ok = np.abs(v) <= _MAX_ABS_US // k
            us = np.where(ok, v, 0) * k
    else:
        v = values.astype(np.float64)
        scaled = v / 1000.0 if unit == "ns" else v * _US_PER[unit]
        ok = np.isfinite(scaled) & (np.abs(scaled) <= _MAX_ABS_US)
        us = np.where(ok, np.round(np.where(ok, scaled, 0.0)), 0).astype(np.int64)
    ok &= np.abs(us) <= _MAX_ABS_US
    return us, ok


def parse_ts(col: pa.ChunkedArray, ts_unit: str, naive_tz: str, src: str, window: tuple[int, int] | None = None):
    """Any timestamp column → (utc_us int64, reason per row or None). Vectorized; per-row only on failures.
    Parsed values outside ``window`` (UTC µs, default 1971–2100) are rejected with the date in the reason."""
    window = window or ts_window_us()
    out, reasons = _parse_ts_values(col, ts_unit, naive_tz, src)
    fine = np.equal(reasons, None)
    outside = fine & ((out < window[0]) | (out >= window[1]))
    if outside.any():
        lo, hi = (_fmt_us(w)[:10] for w in window)
        for i in np.flatnonzero(outside):
            reasons[i] = (f"ts: {_fmt_us(int(out[i]))} is outside the plausible window [{lo}, {hi}); if it is "
                          f"real, widen it (--set ts_min=... / --set ts_max=...), else fix the value or ts_unit")
    return out, reasons


def _fmt_us(us: int) -> str:
    try:
        return (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=int(us))).isoformat()
    except OverflowError:
        return f"{us} µs since 1970"


def _parse_ts_values(col, ts_unit: str, naive_tz: str, src: str):
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    out = np.zeros(n, np.int64)
    reasons = np.full(n, None, dtype=object)
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    valid = np.asarray(arr.is_valid())
    reasons[~valid] = "ts: missing (null)"

    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        if ts_unit not in ("auto", "iso"):
            raise IngestError(
                f"ts column {src!r} already holds timestamps ({t}); ts_unit={ts_unit!r} applies to epoch "
                "numbers only. Use ts_unit='auto' (CLI: --set ts_unit=auto)."
            )
        if pa.types.is_date(t):
            arr = arr.cast(pa.timestamp("us"))
            t = arr.type
        if t.tz is None:
            local = _to_numpy(arr.cast(pa.timestamp("us")).cast(pa.int64()))
            out = _localize(local, naive_tz)
        else:
            out = _to_numpy(arr.cast(TS_TYPE).cast(pa.int64()))
        return out, reasons

    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        if ts_unit == "iso":
            raise IngestError(
                f"ts column {src!r} is numeric ({t}) but ts_unit='iso'. Use ts_unit='auto' or the epoch "
                "unit s|ms|us (CLI: --set ts_unit=ms)."
            )
        vals = arr.cast(pa.int64() if pa.types.is_integer(t) else pa.float64()).to_numpy(
            zero_copy_only=False
        )
        if vals.dtype == object:
            vals = np.asarray([0 if v is None else v for v in vals], np.int64)
        us, ok, units = _epochs_to_us(vals, ts_unit)
        ok &= valid
        out = np.where(ok, us, 0)
        for i in np.flatnonzero(valid & ~ok):
            reasons[i] = f'ts: epoch value "{vals[i]}" ({units[i]}) is out of range (NaN or past year 9999)'
        return out, reasons

    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        arr = arr.cast(pa.string())
    arr = pc.utf8_trim_whitespace(arr)
    empty = np.asarray(pc.fill_null(pc.equal(arr, ""), False))
    reasons[empty] = "ts: missing (empty)"
    todo = valid & ~empty
    unit_label = "ISO-8601 or epoch" if ts_unit == "auto" else ("ISO-8601" if ts_unit == "iso" else f"epoch {ts_unit}")
    done = np.zeros(n, bool)
    if ts_unit != "iso":
        numeric = np.asarray(pc.fill_null(pc.match_substring_regex(arr, NUMERIC_RE), False)) & todo
        if numeric.any():
            idx = np.flatnonzero(numeric)
            vals = np.asarray(pc.cast(arr.take(pa.array(idx)), pa.float64()))
            us, ok, units = _epochs_to_us(vals, ts_unit)
            out[idx[ok]] = us[ok]
            done[idx[ok]] = True
            for j in np.flatnonzero(~ok):
                i = idx[j]
                reasons[i] = f'ts: epoch value "{vals[j]}" ({units[j]}) is out of range (past year 9999)'
                done[i] = True  # reason already given
                todo[i] = False
    if ts_unit in ("auto", "iso"):
        rest = np.flatnonzero(todo & ~done)
        if rest.size:
            us, ok = _iso_vectorized(arr.take(pa.array(rest)), naive_tz)
            out[rest[ok]] = us[ok]
            done[rest[ok]] = True
            for i in rest[~ok]:  # the per-row fallback, only for rows the fast path could not read
                v = _iso_python(arr[int(i)].as_py(), naive_tz)
                if v is not None and abs(v) <= _MAX_ABS_US:
                    out[i] = v
                    done[i] = True
    for i in np.flatnonzero(todo & ~done):
        reasons[i] = f'ts: cannot parse "{arr[int(i)].as_py()}" as {unit_label}'
    return out, reasons


def check_tz(naive_tz: str) -> None:
    """Raise IngestError unless ``naive_tz`` is a zoneinfo name."""
    try:
        zoneinfo.ZoneInfo(naive_tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
        raise IngestError(
            f"naive_tz={naive_tz!r} is not a known time zone; use a zoneinfo name such as 'UTC' or "
            "'Europe/Berlin' (CLI: --set naive_tz=Europe/Berlin)."
        ) from e

