"""The simulator: traces, the router's own decisions on a virtual clock, modelled backends, cost, flat memory."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from pathlib import Path

import aiohttp
import pytest

from router.config import parse_config
from router.sim.fit import fit_service_times
from router.sim.run import Simulation, simulate
from router.sim.stats import LatencyHistogram, TimeSeries
from router.sim.synthetic import Mix, synthetic
from router.sim.trace import (
    TraceRequest,
    TraceStats,
    in_arrival_order,
    longest_duration_s,
    read_trace,
    write_trace,
)
from tests.conftest import serve_router

HEAD = """\
urgency: {levels: {critical: 3, high: 2, normal: 1, low: 0}, default: normal}
"""


def _sim(yaml_text: str, requests: list[TraceRequest]) -> Simulation:
    sim = Simulation(parse_config(HEAD + yaml_text), "test")
    sim.run(requests)
    return sim


def _req(t: float, **kw: object) -> TraceRequest:
    return TraceRequest(t, "m", **kw)  # type: ignore[arg-type]


# --- traces ----------------------------------------------------------------------------------------


def test_access_log_lines_replay_in_arrival_order_and_other_lines_are_skipped() -> None:
    lines = [
        b'inference-router demo is running\n',
        json.dumps({"event": "router_started"}).encode(),
        # written when each request ended: the long one arrived first
        json.dumps({"event": "request", "arrival": 100.2, "duration_ms": 10, "model": "m", "bytes": 5}).encode(),
        json.dumps({"event": "request", "arrival": 100.0, "duration_ms": 900, "model": "m", "bytes": 7,
                    "urgency": "low", "deadline_ms": 500, "respond_async": True, "lane": "serverless",
                    "status": 200}).encode(),
        json.dumps({"event": "request", "timestamp": "1970-01-01T00:01:41.000000Z", "duration_ms": 500,
                    "model": "m"}).encode(),
        b'{"event": "request", "model": \n',
    ]
    stats = TraceStats()
    out = list(in_arrival_order(lines, stats))
    assert [(round(r.t, 3), r.payload_bytes) for r in out] == [(0.0, 7), (0.2, 5), (0.5, 0)]
    first = out[0]
    assert (first.urgency, first.deadline_ms, first.accepts_async, first.lane, first.duration_s) == \
        ("low", 500, True, "serverless", 0.9)
    assert stats.skipped == 3
    assert stats.requests == 3


def test_a_written_trace_reads_back_the_same() -> None:
    reqs = [_req(0.0, payload_bytes=10, urgency="high", deadline_ms=200),
            _req(1.5, caller="team-a", accepts_async=True, content_type="text/csv")]
    buf = io.BytesIO()
    write_trace(reqs, buf)
    back = list(in_arrival_order(buf.getvalue().splitlines(keepends=True)))
    assert [(r.t, r.caller, r.payload_bytes, r.urgency, r.deadline_ms, r.accepts_async, r.content_type)
            for r in back] == [(0.0, "anonymous", 10, "high", 200, False, "application/octet-stream"),
                               (1.5, "team-a", 0, None, None, True, "text/csv")]


def test_a_request_longer_than_every_one_before_it_replays_at_its_arrival(tmp_path: Path) -> None:
    # A cold start: the first long call arrived at 100.0 and ended at 102.0, after 40 short ones that arrived
    # later; its line is written last. Its time is its arrival, not that of the last line replayed before it.
    lines = [{"event": "request", "arrival": 100.1 + i * 0.05, "duration_ms": 5, "model": "m", "bytes": i + 1}
             for i in range(38)]
    lines.append({"event": "request", "arrival": 100.0, "duration_ms": 2000, "model": "m", "bytes": 0,
                  "backend": "sls", "status": 200, "cold_start": True})
    path = tmp_path / "access.log"
    path.write_bytes(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    stats = TraceStats()
    out = list(read_trace(path, stats))
    assert [r.payload_bytes for r in out] == list(range(39))
    assert out[0].t == 0.0
    assert out[0].cold_start
    assert stats.late == 0


def test_the_reorder_window_is_the_longest_request_of_a_second_or_more(tmp_path: Path) -> None:
    def log(*durations: bytes) -> Path:
        path = tmp_path / "access.log"
        path.write_bytes(b"".join(b'{"event":"request","model":"m","duration_ms":%s}\n' % d for d in durations))
        return path

    assert longest_duration_s(log(b"12", b"2500.25", b"3e3", b"999.5")) == 3.0
    assert longest_duration_s(log(b"12", b"1.5e3", b"1000")) == 1.5
    # shorter ones never widen the window: it is at least a second anyway
    assert longest_duration_s(log(b"12", b"999.99", b"5e2")) == 0.0


def test_service_times_learned_from_a_trace_leave_out_calls_that_waited_for_a_cold_start() -> None:
    # 3% of the answered calls waited for one 2 s cold start: none of them is the backend's service time
    warm = [_req(i * 0.1, lane="serverless", backend="sls", status=200, duration_s=0.010 + (i % 10) * 0.001)
            for i in range(300)]
    cold = [_req(30.0, lane="serverless", backend="sls", status=200, duration_s=2.0, cold_start=True)
            for _ in range(10)]
    fitted = fit_service_times([*cold, *warm])["sls"]
    assert fitted.p99 < 0.05
    assert 0.010 <= fitted.p50 <= 0.020


def test_synthetic_traces_repeat_with_their_seed_at_about_the_asked_rate() -> None:
    mix = Mix(models=["m"])
    a = list(synthetic("spiky", 200, 60, mix, seed=4))
    b = list(synthetic("spiky", 200, 60, mix, seed=4))
    c = list(synthetic("spiky", 200, 60, mix, seed=5))
    assert a == b
    assert a != c
    assert 0.9 * 12_000 < len(a) < 1.1 * 12_000
    assert all(x.t <= y.t for x, y in itertools.pairwise(a))
    assert any(r.payload_bytes > 6_000_000 and r.accepts_async for r in a)


async def test_the_live_access_log_carries_what_a_replay_needs(capfd: pytest.CaptureFixture[str]) -> None:
    from router.demo.model_server import ModelServer

    async with ModelServer() as server:
        text = HEAD + f"""\
