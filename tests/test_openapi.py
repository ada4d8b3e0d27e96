"""The OpenAPI document the router serves is true: every documented path is served, every served path is
documented (schemathesis checks the answers themselves, in test_fuzz_http.py)."""

from __future__ import annotations

import re

import aiohttp

from router.app import create_app
from router.config import parse_config
from router.demo.model_server import ModelServer
from router.runtime import Runtime
from tests.conftest import serve_router

CONFIG = """
server: {{admin_token: admin-token-0123}}
backends:
  rt: {{kind: http, url: "{url}/invocations"}}
models:
  fraud: {{lanes: {{realtime: rt}}, paths: ["/v2/models/fraud/infer", "/legacy/fraud/*"]}}
"""
DATA_PLANE = {"/endpoints/{EndpointName}/invocations", "/endpoints/{EndpointName}/async-invocations"}


def served_routes() -> set[tuple[str, str]]:
    """(method, path) of every route of the app's Litestar part, path parameters written as OpenAPI does."""
    app = create_app(Runtime(parse_config(CONFIG.format(url="http://127.0.0.1:9"), "router.yaml"))).app
    return {(method.lower(), re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path))
            for route in app.routes for method in route.methods if method not in ("HEAD", "OPTIONS")}


async def test_every_documented_operation_is_served_and_every_route_is_documented(
        http: aiohttp.ClientSession) -> None:
    async with ModelServer() as rt, serve_router(CONFIG.format(url=rt.url)) as router:
        async with http.get(router.url + "/openapi.json") as r:
            assert r.status == 200
            doc = await r.json()
        documented = {(method, path) for path, item in doc["paths"].items() for method in item
                      if method != "parameters"}
        framework = {(m, p) for m, p in documented if p not in DATA_PLANE and p != "/v2/models/fraud/infer"}
        assert framework == served_routes()
        # the data plane's paths are served by the data plane: its answers carry the router's headers
        for path in (*DATA_PLANE, "/v2/models/fraud/infer"):
            url = router.url + path.replace("{EndpointName}", "fraud")
            async with http.post(url, data="120.5,2,0.8,350,7,30", headers={"Content-Type": "text/csv"}) as r:
                assert "X-Router-Lane" in r.headers, path
                assert r.status != 404, path
    assert doc["openapi"] == "3.0.3"
    assert "/legacy/fraud/*" not in doc["paths"]  # a prefix path cannot be written in OpenAPI
