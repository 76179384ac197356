"""Collapse consecutive episodes of one series into runs ("watched 5 episodes of X").

    runs = aggregate_series(session, series, season, episode, duration, ts)
    runs.run_of_event   # int64 (n,): run index of each event
    runs.length[r]      # int32 (R,): events in run r, starting at row runs.start[r]
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from ._convert import as_float, as_int, check_lengths


class SeriesRuns(NamedTuple):
    """Per-event run index plus one row per run (R runs, R <= n events)."""

    run_of_event: np.ndarray  # int64 (n,)
    start: np.ndarray  # int64 (R,) first event row of the run
    length: np.ndarray  # int32 (R,) events in the run
    series: np.ndarray  # int32 (R,) series code, -1 for a non-series event
    first_season: np.ndarray  # int32 (R,) season of the run's first event, -1 if null
    first_episode: np.ndarray  # int32 (R,)
    last_season: np.ndarray  # int32 (R,) season of the run's last event, -1 if null
    last_episode: np.ndarray  # int32 (R,)
    total_duration: np.ndarray  # float64 (R,) sum ignoring NaN; NaN if all NaN
    first_ts: np.ndarray  # int64 (R,)
    last_ts: np.ndarray  # int64 (R,)


@njit(cache=True)
def _run_of_event(session, series):
    n = session.shape[0]
    run = np.empty(n, np.int64)
    r = -1
    for i in range(n):
        if i == 0 or session[i] != session[i - 1] or series[i] < 0 or series[i] != series[i - 1]:
            r += 1
        run[i] = r
    return run


@njit(cache=True)
def _aggregate(run, series, season, episode, duration, ts, n_runs):
    start = np.empty(n_runs, np.int64)
    length = np.zeros(n_runs, np.int32)
    ser = np.empty(n_runs, np.int32)
    fs = np.empty(n_runs, np.int32)
    fe = np.empty(n_runs, np.int32)
    ls = np.empty(n_runs, np.int32)
    le = np.empty(n_runs, np.int32)
    dur = np.zeros(n_runs, np.float64)
    seen_dur = np.zeros(n_runs, np.bool_)
    fts = np.empty(n_runs, np.int64)
    lts = np.empty(n_runs, np.int64)
    for i in range(run.shape[0]):
        r = run[i]
        if length[r] == 0:
            start[r] = i
            ser[r] = series[i]
            fs[r] = season[i]
            fe[r] = episode[i]
            fts[r] = ts[i]
        length[r] += 1
        ls[r] = season[i]
        le[r] = episode[i]
        lts[r] = ts[i]
        d = duration[i]
        if not np.isnan(d):
            dur[r] += d
            seen_dur[r] = True
    for r in range(n_runs):
        if not seen_dur[r]:
            dur[r] = np.nan
    return start, length, ser, fs, fe, ls, le, dur, fts, lts


def aggregate_series(session, series, season, episode, duration, ts) -> SeriesRuns:
    """Group consecutive same-series events of a session into runs.

    Args (all shape (n,), rows sorted by (user, ts), e.g. after stable_order):
        session: int, non-decreasing (from sessionize).
        series: int series code >= 0, or -1 (or Arrow null) for a non-series event;
            each -1 event is its own run.
        season, episode: int, -1 (or Arrow null) when unknown.
        duration: float seconds, NaN (or Arrow null) when unknown.
        ts: int timestamps.

    Returns:
        SeriesRuns: ``run_of_event`` (n,) and per-run arrays of length R. first_* / last_*
        come from the run's first / last event (-1 where that event has no value).
    """
    session = as_int(session, "session")
    n = session.shape[0]
    series = as_int(series, "series", np.int32, null_fill=-1)
    season = as_int(season, "season", np.int32, null_fill=-1)
    episode = as_int(episode, "episode", np.int32, null_fill=-1)
    duration = as_float(duration, "duration")
    ts = as_int(ts, "ts")
    check_lengths(n, ("series", series), ("season", season), ("episode", episode),
                  ("duration", duration), ("ts", ts))
    if n > 1 and np.any(session[1:] < session[:-1]):
        raise ValueError("session must be non-decreasing; sort with stable_order and number sessions with sessionize")
    if n and series.min() < -1:
        raise ValueError("series must be a code >= 0 or -1 for events without a series")
    run = _run_of_event(session, series)
    n_runs = int(run[-1]) + 1 if n else 0
    return SeriesRuns(run, *_aggregate(run, series, season, episode, duration, ts, np.int64(n_runs)))
