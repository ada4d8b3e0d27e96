"""``inference-router simulate`` and ``inference-router recommend``: their arguments and what they print."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from router.config import RouterConfig, load_config
from router.sim.progress import Progress
from router.sim.result import Result
from router.sim.run import MissingServiceTime, Simulation
from router.sim.source import Source, mix_for
from router.sim.synthetic import KINDS
from router.sim.text import table
from router.sim.trace import TraceStats
from router.units import parse_duration
from router.yamlpos import ConfigError


def _configs(paths: Sequence[str]) -> list[tuple[str, RouterConfig]]:
    """Every config, named by its file (made unique); all their errors listed before giving up."""
    out: list[tuple[str, RouterConfig]] = []
    failed = False
    for path in paths:
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            for issue in exc.issues:
                sys.stderr.write(f"{issue}\n")
            failed = True
            continue
        name = Path(path).name
        while any(n == name for n, _ in out):
            name += "'"
        out.append((name, cfg))
    if failed:
        raise SystemExit(2)
    return out


def _config_paths(args: argparse.Namespace) -> list[str]:
    paths: list[str] = args.config or ([os.environ["ROUTER_CONFIG"]] if os.environ.get("ROUTER_CONFIG") else [])
    if not paths:
        sys.stderr.write("--config is required (or ROUTER_CONFIG)\n")
        raise SystemExit(2)
    return paths


def _source(args: argparse.Namespace, cfg: RouterConfig) -> Source:
    if args.trace is not None:
        if not Path(args.trace).is_file():
            sys.stderr.write(f"--trace {args.trace}: no such file\n")
            raise SystemExit(2)
        return Source(trace=args.trace)
    if args.rps is None or args.duration is None:
        sys.stderr.write("--synthetic needs --rps and --duration\n")
        raise SystemExit(2)
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        sys.stderr.write(f"--duration: {exc}\n")
        raise SystemExit(2) from None
    return Source(kind=args.synthetic, rps=args.rps, duration_s=duration, seed=args.seed, mix=mix_for(cfg))


def run_one(name: str, cfg: RouterConfig, source: Source, seed: int, progress: bool = True) -> Result:
    """Simulate one config on the source (service times learned from the trace where the config has none)."""
    fitted = source.fitted() if any(b.simulate is None or b.simulate.service_time is None
                                    for b in cfg.backends.values()) else {}
    sim = Simulation(cfg, name, fitted, seed)
    stats = TraceStats()
    bar = Progress(f"simulating {name}", source.expected) if progress else None
    result = sim.run(source.requests(stats), bar.update if bar else None)
    if bar is not None:
        bar.close()
    result.trace_skipped, result.trace_late = stats.skipped, stats.late
    return result


def cmd_simulate(args: argparse.Namespace) -> int:
    configs = _configs(_config_paths(args))
    source = _source(args, configs[0][1])
    results = []
    for name, cfg in configs:
        try:
            results.append(run_one(name, cfg, source, args.seed, progress=not args.json))
        except MissingServiceTime as exc:
            sys.stderr.write(f"{name}: {exc}\n")
            return 2
    if args.json:
        sys.stdout.write(json.dumps({"source": source.describe(), "results": [r.to_json() for r in results]},
                                    indent=2) + "\n")
    else:
        sys.stdout.write(table(results, f"simulated: {source.describe()}"))
    if args.html:
        from router.sim.report import write_report

        write_report(args.html, results, source.describe())
        sys.stderr.write(f"report: {args.html}\n")
    if args.charts:
        from router.sim.report import save_charts

        for path in save_charts(args.charts, results):
            sys.stderr.write(f"chart: {path}\n")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from router.sim.recommend import recommend_command

    return recommend_command(args, _configs(_config_paths(args))[0])


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``simulate`` and ``recommend``."""
    p = sub.add_parser("simulate", help="replay traffic through the router's own decisions on a virtual clock, "
                                        "per config: lane split, latency percentiles, cost")
    p.add_argument("--config", action="append", help="a config to simulate (repeat to compare several)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--trace", help="a JSON access log of the router")
    what.add_argument("--synthetic", choices=KINDS, help="a synthetic traffic pattern")
    p.add_argument("--rps", type=float, help="synthetic: mean requests per second")
    p.add_argument("--duration", help="synthetic: how long, e.g. 10m")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--html", help="write a self-contained report with charts to this file")
    p.add_argument("--charts", metavar="DIR", help="also write the report's charts as PNG files into DIR")
    p.set_defaults(fn=cmd_simulate)

    p = sub.add_parser("recommend", help="the cheapest config that meets an SLO on a trace, from a sweep of "
                                         "simulations")
    p.add_argument("--config", action="append", help="the config to start from")
    p.add_argument("--trace", required=True, help="a JSON access log of the router")
    p.add_argument("--slo", required=True, help="a latency objective on answered sync requests, e.g. 'p99<=300ms'")
    p.add_argument("--deadline-misses", default="0.1%", help="the most requests with a deadline that may miss it")
    p.add_argument("--max-rejected", default="1%", help="the most requests that may get no answer (shed, failed)")
    p.add_argument("--out", default="recommended.yaml", help="where to write the recommended config")
    p.add_argument("--workers", type=int, default=2, help="simulations run at once (processes)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the sweep as JSON")
    p.set_defaults(fn=cmd_recommend)
