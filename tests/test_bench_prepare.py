"""benchmarks/bench_prepare.py end to end at a tiny size: minivz's CLI, DuckDB's SQL and polars'
lazy query write the same examples (the benchmark's own check, so its ratios compare the same work),
and a system past its --up-to size is named as skipped in the one table."""

import subprocess
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_prepare.py"


def test_every_system_writes_minivz_examples_and_the_table_names_a_skip(tmp_path):
    got = subprocess.run(
        [sys.executable, str(_PATH), "--sizes", "2e4,3e4", "--memory-gb", "1", "--up-to", "polars=2e4",
         "--systems", "minivz,minivz-memory,duckdb,polars,floor", "--keep", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert got.returncode == 0, got.stderr[-3000:]
    out = got.stdout
    for system in ("minivz-memory", "duckdb"):
        assert out.count(f"{system} examples (target, split, history bounds) identical to minivz's: yes") == 2, out
    assert out.count("polars examples (target, split, history bounds) identical to minivz's: yes") == 1, out
    assert "| 30,000 | polars (skipped above 20,000 events (--up-to)) |" in out
    table = [line for line in out.splitlines() if line.startswith("| 20,000 |") or line.startswith("| 30,000 |")]
    assert len(table) == 2 * 5 and not any("failed" in line or "differ" in line for line in table), out
    # the whole prepared output of minivz is there, not only its examples
    assert {p.name for p in (tmp_path / "out_minivz_30000").iterdir()} >= {
        "events.parquet", "items.parquet", "runs.parquet", "train.parquet", "valid.parquet", "test.parquet",
        "rejects.parquet", "manifest.json"}
