"""The batch lane in the embedded mode: records buffered durably, flushed by count, bytes or age, run by the
router's own runner against a real model server, and answered per record, in order, through the jobs API."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.demo.model import FraudModel
from router.demo.model_server import ModelServer
from router.notify import verify
from tests.conftest import RunningRouter, ShiftedClock, job_end, serve_router, until
from tests.test_webhooks import SECRET, Receiver, receiver  # noqa: F401

LOW = {"Content-Type": "text/csv", "X-Urgency": "low", "Prefer": "respond-async"}
MODEL = FraudModel.load()


def config(rt: ModelServer, state: Path, *, max_records: int = 1000, max_bytes: str = "6MB",
           max_wait: str = "60s", extra: str = "") -> str:
    return f"""
state: {{kind: local, path: "{state}"}}
jobs: {{workers: 1, backoff: 10ms, max_backoff: 50ms}}
backends:
  rt: {{kind: http, url: "{rt.url}/invocations", max_concurrency: 4, timeout: 10s, breaker: {{failures: 1000}}}}
models:
  fraud:
    lanes: {{realtime: rt, batch: rt}}
    batch: {{max_records: {max_records}, max_bytes: {max_bytes}, max_wait: {max_wait}{extra}}}
    policy: [low-to-batch]
policies:
  low-to-batch:
    type: rules
    params:
      - {{when: {{urgency: low, accepts_async: true}}, route: batch}}
      - {{route: realtime}}
"""


def row(i: int) -> str:
    """A distinct, valid transaction per i, so a record out of place shows in its score."""
    return f"{10 + i % 997}.5,{i % 5},{(i % 10) / 10},{i % 400},{i % 24},{i % 90}"


def scores(rows: list[str]) -> list[float]:
    return MODEL.predict([[float(x) for x in r.split(",")] for r in rows])


async def submit(http: aiohttp.ClientSession, router: RunningRouter, body: str | bytes,
                 headers: dict[str, str] | None = None) -> str:
    async with http.post(router.endpoint("fraud"), data=body, headers=headers or LOW) as r:
        assert r.status == 202, await r.text()
        assert r.headers["X-Router-Lane"] == "batch"
        job = await r.json()
        assert r.headers["Location"] == f"/jobs/{job['job_id']}"
        return str(job["job_id"])


async def finished(http: aiohttp.ClientSession, router: RunningRouter, job_id: str, timeout_s: float = 10.0
                   ) -> dict[str, Any]:
    return await job_end(http, router.url, job_id, timeout_s)


async def result(http: aiohttp.ClientSession, router: RunningRouter, job_id: str) -> tuple[int, str, str]:
    async with http.get(f"{router.url}/jobs/{job_id}/result") as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


def flushes(router: RunningRouter, trigger: str) -> float:
    value = router.runtime.metrics.registry.get_sample_value(
        "router_batch_flushes_total", {"model": "fraud", "trigger": trigger})
    return value or 0.0


async def ticker_saw(router: RunningRouter, wall: ShiftedClock, queued: int) -> None:
    """Move the lane's clock on (not up to max_wait) and wait for a pass of its ticker that counted ``queued``
    buffered jobs: the same pass checked the buffer's flush triggers first."""
    wall.advance(10.0)
    gauge = router.runtime.metrics.registry.get_sample_value
    await until(lambda: gauge("router_jobs", {"lane": "batch", "status": "queued"}) == queued)


async def test_count_trigger_flushes_once_the_buffer_holds_max_records(tmp_path: Path, http: Any) -> None:
    wall = ShiftedClock(time.time)
    async with ModelServer() as rt, serve_router(config(rt, tmp_path, max_records=10), wall_clock=wall) as router:
        rows = [row(i) for i in range(10)]
        ids = [await submit(http, router, r) for r in rows[:9]]
        await ticker_saw(router, wall, queued=9)
        assert rt.requests == 0  # 9 of 10: still buffered
        async with http.get(f"{router.url}/jobs/{ids[0]}") as r:
            queued = await r.json()
        assert (queued["status"], queued["lane"], queued["records"]) == ("queued", "batch",
                                                                         {"total": 1, "done": 0, "failed": 0})
        ids.append(await submit(http, router, rows[9]))
        jobs = [await finished(http, router, i) for i in ids]
        assert [j["status"] for j in jobs] == ["succeeded"] * 10
        assert jobs[0]["records"] == {"total": 1, "done": 1, "failed": 0}
        outputs = [float((await result(http, router, i))[2]) for i in ids]
        assert outputs == pytest.approx(scores(rows), abs=1e-6)
        assert rt.requests == 1  # one mini-batch of 10 records
        assert flushes(router, "records") == 1
        assert router.runtime.metrics.registry.get_sample_value(
            "router_batch_records_total", {"model": "fraud", "outcome": "succeeded"}) == 10


