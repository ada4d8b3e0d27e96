"""Secrets in the config are a type: every one is hidden from /admin/policy, logs, errors and explain, and
everything that uses one still works."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from router.config import parse_config
from router.demo.model_server import ModelServer
from tests.conftest import serve_router

ADMIN = "admin-token-0123456789"
API_KEY = "team-a-api-key-0123456789"
UPSTREAM = "upstream-bearer-0123456789"
WEBHOOK = "webhook-hmac-secret-0123456789"
AWS_SECRET = "aws-secret-access-key-0123456789"
SECRETS = (ADMIN, API_KEY, UPSTREAM, WEBHOOK, AWS_SECRET)


def config(url: str, state: Path) -> str:
    return f"""
server: {{admin_token: {ADMIN}}}
state: {{kind: local, path: "{state}"}}
callers:
  - {{api_key: {API_KEY}, tenant: team-a, max_urgency: critical}}
  - {{aws_access_key_id: AKIATEAMB00000000002, aws_secret_access_key: {AWS_SECRET}, tenant: team-b}}
backends:
  rt: {{kind: http, url: "{url}/invocations", headers: {{Authorization: "Bearer {UPSTREAM}", X-Team: fraud}}}}
models:
  fraud: {{lanes: {{realtime: rt, async: rt}}}}
webhooks: {{allow: ["https://hooks.example.com/*"], secret: {WEBHOOK}}}
"""


def leaked(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def test_secrets_are_hidden_in_the_config_objects_repr() -> None:
    cfg = parse_config(config("http://127.0.0.1:9", Path("/tmp/x")), "router.yaml")
    assert leaked(repr(cfg)) == []
    assert leaked(json.dumps(cfg.model_dump(mode="json"))) == []


async def test_admin_policy_logs_and_errors_show_no_secret_and_the_secrets_still_work(
        tmp_path: Path, http: aiohttp.ClientSession, capfd: pytest.CaptureFixture[str]) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    path = tmp_path / "router.yaml"
    async with ModelServer() as rt:
        path.write_text(config(rt.url, tmp_path / "var"))
        async with serve_router(path.read_text(), config_path=str(path)) as router:
            async with http.get(router.url + "/admin/policy", headers=admin) as r:
                assert r.status == 200  # the admin token works
                policy = await r.text()
            doc = json.loads(policy)
            assert doc["server"]["admin_token"] == "**********"
            assert doc["callers"][0]["api_key"] == "**********"
            assert doc["callers"][1]["aws_secret_access_key"] == "**********"
            assert doc["callers"][1]["aws_access_key_id"] == "AKIATEAMB00000000002"  # an id, not a secret
            assert doc["backends"]["rt"]["headers"] == {"Authorization": "**********", "X-Team": "**********"}
            assert doc["webhooks"]["secret"] == "**********"

            async with http.post(router.endpoint("fraud"), data="120.5,2,0.8,350,7,30",
                                 headers={"Content-Type": "text/csv", "X-Api-Key": API_KEY,
                                          "X-Urgency": "critical"}) as r:
                assert r.status == 200  # the API key works
            assert rt.last_headers["Authorization"] == f"Bearer {UPSTREAM}"  # the upstream header is sent
            async with http.post(router.url + "/admin/explain", headers=admin, json={
                    "model": "fraud", "headers": {"X-Api-Key": API_KEY, "X-Urgency": "critical"}}) as r:
                explained = await r.text()
            assert json.loads(explained)["request"]["caller"] == "team-a"

            # a rejected reload lists its errors without the values of secrets
            bad = config(rt.url, tmp_path / "var").replace("headers: {", "headers: {Bad: [1], ").replace(
                "callers:\n", f"callers:\n  - {{api_key: {API_KEY}, tenant: team-b}}\n")
            path.write_text(bad)
            async with http.post(router.url + "/admin/reload", headers=admin) as r:
                assert r.status == 400
                errors = await r.text()
            assert "backends.rt.headers.Bad" in errors
            assert "api_key is used by another caller" in errors
    logs = capfd.readouterr().err
    assert '"event":"config_reload_rejected"' in logs
    assert leaked(policy) == []
    assert leaked(explained) == []
    assert leaked(errors) == []
    assert leaked(logs) == []
