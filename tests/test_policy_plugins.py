"""Third-party policies load from the ``inference_router.policies`` entry-point group."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.config import parse_config
from router.policy.registry import policy_types
from router.runtime import Runtime
from tests.factories import req

PLUGIN = '''
from pydantic import BaseModel

from router.types import Decision, Lane


class Params(BaseModel):
    tenant: str


class TenantPin:
    """Sends one tenant's traffic to serverless."""

    Params = Params

    def __init__(self, name, params, levels):
        self.name = name
        self.tenant = params.tenant

    def decide(self, req, snap):
        if req.caller == self.tenant:
            return Decision(Lane.SERVERLESS, reason="tenant_pin", policy=self.name)
        return None
'''


@pytest.fixture
def installed_plugin(tmp_path: Path) -> Iterator[None]:
    """A real distribution on sys.path: a module plus a dist-info declaring the entry point."""
    (tmp_path / "tenant_pin_policy.py").write_text(PLUGIN)
    dist = tmp_path / "tenant_pin_policy-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tenant-pin-policy\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[inference_router.policies]\ntenant-pin = tenant_pin_policy:TenantPin\n")
    sys.path.insert(0, str(tmp_path))
    policy_types.cache_clear()
    try:
        yield
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tenant_pin_policy", None)
        policy_types.cache_clear()


CONFIG = """
backends:
  rt: {kind: http, url: "http://127.0.0.1:9/invocations"}
  sls: {kind: http, url: "http://127.0.0.1:9/invocations", serverless: {}}
models:
  m:
    lanes: {realtime: rt, serverless: sls}
    policy: [pin]
policies:
  pin: {type: tenant-pin, params: {tenant: team-a}}
"""


@pytest.mark.usefixtures("installed_plugin")
def test_an_installed_plugin_policy_is_configured_validated_and_used() -> None:
    assert "tenant-pin" in policy_types()
    runtime = Runtime(parse_config(CONFIG, "cfg.yaml", {}))
    assert runtime.explain(req(caller="team-a"))["reason"] == "tenant_pin"
    assert runtime.explain(req(caller="team-b"))["reason"] == "default"
    with pytest.raises(Exception, match=r"cfg\.yaml:10:35: policies\.pin\.params\.tenant: required field"):
        parse_config(CONFIG.replace("{tenant: team-a}", "{}"), "cfg.yaml", {})


def test_without_the_plugin_its_type_is_unknown() -> None:
    with pytest.raises(Exception, match="unknown policy type 'tenant-pin'"):
        parse_config(CONFIG, "cfg.yaml", {})
