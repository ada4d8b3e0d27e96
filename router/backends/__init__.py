"""Backends by kind, and the connections they share for the life of the process."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp

from router.backends.http import HttpBackend
from router.config import BackendConfig, HttpBackendConfig, SageMakerAsyncBackendConfig, SageMakerBackendConfig
from router.types import Backend

if TYPE_CHECKING:  # imported lazily: botocore costs ~30 MB of RSS, only sagemaker backends need it
    from router.backends.sagemaker import SageMakerClients


class Connections:
    """One aiohttp pool and one aiobotocore client per region for every backend of the process."""

    def __init__(self) -> None:
        self._http: aiohttp.ClientSession | None = None
        self._sagemaker: SageMakerClients | None = None

    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            # limit=0: the tracker bounds concurrency per backend, the pool must not queue behind it.
            # auto_decompress=False with no Accept-Encoding of our own: bodies pass through as encoded, and the
            # backend asks for an encoding only when the client did (see HttpBackend.invoke).
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
            self._http = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                               skip_auto_headers=("User-Agent", "Accept-Encoding"))
        return self._http

    def sagemaker(self) -> SageMakerClients:
        if self._sagemaker is None:
            from router.backends.sagemaker import SageMakerClients

            self._sagemaker = SageMakerClients()
        return self._sagemaker

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._sagemaker is not None:
            await self._sagemaker.close()
            self._sagemaker = None


def build_backend(name: str, cfg: BackendConfig, connections: Connections) -> Backend:
    if isinstance(cfg, HttpBackendConfig):
        headers = {k: v.get_secret_value() for k, v in cfg.headers.items()}
        return HttpBackend(name, cfg.url, connections.http, timeout_s=cfg.timeout, headers=headers,
                           variant=cfg.variant)
    if isinstance(cfg, SageMakerBackendConfig):
        from router.backends.sagemaker import SageMakerBackend

        return SageMakerBackend(name, cfg.endpoint, connections.sagemaker(),
                                region=cfg.region, endpoint_url=cfg.endpoint_url, timeout_s=cfg.timeout,
                                variant=cfg.variant)
    if isinstance(cfg, SageMakerAsyncBackendConfig):
        from router.backends.sagemaker_async import CompletionListener, SageMakerAsyncBackend

        clients = connections.sagemaker()
        sns = cfg.notifications
        listener = CompletionListener(name, clients, sns.queue_url, region=sns.region or cfg.region,
                                      endpoint_url=sns.endpoint_url, wait_s=sns.wait) if sns else None
        return SageMakerAsyncBackend(name, cfg.endpoint, clients, input_location=cfg.input_location,
                                     region=cfg.region, endpoint_url=cfg.endpoint_url,
                                     s3_endpoint_url=cfg.s3_endpoint_url, poll_s=cfg.poll, max_poll_s=cfg.max_poll,
                                     timeout_s=cfg.timeout, listener=listener)
    raise TypeError(f"unknown backend config {type(cfg).__name__}")
