"""Serving the router with uvicorn: its connection limits, and a graceful drain on SIGTERM.

``server_config`` is the one place the uvicorn ``Config`` is built (``serve``, the demo and the tests use it),
so every way of running the router has the same limits. ``RouterServer`` drains in three steps:

1. on SIGTERM, ``/readyz`` turns 503 at once, and answers carry ``Connection: close`` so keep-alive clients
   reconnect elsewhere; the listener keeps serving for ``server.drain_delay``, the time load balancers need
   to notice (instead of a ``preStop: sleep``);
2. then uvicorn closes the listener and waits up to ``server.drain_timeout`` for requests in flight;
3. then the lifespan stops the job lanes, whose running jobs get ``jobs.drain_timeout``.

A second SIGTERM, or SIGINT (Ctrl-C), skips the delay.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import structlog
import uvicorn

from router.api.limits import HttpLimits, limited_protocol
from router.config import ServerConfig
from router.runtime import Runtime

log = structlog.get_logger("router.serving")


def http_limits(cfg: ServerConfig) -> HttpLimits:
    return HttpLimits(max_header_bytes=cfg.max_header_bytes, header_timeout_s=cfg.header_timeout,
                      body_timeout_s=cfg.body_timeout, min_body_rate=cfg.min_body_rate,
                      keepalive_timeout_s=cfg.keepalive_timeout, max_connections=cfg.max_connections)


def _current_limits(runtime: Runtime) -> Callable[[], HttpLimits]:
    """The limits of the config in force (a reload changes them for new connections), built once per config."""
    cache: list[Any] = [None, HttpLimits()]

    def current() -> HttpLimits:
        server = runtime.routing.config.server
        if cache[0] is not server:
            cache[:] = [server, http_limits(server)]
        limits: HttpLimits = cache[1]
        return limits

    return current


def server_config(app: Any, runtime: Runtime, *, host: str = "127.0.0.1", port: int = 0,
                  **options: Any) -> uvicorn.Config:
    """uvicorn's config for ``app``: httptools with the router's limits, no access log of uvicorn's own."""
    server = runtime.routing.config.server
    protocol = limited_protocol(_current_limits(runtime), lambda reason: runtime.metrics.http_rejected(reason).inc(),
                                draining=lambda: runtime.draining)
    settings: dict[str, Any] = {"lifespan": "on", "log_config": None, "access_log": False, "server_header": False,
                                "timeout_graceful_shutdown": max(1, round(server.drain_timeout)),
                                "timeout_keep_alive": max(1, round(server.keepalive_timeout))}
    return uvicorn.Config(app, host=host, port=port, http=protocol, **(settings | options))


class RouterServer(uvicorn.Server):
    """uvicorn's server with the router's drain (see the module's docstring)."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime
        self._drain_until: float | None = None
        self._drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        delay = self.runtime.routing.config.server.drain_delay
        if sig == signal.SIGTERM and self._drain_until is None and not self.should_exit and delay > 0:
            self._captured_signals.append(sig)  # uvicorn re-raises it after shutdown: the exit status tells
            self.runtime.draining = True  # readiness fails first; a signal handler only sets attributes
            self._drain_until = time.monotonic() + delay
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None:
            if not self._drain_logged:
                self._drain_logged = True
                log.info("draining", delay_s=self.runtime.routing.config.server.drain_delay)
            if time.monotonic() >= self._drain_until:
                self.should_exit = True
        return await super().on_tick(counter)
