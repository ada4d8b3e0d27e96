"""Small builders for the contract types, so policy tests read as tables."""

from __future__ import annotations

from typing import Any

from router.types import BackendState, BreakerState, Lane, RequestFeatures, Snapshot

LEVELS = {"critical": 3, "high": 2, "normal": 1, "low": 0}


def req(**kw: Any) -> RequestFeatures:
    base: dict[str, Any] = {"model": "m", "caller": "anonymous", "payload_bytes": 1000,
                            "content_type": "text/csv", "urgency": "normal", "priority": 1}
    if "urgency" in kw and "priority" not in kw:
        kw["priority"] = LEVELS[kw["urgency"]]
    base.update(kw)
    return RequestFeatures(**base)


def state(name: str, **kw: Any) -> BackendState:
    base: dict[str, Any] = {"name": name, "inflight": 0, "capacity": 4, "max_capacity": 4, "saturation": 0.0,
                            "latency_s": 0.01, "error_rate": 0.0, "breaker": BreakerState.CLOSED}
    base.update(kw)
    return BackendState(**base)


def snap(rt: dict[str, Any] | None = None, sls: dict[str, Any] | None = None, *, lanes: tuple[Lane, ...] = (
        Lane.REALTIME, Lane.SERVERLESS)) -> Snapshot:
    """A model with a realtime backend 'rt' and a serverless backend 'sls'; kwargs override their state."""
    backends = {"rt": state("rt", **(rt or {})), "sls": state("sls", serverless=True, **(sls or {}))}
    names = {Lane.REALTIME: "rt", Lane.SERVERLESS: "sls"}
    return Snapshot(backends=backends, lanes={lane: names[lane] for lane in lanes},
                    limits={Lane.REALTIME: 6_000_000, Lane.SERVERLESS: 4_000_000})
