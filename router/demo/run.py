"""``inference-router demo``: three local model servers and the router, on 127.0.0.1, no cloud account."""

from __future__ import annotations

import asyncio
import os
import sys
from contextlib import AsyncExitStack
from importlib.resources import as_file, files
from pathlib import Path

import structlog

from router.app import create_app
from router.config import load_config
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


def banner(port: int, admin_token: str, team_key: str) -> str:
    base = f"http://127.0.0.1:{port}"
    row = "120.5,2,0.8,350,7,30"
    row2 = "4999.0,3,0.95,4200,31,2"  # a risky one
    return f"""
inference-router demo is running on {base}
  model "fraud": real-time server on :{RT_PORT} (4 concurrent), serverless server on :{SLS_PORT}
  (scales to zero after 30 s idle, 2 s cold start, throttles above 8 concurrent), and an
  "Async Inference" server on :{ASYNC_PORT} for jobs (4 concurrent, bodies up to 250 MB)

Score a transaction (CSV: amount,hour,merchant_risk,distance_km,tx_last_24h,card_age_days):
  curl -s -i -X POST {base}/endpoints/fraud/invocations -H 'Content-Type: text/csv' --data '{row}'
JSON, and a team API key that may claim critical urgency:
  curl -s -X POST {base}/endpoints/fraud/invocations -H 'Content-Type: application/json' \\
       -H 'X-Api-Key: {team_key}' -H 'X-Urgency: critical' --data '{{"instances": [[{row}]]}}'
A deadline the cold serverless lane cannot meet is kept on real-time:
  curl -s -i -X POST {base}/endpoints/fraud/invocations -H 'Content-Type: text/csv' \\
       -H 'X-Deadline-Ms: 500' --data '{row}'
A burst larger than the 12 sync slots waits for free slots (most urgent first) instead of failing:
  seq 100 | xargs -P 50 -I{{}} curl -s -o /dev/null -w '%{{http_code}} ' -X POST \\
       {base}/endpoints/fraud/invocations -H 'Content-Type: text/csv' -H 'X-Urgency: high' --data '{row}'
A large payload from a client that accepts a 202 becomes a job (the async lane); fetch it when done:
  python3 -c "print('\\n'.join(['{row}'] * 340000))" > big.csv      # about 7 MB
  curl -s -i -X POST {base}/endpoints/fraud/invocations -H 'Content-Type: text/csv' \\
       -H 'Prefer: respond-async' --data-binary @big.csv
  curl -s {base}/jobs/<job_id>            # status
  curl -s {base}/jobs/<job_id>/result     # the model's answer once succeeded
Low urgency goes to the batch lane: many records in one request, one score per record, in order
(flushed within 2 s):
  printf '{row}\\n{row2}\\n{row}\\n' > batch.csv
  curl -s -i -X POST {base}/endpoints/fraud/invocations -H 'Content-Type: text/csv' \\
       -H 'X-Urgency: low' -H 'Prefer: respond-async' --data-binary @batch.csv
  curl -s {base}/jobs/<job_id>            # records done / total
  curl -s {base}/jobs/<job_id>/result     # one line per record, in input order
KServe V2 and TorchServe clients keep their URLs:
  curl -s -X POST {base}/v2/models/fraud/infer -H 'Content-Type: application/json' \\
       --data '{{"instances": [[{row}]]}}'
Why a request goes where it goes:
  curl -s -X POST {base}/admin/explain -H 'Authorization: Bearer {admin_token}' \\
       --data '{{"model": "fraud", "headers": {{"X-Urgency": "low"}}, "bytes": 100}}'
Metrics: curl -s {base}/metrics | grep ^router_
Ctrl-C stops everything.
"""


async def serve_demo(port: int) -> None:
    os.environ.setdefault("DEMO_RT_PORT", str(RT_PORT))
    os.environ.setdefault("DEMO_SLS_PORT", str(SLS_PORT))
    os.environ.setdefault("DEMO_ASYNC_PORT", str(ASYNC_PORT))
    path = demo_config_path()
    cfg = load_config(path)
    configure_logging(cfg.server.log_format)
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
        sys.stdout.write(banner(port, token, team_key))
        sys.stdout.flush()
        await server.serve()


def run_demo(port: int = 8080) -> None:
    try:
        import uvloop

        uvloop.run(serve_demo(port))
    except ImportError:  # uvloop is optional (not on Windows)
        asyncio.run(serve_demo(port))
