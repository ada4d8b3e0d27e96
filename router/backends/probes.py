"""Can a backend work at all? One cheap check per backend kind, for readiness; never a model call.

* ``http``: a TCP connection to the URL's host and port (refused, unresolvable or silent = cannot work).
* ``sagemaker`` and ``sagemaker-async``: AWS credentials can be found, then DescribeEndpoint (control plane)
  says the endpoint exists and can serve. A DescribeEndpoint the router may not call (no
  ``sagemaker:DescribeEndpoint`` permission) or cannot reach (a VPC with only a runtime endpoint) leaves the
  endpoint unverified, which counts as working: only a definite answer makes a backend unusable.
* ``sagemaker-batch``: AWS credentials can be found.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from router.config import (
    BackendConfig,
    HttpBackendConfig,
    SageMakerAsyncBackendConfig,
    SageMakerBackendConfig,
)

if TYPE_CHECKING:
    from router.backends import Connections

CONNECT_TIMEOUT_S = 3.0
# DescribeEndpoint statuses of an endpoint that answers InvokeEndpoint (Updating keeps serving the old config).
_SERVING = frozenset({"InService", "Updating", "SystemUpdating", "RollingBack", "UpdateRollbackFailed"})
# Errors that say the credentials themselves are refused, as opposed to lacking a permission.
_BAD_CREDENTIALS = frozenset({"UnrecognizedClientException", "InvalidClientTokenId", "ExpiredTokenException",
                              "ExpiredToken", "InvalidSignatureException", "SignatureDoesNotMatch"})


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """``usable`` False: the backend cannot work, ``detail`` says why. ``usable`` True with a ``detail``: it
    could not be fully verified (and counts as working)."""

    usable: bool
    detail: str | None = None


async def probe(cfg: BackendConfig, connections: Connections) -> ProbeResult:
    if isinstance(cfg, HttpBackendConfig):
        return await _probe_http(cfg.url)
    no_credentials = await _probe_credentials()
    if no_credentials is not None:
        return no_credentials
    if isinstance(cfg, SageMakerBackendConfig | SageMakerAsyncBackendConfig):
        return await _probe_endpoint(cfg.endpoint, cfg.region, connections)
    return ProbeResult(True)  # sagemaker-batch: its jobs need the credentials; the model is checked per job


async def _probe_http(url: str) -> ProbeResult:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    where = f"{host}:{port}"
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            _, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return ProbeResult(False, f"connection refused at {where}: nothing listens there")
    except TimeoutError:
        return ProbeResult(False, f"no TCP connection to {where} within {CONNECT_TIMEOUT_S:g}s")
    except OSError as exc:  # unresolvable host (socket.gaierror), unreachable network...
        return ProbeResult(False, f"cannot connect to {where}: {exc.strerror or exc}")
    writer.close()
    with contextlib.suppress(OSError):  # the connection was made: that is all this probe asks
        await writer.wait_closed()
    return ProbeResult(True)


async def _probe_credentials() -> ProbeResult | None:
    """None when botocore's credential chain finds credentials; else why the backend cannot work."""
    from aiobotocore.session import get_session
    from botocore.exceptions import BotoCoreError

    try:
        credentials = await get_session().get_credentials()
    except BotoCoreError as exc:  # e.g. a profile that names a missing source
        return ProbeResult(False, f"AWS credentials cannot be loaded: {type(exc).__name__}")
    if credentials is None:
        return ProbeResult(False, "no AWS credentials found (environment, shared credentials/config files, "
                                  "container or instance role, web identity)")
    return None


async def _probe_endpoint(endpoint: str, region: str | None, connections: Connections) -> ProbeResult:
    from botocore.exceptions import BotoCoreError, ClientError

    from router.backends.sagemaker import default_region

    region = region or default_region()
    try:
        client: Any = await connections.sagemaker().get(region, None, "sagemaker")
        async with asyncio.timeout(CONNECT_TIMEOUT_S * 2):
            described = await client.describe_endpoint(EndpointName=endpoint)
    except ClientError as exc:
        error = (exc.response or {}).get("Error") or {}
        code, message = str(error.get("Code") or ""), str(error.get("Message") or "")
        if code == "ValidationException" and "not find" in message.lower():
            return ProbeResult(False, f"SageMaker endpoint {endpoint!r} does not exist in {region}")
        if code in _BAD_CREDENTIALS:
            return ProbeResult(False, f"AWS refused the credentials ({code})")
        return ProbeResult(True, f"endpoint {endpoint!r} not verified: DescribeEndpoint answered {code}")
    except (BotoCoreError, TimeoutError, OSError) as exc:
        return ProbeResult(True, f"endpoint {endpoint!r} not verified: the SageMaker API cannot be reached "
                                 f"({type(exc).__name__})")
    status = str(described.get("EndpointStatus") or "")
    if status not in _SERVING:
        reason = described.get("FailureReason")
        return ProbeResult(False, f"SageMaker endpoint {endpoint!r} is {status}" + (f": {reason}" if reason else ""))
    return ProbeResult(True)