async def test_bytes_trigger_flushes_at_max_bytes(tmp_path: Path, http: Any) -> None:
    wall = ShiftedClock(time.time)
    async with ModelServer() as rt, serve_router(config(rt, tmp_path, max_bytes="150B"), wall_clock=wall) as router:
        body = "\n".join(row(i) for i in range(8))  # 128 bytes of records: under 150
        first = await submit(http, router, body)
        await ticker_saw(router, wall, queued=1)
        assert rt.requests == 0  # under max_bytes: still buffered
        second = await submit(http, router, "\n".join(row(i) for i in range(8, 10)))  # +32: over 150
        assert (await finished(http, router, first))["status"] == "succeeded"
        assert flushes(router, "bytes") == 1
        async with http.get(f"{router.url}/jobs/{second}") as r:
            assert (await r.json())["status"] == "queued"  # a batch never passes max_bytes: it waits for the next
        assert router.runtime.metrics.registry.get_sample_value("router_batch_buffered_records",
                                                                {"model": "fraud"}) == 2


async def test_age_trigger_flushes_a_lone_record_after_max_wait(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path, max_wait="300ms")) as router:
        loop = asyncio.get_running_loop()
        started = loop.time()
        job_id = await submit(http, router, row(1))
        assert (await finished(http, router, job_id))["status"] == "succeeded"
        assert loop.time() - started >= 0.3  # not before its max_wait
        assert flushes(router, "age") == 1
        assert flushes(router, "records") == flushes(router, "bytes") == 0


async def test_ten_thousand_records_across_a_hundred_requests_come_back_in_order(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path, max_records=1000, max_wait="200ms")) as router:
        requests = [[row(r * 100 + i) for i in range(100)] for r in range(100)]
        ids = await asyncio.gather(*(submit(http, router, "\n".join(rows)) for rows in requests))
        for job_id, rows in zip(ids, requests, strict=True):
            job = await finished(http, router, job_id, timeout_s=30)
            assert job["records"] == {"total": 100, "done": 100, "failed": 0}
            status, ctype, text = await result(http, router, job_id)
            assert (status, ctype.split(";")[0]) == (200, "text/csv")
            assert [float(x) for x in text.splitlines()] == pytest.approx(scores(rows), abs=1e-6)
        assert flushes(router, "records") >= 10


async def test_poison_record_fails_alone_and_the_rest_succeed(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path, max_wait="100ms")) as router:
        rows = [row(i) for i in range(16)]
        rows[11] = "1,2,three,4,5,6"  # valid CSV, but the model cannot score it
        job = await finished(http, router, await submit(http, router, "\n".join(rows)))
        assert job["status"] == "succeeded"
        assert job["records"] == {"total": 16, "done": 15, "failed": 1}
        assert job["error"]["type"] == "RecordsFailed"
        [failure] = job["error"]["records"]
        assert failure["index"] == 11
        assert "three" in failure["error"]
        _, _, text = await result(http, router, job["job_id"])
        lines = text.split("\n")[:-1]
        assert lines[11] == ""  # the failed record keeps its place, empty
        good = [i for i in range(16) if i != 11]
        assert [float(lines[i]) for i in good] == pytest.approx(scores([rows[i] for i in good]), abs=1e-6)
        # split in halves: one path down to the poison record (two calls per level), not one call per record
        assert rt.requests <= 1 + 2 * math.ceil(math.log2(len(rows)))


async def test_json_instances_come_back_as_predictions_in_order(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path, max_wait="100ms")) as router:
        rows = [row(i) for i in range(5)]
        body = json.dumps({"instances": [[float(x) for x in r.split(",")] for r in rows]})
        job_id = await submit(http, router, body, {**LOW, "Content-Type": "application/json"})
        assert (await finished(http, router, job_id))["status"] == "succeeded"
        status, ctype, text = await result(http, router, job_id)
        assert (status, ctype.split(";")[0]) == (200, "application/json")
        predictions = json.loads(text)["predictions"]
        assert [p["score"] for p in predictions] == pytest.approx(scores(rows), abs=1e-6)


@pytest.mark.parametrize(("content_type", "body", "line"), [
    ("application/jsonlines", '[1,2]\n[3,4]\n{"broken": \n', 3),
    ("text/csv", '1,2,3\n4,"5,6\n', 2),
    ("text/csv", "1,2,3\n\n4,5,6\n", 2),
])
async def test_records_that_do_not_parse_get_400_naming_the_line(tmp_path: Path, http: Any, content_type: str,
                                                                  body: str, line: int) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path)) as router:
        async with http.post(router.endpoint("fraud"), data=body,
                             headers={**LOW, "Content-Type": content_type}) as r:
            assert r.status == 400
            assert r.headers["x-amzn-ErrorType"] == "ValidationError"
            assert re.search(rf"\bline {line}\b", (await r.json())["message"])
        assert router.runtime.batch_lane is not None
        assert await router.runtime.batch_lane.store.counts() == {}  # nothing of it was kept


