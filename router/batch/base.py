"""The contract between the batch lane and whatever runs a flushed batch (local runner, Batch Transform)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from router.batch.records import RecordFormat


class RecordOutcome(NamedTuple):
    """One record's end: its output (one line, or one JSON value) or why it failed."""

    output: bytes | None
    error: str | None = None


class BatchRunner(Protocol):
    """Runs one flushed batch; answers one outcome per record, in the records' order.

    ``batch_id`` is stable across restarts: a runner given a batch it already started (the router
    crashed while it ran) follows that run instead of starting a second one where it can.
    A failure of the whole run is reported per record (every outcome an error), never raised.
    """

    async def run(self, batch_id: str, records: Sequence[bytes], fmt: RecordFormat, *,
                  content_type: str, accept: str | None) -> list[RecordOutcome]: ...

    async def close(self) -> None: ...
