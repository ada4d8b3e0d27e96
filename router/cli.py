"""``inference-router serve | check | explain | demo | simulate | recommend``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from router.config import RouterConfig, load_config
from router.yamlpos import ConfigError

if TYPE_CHECKING:
    from router.runtime import Runtime


def _load_or_exit(path: str) -> RouterConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            sys.stderr.write(f"{issue}\n")
        sys.stderr.write(f"{path}: {len(exc.issues)} error(s)\n")
        raise SystemExit(2) from None


def run_server(app: object, runtime: Runtime, host: str, port: int) -> None:
    """Serve ``app`` with uvicorn (uvloop + httptools measured fastest here, see shared/FACTS.md), with the
    connection limits and the drain of ``router.serving``."""
    from router.serving import RouterServer, server_config

    config = server_config(app, runtime, host=host, port=port, loop="uvloop")
    RouterServer(config, runtime).run()


def cmd_serve(args: argparse.Namespace) -> int:
    from router.app import create_app
    from router.logging import configure_logging
    from router.runtime import Runtime

    cfg = _load_or_exit(args.config)
    configure_logging(cfg.server.log_format)
    runtime = Runtime(cfg, config_path=args.config)
    host = args.host or cfg.server.host
    port = args.port if args.port is not None else cfg.server.port
    run_server(create_app(runtime, tune_gc=True), runtime, host, port)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load_or_exit(args.config)
    sys.stdout.write(f"{args.config}: ok ({len(cfg.models)} models, {len(cfg.backends)} backends, "
                     f"{len(cfg.policies)} policies)\n")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from litestar.exceptions import ValidationException

    from router.app import explain
    from router.runtime import Runtime

    cfg = _load_or_exit(args.config)
    headers: dict[str, str] = {}
    for raw in args.header:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            sys.stderr.write(f"--header {raw!r}: expected 'Name: value'\n")
            return 2
        headers[name.strip()] = value.strip()
    try:
        result = explain(Runtime(cfg), args.model, headers, args.bytes)
    except ValidationException as exc:
        sys.stderr.write(f"{exc.detail}\n")
        return 2
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from router.demo.run import run_demo

    run_demo(port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inference-router", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the router")
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--host", help="override server.listen's host")
    p.add_argument("--port", type=int, help="override server.listen's port")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("check", help="validate a config; every error as FILE:LINE:COL: field.path: message")
    p.add_argument("--config", required=True)
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("explain", help="print the routing decision for a request, without calling any backend")
    p.add_argument("--config", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'")
    p.add_argument("--bytes", type=int, default=0, help="payload size in bytes")
    p.set_defaults(fn=cmd_explain)

    p = sub.add_parser("demo", help="local model servers + the router on policies/demo.yaml, no cloud account")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(fn=cmd_demo)

    from router.sim.cli import add_parsers

    add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.fn(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
