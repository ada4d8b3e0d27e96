"""``inference-router serve | check | explain | demo | simulate | recommend``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from router.config import RouterConfig, load_config
from router.config_sources import config_sources
from router.yamlpos import ConfigError, ConfigIssue

if TYPE_CHECKING:
    from router.explain import StateOverride
    from router.runtime import Runtime

CONFIG_ENV = "ROUTER_CONFIG"  # stands in for --config (DESIGN.md's CLI contract)
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
EXIT_WARNINGS = 1  # check --strict: the config works, but not as written
EXIT_ERRORS = 2


class UsageError(Exception):
    """A command line that cannot run: said on stderr, exit 2."""


def _config_path(args: argparse.Namespace) -> str:
    path: str | None = args.config or os.environ.get(CONFIG_ENV) or None
    if path is None:
        raise UsageError(f"inference-router {args.command}: give --config FILE or set {CONFIG_ENV}")
    return path


def _load_or_exit(path: str, warnings: list[ConfigIssue] | None = None) -> RouterConfig:
    try:
        return load_config(path, warnings=warnings)
    except ConfigError as exc:
        for issue in exc.issues:
            sys.stderr.write(f"{issue}\n")
        sys.stderr.write(f"{path}: {len(exc.issues)} error(s)\n")
        raise SystemExit(EXIT_ERRORS) from None


def _log_level(args: argparse.Namespace) -> int:
    return LOG_LEVELS[args.log_level or os.environ.get("ROUTER_LOG_LEVEL", "info").lower()]


def run_server(app: object, runtime: Runtime, host: str, port: int) -> None:
    """Serve ``app`` with uvicorn (uvloop + httptools measured fastest here, see shared/FACTS.md), with the
    connection limits and the drain of ``router.serving``."""
    from router.serving import RouterServer, server_config

    config = server_config(app, runtime, host=host, port=port, loop="uvloop")
    RouterServer(config, runtime).run()


def cmd_serve(args: argparse.Namespace) -> int:
    import structlog

    from router.app import create_app
    from router.logging import configure_logging
    from router.runtime import Runtime

    path = _config_path(args)
    warnings: list[ConfigIssue] = []
    cfg = _load_or_exit(path, warnings)
    configure_logging(cfg.server.log_format, _log_level(args))
    for warning in warnings:  # said once, at start: the config works, but not as written
        structlog.get_logger("router.config").warning("config_warning", where=f"{warning.file}:{warning.line}:"
                                                      f"{warning.col}", path=warning.path, message=warning.message)
    runtime = Runtime(cfg, config_path=path)
    host = args.host or cfg.server.host
    port = args.port if args.port is not None else cfg.server.port
    run_server(create_app(runtime, tune_gc=True), runtime, host, port)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Every error (exit 2) and warning (exit 1 with --strict) of a config file, or of each router config
    embedded in a Kubernetes ConfigMap, as FILE:LINE:COL: field.path: message."""
    path = _config_path(args)
    errors = warnings = 0
    try:
        sources = config_sources(path)
    except ConfigError as exc:
        sources, errors = [], len(exc.issues)
        for issue in exc.issues:
            sys.stderr.write(f"{issue}\n")
    for source in sources:
        found: list[ConfigIssue] = []
        try:
            cfg = source.parse(found)
        except ConfigError as exc:
            errors += len(exc.issues)
            for issue in exc.issues:
                sys.stderr.write(f"{source.locate(issue)}\n")
            continue
        warnings += len(found)
        for issue in found:
            sys.stderr.write(f"{source.locate(issue)}\n")
        sys.stdout.write(f"{source.name}: ok ({len(cfg.models)} models, {len(cfg.backends)} backends, "
                         f"{len(cfg.policies)} policies{f', {len(found)} warning(s)' if found else ''})\n")
    if errors:
        sys.stderr.write(f"{path}: {errors} error(s)" + (f", {warnings} warning(s)\n" if warnings else "\n"))
        return EXIT_ERRORS
    return EXIT_WARNINGS if warnings and args.strict else 0