backends:
  rt: {{kind: http, url: "{server.url}/invocations"}}
models:
  m: {{lanes: {{realtime: rt}}}}
"""
        headers = {"Content-Type": "text/csv", "X-Urgency": "high", "X-Deadline-Ms": "900", "Prefer": "wait=5"}
        async with serve_router(text) as router, aiohttp.ClientSession() as http, \
                http.post(router.endpoint("m"), data=b"120.5,2,0.8,350,7,30", headers=headers) as r:
            assert r.status == 200
    err = capfd.readouterr().err
    out = list(in_arrival_order(line.encode() for line in err.splitlines()))
    assert len(out) == 1
    r0 = out[0]
    assert (r0.model, r0.content_type, r0.urgency, r0.deadline_ms, r0.wait_s, r0.lane, r0.backend, r0.status) == \
        ("m", "text/csv", "high", 900, 5.0, "realtime", "rt", 200)
    assert r0.payload_bytes == 20
    assert r0.duration_s is not None
    assert r0.duration_s > 0
    assert not r0.cold_start


async def test_the_access_log_marks_the_calls_that_waited_for_a_cold_start(capfd: pytest.CaptureFixture[str]) -> None:
    from router.demo.model_server import ModelServer

    async with ModelServer(idle_after_s=30.0, cold_start_s=0.3) as server:
        text = HEAD + f"""\
backends:
  sls: {{kind: http, url: "{server.url}/invocations", serverless: {{idle_after: 30s, cold_start: 300ms}}}}
models:
  m: {{lanes: {{serverless: sls}}}}
"""
        async with serve_router(text) as router, aiohttp.ClientSession() as http:
            async def post() -> None:
                async with http.post(router.endpoint("m"), data=b"120.5,2,0.8,350,7,30",
                                     headers={"Content-Type": "text/csv"}) as r:
                    assert r.status == 200

            await asyncio.gather(post(), post())  # both wait for the one cold start
            await post()  # warm
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if '"event":"request"' in line]
    assert [line["cold_start"] for line in lines] == [True, True, None]
    out = list(in_arrival_order(json.dumps(line).encode() for line in lines))
    assert [r.cold_start for r in out] == [True, True, False]


# --- the router's decisions on a virtual clock -----------------------------------------------------

TWO_LANES = """\
backends:
  rt: {kind: http, url: "http://h/", max_concurrency: 1, queue: {max_depth: 0},
       simulate: {service_time: 100ms, service_p99: 100ms}}
  sls: {kind: http, url: "http://h/", max_concurrency: 10, serverless: {idle_after: 30s, cold_start: 2s},
        simulate: {service_time: 100ms, service_p99: 100ms}}
models:
  m:
    lanes: {realtime: rt, serverless: sls}
    default: {lane: realtime, fallback: [serverless]}
