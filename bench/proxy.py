"""The router as a drop-in proxy in front of real model servers, against the same servers direct, in one run.

    .venv/bin/python bench/proxy.py                       # 3 rounds of each scenario (~2 min)
    .venv/bin/python bench/proxy.py --rounds 5 --duration 8

Starts MLServer 1.7 (mlserver-sklearn, the interop tests' tiny logistic regression) and LitServe (OpenAI spec,
a model that streams words) from ``.venv-interop`` (``make interop``), and ``inference-router serve`` with
``protocol: kserve-v2`` and ``protocol: openai`` in front of them, each in its own process on 127.0.0.1.

Scenarios, direct and through the router alternating within each round:

- ``v2``: wrk, 32 connections, a V2 JSON infer (2 rows, no Content-Type, as tritonclient sends it) for
  ``--duration`` s. Goal: router req/s >= 95% of direct (median of the per-round ratios).
- ``first-event``: ``--streams`` streamed chat completions one after another (aiohttp); the time from sending
  the request to the first ``data:`` event. Goal: router p50 <= direct p50 + 2 ms.
- ``5mb``: one 5 MB V2 request (``"id"`` set, so the answer echoes it instead of a fresh uuid), plain and gzip
  both ways: the answers through the router must equal the direct ones byte for byte (gzip: once decoded,
  as the gzip header carries the time it was written).

CPU layout: with two or more CPUs the model servers run on the last one and the router and the load generators
on the others (``taskset``), the way the router is deployed, with CPU of its own: both runs then give the model
server the same CPU, and the ratio shows what the router costs a client, not which process wins a shared core.
``--shared`` lets every process float over every CPU instead; then the router's CPU (reported per request) is
taken from the model server's.

Results: a markdown summary and ``bench/results/proxy.json``. Figures are indicative on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import WRK_LUA, med, router_cli, run_wrk, started
from upstream import cpu_of_its_own, free_port, require_tools

ROOT = Path(__file__).resolve().parent.parent
INTEROP = ROOT / "tests" / "interop"
PYTHON = Path(os.environ.get("ROUTER_INTEROP_PYTHON", ROOT / ".venv-interop" / "bin" / "python"))
RESULTS = ROOT / "bench" / "results"
MIN_V2_RATIO = 0.95
MAX_FIRST_EVENT_ADDED_MS = 2.0

ROUTER_YAML = """\
server: {{listen: "127.0.0.1:{port}", access_log: true, log_format: json}}
backends:
  mls: {{kind: http, url: "{mlserver}/v2/models/lr/infer", max_concurrency: 256, timeout: 30s}}
  lit: {{kind: http, url: "{litserve}/v1/chat/completions", max_concurrency: 64, timeout: 30s}}
models:
  lr: {{lanes: {{realtime: mls}}, protocol: kserve-v2, limits: {{realtime: 16MB}}}}
  words: {{lanes: {{realtime: lit}}, protocol: openai}}
