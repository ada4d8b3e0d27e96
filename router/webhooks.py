"""Job completion callbacks: a signed POST of the job's status JSON to a URL the config allows.

The signature is ``X-Router-Signature: sha256=<hex>``, an HMAC-SHA256 with the configured secret of
``"<X-Router-Timestamp>.<body>"``; receivers check it with :func:`verify` and reject old timestamps.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog

log = structlog.get_logger("router.webhooks")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class CallbackPolicy:
    """Which callback URLs may be called: exact URLs or prefixes ending in ``*``; nothing else, ever."""

    def __init__(self, allow: Sequence[str]) -> None:
        self._exact = frozenset(p for p in allow if not p.endswith("*"))
        self._prefixes = tuple(p[:-1] for p in allow if p.endswith("*"))

    def allows(self, url: str) -> bool:
        try:
            parts = urlsplit(url)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            return False
        return url in self._exact or any(url.startswith(p) for p in self._prefixes)


class WebhookNotifier:
    """Delivers callbacks; retries network errors, timeouts, 429 and 5xx with backoff; never raises."""

    def __init__(self, session: Callable[[], aiohttp.ClientSession], secret: str, *, attempts: int = 3,
                 backoff_s: float = 0.5, timeout_s: float = 5.0) -> None:
        self._session = session
        self._secret = secret
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def notify(self, url: str, payload: Mapping[str, Any]) -> bool:
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        for attempt in range(1, self._attempts + 1):
            timestamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", "X-Router-Timestamp": timestamp,
                       "X-Router-Signature": sign(self._secret, timestamp, body)}
            status: int | None = None
            try:
                async with self._session().post(url, data=body, headers=headers, timeout=self._timeout) as resp:
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("webhook_failed", attempt=attempt, error=type(exc).__name__)
            if status is not None:
                if 200 <= status < 300:
                    return True
                log.warning("webhook_refused", attempt=attempt, status=status)
                if status != 429 and status < 500:
                    return False  # the receiver said no: asking again will not change that
            if attempt < self._attempts:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
        return False
