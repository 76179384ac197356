"""The kernel benchmark's minivz, polars and pandas implementations agree on a small synthetic log."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("polars")
pytest.importorskip("pandas")

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernels.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _agree(bench, d):
    mv = bench.run_minivz(d)
    ref = bench.to_common("minivz", mv)
    ref["ts"] = mv["sorted"]["ts"]
    out = {}
    for name, fn in (("polars", bench.run_polars), ("pandas", bench.run_pandas)):
        c = bench.to_common(name, fn(d))
        c["ts"] = ref["ts"]
        bench.assert_agree(ref, c, name)  # session, runs, split, hist ranges, discovery
        bench.check_negatives(c, d["n_items"], sample=500)
        out[name] = c
    bench.check_negatives(ref, d["n_items"], sample=500)
    return ref, out


def test_three_implementations_agree(bench):
    d = bench.make_data(20_000, n_users=200)
    ref, out = _agree(bench, d)
    n_sessions = int(ref["session"][-1]) + 1
    n_runs = len(ref["run_length"])
    assert 0 < n_sessions < n_runs < 20_000
    for c in out.values():
        assert int(c["session"][-1]) + 1 == n_sessions
        assert len(c["run_length"]) == n_runs
    assert ref["discovery"].any() and not ref["discovery"].all()
    assert set(np.unique(ref["split"])) == {0, 1, 2}


def test_agree_with_timestamp_ties(bench):
    # Hour-truncated timestamps: many (user, ts) ties exercise the strict tie rule.
    d = bench.make_data(20_000, n_users=200)
    hour = 3_600_000_000
    d["ts"] = d["ts"] // hour * hour
    ref, _ = _agree(bench, d)
    assert np.any(ref["hist_end"] != ref["target_row"])  # some targets sit inside a tie group


def test_series_benchmark_implementations_agree(bench):
    """benchmarks/bench_series.py: polars and pandas compute the same sessions and runs as minivz,
    and its own agreement check fails on a wrong answer."""
    import sys

    sys.path.insert(0, str(_PATH.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench_series", _PATH.parent / "bench_series.py")
        series = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(series)
    finally:
        sys.path.remove(str(_PATH.parent))
    d = series.sorted_input(20_000)
    ref = series.run_minivz(d)
    assert 0 < len(ref["start"]) < 20_000 and (ref["length"] > 1).any()
    for fn, name in ((series.run_polars, "polars"), (series.run_pandas, "pandas")):
        series.assert_agree(ref, fn(d), name)
    wrong = series.run_pandas(d)
    wrong["runs"].iloc[3, wrong["runs"].columns.get_loc("last_episode")] += 1
    with pytest.raises(AssertionError, match="last_episode"):
        series.assert_agree(ref, wrong, "pandas")
