"""``inference-router demo``: three local model servers and the router, on 127.0.0.1, no cloud account."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from contextlib import AsyncExitStack
from importlib.resources import as_file, files
from pathlib import Path

import structlog

from router.app import create_app
from router.config import load_config
from router.demo.examples import EXAMPLES
from router.demo.model import FraudModel
from router.demo.model_server import ModelServer
from router.logging import configure_logging
from router.runtime import Runtime
from router.serving import RouterServer, server_config

log = structlog.get_logger("router.demo")

RT_PORT = 9101
SLS_PORT = 9102
ASYNC_PORT = 9103
ASYNC_MAX_BODY = 250 * 1000 * 1000  # above the async lane's 200 MB limit, like an Async Inference endpoint
ASYNC_MAX_ROWS = 10_000_000  # a 200 MB CSV of transactions


def demo_config_path() -> Path:
    """``policies/demo.yaml`` when run from a checkout, else the copy shipped in the package."""
    local = Path("policies/demo.yaml")
    if local.is_file():
        return local
    with as_file(files("router.demo") / "demo.yaml") as path:
        return Path(path)


def banner(port: int, admin_token: str, team_key: str, ports: tuple[int, int, int] = (RT_PORT, SLS_PORT,
                                                                                    ASYNC_PORT)) -> str:
    """What the demo prints: where everything runs, then the README's Quick start examples, command for command."""
    base = f"localhost:{port}"
    rt, sls, async_port = ports
    lines = [
        "",
        f"inference-router demo is running on http://{base}",
        f'  model "fraud": real-time server on :{rt} (4 concurrent), serverless server on :{sls}',
        "  (scales to zero after 30 s idle, 2 s cold start, throttles above 8 concurrent), and an",
        f'  "Async Inference" server on :{async_port} for jobs (4 concurrent, bodies up to 250 MB)',
        f"  status page: http://{base}/ui (admin token: {admin_token})",
        "",
    ]
    for example in EXAMPLES:
        lines.append(f"# {example.says}")
        lines += [command.replace("{base}", base).replace("demo-team-a-key", team_key)
                  .replace("demo-admin-token", admin_token) for command in example.commands]
        lines.append("")
    lines += [f"Metrics: curl -s {base}/metrics | grep ^router_", "Ctrl-C stops everything.", ""]
    return "\n".join(lines)


async def serve_demo(port: int, log_level: int = logging.INFO) -> None:
    os.environ.setdefault("DEMO_RT_PORT", str(RT_PORT))
    os.environ.setdefault("DEMO_SLS_PORT", str(SLS_PORT))
    os.environ.setdefault("DEMO_ASYNC_PORT", str(ASYNC_PORT))
    path = demo_config_path()
    cfg = load_config(path)
    configure_logging(cfg.server.log_format, log_level)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(ModelServer(port=int(os.environ["DEMO_RT_PORT"]), latency_s=0.005,
                                                    max_concurrency=4, overload_status=503))
        await stack.enter_async_context(ModelServer(port=int(os.environ["DEMO_SLS_PORT"]), latency_s=0.005,
                                                    max_concurrency=8, overload_status=429,
                                                    idle_after_s=30.0, cold_start_s=2.0))
        async_model = FraudModel.load()
        async_model.max_rows = ASYNC_MAX_ROWS
        await stack.enter_async_context(ModelServer(port=int(os.environ["DEMO_ASYNC_PORT"]), latency_s=0.005,
                                                    max_concurrency=4, overload_status=429, model=async_model,
                                                    max_body=ASYNC_MAX_BODY))
        runtime = Runtime(cfg, config_path=path)
        app = create_app(runtime, tune_gc=True)
        server = RouterServer(server_config(app, runtime, host="127.0.0.1", port=port), runtime)
        team_key = next((c.api_key.get_secret_value() for c in cfg.callers if c.api_key is not None), "-")
        token = cfg.server.admin_token.get_secret_value() if cfg.server.admin_token else "-"
        ports = (int(os.environ["DEMO_RT_PORT"]), int(os.environ["DEMO_SLS_PORT"]), int(os.environ["DEMO_ASYNC_PORT"]))
        sys.stdout.write(banner(port, token, team_key, ports))
        sys.stdout.flush()
        await server.serve()


def run_demo(port: int = 8080, log_level: int = logging.INFO) -> None:
    try:
        import uvloop

        uvloop.run(serve_demo(port, log_level))
    except ImportError:  # uvloop is optional (not on Windows)
        asyncio.run(serve_demo(port, log_level))
