"""Router overhead, side by side in one run: direct nginx, bare pass-throughs, and the router.

    .venv/bin/python bench/overhead.py [--rounds 5] [--duration 5] [--targets direct,bare-litestar,...]

Starts a local nginx (``return 200 '<csv>'``), the two bare pass-throughs of ``bench/bare_passthrough.py``
and the router (``inference-router serve``, one model ``bench`` -> http backend -> nginx, the demo-like
policy chain, access log on, written to a file) plus, by default, the router with the access log off.
Every target is its own process on its own 127.0.0.1 port. For each of R interleaved rounds (target order
rotated each round), wrk POSTs a ~1 KB CSV body to ``/endpoints/bench/invocations``:
c=1 (``-t1 -c1``, exact p50/p99 from a Lua ``done()``) then c=64 (``-t2 -c64``, req/s).
Prints a markdown table of medians and writes ``bench/results/overhead.json``.
Needs nginx and wrk (Debian: ``apt-get install -y nginx wrk``); installs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from upstream import free_port, probe, require_tools, run_nginx, stop, wait_for_port

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
PATH = "/endpoints/bench/invocations"
ALL_TARGETS = ("direct", "bare-asgi", "bare-litestar", "router", "router-nolog")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The targets.
MIN_THROUGHPUT_RATIO = 0.90  # router c=64 req/s / bare litestar+aiohttp pass-through's
MAX_ADDED_P50_MS = 0.5  # router c=1 p50 - direct c=1 p50
MAX_RSS_MB = 80.0

ROUTER_YAML = """\
server:
  listen: "127.0.0.1:{port}"
  access_log: {access_log}
  log_format: json
urgency:
  header: X-Urgency
  levels: {{critical: 3, high: 2, normal: 1, low: 0}}
  default: normal
backends:
  upstream:
    kind: http
    url: "{upstream}/invocations"
    max_concurrency: 1000
    timeout: 10s
models:
  bench:
    lanes: {{realtime: upstream}}
    policy: [shed-low, deadline, by-size-and-saturation]
policies:
  shed-low: {{type: shed, params: {{below_urgency: normal, when_saturation_at_least: 1.0, retry_after: 2s}}}}
  deadline: {{type: deadline}}
  by-size-and-saturation:
    type: rules
    params:
      - {{when: {{payload_bytes: {{gt: 4MB}}}}, route: realtime, reason: too_big}}
      - {{when: {{saturation.realtime: {{gte: 1.0}}}}, route: realtime, reason: realtime_full}}
      - {{route: realtime, reason: realtime_first}}
