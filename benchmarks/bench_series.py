"""Benchmark the sessionize + series-run stage of the data path against pandas, polars and a copy.

    python benchmarks/bench_series.py [--sizes 1e6,3e6,1e7] [--repeat 3]

The stage minivz/examples.py runs after sorting: ``sessionize`` (30-minute gap) then
``aggregate_series`` (consecutive episodes of one series in a session collapse into one run with its
length, first/last season and episode, duration sum ignoring NaN, first/last ts). Input: the events of
``minivz.sources.generate_streaming(n_users=n/100, n_events=n, seed=0)`` (SYNTHETIC data), encoded and
sorted by (user, ts, item) untimed, as dense NumPy arrays (user int64, ts int64 µs, series / season /
episode int32 with -1 for none, duration float64 with NaN for null).

Timed on the same arrays, best of --repeat each:

    floor    np.copy of the six input columns (user, ts, series, season, episode, duration):
             reading and writing the data once, the physical floor of any pass over it
    minivz   sessionize + aggregate_series (single-threaded Numba), and each kernel alone with the
             copy of its own input columns as its floor
    polars   idiomatic lazy polars: shift/cum_sum flags, group_by(run, maintain_order) first/last/
             sum/len (all cores)
    pandas   idiomatic pandas: shift/diff/cumsum flags, groupby(run, sort=False).agg

All three return the session per event, the run per event and the per-run table; on the first size
their outputs are asserted equal to minivz's (duration sums to 1e-9 relative). The summary prints
minivz / floor beside polars / minivz and pandas / minivz, and minivz's time per event at the largest
size against the smallest (1.00 = linear).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time

import numpy as np

from bench_kernels import GAP_US, best_of, make_data, pandas_runs

COLS = ("user", "ts", "series", "season", "episode", "duration")
RUN_FIELDS = ("start", "length", "series", "first_season", "first_episode", "last_season", "last_episode",
              "total_duration", "first_ts", "last_ts")


def sorted_input(n: int) -> dict:
    from minivz.kernels import stable_order

    d = make_data(n, "generator")
    perm = stable_order(d["user"], d["ts"], d["item"])
    return {k: np.ascontiguousarray(d[k][perm]) for k in COLS}


def run_minivz(d: dict, stages: dict | None = None) -> dict:
    from minivz.kernels import aggregate_series, sessionize

    t0 = time.perf_counter()
    session = sessionize(d["user"], d["ts"], GAP_US)
    t1 = time.perf_counter()
    runs = aggregate_series(session, d["series"], d["season"], d["episode"], d["duration"], d["ts"])
    t2 = time.perf_counter()
    if stages is not None:
        stages["sessionize"] = min(stages.get("sessionize", np.inf), t1 - t0)
        stages["aggregate_series"] = min(stages.get("aggregate_series", np.inf), t2 - t1)
    out = {"session": session, "run": runs.run_of_event}
    out.update({k: getattr(runs, k) for k in RUN_FIELDS})
    return out


def run_polars(d: dict) -> dict:
    import polars as pl

    c = pl.col
    ev = (
        pl.DataFrame({k: d[k] for k in COLS}).lazy()
        .with_columns(c("duration").fill_nan(None))
        .with_row_index("row")
        .with_columns(
            new_session=((c("user") != c("user").shift(1)) | ((c("ts") - c("ts").shift(1)) > GAP_US))
            .fill_null(True),
        )
        .with_columns(
            session=c("new_session").cum_sum().cast(pl.Int64) - 1,
            run=(c("new_session") | (c("series") < 0) | (c("series") != c("series").shift(1)).fill_null(True))
            .cum_sum().cast(pl.Int64) - 1,
        )
        .collect()
    )
    runs = (
        ev.lazy()
        .group_by("run", maintain_order=True)
        .agg(
            start=c("row").first(), length=pl.len(), series=c("series").first(),
            first_season=c("season").first(), first_episode=c("episode").first(),
            last_season=c("season").last(), last_episode=c("episode").last(),
            total_duration=pl.when(c("duration").count() > 0).then(c("duration").sum()),
            first_ts=c("ts").first(), last_ts=c("ts").last(),
        )
        .collect()
    )
    return {"session": ev["session"], "run": ev["run"], "runs": runs}


def run_pandas(d: dict) -> dict:
    import pandas as pd

    df = pd.DataFrame({k: d[k] for k in COLS})
    df["row"] = np.arange(len(df), dtype=np.int64)
    user, ts, series = df["user"], df["ts"], df["series"]
    new_session = user.ne(user.shift()) | ts.diff().gt(GAP_US)
    session = new_session.cumsum() - 1
    run = (new_session | series.lt(0) | series.ne(series.shift())).cumsum() - 1
    return {"session": session, "run": run, "runs": pandas_runs(df, run.to_numpy())}


def assert_agree(ref: dict, got: dict, name: str) -> None:
    """The other implementation's session, run and per-run table equal minivz's."""
    def arr(x):
        return x.to_numpy() if hasattr(x, "to_numpy") else np.asarray(x)

    pairs = [("session", ref["session"], arr(got["session"])), ("run", ref["run"], arr(got["run"]))]
    pairs += [(k, ref[k], arr(got["runs"][k])) for k in RUN_FIELDS]
    for k, a, b in pairs:
        b = np.asarray(b, dtype=np.float64 if k == "total_duration" else np.int64)
        if a.shape != b.shape:
            raise AssertionError(f"{name}: {k} has shape {b.shape}, minivz {a.shape}")
        if k == "total_duration":
            ok = np.isclose(a, b, rtol=1e-9, atol=1e-6, equal_nan=True)
        else:
            ok = a.astype(np.int64) == b
        if not ok.all():
            raise AssertionError(f"{name} disagrees with minivz on {k} at row {int(np.flatnonzero(~ok)[0])}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e6,3e6,1e7", help="comma-separated event counts")
    ap.add_argument("--repeat", type=int, default=3, help="best of N")
    args = ap.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]

    import numba
    import pandas as pd
    import polars as pl

    print(f"machine: {platform.machine()}, os.cpu_count()={os.cpu_count()}; numpy {np.__version__}, "
          f"numba {numba.__version__}, polars {pl.__version__} (thread pool {pl.thread_pool_size()}), "
          f"pandas {pd.__version__}; minivz kernels and pandas single-threaded, polars all cores")
    run_minivz(sorted_input(2000))  # JIT compile or cache load, untimed
    summary = []
    for i, n in enumerate(sizes):
        d = sorted_input(n)
        stages: dict = {}
        t_floor, _ = best_of(lambda: [np.copy(d[k]) for k in COLS], args.repeat)
        t_floor_s, _ = best_of(lambda: [np.copy(d[k]) for k in ("user", "ts")], args.repeat)
        t_mv, r_mv = best_of(lambda: run_minivz(d, stages), args.repeat)
        t_pl, r_pl = best_of(lambda: run_polars(d), args.repeat)
        t_pd, r_pd = best_of(lambda: run_pandas(d), args.repeat)
        if i == 0:
            assert_agree(r_mv, r_pl, "polars")
            assert_agree(r_mv, r_pd, "pandas")
        n_runs = len(r_mv["start"])
        del r_mv, r_pl, r_pd
        # aggregate_series reads session (int64) in place of user: same bytes as the six-column floor
        t_agg = stages["aggregate_series"]
        print(f"\n{n:,} events, {n_runs:,} runs, best of {args.repeat}"
              + ("; polars and pandas outputs == minivz's" if i == 0 else ""))
        print(f"{'':<26} {'seconds':>8} {'x floor':>8}")
        print(f"{'floor (copy 6 columns)':<26} {t_floor:8.3f} {1.0:8.2f}")
        print(f"{'minivz sessionize':<26} {stages['sessionize']:8.3f} {stages['sessionize'] / t_floor_s:8.2f}"
              f"   (floor: copy of user, ts {t_floor_s:.3f} s)")
        print(f"{'minivz aggregate_series':<26} {t_agg:8.3f} {t_agg / t_floor:8.2f}   (floor: its 6 input columns)")
        print(f"{'minivz both':<26} {t_mv:8.3f} {t_mv / t_floor:8.2f}")
        print(f"{'polars':<26} {t_pl:8.3f} {t_pl / t_floor:8.2f}   polars/minivz = {t_pl / t_mv:.2f}")
        print(f"{'pandas':<26} {t_pd:8.3f} {t_pd / t_floor:8.2f}   pandas/minivz = {t_pd / t_mv:.2f}")
        summary.append((n, t_floor, t_mv, t_agg, t_pl, t_pd))
        del d
        gc.collect()

    print("\n=== summary: sessionize + aggregate_series (targets: minivz/floor <= 3, polars and pandas "
          "/ minivz >= 3) ===")
    print(f"{'events':>12} {'floor s':>8} {'minivz s':>9} {'mv/floor':>9} {'agg/floor':>9} {'pl/mv':>6} "
          f"{'pd/mv':>6} {'mv ns/ev':>9}")
    for n, f, mv, agg, tp, td in summary:
        print(f"{n:>12,} {f:8.3f} {mv:9.3f} {mv / f:9.2f} {agg / f:9.2f} {tp / mv:6.2f} {td / mv:6.2f} "
              f"{mv / n * 1e9:9.1f}")
    if len(summary) > 1:
        (n0, _, a0, *_), (n1, _, a1, *_) = summary[0], summary[-1]
        print(f"linearity: minivz time/event at {n1:,} vs {n0:,} = {(a1 / n1) / (a0 / n0):.2f} (1.00 = linear)")


if __name__ == "__main__":
    main()
