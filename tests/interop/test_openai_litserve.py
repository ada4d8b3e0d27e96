"""The OpenAI API through the router, as a stock client sees it: LitServe's OpenAI spec behind, the ``openai``
client in front, streaming with ``stream=True``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import serve_router, until
from tests.interop.conftest import ServerProcess


def config(litserve: ServerProcess) -> str:
    return f"""
backends:
  lit: {{kind: http, url: "{litserve.url}/v1/chat/completions", max_concurrency: 4, timeout: 30s}}
models:
  words:
    lanes: {{realtime: lit}}
    protocol: openai
"""


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="not-checked", max_retries=0)


async def words(url: str, prompt: str) -> list[str | None]:
    async with client(url) as c:
        stream = await c.chat.completions.create(model="words", stream=True,
                                                 messages=[{"role": "user", "content": prompt}])
        return [chunk.choices[0].delta.content async for chunk in stream]


async def test_a_streamed_chat_completion_equals_the_servers(litserve: ServerProcess) -> None:
    async with serve_router(config(litserve)) as router:
        through = await words(router.url, "one two three")
        direct = await words(litserve.url, "one two three")
        await until(lambda: router.runtime.metrics.registry.get_sample_value(  # once the last byte went out
            "router_time_to_first_byte_seconds_count", {"model": "words", "lane": "realtime"}) == 1)
    assert through == direct
    assert "".join(w for w in through if w) == "the quick brown fox jumps "


async def test_the_first_event_arrives_while_the_model_is_still_generating(litserve: ServerProcess,
                                                                         tmp_path: Path) -> None:
    gate = tmp_path / "release"  # the model yields one word, then waits for this file before the next
    async with serve_router(config(litserve)) as router, client(router.url) as c:
        stream = await c.chat.completions.create(model="words", stream=True,
                                                 messages=[{"role": "user", "content": f"gate:{gate}"}])
        seen: list[Any] = []
        async with asyncio.timeout(20):  # buffered whole, the first event would only come after the gate
            async for chunk in stream:
                seen.append(chunk.choices[0].delta.content)
                if len(seen) == 1:
                    assert not gate.exists()
                    inflight = router.runtime.tracker.trackers["lit"].inflight
                    gate.touch()
    assert seen[:2] == ["waiting ", "released"]
    assert inflight == 1  # the slot is held while the answer streams


async def test_a_whole_chat_completion_equals_the_servers(litserve: ServerProcess) -> None:
    async def complete(url: str) -> str | None:
        async with client(url) as c:
            answer = await c.chat.completions.create(model="words", messages=[{"role": "user", "content": "a b"}])
            return answer.choices[0].message.content

    async with serve_router(config(litserve)) as router:
        assert await complete(router.url) == await complete(litserve.url)


async def test_an_unknown_openai_path_is_the_routers_404_and_a_missing_one_the_servers(
        litserve: ServerProcess) -> None:
    async with serve_router(config(litserve)) as router, client(router.url) as c:
        with pytest.raises(openai.NotFoundError):  # /v1/models is forwarded: LitServe has none
            await c.models.list()
        with pytest.raises(openai.NotFoundError):  # /v1/files is no path of the preset
            await c.files.list()
