"""Bench-only processor factories for ``realtime-worker run --processor bench.processors:…``.

``timestamped`` is the scripted processor (``params_json.script``) whose very first line reads
``time.monotonic()`` and sends ``<job id> <time>`` as one UDP datagram to ``$BENCH_STARTS_ADDR``
(``host:port``), so the bench knows when the job started without polling anything. The same
:class:`StartSignal` is used by the procrastinate and pgqueuer tasks in ``bench.competitors``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING

from realtime_worker.jobs import Job, JobResult
from realtime_worker.run import Processor
from realtime_worker.testing import scripted

if TYPE_CHECKING:
    from realtime_worker.worker import WorkerContext

STARTS_ENV = "BENCH_STARTS_ADDR"
CLAIMED = "claimed:"  # prefix of a job's key in the report that a claim (a fetch) brought it


class StartSignal:
    """Sends ``<key> <monotonic>`` to the bench; a non-blocking send, never raises."""

    def __init__(self, address: tuple[str, int] | None) -> None:
        self._address = address
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    @classmethod
    def from_env(cls) -> StartSignal:
        host, _, port = os.environ.get(STARTS_ENV, "").rpartition(":")
        return cls((host, int(port)) if host and port else None)

    def __call__(self, key: str, at: float) -> None:
        if self._address is None:
            return
        with suppress(OSError):
            self._sock.sendto(f"{key} {at!r}".encode(), self._address)


class Timestamped:
    """Reports the start of each job, then behaves like the scripted processor."""

    def __init__(self, inner: Processor, signal: StartSignal) -> None:
        self._inner, self._signal = inner, signal

    async def __call__(self, job: Job) -> JobResult:
        started = time.monotonic()
        self._signal(str(job.id), started)
        return await self._inner(job)


@asynccontextmanager
async def timestamped(context: WorkerContext) -> AsyncIterator[Processor]:
    """Processor factory: ``--processor bench.processors:timestamped``."""
    async with scripted(context) as inner:
        yield Timestamped(inner, StartSignal.from_env())
