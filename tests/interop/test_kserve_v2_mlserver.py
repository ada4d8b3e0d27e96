"""KServe V2 through the router, as a stock client sees it: MLServer 1.7 + mlserver-sklearn behind, and
``tritonclient.http`` in front, each call made directly and through the router, the results compared."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
import numpy as np
import pytest
import tritonclient.http as v2
from tritonclient.utils import InferenceServerException

from tests.conftest import serve_router, until
from tests.interop.conftest import ServerProcess

T = TypeVar("T")


def config(mlserver: ServerProcess, *, paths: str = "", protocol: str = "protocol: kserve-v2") -> str:
    return f"""
backends:
  mls: {{kind: http, url: "{mlserver.url}/v2/models/lr/infer", max_concurrency: 8}}
models:
  lr:
    lanes: {{realtime: mls}}
    {protocol}
    {paths}
"""


def rows(n: int) -> np.ndarray[Any, Any]:
    return np.linspace(-2.0, 2.0, n * 4).reshape(n, 4)


async def both(router_url: str, direct_url: str, scenario: Callable[[v2.InferenceServerClient], T]) -> tuple[T, T]:
    """``scenario`` with a client of the router, then with one of the server (each in a thread of its own:
    tritonclient.http is synchronous, on gevent)."""

    def run(url: str) -> T:
        client = v2.InferenceServerClient(url=url.removeprefix("http://"))
        try:
            return scenario(client)
        finally:
            client.close()

    return await asyncio.to_thread(run, router_url), await asyncio.to_thread(run, direct_url)


def infer(client: v2.InferenceServerClient, x: np.ndarray[Any, Any], **kwargs: Any) -> dict[str, Any]:
    tensor = v2.InferInput("x", list(x.shape), "FP64")
    tensor.set_data_from_numpy(x, binary_data=False)
    out = v2.InferRequestedOutput("predict", binary_data=False)
    result = client.infer("lr", [tensor], outputs=[out], **kwargs)
    response: dict[str, Any] = dict(result.get_response())
    response.pop("id")  # a fresh uuid per request
    return response


def error_of(call: Callable[[], object]) -> tuple[str | None, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


async def test_health_readiness_and_metadata_are_forwarded(mlserver: ServerProcess) -> None:
    def scenario(c: v2.InferenceServerClient) -> tuple[Any, ...]:
        return (c.is_server_live(), c.is_server_ready(), c.is_model_ready("lr"), c.get_server_metadata(),
                c.get_model_metadata("lr"), c.is_model_ready("lr", model_version="v1"))

    async with serve_router(config(mlserver)) as router:
        through, direct = await both(router.url, mlserver.url, scenario)
        registry = router.runtime.metrics.registry
        await until(lambda: registry.get_sample_value("router_control_requests_total", {  # counted...
            "model": "lr", "code": "200"}) == 6)
        inference = registry.get_sample_value("router_requests_total", {
            "model": "lr", "lane": "realtime", "backend": "mls", "code": "200"})
    assert through == direct
    assert through[:3] == (True, True, True)
    assert through[4]["name"] == "lr"
    assert inference is None  # ...as no inference


async def test_infer_without_content_type_gives_the_servers_answer(mlserver: ServerProcess) -> None:
    async with serve_router(config(mlserver)) as router:
        through, direct = await both(router.url, mlserver.url, lambda c: infer(c, rows(3)))
    assert through == direct
    assert through["outputs"][0]["shape"] == [3, 1]


async def test_gzip_both_ways_is_passed_through(mlserver: ServerProcess) -> None:
    # 200 rows: MLServer gzips answers of 500 bytes or more (before compression)
    def scenario(c: v2.InferenceServerClient) -> dict[str, Any]:
        return infer(c, rows(200), request_compression_algorithm="gzip", response_compression_algorithm="gzip")

    async with serve_router(config(mlserver)) as router:
        through, direct = await both(router.url, mlserver.url, scenario)
    assert through == direct
    assert len(through["outputs"][0]["data"]) == 200


async def test_answer_headers_and_length_come_back_as_the_server_sent_them(mlserver: ServerProcess) -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": [200, 4], "datatype": "FP64",
                                   "data": rows(200).ravel().tolist()}]}).encode()

    async def post(session: aiohttp.ClientSession, url: str) -> tuple[int, Any, bytes]:
        # no Content-Type, like tritonclient; gzip accepted, like most clients
        async with session.post(url + "/v2/models/lr/infer", data=body, headers={"Accept-Encoding": "gzip"},
                                skip_auto_headers=("Content-Type",)) as r:
            return r.status, r.headers.copy(), await r.read()

    async with aiohttp.ClientSession(auto_decompress=False) as session, serve_router(config(mlserver)) as router:
        status, through, raw = await post(session, router.url)
        _, direct, _ = await post(session, mlserver.url)
    assert status == 200
    assert through["Content-Encoding"] == "gzip"
    assert int(through["Content-Length"]) == len(raw)  # not re-chunked
    assert "Transfer-Encoding" not in through
    for name in ("Content-Type", "ce-specversion", "ce-source", "ce-type", "ce-modelid", "ce-endpoint"):
        assert through[name] == direct[name], name
    assert {k.lower() for k in through if k.lower().startswith("ce-")} == {
        k.lower() for k in direct if k.lower().startswith("ce-")}
    assert through["X-Router-Lane"] == "realtime"
    assert json.loads(gzip.decompress(raw))["model_name"] == "lr"


async def test_model_errors_reach_the_client_as_the_server_sent_them(mlserver: ServerProcess) -> None:
    def scenario(c: v2.InferenceServerClient) -> tuple[tuple[str | None, str], ...]:
        wrong_width = v2.InferInput("x", [2, 3], "FP64")
        wrong_width.set_data_from_numpy(np.ones((2, 3)), binary_data=False)
        binary = v2.InferInput("x", [2, 4], "FP64")
        binary.set_data_from_numpy(rows(2))  # binary tensors: MLServer does not take them
        return (error_of(lambda: c.infer("lr", [wrong_width])), error_of(lambda: c.infer("lr", [binary])))

    async with serve_router(config(mlserver)) as router:
        through, direct = await both(router.url, mlserver.url, scenario)
    assert through == direct
    assert through[0][0] is not None
    assert through[0][0].startswith(("4", "5"))


async def test_an_unknown_model_under_a_prefix_is_the_servers_404_and_not_counted_as_the_model(
        mlserver: ServerProcess) -> None:
    def scenario(c: v2.InferenceServerClient) -> tuple[str | None, str]:
        x = v2.InferInput("x", [1, 4], "FP64")
        x.set_data_from_numpy(rows(1), binary_data=False)
        return error_of(lambda: c.infer("no-such-model", [x]))

    async with serve_router(config(mlserver, protocol="", paths='paths: ["/v2*"]')) as router:
        through, direct = await both(router.url, mlserver.url, scenario)
        registry = router.runtime.metrics.registry
        await until(lambda: registry.get_sample_value("router_requests_total", {
            "model": "_unknown", "lane": "realtime", "backend": "mls", "code": "404"}) == 1)
        as_unknown = registry.get_sample_value("router_requests_total", {
            "model": "_unknown", "lane": "realtime", "backend": "mls", "code": "404"})
        as_lr = registry.get_sample_value("router_requests_total", {
            "model": "lr", "lane": "realtime", "backend": "mls", "code": "404"})
    assert through == direct
    assert through[0] == "404"
    assert (as_unknown, as_lr) == (1, None)


async def test_an_unknown_model_is_404_in_the_v2_shape_with_the_preset(mlserver: ServerProcess) -> None:
    def scenario(c: v2.InferenceServerClient) -> tuple[str | None, str]:
        return error_of(lambda: c.get_model_metadata("no-such-model"))

    async with serve_router(config(mlserver)) as router:
        (status, message), _ = await both(router.url, mlserver.url, scenario)
    assert status == "404"
    assert message  # tritonclient read {"error": ...}


async def test_a_prefix_never_opens_the_model_repository_api(mlserver: ServerProcess) -> None:
    async with serve_router(config(mlserver, protocol="", paths='paths: ["/v2*"]')) as router:
        def scenario(c: v2.InferenceServerClient) -> tuple[str | None, str]:
            return error_of(lambda: c.unload_model("lr"))

        def still_ready() -> bool:
            client = v2.InferenceServerClient(url=mlserver.url.removeprefix("http://"))
            try:
                return bool(client.is_model_ready("lr"))
            finally:
                client.close()

        try:
            (status, _), _ = await both(router.url, router.url, scenario)
            assert status == "404"
            assert await asyncio.to_thread(still_ready)
        finally:  # a router that let it through unloaded the model: load it back for the other tests
            if not await asyncio.to_thread(still_ready):
                client = v2.InferenceServerClient(url=mlserver.url.removeprefix("http://"))
                await asyncio.to_thread(client.load_model, "lr")
