"""Profile the router under load: nginx upstream + router (as in overhead.py), wrk c=64, py-spy on the router.

    .venv/bin/pip install py-spy      # once; py-spy is on PyPI
    .venv/bin/python bench/profile_router.py [--duration 15] [--no-access-log] [--top 30]

Writes ``bench/results/router-profile.txt`` (py-spy's collapsed stacks, one per line; feed it to
flamegraph.pl or speedscope for a picture) and prints the functions with the most samples,
self and inclusive (a function counted once per stack), router code marked with ``*``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import ROUTER_YAML, WRK_LUA, csv_body, router_cli, run_wrk, started
from upstream import free_port, probe, require_tools, run_nginx

RESULTS = Path(__file__).resolve().parent / "results"


def _ours(frame: str) -> bool:
    """A frame of the router's own code (py-spy names files relative to sys.path: ``router/...``)."""
    return "(router/" in frame


def summarize(collapsed: Path, top: int) -> str:
    self_count: collections.Counter[str] = collections.Counter()
    incl_count: collections.Counter[str] = collections.Counter()
    line_count: collections.Counter[str] = collections.Counter()  # router lines on the stack, inclusive
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
                  for f in stack.split(";")]
        if frames:
            self_count[frames[-1]] += count
        for frame in set(frames):
            incl_count[frame] += count
        for raw in set(stack.split(";")):
            if _ours(raw):
                line_count[raw] += count
    if not total:
        return "no samples"

    def row(frame: str, count: int) -> str:
        mark = "*" if _ours(frame) else " "
        return f"{mark} {100 * count / total:5.1f}%  {frame}"

    out = [f"{total} samples", "", "self (where the CPU is):"]
    out += [row(f, c) for f, c in self_count.most_common(top)]
    out += ["", "inclusive, router code only (* = router/):"]
    out += [row(f, c) for f, c in incl_count.most_common() if _ours(f)][:top]
    out += ["", "inclusive by line, router code only:"]
    out += [row(f, c) for f, c in line_count.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--no-access-log", action="store_true")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--native", action="store_true", help="include C frames (uvloop, GC, ...) in the stacks")
    args = ap.parse_args(argv)
    wrk = require_tools("nginx", "wrk")["wrk"]
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        sys.stderr.write("py-spy not found: .venv/bin/pip install py-spy\n")
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    collapsed = RESULTS / "router-profile.txt"
    tmp = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    body = csv_body()
    script = tmp / "post.lua"
    script.write_text(WRK_LUA.format(body=body))
    try:
        with run_nginx() as nginx:
            port = free_port()
            cfg = tmp / "router.yaml"
            cfg.write_text(ROUTER_YAML.format(port=port, upstream=nginx.url,
                                              access_log="false" if args.no_access_log else "true"))
            with started([router_cli(), "serve", "--config", str(cfg)], port, tmp / "router.log") as proc:
                url = f"http://127.0.0.1:{port}/endpoints/bench/invocations"
                status, answer = probe(url, body.encode())
                if status != 200:
                    raise RuntimeError(f"router answered {status}: {answer[:300]!r}")
                run_wrk(wrk, script, url, 2, 64, 2, None)  # warm-up
                for fmt, out in (("raw", collapsed),):  # add ("flamegraph", ...svg) for a picture (a second run)
                    spy = subprocess.Popen([str(py_spy), "record", "--pid", str(proc.pid), "--rate", str(args.rate),
                                            "--duration", str(int(args.duration)), "--format", fmt,
                                            "--output", str(out), *(["--native"] if args.native else [])],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    try:
                        res = run_wrk(wrk, script, url, 2, 64, args.duration, proc.pid)
                        _, err = spy.communicate(timeout=args.duration + 30)
                    finally:
                        if spy.poll() is None:
                            spy.kill()
                            spy.wait()
                    if spy.returncode != 0:
                        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')}")
                    print(f"{fmt}: {res['rps']:,.0f} req/s under py-spy, {res.get('cpu_us_per_req', 0):.0f} µs CPU/req,"
                          f" errors {res['errors']} -> {out}")
        print()
        print(summarize(collapsed, args.top))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
