"""Attacks on the router's connection limits, measured: slowloris, huge headers, slow bodies.

    .venv/bin/python bench/hardening.py                                # all three, the router's default limits
    .venv/bin/python bench/hardening.py --scenarios headers --plain-http --header-conns 4   # before the limits

- ``slowloris``: R rounds of (honest wrk c=1 for D s alone; then the same while ``--slowloris`` connections,
  1,000 by default, trickle a header one byte a second and reconnect when closed). Reports the honest p99
  with and without the attack (median of per-round ratios), and how long each trickling connection lived
  (goal: every one closed within ``server.header_timeout``, +1 s of slack for the timer and the trickle).
- ``headers``: ``--header-conns`` (16) connections each send ``--header-mib`` (64) MiB of a header that never
  ends. The router's VmRSS is sampled every 20 ms; reports its growth (goal: <= 10 MB) and what each
  connection got (431) after sending how much.
- ``slowbody``: ``--slow-bodies`` (100) requests send their 20-byte chunked body at one byte a second.
  Reports the statuses (goal: 408 each, within ``server.body_timeout`` + 2 s).

CPU layout: with two or more CPUs the router runs alone on the last one, and nginx, wrk and the attackers (this
process) on the others (``taskset``): the attackers' own CPU then stands for another machine's, and the honest
p99 shows what the attack costs the router. ``--shared`` lets every process float over every CPU.

The router is ``inference-router serve`` (or, with ``--plain-http``, ``router_variant.py --plain-http``: uvicorn's
own protocol, as before the limits) in front of a local nginx, as in ``overhead.py``; the attackers run in this
process (asyncio), honest clients are wrk. Writes ``bench/results/hardening.json``. Needs nginx and wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import BENCH, PATH, RESULTS, ROUTER_YAML, WRK_LUA, csv_body, proc_rss_mb, router_cli, run_wrk, started
from upstream import cpu_of_its_own, free_port, probe, require_tools, run_nginx

HEADER_TIMEOUT_S = 10.0  # the defaults the router runs with here (router/api/limits.py)
BODY_TIMEOUT_S = 10.0
REQUEST_LINE = f"POST {PATH} HTTP/1.1\r\nHost: bench\r\nContent-Type: text/csv\r\n".encode()


@dataclass
class Trickle:
    lifetimes: list[float] = field(default_factory=list)  # connect to close by the server, seconds
    statuses: dict[int, int] = field(default_factory=dict)
    open_now: int = 0
    opened: int = 0


def _status(data: bytes) -> int:
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0  # closed without an answer


class Tricklers:
    """``n`` slowloris clients in one event loop, as cheap as an attacker on another machine would be: plain
    non-blocking sockets, no task per connection. Each sends a header one byte a second at a phase of its own
    (spread over the second, as independent clients would), the server's answer or close is noticed at once
    (a reader callback), and a closed one connects again."""

    TICK_S = 0.01

    def __init__(self, port: int, n: int, stats: Trickle) -> None:
        self.port, self.n, self.stats = port, n, stats
        self.loop = asyncio.get_running_loop()
        self.socks: dict[int, tuple[socket.socket, float]] = {}  # index -> (socket, connected at)
        self.stopping = False

    async def connect(self, index: int) -> None:
        while not self.stopping:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await self.loop.sock_connect(sock, ("127.0.0.1", self.port))
                sock.send(REQUEST_LINE + f"X-Slow-{index}: ".encode())
            except OSError:
                sock.close()
                await asyncio.sleep(0.1)
                continue
            self.socks[index] = (sock, time.monotonic())
            self.stats.opened += 1
            self.stats.open_now += 1
            self.loop.add_reader(sock, self._answered, index)
            return

    def _answered(self, index: int) -> None:
        sock, started_at = self.socks.pop(index)
        self.loop.remove_reader(sock)
        try:
            data = sock.recv(4096)
        except OSError:
            data = b""
        sock.close()
        self.stats.open_now -= 1
        if not self.stopping:
            self.stats.lifetimes.append(time.monotonic() - started_at)
            code = _status(data)
            self.stats.statuses[code] = self.stats.statuses.get(code, 0) + 1
            self.loop.create_task(self.connect(index))

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self.connect(i) for i in range(self.n)))
        ticks = round(1.0 / self.TICK_S)
        tick = 0
        while not stop.is_set():
            await asyncio.sleep(self.TICK_S)
            tick += 1
            for index in range(tick % ticks, self.n, ticks):  # this tick's share of the connections
                entry = self.socks.get(index)
                if entry is not None:
                    with contextlib.suppress(OSError):  # closed meanwhile: the reader callback sees it
                        entry[0].send(b"a")
        self.stopping = True
        for sock, _ in self.socks.values():
            self.loop.remove_reader(sock)
            sock.close()
        self.stats.open_now -= len(self.socks)
        self.socks.clear()


async def slowloris(port: int, url: str, wrk: str, script: Path, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    stats = Trickle()
    for r in range(args.rounds):
        calm = await asyncio.to_thread(run_wrk, wrk, script, url, 1, 1, args.duration, pid)
        stop = asyncio.Event()
        attack = asyncio.create_task(Tricklers(port, args.slowloris, stats).run(stop))
        async with asyncio.timeout(60):
            while stats.open_now < args.slowloris:  # noqa: ASYNC110 -- a counter, there is no event to wait on
                await asyncio.sleep(0.05)
        attacked = await asyncio.to_thread(run_wrk, wrk, script, url, 1, 1, args.duration, pid)
        stop.set()
        await attack
        rounds.append({"calm": calm, "attacked": attacked})
        print(f"round {r + 1}/{args.rounds}: honest p99 {calm['p99_us'] / 1000:.3f} ms calm, "
              f"{attacked['p99_us'] / 1000:.3f} ms under {args.slowloris} trickling connections; "
              f"{len(stats.lifetimes)} closed so far", flush=True)
    lifetimes = sorted(stats.lifetimes)
    late = sum(1 for t in lifetimes if t > HEADER_TIMEOUT_S + 1.0)
    ratio = statistics.median(x["attacked"]["p99_us"] / x["calm"]["p99_us"] for x in rounds)
    return {
        "connections": args.slowloris, "opened": stats.opened, "closed_by_server": len(lifetimes),
        "closed_late": late, "statuses": stats.statuses,
        "lifetime_s": {"median": statistics.median(lifetimes) if lifetimes else None,
                       "max": lifetimes[-1] if lifetimes else None},
        "honest_p99_ms": {"calm": statistics.median(x["calm"]["p99_us"] / 1000 for x in rounds),
                          "attacked": statistics.median(x["attacked"]["p99_us"] / 1000 for x in rounds)},
        "honest_p99_ratio": ratio,
        "honest_errors": sum(x["attacked"]["errors"] + x["calm"]["errors"] for x in rounds),
        "goal": {"closed_within_header_timeout": late == 0 and bool(lifetimes), "p99_within_10pct": ratio <= 1.10},
        "rounds": rounds,
    }


class RssSampler(threading.Thread):
    """VmRSS of ``pid`` every 20 ms, in a thread so the attackers' event loop cannot delay it."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.02):
            with contextlib.suppress(OSError, KeyError):
                self.peak = max(self.peak, proc_rss_mb(self.pid)["VmRSS"])

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak


