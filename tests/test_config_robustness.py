"""Whatever a config file holds, ``check`` and reload answer with errors at FILE:LINE:COL, never a crash.

The regression corpus below is what fuzzing found; the hypothesis tests keep fuzzing (a bounded run here,
``FUZZ_EXAMPLES=5000`` for a longer one by hand)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.cli import main
from router.config import RouterConfig, parse_config
from router.runtime import Runtime
from router.yamlpos import ConfigError, decode_text
from tests.conftest import serve_router, until

ROOT = Path(__file__).resolve().parent.parent
SEEDS = [p.read_text() for p in sorted((ROOT / "policies").glob("*.yaml"))]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) or None
ISSUE = re.compile(r"^[^\n]+:\d+:\d+: [^\n]*: .+", re.S)

GOOD = """
server: {admin_token: admin-secret-token}
backends:
  rt: {kind: http, url: "http://127.0.0.1:9/invocations"}
models:
  fraud: {lanes: {realtime: rt}}
"""

# (what, file bytes, the line and column an error must point at; the rest of the file is checked as well)
CORPUS: list[tuple[str, bytes, tuple[int, int]]] = [
    ("invalid UTF-8", GOOD.encode().replace(b"fraud:", b"fr\xffaud:"), (6, 5)),
    ("a control character", GOOD.encode().replace(b"rt: {", b"rt: \x07{"), (4, 7)),
    ("a NUL byte", b"server: {}\x00\n", (1, 11)),
    ("an unknown tag", GOOD.encode().replace(b"lanes:", b"lanes: !foo"), (6, 18)),
    ("an unknown tag on a scalar", b"server: {listen: !foo x}\n", (1, 18)),
    ("!!int of letters", b"jobs: {workers: !!int abc}\n", (1, 17)),
    ("!!timestamp of month 13", b"jobs: {ttl: !!timestamp 2020-13-45}\n", (1, 13)),
    ("!!float of letters", b"jobs: {ttl: !!float abc}\n", (1, 13)),
    ("an integer of 5,000 digits", b"jobs: {workers: " + b"9" * 5000 + b"}\n", (1, 17)),
    ("deep nesting (lists)", b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", (1, 67)),
    ("deep nesting (mappings)", b"".join(b"  " * i + b"k:\n" for i in range(300)), (65, 129)),
    ("a recursive alias", b"a: &x [*x]\n", (1, 4)),
    ("aliases that expand a billion times",
     b"a: &a [x,x,x,x,x,x,x,x,x]\n" + b"".join(
         f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n".encode() for p, n in zip("abcdefgh", "bcdefghi", strict=True)),
     (1, 10)),
    ("a merge key", b"a: &x {k: 1}\nb: {<<: *x}\n", (2, 5)),
    ("a python tag", b"jobs: !!python/object:os.system {}\n", (1, 7)),
    ("an unpaired surrogate escape", b'server: {listen: "\\ud800"}\n', (1, 18)),
    ("a duration of .nan", GOOD.encode() + b"jobs: {lease: .nan}\n", (7, 15)),
    ("a duration of .inf", GOOD.encode() + b"jobs: {lease: .inf}\n", (7, 15)),
    ("a size of 10^24 bytes", GOOD.encode().replace(b"server: {", b"server: {max_body: 999999999999999GB, "),
     (2, 20)),
    ("a superscript port", GOOD.encode().replace(b"server: {", "server: {listen: '127.0.0.1:8²', ".encode()),
     (2, 18)),
]


def load_bytes(data: bytes, file: str = "router.yaml") -> RouterConfig:
    """What ``load_config`` does with a file's bytes."""
    return parse_config(decode_text(data, file), file, env={"SET": "x" * 20})


