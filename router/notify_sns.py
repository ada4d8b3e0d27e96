"""Job completion on an SNS topic (AWS state mode): each finished job's status JSON, published best effort.

The message is the JSON of ``GET /jobs/{id}``; the message attributes ``status``, ``model`` and ``lane``
let subscribers filter (SNS subscription filter policies) without parsing it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from router.backends.sagemaker import client_error

log = structlog.get_logger("router.notify")


class SnsJobNotifier:
    """Publishes job status JSON to one topic; ``notify`` retries transient failures and never raises.

    ``client`` returns the (shared) aiobotocore SNS client, e.g. ``SageMakerClients.get(region, url, "sns")``.
    """

    def __init__(self, client: Callable[[], Awaitable[Any]], topic_arn: str, *, attempts: int = 3,
                 backoff_s: float = 0.5, timeout_s: float = 10.0) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.topic_arn = topic_arn
        self._client = client
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s

    async def notify(self, payload: Mapping[str, Any]) -> bool:
        """Publish ``payload``: True once SNS took it, False when it never did (logged)."""
        message = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        attributes = {name: {"DataType": "String", "StringValue": str(payload[name])}
                      for name in ("status", "model", "lane") if payload.get(name)}
        job_id = payload.get("job_id")
        for attempt in range(1, self._attempts + 1):
            try:
                async with asyncio.timeout(self._timeout_s):
                    sns = await self._client()
                    await sns.publish(TopicArn=self.topic_arn, Message=message, MessageAttributes=attributes)
                log.info("sns_job_notification_published", job_id=job_id, attempt=attempt)
                return True
            except ClientError as exc:
                error = client_error("sns", exc)
                log.info("sns_job_notification_failed", job_id=job_id, attempt=attempt, error=error.message)
                if not error.retryable:
                    break
            except (BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
                log.info("sns_job_notification_failed", job_id=job_id, attempt=attempt, error=type(exc).__name__)
            if attempt < self._attempts:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
        log.warning("sns_job_notification_not_published", job_id=job_id, attempts=attempt)
        return False
