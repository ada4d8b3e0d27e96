"""The simulator tells the truth: the demo driven by a load pattern, then the demo's config simulated on the
demo's own access log, must agree (the short version of bench/sim_honesty.py, with its goals)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "sim_honesty.py"


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("sim_honesty", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sim_honesty"] = module
    spec.loader.exec_module(module)
    return module


def test_simulating_the_demos_own_access_log_agrees_with_what_the_demo_did(tmp_path: Path) -> None:
    bench = _bench()
    # two spikes at 6x: the demo overflows to serverless, queues, sheds and defers to job lanes
    trace, codes = bench.record(duration_s=16.0, rps=50.0, pattern="spiky", seed=1, workdir=tmp_path)
    assert sum(codes.values()) > 500
    # a short run has few sheds: its count may also differ by 2% of the requests (the bench runs longer)
    result = bench.compare(trace, count_slack=0.02 * sum(codes.values()))
    for lane, row in result["lanes"].items():
        assert row["met"], (lane, row)  # within 5 percentage points
    for lane, row in result["p50_ms"].items():
        assert row["met"] is not False, (lane, row)  # within 30%
    assert result["p50_ms"]["realtime"]["met"]
    assert result["shed_deferred"]["met"], result["shed_deferred"]
