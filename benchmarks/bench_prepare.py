"""Benchmark the command a user runs, ``minivz data prepare``, against DuckDB and polars on the same job.

    pip install -e ".[bench]"                                   # duckdb + polars
    python benchmarks/bench_prepare.py                          # 1M and 10M events
    python benchmarks/bench_prepare.py --sizes 1e6 --keep /tmp/bp   # quick look, keep the inputs
    python benchmarks/bench_prepare.py --sizes 1e8 --memory-gb 8    # production size (needs the disk)
    python benchmarks/bench_prepare.py --sizes 1e6,1e7,1e8 --up-to polars=1e7   # all sizes, one table

Input: a production-style log (SYNTHETIC, seeded), written untimed as a hive-partitioned Parquet
dataset ``log/dt=YYYY-MM-DD/part-K.parquet`` (30 days x 4 parts = 120 files), typed columns: ``uid``
int64, ``sku`` int64, ``at`` timestamp[us, UTC], ``kind`` dictionary<string> (play / preview / stop),
``secs`` int32; n/40 users, 50,000 items, 0.5% of events re-delivered (exact copies, as an
at-least-once pipeline writes them).

The job, the same in every system: read the dataset, drop exact duplicate rows, order by (user, ts,
item), 30-minute sessions, per-user positions, leave-last-out split (last event test, the one before
valid), and for every target the strict history bounds (events strictly earlier, at most 100), targets
with no history skipped; write the events and the examples as Parquet.

    minivz  ``python -m minivz data prepare --input LOG_DIR --set memory_gb=M`` (the CLI, its reading and
            writing, under the same memory budget as DuckDB: past it, in shards of users), which
            ALSO draws 9 uniform negatives per target and the discovery flags, writes items/runs/
            rejects/manifest and counts rejects: more work than the others do. ``minivz-ray``: the same
            command with ``--set engine=ray --set engine_workers=2`` (one shard per core at least)
    duckdb  the same job in SQL (read_parquet with hive partitioning, DISTINCT, window functions, COPY
            TO Parquet), threads=2, memory_limit = --memory-gb, spilling to a temp dir; no negatives
    polars  the same in the lazy API, ``collect(engine="streaming")``, then write_parquet; no negatives
    floor   pyarrow reads every file of the dataset once (the columns, nothing else): the least any of
            them can take

Each system runs in its own process; wall time from the parent, peak RSS from ``os.wait4`` (the
child's ``ru_maxrss``: the largest one process), and the peak of the whole process tree's PSS
sampled every 0.5 s (Ray's workers and object store are other processes). Printed per size: seconds,
µs per event, peak GB, and each system's time and memory over minivz's (> 1: minivz is faster / leaner than that system; the issue's goal is >= 3 vs
DuckDB). At the end of each run the examples (target row, split, history bounds) of DuckDB and
polars are checked identical to minivz's, so every ratio is over the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_ITEMS = 50_000
DAYS, PARTS = 30, 4
DUP_SHARE = 0.005
GAP_US = 30 * 60 * 1_000_000
HISTORY = 100


def write_log(root: Path, n: int, seed: int = 0) -> int:
    """The hive-partitioned input, one day at a time (memory bounded by one day). Returns rows written."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    n_users = max(10, n // 40)
    day_us = 86_400 * 1_000_000
    t0 = 1_704_067_200 * 1_000_000  # 2024-01-01
    total = 0
    for day in range(DAYS):
        m = n // DAYS + (1 if day < n % DAYS else 0)
        users = rng.integers(1, n_users + 1, m, dtype=np.int64)
        items = (rng.zipf(1.3, m) % N_ITEMS + 1).astype(np.int64)
        ts = t0 + day * day_us + rng.integers(0, day_us, m, dtype=np.int64)
        kind = rng.choice(np.array(["play", "preview", "stop"]), m, p=[0.7, 0.2, 0.1])
        secs = rng.integers(0, 7200, m, dtype=np.int32)
        dup = rng.random(m) < DUP_SHARE
        idx = np.concatenate([np.arange(m), np.flatnonzero(dup)])  # copies land in the same day
        rng.shuffle(idx)
        table = pa.table({
            "uid": users[idx], "sku": items[idx],
            "at": pa.array(ts[idx], pa.timestamp("us", tz="UTC")),
            "kind": pa.array(kind[idx]).dictionary_encode(),
            "secs": pa.array(secs[idx], pa.int32()),
        })
        d = root / f"dt={np.datetime64(t0 // 1_000_000 + day * 86_400, 's').astype('datetime64[D]')}"
        d.mkdir(parents=True, exist_ok=True)
        step = -(-table.num_rows // PARTS)
        for k in range(PARTS):
            pq.write_table(table.slice(k * step, step), d / f"part-{k}.parquet")
        total += table.num_rows
    (root / "_SUCCESS").write_text("")
    return total


# ------------------------------------------------------------------------------ workers (own process)

DUCKDB_SQL = """
CREATE TEMP TABLE ev AS
WITH d AS (
  SELECT DISTINCT uid, sku, "at", kind, secs, dt FROM read_parquet('{log}/**/*.parquet', hive_partitioning = true)
), o AS (
  SELECT *, row_number() OVER (ORDER BY uid, "at", sku) - 1 AS row FROM d
), w AS (
  SELECT *,
    row - row_number() OVER u + 1 AS user_first,
    count(*) OVER (PARTITION BY uid) AS n_user,
    row_number() OVER u - 1 AS pos,
    min(row) OVER (PARTITION BY uid, "at") AS tie_first,
    CASE WHEN "at" - lag("at") OVER u <= INTERVAL 30 MINUTE THEN 0 ELSE 1 END AS new_session
  FROM o WINDOW u AS (PARTITION BY uid ORDER BY "at", sku)
)
SELECT *, sum(new_session) OVER (ORDER BY row ROWS UNBOUNDED PRECEDING) - 1 AS session,
  CASE WHEN pos = n_user - 1 THEN 2 WHEN pos = n_user - 2 THEN 1 ELSE 0 END AS split,
  greatest(user_first, tie_first - {history}) AS hist_start, tie_first AS hist_end
FROM w;
COPY (SELECT uid, sku, "at", kind, secs, dt, session FROM ev ORDER BY row) TO '{out}/events.parquet' (FORMAT parquet);
COPY (SELECT row AS target_row, uid, sku, split, hist_start, hist_end FROM ev
      WHERE hist_end > hist_start ORDER BY row) TO '{out}/examples.parquet' (FORMAT parquet);
"""


def run_duckdb(log: str, out: str, memory_gb: float) -> None:
    import duckdb

    tmp = Path(out) / "_tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(f"SET threads = 2; SET memory_limit = '{memory_gb}GB'; SET temp_directory = '{tmp}'; "
                "SET preserve_insertion_order = false")
    con.execute(DUCKDB_SQL.format(log=log, out=out, tmp=tmp, history=HISTORY))
    shutil.rmtree(tmp, ignore_errors=True)


