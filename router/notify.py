"""Completion webhooks: which callback URLs a job may name, and signed, retried delivery to them.

A receiver checks a delivery with :func:`verify`: the signature is ``sha256=<hex>``, the HMAC-SHA256
with the shared secret of ``f"{timestamp}.{body}"``, where ``timestamp`` is the ``X-Router-Timestamp``
header (unix seconds) and ``body`` the raw request body, exactly as received.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import aiohttp
import structlog
import yarl

from router.numbers import parse_uint

if TYPE_CHECKING:
    from router.config import WebhookConfig

log = structlog.get_logger("router.notify")

SIGNATURE_PREFIX = "sha256="
_SCHEMES = frozenset({"http", "https"})


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Router-Signature`` value for a body sent at ``timestamp``: ``sha256=<hex>``."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("utf-8") + b"." + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *,
           max_age_s: float | None = None, now: float | None = None) -> bool:
    """True when ``signature`` is :func:`sign`'s for this body and timestamp (constant-time compare).

    With ``max_age_s``, also False when the timestamp is further than that from ``now`` (default: the
    current time), which stops a captured delivery from being replayed later.
    """
    expected = sign(secret, timestamp, body).encode("utf-8")
    # bytes on both sides: compare_digest raises on non-ASCII str, and a bad header must just fail
    if not hmac.compare_digest(expected, signature.encode("utf-8", "replace")):
        return False
    if max_age_s is None:
        return True
    sent = parse_uint(timestamp)
    if sent is None:
        return False
    current = time.time() if now is None else now
    return abs(current - sent) <= max_age_s


def _pattern_matches(pattern: str, url: str) -> bool:
    if pattern.endswith("*"):
        return url.startswith(pattern[:-1])
    return url == pattern


DEFAULT_CALLBACK_HEADER = "X-Callback-Url"  # webhooks.header's default


def requested_callback(headers: Mapping[str, str], hooks: WebhookConfig | None,
                       policy: CallbackPolicy | None) -> str | None:
    """The callback URL a request names (``headers`` with lower-case names), if any. ValueError, with what to
    tell the client, when it may not be used: not on the allow-list, or no ``webhooks`` section, so nothing
    would ever call it."""
    header = hooks.header if hooks else DEFAULT_CALLBACK_HEADER
    url = headers.get(header.lower())
    if url is None:
        return None
    if hooks is None or policy is None:
        raise ValueError(f"{header} was sent, but this router has no webhooks section: no callback would ever "
                         "be made; drop the header or configure webhooks")
    if not policy.allows(url):
        raise ValueError(f"{header} is not an allowed callback URL (webhooks.allow)")
    return url


class CallbackPolicy:
    """The allow-list of callback URLs. Patterns are exact URLs, or a prefix ending in ``*`` (any suffix).

    End prefixes with ``/`` before the ``*`` (``https://hooks.example.com/*``): ``https://hooks.example.com*``
    would also allow ``https://hooks.example.com.attacker.net/``. An empty allow-list allows nothing.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = list(patterns)
        for pattern in patterns:
            if "*" in pattern[:-1]:
                raise ValueError(f"callback pattern {pattern!r}: '*' is only allowed as the last character")
        self.patterns: tuple[str, ...] = tuple(patterns)

    def allows(self, url: str) -> bool:
        """True only for an http(s) URL with a host, no userinfo, that matches a pattern."""
        if not self.patterns or not url or any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in url):
            return False
        try:
            parts = urlsplit(url)
            # aiohttp sends the URL as yarl parses it, which resolves "..": match that form too
            sent = yarl.URL(url)
        except ValueError:
            return False
        if parts.scheme not in _SCHEMES or sent.scheme not in _SCHEMES:
            return False
        if not parts.hostname or not sent.host:
            return False
        if "@" in parts.netloc or sent.user is not None or sent.password is not None:
            return False
        if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
            return False
        canonical = str(sent)
        return any(_pattern_matches(p, url) and _pattern_matches(p, canonical) for p in self.patterns)


class WebhookNotifier:
    """POSTs signed JSON to callback URLs, retrying transient failures; ``notify`` never raises.

    ``session`` is called for each attempt so a shared, lazily (re)created pool can be passed
    (``Connections.http``). The URL is not checked here: check it with a :class:`CallbackPolicy`.
    """

    def __init__(self, session: Callable[[], aiohttp.ClientSession], secret: str, *, attempts: int = 3,
                 backoff_s: float = 0.5, timeout_s: float = 5.0) -> None:
        if not secret:
            raise ValueError("webhook secret must not be empty")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._session = session
        self._secret = secret
        self._attempts = attempts
        self._backoff_s = backoff_s
        # one ClientTimeout per notifier: it bounds each attempt (connect, send, answer), not the whole notify
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def notify(self, url: str, payload: Mapping[str, Any]) -> bool:
        """Deliver ``payload`` to ``url``: True once a 2xx answer arrives, False when it never does."""
        target = _log_target(url)
        try:
            body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
        except (TypeError, ValueError) as exc:
            log.error("webhook_payload_invalid", target=target, error=type(exc).__name__)
            return False
        for attempt in range(1, self._attempts + 1):
            retry = await self._attempt(url, body, target, attempt)
            if retry is None:
                return True
            if not retry or attempt == self._attempts:
                break
            await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
        log.warning("webhook_not_delivered", target=target, attempts=attempt)
        return False

    async def _attempt(self, url: str, body: bytes, target: str, attempt: int) -> bool | None:
        """One POST: None when delivered, else whether the failure is worth another try."""
        # a fresh timestamp per attempt, so receivers that bound its age still accept a late retry
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Router-Timestamp": timestamp,
            "X-Router-Signature": sign(self._secret, timestamp, body),
        }
        try:
            # no redirects: following one would send the job's result to a URL the allow-list never saw
            async with self._session().post(url, data=body, headers=headers, timeout=self._timeout,
                                            allow_redirects=False) as resp:
                status = resp.status
        except aiohttp.InvalidURL:
            log.error("webhook_attempt_failed", target=target, attempt=attempt, error="InvalidURL")
            return False  # retrying cannot fix the URL
        except TimeoutError:
            log.info("webhook_attempt_failed", target=target, attempt=attempt, error="timeout")
            return True
        except aiohttp.ClientError as exc:
            log.info("webhook_attempt_failed", target=target, attempt=attempt, error=type(exc).__name__)
            return True
        except Exception as exc:  # notify never raises: a broken URL or session must not fail the job
            log.error("webhook_attempt_failed", target=target, attempt=attempt, error=type(exc).__name__)
            return False
        if 200 <= status < 300:
            log.info("webhook_delivered", target=target, attempt=attempt, status=status)
            return None
        retry = status >= 500 or status == 429
        log.info("webhook_attempt_failed", target=target, attempt=attempt, status=status, retry=retry)
        return retry


def _log_target(url: str) -> str:
    """Scheme, host and port only: paths and queries of webhook URLs often carry tokens."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "<invalid url>"
