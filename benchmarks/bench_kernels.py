"""Benchmark the fused Numba data path (minivz.kernels) against polars and pandas on the same logic.

    python benchmarks/bench_kernels.py [--sizes 1e6,3e6,1e7] [--repeat N]
    python benchmarks/bench_kernels.py --sizes 1e5 --repeat 1            # quick look
    python benchmarks/bench_kernels.py --skip-pandas-above 1e7           # pandas at 10M too (slow, GBs)

For each size, synthetic events from ``minivz.sources.generate_streaming(n_users=n/100, n_events=n,
seed=0)`` (SYNTHETIC data) are encoded, untimed, to dense NumPy arrays: user codes int64, ts int64 µs,
item codes int32 (catalog order), series code per event int32 (-1 none), season / episode int32 (-1
none), duration float64 (NaN for null). The generator writes rows grouped by user in time order; by
default the rows are shuffled before timing (``--input-order shuffled``), so every implementation
really sorts (``time`` orders rows by ts, like a log that arrives in time order; ``generator`` keeps
the generator's order).

Then, on the same arrays, the same logic is timed three ways:

    minivz  stable_order -> reorder -> sessionize(gap 30 min) -> aggregate_series ->
            split_leave_last_out(all eligible) -> build_examples(history_len=100, n_candidates=10,
            uniform negatives, seed=0, tie_rule="strict", min_history=1)
    polars  idiomatic polars: sort, shift/cum_sum flags, group_by aggregation, window expressions,
            and vectorized oversampling of negatives (draw, join against the (user, item,
            first_row) table, dedupe, keep 9, resample the few short targets in a loop)
    pandas  the same in vectorized pandas (sort_values, groupby/shift/cumsum/transform, merge)
    floor   np.copy of the 7 input arrays: the cost of touching the data once
    write   np.ones of as many bytes as minivz's outputs (~4.7x its input): writing the result once

All three produce: the sorted order, session per event, series runs (count, first/last
season/episode, duration sum ignoring NaN, first/last ts), leave-last-out split, and per example the
history range [hist_start, hist_end), the discovery flag and 9 negatives. minivz also shuffles the
candidates and records the label column; polars/pandas do not (they return target + 9 negatives).
The negatives are random and differ between implementations; they are checked for validity
(distinct, in range, not seen by the user before the end of the target's tie group) on a sample.
On the first size <= 1M (or the smallest size) polars' and pandas' sessions, runs, split, hist
ranges and discovery flags are asserted equal to minivz's.

Times are best of --repeat (default 3 for n <= 3M, 1 above) with time.perf_counter. The JIT is
warmed on a tiny input first (its time, compile or cache load, is reported separately).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time

import numba
import numpy as np

GAP_US = 30 * 60 * 1_000_000  # 30 minutes in µs
HISTORY_LEN = 100
N_NEG = 9
DRAWS = 12  # negatives drawn per target before filtering (9 + margin; ~1% of draws are seen items)
CHUNK = 2_000_000  # targets per oversampling chunk (bounds memory: CHUNK * DRAWS candidate rows)


# --------------------------------------------------------------------------------------------------
# data


def encode(result, order: str = "shuffled", seed: int = 0) -> dict:
    """Dense NumPy arrays from an IngestResult (events + catalog). Not timed."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ev, items = result.events, result.items
    user = ev["user_id"].combine_chunks().dictionary_encode().indices.to_numpy().astype(np.int64)
    ts = ev["ts"].combine_chunks().cast(pa.int64()).to_numpy()
    item_idx = pc.index_in(ev["item_id"], value_set=items["item_id"].combine_chunks())
    if item_idx.null_count:
        raise ValueError(f"{item_idx.null_count} events name items missing from the catalog")
    item = item_idx.combine_chunks().to_numpy().astype(np.int32)
    ser_cat = items["series_id"].combine_chunks().dictionary_encode().indices
    ser_cat = ser_cat.fill_null(-1).to_numpy().astype(np.int32)
    season_cat = items["season"].combine_chunks().fill_null(-1).to_numpy().astype(np.int32)
    episode_cat = items["episode"].combine_chunks().fill_null(-1).to_numpy().astype(np.int32)
    duration = ev["duration_s"].combine_chunks().to_numpy(zero_copy_only=False).astype(np.float64)
    cols = {
        "user": user, "ts": ts, "item": item,
        "series": ser_cat[item], "season": season_cat[item], "episode": episode_cat[item],
        "duration": duration,
    }
    if order == "shuffled":
        p = np.random.default_rng(seed).permutation(len(user))
    elif order == "time":
        p = np.argsort(ts, kind="stable")
    elif order == "generator":
        p = None
    else:
        raise ValueError(f"order={order!r} must be shuffled, time or generator")
    if p is not None:
        cols = {k: np.ascontiguousarray(v[p]) for k, v in cols.items()}
    cols["n_items"] = int(items.num_rows)
    return cols