@pytest.mark.parametrize(("what", "data", "where"), CORPUS, ids=[c[0] for c in CORPUS])
def test_a_config_that_crashed_the_loader_is_an_error_at_its_position(what: str, data: bytes,
                                                                      where: tuple[int, int]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_bytes(data)
    issues = caught.value.issues
    assert where in [(i.line, i.col) for i in issues], [str(i) for i in issues]
    assert all(ISSUE.match(str(issue)) for issue in issues)


def test_check_lists_the_error_of_a_file_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "router.yaml"
    path.write_bytes(CORPUS[0][1])
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:6:5: (root): not UTF-8")


async def test_reload_of_a_crashing_file_is_400_and_counted_invalid(tmp_path: Path,
                                                                   http: aiohttp.ClientSession) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(GOOD)
    async with serve_router(GOOD, config_path=str(path)) as router:
        registry = router.runtime.metrics.registry
        for _, data, (line, col) in CORPUS[:10]:
            path.write_bytes(data)
            async with http.post(router.url + "/admin/reload",
                                 headers={"Authorization": "Bearer admin-secret-token"}) as r:
                assert r.status == 400
                errors = (await r.json())["errors"]
            assert any(e.startswith(f"{path}:{line}:{col}: ") for e in errors), errors
        assert registry.get_sample_value("router_config_reloads_total", {"result": "invalid"}) == 10
        assert not registry.get_sample_value("router_config_reloads_total", {"result": "failed"})
        async with http.get(router.url + "/admin/policy",
                            headers={"Authorization": "Bearer admin-secret-token"}) as r:
            assert list((await r.json())["models"]) == ["fraud"]  # the old config is still in force


async def test_sighup_with_a_crashing_file_logs_the_rejection(tmp_path: Path,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(GOOD)
    async with serve_router(GOOD, config_path=str(path)) as router:
        path.write_bytes(GOOD.encode().replace(b"rt: {", b"rt: !foo {"))
        os.kill(os.getpid(), signal.SIGHUP)
        registry = router.runtime.metrics.registry
        await until(lambda: registry.get_sample_value("router_config_reloads_total", {"result": "invalid"}) == 1)
        await asyncio.sleep(0)  # the SIGHUP task logs after the reload returned
    err = capfd.readouterr().err
    assert '"event":"sighup_reload_rejected"' in err
    assert "unsupported tag '!foo'" in err
    assert "Traceback" not in err
    assert "never retrieved" not in err


# --- fuzzing --------------------------------------------------------------------------------------------------

NASTY = ["!foo", "!!int abc", "!!timestamp 2020-13-45", "!!float x", "!!binary '@'", "&a", "*a", "*nope",
         "<<: *a", ".nan", "-.inf", "-1", "9" * 5000, "[" * 80, "{" * 80, "\x07", "\x00", "\ud7ff", "'", '"',
         "${SET}", "${UNSET}", "$", "0x1F", "1e999", "~", "? ", "- ", ": ", "\t", "\\", "%YAML 1.1", "---", "...",
         "²", "١٢", "1_000", "\u2028", "\ufeff"]


def _ends_cleanly(data: bytes) -> None:
    """The property: a config or a ConfigError with located issues; a valid one also builds a runtime."""
    try:
        cfg = load_bytes(data)
    except ConfigError as exc:
        issues = exc.issues
    else:
        Runtime(cfg)
        return
    assert issues
    for issue in issues:
        assert ISSUE.match(str(issue)), str(issue)
        assert min(issue.line, issue.col) >= 1  # routing, policies, trackers: what a reload builds, without network


@st.composite
def mutated_configs(draw: st.DrawFn) -> bytes:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "nasty", "dup_line", "indent"]))
        if kind == "insert":
            text = text[:at] + draw(st.text(max_size=8)) + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
        elif kind == "nasty":
            text = text[:at] + draw(st.sampled_from(NASTY)) + text[at:]
        else:
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i] if kind == "dup_line" else "  " + lines[i])
            text = "\n".join(lines)
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):  # and a byte-level flip now and then
        at = draw(st.integers(0, max(0, len(data) - 1)))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
    return data


FUZZ = settings(max_examples=EXAMPLES or 120, deadline=None, derandomize=EXAMPLES is None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(mutated_configs())
def test_fuzz_mutated_shipped_configs_never_crash_the_loader(data: bytes) -> None:
    _ends_cleanly(data)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_raw_bytes_never_crash_the_loader(data: bytes) -> None:
    _ends_cleanly(data)
