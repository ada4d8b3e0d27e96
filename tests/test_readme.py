"""The README's examples are what runs: the Quick start block is the demo's banner, command for command, and every
block marked ``<!-- demo-example -->`` or ``<!-- demo-quickstart -->`` answers, against a live ``inference-router
demo``, what its ``# ...`` comments say."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.demo.examples import EXAMPLES
from router.demo.run import banner
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
MARKERS = ("<!-- demo-quickstart -->", "<!-- demo-example -->")


def blocks(marker: str) -> list[str]:
    return re.findall(re.escape(marker) + r"\n```bash\n(.*?)```", README, re.S)


def parse(block: str) -> list[tuple[str, list[str], list[str]]]:
    """(what the example says, its command lines, and per command the output its comments show) per example."""
    examples: list[tuple[str, list[str], list[str]]] = []
    says: str | None = None
    for chunk in block.strip("\n").split("\n\n"):
        lines = chunk.split("\n")
        says = lines[0].removeprefix("# ") if lines[0].startswith("# ") else ""
        commands: list[str] = []
        outputs: list[str] = []
        for line in lines[1:] if says else lines:
            if line.startswith("#"):
                outputs[-1] += line.removeprefix("#").removeprefix(" ") + "\n"
            elif commands and commands[-1].endswith("\\"):
                commands.append(line)
            else:
                commands.append(line)
                outputs.append("")
        examples.append((says, commands, outputs))
    return examples


def test_the_quick_start_is_what_the_demo_prints() -> None:
    (block,) = blocks("<!-- demo-quickstart -->")
    printed = banner(8080, "demo-admin-token", "demo-team-a-key")
    examples = parse(block)
    assert [says for says, _, _ in examples] == [e.says for e in EXAMPLES]
    shown = "\n\n".join("# " + says + "\n" + "\n".join(commands) for says, commands, _ in examples)
    assert shown in printed


def test_the_readme_says_nothing_boto3_does_not_have() -> None:
    import boto3

    client = boto3.client("sagemaker-runtime", region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    named = set(re.findall(r"smr\.exceptions\.(\w+)", README))
    assert named, "the README names boto3's exceptions"
    for name in named:
        assert hasattr(client.exceptions, name), f"boto3's sagemaker-runtime client has no exceptions.{name}"


def _pattern(expected: str) -> re.Pattern[str]:
    """Expected output as a regex: a line '...' stands for any lines, '...' in a line for any text."""
    parts = []
    for line in expected.rstrip("\n").split("\n"):
        parts.append(r"(?:[^\n]*\n)*?" if line == "..." else re.escape(line).replace(r"\.\.\.", r"[^\n]*?") + r"\n")
    return re.compile("".join(parts) + r"(?:[^\n]*\n)*?", re.S)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    state = tmp_path_factory.mktemp("demo-state")
    env = {**os.environ, "DEMO_RT_PORT": str(free_port()), "DEMO_SLS_PORT": str(free_port()),
           "DEMO_ASYNC_PORT": str(free_port()), "DEMO_STATE": str(state)}
    proc = subprocess.Popen([sys.executable, "-m", "router", "--log-level", "warning", "demo", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, "the demo exited"
                assert time.monotonic() < deadline, "the demo did not start"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert banner(port, "demo-admin-token", "demo-team-a-key", (int(env["DEMO_RT_PORT"]),
                  int(env["DEMO_SLS_PORT"]), int(env["DEMO_ASYNC_PORT"]))) in out  # what it printed


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's examples use curl")
@pytest.mark.parametrize("marker", MARKERS)
def test_the_readmes_demo_examples_answer_what_the_readme_says(marker: str, demo: int, tmp_path: Path) -> None:
    found = [example for block in blocks(marker) for example in parse(block)]
    assert found
    script, expected = [], []
    for _, commands, outputs in found:
        first = 0
        for i, line in enumerate(commands):  # a command ends at a line without a trailing backslash
            if line.endswith("\\"):
                continue
            script.append(f"echo; echo '@@{len(expected)}'")  # on a line of its own, whatever came before
            script += [c.replace("localhost:8080", f"localhost:{demo}") for c in commands[first:i + 1]]
            expected.append(outputs.pop(0) if outputs else "")
            first = i + 1
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)
    answers = [a.removesuffix("\n") for a in re.split(r"^@@\d+\n", done.stdout.replace("\r", ""), flags=re.M)[1:]]
    assert len(answers) == len(expected), done.stderr
    for command, (want, got) in enumerate(zip(expected, answers, strict=True)):
        if want:
            assert _pattern(want).fullmatch(got.rstrip("\n") + "\n"), f"command {command}:\n{got}\n--- wanted:\n{want}"
