"""Self-tuning concurrency limits across replicas (issue 8): N routers with ``max_concurrency: auto`` in front of
one model server that serves 16 calls at a time (20 ms each), with no coordination between the routers.

    .venv/bin/python bench/flow_tuning.py                       # refuse + queue modes, 1/2/4 routers (~4 min)
    .venv/bin/python bench/flow_tuning.py --modes refuse --routers 4 --duration 20
    .venv/bin/python bench/flow_tuning.py --cost-only           # just the controller's cost per request
    .venv/bin/python bench/flow_tuning.py --simulate            # the same setup on a virtual clock (3 s)

Every part is its own process: the model server (``python -m router.demo.model_server``), each router
(``inference-router serve``) and the load generator (this script with ``--loadgen``: aiohttp, ``--clients``
closed-loop clients per router, each offered more than the backend serves; a client that gets the router's
immediate 503 waits 100 ms). Until the admission queue lands a router over its limit answers 503 at once, so
throughput counts what the backend answered (its own counters, GET /control).

Reported per run, after ``--settle`` seconds of convergence: backend throughput vs its capacity (measured
first: the model server alone at 16 concurrent clients; goal >= 90%), backend 429s as a share of backend
calls (goal <= 2%), each router's share and learned limit, and the p50 of answered requests vs the unloaded
p50 (one client through one router; queue mode goal <= 1.5x). Then, in this process, what the tracker
costs per call with the learned limit and with a fixed one, side by side (``--cost-only`` alone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import router_cli, started
from upstream import free_port

CAPACITY = 16
SERVICE_S = 0.020
BODY = b"120.5,2,0.8,350,7,30"

CONFIG = """
server: {{listen: "127.0.0.1:{port}", access_log: false}}
backends:
  rt: {{kind: http, url: "http://127.0.0.1:{model_port}/invocations", max_concurrency: {limit}, timeout: 10s}}
models:
  bench: {{lanes: {{realtime: rt}}}}
"""


# --- the load generator (its own process) ----------------------------------------------------------------


async def loadgen(urls: list[str], clients: int, duration: float, settle: float) -> dict[str, Any]:
    """Closed-loop clients per URL; statuses and latencies of 200s are kept after ``settle`` seconds."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + duration
    per_url: dict[str, dict[str, Any]] = {u: {"codes": {}, "lat": []} for u in urls}

    async def client(http: aiohttp.ClientSession, url: str) -> None:
        rec = per_url[url]
        while (t0 := loop.time()) < end:
            try:
                async with http.post(url, data=BODY, headers={"Content-Type": "text/csv"}) as r:
                    await r.read()
                    status = r.status
            except aiohttp.ClientError:
                status = 599
            t1 = loop.time()
            if t0 - start >= settle:
                rec["codes"][status] = rec["codes"].get(status, 0) + 1
                if status == 200:
                    rec["lat"].append(t1 - t0)
            if status == 503:
                await asyncio.sleep(0.1)  # the router's "at capacity": back off, as a client honouring it would

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        await asyncio.gather(*(client(http, u) for u in urls for _ in range(clients)))
    out = {}
    for url, rec in per_url.items():
        lat = sorted(rec["lat"])
        out[url] = {"codes": rec["codes"], "p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
                    "answered": len(lat)}
    return out


def run_loadgen(urls: list[str], clients: int, duration: float, settle: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--loadgen", json.dumps({"urls": urls, "clients": clients,
                                                               "duration": duration, "settle": settle})]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 60)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# --- the runs ------------------------------------------------------------------------------------------