def run_polars(log: str, out: str, memory_gb: float) -> None:
    os.environ.setdefault("POLARS_MAX_THREADS", "2")
    import polars as pl

    lf = (
        pl.scan_parquet(f"{log}/**/*.parquet", hive_partitioning=True)
        .unique()
        .sort(["uid", "at", "sku"])
        .with_row_index("row")
        .with_columns(pl.col("row").cast(pl.Int64))  # u32 index: tie_first - 100 would wrap
        .with_columns(
            user_first=pl.col("row").min().over("uid"),
            n_user=pl.len().over("uid"),
            tie_first=pl.col("row").min().over(["uid", "at"]),
            new_session=(pl.col("at").diff().over("uid") > pl.duration(microseconds=GAP_US))
            | pl.col("at").diff().over("uid").is_null(),
        )
        .with_columns(
            pos=pl.col("row") - pl.col("user_first"),
            session=pl.col("new_session").cast(pl.Int64).cum_sum() - 1,
            hist_start=pl.max_horizontal(pl.col("user_first"), pl.col("tie_first") - HISTORY),
            hist_end=pl.col("tie_first"),
        )
        .with_columns(
            split=pl.when(pl.col("pos") == pl.col("n_user") - 1).then(2)
            .when(pl.col("pos") == pl.col("n_user") - 2).then(1).otherwise(0)
        )
    )
    ev = lf.collect(engine="streaming")
    ev.select(["uid", "sku", "at", "kind", "secs", "dt", "session"]).write_parquet(f"{out}/events.parquet")
    ev.filter(pl.col("hist_end") > pl.col("hist_start")).select(
        ["row", "uid", "sku", "split", "hist_start", "hist_end"]).write_parquet(f"{out}/examples.parquet")


def run_floor(log: str, out: str, memory_gb: float) -> None:
    import pyarrow.dataset as ds

    n = 0
    for batch in ds.dataset(log, format="parquet", partitioning="hive").to_batches():
        n += batch.num_rows


