"""The job lanes on the virtual clock: the async lane's queue and workers, the batch lane's buffers,
flushes (``router.batch.lane.flush_trigger``, the live rule) and runs."""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any

from router.batch.base import Buffered
from router.batch.lane import flush_trigger
from router.config import BatchConfig, JobsConfig
from router.sim.loop import EventLoop
from router.types import RETRYABLE, FailureKind

# (done at, failed) for a job
JobDone = Callable[[Any, bool], None]
CallFn = Callable[[str, float, Callable[[Any, FailureKind | None], None], Any], None]
RoomFn = Callable[[str, Callable[[Any], None], Any], None]
DepthFn = Callable[[float, int], None]  # (now, depth) whenever a queue's depth changed


@dataclass(slots=True)
class _Job:
    token: Any
    backend: str
    priority: int
    attempts: int = 0


class AsyncLane:
    """The router's own job queue and ``jobs.workers`` workers: a worker takes the most urgent job, waits for
    room the sync traffic leaves on the backend (``room``), calls it, retries retryable failures with
    backoff up to ``max_attempts``. An idle worker notices new work within ``poll_interval``."""

    def __init__(self, loop: EventLoop, rng: random.Random, cfg: JobsConfig, room: RoomFn, call: CallFn,
                 done: JobDone, depth: DepthFn | None = None) -> None:
        self.loop = loop
        self.depth = depth
        self.rng = rng
        self.cfg = cfg
        self.room = room
        self.call = call
        self.done = done
        self.idle = cfg.workers
        self._queue: list[tuple[int, int, _Job]] = []
        self._seq = count()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, token: Any, backend: str, priority: int) -> None:
        self._push(_Job(token, backend, priority))

    def _push(self, job: _Job) -> None:
        heapq.heappush(self._queue, (-job.priority, next(self._seq), job))
        if self.depth is not None:
            self.depth(self.loop.now, len(self._queue))
        if self.idle:
            self.idle -= 1
            self.loop.after(self.rng.random() * self.cfg.poll_interval, self._take)

    def _take(self, _: Any) -> None:
        if not self._queue:
            self.idle += 1
            return
        job = heapq.heappop(self._queue)[2]
        self.room(job.backend, self._run, job)

    def _run(self, job: _Job) -> None:
        job.attempts += 1
        self.call(job.backend, 0.0, self._ended, job)

    def _ended(self, job: _Job, failure: FailureKind | None) -> None:
        if failure is not None and failure in RETRYABLE and job.attempts < self.cfg.max_attempts:
            c = self.cfg
            delay = min(c.max_backoff, c.backoff * 2.0 ** (job.attempts - 1)) * self.rng.uniform(0.5, 1.5)
            self.loop.after(delay, lambda j: self._push(j), job)
        else:
            self.done(job.token, failure is not None)
        self._take(None)


@dataclass(slots=True)
class _Buffer:
    model: str
    tokens: list[Any]
    records: int = 0
    bytes: int = 0
    oldest: float | None = None
    check_at: float = math.inf


@dataclass(slots=True)
class _Run:
    model: str
    backend: str
    tokens: list[Any]
    chunks: deque[int]  # records per mini-batch still to call
    running: int = 0
    failed: bool = False


class BatchLane:
    """Per model, a buffer flushed by the live rule (records, bytes, age); a flushed batch runs as mini-batches
    of at most ``max_payload`` bytes, ``max_concurrent`` at once, each waiting for room on the backend; or,
    on a Batch Transform backend, as one job. ``runs`` batches run at once; a request is one record."""

    def __init__(self, loop: EventLoop, settings: dict[str, BatchConfig], backends: dict[str, str],
                 transform: set[str], per_record: dict[str, float], room: RoomFn, call: CallFn, done: JobDone,
                 runs: int = 2, depth: DepthFn | None = None) -> None:
        self.loop = loop
        self.depth = depth
        self.buffered = 0  # records in every buffer
        self.settings = settings
        self.backends = backends  # model -> batch backend
        self.transform = transform  # backends that are Batch Transform
        self.per_record = per_record
        self.room = room
        self.call = call
        self.done = done
        self.free_runs = runs
        self._buffers: dict[str, _Buffer] = {}
        self._flushed: deque[_Run] = deque()

    def submit(self, token: Any, model: str, payload_bytes: int) -> None:
        buf = self._buffers.get(model)
        if buf is None:
            buf = self._buffers[model] = _Buffer(model, [])
        now = self.loop.now
        buf.tokens.append(token)
        buf.records += 1
        buf.bytes += payload_bytes
        self.buffered += 1
        if self.depth is not None:
            self.depth(now, self.buffered)
        if buf.oldest is None:
            buf.oldest = now
        self._check(buf)

    def _check(self, buf: _Buffer, slack: float = 0.0) -> None:
        cfg = self.settings[buf.model]
        now = self.loop.now + slack
        if flush_trigger(cfg, Buffered(len(buf.tokens), buf.records, buf.bytes, buf.oldest), now) is not None:
            self._flush(buf, cfg)
        elif buf.oldest is not None and buf.check_at > buf.oldest + cfg.max_wait:
            buf.check_at = buf.oldest + cfg.max_wait
            self.loop.at(buf.check_at, self._timer, buf)

    def _timer(self, buf: _Buffer) -> None:
        if self.loop.now >= buf.check_at:
            buf.check_at = math.inf
            self._check(buf, slack=1e-9)  # due now: oldest + max_wait - oldest may round below max_wait

    def _flush(self, buf: _Buffer, cfg: BatchConfig) -> None:
        take = min(len(buf.tokens), cfg.max_records)
        tokens, buf.tokens = buf.tokens[:take], buf.tokens[take:]
        share = take / max(1, buf.records)
        size = int(buf.bytes * share)
        buf.records -= take
        buf.bytes -= size
        self.buffered -= take
        buf.oldest = self.loop.now if buf.tokens else None
        buf.check_at = math.inf
        backend = self.backends[buf.model]
        if backend in self.transform:
            chunks = deque([take])
        else:
            per_call = max(1, min(cfg.max_records, int(take * cfg.max_payload / max(1, size)) or take))
            chunks = deque([per_call] * (take // per_call) + ([take % per_call] if take % per_call else []))
        self._flushed.append(_Run(buf.model, backend, tokens, chunks))
        self._start_runs()
        if buf.tokens:
            self._check(buf)

    def _start_runs(self) -> None:
        while self.free_runs and self._flushed:
            self.free_runs -= 1
            run = self._flushed.popleft()
            cfg = self.settings[run.model]
            for _ in range(min(cfg.max_concurrent, len(run.chunks))):
                self._next_chunk(run)

    def _next_chunk(self, run: _Run) -> None:
        if run.chunks:
            records = run.chunks.popleft()
            run.running += 1
            self.room(run.backend, self._call_chunk, (run, records))

    def _call_chunk(self, arg: tuple[_Run, int]) -> None:
        run, records = arg
        self.call(run.backend, records * self.per_record.get(run.backend, 0.0), self._chunk_done, run)

    def _chunk_done(self, run: _Run, failure: FailureKind | None) -> None:
        run.running -= 1
        run.failed = run.failed or failure is not None
        self._next_chunk(run)
        if run.running == 0 and not run.chunks:
            for token in run.tokens:
                self.done(token, run.failed)
            self.free_runs += 1
            self._start_runs()