def make_data(n_events: int, order: str = "shuffled", n_users: int | None = None) -> dict:
    from minivz.sources import generate_streaming

    n_users = n_users or max(10, n_events // 100)
    return encode(generate_streaming(n_users=n_users, n_events=n_events, seed=0), order)


ARRAYS = ("user", "ts", "item", "series", "season", "episode", "duration")


# --------------------------------------------------------------------------------------------------
# 1. minivz (fused Numba kernels)


def run_minivz(d: dict, seed: int = 0, stages: dict | None = None) -> dict:
    from minivz.kernels import (aggregate_series, apply_order, build_examples, sessionize,
                                split_leave_last_out, stable_order)

    t0 = time.perf_counter()
    perm = stable_order(d["user"], d["ts"], d["item"])
    s = dict(zip(ARRAYS, apply_order(perm, *(d[k] for k in ARRAYS))))
    t1 = time.perf_counter()
    session = sessionize(s["user"], s["ts"], GAP_US)
    t2 = time.perf_counter()
    runs = aggregate_series(session, s["series"], s["season"], s["episode"], s["duration"], s["ts"])
    t3 = time.perf_counter()
    split = split_leave_last_out(s["user"], None)
    t4 = time.perf_counter()
    ex = build_examples(s["user"], s["ts"], s["item"], d["n_items"], split, history_len=HISTORY_LEN,
                        n_candidates=N_NEG + 1, negatives="uniform", seed=seed, tie_rule="strict",
                        min_history=1)
    t5 = time.perf_counter()
    if stages is not None:
        for name, dt in zip(("sort", "sessionize", "series", "split", "examples"),
                            (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            stages[name] = min(stages.get(name, np.inf), dt)
    return {
        "perm": perm, "session": session, "run_length": runs.length, "run_dur": runs.total_duration,
        "run_first_ts": runs.first_ts, "run_last_episode": runs.last_episode, "split": split,
        "examples": ex, "sorted": s, "runs": runs,
    }


def _draws(rng, n_targets: int, k: int, n_items: int) -> np.ndarray:
    return rng.integers(0, n_items, size=n_targets * k, dtype=np.int32)


# --------------------------------------------------------------------------------------------------
# 2. polars


def run_polars(d: dict, seed: int = 0) -> dict:
    import polars as pl

    n_items = d["n_items"]
    df = pl.DataFrame({k: d[k] for k in ARRAYS}).with_columns(pl.col("duration").fill_nan(None))
    c = pl.col
    ev = (
        df.lazy()
        .sort("user", "ts", "item", maintain_order=True)
        .with_row_index("row")
        .with_columns(
            c("row").cast(pl.Int64),
            new_user=(c("user") != c("user").shift(1)).fill_null(True),
            new_tie=((c("user") != c("user").shift(1)) | (c("ts") != c("ts").shift(1))).fill_null(True),
            last_tie=((c("user") != c("user").shift(-1)) | (c("ts") != c("ts").shift(-1))).fill_null(True),
        )
        .with_columns(
            new_session=c("new_user") | ((c("ts") - c("ts").shift(1)) > GAP_US).fill_null(True),
            us=pl.when(c("new_user")).then(c("row")).forward_fill(),
            g_start=pl.when(c("new_tie")).then(c("row")).forward_fill(),
            g_end=pl.when(c("last_tie")).then(c("row") + 1).backward_fill(),
            from_end=pl.int_range(pl.len(), 0, -1, dtype=pl.Int64).over("user") - 1,
            first_row=c("row").min().over("user", "item"),
        )
        .with_columns(
            session=c("new_session").cum_sum() - 1,
            run=(c("new_session") | (c("series") < 0) | (c("series") != c("series").shift(1)).fill_null(True))
            .cum_sum() - 1,
            split=pl.when(c("from_end") == 0).then(2).when(c("from_end") == 1).then(1).otherwise(0)
            .cast(pl.Int8),
            hist_start=pl.max_horizontal(c("us"), c("g_start") - HISTORY_LEN),
            hist_end=c("g_start"),
            discovery=c("first_row") >= c("g_start"),
            # distinct items of the user in rows [us, g_end): first occurrences counted up to the
            # last row of the tie group
            n_seen=pl.when(c("last_tie")).then((c("first_row") == c("row")).cum_sum().over("user"))
            .backward_fill(),
        )
    ).collect()
    runs = (
        ev.lazy().group_by("run", maintain_order=True).agg(
            start=c("row").first(), length=pl.len(), series=c("series").first(),
            first_season=c("season").first(), first_episode=c("episode").first(),
            last_season=c("season").last(), last_episode=c("episode").last(),
            total_duration=pl.when(c("duration").count() > 0).then(c("duration").sum()),
            first_ts=c("ts").first(), last_ts=c("ts").last(),
        )
    ).collect()
    ex = ev.filter(
        (c("split") >= 0) & (c("hist_end") - c("hist_start") >= 1) & (n_items - c("n_seen") >= N_NEG)
    ).select("row", "user", "item", "hist_start", "hist_end", "discovery", "g_end")
    seen = ev.filter(c("first_row") == c("row")).select(
        key=c("user") * n_items + c("item"), first_row=c("row"))
    negs = _polars_negatives(ex.select("row", "user", "g_end"), seen, n_items, seed)
    return {"sorted": ev, "runs": runs, "examples": ex, "negatives": negs}


def _polars_negatives(targets, seen, n_items: int, seed: int):
    """9 distinct uniform items per target, none seen by the user before the end of its tie group.

    Vectorized oversampling: DRAWS random items per target, left-join on the (user, item) ->
    first_row table, drop seen ones, keep the first 9 distinct per target (group_by on the sorted
    target row); targets left short are redrawn, their earlier picks kept first, until none is short.
    """
    import polars as pl

    c = pl.col
    rng = np.random.default_rng(seed)
    out = []
    for lo in range(0, targets.height, CHUNK):
        pending, k, kept = targets.slice(lo, CHUNK), DRAWS, None
        for _ in range(100):
            new = (
                pending.select(c("row", "user", "g_end").repeat_by(k).explode())
                .with_columns(item=pl.Series(_draws(rng, pending.height, k, n_items)))
                .with_columns(key=c("user") * n_items + c("item"))
                .join(seen, on="key", how="left", maintain_order="left")
                .filter(c("first_row").is_null() | (c("first_row") >= c("g_end")))
                .select("row", "item")
            )
            rest = None
            if kept is not None:  # earlier picks of the still-short targets go first
                short = kept.join(pending.select("row"), on="row", how="semi")
                rest = kept.join(pending.select("row"), on="row", how="anti")
                new = pl.concat([short.explode("item"), new]).sort("row", maintain_order=True)
            picked = (
                new.with_columns(c("row").set_sorted())
                .group_by("row", maintain_order=True)
                .agg(c("item").unique(maintain_order=True).head(N_NEG))
            )
            kept = picked if rest is None else pl.concat([rest, picked])
            pending = pending.join(picked.filter(c("item").list.len() == N_NEG).select("row"), on="row",
                                   how="anti")
            if pending.height == 0:
                break
            k = 4 * N_NEG
        else:
            raise RuntimeError("polars negatives: resampling did not converge")
        out.append(kept)
    return pl.concat(out).sort("row").explode("item")


# --------------------------------------------------------------------------------------------------
# 3. pandas


def run_pandas(d: dict, seed: int = 0) -> dict:
    import pandas as pd

    n_items = d["n_items"]
    df = pd.DataFrame({k: d[k] for k in ARRAYS})
    df = df.sort_values(["user", "ts", "item"], kind="stable", ignore_index=True)
    row = np.arange(len(df), dtype=np.int64)
    df["row"] = row
    user, ts, series = df["user"], df["ts"], df["series"]
    new_user = user.ne(user.shift())
    new_tie = new_user | ts.ne(ts.shift())
    new_session = new_user | ts.diff().gt(GAP_US)
    df["session"] = new_session.cumsum() - 1
    df["run"] = (new_session | series.lt(0) | series.ne(series.shift())).cumsum() - 1
    runs = pandas_runs(df, "run")
    from_end = df.groupby("user", sort=False).cumcount(ascending=False)
    df["split"] = np.select([from_end.eq(0), from_end.eq(1)], [2, 1], 0).astype(np.int8)
    tie = new_tie.cumsum()
    df["us"] = df.groupby("user", sort=False)["row"].transform("min")
    df["g_start"] = df.groupby(tie, sort=False)["row"].transform("min")
    df["g_end"] = df.groupby(tie, sort=False)["row"].transform("max") + 1
    df["first_row"] = df.groupby(["user", "item"], sort=False)["row"].transform("min")
    is_first = df["first_row"].eq(df["row"])
    n_seen = is_first.groupby(df["user"], sort=False).cumsum()
    n_seen = n_seen.groupby(tie, sort=False).transform("last")
    df["hist_start"] = np.maximum(df["us"], df["g_start"] - HISTORY_LEN)
    df["hist_end"] = df["g_start"]
    df["discovery"] = df["first_row"].ge(df["g_start"])
    ok = df["split"].ge(0) & (df["hist_end"] - df["hist_start"]).ge(1) & (n_items - n_seen).ge(N_NEG)
    ex = df.loc[ok, ["row", "user", "item", "hist_start", "hist_end", "discovery", "g_end"]]
    seen = pd.DataFrame({"key": df.loc[is_first, "user"].to_numpy() * n_items + df.loc[is_first, "item"].to_numpy(),
                         "first_row": df.loc[is_first, "row"].to_numpy()})
    negs = _pandas_negatives(ex[["row", "user", "g_end"]], seen, n_items, seed)
    return {"sorted": df, "runs": runs, "examples": ex, "negatives": negs}


def pandas_runs(df, by):
    """Per-run table of ``df`` grouped by ``by`` (a column or an array of run ids, contiguous runs):
    first row, length, first/last season and episode, duration sum ignoring NaN (NaN if none), first/last ts."""
    runs = df.groupby(by, sort=False).agg(
        start=("row", "first"), length=("row", "size"), series=("series", "first"),
        first_season=("season", "first"), first_episode=("episode", "first"),
        last_season=("season", "last"), last_episode=("episode", "last"),
        total_duration=("duration", "sum"), n_dur=("duration", "count"),
        first_ts=("ts", "first"), last_ts=("ts", "last"),
    )
    runs.loc[runs["n_dur"] == 0, "total_duration"] = np.nan
    return runs


def _pandas_negatives(targets, seen, n_items: int, seed: int):
    """Same oversampling as _polars_negatives, in pandas (Series.map on the seen table)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    seen = seen.set_index("key")["first_row"]
    out = []
    for lo in range(0, len(targets), CHUNK):
        pending, k, kept = targets.iloc[lo:lo + CHUNK], DRAWS, None
        for _ in range(100):
            new = pd.DataFrame({
                "row": np.repeat(pending["row"].to_numpy(), k),
                "item": _draws(rng, len(pending), k, n_items),
            })
            user = np.repeat(pending["user"].to_numpy(), k)
            g_end = np.repeat(pending["g_end"].to_numpy(), k)
            first_row = pd.Series(user * n_items + new["item"].to_numpy()).map(seen).to_numpy()
            new = new[np.isnan(first_row) | (first_row >= g_end)]
            rest = None
            if kept is not None:  # earlier picks of the still-short targets go first
                short = kept["row"].isin(pending["row"])
                rest = kept[~short]
                new = pd.concat([kept[short], new], ignore_index=True)
            pair = pd.Series(new["row"].to_numpy() * n_items + new["item"].to_numpy())
            new = new[~pair.duplicated().to_numpy()]
            picked = new[new.groupby("row", sort=False).cumcount() < N_NEG]
            kept = picked if rest is None else pd.concat([rest, picked], ignore_index=True)
            cnt = picked.groupby("row", sort=False).size()
            pending = pending[~pending["row"].isin(cnt.index[cnt == N_NEG])]
            if len(pending) == 0:
                break
            k = 4 * N_NEG
        else:
            raise RuntimeError("pandas negatives: resampling did not converge")
        out.append(kept)
    return pd.concat(out, ignore_index=True).sort_values("row", kind="stable", ignore_index=True)


# --------------------------------------------------------------------------------------------------
# agreement checks


def to_common(name: str, res: dict) -> dict:
    """Session, runs, split, examples as NumPy arrays in one layout (after the timed part)."""
    if name == "minivz":
        keys = ("session", "run_length", "run_dur", "run_first_ts", "run_last_episode", "split")
        out = {k: res[k] for k in keys}
        ex = res["examples"]
        lab = ex.label.astype(np.int64)
        e = np.arange(len(lab))
        mask = np.ones(ex.candidates.shape, bool)
        mask[e, lab] = False
        out.update(target_row=ex.target_row, hist_start=ex.hist_start, hist_end=ex.hist_end,
                   discovery=ex.discovery,
                   negatives=ex.candidates[mask].reshape(len(lab), N_NEG))
        out["user"] = res["sorted"]["user"]
        out["item"] = res["sorted"]["item"]
        return out
    ev, runs, ex, neg = res["sorted"], res["runs"], res["examples"], res["negatives"]
    col = (lambda f, k: f[k].to_numpy())
    rows = col(ex, "row")
    neg_row, neg_item = col(neg, "row"), col(neg, "item")
    if not np.array_equal(neg_row, np.repeat(rows, N_NEG)):
        raise AssertionError(f"{name}: not exactly {N_NEG} negatives per example")
    dur = col(runs, "total_duration").astype(np.float64)
    return {
        "session": col(ev, "session"), "run_length": col(runs, "length"), "run_dur": dur,
        "run_first_ts": col(runs, "first_ts"), "run_last_episode": col(runs, "last_episode"),
        "split": col(ev, "split"), "target_row": rows, "hist_start": col(ex, "hist_start"),
        "hist_end": col(ex, "hist_end"), "discovery": col(ex, "discovery").astype(bool),
        "negatives": neg_item.reshape(-1, N_NEG), "user": col(ev, "user"), "item": col(ev, "item"),
    }


def assert_agree(ref: dict, other: dict, name: str) -> None:
    for k in ("user", "item", "session", "split", "run_length", "run_first_ts", "run_last_episode",
              "target_row", "hist_start", "hist_end", "discovery"):
        a, b = np.asarray(ref[k]), np.asarray(other[k])
        if a.shape != b.shape or not np.array_equal(a.astype(np.int64), b.astype(np.int64)):
            bad = "shape" if a.shape != b.shape else int(np.flatnonzero(a != b)[0])
            raise AssertionError(f"{name} disagrees with minivz on {k} (at {bad})")
    a, b = ref["run_dur"], other["run_dur"]
    if not np.allclose(a, b, rtol=1e-9, atol=1e-6, equal_nan=True):
        raise AssertionError(f"{name} disagrees with minivz on run total_duration")


def check_negatives(c: dict, n_items: int, sample: int = 2000, seed: int = 1) -> None:
    """Negatives are in range, distinct, not the target, and unseen before the tie group's end."""
    user, item = c["user"], c["item"]
    n = len(user)
    ts_end = _tie_group_end(user, c)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(c["target_row"]), size=min(sample, len(c["target_row"])), replace=False)
    us_of = np.searchsorted(user, user, side="left")  # rows are sorted by user
    for e in picks:
        t = int(c["target_row"][e])
        negs = [int(x) for x in c["negatives"][e]]
        if len(set(negs)) != N_NEG or min(negs) < 0 or max(negs) >= n_items:
            raise AssertionError(f"example {e}: bad negatives {negs}")
        seen = set(item[us_of[t]:ts_end[t]].tolist())
        if seen & set(negs):
            raise AssertionError(f"example {e}: negatives {sorted(seen & set(negs))} were seen")
    assert n == len(item)


def _tie_group_end(user, c) -> np.ndarray:
    # hist_end is the tie group start; the group end is the next group's start (computed from ts
    # in the minivz-sorted arrays when available, else from user boundaries and hist_end).
    ts = c.get("ts")
    n = len(user)
    if ts is None:
        raise KeyError("ts")
    last = np.ones(n, bool)
    last[:-1] = (user[1:] != user[:-1]) | (ts[1:] != ts[:-1])
    ends = np.flatnonzero(last) + 1
    return ends[np.searchsorted(ends, np.arange(n), side="right")]


# --------------------------------------------------------------------------------------------------
# driver


def best_of(fn, repeat: int):
    best, out = np.inf, None
    for _ in range(repeat):
        out = None
        gc.collect()
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def warm_up() -> float:
    d = make_data(2000, n_users=20)
    t = time.perf_counter()
    run_minivz(d)
    return time.perf_counter() - t


def floor_copy(d: dict):
    return [np.copy(d[k]) for k in ARRAYS]


def output_bytes(r_mv: dict) -> int:
    """Bytes of every array the fused path returns (the order, the sorted columns, sessions, runs,
    split, examples): the write floor writes that many fresh bytes once."""
    arrays = [r_mv["perm"], r_mv["session"], r_mv["split"], *r_mv["sorted"].values()]
    arrays += [a for a in r_mv["runs"] if isinstance(a, np.ndarray)]
    arrays += [a for a in r_mv["examples"] if isinstance(a, np.ndarray)]
    return int(sum(a.nbytes for a in arrays))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e6,3e6,1e7", help="comma-separated event counts")
    ap.add_argument("--repeat", type=int, default=None, help="best of N (default 3 for n <= 3M, else 1)")
    ap.add_argument("--skip-pandas-above", type=float, default=3e6, help="skip pandas above this many events")
    ap.add_argument("--input-order", default="shuffled", choices=("shuffled", "time", "generator"))
    args = ap.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]

    import pandas as pd
    import polars as pl

    print(f"machine: {platform.machine()} {platform.system()}, os.cpu_count()={os.cpu_count()}, "
          f"usable cores={len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}")
    print(f"versions: numpy {np.__version__}, numba {numba.__version__}, polars {pl.__version__} "
          f"(thread pool {pl.thread_pool_size()}), pandas {pd.__version__}")
    print(f"threads: minivz's stable_order segment sorts, column reorder (apply_order) and build_examples run "
          f"on Numba's {numba.get_num_threads()} threads (prange; results identical for any thread count), its "
          "other kernels on one; polars uses its thread pool (all cores); pandas and the floor are "
          "single-threaded.")
    print(f"input order: {args.input_order}; gap 30 min; history {HISTORY_LEN}; 1 target + {N_NEG} "
          f"uniform negatives; tie_rule strict; negatives oversampling: {DRAWS} draws/target, chunks of "
          f"{CHUNK:,} targets")
    jit = warm_up()
    print(f"JIT warm-up on 2,000 events (compile or load from cache, not counted below): {jit:.2f} s")

    summary = []
    verified = False
    for n in sizes:
        repeat = args.repeat or (3 if n <= 3_000_000 else 1)
        t = time.perf_counter()
        d = make_data(n, args.input_order)
        gen = time.perf_counter() - t
        print(f"\n=== {n:,} events, {len(np.unique(d['user'])):,} users, {d['n_items']:,} items "
              f"(generate+encode {gen:.1f} s, untimed), best of {repeat} ===")
        stages: dict = {}
        t_floor, _ = best_of(lambda: floor_copy(d), repeat)
        t_mv, r_mv = best_of(lambda: run_minivz(d, stages=stages), repeat)
        t_pl, r_pl = best_of(lambda: run_polars(d), repeat)
        do_pandas = n <= args.skip_pandas_above
        t_pd, r_pd = best_of(lambda: run_pandas(d), repeat) if do_pandas else (None, None)

        out_b = output_bytes(r_mv)
        t_write, _ = best_of(lambda: np.ones(out_b, np.uint8), repeat)
        c_mv = to_common("minivz", r_mv)
        c_mv["ts"] = r_mv["sorted"]["ts"]
        check_negatives(c_mv, d["n_items"])
        c_pl = to_common("polars", r_pl)
        c_pl["ts"] = c_mv["ts"]
        check_negatives(c_pl, d["n_items"])
        checks = "negatives valid on a 2,000-example sample (minivz, polars"
        if r_pd is not None:
            c_pd = to_common("pandas", r_pd)
            c_pd["ts"] = c_mv["ts"]
            check_negatives(c_pd, d["n_items"])
            checks += ", pandas"
        checks += ")"
        if not verified or n <= 1_000_000:
            assert_agree(c_mv, c_pl, "polars")
            checks += "; polars == minivz on sessions, runs, split, hist ranges, discovery"
            if r_pd is not None:
                assert_agree(c_mv, c_pd, "pandas")
                checks += "; pandas == minivz too"
            verified = True
        n_ex = len(c_mv["target_row"])
        del r_mv, r_pl, r_pd, c_mv, c_pl
        print(f"examples: {n_ex:,}; {checks}")

        def fmt(x):
            return "skipped" if x is None else f"{x:8.3f}"

        print(f"{'impl':<8} {'seconds':>9} {'x minivz':>9} {'ns/event':>9}")
        for name, tt in (("minivz", t_mv), ("polars", t_pl), ("pandas", t_pd), ("floor", t_floor),
                         ("write", t_write)):
            if tt is None:
                print(f"{name:<8} {'skipped':>9}   (n > --skip-pandas-above {args.skip_pandas_above:.0e})")
                continue
            print(f"{name:<8} {fmt(tt):>9} {tt / t_mv:9.2f} {tt / n * 1e9:9.1f}")
        print("minivz stages (best per stage): " + ", ".join(f"{k} {v:.3f} s" for k, v in stages.items()))
        print(f"ratios: polars/minivz = {t_pl / t_mv:.2f} (target >= 2), pandas/minivz = "
              + (f"{t_pd / t_mv:.2f}" if t_pd else "n/a") + " (target >= 10)")
        print(f"write floor: {out_b / 1e6:,.0f} MB of output written once (np.ones); minivz = "
              f"{t_mv / t_write:.1f}x that")
        summary.append((n, t_mv, t_pl, t_pd, t_floor, t_write))
        del d
        gc.collect()

    print("\n=== summary ===")
    print(f"{'events':>12} {'minivz s':>9} {'polars s':>9} {'pandas s':>9} {'floor s':>8} "
          f"{'mv/floor':>8} {'write s':>8} {'mv/write':>8} {'pl/mv':>6} {'pd/mv':>6} {'mv ns/ev':>9}")
    for n, a, b, c, f, w in summary:
        cs = f"{c:9.3f}" if c is not None else f"{'skipped':>9}"
        cr = f"{c / a:6.2f}" if c is not None else f"{'n/a':>6}"
        print(f"{n:>12,} {a:9.3f} {b:9.3f} {cs} {f:8.4f} {a / f:8.1f} {w:8.4f} {a / w:8.1f} {b / a:6.2f} {cr} "
              f"{a / n * 1e9:9.1f}")
    print("floor = np.copy of the 7 input columns; write = writing the fused path's output bytes once "
          "(~4.7x the input's bytes: each example carries 10 candidates). The fused path sorts "
          "(stable_order) and draws negatives, so it cannot come near one copy of its input; "
          "benchmarks/bench_series.py times the sessionize + series stage against its own floor")
    if len(summary) > 1:
        (n0, a0, *_), (n1, a1, *_) = summary[0], summary[-1]
        r = (a1 / n1) / (a0 / n0)
        print(f"linearity: minivz time/event at {n1:,} vs {n0:,} = {r:.2f} (1.00 = linear)")


if __name__ == "__main__":
    main()