async def _answer(answer: asyncio.Task[bytes], writer: asyncio.StreamWriter) -> bytes:
    """What the server answered before closing (nothing, if it did not within 30 s), then close our side."""
    try:
        async with asyncio.timeout(30):
            data = await answer
    except (TimeoutError, OSError):
        data = b""
    writer.close()
    return data


async def _huge_header(port: int, mib: int) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.create_task(reader.read())
    sent = 0
    chunk = b"a" * (1 << 16)
    started_at = time.monotonic()
    with contextlib.suppress(OSError):
        writer.write(REQUEST_LINE + b"X-Big: ")
        while sent < mib << 20 and not answer.done():
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    data = await _answer(answer, writer)
    return {"status": _status(data), "sent_mib": round(sent / (1 << 20), 2),
            "seconds": round(time.monotonic() - started_at, 2)}


async def huge_headers(port: int, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    before = proc_rss_mb(pid)["VmRSS"]
    sampler = RssSampler(pid)
    sampler.start()
    results = await asyncio.gather(*(_huge_header(port, args.header_mib) for _ in range(args.header_conns)))
    peak = max(sampler.stop(), before)
    after = proc_rss_mb(pid)["VmRSS"]
    growth = peak - before
    print(f"huge headers: {args.header_conns} x {args.header_mib} MiB; RSS {before:.1f} -> peak {peak:.1f} "
          f"-> {after:.1f} MB (growth {growth:.1f} MB); statuses {sorted({r['status'] for r in results})}",
          flush=True)
    return {"connections": args.header_conns, "mib_each": args.header_mib, "rss_mb": {
        "before": before, "peak": peak, "after": after, "growth": growth}, "goal": {"growth_le_10mb": growth <= 10.0},
        "per_connection": results}


async def _slow_body(port: int) -> tuple[int, float]:
    """A chunked body, one byte a chunk a second: the router must read it whole before it can route it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b"0.1,0.2,0.3,0.4,0.5\n"
    writer.write(REQUEST_LINE + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    started_at = time.monotonic()
    answer = asyncio.create_task(reader.read())
    with contextlib.suppress(OSError):
        for byte in body:
            if answer.done():
                break
            writer.write(b"1\r\n" + bytes([byte]) + b"\r\n")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(answer), 1.0)
        if not answer.done():
            writer.write(b"0\r\n\r\n")  # the body's end, 20 s later: a router without limits serves it now
    data = await _answer(answer, writer)
    return _status(data), time.monotonic() - started_at


async def slow_bodies(port: int, args: argparse.Namespace) -> dict[str, Any]:
    results = await asyncio.gather(*(_slow_body(port) for _ in range(args.slow_bodies)))
    statuses: dict[int, int] = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    seconds = sorted(t for _, t in results)
    print(f"slow bodies: {args.slow_bodies} at 1 byte/s; statuses {statuses}; answered after "
          f"{seconds[len(seconds) // 2]:.1f} s median, {seconds[-1]:.1f} s max", flush=True)
    return {"requests": args.slow_bodies, "statuses": statuses,
            "seconds": {"median": seconds[len(seconds) // 2], "max": seconds[-1]},
            "goal": {"all_408_in_time": statuses.get(408) == args.slow_bodies
                     and seconds[-1] <= BODY_TIMEOUT_S + 2.0}}


async def run(args: argparse.Namespace, wrk: str, tmp: Path) -> dict[str, Any]:
    body = csv_body(1024)
    script = tmp / "post.lua"
    script.write_text(WRK_LUA.format(body=body))
    out: dict[str, Any] = {}
    router_cpu = cpu_of_its_own(shared=args.shared)  # before nginx starts: it inherits this process's CPUs
    with run_nginx() as nginx:
        port = free_port()
        cfg = tmp / "router.yaml"
        cfg.write_text(ROUTER_YAML.format(port=port, upstream=nginx.url, access_log="true"))
        cmd = [router_cli(), "serve", "--config", str(cfg)]
        if args.plain_http:
            cmd = [sys.executable, str(BENCH / "router_variant.py"), "--plain-http", "--", *cmd[1:]]
        cmd = [*router_cpu, *cmd]
        with started(cmd, port, tmp / "router.log") as proc:
            url = f"http://127.0.0.1:{port}{PATH}"
            status, answer = probe(url, body.encode())
            if status != 200:
                raise RuntimeError(f"the router answered {status} to a probe: {answer[:300]!r}")
            await asyncio.to_thread(run_wrk, wrk, script, url, 2, 16, 2.0, None)  # warm-up
            if "slowloris" in args.scenarios:
                out["slowloris"] = await slowloris(port, url, wrk, script, proc.pid, args)
            if "headers" in args.scenarios:
                out["headers"] = await huge_headers(port, proc.pid, args)
            if "slowbody" in args.scenarios:
                out["slowbody"] = await slow_bodies(port, args)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="slowloris,headers,slowbody")
    ap.add_argument("--plain-http", action="store_true", help="the router without its limits (uvicorn's protocol)")
    ap.add_argument("--slowloris", type=int, default=1000, help="trickling connections (default 1000)")
    ap.add_argument("--rounds", type=int, default=3, help="slowloris rounds (default 3)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per honest wrk run (default 10)")
    ap.add_argument("--header-conns", type=int, default=16)
    ap.add_argument("--header-mib", type=int, default=64)
    ap.add_argument("--slow-bodies", type=int, default=100)
    ap.add_argument("--shared", action="store_true", help="no CPU pinning: attackers and router share every CPU")
    ap.add_argument("--output", type=Path, default=RESULTS / "hardening.json")
    args = ap.parse_args(argv)
    args.scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    wrk = require_tools("nginx", "wrk")["wrk"]

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="bench-hardening-"))
    try:
        results = asyncio.run(run(args, wrk, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(), "loadavg_end": os.getloadavg(),
           "plain_http": args.plain_http, "shared_cpus": args.shared, "results": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({name: r.get("goal") for name, r in results.items()}))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