# ------------------------------------------------------------------------------------------ parent


def examples_of(out: Path):
    """(target row, split, hist_start, hist_end) of every example, sorted by target row, as int64 arrays
    (minivz writes train/valid/test.parquet, the others examples.parquet)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not (out / "examples.parquet").exists():
        parts = [pq.read_table(out / f"{s}.parquet", columns=["target_row", "hist_start", "hist_end"])
                 .append_column("split", pa.array(np.full(pq.read_metadata(out / f"{s}.parquet").num_rows, k)))
                 for k, s in enumerate(("train", "valid", "test"))]
        t = pa.concat_tables(parts)
    else:
        t = pq.read_table(out / "examples.parquet")
        t = t.rename_columns(["target_row" if c == "row" else c for c in t.column_names])
    cols = [np.asarray(t[c].combine_chunks().to_numpy(), np.int64) for c in ("target_row", "split", "hist_start", "hist_end")]
    order = np.argsort(cols[0], kind="stable")
    return [c[order] for c in cols]


def same_examples(a, b) -> bool:
    import numpy as np

    return all(len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a, b))


def run_same(ref: str, out: str, memory_gb: float) -> None:
    """Exit 0 when ``out``'s examples are ``ref``'s (minivz's), 3 when not. In a child process: a child's
    ``ru_maxrss`` starts at its parent's peak RSS (Linux keeps the pre-exec high-water mark), so the
    parent must never hold 100M events' examples, or every later system would report its peak."""
    raise SystemExit(0 if same_examples(examples_of(Path(ref)), examples_of(Path(out))) else 3)


WORKERS = {"duckdb": run_duckdb, "polars": run_polars, "floor": run_floor, "same": run_same}


def _tree_pss(root: int) -> int:
    """Bytes of proportional set size (PSS) of ``root`` and every process under it: shared pages (Ray's
    object store, mapped by the driver and its workers) counted once, shared out."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as fh:
                    parent[int(d)] = int(fh.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = {root}, [root]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(kids)
        frontier = kids
    total = 0
    for p in tree:
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("Pss:")) * 1024
        except (OSError, StopIteration, ValueError):
            pass
    return total


def measure(argv: list[str]) -> tuple[float, float, int, float]:
    """(wall seconds, peak RSS GiB of the largest process, return code, peak GiB of the whole process
    tree's PSS sampled every 0.5 s) of one child process. ``ru_maxrss`` sees one process: Ray's workers
    and object store are others, which the tree's peak counts."""
    import threading

    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, done = [0], threading.Event()

    def sample():
        while not done.wait(0.5):
            peak[0] = max(peak[0], _tree_pss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        print(f"  ! {' '.join(argv[:4])} ... exited {rc}: {err.strip().splitlines()[-1:] }", flush=True)
    return wall, usage.ru_maxrss / 2**20, rc, peak[0] / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e6,1e7", help="events per run, comma separated")
    ap.add_argument("--memory-gb", type=float, default=8.0,
                    help="the memory budget: DuckDB's memory_limit, polars' (none), minivz's memory_gb")
    ap.add_argument("--systems", default="minivz,duckdb,polars,floor",
                    help="also minivz-memory: minivz with the whole log in memory (shards=1); minivz-ray: "
                         "its shards as tasks on a local two-worker Ray cluster (pip install 'minivz[distributed]')")
    ap.add_argument("--up-to", default="",
                    help="SYSTEM=EVENTS,...: run SYSTEM only up to that size (polars=1e7: polars collects "
                         "the whole table in memory, ~10+ GB at 1e8), the row says it was skipped")
    ap.add_argument("--keep", default=None, help="directory to keep inputs/outputs in (default: temp)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--log", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        WORKERS[args.worker](args.log, args.out, args.memory_gb)
        return

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"# {cpu}, {os.cpu_count()} cores; python {platform.python_version()}")
    base = Path(args.keep or tempfile.mkdtemp(prefix="bench_prepare_"))
    systems = args.systems.split(",")
    up_to = {k: int(float(v)) for k, v in (x.split("=") for x in args.up_to.split(",") if x)}
    unknown = set(up_to) - set(systems)
    if unknown:
        raise SystemExit(f"--up-to names {sorted(unknown)}, not among --systems {systems}")
    rows = []
    for size in [int(float(s)) for s in args.sizes.split(",")]:
        log = base / f"log_{size}"
        if not log.exists():
            t0 = time.perf_counter()
            n = write_log(log, size)
            print(f"# wrote {n:,} rows ({size:,} events + copies) in {time.perf_counter() - t0:.0f} s "
                  f"to {log} (untimed)", flush=True)
        res = {}
        ref = base / f"out_minivz_{size}"  # minivz's output: the reference until the size ends
        for system in systems:
            if size > up_to.get(system, size):
                res[system] = (None, None, f"skipped above {up_to[system]:,} events (--up-to)", None)
                print(f"  {size:>12,} {system:<7} {res[system][2]}", flush=True)
                continue
            out = base / f"out_{system}_{size}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            if system.startswith("minivz"):
                # the same memory budget as DuckDB's; minivz-memory: the whole log in memory (shards=1)
                # minivz-ray: the shards as tasks on a local two-worker Ray cluster (DuckDB's 2 threads)
                budget = ["shards=1"] if system == "minivz-memory" else [f"memory_gb={args.memory_gb}"]
                if system == "minivz-ray":
                    budget += ["engine=ray", "engine_workers=2"]
                argv = [sys.executable, "-m", "minivz", "data", "prepare", "--input", str(log), "--out", str(out),
                        "--map", "user_id=uid,item_id=sku,ts=at,interaction=kind,duration_s=secs",
                        "--set", "history_len=100", "--set", "min_history=1",
                        *[x for b in budget for x in ("--set", b)]]
            else:
                argv = [sys.executable, __file__, "--worker", system, "--log", str(log), "--out", str(out),
                        "--memory-gb", str(args.memory_gb)]
            wall, gb, rc, tree = measure(argv)
            res[system] = (wall, gb, rc, tree)
            print(f"  {size:>12,} {system:<7} {wall:8.1f} s  {gb:6.2f} GB  (all processes {tree:.2f} GB)  rc {rc}",
                  flush=True)
            if rc == 0 and system.startswith("minivz"):
                man = json.loads((out / "manifest.json").read_text())["summary"]
                print(f"  {'':>12} {system}: {man['shards']} shard(s); stages "
                      + ", ".join(f"{k} {v:.1f} s" for k, v in man["seconds"].items()), flush=True)
            minivz_ok = "minivz" in res and res["minivz"][2] == 0
            if rc == 0 and system not in ("floor", "minivz") and minivz_ok:
                same = subprocess.run([sys.executable, __file__, "--worker", "same", "--log", str(ref),
                                       "--out", str(out)]).returncode
                print(f"  {'':>12} {system} examples (target, split, history bounds) identical to "
                      f"minivz's: {'yes' if same == 0 else 'NO'}", flush=True)
                if same != 0:
                    res[system] = (wall, gb, "differs", tree)
            if args.keep is None and out != ref:
                shutil.rmtree(out, ignore_errors=True)
        rows.append((size, res))
        if args.keep is None:
            shutil.rmtree(ref, ignore_errors=True)
            shutil.rmtree(log, ignore_errors=True)

    print()
    print("| events | system | wall s | µs/event | peak GB | all processes GB | its time / minivz's | its RSS / minivz's |")
    print("|---|---|---|---|---|---|---|---|")
    for size, res in rows:
        mv = res.get("minivz")
        mv = mv if mv and mv[0] is not None else None
        for system, (wall, gb, rc, tree) in res.items():
            if wall is None:
                print(f"| {size:,} | {system} ({rc}) | | | | | | |")
                continue
            ratio = f"{wall / mv[0]:.2f}" if mv and system != "minivz" else "—"
            mem = f"{gb / mv[1]:.2f}" if mv and system != "minivz" else "—"
            flag = "" if rc == 0 else (" (examples differ)" if rc == "differs" else f" (failed rc {rc})")
            print(f"| {size:,} | {system}{flag} | {wall:.1f} | {wall / size * 1e6:.2f} | {gb:.2f} | {f'{tree:.2f}' if tree else '(< 0.5 s)'} | {ratio} "
                  f"| {mem} |")
    print("\npeak GB: the largest process's peak RSS (os.wait4); all processes GB: the peak of the whole process "
          "tree's PSS, sampled every 0.5 s (Ray's workers and object store included, shared pages once).")
    print("minivz also draws 9 negatives per target, discovery flags and series runs, and writes "
          "items/runs/rejects/manifest; duckdb and polars do not (see the docstring).")


if __name__ == "__main__":
    main()
