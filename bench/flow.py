"""Flow control against the embedded demo, driven as a user would: bursts, overload, fairness, cost.

    .venv/bin/python bench/flow.py                                  # burst, overload, fairness (~3 min)
    .venv/bin/python bench/flow.py --scenarios burst
    .venv/bin/python bench/flow.py --scenarios overload --capacity-basis realtime --duration 30
    .venv/bin/python bench/flow.py --scenarios cost                 # the queue's CPU cost per request, A/B

Starts ``inference-router demo --port P`` as its own process (model servers on free ports, state in a
temp dir), sets the model servers' latency through their ``POST /control``, and runs each scenario's
load generator as a process of its own (this script with ``--loadgen``), which prints its results as
JSON. Prints a summary per scenario with the issue's goals met or not, and writes
``bench/results/flow.json``.

- burst: 256 ``X-Urgency: high`` requests from 64 concurrent clients against the fresh demo (5 ms calls,
  the serverless server cold), first of all scenarios.
- overload: Poisson arrivals at ``--factor`` x the capacity (sync slots / service time; ``--capacity-basis
  sync`` counts all 12 sync slots, ``realtime`` the real-time backend's 4) for ``--duration`` s; urgency
  critical/high/normal/low = 10/30/30/30%, half the clients send ``Prefer: respond-async``, every request
  an ``X-Deadline-Ms``; every 202 job is polled to its end.
- overload and fairness: each call's service time varies uniformly by ``--jitter`` (10%) around ``--latency``,
  as a real model's does (with 0, slots filled by one burst keep freeing together, a whole service time apart).
- fairness: tenant team-a (API key) alone at 2/11 of twice the capacity, then with the anonymous tenant
  sending 10x its rate (2x capacity in all); equal weights.
- ``--router-ref REF`` runs the scenarios against the demo as of a git ref, for a before/after.
- cost: CPU time per request through the data plane (ASGI, in process, an instant backend), this checkout
  against ``--baseline`` (git archive of its router/), interleaved; for throughput and c=1 latency over
  HTTP run ``bench/overhead.py --router-baseline REF`` (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
ROW = "120.5,2,0.8,350,7,30"
TEAM_KEY = "demo-team-a-key"
SYNC_SLOTS = {"sync": 4 + 8, "realtime": 4}  # the demo's fraud-rt and fraud-sls max_concurrency
# The router's refusals that never waited for a slot (SageMaker-shaped messages, router/api/errors.py and the
# shed answer); any other 5xx (a queue timeout, a backend's error, a 504) counts as "after waiting".
REFUSED_AT_ONCE = ("every backend of this route is", "request shed by policy")


def refused_at_once(r: dict[str, Any]) -> bool:
    return r["status"] == 503 and bool(r.get("retry_after")) and r.get("message", "").startswith(REFUSED_AT_ONCE)


# --- the demo ---------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Demo:
    """``inference-router demo`` in a process of its own, on free ports."""

    def __init__(self, tmp: Path, ref: str | None = None) -> None:
        self.port, self.rt, self.sls, self.jobs = free_port(), free_port(), free_port(), free_port()
        env = {**os.environ, "DEMO_RT_PORT": str(self.rt), "DEMO_SLS_PORT": str(self.sls),
               "DEMO_ASYNC_PORT": str(self.jobs), "DEMO_STATE": str(tmp / "var")}
        cwd = ROOT
        if ref is not None:  # the router (and its packaged demo.yaml) as of a git ref, to compare before/after
            cwd = extract(ref, tmp / "ref")
            env["PYTHONPATH"] = str(cwd)
        self.log = tmp / "demo.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "router.cli", "demo", "--port", str(self.port)],
                                         cwd=cwd, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the demo exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the demo did not become ready")

    def control(self, port: int, **knobs: Any) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/control", data=json.dumps(knobs).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200

    def latency(self, seconds: float, jitter: float = 0.0) -> None:
        """The service time of both sync model servers, each call varying uniformly by ``jitter`` of it (the async
        lane's server keeps the demo's 5 ms)."""
        knobs = {"latency_s": seconds} | ({"latency_jitter": jitter} if jitter else {})  # older demos: no jitter
        self.control(self.rt, **knobs)
        self.control(self.sls, **knobs)

    def counters(self, *names: str) -> dict[str, float]:
        """The router's counters of these families, 'name{labels}' -> value (non-zero only)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith(names) and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                if float(value):
                    out[key] = float(value)
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def extract(ref: str, into: Path) -> Path:
    """The ``router/`` package as of git ``ref``, in ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "router"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """Run this script's load generator in a process of its own; its JSON result."""
    done = subprocess.run([sys.executable, __file__, "--loadgen", json.dumps(spec)], capture_output=True, text=True,
                          check=False, timeout=spec.get("duration", 0) + 600)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# --- the load generator (its own process) -----------------------------------------------------