def _state_overrides(args: argparse.Namespace) -> dict[str, StateOverride]:
    """--saturation realtime=1.0, --cold serverless, --breaker realtime=open, --queue realtime=12,
    --latency realtime=250ms: the backends as explain should see them."""
    from pydantic import ValidationError

    from router.explain import StateOverride

    raw: dict[str, dict[str, Any]] = {}

    def pairs(values: list[str], option: str, key: str) -> None:
        for item in values:
            target, sep, value = item.partition("=")
            if not sep or not target or not value:
                raise ValueError(f"--{option} {item!r}: expected LANE_OR_BACKEND=VALUE")
            raw.setdefault(target.strip(), {})[key] = value.strip()

    pairs(args.saturation, "saturation", "saturation")
    pairs(args.breaker, "breaker", "breaker")
    pairs(args.queue, "queue", "queue_depth")
    pairs(args.latency, "latency", "latency")
    for target in args.cold:
        raw.setdefault(target, {})["cold"] = True
    for target in args.warm:
        raw.setdefault(target, {})["cold"] = False
    out = {}
    for target, fields in raw.items():
        try:
            out[target] = StateOverride.model_validate(fields)
        except ValueError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()) \
                if isinstance(exc, ValidationError) else str(exc)
            raise ValueError(f"{target}: {problems}") from None
    return out


def cmd_explain(args: argparse.Namespace) -> int:
    from litestar.exceptions import ValidationException

    from router.app import explain
    from router.runtime import Runtime
    from router.units import parse_size

    cfg = _load_or_exit(_config_path(args))
    headers: dict[str, str] = {}
    for raw in args.header:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            sys.stderr.write(f"--header {raw!r}: expected 'Name: value'\n")
            return EXIT_ERRORS
        headers[name.strip()] = value.strip()
    try:
        size = parse_size(args.bytes)
    except ValueError as exc:
        sys.stderr.write(f"--bytes {args.bytes!r}: {exc}\n")
        return EXIT_ERRORS
    try:
        state = _state_overrides(args)
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_ERRORS
    try:
        result = explain(Runtime(cfg), args.model, headers, size, state)
    except ValidationException as exc:
        sys.stderr.write(f"{exc.detail}\n")
        return EXIT_ERRORS
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from router.demo.run import run_demo

    run_demo(port=args.port, log_level=_log_level(args))
    return 0


def _version() -> str:
    from router.config_state import router_version

    return f"inference-router {router_version()}"


def build_parser() -> argparse.ArgumentParser:
    levels = sorted(LOG_LEVELS, key=LOG_LEVELS.__getitem__)
    level_help = "debug, info (default; or ROUTER_LOG_LEVEL), warning, error"
    common = argparse.ArgumentParser(add_help=False)  # before or after the command; SUPPRESS keeps the one given
    common.add_argument("--log-level", choices=levels, default=argparse.SUPPRESS, help=level_help)
    parser = argparse.ArgumentParser(prog="inference-router", description=__doc__)
    parser.add_argument("--log-level", choices=levels, default=None, help=level_help)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = f"YAML config file (default: ${CONFIG_ENV})"

    p = sub.add_parser("serve", help="run the router", parents=[common])
    p.add_argument("--config", help=config_help)
    p.add_argument("--host", help="override server.listen's host")
    p.add_argument("--port", type=int, help="override server.listen's port")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("check", parents=[common],
                       help="validate a config (or a Kubernetes ConfigMap holding one); every error and warning as "
                            "FILE:LINE:COL: field.path: message; exit 2 on errors, 1 on warnings with --strict")
    p.add_argument("--config", help=config_help)
    p.add_argument("--strict", action="store_true", help="warnings (dead rules, unreachable lanes) fail too")
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("explain", parents=[common],
                       help="print the routing decision for a request, without calling any backend")
    p.add_argument("--config", help=config_help)
    p.add_argument("--model", required=True)
    p.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'")
    p.add_argument("--bytes", default="0", help="payload size: 1200, 6MB, 1GiB")
    p.add_argument("--saturation", action="append", default=[], metavar="LANE=0..1",
                   help="a backend's saturation, by lane or backend name (repeatable)")
    p.add_argument("--cold", action="append", default=[], metavar="LANE", help="a serverless backend is cold")
    p.add_argument("--warm", action="append", default=[], metavar="LANE", help="a serverless backend is warm")
    p.add_argument("--breaker", action="append", default=[], metavar="LANE=open|half_open|closed")
    p.add_argument("--queue", action="append", default=[], metavar="LANE=N", help="requests waiting for a slot")
    p.add_argument("--latency", action="append", default=[], metavar="LANE=250ms", help="a backend's latency")
    p.set_defaults(fn=cmd_explain)

    p = sub.add_parser("demo", parents=[common],
                       help="local model servers + the router on policies/demo.yaml, no cloud account")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(fn=cmd_demo)

    from router.sim.cli import add_parsers

    add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except UsageError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_ERRORS
    return code


if __name__ == "__main__":
    raise SystemExit(main())
