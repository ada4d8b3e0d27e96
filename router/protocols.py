"""Model-server protocols the router speaks on a model's extra paths: what each one's URLs are, with their
methods, and how the router's own errors look to its clients.

``protocol: kserve-v2`` on a model expands to the paths a stock KServe V2 client calls (health, metadata,
readiness, infer), so nobody needs a prefix like ``/v2*`` that would also open the server's admin API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import msgspec

ProtocolName = Literal["kserve-v2", "openai", "torchserve", "sagemaker"]
PROTOCOLS: tuple[str, ...] = ("kserve-v2", "openai", "torchserve", "sagemaker")
HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
INFERENCE_METHODS = frozenset({"POST"})
CONTROL_METHODS = frozenset({"GET", "HEAD"})

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class PathRule:
    """One URL pattern of a model: an exact path, a path with ``{name}`` segments (one segment each), or a
    prefix ending in ``*``; the methods it takes; and whether it is a control endpoint (health, readiness,
    metadata: forwarded to the model's real-time backend without routing, counting or taking a slot)."""

    model: str
    pattern: str
    methods: frozenset[str]
    control: bool = False
    protocol: str | None = None  # whose error shape the router's own answers on this path take
    # A preset's server-level path (``/v2/health/ready``, ``/ping``, ``/v1/models``): when several models use
    # the preset, the first model in the config keeps it instead of that being a conflict.
    shared: bool = False


def _rules(model: str, protocol: str, inference: list[str], control: list[str],
           shared_control: list[str]) -> list[PathRule]:
    out = [PathRule(model, p, INFERENCE_METHODS, protocol=protocol) for p in inference]
    out += [PathRule(model, p, CONTROL_METHODS, control=True, protocol=protocol) for p in control]
    out += [PathRule(model, p, CONTROL_METHODS, control=True, protocol=protocol, shared=True) for p in shared_control]
    return out


def preset_rules(protocol: str, model: str) -> list[PathRule]:
    """The paths and methods of ``protocol`` for ``model`` (the model's name in the router's config)."""
    if protocol == "kserve-v2":
        base = f"/v2/models/{model}"
        return _rules(model, protocol,
                      inference=[f"{base}/infer", f"{base}/versions/{{version}}/infer"],
                      control=[base, f"{base}/ready", f"{base}/versions/{{version}}",
                               f"{base}/versions/{{version}}/ready"],
                      shared_control=["/v2", "/v2/health/live", "/v2/health/ready"])
    if protocol == "openai":
        # OpenAI names the model in the body: one model of the config serves these URLs.
        return _rules(model, protocol, inference=["/v1/chat/completions", "/v1/completions", "/v1/embeddings"],
                      control=[], shared_control=["/v1/models", "/v1/models/{model}"])
    if protocol == "torchserve":
        return _rules(model, protocol,
                      inference=[f"/predictions/{model}", f"/predictions/{model}/{{version}}",
                                 f"/explanations/{model}", f"/explanations/{model}/{{version}}"],
                      control=[], shared_control=["/ping"])
    if protocol == "sagemaker":  # the SageMaker container contract, for clients of a model container
        return _rules(model, protocol, inference=["/invocations"], control=[], shared_control=["/ping"])
    raise ValueError(f"unknown protocol {protocol!r}")


def error_body(protocol: str | None, status: int, error_type: str, message: str, request_id: str) -> bytes | None:
    """The router's own error (shed, saturated, too large...) in the shape clients of ``protocol`` read, or None
    for SageMaker's shape (the default, and what SageMaker clients on /endpoints/ need)."""
    if protocol == "kserve-v2":
        return _encode({"error": message})
    if protocol == "openai":
        return _encode({"error": {"message": message, "type": error_type, "param": None, "code": None}})
    if protocol == "torchserve":
        return _encode({"code": status, "type": error_type, "message": message})
    return None


# The router's own URLs: no model path may take them (the data plane looks at model paths first).
ROUTER_PATHS = ("/endpoints/", "/healthz", "/readyz", "/metrics", "/admin", "/jobs", "/ui")
_PLACEHOLDER = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")


def pattern_problem(pattern: str) -> str | None:
    """What is wrong with a path pattern, or None."""
    if not pattern.startswith("/") or "*" in pattern[:-1] or "?" in pattern or "#" in pattern:
        return "a path starts with '/', may end with '*', and has no '?' or '#'"
    prefix = pattern.endswith("*")
    body = pattern[:-1] if prefix else pattern
    for segment in body.split("/"):
        if segment in (".", ".."):
            return "'.' and '..' segments are not allowed"
        if ("{" in segment or "}" in segment) and not _PLACEHOLDER.match(segment):
            return "a placeholder is a whole segment like {version}"
    for own in ROUTER_PATHS:
        if body == own.rstrip("/") or body.startswith(own.rstrip("/") + "/") or (prefix and own.startswith(body)):
            return f"the router's own paths ({', '.join(ROUTER_PATHS)}) cannot be a model's"
    return None
