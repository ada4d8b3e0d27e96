"""The OpenAPI 3.0 document of the router's HTTP API, served at ``GET /openapi.json``.

Written by hand: the data plane is plain ASGI, outside any framework's route table. Every documented path is
checked against the routes the app really serves (tests/test_openapi.py), and schemathesis fuzzes the router
from this document, so a status code, header or body shape that drifts from it fails the tests. The paths
models declare (and their protocols' presets) are added as they are in force (prefix paths, ``/x/*``, cannot
be); what their model servers answer passes through unchanged, so those list a default answer.
"""

from __future__ import annotations

import re
from typing import Any

from router.config import RouterConfig
from router.storage.base import JobStatus
from router.storage.listing import MAX_LIMIT

_JSON = "application/json"
_REF = "#/components/schemas/"


def _json(schema: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {_JSON: {"schema": {"$ref": _REF + schema}}}}
    if headers:
        out["headers"] = headers
    return out


_ERROR_TYPE = {"x-amzn-ErrorType": {"description": "SageMaker's error type (SDKs raise it as an exception)",
                                    "schema": {"type": "string"}}}
_ROUTER_HEADERS = {name: {"description": text, "schema": {"type": "string"}} for name, text in (
    ("X-Request-Id", "the request's id (kept from the request if valid, else generated)"),
    ("X-Router-Lane", "the lane that served the request"),
    ("X-Router-Backend", "the backend that served it"),
    ("X-Router-Reason", "the deciding policy's reason code"))}


def _error(description: str) -> dict[str, Any]:
    return _json("Error", description, {**_ERROR_TYPE, **_ROUTER_HEADERS})


