"""The scale-out object store: payloads and results in S3, through one long-lived aiobotocore client.

Streams are stored with a multipart upload that sends each part as soon as it fills, so a request body of any
size costs about one part of memory; a body smaller than one part is sent with a single PutObject. S3 makes
an object visible only when its upload completes, so a reader sees the whole object or none, and a failed or
too-large upload is aborted, leaving nothing behind (a crash mid-upload leaves parts that only a bucket
lifecycle rule, ``AbortIncompleteMultipartUpload``, removes: configure one).

The helpers at the top (client config, error mapping) are shared with :mod:`router.storage.aws`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Any

import aiohttp
import structlog
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from router.backends.sagemaker import default_region
from router.storage.base import ObjectMissing, ObjectTooLarge, StorageError, StoredObject

log = structlog.get_logger("router.storage")

MIN_PART_SIZE = 5 * 1024 * 1024  # S3 rejects smaller parts, except the last one
DEFAULT_PART_SIZE = 8 * 1024 * 1024
DEFAULT_MAX_ATTEMPTS = 3  # botocore counts the first call: at most two quick retries
DEFAULT_CONNECT_TIMEOUT_S = 3.0
DEFAULT_READ_TIMEOUT_S = 30.0

_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# S3 answers 412 when an If-Match / If-None-Match write loses, 409 when two conditional writes race.
CONFLICT_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


def client_config(
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    max_pool_connections: int = 32,
) -> Config:
    """Config for the state clients: standard retries with a small cap, short timeouts.

    The stores sit on the path of a ``202``: a brief retry of a throttled or dropped call is worth it
    (unlike model calls, which the router's dispatcher retries itself), a long one is not.
    """
    return Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        max_pool_connections=max_pool_connections,
    )


def error_code(exc: ClientError) -> str:
    """The AWS error code of a ClientError ("NoSuchKey", "404", "ReceiptHandleIsInvalid", ...)."""
    error = (exc.response or {}).get("Error") or {}
    return str(error.get("Code") or "Unknown")


def _status(exc: ClientError) -> int | None:
    status = ((exc.response or {}).get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


@contextlib.contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Turn botocore / connection failures inside the block into StorageError (the API then answers 503)."""
    try:
        yield
    except StorageError:
        raise
    except ClientError as exc:
        raise StorageError(f"{action}: {error_code(exc)} ({_status(exc)})") from exc
    except (BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
        # only the type: a connection error's text carries the endpoint URL, which may hold credentials
        raise StorageError(f"{action}: {type(exc).__name__}") from None


class S3ObjectStore:
    """``ObjectStore`` on one S3 bucket; keys are stored under ``prefix`` (e.g. ``"router/"``).

    Call :meth:`start` once (it creates the client; the first call of any method does so too) and
    :meth:`close` at shutdown.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        config: Config | None = None,
        client: Any = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum part)")
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self._region = region
        self._endpoint_url = endpoint_url
        self._config = config or client_config()
        self._client: Any = client  # a client of the caller's (it stays the caller's to close), or made here
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the S3 client (idempotent)."""
        await self._s3()

    async def _s3(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                with aws_errors("cannot create the S3 client"):
                    self._client = await self._stack.enter_async_context(
                        get_session().create_client(
                            "s3",
                            region_name=self._region or default_region(),
                            endpoint_url=self._endpoint_url,
                            config=self._config,
                        )
                    )
            return self._client

    async def close(self) -> None:
        """Close the client and its connection pool."""
        async with self._lock:
            self._client = None
            stack, self._stack = self._stack, contextlib.AsyncExitStack()
            await stack.aclose()

    # -- keys -----------------------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        if not key or key.startswith("/"):
            raise ValueError(f"invalid object key {key!r}")
        return self.prefix + key

    def location(self, key: str) -> str:
        """``s3://bucket/prefix+key``, for clients that read results from S3 themselves."""
        return f"s3://{self.bucket}/{self._key(key)}"

    # -- writes ---------------------------------------------------------------------------------------------

    async def put(self, key: str, data: bytes) -> StoredObject:
        """Store ``data`` with one PutObject."""
        s3 = await self._s3()
        with aws_errors(f"cannot store {key!r}"):
            await s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        return StoredObject(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *, limit: int) -> StoredObject:
        """Upload chunks as parts fill (about one part held); ObjectTooLarge past ``limit``.

        Below one part the object goes up with a single PutObject. On any failure (too large, the source
        raising, cancellation, S3 errors) the multipart upload is aborted and the key keeps what it had.
        """
        s3 = await self._s3()
        full_key = self._key(key)
        hasher = hashlib.sha256()
        total = 0
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        completed = False
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                total += len(chunk)
                if total > limit:
                    raise ObjectTooLarge(limit)
                hasher.update(chunk)
                buffer += chunk
                if len(buffer) >= self.part_size:
                    if upload_id is None:
                        with aws_errors(f"cannot start the upload of {key!r}"):
                            created = await s3.create_multipart_upload(Bucket=self.bucket, Key=full_key)
                        upload_id = str(created["UploadId"])
                    parts.append(await self._upload_part(s3, key, full_key, upload_id, len(parts) + 1, buffer))
                    buffer = bytearray()
            if upload_id is None:
                with aws_errors(f"cannot store {key!r}"):
                    await s3.put_object(Bucket=self.bucket, Key=full_key, Body=bytes(buffer))
            else:
                if buffer:  # the last part may be smaller than the minimum
                    parts.append(await self._upload_part(s3, key, full_key, upload_id, len(parts) + 1, buffer))
                with aws_errors(f"cannot complete the upload of {key!r}"):
                    await s3.complete_multipart_upload(
                        Bucket=self.bucket, Key=full_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                    )
            completed = True
        finally:
            if upload_id is not None and not completed:
                # Shielded so that a cancellation cannot leave the parts behind (S3 bills them until aborted).
                await self._abort(s3, key, full_key, upload_id)
        return StoredObject(key=key, size=total, sha256=hasher.hexdigest())

    async def _upload_part(
        self, s3: Any, key: str, full_key: str, upload_id: str, number: int, data: bytearray
    ) -> dict[str, Any]:
        with aws_errors(f"cannot upload part {number} of {key!r}"):
            resp = await s3.upload_part(
                Bucket=self.bucket, Key=full_key, UploadId=upload_id, PartNumber=number, Body=bytes(data)
            )
        return {"ETag": resp["ETag"], "PartNumber": number}

    async def _abort(self, s3: Any, key: str, full_key: str, upload_id: str) -> None:
        try:
            await asyncio.shield(s3.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id))
        except (ClientError, BotoCoreError, aiohttp.ClientError, TimeoutError, asyncio.CancelledError) as exc:
            # the original failure matters more; a lifecycle rule removes what is left
            log.warning("s3_abort_failed", key=key, error=type(exc).__name__)

    # -- reads ----------------------------------------------------------------------------------------------

    async def _get_object(self, key: str) -> Any:
        s3 = await self._s3()
        try:
            with aws_errors(f"cannot read {key!r}"):
                return await s3.get_object(Bucket=self.bucket, Key=self._key(key))
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and error_code(cause) in _MISSING_CODES:
                raise ObjectMissing(key) from None
            raise

    async def get(self, key: str) -> bytes:
        """The whole object; ObjectMissing if absent."""
        resp = await self._get_object(key)
        with aws_errors(f"cannot read {key!r}"):
            async with resp["Body"] as body:
                data: bytes = await body.read()
        return data

    async def stream(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The object in chunks of at most ``chunk_size``; ObjectMissing (on the first step) if absent."""
        resp = await self._get_object(key)
        async with resp["Body"] as body:
            while True:
                with aws_errors(f"cannot read {key!r}"):
                    chunk: bytes = await body.read(chunk_size)
                if not chunk:
                    return
                yield chunk

    async def size(self, key: str) -> int | None:
        """The object's size (HeadObject), or None if there is none."""
        s3 = await self._s3()
        try:
            with aws_errors(f"cannot stat {key!r}"):
                resp = await s3.head_object(Bucket=self.bucket, Key=self._key(key))
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and error_code(cause) in _MISSING_CODES:
                return None
            raise
        return int(resp["ContentLength"])

    async def delete(self, key: str) -> None:
        """Remove the object; a missing one is fine (S3 answers 204 either way)."""
        s3 = await self._s3()
        with aws_errors(f"cannot delete {key!r}"):
            await s3.delete_object(Bucket=self.bucket, Key=self._key(key))