"""

WRK_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "text/csv"
wrk.body = [==[{body}]==]

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {{"requests": %.0f, "duration_us": %.0f, "p50_us": %.1f, "p90_us": %.1f, "p99_us": %.1f, ' ..
    '"mean_us": %.1f, "max_us": %.1f, "err_connect": %.0f, "err_read": %.0f, "err_write": %.0f, ' ..
    '"err_status": %.0f, "err_timeout": %.0f}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def csv_body(target_bytes: int = 1024) -> str:
    """A deterministic CSV payload of about ``target_bytes`` bytes (feature rows, no header)."""
    rows: list[str] = []
    size = 0
    i = 0
    while size < target_bytes - 40:
        row = ",".join(f"{((i * 37 + j * 11) % 1000) / 997:.5f}" for j in range(5))
        rows.append(row)
        size += len(row) + 1
        i += 1
    return "\n".join(rows) + "\n"


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None  # None: not started by us (direct = nginx below)
    pid: int = 0  # the process whose CPU and RSS we read
    rss_mb: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"


def proc_rss_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) in MB from /proc/<pid>/status."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024.0
    return out


def proc_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def nginx_worker_pid(master: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return int(children[0])
    return master


def run_wrk(wrk: str, script: Path, url: str, threads: int, conns: int, duration: float,
            cpu_pid: int | None) -> dict[str, Any]:
    cpu0 = proc_cpu_s(cpu_pid) if cpu_pid else 0.0
    cmd = [wrk, f"-t{threads}", f"-c{conns}", f"-d{duration:g}s", "--timeout", "5s", "-s", str(script), url]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=duration + 30)
    cpu1 = proc_cpu_s(cpu_pid) if cpu_pid else 0.0
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    res: dict[str, Any] = json.loads(line.removeprefix("BENCHJSON "))
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    errors = sum(res[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    res["errors"] = errors
    if cpu_pid:
        res["cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / max(1, res["requests"])
    return res


@contextlib.contextmanager
def started(cmd: list[str], port: int, log_path: Path, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=cwd,
                                start_new_session=True)  # stopped with whatever it forks
    try:
        try:
            wait_for_port(port, proc)
        except RuntimeError as exc:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{exc}\n--- {log_path.name} ---\n{tail}") from None
        yield proc
    finally:
        stop(proc)


def router_cli() -> str:
    exe = Path(sys.executable).parent / "inference-router"
    if exe.exists():
        return str(exe)
    found = shutil.which("inference-router")
    if found is None:
        sys.stderr.write("inference-router not found: pip install -e . in the venv first\n")
        raise SystemExit(2)
    return found


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(names: list[str], rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    per: dict[str, dict[str, float]] = {}
    for name in names:
        c1 = [r[name]["c1"] for r in rounds]
        c64 = [r[name]["c64"] for r in rounds]
        per[name] = {
            "c1_p50_ms": med([x["p50_us"] / 1000 for x in c1]),
            "c1_p99_ms": med([x["p99_us"] / 1000 for x in c1]),
            "c64_rps": med([x["rps"] for x in c64]),
            "c64_p50_ms": med([x["p50_us"] / 1000 for x in c64]),
            "c64_cpu_us_per_req": med([x.get("cpu_us_per_req", float("nan")) for x in c64]),
            "c1_cpu_us_per_req": med([x.get("cpu_us_per_req", float("nan")) for x in c1]),
        }
    out: dict[str, Any] = {"targets": per, "comparisons": {}}
    for router in (n for n in names if n.startswith("router")):
        cmp: dict[str, float] = {}
        for base in (n for n in names if n.startswith("bare-")):
            # median of per-round ratios: rounds are paired, so this cancels slow drifts of the machine
            cmp[f"rps_ratio_vs_{base}"] = med([r[router]["c64"]["rps"] / r[base]["c64"]["rps"] for r in rounds])
            cmp[f"added_p50_ms_vs_{base}"] = med(
                [(r[router]["c1"]["p50_us"] - r[base]["c1"]["p50_us"]) / 1000 for r in rounds])
        if "router-base" in names and router != "router-base":
            cmp["rps_ratio_vs_router-base"] = med(
                [r[router]["c64"]["rps"] / r["router-base"]["c64"]["rps"] for r in rounds])
            cmp["added_p50_us_vs_router-base"] = med(
                [r[router]["c1"]["p50_us"] - r["router-base"]["c1"]["p50_us"] for r in rounds])
        if "direct" in names:
            cmp["added_p50_ms_vs_direct"] = med(
                [(r[router]["c1"]["p50_us"] - r["direct"]["c1"]["p50_us"]) / 1000 for r in rounds])
        out["comparisons"][router] = cmp
    return out


def verdicts(summary: dict[str, Any], rss: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for router, cmp in summary["comparisons"].items():
        v: dict[str, Any] = {}
        if "rps_ratio_vs_bare-litestar" in cmp:
            ratio = cmp["rps_ratio_vs_bare-litestar"]
            v["throughput"] = {"value": ratio, "target": f">= {MIN_THROUGHPUT_RATIO}",
                               "ok": ratio >= MIN_THROUGHPUT_RATIO}
        if "added_p50_ms_vs_direct" in cmp:
            added = cmp["added_p50_ms_vs_direct"]
            v["added_p50_ms"] = {"value": added, "target": f"<= {MAX_ADDED_P50_MS}", "ok": added <= MAX_ADDED_P50_MS}
        if router in rss:
            peak = max(rss[router].values())
            v["rss_mb"] = {"value": peak, "target": f"<= {MAX_RSS_MB}", "ok": peak <= MAX_RSS_MB}
        out[router] = v
    return out


def markdown(names: list[str], summary: dict[str, Any], rss: dict[str, dict[str, float]],
             verdict: dict[str, dict[str, Any]], n_rounds: int, duration: float) -> str:
    lines = [
        f"Medians of {n_rounds} interleaved rounds, {duration:g} s per run; ~1 KB text/csv POST, one worker each.",
        "",
        "| target | c=1 p50 ms | c=1 p99 ms | c=64 req/s | c=64 p50 ms | CPU µs/req (c=64) | RSS MB warm / end |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        t = summary["targets"][name]
        r = rss.get(name, {})
        rss_txt = f"{r['warm']:.1f} / {r['end']:.1f}" if r else "-"
        cpu = t["c64_cpu_us_per_req"]
        cpu_txt = f"{cpu:.0f}" if cpu == cpu else "-"
        lines.append(f"| {name} | {t['c1_p50_ms']:.3f} | {t['c1_p99_ms']:.3f} | {t['c64_rps']:,.0f} | "
                     f"{t['c64_p50_ms']:.2f} | {cpu_txt} | {rss_txt} |")
    lines.append("")
    for router, cmp in summary["comparisons"].items():
        parts = []
        for base in (n for n in names if n.startswith("bare-")):
            parts.append(f"req/s {cmp[f'rps_ratio_vs_{base}']:.1%} of {base} "
                         f"(p50 +{cmp[f'added_p50_ms_vs_{base}']:.3f} ms)")
        if "added_p50_ms_vs_direct" in cmp:
            parts.append(f"p50 +{cmp['added_p50_ms_vs_direct']:.3f} ms over direct")
        if "rps_ratio_vs_router-base" in cmp:
            parts.append(f"req/s {cmp['rps_ratio_vs_router-base']:.1%} of router-base, c=1 p50 "
                         f"{cmp['added_p50_us_vs_router-base']:+.1f} µs vs router-base")
        lines.append(f"- **{router}**: " + "; ".join(parts) + " (medians of per-round ratios/differences)")
    lines.append("")
    lines.append("| target (issue) | router | value | goal | met |")
    lines.append("| --- | --- | ---: | --- | --- |")
    for router, v in verdict.items():
        for key, item in v.items():
            value = f"{item['value']:.1%}" if key == "throughput" else f"{item['value']:.3f}"
            lines.append(f"| {key} | {router} | {value} | {item['target']} | {'yes' if item['ok'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of c=64 warm-up per target (default 2)")
    ap.add_argument("--targets", default=",".join(ALL_TARGETS), help=f"comma list of {', '.join(ALL_TARGETS)}")
    ap.add_argument("--body-bytes", type=int, default=1024, help="request body size (default 1024)")
    ap.add_argument("--output", type=Path, default=RESULTS / "overhead.json")
    ap.add_argument("--keep-logs", action="store_true", help="keep the temp dir with process logs")
    ap.add_argument("--router-baseline", metavar="GIT_REF",
                    help="extra target router-base: the router as of GIT_REF (its router/ package from git archive, "
                         "ahead on PYTHONPATH, same venv and config), to measure a change before/after side by side")
    ap.add_argument("--router-variant", action="append", default=[], metavar="NAME:ARGS",
                    help="extra target router-NAME: bench/router_variant.py ARGS (e.g. 'gcfreeze:--gc-freeze'), "
                         "access log on; repeatable")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = set(names) - set(ALL_TARGETS)
    if unknown or not names:
        ap.error(f"unknown targets {sorted(unknown)}; choose from {', '.join(ALL_TARGETS)}")
    names = [n for n in ALL_TARGETS if n in names]  # canonical order for the table
    variants: dict[str, list[str]] = {}
    for spec in args.router_variant:
        vname, _, vargs = spec.partition(":")
        if not vname.isidentifier():
            ap.error(f"--router-variant {spec!r}: expected NAME:ARGS")
        variants[f"router-{vname}"] = vargs.split()
    names += list(variants)
    if args.router_baseline:
        names.append("router-base")
    wrk = require_tools("nginx", "wrk")["wrk"]

    # SIGTERM (e.g. `timeout`) must still run the finally blocks that stop every process we started.
    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_term)

    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    base_env = None
    if args.router_baseline:
        tree = tmp / "baseline"
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(BENCH.parent), "archive", args.router_baseline, "router"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        base_env = {**os.environ, "PYTHONPATH": str(tree)}
    body = csv_body(args.body_bytes)
    script = tmp / "post.lua"
    script.write_text(WRK_LUA.format(body=body))
    try:
        with run_nginx() as nginx, contextlib.ExitStack() as stack:
            upstream = nginx.url
            targets: dict[str, Target] = {}
            for name in names:
                if name == "direct":
                    targets[name] = Target(name, nginx.port, pid=nginx_worker_pid(nginx.proc.pid))
                    continue
                port = free_port()
                if name.startswith("bare-"):
                    flavour = name.removeprefix("bare-")
                    cmd = [sys.executable, str(BENCH / "bare_passthrough.py"), flavour, str(port),
                           upstream + "/invocations"]
                else:
                    cfg = tmp / f"{name}.yaml"
                    cfg.write_text(ROUTER_YAML.format(port=port, upstream=upstream,
                                                      access_log="false" if name == "router-nolog" else "true"))
                    cmd = [router_cli(), "serve", "--config", str(cfg)]
                    if name in variants:
                        cmd = [sys.executable, str(BENCH / "router_variant.py"), *variants[name],
                               "--", "serve", "--config", str(cfg)]
                    elif name == "router-base":
                        cmd = [sys.executable, "-m", "router.cli", "serve", "--config", str(cfg)]
                # The router's stderr is its access log (one JSON line per request): to a file, as in production.
                env, cwd = (base_env, tmp) if name == "router-base" else (None, None)  # not this checkout's router/
                proc = stack.enter_context(started(cmd, port, tmp / f"{name}.log", env=env, cwd=cwd))
                targets[name] = Target(name, port, proc, pid=proc.pid)

            for t in targets.values():
                status, answer = probe(t.url, body.encode())
                if status != 200:
                    raise RuntimeError(f"{t.name} answered {status} to a probe: {answer[:300]!r}")
            print(f"targets up: {', '.join(f'{t.name}=:{t.port}' for t in targets.values())}; "
                  f"body {len(body.encode())} B; logs in {tmp}", flush=True)

            for t in targets.values():  # warm-up (caches, pools, JIT-less but lazy imports)
                res = run_wrk(wrk, script, t.url, 2, 64, args.warmup, None)
                if res["errors"]:
                    raise RuntimeError(f"{t.name}: {res['errors']} errors during warm-up: {res}")
            rss: dict[str, dict[str, float]] = {}
            for t in targets.values():
                if t.proc is not None:
                    rss[t.name] = {"warm": proc_rss_mb(t.pid)["VmRSS"]}

            rounds: list[dict[str, dict[str, Any]]] = []
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                this: dict[str, dict[str, Any]] = {n: {} for n in names}
                for conc, threads in ((1, 1), (64, 2)):
                    for name in order:
                        t = targets[name]
                        res = run_wrk(wrk, script, t.url, threads, conc, args.duration, t.pid)
                        if res["errors"]:
                            raise RuntimeError(f"{name} c={conc}: {res['errors']} errors/non-2xx: {res}")
                        this[name][f"c{conc}"] = res
                        print(f"round {r + 1}/{args.rounds} c={conc:<2} {name:<14} p50 {res['p50_us'] / 1000:6.3f} ms"
                              f"  {res['rps']:9,.0f} req/s  cpu {res.get('cpu_us_per_req', 0):5.0f} µs/req",
                              flush=True)
                rounds.append(this)

            for t in targets.values():
                if t.proc is not None:
                    m = proc_rss_mb(t.pid)
                    rss[t.name].update(end=m["VmRSS"], peak=m["VmHWM"])
            log_lines = {n: (tmp / f"{n}.log").read_bytes().count(b"\n") for n in names if n.startswith("router")}

        summary = summarize(names, rounds)
        verdict = verdicts(summary, {n: {"warm": v["warm"], "end": v["end"]} for n, v in rss.items()})
        table = markdown(names, summary, rss, verdict, args.rounds, args.duration)
        print()
        print(table)
        doc = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                        "loadavg_end": os.getloadavg()},
            "settings": {"rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
                         "body_bytes": len(body.encode()), "path": PATH,
                         "c1": "wrk -t1 -c1", "c64": "wrk -t2 -c64"},
            "targets_goal": {"throughput_ratio_vs_bare_litestar": MIN_THROUGHPUT_RATIO,
                             "added_p50_ms_vs_direct": MAX_ADDED_P50_MS, "rss_mb": MAX_RSS_MB},
            "summary": summary,
            "rss_mb": rss,
            "router_log_lines": log_lines,
            "verdict": verdict,
            "rounds": rounds,
            "table_md": table,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {args.output}")
        return 0
    finally:
        if args.keep_logs:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