async def test_request_over_max_bytes_on_its_own_gets_413(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt, serve_router(
            config(rt, tmp_path, max_bytes="1KB").replace("{realtime: rt, batch: rt}", "{batch: rt}")
            .replace("policy: [low-to-batch]", "policy: []")) as router:
        body = "\n".join(row(i) for i in range(100))  # ~2 KB
        async with http.post(router.endpoint("fraud"), data=body, headers=LOW) as r:
            assert r.status == 413
            assert "limit" in (await r.json())["message"]
        async with http.post(router.endpoint("fraud"), data=row(1), headers=LOW) as r:
            assert r.status == 202  # a small one is taken


async def test_a_buffered_job_can_be_cancelled(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path, max_records=3)) as router:
        cancelled = await submit(http, router, row(0))
        async with http.delete(f"{router.url}/jobs/{cancelled}") as r:
            assert r.status == 200
            assert (await r.json())["error"]["type"] == "Cancelled"
        kept = [await submit(http, router, row(i)) for i in range(1, 4)]  # 3 more: the buffer holds exactly 3
        assert all([(await finished(http, router, j))["status"] == "succeeded" for j in kept])
        async with http.delete(f"{router.url}/jobs/{kept[0]}") as r:
            assert r.status == 409  # ran already
        assert (await finished(http, router, cancelled))["status"] == "failed"


async def test_a_stop_keeps_the_buffer_and_the_next_start_flushes_it(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt:
        async with serve_router(config(rt, tmp_path)) as router:
            ids = [await submit(http, router, row(i)) for i in range(3)]
        assert rt.requests == 0  # stopped with all three buffered
        async with serve_router(config(rt, tmp_path)) as router:
            jobs = [await finished(http, router, i) for i in ids]
            assert [j["status"] for j in jobs] == ["succeeded"] * 3
            assert flushes(router, "restart") == 1
            outputs = [float((await result(http, router, i))[2]) for i in ids]
        assert outputs == pytest.approx(scores([row(i) for i in range(3)]), abs=1e-6)


async def test_prefer_wait_answers_the_records_outputs_when_the_batch_ends_in_time(tmp_path: Path,
                                                                                  http: Any) -> None:
    async with ModelServer() as rt, serve_router(config(rt, tmp_path, max_wait="100ms")) as router:
        rows = [row(i) for i in range(3)]
        async with http.post(router.endpoint("fraud"), data="\n".join(rows),
                             headers={**LOW, "Prefer": "respond-async, wait=10"}) as r:
            assert r.status == 200
            assert r.headers["X-Router-Lane"] == "batch"
            assert [float(x) for x in (await r.text()).splitlines()] == pytest.approx(scores(rows), abs=1e-6)


async def test_a_finished_batch_job_is_posted_signed_to_its_callback(tmp_path: Path, http: Any,
                                                                     receiver: Receiver) -> None:  # noqa: F811
    hooks = f'webhooks: {{allow: ["{receiver.url}/hooks/*"], secret: {SECRET}}}\n'
    async with ModelServer() as rt, serve_router(config(rt, tmp_path, max_wait="100ms") + hooks) as router:
        job_id = await submit(http, router, "\n".join(row(i) for i in range(4)),
                              {**LOW, "X-Callback-Url": f"{receiver.url}/hooks/team-a"})
        await finished(http, router, job_id)
        await until(lambda: bool(receiver.deliveries))
    [(headers, body)] = receiver.deliveries
    assert verify(SECRET, headers["X-Router-Timestamp"], body, headers["X-Router-Signature"])
    status = json.loads(body)
    assert (status["job_id"], status["lane"], status["status"]) == (job_id, "batch", "succeeded")
    assert status["records"] == {"total": 4, "done": 4, "failed": 0}


async def test_finished_batch_jobs_are_deleted_after_the_retention(tmp_path: Path, http: Any) -> None:
    async with ModelServer() as rt:
        text = config(rt, tmp_path, max_wait="100ms").replace("jobs: {workers: 1,",
                                                              "jobs: {retention: 500ms, workers: 1,")
        async with serve_router(text) as router:
            job_id = await submit(http, router, row(1))
            assert (await finished(http, router, job_id))["status"] == "succeeded"
            assert (tmp_path / "objects" / "results" / job_id).exists()
            async with asyncio.timeout(10):  # purged on the lane's 2 s bookkeeping tick
                while True:
                    async with http.get(f"{router.url}/jobs/{job_id}") as r:
                        if r.status == 404:
                            break
                    await asyncio.sleep(0.1)
    assert not (tmp_path / "objects" / "results" / job_id).exists()
