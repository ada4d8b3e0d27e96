"""InvokeEndpointWithResponseStream through the router vs direct to the SageMaker Runtime emulator, in one run.

    .venv/bin/python bench/streaming.py                  # 3 rounds (~1 min)
    .venv/bin/python bench/streaming.py --rounds 5 --streams 200

A model container answers every POST with ``--parts`` parts, ``--gap-ms`` apart; the emulator
(``tests/sm_emulator.py``) relays them as PayloadPart events. Both run in a process of their own
(``bench/stream_endpoint.py``), as SageMaker is to its clients; ``--endpoint in-process`` puts them in the client's
process instead (the direct path then crosses no process boundary). ``inference-router serve`` runs in its own process
with a ``sagemaker`` backend on the emulator (``--backend sagemaker``, the default: one hop more than direct,
plus botocore's cost of a call), or an ``http`` backend on the container (``--backend http``: one hop each
way, the relay alone). The client reads the raw event stream with aiohttp and botocore's own decoder.

- first part: ``--streams`` streams one after another per round, direct, through the router and through a bare
  aiohttp relay (``bench/bare_relay.py``, in front of the emulator: the cost of one hop by itself, the floor
  for the ``sagemaker`` backend) interleaved; time from the request to the first PayloadPart. Goal: router
  p50 <= direct p50 + 2 ms. Also the router's CPU per stream (utime + stime of its process).
- same bytes: every stream's bytes, in order, equal through the router and direct (where the parts split
  depends on when the model's writes arrive).
- 32 concurrent streams through the router: each must end with all its parts within 10 s (none stalled).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from botocore.eventstream import EventStreamBuffer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from overhead import proc_cpu_s, router_cli, started  # noqa: E402
from stream_endpoint import running  # noqa: E402
from upstream import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MAX_ADDED_MS = 2.0
CONCURRENT = 32


async def one_stream(session: aiohttp.ClientSession, base: str, endpoint: str) -> tuple[float, list[bytes]]:
    """(seconds to the first PayloadPart, the parts in order)."""
    started_at = time.perf_counter()
    first = 0.0
    parts: list[bytes] = []
    buffer = EventStreamBuffer()
    async with session.post(f"{base}/endpoints/{endpoint}/invocations-response-stream", data=b'{"x": 1}',
                            headers={"Content-Type": "application/json"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{base}: {resp.status} {await resp.text()}")
        async for chunk in resp.content.iter_any():
            buffer.add_data(chunk)
            for message in buffer:
                if message.headers.get(":event-type") != "PayloadPart":
                    raise RuntimeError(f"{base}: {message.headers} {message.payload!r}")
                if not parts:
                    first = time.perf_counter() - started_at
                parts.append(message.payload)
    return first, parts


@contextlib.asynccontextmanager
async def endpoint(args: argparse.Namespace, tmp: Path) -> AsyncIterator[tuple[str, str]]:
    """(emulator URL, container URL) of the streaming endpoint, in a process of its own (``--endpoint own``, as
    SageMaker is to its clients) or in this one, beside the client (``--endpoint in-process``: the direct path
    then crosses no process boundary while the router's crosses four)."""
    if args.endpoint == "own":
        port, container_port = free_port(), free_port()
        with started([sys.executable, str(ROOT / "bench" / "stream_endpoint.py"), str(port), str(container_port),
                      str(args.parts), str(args.gap_ms)], port, tmp / "endpoint.log"):
            yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{container_port}"
        return
    async with running(args.parts, args.gap_ms / 1000.0) as urls:
        yield urls


async def run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp_dir:
        tmp = Path(tmp_dir)
        async with endpoint(args, tmp) as (emulator_url, container_url):
            config = tmp / "router.yaml"
            config.write_text(f"""
server: {{listen: "127.0.0.1:{port}", access_log: true, log_format: json}}
backends:
  sm: {{kind: sagemaker, endpoint: gen, region: us-east-1, endpoint_url: "{emulator_url}", max_concurrency: 64}}
  http: {{kind: http, url: "{container_url}/invocations", max_concurrency: 64}}
models:
  gen: {{lanes: {{realtime: {"sm" if args.backend == "sagemaker" else "http"}}}}}
""")
            env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                   "AWS_DEFAULT_REGION": "us-east-1"}
            relay_port, variant_port = free_port(), free_port()
            with contextlib.ExitStack() as stack:
                proc = stack.enter_context(started([router_cli(), "serve", "--config", str(config)], port,
                                                   tmp / "router.log", env))
                stack.enter_context(started([sys.executable, str(ROOT / "bench" / "bare_relay.py"), str(relay_port),
                                             emulator_url], relay_port, tmp / "relay.log"))
                if args.variant is not None:  # the same router with bench/router_variant.py's tweaks, interleaved
                    variant_config = tmp / "variant.yaml"
                    variant_config.write_text(config.read_text().replace(f"127.0.0.1:{port}",
                                                                         f"127.0.0.1:{variant_port}"))
                    stack.enter_context(started(
                        [sys.executable, str(ROOT / "bench" / "router_variant.py"), *args.variant.split(), "--",
                         "serve", "--config", str(variant_config)], variant_port, tmp / "variant.log", env))
                router, relay = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{relay_port}"
                variant = f"http://127.0.0.1:{variant_port}" if args.variant is not None else None
                async with aiohttp.ClientSession() as session:
                    for _ in range(5):
                        for url in (router, relay, emulator_url, variant):
                            if url is not None:
                                await one_stream(session, url, "gen")
                    firsts: dict[str, list[float]] = {"direct": [], "router": [], "relay": [], "variant": []}
                    expected = b"".join(f"part-{i:03d} ".encode() for i in range(args.parts))
                    same = True
                    cpu_before = proc_cpu_s(proc.pid)
                    for _ in range(args.rounds):
                        for _ in range(args.streams):
                            d_first, d_parts = await one_stream(session, emulator_url, "gen")
                            r_first, r_parts = await one_stream(session, router, "gen")
                            firsts["relay"].append((await one_stream(session, relay, "gen"))[0])
                            if variant is not None:
                                firsts["variant"].append((await one_stream(session, variant, "gen"))[0])
                            firsts["direct"].append(d_first)
                            firsts["router"].append(r_first)
                            # the same bytes in the same order (where parts split depends on when writes arrive)
                            same = same and b"".join(d_parts) == b"".join(r_parts) == expected
                    cpu_ms = (proc_cpu_s(proc.pid) - cpu_before) * 1000.0 / len(firsts["router"])
                    started_at = time.perf_counter()
                    done = await asyncio.wait_for(asyncio.gather(
                        *(one_stream(session, router, "gen") for _ in range(CONCURRENT))), 10.0 + args.parts *
                        args.gap_ms / 1000.0)
                    concurrent_s = time.perf_counter() - started_at
    p50 = {k: statistics.median(v) * 1000.0 for k, v in firsts.items() if v}
    return {"endpoint": args.endpoint, "backend": args.backend,
            "direct_first_p50_ms": p50["direct"], "router_first_p50_ms": p50["router"],
            "added_first_p50_ms": p50["router"] - p50["direct"], "streams": len(firsts["router"]),
            "bare_relay_first_p50_ms": p50["relay"], "bare_relay_added_first_p50_ms": p50["relay"] - p50["direct"],
            "router_cpu_ms_per_stream": cpu_ms,
            **({"variant": args.variant, "variant_added_first_p50_ms": p50["variant"] - p50["direct"]}
               if args.variant is not None else {}),
            "same_bytes_in_order": same, "concurrent": CONCURRENT,
            "concurrent_complete": sum(1 for _, parts in done if b"".join(parts) == expected),
            "concurrent_wall_s": concurrent_s, "ideal_wall_s": (args.parts - 1) * args.gap_ms / 1000.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=100, help="streams per target per round")
    parser.add_argument("--parts", type=int, default=20)
    parser.add_argument("--gap-ms", type=float, default=5.0)
    parser.add_argument("--backend", choices=("sagemaker", "http"), default="sagemaker")
    parser.add_argument("--variant", metavar="ARGS",
                        help="also a router run by bench/router_variant.py ARGS (e.g. '--no-coalesce'), interleaved")
    parser.add_argument("--endpoint", choices=("own", "in-process"), default="own",
                        help="the endpoint in a process of its own (default), or in the client's")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "streaming.json").write_text(json.dumps(result, indent=2))
    print("| measure | direct | router | result | goal |")
    print("| --- | ---: | ---: | ---: | --- |")
    print(f"| first PayloadPart, p50 (ms), {args.backend} backend | {result['direct_first_p50_ms']:.2f} | "
          f"{result['router_first_p50_ms']:.2f} | **{result['added_first_p50_ms']:+.2f} ms** "
          f"({result['streams']} streams each) | <= +{MAX_ADDED_MS:g} ms |")
    print(f"| first PayloadPart, p50 (ms), a bare aiohttp relay in front of the emulator (one hop, nothing else) | "
          f"{result['direct_first_p50_ms']:.2f} | {result['bare_relay_first_p50_ms']:.2f} | "
          f"{result['bare_relay_added_first_p50_ms']:+.2f} ms | (the floor) |")
    if args.variant is not None:
        print(f"| first PayloadPart, p50 (ms), the router with `{args.variant}` | "
              f"{result['direct_first_p50_ms']:.2f} | "
              f"{result['direct_first_p50_ms'] + result['variant_added_first_p50_ms']:.2f} | "
              f"{result['variant_added_first_p50_ms']:+.2f} ms | |")
    print(f"| router CPU per stream of {args.parts} parts | | {result['router_cpu_ms_per_stream']:.2f} ms | | |")
    print(f"| parts, bytes and order | | | **{'same' if result['same_bytes_in_order'] else 'DIFFERENT'}** | same |")
    print(f"| {CONCURRENT} concurrent streams through the router | | {result['concurrent_wall_s']:.2f} s "
          f"(ideal {result['ideal_wall_s']:.2f} s) | **{result['concurrent_complete']}/{CONCURRENT} complete** | "
          "none stalled |")
    ok = (result["added_first_p50_ms"] <= MAX_ADDED_MS and result["same_bytes_in_order"]
          and result["concurrent_complete"] == CONCURRENT)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
