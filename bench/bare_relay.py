"""The least a proxy can do: an aiohttp server that relays each POST to ``upstream`` and streams the answer back
chunk by chunk, with nothing else (no routing, no signing, no event-stream framing). ``bench/streaming.py`` puts
it in the router's place to show what one more hop costs on this machine by itself.

    python bench/bare_relay.py PORT UPSTREAM_BASE_URL
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web


def relay_app(upstream: str) -> web.Application:
    async def session(app: web.Application) -> AsyncIterator[None]:
        app["session"] = aiohttp.ClientSession()
        yield
        await app["session"].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with request.app["session"].post(upstream + request.path, data=body, headers={
                "Content-Type": request.headers.get("Content-Type", "application/octet-stream")}) as answer:
            resp = web.StreamResponse(status=answer.status, headers={
                "Content-Type": answer.headers.get("Content-Type", "application/octet-stream")})
            await resp.prepare(request)
            async for chunk in answer.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_post("/{tail:.*}", relay)
    return app


if __name__ == "__main__":
    web.run_app(relay_app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