"""


def test_a_full_real_time_backend_overflows_to_serverless_which_starts_cold_once() -> None:
    sim = _sim(TWO_LANES, [_req(0.0), _req(0.0), _req(2.5), _req(2.5)])
    res = sim.result
    assert res.outcomes["realtime"] == 2
    assert res.outcomes["serverless"] == 2
    assert res.backends["sls"].cold_starts == 1  # the first; the second came while a container was warm
    assert res.latency["serverless"].max == pytest.approx(2.1, abs=0.01)
    assert res.latency["serverless"].percentile(0) == pytest.approx(0.1, rel=0.02)
    assert res.fallbacks == 2


def test_a_request_served_where_it_was_recorded_keeps_its_recorded_time_a_stall_too() -> None:
    # 99 calls of 10 ms and one that stalled for 400 ms: replayed on the same backend, each takes its own time
    text = """\
backends:
  rt: {kind: http, url: "http://h/", max_concurrency: 4, simulate: {service_time: 10ms, service_p99: 10ms}}
models:
  m: {lanes: {realtime: rt}}
"""
    trace = [_req(i * 0.1, lane="realtime", backend="rt", status=200, duration_s=0.4 if i == 50 else 0.01)
             for i in range(100)]
    lat = _sim(text, trace).result.latency["realtime"]
    assert lat.max == pytest.approx(0.4, rel=0.02)
    assert lat.percentile(50) == pytest.approx(0.01, rel=0.02)


def test_a_recorded_cold_start_is_the_one_the_serverless_model_waits_for() -> None:
    # the config guesses 2 s; the trace shows the calls that waited for the cold start took 3 s (its first) and
    # 2.5 s (one that came later): the model's endpoint is warm 3 s after the first, less one service time
    text = """\
backends:
  sls: {kind: http, url: "http://h/", max_concurrency: 10, serverless: {idle_after: 30s, cold_start: 2s},
        simulate: {service_time: 100ms, service_p99: 100ms, cold_starts: endpoint}}
models:
  m: {lanes: {serverless: sls}}
"""
    recorded = {"lane": "serverless", "backend": "sls", "status": 200}
    trace = [_req(0.0, duration_s=3.0, cold_start=True, **recorded),
             _req(0.5, duration_s=2.5, cold_start=True, **recorded), _req(5.0, duration_s=0.1, **recorded)]
    res = _sim(text, trace).result
    assert res.backends["sls"].cold_starts == 1
    assert sorted(round(v, 2) for v, n in res.latency["serverless"].buckets() for _ in range(n)) == \
        [pytest.approx(0.1, rel=0.02), pytest.approx(2.5, rel=0.02), pytest.approx(3.0, rel=0.02)]


def test_a_request_waits_in_the_admission_queue_for_the_slot_it_was_predicted_to_get() -> None:
    text = """\
backends:
  rt: {kind: http, url: "http://h/", max_concurrency: 1, queue: {max_wait: 1s},
       simulate: {service_time: 100ms, service_p99: 100ms}}
models:
  m: {lanes: {realtime: rt}}
"""
    # the first call teaches the tracker its latency; then two arrive together: one waits one service time
    sim = _sim(text, [_req(0.0), _req(1.0), _req(1.0)])
    lat = sim.result.latency["realtime"]
    assert sim.result.outcomes["realtime"] == 3
    assert lat.max == pytest.approx(0.2, rel=0.02)


def test_low_urgency_is_shed_by_the_policy_while_the_lanes_are_full() -> None:
    text = """\
backends:
  rt: {kind: http, url: "http://h/", max_concurrency: 1, queue: {max_depth: 0},
       simulate: {service_time: 1s, service_p99: 1s}}
models:
  m: {lanes: {realtime: rt}, policy: [shed-low]}
policies:
  shed-low: {type: shed, params: {below_urgency: normal}}
"""
    sim = _sim(text, [_req(0.0), _req(0.1, urgency="low"), _req(2.0, urgency="low")])
    assert sim.result.outcomes["shed"] == 1
    assert sim.result.reasons["shed_saturated"] == 1
    assert sim.result.outcomes["realtime"] == 2


def test_a_client_that_allows_a_202_is_deferred_to_the_async_lane_when_sync_is_full() -> None:
    text = """\
backends:
  rt: {kind: http, url: "http://h/", max_concurrency: 1, queue: {max_depth: 0},
       simulate: {service_time: 100ms, service_p99: 100ms}}
models:
  m: {lanes: {realtime: rt, async: rt}}
jobs: {workers: 1, poll_interval: 0.01s}
"""
    sim = _sim(text, [_req(0.0), _req(0.0, accepts_async=True), _req(0.0)])
    res = sim.result
    assert (res.outcomes["realtime"], res.outcomes["async"], res.outcomes["failed"]) == (1, 1, 1)
    assert res.deferred == 1
    # the job ran once the sync call left room: after it, within one poll
    assert 0.2 <= res.latency["async"].max <= 0.22


def test_the_batch_lane_flushes_by_the_live_rule_records_then_age() -> None:
    text = """\
