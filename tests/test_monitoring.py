"""The shipped dashboard and alert rules, proven against a real Prometheus scraping a real router.

The router serves the demo config (policies/demo.yaml) in front of three real model servers; traffic
goes through every lane (realtime, serverless fallback, admission queues, shedding and deferral, async
jobs, batch), Prometheus scrapes it
every second, and then every dashboard panel's PromQL and every alert expression is evaluated
through Prometheus's HTTP API: each must parse, and each panel must return data. A second run uses the
scale-out state (S3 + SQS on moto's server): the job gauges that KEDA, the backlog alerts and the queue
panels read must have data there too.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import generate_latest

from router.config import parse_config
from router.demo.model_server import ModelServer
from router.metrics import RouterMetrics
from router.runtime import Runtime
from tests.conftest import RunningRouter, free_port, serve_router, until
from tests.moto_server import create_bucket, create_queues, moto_server, moto_url

__all__ = ["moto_server", "moto_url"]  # fixtures, re-exported for pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "inference-router.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ROW = "120.5,2,0.8,350,7,30"
CSV = {"Content-Type": "text/csv"}
TEAM = {"X-Api-Key": "demo-team-a-key"}  # the demo's caller that may claim critical urgency
ADMIN = {"Authorization": "Bearer demo-admin-token"}

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
MISSING = ("the prometheus binary is not installed: `make test` installs Debian's `prometheus` package "
           "(which ships promtool) when it runs as root; or run `apt-get install prometheus`")

# Grafana's variables as the test sets them: the scrape job, every namespace and instance ("All"), the demo's
# model, both backends (a multi-value selection becomes a regex alternation), and a rate window that covers
# the whole test at a 1 s scrape interval.
VARIABLES = {
    "job": "inference-router",
    "namespace": ".*",
    "instance": ".*",
    "model": "fraud",
    "backend": "fraud-rt|fraud-sls",
    "__rate_interval": "1m",
    "__interval": "1s",
    "__range": "1m",
}

def substitute(expr: str) -> str:
    """Replace Grafana's ``$name`` and ``${name}`` like Grafana does, longest names first."""
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in VARIABLES:
            raise AssertionError(f"unknown dashboard variable ${name} in {expr!r}")
        return VARIABLES[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def dashboard_panels() -> list[dict[str, Any]]:
    doc = json.loads(DASHBOARD.read_text())
    panels: list[dict[str, Any]] = []
    for panel in doc["panels"]:
        panels.extend(panel.get("panels", []) if panel["type"] == "row" else [panel])
    return panels


def annotation_queries() -> list[str]:
    return [a["expr"] for a in json.loads(DASHBOARD.read_text())["annotations"]["list"] if "expr" in a]


def without_threshold(expr: str) -> str:
    """An alert's expression without its final comparison: what must have data for the alert to be able to fire."""
    return re.sub(r"\s*[<>=!]=?\s*[0-9.e+]+\s*$", "", expr.strip())


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def keda_queries() -> list[str]:
    docs = yaml.safe_load_all((DEPLOY / "kubernetes" / "keda-scaledobject.yaml").read_text())
    return [t["metadata"]["query"] for doc in docs for t in doc["spec"]["triggers"]]


# --- static checks (promtool, the files' shape) ------------------------------------------------


@pytest.mark.skipif(PROMTOOL is None, reason=MISSING)
def test_promtool_accepts_the_rules_and_the_prometheus_config() -> None:
    assert PROMTOOL is not None
    for args in (["check", "rules", str(ALERTS)], ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")]):
        done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(PROMTOOL is None, reason=MISSING)
def test_the_queue_wait_alert_fires_for_a_backend_whose_requests_wait_long_and_only_for_it() -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "test", "rules", str(ROOT / "tests" / "alerts" / "queue_wait.test.yml")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_summary_a_description_and_a_runbook_section() -> None:
    readme = (ROOT / "README.md").read_text()
    anchors = {heading.strip().lower() for heading in re.findall(r"^#### (\w+)\s*$", readme, re.MULTILINE)}
    for rule in alert_rules():
        name = rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"], name
        assert annotations["description"], name
        assert annotations["runbook_url"] == f"README.md#{name.lower()}", name
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        assert name.lower() in anchors, f"README.md has no runbook section '#### {name}'"


def test_every_panel_has_a_description_and_uses_only_known_variables() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert {v["name"] for v in doc["templating"]["list"]} == {"datasource", "job", "namespace", "instance", "model",
                                                              "backend"}
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard_panels():
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            substitute(target["expr"])
            if "router_" in target["expr"] or "process_" in target["expr"] or "up{" in target["expr"]:
                assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])
    for expr in annotation_queries():
        substitute(expr)
    assert 'up{job="inference-router"}' not in DASHBOARD.read_text()


