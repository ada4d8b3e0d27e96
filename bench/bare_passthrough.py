"""The baseline: a bare pass-through of ``POST /endpoints/{name}/invocations`` to one upstream URL.

    python bench/bare_passthrough.py litestar PORT UPSTREAM_URL
    python bench/bare_passthrough.py asgi PORT UPSTREAM_URL

``litestar``: an idiomatic minimal Litestar app, one ``@post`` handler. ``asgi``: the same with no framework.
Both use one shared aiohttp ``ClientSession`` (keep-alive) created at startup, and uvicorn with the flags
the router uses (``router.cli.run_server``). No policy, metrics or logging: what the router is compared to.
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import uvicorn
from litestar import Litestar, Request, Response, post

_PREFIX = "/endpoints/"
_SUFFIX = "/invocations"


def _session() -> aiohttp.ClientSession:
    # No total cap on pooled connections, like the router's shared pool at max_concurrency 1000.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60))


def litestar_app(upstream: str) -> Litestar:
    @post(_PREFIX + "{name:str}" + _SUFFIX, status_code=200)
    async def invoke(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
        body = await request.body()
        session: aiohttp.ClientSession = request.app.state.session
        headers = {"Content-Type": request.headers.get("content-type", "application/octet-stream")}
        async with session.post(upstream, data=body, headers=headers) as resp:
            answer = await resp.read()
            return Response(answer, media_type=resp.headers.get("Content-Type", "application/octet-stream"),
                            status_code=resp.status)

    async def startup(app: Litestar) -> None:
        app.state.session = _session()

    async def shutdown(app: Litestar) -> None:
        await app.state.session.close()

    return Litestar(route_handlers=[invoke], on_startup=[startup], on_shutdown=[shutdown],
                    logging_config=None, openapi_config=None)


class AsgiPassThrough:
    """The same pass-through as a raw ASGI callable."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if scope["method"] != "POST" or not path.startswith(_PREFIX) or not path.endswith(_SUFFIX):
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"not found"})
            return
        content_type = "application/octet-stream"
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value.decode("latin-1")
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        assert self.session is not None
        async with self.session.post(self.upstream, data=body, headers={"Content-Type": content_type}) as resp:
            answer = await resp.read()
            status = resp.status
            media = resp.headers.get("Content-Type", "application/octet-stream")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", media.encode("latin-1"))]})
        await send({"type": "http.response.body", "body": answer})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.session = _session()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("litestar", "asgi") or not argv[1].isdigit():
        sys.stderr.write(__doc__ or "")
        return 2
    flavour, port, upstream = argv[0], int(argv[1]), argv[2]
    app: Any = litestar_app(upstream) if flavour == "litestar" else AsgiPassThrough(upstream)
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", lifespan="on",
                log_config=None, access_log=False, server_header=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
