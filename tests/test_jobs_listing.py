"""``GET /jobs``: a caller lists its own tenant's jobs of both job lanes, newest first, filtered, page by page,
in the embedded mode (SQLite) and the scale-out mode (S3 + SQS on moto's server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.demo.model_server import ModelServer
from tests.conftest import serve_router
from tests.moto_server import create_bucket, create_queues, moto_server, moto_url

__all__ = ["moto_server", "moto_url"]  # fixtures, re-exported for pytest

ROW = "120.5,2,0.8,350,7,30"
TEAM_A, TEAM_B = "team-a-secret-key", "team-b-secret-key"


def config(rt: ModelServer, state: str) -> str:
    """Jobs stay where they are put: no workers, and batches flush only after an hour."""
    return f"""
server: {{access_log: false}}
{state}
jobs: {{workers: 0, drain_timeout: 1s}}
callers:
  - {{api_key: {TEAM_A}, tenant: team-a}}
  - {{api_key: {TEAM_B}, tenant: team-b}}
backends:
  rt: {{kind: http, url: "{rt.url}/invocations"}}
models:
  fraud:
    lanes: {{realtime: rt, async: rt, batch: rt}}
    batch: {{max_wait: 1h}}
    policy: [by-urgency]
  other:
    lanes: {{realtime: rt, async: rt}}
    policy: [by-urgency]
policies:
  by-urgency:
    type: rules
    params:
      - {{when: {{urgency: low, accepts_async: true}}, route: batch}}
      - {{when: {{accepts_async: true}}, route: async}}
"""


@pytest.fixture(params=["local", "aws"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return f'state: {{kind: local, path: "{tmp_path}"}}'
    url: str = request.getfixturevalue("moto_url")
    jobs, batch = create_queues(url, "router-jobs"), create_queues(url, "router-batch")
    return (f'state: {{kind: aws, bucket: {create_bucket(url)}, prefix: "r/", queue_url: "{jobs.queue_url}", '
            f'dlq_url: "{jobs.dlq_url}", batch_queue_url: "{batch.queue_url}", endpoint_url: "{url}"}}')


async def submit(http: aiohttp.ClientSession, base: str, key: str, model: str = "fraud",
                 urgency: str = "normal") -> str:
    async with http.post(f"{base}/endpoints/{model}/invocations", data=ROW, headers={
            "Content-Type": "text/csv", "Prefer": "respond-async", "X-Api-Key": key, "X-Urgency": urgency}) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["job_id"])


async def listing(http: aiohttp.ClientSession, base: str, key: str, **query: str) -> dict[str, Any]:
    async with http.get(f"{base}/jobs", params=query, headers={"X-Api-Key": key}) as r:
        assert r.status == 200, await r.text()
        page: dict[str, Any] = await r.json()
    return page


async def every_page(http: aiohttp.ClientSession, base: str, key: str, **query: str) -> list[str]:
    ids: list[str] = []
    page = await listing(http, base, key, **query)
    while True:
        ids += [job["job_id"] for job in page["jobs"]]
        if page["next"] is None:
            return ids
        page = await listing(http, base, key, **query, next=page["next"])


async def test_a_caller_lists_only_its_own_jobs_newest_first_filtered_and_page_by_page(
        state: str, http: aiohttp.ClientSession) -> None:
    async with ModelServer() as rt, serve_router(config(rt, state)) as router:
        base = router.url
        mine = [await submit(http, base, TEAM_A),
                await submit(http, base, TEAM_A, urgency="low"),  # the batch lane
                await submit(http, base, TEAM_A, model="other"),
                await submit(http, base, TEAM_A, urgency="low"),
                await submit(http, base, TEAM_A)]
        theirs = await submit(http, base, TEAM_B)
        async with http.delete(f"{base}/jobs/{mine[0]}", headers={"X-Api-Key": TEAM_A}) as r:
            assert r.status == 200  # cancelled: it ends failed

        newest_first = mine[::-1]
        first = await listing(http, base, TEAM_A, limit="2")
        assert [job["job_id"] for job in first["jobs"]] == newest_first[:2]
        assert first["next"] is not None
        assert await every_page(http, base, TEAM_A, limit="2") == newest_first
        assert await every_page(http, base, TEAM_B) == [theirs]

        assert await every_page(http, base, TEAM_A, lane="batch") == [mine[3], mine[1]]
        assert await every_page(http, base, TEAM_A, model="other") == [mine[2]]
        assert await every_page(http, base, TEAM_A, status="failed") == [mine[0]]
        assert await every_page(http, base, TEAM_A, status="queued", lane="async", limit="1") == [mine[4], mine[2]]
        jobs = (await listing(http, base, TEAM_A, limit="1"))["jobs"]
        assert (jobs[0]["status_url"], jobs[0]["lane"], jobs[0]["status"]) == (f"/jobs/{mine[4]}", "async", "queued")
