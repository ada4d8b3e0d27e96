"""The sagemaker-batch runner end to end: real aiobotocore against the Batch Transform emulator, moto's S3
and the demo model server, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from router.backends import Connections
from router.backends.sagemaker import SageMakerClients
from router.batch.base import BatchRunner, RecordOutcome
from router.batch.records import OutputCountMismatch, RecordFormat
from router.batch.transform import TransformRunner, build_batch_runner, map_outputs, transform_job_name
from router.config import SageMakerBatchBackendConfig, parse_config
from router.demo.model import FraudModel
from router.demo.model_server import ModelServer
from router.yamlpos import ConfigError
from tests.conftest import until
from tests.moto_server import boto3_client, create_bucket, moto_server, moto_url  # noqa: F401
from tests.sm_transform import TransformEmulator

BUCKET = "batch-bucket"
MODEL = "fraud-model"

MakeRunner = Callable[..., TransformRunner]


@pytest.fixture
async def emulator(moto_url: str, model: ModelServer) -> AsyncIterator[TransformEmulator]:  # noqa: F811
    create_bucket(moto_url, BUCKET)
    async with TransformEmulator(moto_url) as emu:
        emu.add_model(MODEL, model.url)
        yield emu


def batch_config(emulator_url: str, s3_url: str, **overrides: Any) -> SageMakerBatchBackendConfig:
    raw = {"kind": "sagemaker-batch", "model_name": MODEL, "input_location": f"s3://{BUCKET}/batch/in",
           "output_location": f"s3://{BUCKET}/batch/out", "endpoint_url": emulator_url,
           "s3_endpoint_url": s3_url, "poll": "20ms", "max_poll": "100ms", "timeout": "10s", **overrides}
    return SageMakerBatchBackendConfig.model_validate(raw)


@pytest.fixture
def make_runner(emulator: TransformEmulator, clients: SageMakerClients, moto_url: str) -> MakeRunner:  # noqa: F811
    def make(**overrides: Any) -> TransformRunner:
        return TransformRunner("fraud-batch", batch_config(emulator.url, moto_url, **overrides), clients)

    return make


def rows(n: int, seed: int = 7) -> list[list[float]]:
    rng = random.Random(seed)
    return [[round(rng.uniform(1, 5000), 2), rng.randrange(24), round(rng.random(), 3), rng.randrange(2000),
             rng.randrange(50), rng.randrange(1, 3000)] for _ in range(n)]


def csv_records(data: list[list[float]]) -> list[bytes]:
    return [",".join(str(v) for v in row).encode() for row in data]


def objects(url: str, prefix: str) -> list[str]:
    listing = boto3_client("s3", url).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for obj in listing.get("Contents", [])]


# --- results ---------------------------------------------------------------------------------------


async def test_csv_records_come_back_in_order_with_the_models_scores(
    make_runner: MakeRunner, emulator: TransformEmulator, moto_url: str  # noqa: F811
) -> None:
    data = rows(200)
    runner = make_runner()
    outcomes = await runner.run("batch-000001", csv_records(data), RecordFormat.CSV, content_type="text/csv",
                                accept=None)
    expected = [f"{score:.6f}".encode() for score in FraudModel.load().predict(data)]
    assert outcomes == [RecordOutcome(score) for score in expected]
    (create,) = emulator.operations("CreateTransformJob")
    assert create["BatchStrategy"] == "MultiRecord"
    assert create["TransformInput"]["SplitType"] == "Line"
    assert create["TransformInput"]["ContentType"] == "text/csv"
    assert create["TransformOutput"]["AssembleWith"] == "Line"
    assert create["MaxPayloadInMB"] == 6
    assert create["ModelName"] == MODEL
    assert create["TransformResources"] == {"InstanceType": "ml.m5.large", "InstanceCount": 1}
    assert objects(moto_url, "batch/in/") == []  # the input object is cleaned up
    assert len(objects(moto_url, "batch/out/")) == 1


async def test_records_beyond_max_payload_run_in_several_mini_batches_and_keep_their_order(
    make_runner: MakeRunner, emulator: TransformEmulator
) -> None:
    # ~110-byte records: 12,000 of them are 1.3 MB, two mini-batches of at most 1 MiB, run two at a time
    data = rows(12_000, seed=11)
    records = [",".join(f"{v:.15f}" for v in row).encode() for row in data]
    runner = make_runner(max_payload="1MiB", max_concurrent_transforms=2)
    outcomes = await runner.run("batch-big", records, RecordFormat.CSV, content_type="text/csv", accept="text/csv")
    expected = [f"{score:.6f}".encode() for score in FraudModel.load().predict(data)]
    assert [o.output for o in outcomes] == expected
    (job,) = emulator.jobs.values()
    assert len(job.payloads) == 2
    assert all(len(p) <= 1024 * 1024 for p in job.payloads)


async def test_json_instances_run_one_request_per_line_and_come_back_as_predictions(
    make_runner: MakeRunner, emulator: TransformEmulator
) -> None:
    data = rows(5, seed=3)
    records = [json.dumps(row, separators=(",", ":")).encode() for row in data]
    outcomes = await make_runner().run("batch-json", records, RecordFormat.JSON, content_type="application/json",
                                       accept=None)
    scores = FraudModel.load().predict(data)
    assert [json.loads(o.output or b"") for o in outcomes] == [
        {"score": round(s, 6), "fraud": s >= 0.5} for s in scores]
    (create,) = emulator.operations("CreateTransformJob")
    assert create["BatchStrategy"] == "SingleRecord"
    assert create["TransformInput"]["ContentType"] == "application/json"
    (job,) = emulator.jobs.values()
    assert [json.loads(p) for p in job.payloads] == [{"instances": [row]} for row in data]


async def test_csv_records_answered_as_json_map_each_mini_batch_prediction_to_its_record(
    make_runner: MakeRunner,
) -> None:
    data = rows(20, seed=5)
    outcomes = await make_runner().run("batch-csv-json", csv_records(data), RecordFormat.CSV,
                                       content_type="text/csv", accept="application/json")
    scores = FraudModel.load().predict(data)
    assert [json.loads(o.output or b"")["score"] for o in outcomes] == [round(s, 6) for s in scores]


# --- failures --------------------------------------------------------------------------------------


async def test_a_failed_transform_fails_every_record_with_its_failure_reason(
    make_runner: MakeRunner, emulator: TransformEmulator, moto_url: str  # noqa: F811
) -> None:
    emulator.fail_next("AlgorithmError: out of memory (injected)")
    outcomes = await make_runner().run("batch-doomed", csv_records(rows(4)), RecordFormat.CSV,
                                       content_type="text/csv", accept=None)
    assert len(outcomes) == 4
    for outcome in outcomes:
        assert outcome.output is None
        assert "AlgorithmError: out of memory (injected)" in (outcome.error or "")
    assert objects(moto_url, "batch/in/") == []


async def test_a_record_the_model_rejects_fails_the_job_and_so_every_record(make_runner: MakeRunner) -> None:
    records = [*csv_records(rows(3)), b"1,2,3"]  # three features of six: the model answers 400
    outcomes = await make_runner().run("batch-poison", records, RecordFormat.CSV, content_type="text/csv",
                                       accept=None)
    errors = {o.error for o in outcomes}
    assert len(errors) == 1
    (error,) = errors
    assert error is not None
    assert "400" in error
    assert "expected 6 values" in error
    assert all(o.output is None for o in outcomes)


async def test_an_unknown_model_fails_every_record_with_sagemakers_refusal(make_runner: MakeRunner) -> None:
    outcomes = await make_runner(model_name="no-such-model").run(
        "batch-x", csv_records(rows(2)), RecordFormat.CSV, content_type="text/csv", accept=None)
    assert all("Could not find model" in (o.error or "") for o in outcomes)


async def test_throttled_control_plane_calls_are_retried(
    make_runner: MakeRunner, emulator: TransformEmulator
) -> None:
    emulator.throttle(1, "DescribeTransformJob")
    emulator.throttle(2, "CreateTransformJob")
    outcomes = await make_runner().run("batch-throttled", csv_records(rows(3)), RecordFormat.CSV,
                                       content_type="text/csv", accept=None)
    assert all(o.output is not None for o in outcomes)
    assert len(emulator.operations("CreateTransformJob")) == 3
    assert len(emulator.jobs) == 1


async def test_a_job_past_its_timeout_is_stopped_and_fails_its_records(
    make_runner: MakeRunner, emulator: TransformEmulator
) -> None:
    emulator.delay_s = 30.0
    outcomes = await make_runner(timeout="300ms").run("batch-slow", csv_records(rows(2)), RecordFormat.CSV,
                                                      content_type="text/csv", accept=None)
    assert all("did not finish within 0.3s" in (o.error or "") for o in outcomes)
    (job,) = emulator.jobs.values()
    await until(lambda: job.status == "Stopped")
    assert len(emulator.operations("StopTransformJob")) == 1


# --- restarts --------------------------------------------------------------------------------------


async def test_a_restarted_run_of_the_same_batch_follows_the_existing_job(
    make_runner: MakeRunner, emulator: TransformEmulator
) -> None:
    data = rows(10)
    records = csv_records(data)
    emulator.delay_s = 0.3
    first = asyncio.create_task(make_runner().run("batch-restart", records, RecordFormat.CSV,
                                                  content_type="text/csv", accept=None))
    await until(lambda: len(emulator.jobs) == 1)
    first.cancel()  # the router stops mid-run; the transform job runs on
    with pytest.raises(asyncio.CancelledError):
        await first
    outcomes = await make_runner().run("batch-restart", records, RecordFormat.CSV, content_type="text/csv",
                                       accept=None)
    assert [o.output for o in outcomes] == [f"{s:.6f}".encode() for s in FraudModel.load().predict(data)]
    assert len(emulator.operations("CreateTransformJob")) == 1


async def test_a_batch_run_again_after_its_job_completed_reads_the_same_outputs(
    make_runner: MakeRunner, emulator: TransformEmulator
) -> None:
    records = csv_records(rows(5))
    first = await make_runner().run("batch-done", records, RecordFormat.CSV, content_type="text/csv", accept=None)
    again = await make_runner().run("batch-done", records, RecordFormat.CSV, content_type="text/csv", accept=None)
    assert again == first
    assert len(emulator.operations("CreateTransformJob")) == 1


async def test_two_runs_of_one_batch_at_once_share_one_job(
    make_runner: MakeRunner, emulator: TransformEmulator
) -> None:
    records = csv_records(rows(6))
    emulator.delay_s = 0.1
    a, b = await asyncio.gather(*(make_runner().run("batch-twice", records, RecordFormat.CSV,
                                                    content_type="text/csv", accept=None) for _ in range(2)))
    assert a == b
    assert all(o.output is not None for o in a)
    assert len(emulator.jobs) == 1  # the second CreateTransformJob was told the name exists and followed


async def test_a_reused_batch_id_with_other_records_gets_a_job_of_its_own(
    make_runner: MakeRunner, emulator: TransformEmulator
) -> None:
    runner = make_runner()
    first = await runner.run("batch-7", csv_records(rows(3, seed=1)), RecordFormat.CSV, content_type="text/csv",
                             accept=None)
    second = await runner.run("batch-7", csv_records(rows(3, seed=2)), RecordFormat.CSV, content_type="text/csv",
                              accept=None)
    assert first != second
    assert len(emulator.jobs) == 2


# --- names, outputs, config ------------------------------------------------------------------------


@pytest.mark.parametrize("batch_id", ["batch-1", "fraud/2026-11-03T10:00:00Z#17", "_" * 10, "x" * 200])
def test_job_names_are_valid_transform_job_names(batch_id: str) -> None:
    name = transform_job_name(batch_id, "0123456789abcdef")
    assert re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name)
    assert name.endswith("0123456789abcdef")


def test_output_lines_that_do_not_match_the_records_are_a_count_mismatch() -> None:
    assert map_outputs(b"0.1\n\n0.2\n", "text/csv", 2) == [b"0.1", b"0.2"]
    with pytest.raises(OutputCountMismatch, match="3 output lines for 2 records"):
        map_outputs(b"0.1\n0.2\n0.3\n", "text/csv", 2)
    with pytest.raises(OutputCountMismatch, match="1 outputs for 2 records"):
        map_outputs(b'{"predictions": [1]}\n', "application/json", 2)


async def test_build_batch_runner_makes_a_transform_runner_on_the_shared_clients() -> None:
    connections = Connections()
    cfg = batch_config("http://127.0.0.1:1", "http://127.0.0.1:1")
    runner: BatchRunner = build_batch_runner("fraud-batch", cfg, connections)
    assert isinstance(runner, TransformRunner)
    await runner.close()
    await connections.close()


def test_max_payload_becomes_whole_mib_and_sagemakers_limits_are_checked() -> None:
    cfg = batch_config("http://e", "http://s")
    assert cfg.max_payload_mb == 6
    assert batch_config("http://e", "http://s", max_payload="6MiB").max_payload_mb == 6
    assert batch_config("http://e", "http://s", max_payload="6.5MB").max_payload_mb == 7
    with pytest.raises(ValueError, match="cannot exceed 100MiB"):
        batch_config("http://e", "http://s", max_payload="60MiB", max_concurrent_transforms=2)


CONFIG = """\
backends:
  fraud-rt: {kind: http, url: "http://127.0.0.1:9101/invocations"}
  fraud-bt:
    kind: sagemaker-batch
    model_name: fraud-model
    input_location: s3://bucket/in
    output_location: s3://bucket/out