def test_zero_one_gauges_are_drawn_on_their_own_on_off_axis() -> None:
    """The breaker and cold-state gauges are 0/1: neither a percentage nor a point on a seconds axis."""
    for panel in dashboard_panels():
        for target in panel["targets"]:
            if re.search(r"router_backend_(breaker_open|cold)\{", target["expr"]):
                units = [p["value"] for o in panel["fieldConfig"]["overrides"]
                         if o["matcher"] == {"id": "byFrameRefID", "options": target["refId"]}
                         for p in o["properties"] if p["id"] == "unit"]
                assert units == ["bool_on_off"], panel["title"]


# --- a real Prometheus ------------------------------------------------------------------------


class Prometheus:
    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.http = http

    async def get(self, path: str, **params: str) -> Any:
        async with self.http.get(self.url + path, params=params) as r:
            doc = await r.json()
        return doc

    async def query(self, expr: str) -> dict[str, Any]:
        async with self.http.post(self.url + "/api/v1/query", data={"query": expr}) as r:
            result: dict[str, Any] = await r.json()
        return result


@pytest.fixture
async def prometheus_for(tmp_path: Path, http: aiohttp.ClientSession) -> AsyncIterator[Any]:
    """``await start(target)`` runs Prometheus on 127.0.0.1 scraping ``target`` every second, with the rules."""
    if PROMETHEUS is None:
        pytest.skip(MISSING)
    procs: list[asyncio.subprocess.Process] = []
    log_path = tmp_path / "prometheus.log"

    async def start(target: str) -> Prometheus:
        assert PROMETHEUS is not None
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": "inference-router", "static_configs": [{"targets": [target]}]}],
        }))
        port = free_port()
        with log_path.open("wb") as log:
            procs.append(await asyncio.create_subprocess_exec(
                PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn", stdout=log, stderr=log))
        prom = Prometheus(f"http://127.0.0.1:{port}", http)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                async with http.get(prom.url + "/-/ready") as r:
                    if r.status == 200:
                        return prom
            except aiohttp.ClientConnectionError:
                pass
            assert procs[-1].returncode is None, log_path.read_text()
            await asyncio.sleep(0.1)
        raise AssertionError("prometheus did not become ready: " + log_path.read_text())

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def post(http: aiohttp.ClientSession, router: RunningRouter, **headers: str) -> int:
    async with http.post(router.endpoint("fraud"), data=ROW, headers={**CSV, **headers}) as r:
        await r.read()
        return r.status


def inflight(router: RunningRouter, backend: str) -> int:
    tracker = router.runtime.tracker
    return tracker.trackers[backend].state(tracker.clock()).inflight


async def drive_every_lane(http: aiohttp.ClientSession, router: RunningRouter, rt: ModelServer,
                           sls: ModelServer, async_server: ModelServer) -> None:
    """Traffic that makes every panel's series exist: each step names what it is for."""
    codes = [await post(http, router) for _ in range(10)]  # realtime
    assert set(codes) == {200}
    assert await post(http, router, **{"X-Urgency": "critical"}) == 200  # anonymous: clamped to high

    rt.fail_next(2, 503)  # realtime fails -> fallback to the (cold) serverless backend
    assert await post(http, router) == 200
    assert await post(http, router, **{"X-Deadline-Ms": "1"}) in (503, 504)  # a deadline no lane can make: a 5xx

    rt.latency_s = sls.latency_s = 0.8  # fill both lanes, then low urgency is shed
    busy = [asyncio.create_task(post(http, router, **TEAM, **{"X-Urgency": "critical"})) for _ in range(14)]
    await until(lambda: inflight(router, "fraud-rt") >= 4 and inflight(router, "fraud-sls") >= 8, 5.0)
    assert await post(http, router, **{"X-Urgency": "low"}) == 429
    async with http.post(router.endpoint("fraud"), data=ROW,  # the same from a client that allows a 202: a job
                         headers={**CSV, "X-Urgency": "low", "Prefer": "respond-async"}) as r:
        assert (r.status, r.headers["X-Router-Reason"]) == (202, "deferred_shed_saturated")
    assert await post(http, router, **{"X-Deadline-Ms": "150"}) == 503  # waits, its deadline runs out first
    await asyncio.gather(*busy)  # two of them waited in the queues for a slot
    rt.latency_s = sls.latency_s = 0.005

    jobs = []
    for _ in range(4):  # the batch lane: low urgency + Prefer: respond-async, flushed after max_wait
        async with http.post(router.endpoint("fraud"), data=ROW,
                             headers={**CSV, "X-Urgency": "low", "Prefer": "respond-async"}) as r:
            assert (r.status, r.headers["X-Router-Lane"]) == (202, "batch")
            jobs.append(r.headers["Location"])
    for _ in range(3):  # the async lane: InvokeEndpointAsync
        jobs.append(await invoke_async(http, router))
    for location in jobs:
        for _ in range(300):
            async with http.get(router.url + location) as r:
                if (await r.json())["status"] == "succeeded":
                    break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"job {location} did not succeed")

    async with http.post(router.url + "/admin/reload", headers=ADMIN) as r:  # config reloads panel
        assert r.status == 200
    # a policy skip: the first rule sends payloads over 6 MB to the async lane, which this client did not allow
    async with http.post(router.url + "/admin/explain", headers=ADMIN,
                         json={"model": "fraud", "bytes": 7_000_000}) as r:
        assert r.status == 200

    # leave a backlog through every query below, however slow a loaded machine makes them: 4 jobs held
    # 6 s at a time, 36 queued behind them (a minute of work)
    async_server.latency_s = 6.0
    for _ in range(40):
        await invoke_async(http, router)


async def invoke_async(http: aiohttp.ClientSession, router: RunningRouter) -> str:
    async with http.post(f"{router.url}/endpoints/fraud/async-invocations", data=ROW, headers=CSV) as r:
        assert (r.status, r.headers["X-Router-Lane"]) == (202, "async")
        return r.headers["Location"]


async def panel_problems(prom: Prometheus, panels: list[dict[str, Any]]) -> list[str]:
    """Every query of ``panels`` that does not parse or has no data, as a readable line."""
    problems: list[str] = []
    for panel in panels:
        for target in panel["targets"]:
            expr = substitute(target["expr"])
            answer = await prom.query(expr)
            if answer["status"] != "success":
                problems.append(f"panel {panel['title']!r}: {answer.get('error')} in {expr}")
            elif not answer["data"]["result"]:
                problems.append(f"panel {panel['title']!r}: no data for {expr}")
    return problems


async def scraped(prom: Prometheus, expr: str, timeout_s: float = 10.0) -> None:
    """Wait until Prometheus has a sample for ``expr`` (the last state the traffic left)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (await prom.query(expr))["data"]["result"]:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"prometheus never saw {expr}")


async def test_every_panel_and_alert_query_works_against_a_real_prometheus_scraping_the_demo(
        tmp_path: Path, http: aiohttp.ClientSession, prometheus_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async with ModelServer(latency_s=0.005, max_concurrency=4, overload_status=503) as rt, \
            ModelServer(latency_s=0.005, max_concurrency=8, idle_after_s=30.0, cold_start_s=0.2) as sls, \
            ModelServer(latency_s=0.005, max_concurrency=4) as async_server:
        for key, value in {"DEMO_RT_PORT": str(rt.port), "DEMO_SLS_PORT": str(sls.port),
                           "DEMO_ASYNC_PORT": str(async_server.port), "DEMO_STATE": str(tmp_path / "var")}.items():
            monkeypatch.setenv(key, value)  # the reload reads the file with the process's environment
        config = tmp_path / "router.yaml"
        config.write_text((ROOT / "policies" / "demo.yaml").read_text())
        async with serve_router(config.read_text(), config_path=str(config)) as router:
            prom = await prometheus_for(router.url.removeprefix("http://"))
            await scraped(prom, "up == 1")  # counters are seen at 0 before the traffic: increase() has a start
            await drive_every_lane(http, router, rt, sls, async_server)
            # the backlog drive_every_lane leaves, as a janitor pass (every 2 s) counted it and a scrape saw it
            await scraped(prom, 'router_jobs_queued{model="fraud"} >= 20')
            await scraped(prom, 'router_config_reloads_total{result="ok"} > 0')
            await scraped(prom, "router_policy_skips_total")
            settled = time.time()  # one more scrape, taken after everything above, so every series has its last value
            await scraped(prom, f"timestamp(up) > {settled:.3f}")

            problems = await panel_problems(prom, dashboard_panels())
            for expr in annotation_queries():  # the reload drawn on every graph
                answer = await prom.query(substitute(expr))
                if answer["status"] != "success" or not answer["data"]["result"]:
                    problems.append(f"annotation {expr}: {answer.get('error') or 'no data'}")
            for rule in alert_rules():
                answer = await prom.query(rule["expr"])
                if answer["status"] != "success":
                    problems.append(f"alert {rule['alert']}: {answer.get('error')}")
            for query in keda_queries():  # the autoscaler's inputs must exist too
                answer = await prom.query(query)
                if answer["status"] != "success" or not answer["data"]["result"]:
                    problems.append(f"KEDA trigger {query}: {answer.get('error') or 'no data'}")

            for name, label, metric, expected in (("model", "model", "router_requests_total", {"fraud"}),
                                                  ("backend", "backend", "router_backend_saturation",
                                                   {"fraud-rt", "fraud-sls"}),
                                                  ("job", "job", "router_build_info", {"inference-router"}),
                                                  ("instance", "instance", "router_build_info",
                                                   {router.url.removeprefix("http://")})):
                values = await prom.get(f"/api/v1/label/{label}/values", **{"match[]": metric})
                if not expected <= set(values["data"]):
                    problems.append(f"variable ${name}: label_values({metric}, {label}) gave {values['data']}")

            rules = (await prom.get("/api/v1/rules"))["data"]["groups"]
            evaluated = {r["name"]: r for g in rules for r in g["rules"]}
            assert set(evaluated) == {r["alert"] for r in alert_rules()}
            problems += [f"alert {name} evaluated with {r['health']}: {r.get('lastError')}"
                         for name, r in evaluated.items() if r["health"] != "ok"]
            assert not problems, "\n".join(problems)
            async_server.latency_s = 0.005  # let the queued jobs finish quickly while the router drains



async def test_the_job_gauges_keda_and_the_backlog_alerts_read_have_data_in_the_s3_and_sqs_mode(
        moto_url: str, http: aiohttp.ClientSession, prometheus_for: Any) -> None:
    jobs = create_queues(moto_url, "router-jobs")
    state = (f'state: {{kind: aws, bucket: {create_bucket(moto_url)}, prefix: "r/", queue_url: "{jobs.queue_url}", '
             f'dlq_url: "{jobs.dlq_url}", endpoint_url: "{moto_url}"}}')
    async with ModelServer() as rt, serve_router(f"""
server: {{access_log: false}}
{state}
jobs: {{workers: 0, drain_timeout: 1s}}
backends:
  fraud-rt: {{kind: http, url: "{rt.url}/invocations"}}
models:
  fraud: {{lanes: {{realtime: fraud-rt, async: fraud-rt}}}}
""") as router:
        prom = await prometheus_for(router.url.removeprefix("http://"))
        for _ in range(3):  # no workers: they stay queued
            await invoke_async(http, router)
        await scraped(prom, 'router_jobs_queued{model="*"} >= 3')
        await scraped(prom, 'router_jobs_oldest_queued_age_seconds{model="fraud"}')
        await scraped(prom, "sum(rate(router_requests_total[2m]))")  # the other trigger: two samples of a rate

        problems = await panel_problems(prom, [p for p in dashboard_panels()
                                               if p["title"] in ("Queue depth", "Oldest queued job")])
        for rule in alert_rules():
            if rule["alert"] in ("RouterAsyncBacklog", "RouterAsyncOldestJobTooOld"):
                answer = await prom.query(without_threshold(rule["expr"]))
                if not answer["data"]["result"]:
                    problems.append(f"alert {rule['alert']}: no data for {without_threshold(rule['expr'])}")
        for query in keda_queries():
            answer = await prom.query(query)
            if not answer["data"]["result"]:
                problems.append(f"KEDA trigger {query}: no data")
        assert not problems, "\n".join(problems)
        backlog = await prom.query(without_threshold(alert_rules()[
            [r["alert"] for r in alert_rules()].index("RouterAsyncBacklog")]["expr"]))
        assert [(s["metric"]["model"], float(s["value"][1])) for s in backlog["data"]["result"]] == [("*", 3.0)]


def config_text(model: str) -> str:
    return (f"backends: {{rt: {{kind: http, url: 'http://127.0.0.1:9/invocations'}}}}\n"
            f"models: {{{model}: {{lanes: {{realtime: rt}}}}}}\n")


def test_several_apps_in_one_process_each_export_process_metrics_and_their_build_info() -> None:
    first, second = (Runtime(parse_config(config_text(model))) for model in ("fraud", "churn"))
    texts = [generate_latest(r.metrics.registry).decode() for r in (first, second)]
    for runtime, text in zip((first, second), texts, strict=True):
        assert "process_cpu_seconds_total" in text
        assert "process_resident_memory_bytes" in text
        assert "python_info{" in text
        assert f'config_hash="{runtime.config_hash}"' in text
        assert re.search(r'router_build_info\{config_hash="\w{12}",version="[^"]+"\} 1\.0', text), text
    assert first.config_hash != second.config_hash


async def test_the_config_file_gauge_stays_down_while_a_rejected_edit_is_on_disk_until_a_good_reload(
        tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    good = config_text("fraud")
    path.write_text(good)
    runtime = Runtime(parse_config(good), config_path=path, metrics=RouterMetrics())
    registry = runtime.metrics.registry

    def gauges() -> tuple[float | None, float | None]:
        return (registry.get_sample_value("router_config_file_applied"),
                registry.get_sample_value("router_config_last_reload_successful"))

    assert gauges() == (1, 1)
    path.write_text(good.replace("realtime: rt", "realtime: nope"))
    assert await runtime.reload_from_file()  # rejected: the old config stays in force
    assert gauges() == (0, 0)
    assert gauges() == (0, 0)  # a state, not an event: nothing makes it clear by itself
    path.write_text(good)  # the edit taken back: the file is the config in force again
    assert gauges() == (1, 0)
    before = runtime.config_hash
    path.write_text(good.replace("9/invocations", "10/invocations"))
    assert gauges()[0] == 0  # edited, not reloaded yet
    assert await runtime.reload_from_file() == []
    assert gauges() == (1, 1)
    assert runtime.config_hash != before