"""

V2_LUA = WRK_LUA.replace('wrk.headers["Content-Type"] = "text/csv"\n', "")


def wait_ready(url: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s:g}s")


def v2_body(rows: int, request_id: str | None = None) -> bytes:
    doc: dict[str, Any] = {"inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP64",
                                       "data": [round((i % 97) / 48.5 - 1.0, 6) for i in range(rows * 4)]}]}
    if request_id:
        doc["id"] = request_id
    return json.dumps(doc).encode()


def v2_rounds(wrk: str, tmp: Path, direct: str, router: str, rounds: int, duration: float,
              router_pid: int) -> dict[str, Any]:
    script = tmp / "v2.lua"
    script.write_text(V2_LUA.format(body=v2_body(2).decode()))
    path = "/v2/models/lr/infer"
    per: dict[str, list[dict[str, Any]]] = {"direct": [], "router": []}
    for i in range(rounds):
        order = [("direct", direct, None), ("router", router, router_pid)]
        for name, base, pid in order if i % 2 == 0 else reversed(order):
            res = run_wrk(wrk, script, base + path, 2, 32, duration, pid)
            if res["errors"]:
                raise RuntimeError(f"{name}: wrk saw errors: {res}")
            per[name].append(res)
    ratios = [r["rps"] / d["rps"] for r, d in zip(per["router"], per["direct"], strict=True)]
    return {"direct_rps": med([r["rps"] for r in per["direct"]]), "router_rps": med([r["rps"] for r in per["router"]]),
            "ratio": med(ratios), "ratios": ratios, "router_cpu_us_per_req": med(
                [r["cpu_us_per_req"] for r in per["router"]]), "rounds": per}


async def first_event_s(session: aiohttp.ClientSession, base: str) -> float:
    body = {"model": "words", "stream": True, "messages": [{"role": "user", "content": "one two three"}]}
    started_at = time.perf_counter()
    async with session.post(base + "/v1/chat/completions", json=body) as resp:
        line = await resp.content.readline()
        first = time.perf_counter() - started_at
        if not line.startswith(b"data:"):
            raise RuntimeError(f"{base}: not an event: {line!r}")
        await resp.read()
    return first


async def first_event_rounds(direct: str, router: str, rounds: int, streams: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {"direct": [], "router": []}
    async with aiohttp.ClientSession() as session:
        for base in (direct, router):
            for _ in range(5):  # warm the connections and the model
                await first_event_s(session, base)
        for _ in range(rounds):
            for _ in range(streams):  # interleaved request by request: both see the same machine
                times["direct"].append(await first_event_s(session, direct))
                times["router"].append(await first_event_s(session, router))
    p50 = {k: statistics.median(v) * 1000.0 for k, v in times.items()}
    return {"direct_p50_ms": p50["direct"], "router_p50_ms": p50["router"],
            "added_p50_ms": p50["router"] - p50["direct"], "streams": len(times["direct"])}


async def large_request(direct: str, router: str) -> dict[str, Any]:
    body = v2_body(122_000, request_id="bench-5mb")  # about 5 MB of JSON
    out: dict[str, Any] = {"request_bytes": len(body)}
    async with aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("Accept-Encoding",)) as session:
        for label, data, headers in (("plain", body, {}),
                                     ("gzip", gzip.compress(body), {"Content-Encoding": "gzip",
                                                                    "Accept-Encoding": "gzip"})):
            answers = {}
            for name, base in (("direct", direct), ("router", router)):
                async with session.post(base + "/v2/models/lr/infer", data=data, headers=headers,
                                        skip_auto_headers=("Content-Type",)) as resp:
                    raw = await resp.read()
                    encoding = resp.headers.get("Content-Encoding")
                    # a gzip header carries its own time: compare what it decodes to
                    plain = gzip.decompress(raw) if encoding == "gzip" else raw
                    answers[name] = (resp.status, hashlib.sha256(plain).hexdigest(), len(plain), encoding)
            out[label] = {"equal": answers["direct"] == answers["router"], "direct": answers["direct"],
                          "router": answers["router"]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--streams", type=int, default=100, help="streams per target per round")
    parser.add_argument("--shared", action="store_true",
                        help="no CPU pinning: the router shares the model servers' CPUs")
    args = parser.parse_args(argv)
    servers_cpu = cpu_of_its_own(shared=args.shared)
    tools = require_tools("wrk")
    if not PYTHON.exists():
        sys.stderr.write(f"{PYTHON} is missing: run `make interop` first\n")
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp_name:
        tmp = Path(tmp_name)
        mls_port, lit_port, router_port = free_port(), free_port(), free_port()
        subprocess.run([str(PYTHON), str(INTEROP / "train_lr.py"), str(tmp / "repo"), str(mls_port),
                        str(free_port()), str(free_port())], check=True)
        mlserver, litserve, router = (f"http://127.0.0.1:{p}" for p in (mls_port, lit_port, router_port))
        config = tmp / "router.yaml"
        config.write_text(ROUTER_YAML.format(port=router_port, mlserver=mlserver, litserve=litserve))
        with started([*servers_cpu, str(PYTHON.parent / "mlserver"), "start", str(tmp / "repo")], mls_port,
                     tmp / "mls.log"), \
                started([*servers_cpu, str(PYTHON), str(INTEROP / "litserve_app.py"), str(lit_port)], lit_port,
                        tmp / "lit.log"), \
                started([router_cli(), "serve", "--config", str(config)], router_port, tmp / "router.log") as proc:
            wait_ready(mlserver + "/v2/models/lr/ready")
            wait_ready(litserve + "/health")
            wait_ready(router + "/v2/models/lr/ready")
            results = {
                "5mb": asyncio.run(large_request(mlserver, router)),
                "first_event": asyncio.run(first_event_rounds(litserve, router, args.rounds, args.streams)),
                "v2": v2_rounds(tools["wrk"], tmp, mlserver, router, args.rounds, args.duration, proc.pid),
            }
    layout = "shared" if not servers_cpu else f"model servers on CPU {servers_cpu[-1]}, the rest on the others"
    (RESULTS / "proxy.json").write_text(json.dumps({**results, "layout": layout}, indent=2))
    print(f"CPU layout: {layout}\n")
    v2, fe, big = results["v2"], results["first_event"], results["5mb"]
    print("| scenario | direct | router | result | goal |")
    print("| --- | ---: | ---: | ---: | --- |")
    print(f"| V2 infer, c=32 (req/s) | {v2['direct_rps']:,.0f} | {v2['router_rps']:,.0f} | "
          f"**{v2['ratio']:.1%}** (rounds: {', '.join(f'{r:.1%}' for r in v2['ratios'])}) | >= {MIN_V2_RATIO:.0%} |")
    print(f"| first streamed event, p50 (ms) | {fe['direct_p50_ms']:.2f} | {fe['router_p50_ms']:.2f} | "
          f"**{fe['added_p50_ms']:+.2f} ms** ({fe['streams']} streams each) | <= +{MAX_FIRST_EVENT_ADDED_MS:g} ms |")
    for label in ("plain", "gzip"):
        print(f"| {big['request_bytes'] / 1e6:.1f} MB V2 request, {label} | {big[label]['direct'][2]:,} B | "
              f"{big[label]['router'][2]:,} B | **{'equal' if big[label]['equal'] else 'DIFFERENT'}** | "
              "byte for byte |")
    print(f"\nrouter CPU per V2 request: {v2['router_cpu_us_per_req']:.0f} us; details in {RESULTS / 'proxy.json'}")
    ok = v2["ratio"] >= MIN_V2_RATIO and fe["added_p50_ms"] <= MAX_FIRST_EVENT_ADDED_MS and all(
        big[k]["equal"] for k in ("plain", "gzip"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
