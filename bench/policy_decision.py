"""Micro-benchmark: one policy decision as the data plane makes it per request, no server.

    .venv/bin/python bench/policy_decision.py [--repeats 7] [--number 20000]

Per call, as in ``router.api.dataplane.DataPlane._serve``:
``routing.features.extract(...)`` + ``runtime.tracker.snapshot(...)`` + ``routing.engine.decide(...)``,
for a demo-like model (two lanes, chain [shed, deadline, rules with 3 rules]); and ``engine.decide`` alone.
Reports the median per-call µs over ``--repeats`` repeats of ``--number`` calls (the issue's target: one
decision <= 20 µs) and writes ``bench/results/policy.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from router.config import parse_config
from router.runtime import Runtime
from router.types import Route

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_US = 20.0

# policies/demo.yaml's routing, inlined so the benchmark does not move when the demo does.
CONFIG = """\
server: {listen: "127.0.0.1:8080", access_log: true}
urgency:
  header: X-Urgency
  levels: {critical: 3, high: 2, normal: 1, low: 0}
  default: normal
  anonymous_max: high
callers:
  - {api_key: "bench-team-a-key", tenant: team-a, max_urgency: critical}
backends:
  fraud-rt: {kind: http, url: "http://127.0.0.1:9101/invocations", max_concurrency: 4, timeout: 2s}
  fraud-sls:
    kind: http
    url: "http://127.0.0.1:9102/invocations"
    max_concurrency: 8
    timeout: 10s
    serverless: {idle_after: 30s, cold_start: 2s}
models:
  fraud:
    lanes: {realtime: fraud-rt, serverless: fraud-sls}
    limits: {realtime: 6MB, serverless: 4MB}
    policy: [shed-low, deadline, by-size-and-saturation]
policies:
  shed-low: {type: shed, params: {below_urgency: normal, when_saturation_at_least: 1.0, retry_after: 2s}}
  deadline: {type: deadline}
  by-size-and-saturation:
    type: rules
    params:
      - {when: {payload_bytes: {gt: 4MB}}, route: realtime, reason: too_big_for_serverless}
      - {when: {saturation.realtime: {gte: 1.0}}, route: serverless, fallback: [realtime], reason: realtime_full}
      - {route: realtime, fallback: [serverless], reason: realtime_first}