def control(model_url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            if body is None:
                async with http.get(model_url + "/control") as r:
                    state: dict[str, Any] = await r.json()
                    return state
            async with http.post(model_url + "/control", json=body) as r:
                state = await r.json()
                return state

    return asyncio.run(go())


def router_limits(port: int) -> float:
    async def go() -> float:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
            for line in (await r.text()).splitlines():
                if line.startswith('router_backend_capacity{backend="rt"}'):
                    return float(line.split()[-1])
        return 0.0

    return asyncio.run(go())


def measure(mode: str, routers: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    model_port = free_port()
    model_cmd = [sys.executable, "-m", "router.demo.model_server", "--port", str(model_port),
                 "--latency", str(SERVICE_S), "--max-concurrency", str(CAPACITY), "--overload-mode", mode]
    with ExitStack() as stack:
        stack.enter_context(started(model_cmd, model_port, tmp / f"model-{mode}-{routers}.log"))
        model_url = f"http://127.0.0.1:{model_port}"
        # The backend's capacity: itself at exactly 16 concurrent clients, nothing in between.
        control(model_url, {"reset_counters": True})
        t0 = time.monotonic()
        run_loadgen([model_url + "/invocations"], CAPACITY, args.capacity_duration, 0.0)
        capacity = control(model_url)["served_ok"] / (time.monotonic() - t0)
        ports = []
        for i in range(routers):
            port = free_port()
            cfg = tmp / f"router-{mode}-{routers}-{i}.yaml"
            cfg.write_text(CONFIG.format(port=port, model_port=model_port, limit=args.limit))
            stack.enter_context(started([router_cli(), "serve", "--config", str(cfg)], port,
                                        tmp / f"router-{mode}-{routers}-{i}.log"))
            ports.append(port)
        urls = [f"http://127.0.0.1:{p}/endpoints/bench/invocations" for p in ports]
        control(model_url, {"reset_counters": True})
        unloaded = run_loadgen(urls[:1], 1, 3.0, 1.0)[urls[0]]["p50_ms"]
        backend_unloaded = control(model_url)["latency_p50_ms"]
        before: dict[str, Any] = {}
        done: dict[str, Any] = {}

        def snapshot_after_settle() -> None:
            time.sleep(args.settle)
            before.update(control(model_url))
            before["t"] = time.monotonic()

        snap = threading.Thread(target=snapshot_after_settle)
        snap.start()
        load = run_loadgen(urls, args.clients, args.duration, args.settle)
        done.update(control(model_url))
        done["t"] = time.monotonic()
        snap.join()
        limits = [router_limits(p) for p in ports]
    span = done["t"] - before["t"]
    served = done["served_ok"] - before["served_ok"]
    calls = done["requests"] - before["requests"]
    refused = done["refused"] - before["refused"]
    answered = [load[u]["answered"] for u in urls]
    lat = [load[u]["p50_ms"] for u in urls if load[u]["p50_ms"] is not None]
    p50 = statistics.median(lat) if lat else None
    return {
        "mode": mode, "routers": routers, "capacity_rps": capacity, "throughput_rps": served / span,
        "throughput_ratio": served / span / capacity, "backend_429_share": refused / calls if calls else 0.0,
        "shares": [a / sum(answered) for a in answered] if sum(answered) else [], "limits": limits,
        "p50_ms": p50, "unloaded_p50_ms": unloaded, "p50_ratio": p50 / unloaded if p50 and unloaded else None,
        # the backend's own arrival-to-answer p50 (its internal queue included): what the limit keeps short
        "backend_p50_ms": done["latency_p50_ms"], "backend_unloaded_p50_ms": backend_unloaded,
        "backend_p50_ratio": done["latency_p50_ms"] / backend_unloaded if backend_unloaded else None,
        "codes": [load[u]["codes"] for u in urls],
    }


# --- the same setup on a virtual clock (no processes, no CPU noise) -------------------------------------


def simulate(mode: str, routers: int, seconds: float = 40.0, settle: float = 10.0, seed: int = 1,
             transit_s: float = 0.002) -> dict[str, Any]:
    """N routers' real ``GradientLimit`` objects against a model of the backend (16 slots x 20 ms, lognormal
    5% spread; beyond 16: 429 in 0.5 ms, or a FIFO queue), each router keeping its limit full (infinite
    demand). One-way transit is 0.3 ms plus up to ``transit_s`` / 2 of noise. Counts after ``settle``."""
    import heapq
    import random

    from router.flow.limits import GradientLimit, GradientSettings, Outcome

    rnd = random.Random(seed)
    limits = [GradientLimit(GradientSettings()) for _ in range(routers)]
    inflight = [0] * routers
    events: list[tuple[float, int, str, tuple[Any, ...]]] = []
    seq = 0
    busy = 0
    queue: list[tuple[int, float]] = []
    ok = throttled = 0
    per = [0] * routers
    latencies: list[float] = []

    def push(t: float, kind: str, data: tuple[Any, ...]) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, data))

    def hop() -> float:
        return 0.0003 + rnd.random() * transit_s / 2

    def fill(t: float, i: int) -> None:
        while inflight[i] < max(1, int(limits[i].limit)):
            inflight[i] += 1
            push(t + hop(), "arrive", (i, t))

    for i in range(routers):
        fill(0.0, i)
    while events:
        t, _, kind, data = heapq.heappop(events)
        if t > seconds:
            break
        if kind == "arrive":
            i, t0 = data
            if busy < CAPACITY:
                busy += 1
                push(t + SERVICE_S * rnd.lognormvariate(0, 0.05), "done", (i, t0))
            elif mode == "queue":
                queue.append((i, t0))
            else:
                push(t + 0.0005 + hop(), "finish", (i, t0, Outcome.THROTTLED))
        elif kind == "done":
            i, t0 = data
            if queue:
                j, tq = queue.pop(0)
                push(t + SERVICE_S * rnd.lognormvariate(0, 0.05), "done", (j, tq))
            else:
                busy -= 1
            push(t + hop(), "finish", (i, t0, Outcome.SUCCESS))
        else:
            i, t0, outcome = data
            limits[i].on_sample(t, t - t0, inflight[i], outcome)
            inflight[i] -= 1
            if t > settle:
                if outcome is Outcome.SUCCESS:
                    ok += 1
                    per[i] += 1
                    latencies.append(t - t0)
                else:
                    throttled += 1
            fill(t, i)
    latencies.sort()
    return {"mode": mode, "routers": routers, "throughput_rps": ok / (seconds - settle),
            "backend_429_share": throttled / max(1, ok + throttled), "shares": [n / max(1, ok) for n in per],
            "limits": [round(x.limit, 1) for x in limits], "p50_ms": 1000 * latencies[len(latencies) // 2]}


# --- what the controller costs per call ------------------------------------------------------------------


def controller_cost(number: int = 200_000, repeats: int = 7) -> dict[str, float]:
    """µs per tracked call (start + succeeded) with a fixed limit and a learned one, interleaved."""
    from router.flow.limits import GradientSettings
    from router.state import BackendTracker, TrackerSettings

    clock = [0.0]

    def now() -> float:
        clock[0] += 0.0001
        return clock[0]

    fixed = BackendTracker("fixed", TrackerSettings(max_concurrency=1000), now)
    auto = BackendTracker("auto", TrackerSettings(max_concurrency=1000, adaptive=GradientSettings()), now)

    def one(t: BackendTracker) -> None:
        t.start(now())
        t.succeeded(now(), 0.02)

    results: dict[str, list[float]] = {"fixed": [], "auto": [], "auto_orca": []}
    for _ in range(repeats):
        results["fixed"].append(timeit.timeit(lambda: one(fixed), number=number) / number * 1e6)
        results["auto"].append(timeit.timeit(lambda: one(auto), number=number) / number * 1e6)
        results["auto_orca"].append(timeit.timeit(
            lambda: (auto.start(now()), auto.succeeded(now(), 0.02, "TEXT application_utilization=0.5")),
            number=number) / number * 1e6)
    return {k: statistics.median(v) for k, v in results.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="refuse,queue")
    parser.add_argument("--routers", default="1,2,4")
    parser.add_argument("--duration", type=float, default=25.0, help="seconds of load per run")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds allowed to converge, not counted")
    parser.add_argument("--clients", type=int, default=24, help="closed-loop clients per router")
    parser.add_argument("--capacity-duration", type=float, default=5.0)
    parser.add_argument("--limit", default="auto", help="the routers' max_concurrency (auto, or 4 to compare)")
    parser.add_argument("--cost-only", action="store_true")
    parser.add_argument("--simulate", action="store_true", help="the virtual-clock model only (3 s, no processes)")
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loadgen:
        spec = json.loads(args.loadgen)
        print(json.dumps(asyncio.run(loadgen(spec["urls"], spec["clients"], spec["duration"], spec["settle"]))))
        return 0
    if args.simulate:
        print("| mode | routers | served req/s (16 x 20 ms = 800 max) | backend 429s | p50 | shares | limits |")
        print("| --- | ---: | ---: | ---: | ---: | --- | --- |")
        for mode in args.modes.split(","):
            for n in (int(x) for x in args.routers.split(",")):
                r = simulate(mode, n)
                print(f"| {mode} | {n} | {r['throughput_rps']:.0f} | {r['backend_429_share']:.2%} "
                      f"| {r['p50_ms']:.1f} ms | {', '.join(f'{v:.2f}' for v in r['shares'])} "
                      f"| {', '.join(f'{v:g}' for v in r['limits'])} |")
        return 0
    rows = []
    if not args.cost_only:
        with tempfile.TemporaryDirectory(prefix="flow-tuning-") as tmp:
            for mode in args.modes.split(","):
                for n in (int(x) for x in args.routers.split(",")):
                    row = measure(mode, n, args, Path(tmp))
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
    cost = controller_cost()
    print("| mode | routers | backend capacity req/s | served req/s | ratio (>= 90%) | backend 429s (<= 2%) "
          "| backend p50 / unloaded (queue: <= 1.5x) | client p50 / unloaded | shares | learned limits |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for r in rows:
        ratio = f"{r['p50_ms']:.1f} / {r['unloaded_p50_ms']:.1f} ms = {r['p50_ratio']:.2f}x" if r["p50_ratio"] else "-"
        backend = (f"{r['backend_p50_ms']:.1f} / {r['backend_unloaded_p50_ms']:.1f} ms = {r['backend_p50_ratio']:.2f}x"
                   if r["backend_p50_ratio"] else "-")
        print(f"| {r['mode']} | {r['routers']} | {r['capacity_rps']:.0f} | {r['throughput_rps']:.0f} "
              f"| {r['throughput_ratio']:.0%} | {r['backend_429_share']:.2%} | {backend} | {ratio} "
              f"| {', '.join(f'{s:.2f}' for s in r['shares'])} | {', '.join(f'{v:g}' for v in r['limits'])} |")
    print(f"\ncontroller cost per call (start + succeeded, median of 7 x 200k): fixed {cost['fixed']:.2f} µs, "
          f"auto {cost['auto']:.2f} µs (+{cost['auto'] - cost['fixed']:.2f}), "
          f"auto + ORCA report {cost['auto_orca']:.2f} µs")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "flow_tuning.json").write_text(json.dumps({"runs": rows, "cost_us": cost}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
