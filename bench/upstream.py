"""A fast local upstream for benchmarks: nginx answering ``return 200 '<csv>'`` on 127.0.0.1.

Used by ``bench/overhead.py``; can also be run alone (``python bench/upstream.py [PORT]``) to get an
upstream for manual tests. nginx and wrk come from Debian and are never installed by these scripts.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ANSWER = "0.0123,0.9877\\n"  # nginx string syntax: \n is a newline in the answer
INSTALL_HINT = "install them with: apt-get install -y nginx wrk"


def require_tools(*names: str) -> dict[str, str]:
    """Paths of the named executables; exits 2 with an install hint when one is missing."""
    found: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        path = shutil.which(name) or next(
            (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        sys.stderr.write(f"missing {', '.join(missing)} (Debian packages); {INSTALL_HINT}\n")
        raise SystemExit(2)
    return found


def cpu_of_its_own(shared: bool = False) -> list[str]:
    """Pin this process (and so everything it starts later: load generators, nginx) to every CPU but the last;
    return the command prefix (``taskset -c N``) that starts a process on the last one, alone. Nothing (and no
    pinning) when ``shared``, on one CPU, or without taskset."""
    cpus = sorted(os.sched_getaffinity(0))
    taskset = shutil.which("taskset")
    if shared or len(cpus) < 2 or taskset is None:
        return []
    os.sched_setaffinity(0, cpus[:-1])
    return [taskset, "-c", str(cpus[-1])]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 20.0) -> None:
    """Wait until 127.0.0.1:port accepts connections; raise if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout_s:g}s")


def _user_directive() -> str:
    """Workers run as the current user (nginx defaults to ``nobody`` when started as root)."""
    if os.geteuid() != 0:
        return ""  # not root: nginx cannot switch user and runs as us anyway
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    return f"user {user} {group};\n"


def nginx_conf(tmp: Path, port: int, answer: str = ANSWER) -> str:
    return f"""{_user_directive()}worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    client_max_body_size 16m;
    client_body_buffer_size 64k;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/csv;
            return 200 '{answer}';
        }}
    }}
}}
"""


@dataclass
class Nginx:
    proc: subprocess.Popen[bytes]
    port: int
    tmp: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def run_nginx(port: int | None = None, answer: str = ANSWER) -> Iterator[Nginx]:
    """nginx in the foreground (``daemon off``) with a generated config in a temp dir; stopped on exit."""
    binary = require_tools("nginx")["nginx"]
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmpdir:
        tmp = Path(tmpdir)
        conf = tmp / "nginx.conf"
        conf.write_text(nginx_conf(tmp, port, answer))
        # -e: the error log before the config is read (the compiled-in default is /var/log/nginx).
        proc = subprocess.Popen([binary, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
                                stdin=subprocess.DEVNULL)
        try:
            wait_for_port(port, proc)
            yield Nginx(proc, port, tmp)
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time. A process started in a session of its own is stopped
    with its whole group: model servers fork workers that outlive their parent otherwise."""
    try:
        group = os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        group = False

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    if proc.poll() is None:
        send(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait()
    if group:  # what the group left behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def probe(url: str, body: bytes, content_type: str = "text/csv") -> tuple[int, bytes]:
    """One POST; (status, body). HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def main() -> int:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else None
    with run_nginx(port) as nginx:
        print(f"nginx upstream on {nginx.url} (temp dir {nginx.tmp}); Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            nginx.proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