models:
  fraud:
    lanes: {realtime: fraud-bt, batch: fraud-bt}
"""


def test_a_sagemaker_batch_backend_is_refused_on_any_lane_but_batch() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(CONFIG, "router.yaml")
    text = str(info.value)
    assert "router.yaml:10:23: models.fraud.lanes.realtime: backend 'fraud-bt' is of kind 'sagemaker-batch', " \
           "which serves only the batch lane, not realtime" in text
    assert "lanes.batch" not in text


def test_a_sagemaker_batch_backend_config_error_names_its_field() -> None:
    bad = CONFIG.replace("s3://bucket/out", "bucket/out").replace("realtime: fraud-bt, ", "realtime: fraud-rt, ")
    with pytest.raises(ConfigError) as info:
        parse_config(bad, "router.yaml")
    assert "router.yaml:7:22: backends.fraud-bt.output_location:" in str(info.value)


# --- through the router ----------------------------------------------------------------------------


async def test_the_routers_batch_lane_runs_a_flushed_batch_as_one_transform_job(
        emulator: TransformEmulator, moto_url: str, tmp_path: Any, http: Any, aws_env: None) -> None:  # noqa: F811
    from tests.conftest import serve_router

    config = f"""
state: {{kind: local, path: "{tmp_path}"}}
backends:
  rt: {{kind: http, url: "http://127.0.0.1:9/invocations"}}
  fraud-bt: {{kind: sagemaker-batch, model_name: {MODEL}, input_location: "s3://{BUCKET}/batch/in",
             output_location: "s3://{BUCKET}/batch/out", endpoint_url: "{emulator.url}",
             s3_endpoint_url: "{moto_url}", region: us-east-1, poll: 20ms, max_poll: 100ms}}
