"""Extra paths: protocol presets, methods, control paths, and the config errors about them (FILE:LINE:COL)."""

from __future__ import annotations

import pytest

from router.config import parse_config
from router.paths import PathTable
from router.yamlpos import ConfigError

BASE = """\
backends:
  rt: {kind: http, url: "http://127.0.0.1:9/invocations"}
  sm: {kind: sagemaker, endpoint: e}
models:
"""


def table(models: str) -> PathTable:
    cfg = parse_config(BASE + models, "cfg.yaml", {})
    return PathTable(r for name, m in cfg.models.items() for r in m.path_rules(name))


def issues_of(models: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + models, "cfg.yaml", {})
    return [str(i) for i in info.value.issues]


def rule(t: PathTable, path: str, method: str) -> tuple[str, bool] | None:
    rules = t.match(path)
    found = rules.get(method) if rules is not None else None
    return None if found is None else (found.model, found.control)


def test_the_kserve_v2_preset_declares_health_metadata_readiness_and_infer_only() -> None:
    t = table("  lr:\n    lanes: {realtime: rt}\n    protocol: kserve-v2\n")
    assert rule(t, "/v2/models/lr/infer", "POST") == ("lr", False)
    assert rule(t, "/v2/models/lr/versions/3/infer", "POST") == ("lr", False)
    for control in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/lr", "/v2/models/lr/ready",
                    "/v2/models/lr/versions/3/ready"):
        assert rule(t, control, "GET") == ("lr", True), control
    assert rule(t, "/v2/models/lr/infer", "GET") is None
    assert t.match("/v2/models/other/infer") is None
    assert t.match("/v2/repository/models/lr/unload") is None
    assert t.match("/v2/models/lr/versions/3/extra/infer") is None  # a placeholder is one segment


def test_the_openai_torchserve_and_sagemaker_presets() -> None:
    t = table("  chat:\n    lanes: {realtime: rt}\n    protocol: openai\n"
              "  ts:\n    lanes: {realtime: rt}\n    protocol: torchserve\n"
              "  box:\n    lanes: {realtime: rt}\n    protocol: sagemaker\n")
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        assert rule(t, path, "POST") == ("chat", False)
    assert rule(t, "/v1/models", "GET") == ("chat", True)
    assert rule(t, "/predictions/ts", "POST") == ("ts", False)
    assert rule(t, "/predictions/ts/2.0", "POST") == ("ts", False)
    assert rule(t, "/ping", "GET") == ("ts", True)  # shared by torchserve and sagemaker: the first model keeps it
    assert rule(t, "/invocations", "POST") == ("box", False)


def test_two_models_with_the_v2_preset_share_the_server_paths() -> None:
    t = table("  a:\n    lanes: {realtime: rt}\n    protocol: kserve-v2\n"
              "  b:\n    lanes: {realtime: rt}\n    protocol: kserve-v2\n")
    assert rule(t, "/v2/health/ready", "GET") == ("a", True)
    assert rule(t, "/v2/models/b/infer", "POST") == ("b", False)


def test_declared_paths_take_methods_and_replace_a_presets_same_path() -> None:
    t = table("  lr:\n    lanes: {realtime: rt}\n    protocol: kserve-v2\n    paths:\n"
              "      - {path: /v2/models/lr/infer, methods: [POST, PUT]}\n"
              "      - {path: /v2/repository/index, methods: [POST], control: true}\n"
              "      - /legacy/lr/*\n")
    assert rule(t, "/v2/models/lr/infer", "PUT") == ("lr", False)
    assert rule(t, "/v2/repository/index", "POST") == ("lr", True)  # declared exactly: forwarded
    assert rule(t, "/legacy/lr/a/b", "POST") == ("lr", False)
    assert rule(t, "/legacy/lr/a/b", "GET") is None


def test_a_prefix_never_covers_an_admin_api() -> None:
    t = table('  lr:\n    lanes: {realtime: rt}\n    paths: ["/v2*", "/v1/*"]\n')
    assert rule(t, "/v2/models/lr/infer", "POST") == ("lr", False)
    assert t.match("/v2/repository/models/lr/unload") is None
    assert t.match("/v2/systemsharedmemory/register") is None
    assert t.match("/v1/load_lora_adapter") is None


def test_path_errors_are_reported_at_their_position() -> None:
    assert issues_of("  a:\n    lanes: {realtime: rt}\n    paths:\n"
                     "      - /jobs/x\n"
                     "      - {path: \"/x/{bad-name}\"}\n"
                     "      - {path: /h, control: true, methods: [FETCH]}\n"
                     "      - /a*b\n"
                     "  b:\n    lanes: {realtime: sm}\n    protocol: kserve-v2\n"
                     "    paths: [/jobs*]\n") == [
        "cfg.yaml:8:9: models.a.paths.0: the router's own paths (/endpoints/, /healthz, /readyz, /metrics, "
        "/admin, /jobs, /ui) cannot be a model's",
        "cfg.yaml:9:16: models.a.paths.1.path: a placeholder is a whole segment like {version}",
        "cfg.yaml:10:45: models.a.paths.2.methods.0: Input should be 'GET', 'HEAD', 'POST', 'PUT', 'PATCH', "
        "'DELETE' or 'OPTIONS'",
        "cfg.yaml:11:9: models.a.paths.3: a path starts with '/', may end with '*', and has no '?' or '#'",
        "cfg.yaml:14:15: models.b.protocol: kserve-v2: control paths are forwarded to the model's realtime (else "
        "serverless) backend, which must be of kind 'http'",
        "cfg.yaml:15:13: models.b.paths.0: the router's own paths (/endpoints/, /healthz, /readyz, /metrics, "
        "/admin, /jobs, /ui) cannot be a model's",
    ]


def test_an_openai_path_belongs_to_one_model() -> None:
    assert issues_of("  a:\n    lanes: {realtime: rt}\n    protocol: openai\n"
                     "  b:\n    lanes: {realtime: rt}\n    protocol: openai\n") == [
        "cfg.yaml:10:15: models.b.protocol: openai's path /v1/chat/completions already belongs to model 'a'",
        "cfg.yaml:10:15: models.b.protocol: openai's path /v1/completions already belongs to model 'a'",
        "cfg.yaml:10:15: models.b.protocol: openai's path /v1/embeddings already belongs to model 'a'",
    ]