def _header(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


_INVOCATION_HEADERS = [
    _header("X-Amzn-SageMaker-Custom-Attributes", "passed to the model", {"type": "string", "maxLength": 1024}),
    _header("X-Amzn-SageMaker-Target-Variant", "passed to SageMaker"),
    _header("X-Amzn-SageMaker-Inference-Id", "passed to the model", {"type": "string", "maxLength": 64}),
    _header("X-Urgency", "urgency level (names from the config); clamped to the caller's maximum"),
    _header("X-Deadline-Ms", "the client's remaining budget in milliseconds",
            {"type": "integer", "minimum": 1, "maximum": 86_400_000}),
    _header("Prefer", "RFC 7240: respond-async allows a 202 and a job; wait=N waits up to N s for its result"),
    _header("X-Api-Key", "identifies the caller (403 for an unknown key)"),
    _header("X-Request-Id", "kept if it is 1-64 of [A-Za-z0-9._:-]"),
    _header("traceparent", "W3C trace context"),
]
_BODY = {"required": False, "content": {
    "text/csv": {"schema": {"type": "string"}},
    _JSON: {"schema": {}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}


def _invocation(summary: str) -> dict[str, Any]:
    return {
        "summary": summary, "tags": ["data plane"], "parameters": _INVOCATION_HEADERS, "requestBody": _BODY,
        "responses": {
            "200": {"description": "the model's answer, with its content type",
                    "headers": {**_ROUTER_HEADERS, "X-Amzn-Invoked-Production-Variant": {
                        "description": "the backend's variant", "schema": {"type": "string"}}},
                    "content": {"*/*": {"schema": {}}}},
            "202": _json("JobAccepted", "the request became a job (only when the client allowed it)",
                         {**_ROUTER_HEADERS, "Location": {"description": "/jobs/{id}", "schema": {"type": "string"}}}),
            "400": _error("a malformed header (named in the message), or a record that does not parse"),
            "403": _error("an unknown API key, or a SigV4 signature that does not match"),
            "404": _error("no model of that name"),
            "405": _error("invocations are POSTs"),
            "413": _error("the body exceeds the model's largest lane limit"),
            "415": _error("batch records cannot be read from that content type"),
            "424": _error("the model rejected the input or failed (ModelError, with OriginalStatusCode)"),
            "429": _error("shed by a policy, or every backend throttled (Retry-After)"),
            "503": _error("every backend full or broken, a deadline no lane can meet, or storage failing"),
            "504": _error("the backend did not answer in time"),
        },
    }


def _extra_path(model: str, control: bool, with_body: bool) -> dict[str, Any]:
    """A path a model declares (or its protocol's preset): forwarded as it came, answered as its server answers."""
    what = "control endpoint (health, readiness, metadata)" if control else "inference path"
    summary = f"Model {model}'s {what}, forwarded as it came"
    operation: dict[str, Any] = _invocation(summary) if with_body else {
        "summary": summary, "tags": ["data plane"], "responses": {}}
    # the model server's own answers (its errors too) pass through unchanged: any status it uses
    operation["responses"] = {**operation["responses"], "default": {
        "description": "the model server's answer, as it gave it", "content": {"*/*": {"schema": {}}}}}
    return operation


def _job_id() -> dict[str, Any]:
    return {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _litestar(description: str) -> dict[str, Any]:
    return _json("Error", description, _ERROR_TYPE)


def _components() -> dict[str, Any]:
    nullable_object = {"type": "object", "nullable": True, "additionalProperties": True}
    return {
        "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer",
                                           "description": "server.admin_token"}},
        "schemas": {
            "Error": {"type": "object", "required": ["message"], "additionalProperties": True, "properties": {
                "message": {"type": "string"}, "request_id": {"type": "string"},
                "OriginalStatusCode": {"type": "integer"}, "OriginalMessage": {"type": "string"},
                "LogStreamArn": {"type": "string"}}},
            "JobAccepted": {"type": "object", "required": ["job_id", "lane", "status_url"], "properties": {
                "job_id": {"type": "string"}, "lane": {"type": "string", "enum": ["async", "batch"]},
                "status_url": {"type": "string"}, "status": {"type": "string"}}},
            "AsyncAccepted": {"type": "object", "required": ["InferenceId"], "properties": {
                "InferenceId": {"type": "string"}, "job_id": {"type": "string"}, "lane": {"type": "string"},
                "status_url": {"type": "string"}}},
            "Job": {"type": "object", "required": ["job_id", "status", "lane", "model", "created_at", "updated_at",
                                                    "attempts", "error"], "properties": {
                "job_id": {"type": "string"}, "status": {"type": "string", "enum": [s.value for s in JobStatus]},
                "lane": {"type": "string"}, "model": {"type": "string"}, "created_at": {"type": "number"},
                "updated_at": {"type": "number"}, "attempts": {"type": "integer", "minimum": 0},
                "error": nullable_object, "status_url": {"type": "string"},
                "records": {"type": "object", "properties": {"total": {"type": "integer"},
                                                             "done": {"type": "integer"},
                                                             "failed": {"type": "integer"}}}}},
            "Readiness": {"type": "object", "required": ["status", "draining"], "properties": {
                "status": {"type": "string", "enum": ["ready", "not_ready"]}, "draining": {"type": "boolean"},
                "models": {"type": "array", "items": {"type": "string"}},
                "backends_missing": {"type": "array", "items": {"type": "string"}},
                "job_lanes": {"type": "object", "additionalProperties": {"type": "object"}}}},
            "ExplainRequest": {"type": "object", "required": ["model"], "additionalProperties": False, "properties": {
                "model": {"type": "string"}, "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "bytes": {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]},
                "state": {"type": "object", "additionalProperties": {"$ref": _REF + "BackendStateOverride"}}}},
            "BackendStateOverride": {"type": "object", "additionalProperties": False, "properties": {
                "saturation": {"type": "number", "minimum": 0, "maximum": 1}, "cold": {"type": "boolean"},
                "breaker": {"type": "string", "enum": ["closed", "open", "half_open"]},
                "queue_depth": {"type": "integer", "minimum": 0, "maximum": 1000000},
                "latency": {"oneOf": [{"type": "number", "minimum": 0}, {"type": "string"}]}}},
            "Explained": {"type": "object", "required": ["model", "lane", "reason", "policy"], "properties": {
                "model": {"type": "string"}, "lane": {"type": "string"},
                "backend": {"type": "string", "nullable": True},
                "fallback": {"type": "array", "items": {"type": "object"}}, "reason": {"type": "string"},
                "policy": {"type": "string"}, "request": {"type": "object"},
                "policies": {"type": "array", "items": {"type": "object"}},
                "answer": {"type": "object", "properties": {"status": {"type": "integer"},
                                                            "why": {"type": "string"}}}}},
            "Reloaded": {"type": "object", "required": ["status"], "properties": {
                "status": {"type": "string", "enum": ["reloaded", "rejected"]},
                "models": {"type": "array", "items": {"type": "string"}},
                "errors": {"type": "array", "items": {"type": "string"}}}},
        },
    }


def openapi_document(cfg: RouterConfig) -> dict[str, Any]:
    """The API of a router running ``cfg``."""
    admin_errors = {"401": _litestar("no or a wrong admin token"),
                    "403": _litestar("the admin API is off: server.admin_token is not set")}
    paths: dict[str, Any] = {
        "/endpoints/{EndpointName}/invocations": {
            "parameters": [{"name": "EndpointName", "in": "path", "required": True, "schema": {"type": "string"}}],
            "post": _invocation("InvokeEndpoint: the model's answer, or a 202 and a job")},
        "/endpoints/{EndpointName}/async-invocations": {
            "parameters": [{"name": "EndpointName", "in": "path", "required": True, "schema": {"type": "string"}}],
            "post": {
                "summary": "InvokeEndpointAsync: the payload inline or at an InputLocation, answered 202",
                "tags": ["data plane"], "requestBody": _BODY,
                "parameters": [*_INVOCATION_HEADERS,
                               _header("X-Amzn-SageMaker-InputLocation", "s3:// URI of the payload (aws state)"),
                               _header("X-Amzn-SageMaker-Content-Type", "the payload's content type"),
                               _header("X-Amzn-SageMaker-Accept", "the wanted content type of the result")],
                "responses": {
                    "202": _json("AsyncAccepted", "accepted", {
                        "X-Amzn-SageMaker-OutputLocation": {"description": "where the result will be",
                                                            "schema": {"type": "string"}},
                        "X-Amzn-SageMaker-FailureLocation": {"description": "where an error will be",
                                                             "schema": {"type": "string"}}}),
                    **{code: _error(text) for code, text in (
                        ("400", "no async lane, a bad header or InputLocation"), ("403", "an unknown caller"),
                        ("404", "no model of that name"), ("405", "a POST is needed"),
                        ("413", "the payload exceeds the async lane's limit"),
                        ("503", "storage failing or the async lane not running"))}}}},
        "/jobs": {"get": {
            "summary": "The caller's jobs, newest first (an API key or SigV4 caller; not anonymous)",
            "tags": ["jobs"],
            "parameters": [
                {"name": "status", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": [s.value for s in JobStatus]}},
                {"name": "model", "in": "query", "required": False, "schema": {"type": "string"}},
                {"name": "lane", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": ["async", "batch"]}},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}},
                {"name": "next", "in": "query", "required": False, "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "a page of jobs", "content": {_JSON: {"schema": {
                    "type": "object", "required": ["jobs", "next"], "properties": {
                        "jobs": {"type": "array", "items": {"$ref": _REF + "Job"}},
                        "next": {"type": "string", "nullable": True}}}}}},
                "400": _litestar("a bad filter, limit or page token"),
                "403": _litestar("anonymous, or an unknown caller"),
                "503": _litestar("storage unavailable")}}},
        "/jobs/{job_id}": {
            "parameters": [_job_id()],
            "get": {"summary": "A job's status", "tags": ["jobs"], "responses": {
                "200": _json("Job", "the job"), "403": _litestar("an unknown caller"),
                "404": _litestar("no such job (or another tenant's)"), "503": _litestar("storage unavailable")}},
            "delete": {"summary": "Cancel a queued job", "tags": ["jobs"], "responses": {
                "200": _json("Job", "cancelled"), "409": _json("Job", "it started already"),
                "403": _litestar("an unknown caller"), "404": _litestar("no such job"),
                "503": _litestar("storage unavailable")}}},
        "/jobs/{job_id}/result": {
            "parameters": [_job_id()],
            "get": {"summary": "A job's result", "tags": ["jobs"], "responses": {
                "200": {"description": "the model's answer", "content": {"*/*": {"schema": {}}}},
                "202": _json("Job", "still pending (Retry-After)"),
                "410": _litestar("expired: the error, with the job's fields"),
                "424": _litestar("failed: the job's error (its type in x-amzn-ErrorType), with the job's fields"),
                "403": _litestar("an unknown caller"),
                "404": _litestar("no such job"), "503": _litestar("storage unavailable")}}},
        "/jobs/{job_id}/error": {
            "parameters": [_job_id()],
            "get": {"summary": "A failed job's error (FailureLocation)", "tags": ["jobs"], "responses": {
                "200": _json("Job", "the job and its error"), "403": _litestar("an unknown caller"),
                "404": _litestar("no such job, or not failed"), "503": _litestar("storage unavailable")}}},
        "/healthz": {"get": {"summary": "The process is alive", "tags": ["operations"], "responses": {
            "200": {"description": "alive", "content": {_JSON: {"schema": {"type": "object"}}}}}}},
        "/readyz": {"get": {"summary": "Ready to serve", "tags": ["operations"], "responses": {
            "200": _json("Readiness", "ready"),
            "503": _json("Readiness", "starting, draining, a backend missing, or a job lane stalled")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "tags": ["operations"], "responses": {
            "200": {"description": "text exposition format", "content": {"text/plain": {"schema": {
                "type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "tags": ["operations"], "responses": {
            "200": {"description": "OpenAPI 3.0", "content": {_JSON: {"schema": {"type": "object"}}}}}}},
        "/admin/policy": {"get": {"summary": "The config in force, secrets as **********", "tags": ["admin"],
                                  "security": [{"adminToken": []}], "responses": {
            "200": {"description": "the config", "content": {_JSON: {"schema": {"type": "object"}}}},
            **admin_errors}}},
        "/admin/explain": {"post": {"summary": "The decision for a described request; no backend is called",
                                    "tags": ["admin"], "security": [{"adminToken": []}],
                                    "requestBody": {"required": True, "content": {_JSON: {"schema": {
                                        "$ref": _REF + "ExplainRequest"}}}},
                                    "responses": {"200": _json("Explained", "the decision"),
                                                  "400": _litestar("an unknown model, a bad header or body"),
                                                  **admin_errors}}},
        "/ui": {"get": {"summary": "The live status page (it asks for the admin token)", "tags": ["operations"],
                        "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {
                            "type": "string"}}}}}}},
        "/admin/status": {"get": {"summary": "What the status page shows: backends, lane split, jobs",
                                  "tags": ["admin"], "security": [{"adminToken": []}], "responses": {
            "200": {"description": "the status", "content": {_JSON: {"schema": {"type": "object"}}}},
            **admin_errors}}},
        "/admin/decisions": {"get": {
            "summary": "The last requests this process answered, newest first", "tags": ["admin"],
            "security": [{"adminToken": []}],
            "parameters": [{"name": "request_id", "in": "query", "required": False, "schema": {"type": "string"}},
                           {"name": "model", "in": "query", "required": False, "schema": {"type": "string"}},
                           {"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
            "responses": {"200": {"description": "decisions", "content": {_JSON: {"schema": {"type": "object"}}}},
                          "400": _litestar("a bad limit"), **admin_errors}}},
        "/admin/jobs": {"get": {
            "summary": "Every tenant's newest jobs", "tags": ["admin"], "security": [{"adminToken": []}],
            "parameters": [{"name": "status", "in": "query", "required": False,
                            "schema": {"type": "string", "enum": [s.value for s in JobStatus]}},
                           {"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100}}],
            "responses": {"200": {"description": "jobs", "content": {_JSON: {"schema": {"type": "object"}}}},
                          "400": _litestar("a bad filter or limit"), "503": _litestar("storage unavailable"),
                          **admin_errors}}},
        "/admin/jobs/{job_id}/result": {
            "parameters": [_job_id()],
            "get": {"summary": "A job's result whatever its tenant", "tags": ["admin"],
                    "security": [{"adminToken": []}], "responses": {
                "200": {"description": "the result, or the job while it has none",
                        "content": {"*/*": {"schema": {}}}},
                "404": _litestar("no such job"), "503": _litestar("storage unavailable"), **admin_errors}}},
        "/admin/reload": {"post": {"summary": "Reload the config file; on any error keep the old config",
                                   "tags": ["admin"], "security": [{"adminToken": []}],
                                   "responses": {"200": _json("Reloaded", "reloaded"),
                                                 "400": _json("Reloaded", "rejected: every error as FILE:LINE:COL"),
                                                 **admin_errors}}},
    }
    for name, model in cfg.models.items():
        for rule in model.path_rules(name):
            if rule.pattern.endswith("*") or rule.pattern in paths:  # a prefix; a preset's path another model has
                continue
            item: dict[str, Any] = {}
            params = re.findall(r"\{(\w+)\}", rule.pattern)
            if params:
                item["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                                      for p in params]
            for method in sorted(rule.methods - {"HEAD"}):
                item[method.lower()] = _extra_path(name, rule.control, method == "POST")
            paths[rule.pattern] = item
    return {
        "openapi": "3.0.3",
        "info": {"title": "inference-router", "version": "1",
                 "description": "SageMaker Runtime compatible data plane, jobs, operations and admin API."},
        "paths": paths,
        "components": _components(),
    }
