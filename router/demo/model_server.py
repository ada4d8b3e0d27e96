"""A local HTTP model server speaking the SageMaker container contract, with behaviour knobs.

``GET /ping`` and ``POST /invocations`` run the demo fraud model; any other POST path is
answered the same way and echoed in ``X-Model-Path`` so routers can prove paths pass through
unchanged. Latency, concurrency limits, serverless cold starts and failures are plain mutable
attributes (for in-process tests) and settable via ``POST /control`` (for other processes).

Above ``max_concurrency`` the server either refuses (``overload_mode: refuse``, answering
``overload_status``) or, as real model servers do, queues the request until one of the N slots is free
(``overload_mode: queue``, first come first served). With ``orca`` on, every answer carries an ORCA load
report (``endpoint-load-metrics: TEXT application_utilization=..., named_metrics.num_requests_waiting=...``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import time
from collections import deque
from types import TracebackType
from typing import Any

import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from router.demo.model import MAX_ROWS, FraudModel, ModelInputError
from router.units import parse_size

log = structlog.get_logger()

CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
# SageMaker real-time endpoints accept payloads up to 6 MB: the default body limit (``max_body`` raises it,
# e.g. for a server standing in for an Async Inference endpoint, whose payloads reach 1 GB through S3).
MAX_BODY = 6 * 1024 * 1024
THREAD_MIN_BODY = 1024 * 1024
_KNOBS = ("latency_s", "latency_jitter", "max_concurrency", "overload_status", "idle_after_s", "cold_start_s",
          "fail_status", "fail_rate")
_FLAGS = ("overload_mode", "orca")
OVERLOAD_MODES = ("refuse", "queue")


def _json_response(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


def _is_count(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


class ModelServer:
    """A real aiohttp model server on 127.0.0.1 whose latency, capacity and failures tests can steer."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model: FraudModel | None = None,
        latency_s: float = 0.0,
        latency_jitter: float = 0.0,
        max_concurrency: int | None = None,
        overload_status: int = 429,
        idle_after_s: float | None = None,
        cold_start_s: float = 0.0,
        fail_status: int | None = None,
        overload_mode: str = "refuse",
        fail_rate: float = 0.0,
        orca: bool = False,
        seed: int | None = None,
        max_body: int = MAX_BODY,
    ) -> None:
        if overload_mode not in OVERLOAD_MODES:
            raise ValueError(f"overload_mode must be one of {OVERLOAD_MODES}, got {overload_mode!r}")
        self.host = host
        self.max_body = max_body
        self.port = port
        self.model = model if model is not None else FraudModel.load()
        self.latency_s = latency_s
        # each call takes latency_s x a uniform draw in [1 - jitter, 1 + jitter]: real models vary, and equal
        # service times keep slots freeing in lockstep after a burst (waits then come in whole service times)
        self.latency_jitter = latency_jitter
        self.max_concurrency = max_concurrency
        self.overload_status = overload_status
        self.idle_after_s = idle_after_s
        self.cold_start_s = cold_start_s
        self.fail_status = fail_status
        self.overload_mode = overload_mode  # above max_concurrency: "refuse" (overload_status) or "queue"
        self.fail_rate = fail_rate  # this share of requests fails with 500, at random
        self.orca = orca  # answer with an ORCA load report
        self._random = random.Random(seed)  # fail_rate failures and latency jitter; seeded, a test's sequence is fixed
        self.requests = 0
        self.refused = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.inflight = 0
        self.peak_inflight = 0
        self.served_ok = 0
        # time from arrival to answer of the last served requests, its own queue included (GET /control's p50)
        self._latencies: deque[float] = deque(maxlen=2000)
        self.cold_starts = 0
        self.last_headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.last_path: str | None = None
        self._fail_queue: list[int] = []
        self._last_done: float | None = None
        self._warmup: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self.port}"

    def fail_next(self, n: int, status: int = 503) -> None:
        """Make the next n model requests fail with `status`."""
        self._fail_queue.extend([status] * n)

    @property
    def queued(self) -> int:
        """Requests waiting for one of the ``max_concurrency`` slots (queue mode)."""
        return len(self._waiters)

    def reset_counters(self) -> None:
        self.requests = self.served_ok = self.cold_starts = self.refused = 0
        self._latencies.clear()
        self.peak_inflight = self.inflight

    def state(self) -> dict[str, Any]:
        """Knobs and counters, as GET /control answers them."""
        names = (*_KNOBS, *_FLAGS, "requests", "inflight", "queued", "peak_inflight", "served_ok", "refused",
                 "cold_starts")
        return {k: getattr(self, k) for k in names} | {"pending_failures": len(self._fail_queue),
                                                        "latency_p50_ms": self.latency_p50_ms()}

    def latency_p50_ms(self) -> float | None:
        """Median time from arrival to answer of the last 2,000 served requests (queueing here included)."""
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)
        return 1000.0 * ordered[len(ordered) // 2]

    async def start(self) -> str:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_get("/ping", self._ping)
        app.router.add_route("*", "/control", self._control)
        app.router.add_post("/{tail:.*}", self._invoke)
        app.on_response_prepare.append(self._echo_attributes)
        # Short shutdown timeout: stop() must not wait a minute on a deliberately slow request.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("model_server.started", url=self.url, model_version=self.model.version)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._warmup is not None:
            self._warmup.cancel()
            self._warmup = None

    async def __aenter__(self) -> ModelServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _echo_attributes(self, request: web.Request, response: web.StreamResponse) -> None:
        attrs = request.headers.get(CUSTOM_ATTRIBUTES)
        if attrs is not None:
            response.headers[CUSTOM_ATTRIBUTES] = attrs

    async def _ping(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _control(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            return _json_response(200, self.state())
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            return _json_response(400, {"message": "control body must be JSON"})
        if not isinstance(body, dict):
            return _json_response(400, {"message": "control body must be a JSON object"})
        allowed = {*_KNOBS, *_FLAGS, "fail_next", "fail_next_status", "reset_counters"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            return _json_response(400, {"message": f"unknown control keys {unknown}; allowed {sorted(allowed)}"})
        for key in _KNOBS:
            if key in body:
                value = body[key]
                nullable = key not in ("latency_s", "latency_jitter", "cold_start_s", "overload_status")
                if not (_is_count(value) or (value is None and nullable)):
                    return _json_response(400, {"message": f"{key}: expected a non-negative number"})
                if key == "latency_jitter" and value > 1:
                    return _json_response(400, {"message": "latency_jitter: expected a fraction from 0 to 1"})
                setattr(self, key, value)
        if "overload_mode" in body:
            if body["overload_mode"] not in OVERLOAD_MODES:
                return _json_response(400, {"message": f"overload_mode: expected one of {list(OVERLOAD_MODES)}"})
            self.overload_mode = body["overload_mode"]
        if "orca" in body:
            if not isinstance(body["orca"], bool):
                return _json_response(400, {"message": "orca: expected true or false"})
            self.orca = body["orca"]
        if body.get("fail_next"):
            self.fail_next(int(body["fail_next"]), int(body.get("fail_next_status", 503)))
        if body.get("reset_counters"):
            self.reset_counters()
        log.info("model_server.control", url=self.url, **body)
        return _json_response(200, self.state())

    async def _invoke(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        self.requests += 1
        self.last_headers = CIMultiDictProxy(request.headers.copy())
        self.last_path = request.raw_path
        if self.max_concurrency is not None and self.inflight >= self.max_concurrency:
            if self.overload_mode != "queue":
                self.refused += 1
                return _json_response(self.overload_status, {"message": "too many requests"})
            await self._wait_for_slot()  # the slot is handed over by the request that frees it
        else:
            self.inflight += 1
        self.peak_inflight = max(self.peak_inflight, self.inflight)
        try:
            await self._maybe_cold_start()
            # Decide failure on arrival so "the next n requests" is exact under concurrency.
            fail = self._fail_queue.pop(0) if self._fail_queue else self.fail_status
            if fail is None and self.fail_rate > 0.0 and self._random.random() < self.fail_rate:
                fail = 500
            body = await request.read()
            if self.latency_s > 0:
                spread = self._random.uniform(-self.latency_jitter, self.latency_jitter) if self.latency_jitter else 0.0
                await asyncio.sleep(self.latency_s * (1.0 + spread))
            if fail is not None:
                response = _json_response(fail, {"message": f"injected failure ({fail})"})
            else:
                try:
                    args = (body, request.headers.get("Content-Type"), request.headers.get("Accept"))
                    # a job-sized payload takes seconds to score: off the event loop (the demo shares it)
                    payload, ctype = await asyncio.to_thread(self.model.predict_payload, *args) \
                        if len(body) > THREAD_MIN_BODY else self.model.predict_payload(*args)
                except ModelInputError as exc:
                    response = _json_response(400, {"message": exc.message})
                else:
                    self.served_ok += 1
                    self._latencies.append(time.monotonic() - arrived)
                    response = web.Response(body=payload, content_type=ctype)
            report = self.load_report() if self.orca else None  # as it stands while this request holds a slot
        finally:
            self._release_slot()
            self._last_done = time.monotonic()
        if request.path != "/invocations":
            response.headers["X-Model-Path"] = request.raw_path
        if report is not None:
            response.headers["endpoint-load-metrics"] = report
        return response

    def load_report(self) -> str:
        """This server's ORCA load report (TEXT format): busy share of its slots and its queue length."""
        slots = self.max_concurrency
        busy = self.inflight / slots if slots else 0.0
        return f"TEXT application_utilization={busy:.3f}, named_metrics.num_requests_waiting={self.queued}"

    async def _wait_for_slot(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot just as the client left: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def _release_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the oldest waiter: in-flight stays the same
                return
        self.inflight -= 1

    async def _maybe_cold_start(self) -> None:
        if self.idle_after_s is None:
            return
        if self._warmup is None:
            # inflight == 1 means only this request: nothing else keeps the container warm.
            idle = self._last_done is None or time.monotonic() - self._last_done > self.idle_after_s
            if not (idle and self.inflight == 1):
                return
            self.cold_starts += 1
            log.info("model_server.cold_start", url=self.url, seconds=self.cold_start_s)
            self._warmup = asyncio.create_task(asyncio.sleep(self.cold_start_s))
            self._warmup.add_done_callback(self._warm)
        # Shield: one cancelled waiter (client went away) must not cancel the shared cold start.
        await asyncio.shield(self._warmup)

    def _warm(self, task: asyncio.Task[None]) -> None:
        if self._warmup is task:
            self._warmup = None
            self._last_done = time.monotonic()


async def _serve(args: argparse.Namespace) -> None:
    knobs = {"latency_s": args.latency, "latency_jitter": args.latency_jitter,
             "max_concurrency": args.max_concurrency,
             "overload_status": args.overload_status, "overload_mode": args.overload_mode, "orca": args.orca}
    serverless = {"idle_after_s": args.idle_after, "cold_start_s": args.cold_start}
    model = FraudModel.load()
    model.max_rows = args.max_rows
    server = ModelServer(host=args.host, port=args.port, model=model, max_body=args.max_body, **knobs, **serverless)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m router.demo.model_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9101)
    parser.add_argument("--latency", type=float, default=0.0, help="added seconds per request")
    parser.add_argument("--latency-jitter", type=float, default=0.0,
                        help="each request's latency varies uniformly by this fraction of --latency (0 to 1)")
    parser.add_argument("--max-concurrency", type=int, default=None, help="answer --overload-status above this")
    parser.add_argument("--overload-status", type=int, default=429, choices=(429, 503),
                        help="the status answered above --max-concurrency")
    parser.add_argument("--overload-mode", default="refuse", choices=OVERLOAD_MODES,
                        help="above --max-concurrency: refuse (answer --overload-status) or queue (wait for a slot)")
    parser.add_argument("--orca", action="store_true", help="answer with ORCA load reports (endpoint-load-metrics)")
    parser.add_argument("--idle-after", type=float, default=None, help="serverless: idle seconds before cold")
    parser.add_argument("--cold-start", type=float, default=0.0, help="serverless: cold start seconds")
    parser.add_argument("--max-body", type=parse_size, default=MAX_BODY,
                        help="largest request body (413 beyond), e.g. 250MB; default 6 MiB, like a real-time endpoint")
    parser.add_argument("--max-rows", type=int, default=MAX_ROWS, help="rows per request (400 beyond)")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