backends:
  rt: {kind: http, url: "http://h/", max_concurrency: 4, simulate: {service_time: 50ms, service_p99: 50ms}}
models:
  m:
    lanes: {realtime: rt, batch: rt}
    batch: {max_records: 3, max_wait: 5s}
    policy: [to-batch]
policies:
  to-batch: {type: rules, params: [{when: {accepts_async: true}, route: batch}]}
"""
    sim = _sim(text, [_req(t, accepts_async=True) for t in (0.0, 1.0, 2.0, 3.0)])
    lat = sim.result.latency["batch"]
    assert sim.result.outcomes["batch"] == 4
    # three flushed when the third came (at 2 s), run in one 50 ms call; the fourth flushed at 3 + 5 s
    assert lat.percentile(0) == pytest.approx(0.05, rel=0.05)
    assert lat.max == pytest.approx(5.05, rel=0.01)


def test_simulated_cost_is_the_hand_arithmetic() -> None:
    text = """\
backends:
  rt: {kind: http, url: "http://h/", max_concurrency: 1, queue: {max_depth: 0},
       cost: {instance_type: ml.m5.large}, simulate: {service_time: 1s, service_p99: 1s}}
  sls: {kind: http, url: "http://h/", max_concurrency: 10, serverless: {idle_after: 1h, cold_start: 0s},
        cost: {memory_mb: 2048}, simulate: {service_time: 1s, service_p99: 1s}}
models:
  m:
    lanes: {realtime: rt, serverless: sls}
    default: {lane: realtime, fallback: [serverless]}
"""
    # 11 arrivals at t=0 (one on real-time, ten on serverless), one more at t=3600 s: the span is an hour
    res = _sim(text, [_req(0.0) for _ in range(11)] + [_req(3600.0)]).result
    assert res.span_s == 3600.0
    assert res.backends["rt"].cost == pytest.approx(0.115)  # one ml.m5.large for an hour
    assert res.backends["sls"].cost == pytest.approx(10 * 1.0 * 2 * 0.00002)  # ten 1 s calls at 2 GB
    assert res.cost == pytest.approx(0.115 + 0.0004)
    assert res.cost_per_day == pytest.approx(24 * (0.115 + 0.0004))


def test_the_same_trace_and_seed_give_the_same_result() -> None:
    cfg = parse_config(HEAD + TWO_LANES)
    reqs = list(synthetic("steady", 50, 20, Mix(models=["m"]), seed=2))
    a, b = simulate(cfg, reqs, seed=3), simulate(cfg, reqs, seed=3)
    assert a.to_json() == b.to_json()


def test_statistics_stay_the_same_size_however_long_the_run() -> None:
    series = TimeSeries(("n",), ("peak",), width_s=1.0, limit=8)
    for t in range(1000):
        series.add(float(t), 0)
        series.peak(float(t), 0, t)
    assert len(series.buckets) <= 8
    assert sum(series.column("n")) == 1000
    assert max(series.column("peak")) == 999
    h = LatencyHistogram()
    size = len(h.counts)
    for i in range(1, 10_000):
        h.add(i / 1000.0)
    assert len(h.counts) == size
    assert h.percentile(50) == pytest.approx(5.0, rel=0.01)
    assert h.percentile(99) == pytest.approx(9.9, rel=0.01)


def test_autoscaling_adds_instances_after_their_delay_and_bills_them_from_the_decision() -> None:
    text = """\
backends:
  rt: {kind: http, url: "http://h/", max_concurrency: 100, queue: {max_depth: 0},
       cost: {instance_type: ml.m5.large, instances: 1},
       simulate: {service_time: 1s, service_p99: 1s, per_instance: 2,
                  autoscale: {min: 1, max: 3, target: 0.5, interval: 60s, delay: 120s, cooldown: 600s}}}
models:
  m: {lanes: {realtime: rt}}
"""
    # two calls in flight all along: one instance (2 slots) is fully busy, over the 50% target
    reqs = [_req(float(t)) for t in range(600) for _ in range(2)]
    res = _sim(text, reqs).result
    rt = res.backends["rt"]
    # at 60 s one instance was 100% busy: a second (2 = ceil(1 x 1.0 / 0.5)), serving from 180 s; at 120 s
    # it is still pending, so nothing more; from 180 s two instances are 50% busy: on target
    assert rt.peak_instances == 2
    assert res.outcomes["realtime"] == 1200
    # billed from the decision: one instance for the 599 s of the trace, the second from 60 s
    assert rt.cost == pytest.approx(0.115 * (599 + (599 - 60)) / 3600)
    assert rt.utilisation == pytest.approx(1200 / ((599 + 539) * 2))