models:
  fraud:
    lanes: {{realtime: rt, batch: fraud-bt}}
    batch: {{max_records: 30, max_wait: 60s}}
    default: {{lane: batch}}
"""
    data = rows(30, seed=3)
    requests = [data[i:i + 10] for i in range(0, 30, 10)]
    headers = {"Content-Type": "text/csv", "Prefer": "respond-async"}
    async with serve_router(config) as router:
        ids = []
        for chunk in requests:  # three requests of ten records: the third fills the buffer and flushes it
            body = "\n".join(",".join(str(v) for v in row) for row in chunk)
            async with http.post(router.endpoint("fraud"), data=body, headers=headers) as r:
                assert r.status == 202
                ids.append((await r.json())["job_id"])
        model = FraudModel.load()
        for job_id, chunk in zip(ids, requests, strict=True):
            async with asyncio.timeout(15):
                while True:
                    async with http.get(f"{router.url}/jobs/{job_id}") as r:
                        job = await r.json()
                    if job["status"] != "queued" and job["status"] != "running":
                        break
                    await asyncio.sleep(0.05)
            assert job["status"] == "succeeded", job
            assert job["records"] == {"total": 10, "done": 10, "failed": 0}
            async with http.get(f"{router.url}/jobs/{job_id}/result") as r:
                scores = [float(x) for x in (await r.text()).splitlines()]
            assert scores == pytest.approx(model.predict(chunk), abs=1e-6)
    (create,) = emulator.operations("CreateTransformJob")  # one batch, one transform job
    assert create["ModelName"] == MODEL