async def _send(http: Any, url: str, headers: dict[str, str], meta: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    start = time.perf_counter()
    out = dict(meta)
    try:
        async with http.post(url, data=ROW, headers={"Content-Type": "text/csv", **headers}) as r:
            body = await r.read()
            out.update(status=r.status, lane=r.headers.get("X-Router-Lane"), reason=r.headers.get("X-Router-Reason"),
                       backend=r.headers.get("X-Router-Backend"),
                       retry_after=r.headers.get("Retry-After"))
            if r.status == 202:
                out["job"] = json.loads(body)["job_id"]
            elif r.status >= 400:
                out["message"] = json.loads(body).get("message", "")[:80]
    except (TimeoutError, aiohttp.ClientError) as exc:
        out.update(status=0, message=type(exc).__name__)
    out["latency_s"] = time.perf_counter() - start
    return out


async def _jobs(http: Any, base: str, ids: list[tuple[str, dict[str, str]]], timeout_s: float) -> dict[str, int]:
    """Poll every job (id, the headers naming its tenant) to its end; counts by final status ('unfinished' after
    ``timeout_s``)."""
    counts: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    sem = asyncio.Semaphore(32)

    async def one(job_id: str, headers: dict[str, str]) -> None:
        async with sem:
            while True:
                async with http.get(f"{base}/jobs/{job_id}", headers=headers) as r:
                    status = (await r.json()).get("status", f"http {r.status}")
                if status in ("succeeded", "failed", "expired") or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        key = status if status in ("succeeded", "failed", "expired") else f"unfinished ({status})"
        counts[key] = counts.get(key, 0) + 1

    await asyncio.gather(*(one(i, h) for i, h in ids))
    return counts


async def _open_loop(http: Any, url: str, rate: float, duration: float, pick: Any, rng: random.Random) -> list[
        dict[str, Any]]:
    """Poisson arrivals at ``rate`` per second for ``duration`` s; ``pick()`` -> (headers, meta) per request."""
    tasks = []
    start = time.perf_counter()
    at = 0.0
    while True:
        at += rng.expovariate(rate)
        if at >= duration:
            break
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        headers, meta = pick()
        tasks.append(asyncio.create_task(_send(http, url, headers, meta)))
    return list(await asyncio.gather(*tasks))


async def _run_loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    base = spec["base"]
    url = f"{base}/endpoints/fraud/invocations"
    rng = random.Random(spec.get("seed", 1))
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
        kind = spec["kind"]
        if kind == "warm":  # enough at once to overflow real-time onto serverless and pay its cold start
            results = await asyncio.gather(*(_send(http, url, {}, {}) for _ in range(spec["n"])))
            return {"results": list(results)}
        if kind == "burst":
            sem = asyncio.Semaphore(spec["concurrency"])

            async def one() -> dict[str, Any]:
                async with sem:
                    return await _send(http, url, {"X-Urgency": "high"}, {})

            t0 = time.perf_counter()
            results = await asyncio.gather(*(one() for _ in range(spec["n"])))
            return {"results": list(results), "wall_s": time.perf_counter() - t0}
        if kind == "overload":
            mix = spec["mix"]
            levels, weights = list(mix), list(mix.values())

            def pick() -> tuple[dict[str, str], dict[str, Any]]:
                urgency = rng.choices(levels, weights)[0]
                accepts = rng.random() < spec["async_share"]
                deadline = spec["deadline_ms"][urgency]
                headers = {"X-Urgency": urgency, "X-Deadline-Ms": str(deadline)}
                if urgency == "critical":
                    headers["X-Api-Key"] = TEAM_KEY
                if accepts:
                    headers["Prefer"] = "respond-async"
                return headers, {"urgency": urgency, "accepts_async": accepts, "deadline_s": deadline / 1000}

            results = await _open_loop(http, url, spec["rate"], spec["duration"], pick, rng)
            team = {"X-Api-Key": TEAM_KEY}  # a tenant sees only its own jobs
            jobs = await _jobs(http, base, [(r["job"], team if r["urgency"] == "critical" else {})
                                            for r in results if "job" in r], spec["job_timeout"])
            return {"results": results, "jobs": jobs}
        if kind == "fairness":
            out: dict[str, Any] = {}
            light = ({"X-Api-Key": TEAM_KEY}, {"tenant": "team-a"})
            out["alone"] = await _open_loop(http, url, spec["light_rate"], spec["duration"], lambda: light, rng)
            heavy_rate = spec["light_rate"] * spec["ratio"]
            total = spec["light_rate"] + heavy_rate

            def either() -> tuple[dict[str, str], dict[str, Any]]:
                if rng.random() < spec["light_rate"] / total:
                    return light
                return {}, {"tenant": "anonymous"}

            out["together"] = await _open_loop(http, url, total, spec["duration"], either, rng)
            return out
        raise ValueError(kind)


def run_loadgen(raw: str) -> int:
    spec = json.loads(raw)
    try:
        import uvloop

        result = uvloop.run(_run_loadgen(spec))
    except ImportError:
        result = asyncio.run(_run_loadgen(spec))
    sys.stdout.write(json.dumps(result))
    return 0


# --- scenarios --------------------------------------------------------------------------------


def pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def warm(demo: Demo) -> None:
    """Overflow onto the serverless server so its 2 s cold start is paid before measuring, then a few more
    rounds: the calls that shared the cold start count as warm in the latency EWMA (2 s), and the deadline
    policy keeps deadline-bound traffic off a lane it believes that slow."""
    for _ in range(4):
        loadgen({"kind": "warm", "base": demo.url, "n": 40})


def burst(demo: Demo, args: argparse.Namespace) -> dict[str, Any]:
    demo.latency(0.005)  # the demo's own: a fresh demo, its serverless server still cold
    res = loadgen({"kind": "burst", "base": demo.url, "n": 256, "concurrency": 64})
    results = res["results"]
    ok = sum(1 for r in results if r["status"] == 200)
    latencies = [r["latency_s"] for r in results]
    codes: dict[str, int] = {}
    for r in results:
        codes[str(r["status"])] = codes.get(str(r["status"]), 0) + 1
    errors: dict[str, int] = {}
    for r in results:
        if r["status"] != 200:
            key = f"{r['status']} {r.get('message', '')[:60]}"
            errors[key] = errors.get(key, 0) + 1
    summary = {"requests": len(results), "answered_200": ok, "codes": codes, "errors": errors, "wall_s": res["wall_s"],
               "p50_ms": 1000 * quantile(latencies, 0.5), "p99_ms": 1000 * quantile(latencies, 0.99),
               "max_ms": 1000 * max(latencies)}
    summary["goal"] = {"100% answered 200": ok == len(results)}
    print(f"burst: {ok}/{len(results)} answered 200 ({codes}) in {res['wall_s']:.2f} s; latency p50 "
          f"{summary['p50_ms']:.0f} ms, p99 {summary['p99_ms']:.0f} ms, max {summary['max_ms']:.0f} ms"
          + (f"; errors {errors}" if errors else ""), flush=True)
    return summary


def overload(demo: Demo, args: argparse.Namespace) -> dict[str, Any]:
    demo.latency(args.latency, args.jitter)
    warm(demo)
    capacity = SYNC_SLOTS[args.capacity_basis] / args.latency
    rate = args.factor * capacity
    deadlines = {"critical": args.deadline_ms, "high": args.deadline_ms, "normal": args.deadline_ms,
                 "low": args.deadline_ms}
    print(f"overload: {rate:.0f} req/s for {args.duration:g} s = {args.factor:g} x {capacity:.0f} req/s "
          f"({SYNC_SLOTS[args.capacity_basis]} slots of the {args.capacity_basis} basis at {args.latency * 1000:g} ms)",
          flush=True)
    res = loadgen({"kind": "overload", "base": demo.url, "rate": rate, "duration": args.duration,
                   "mix": {"critical": 10, "high": 30, "normal": 30, "low": 30}, "async_share": 0.5,
                   "deadline_ms": deadlines, "job_timeout": 300.0, "seed": args.seed})
    results = res["results"]
    classes: dict[str, dict[str, Any]] = {}
    for urgency in ("critical", "high", "normal", "low"):
        for accepts in (False, True):
            rs = [r for r in results if r["urgency"] == urgency and r["accepts_async"] is accepts]
            codes: dict[str, int] = {}
            for r in rs:
                codes[str(r["status"])] = codes.get(str(r["status"]), 0) + 1
            in_time = sum(1 for r in rs if r["status"] == 200 and r["latency_s"] <= r["deadline_s"])
            lat = [r["latency_s"] for r in rs if r["status"] == 200]
            waited = sum(1 for r in rs if (r["status"] >= 500 or r["status"] == 0) and not refused_at_once(r))
            classes[f"{urgency}{'+202' if accepts else ''}"] = {
                "requests": len(rs), "codes": codes, "200_in_deadline": in_time, "5xx_after_waiting": waited,
                "p50_ms_200": 1000 * quantile(lat, 0.5), "p99_ms_200": 1000 * quantile(lat, 0.99)}
    fivexx = [r for r in results if r["status"] >= 500 or r["status"] == 0]
    late = [r for r in fivexx if not refused_at_once(r)]
    at_once = [r["latency_s"] for r in fivexx if refused_at_once(r)]
    messages: dict[str, int] = {}
    for r in fivexx:
        key = f"{r['status']} {r.get('message', '')[:40]}"
        messages[key] = messages.get(key, 0) + 1
    urgent = [r for r in results if r["urgency"] in ("critical", "high")]
    urgent_ok = sum(1 for r in urgent if r["status"] == 200 and r["latency_s"] <= r["deadline_s"])
    critical = [r for r in results if r["urgency"] == "critical"]
    critical_ok = sum(1 for r in critical if r["status"] == 200 and r["latency_s"] <= r["deadline_s"])
    low_async = [r for r in results if r["urgency"] == "low" and r["accepts_async"]]
    jobs = res["jobs"]
    accepted = sum(1 for r in results if r["status"] == 202)
    goals = {
        "critical 100% 200 within deadline": critical_ok == len(critical),
        "critical and high 100% 200 within deadline": urgent_ok == len(urgent),
        "every 202 job succeeded": jobs.get("succeeded", 0) == accepted,
        "no 5xx but immediate 503 + Retry-After": not late,
        "low from 202 clients deferred, none shed": all(r["status"] == 202 for r in low_async),
    }
    counters = demo.counters("router_backend_calls_total", "router_queue_rejected_total", "router_deferred_total",
                             "router_shed_total", "router_fallbacks_total", "router_decisions_total",
                             "router_backend_inflight", "router_backend_capacity", "router_queue_depth",
                             "router_backend_latency_ewma_seconds")
    summary = {"counters": counters, "rate": rate, "capacity": capacity, "basis": args.capacity_basis,
               "requests": len(results),
               "classes": classes, "jobs": jobs, "accepted_202": accepted, "fivexx": messages,
               "fivexx_not_immediate": len(late), "immediate_503_p99_ms": 1000 * quantile(at_once, 0.99),
               "critical_ok": f"{critical_ok}/{len(critical)}", "urgent_ok": f"{urgent_ok}/{len(urgent)}",
               "goal": goals}
    print("| class | requests | codes | 200 within deadline | p50 / p99 of 200s (ms) | 5xx after waiting |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for name, c in classes.items():
        print(f"| {name} | {c['requests']} | {c['codes']} | {pct(c['200_in_deadline'], c['requests'])} | "
              f"{c['p50_ms_200']:.0f} / {c['p99_ms_200']:.0f} | {c['5xx_after_waiting']} |")
    print(f"jobs: {accepted} accepted, final {jobs}; 5xx: {messages} ({len(late)} not an immediate 503; the "
          f"immediate ones took {1000 * quantile(at_once, 0.5):.0f} / {1000 * quantile(at_once, 0.99):.0f} ms, "
          f"p50 / p99)", flush=True)
    if args.verbose:
        print(json.dumps(counters, indent=1))
    return summary


def fairness(demo: Demo, args: argparse.Namespace) -> dict[str, Any]:
    demo.latency(args.latency, args.jitter)
    warm(demo)
    capacity = SYNC_SLOTS["sync"] / args.latency
    light = 2 * capacity / 11
    res = loadgen({"kind": "fairness", "base": demo.url, "light_rate": light, "ratio": 10,
                   "duration": args.fair_duration, "seed": args.seed})
    alone = [r for r in res["alone"] if r["tenant"] == "team-a"]
    together = [r for r in res["together"] if r["tenant"] == "team-a"]
    heavy = [r for r in res["together"] if r["tenant"] == "anonymous"]
    p50_alone = quantile([r["latency_s"] for r in alone if r["status"] == 200], 0.5)
    p50_together = quantile([r["latency_s"] for r in together if r["status"] == 200], 0.5)
    ok = sum(1 for r in together if r["status"] == 200)
    heavy_ok = sum(1 for r in heavy if r["status"] == 200)
    # how long the router takes to refuse at once: its own delay under this load (CPU), in every answer
    refusal_p50 = quantile([r["latency_s"] for r in heavy if r["status"] == 503], 0.5)
    summary = {"light_rate": light, "heavy_rate": 10 * light, "capacity": capacity, "jitter": args.jitter,
               "light_p50_alone_ms": 1000 * p50_alone, "light_p50_together_ms": 1000 * p50_together,
               "light_200": f"{ok}/{len(together)}", "heavy_200": f"{heavy_ok}/{len(heavy)}",
               "heavy_refusal_p50_ms": 1000 * refusal_p50,
               "goal": {"light p50 <= 1.5 x alone": p50_together <= 1.5 * p50_alone,
                        "light >= 99% answered 200": ok >= 0.99 * len(together)}}
    print(f"fairness: light tenant {light:.0f} req/s, heavy {10 * light:.0f} req/s (capacity {capacity:.0f}): light "
          f"p50 {1000 * p50_alone:.0f} ms alone, {1000 * p50_together:.0f} ms together "
          f"({p50_together / p50_alone:.2f}x); light 200 {pct(ok, len(together))}, heavy 200 "
          f"{pct(heavy_ok, len(heavy))} (its immediate 503s took {1000 * refusal_p50:.0f} ms, p50); service time "
          f"{args.latency * 1000:g} ms +-{args.jitter:.0%}", flush=True)
    return summary


HOT = r"""
import asyncio, sys, time
from router.app import create_app
from router.config import parse_config
from router.runtime import Runtime
from router.types import InvocationResult

YAML = '''
server: {access_log: false}
backends:
  upstream: {kind: http, url: "http://127.0.0.1:9/invocations", max_concurrency: 1000}
models:
  bench: {lanes: {realtime: upstream}, policy: [shed-low, deadline, rules]}
policies:
  shed-low: {type: shed, params: {below_urgency: normal}}
  deadline: {type: deadline}
  rules: {type: rules, params: [{when: {saturation.realtime: {gte: 1.0}}, route: realtime, reason: full},
                                {route: realtime, reason: realtime_first}]}
'''


class Instant:
    name = "upstream"
    async def start(self): pass
    async def close(self): pass
    async def invoke(self, inv): return InvocationResult(b"0.5\n", "text/csv")


async def main(n):
    runtime = Runtime(parse_config(YAML, "bench.yaml", {}))
    app = create_app(runtime)
    await runtime.start()
    object.__setattr__(runtime.routing.targets["upstream"], "backend", Instant())
    body = b"1,2,3,4,5\n" * 100
    scope = {"type": "http", "method": "POST", "path": "/endpoints/bench/invocations", "query_string": b"",
             "headers": [(b"content-type", b"text/csv"), (b"content-length", str(len(body)).encode())]}
    async def receive(): return {"type": "http.request", "body": body, "more_body": False}
    async def send(message): pass
    for _ in range(2000):
        await app(scope, receive, send)
    t0 = time.process_time()
    for _ in range(n):
        await app(scope, receive, send)
    print((time.process_time() - t0) / n * 1e6)

asyncio.run(main(int(sys.argv[1])))
"""


def cost(demo: Demo | None, args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-flow-cost-"))
    tree = extract(args.baseline, tmp / "baseline")
    script = tmp / "hot.py"
    script.write_text(HOT)
    runs: dict[str, list[float]] = {"this": [], "baseline": []}
    for _ in range(args.cost_rounds):
        for name, path in (("this", ROOT), ("baseline", tree)):
            env = {**os.environ, "PYTHONPATH": str(path)}
            out = subprocess.run([sys.executable, str(script), "10000"], cwd=tmp, env=env, capture_output=True,
                                 text=True, check=True).stdout
            runs[name].append(float(out.strip().splitlines()[-1]))
    this, base = statistics.median(runs["this"]), statistics.median(runs["baseline"])
    added = statistics.median([a - b for a, b in zip(runs["this"], runs["baseline"], strict=True)])
    summary = {"cpu_us_per_request": {"this": this, "baseline": base}, "added_us": added, "rounds": runs,
               "baseline_ref": args.baseline, "goal": {"queue adds <= 20 us per request (CPU)": added <= 20.0}}
    print(f"cost: {this:.1f} µs CPU per request through the data plane vs {base:.1f} µs at {args.baseline} "
          f"(median of paired differences {added:+.1f} µs over {args.cost_rounds} rounds)", flush=True)
    return summary


SCENARIOS = {"burst": burst, "overload": overload, "fairness": fairness}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="burst,overload,fairness", help="comma list of burst, overload, "
                    "fairness, cost")
    ap.add_argument("--latency", type=float, default=0.25, help="sync model servers' service time for overload "
                    "and fairness (default 0.25 s: 48 req/s of capacity, so the demo, whose model servers share "
                    "the router's process, and the clients fit on 2 cores)")
    ap.add_argument("--factor", type=float, default=3.0, help="overload: offered load / capacity (default 3)")
    ap.add_argument("--capacity-basis", choices=sorted(SYNC_SLOTS), default="sync",
                    help="overload: capacity of all sync slots (12) or of the real-time backend (4)")
    ap.add_argument("--duration", type=float, default=30.0, help="overload seconds (default 30)")
    ap.add_argument("--deadline-ms", type=int, default=2000, help="overload: every request's X-Deadline-Ms "
                    "(default 2000: 8 service times)")
    ap.add_argument("--jitter", type=float, default=0.1, help="overload and fairness: each call's service time "
                    "varies uniformly by this fraction (default 0.1, as a real model's does; 0: equal service times "
                    "keep the slots freeing in lockstep after the first burst)")
    ap.add_argument("--fair-duration", type=float, default=20.0, help="fairness: seconds per phase (default 20)")
    ap.add_argument("--baseline", default="cba1f7d", help="cost: the git ref to compare with (default: before the "
                    "admission queue)")
    ap.add_argument("--cost-rounds", type=int, default=7)
    ap.add_argument("--router-ref", help="run the demo of this git ref instead of this checkout (before/after: "
                    "e.g. --router-ref cba1f7d --scenarios burst)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--verbose", action="store_true", help="print the router's counters after each scenario")
    ap.add_argument("--output", type=Path, default=RESULTS / "flow.json")
    ap.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.loadgen:
        return run_loadgen(args.loadgen)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = set(names) - {*SCENARIOS, "cost"}
    if unknown:
        ap.error(f"unknown scenarios {sorted(unknown)}")
    out: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_start": os.getloadavg(),
                           "settings": {k: v for k, v in vars(args).items() if k not in ("output", "loadgen")}}
    if "cost" in names:
        out["cost"] = cost(None, args)
    demo_names = [n for n in names if n in SCENARIOS]
    if demo_names:
        with tempfile.TemporaryDirectory(prefix="bench-flow-") as tmp:
            demo = Demo(Path(tmp), args.router_ref)
            try:
                for name in demo_names:
                    out[name] = SCENARIOS[name](demo, args)
            finally:
                demo.stop()
    out["loadavg_end"] = os.getloadavg()
    print()
    for name in names:
        for goal, met in out[name]["goal"].items():
            print(f"- {name}: {goal}: {'yes' if met else 'NO'}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
