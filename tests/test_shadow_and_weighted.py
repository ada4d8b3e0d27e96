"""Shadow chains decide beside the live one without dispatching; the weighted policy splits deterministically;
live calls count their estimated cost."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import aiohttp
import pytest

from router.config import parse_config
from router.demo.model_server import ModelServer
from router.policy.registry import build_policy
from router.policy.weighted import WeightedParams, WeightedPolicy
from router.types import Lane, RequestFeatures, Snapshot
from router.yamlpos import ConfigError
from tests.conftest import serve_router

LEVELS = {"critical": 3, "high": 2, "normal": 1, "low": 0}
SNAP = Snapshot({}, {})
ROW = b"120.5,2,0.8,350,7,30"


def _req(key: int = 0, caller: str = "anonymous") -> RequestFeatures:
    return RequestFeatures("m", caller, 10, "text/csv", "normal", 1, key=key)


def _canary(by: str = "request") -> WeightedPolicy:
    params = WeightedParams.model_validate({"by": by, "split": [
        {"lane": "realtime", "weight": 90}, {"lane": "serverless", "weight": 10, "reason": "canary"}]})
    return WeightedPolicy("canary", params, LEVELS)


def test_weighted_splits_requests_by_weight_and_the_same_request_always_the_same_way() -> None:
    policy = _canary()
    lanes = Counter(policy.decide(_req(key), SNAP).lane for key in range(10_000))  # type: ignore[union-attr]
    assert 0.085 < lanes[Lane.SERVERLESS] / 10_000 < 0.115
    assert all(policy.decide(_req(k), SNAP) == policy.decide(_req(k), SNAP) for k in range(100))
    decision = next(d for k in range(100) if (d := policy.decide(_req(k), SNAP)) and d.lane is Lane.SERVERLESS)
    assert decision.reason == "canary"


def test_weighted_by_caller_keeps_each_tenant_on_one_side() -> None:
    policy = _canary("caller")
    for tenant in ("team-a", "team-b", "team-c"):
        sides = {policy.decide(_req(key, tenant), SNAP).lane for key in range(50)}  # type: ignore[union-attr]
        assert len(sides) == 1


def test_weighted_is_a_registered_type_whose_params_errors_point_at_the_line() -> None:
    assert isinstance(build_policy("c", "weighted", {"split": [{"lane": "realtime", "weight": 1}]}, LEVELS),
                      WeightedPolicy)
    with pytest.raises(ConfigError) as err:
        parse_config("""\
backends:
  rt: {kind: http, url: "http://h/"}
models:
  m: {lanes: {realtime: rt}, policy: [canary]}
policies:
  canary:
    type: weighted
    params: {split: [{lane: realtime, weight: 0}]}
""", "c.yaml")
    assert any(str(i).startswith("c.yaml:8:") and "weight" in str(i) for i in err.value.issues)


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m:
            labels = tuple(sorted(tuple(kv.split("=", 1)) for kv in re.findall(r'(\w+="[^"]*")', m.group(1))))
            out[tuple((k, v.strip('"')) for k, v in labels)] = float(m.group(2))
    return out


async def test_a_shadow_chain_decides_on_live_traffic_without_dispatching_and_costs_are_estimated() -> None:
    async with ModelServer(latency_s=0.01) as rt, ModelServer() as sls:
        text = f"""\
backends:
  rt: {{kind: http, url: "{rt.url}/invocations", max_concurrency: 4,
       cost: {{instance_type: ml.m5.large, instances: 1}}}}
  sls: {{kind: http, url: "{sls.url}/invocations", max_concurrency: 4, serverless: {{idle_after: 1h, cold_start: 1s}},
        cost: {{memory_mb: 2048}}}}
models:
  m:
    lanes: {{realtime: rt, serverless: sls}}
    policy: [realtime-first]
    shadow: [serverless-first]
policies:
  realtime-first: {{type: rules, params: [{{route: realtime, fallback: [serverless]}}]}}
  serverless-first: {{type: rules, params: [{{route: serverless, fallback: [realtime]}}]}}
"""
        async with serve_router(text) as router, aiohttp.ClientSession() as http:
            for _ in range(5):
                async with http.post(router.endpoint("m"), data=ROW, headers={"Content-Type": "text/csv"}) as r:
                    assert r.status == 200
                    assert r.headers["X-Router-Lane"] == "realtime"
            async with http.get(router.url + "/metrics") as r:
                metrics = await r.text()
            status: dict[str, Any] = router.runtime.shadow_status()
            explained = router.runtime.explain(_req())
    assert sls.requests == 0  # the shadow chain never dispatches
    assert rt.requests == 5
    decisions = _samples(metrics, "router_shadow_decisions_total")
    assert decisions == {(("live_lane", "realtime"), ("model", "m"), ("shadow_lane", "serverless")): 5.0}
    m = status["m"]
    assert (m["decisions"], m["agreement"], m["pairs"]) == (5, 0.0, {"realtime->serverless": 5})
    # estimates from the tracker's latency EWMA: ml.m5.large's share per call vs 2 GB-seconds of serverless
    assert m["estimated_cost"]["live"] > 0
    assert m["estimated_cost"]["difference"] == pytest.approx(m["estimated_cost"]["shadow"] -
                                                              m["estimated_cost"]["live"])
    assert (explained["lane"], explained["shadow"]["lane"]) == ("realtime", "serverless")
    spent = _samples(metrics, "router_estimated_cost_dollars_total")
    live = spent[(("backend", "rt"), ("lane", "realtime"), ("model", "m"))]
    # five calls of at least 10 ms and at most a second each, on one of 4 slots of a $0.115/h instance
    assert 5 * 0.115 * 0.01 / 3600 / 4 <= live <= 5 * 0.115 * 1.0 / 3600 / 4
    fixed = _samples(metrics, "router_backend_fixed_cost_per_hour_dollars")
    assert fixed[(("backend", "rt"),)] == 0.115
    assert fixed[(("backend", "sls"),)] == 0.0
