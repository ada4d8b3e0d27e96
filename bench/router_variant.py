"""Run ``inference-router serve`` with opt-in process tweaks, to measure them before changing the router.

    .venv/bin/python bench/router_variant.py [--gc-freeze] [--gc-threshold N] [--gc-stats] [--plain-http] \
        -- serve --config FILE

``--gc-freeze``: ``gc.freeze()`` once the runtime has started (startup objects leave the collected generations).
``--gc-threshold N``: ``gc.set_threshold(N, ...)`` for generation 0 (default 700).
``--gc-stats``: at shutdown, write the collections and seconds spent per generation to stderr as one JSON line.
``--plain-http``: uvicorn's own httptools protocol instead of the router's (router/api/limits.py): the router as
it was before its connection limits, to measure what they cost (or what an attack does without them).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from typing import Any


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gc-freeze", action="store_true")
    ap.add_argument("--gc-threshold", type=int, default=0)
    ap.add_argument("--gc-stats", action="store_true")
    ap.add_argument("--plain-http", action="store_true")
    ap.add_argument("cli", nargs=argparse.REMAINDER, help="-- then the inference-router arguments")
    args = ap.parse_args(argv)
    cli = args.cli[1:] if args.cli[:1] == ["--"] else args.cli

    if args.plain_http:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        from router import serving

        serving.limited_protocol = lambda *_, **__: HttpToolsProtocol  # type: ignore[assignment]
    if args.gc_threshold:
        _, g1, g2 = gc.get_threshold()
        gc.set_threshold(args.gc_threshold, g1, g2)
    if args.gc_stats:
        stats: dict[int, list[float]] = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
        started: list[float] = [0.0]

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                s = stats[info["generation"]]
                s[0] += 1
                s[1] += time.perf_counter() - started[0]

        gc.callbacks.append(on_gc)

        def report() -> None:
            sys.stderr.write(json.dumps({"event": "gc_stats", "per_generation": {
                g: {"collections": int(c), "seconds": round(t, 4)} for g, (c, t) in stats.items()}}) + "\n")
            sys.stderr.flush()

        # uvicorn re-raises SIGTERM after its graceful shutdown, so atexit never runs: report on lifespan shutdown.
        from router import runtime as rt

        close = rt.Runtime.close

        async def close_and_report(self: rt.Runtime) -> None:
            await close(self)
            report()

        rt.Runtime.close = close_and_report  # type: ignore[method-assign]
    if args.gc_freeze:
        from router import runtime

        original = runtime.Runtime.start

        async def start(self: runtime.Runtime) -> None:
            await original(self)
            gc.collect()
            gc.freeze()

        runtime.Runtime.start = start  # type: ignore[method-assign]

    from router.cli import main as cli_main

    return cli_main(cli)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