"""

# Lower-cased headers as the data plane builds them from the ASGI scope (wrk/curl-like client).
BASE_HEADERS = {
    "host": "127.0.0.1:8080",
    "user-agent": "bench/1.0",
    "accept": "*/*",
    "content-type": "text/csv",
    "content-length": "1024",
}
SCENARIOS: dict[str, dict[str, str]] = {
    "anonymous, no urgency header": {},
    "API key + X-Urgency: critical": {"x-api-key": "bench-team-a-key", "x-urgency": "critical"},
    "X-Urgency: low + X-Deadline-Ms": {"x-urgency": "low", "x-deadline-ms": "250"},
}


def per_call_us(fn: Callable[[], object], number: int, repeats: int) -> list[float]:
    """µs per call for each repeat (perf_counter_ns around a tight loop of ``number`` calls)."""
    out: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(number):
            fn()
        out.append((time.perf_counter_ns() - t0) / number / 1000.0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--number", type=int, default=20_000, help="calls per repeat")
    ap.add_argument("--output", type=Path, default=RESULTS / "policy.json")
    ap.add_argument("--extra-backends", type=int, default=20,
                    help="also time the decision with this many more backends in the config (0: skip)")
    args = ap.parse_args(argv)

    runtime = Runtime(parse_config(CONFIG))
    routing = runtime.routing
    entry = routing.models["fraud"]
    lanes, limits = entry.routes.lanes, entry.routes.limits
    extract, snapshot, decide = routing.features.extract, runtime.tracker.snapshot, routing.engine.decide
    metrics = runtime.metrics

    results: list[dict[str, Any]] = []
    for scenario, extra in SCENARIOS.items():
        headers = {**BASE_HEADERS, **extra}

        def full(headers: dict[str, str] = headers) -> object:
            features = extract("fraud", headers, 1024)
            snap = snapshot(lanes, limits)
            return decide(features, snap)

        features = extract("fraud", headers, 1024)
        snap = snapshot(lanes, limits)
        route = decide(features, snap)
        decision = route.decision

        def decide_only(features: Any = features, snap: Any = snap) -> object:
            return decide(features, snap)

        def with_metric(headers: dict[str, str] = headers) -> object:
            route = decide(extract("fraud", headers, 1024), snapshot(lanes, limits))
            d = route.decision
            metrics.decisions("fraud", d.lane.value, d.reason).inc()  # the data plane's next line
            return route

        def extract_only(headers: dict[str, str] = headers) -> object:
            return extract("fraud", headers, 1024)

        def snapshot_only() -> object:
            return snapshot(lanes, limits)

        for what, fn in (("extract+snapshot+decide", full), ("engine.decide alone", decide_only),
                         ("features.extract alone", extract_only), ("tracker.snapshot alone", snapshot_only),
                         ("extract+snapshot+decide+decisions metric", with_metric)):
            for _ in range(2000):  # warm-up
                fn()
            samples = per_call_us(fn, args.number, args.repeats)
            results.append({"scenario": scenario, "measure": what, "median_us": statistics.median(samples),
                            "min_us": min(samples), "samples_us": samples,
                            "decision": {"lane": decision.lane.value, "reason": decision.reason,
                                         "policy": decision.policy}})

    if args.extra_backends:
        # tracker.snapshot reads every backend of the config, not only the model's lanes: see how that scales.
        more = "".join(f'  other-{i}: {{kind: http, url: "http://127.0.0.1:{10000 + i}/invocations"}}\n'
                       for i in range(args.extra_backends))
        big = Runtime(parse_config(CONFIG.replace("backends:\n", "backends:\n" + more, 1)))
        b_entry = big.routing.models["fraud"]
        b_extract, b_snapshot, b_decide = big.routing.features.extract, big.tracker.snapshot, big.routing.engine.decide
        headers = dict(BASE_HEADERS)

        def big_full() -> Route:
            return b_decide(b_extract("fraud", headers, 1024), b_snapshot(b_entry.routes.lanes, b_entry.routes.limits))

        for _ in range(2000):
            big_full()
        samples = per_call_us(big_full, args.number, args.repeats)
        route = big_full()
        results.append({"scenario": f"anonymous, config with {args.extra_backends + 2} backends",
                        "measure": "extract+snapshot+decide", "median_us": statistics.median(samples),
                        "min_us": min(samples), "samples_us": samples,
                        "decision": {"lane": route.decision.lane.value, "reason": route.decision.reason,
                                     "policy": route.decision.policy}})

    print(f"Median µs per call over {args.repeats} repeats x {args.number:,} calls "
          f"(target: one decision <= {TARGET_US:g} µs)\n")
    print("| scenario | measure | decision | median µs | min µs |")
    print("| --- | --- | --- | ---: | ---: |")
    for r in results:
        d = r["decision"]
        print(f"| {r['scenario']} | {r['measure']} | {d['lane']}/{d['reason']} | {r['median_us']:.2f} "
              f"| {r['min_us']:.2f} |")
    demo = [r for r in results if r["measure"] == "extract+snapshot+decide" and r["scenario"] in SCENARIOS]
    worst = max(r["median_us"] for r in demo)
    print(f"\ndemo config, worst scenario, extract+snapshot+decide: {worst:.2f} µs -> "
          f"{'meets' if worst <= TARGET_US else 'MISSES'} the {TARGET_US:g} µs target")
    for r in results:
        if r["scenario"] not in SCENARIOS:
            print(f"{r['scenario']}: {r['median_us']:.2f} µs -> "
                  f"{'meets' if r['median_us'] <= TARGET_US else 'MISSES'} the target")
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
           "repeats": args.repeats, "number": args.number, "target_us": TARGET_US,
           "worst_full_decision_us": worst, "ok": worst <= TARGET_US, "results": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
