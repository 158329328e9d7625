"""One batched codec call per tick for every session's stream: :class:`StreamPool`.

A server keeps one streaming decoder (or encoder) per session, so that sessions join,
leave and pick their own levels independently. Stepping N of them one by one costs N
model calls a frame; the pool instead collects the pushes that arrive while the codec is
busy (or in the same event-loop turn) and runs them as one
:meth:`~mimirate.codec.Codec.decode_streams` / ``encode_streams`` call, which stacks the
streams' states along the batch dimension for that step only. Results are the same as
pushing each stream alone (within float tolerance).

With ``workers`` > 1, a large batch is split across that many executor threads (PyTorch
releases the GIL inside its kernels, so two threads use two cores). Small batches are not
split: up to a few streams, a batched step costs little more than a single one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mimirate.codec import Codec, Encoded, StreamDecoder, StreamEncoder


@dataclass(frozen=True)
class PoolStats:
    """What the pool did so far.

    Attributes:
        calls: batched codec calls made.
        pushes: stream pushes they carried (``pushes / calls`` is the mean batch).
        largest: the largest batch.
    """

    calls: int
    pushes: int
    largest: int


@dataclass
class _Job:
    stream: Any
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


@dataclass
class _Queue:
    """Pending pushes of one kind (decode or encode) and the batches in flight."""

    run: Callable[[list[_Job]], list[Any]]
    pending: list[_Job] = field(default_factory=list)
    in_flight: int = 0
    busy: set[int] = field(default_factory=set)  # ids of the streams in a running batch
    scheduled: bool = False


class StreamPool:
    """Batches the pushes of many sessions' stream decoders and encoders (asyncio side).

    Args:
        codec: the codec whose streams are pushed.
        executor: where codec calls run (the event loop keeps serving meanwhile).
        workers: batches in flight at once, at most the executor's threads.
        max_batch: streams in one codec call (bounds one call's memory and latency).
        min_split: streams each call gets at least before a tick's pushes are split
            across workers.
    """

    def __init__(
        self,
        codec: Codec,
        executor: Executor,
        workers: int = 2,
        max_batch: int = 64,
        min_split: int = 4,
    ) -> None:
        if workers < 1 or max_batch < 1 or min_split < 1:
            raise ValueError("workers, max_batch and min_split must be at least 1")
        self.codec = codec
        self.executor = executor
        self.workers = workers
        self.max_batch = max_batch
        self.min_split = min_split
        self._decode = _Queue(self._run_decode)
        self._encode = _Queue(self._run_encode)
        self._calls = 0
        self._pushes = 0
        self._largest = 0

    @property
    def stats(self) -> PoolStats:
        return PoolStats(self._calls, self._pushes, self._largest)

    async def decode(
        self, decoder: StreamDecoder, codes: np.ndarray, levels: np.ndarray | None = None
    ) -> np.ndarray:
        """``decoder.push(codes, levels)``, batched with the other pushes of this tick."""
        return await self._submit(self._decode, decoder, (codes, levels))

    async def encode(self, encoder: StreamEncoder, audio: np.ndarray) -> Encoded:
        """``encoder.push(audio)``, batched with the other pushes of this tick."""
        return await self._submit(self._encode, encoder, (audio,))

    # -- event-loop side -----------------------------------------------------------------

    async def _submit(self, queue: _Queue, stream: Any, args: tuple[Any, ...]) -> Any:
        loop = asyncio.get_running_loop()
        job = _Job(stream, args, loop.create_future())
        queue.pending.append(job)
        if not queue.scheduled:
            # Start on the next turn of the loop, so that every session woken by the same
            # frame has queued its push by then.
            queue.scheduled = True
            loop.call_soon(self._start, queue)
        return await job.future

    def _start(self, queue: _Queue) -> None:
        queue.scheduled = False
        loop = asyncio.get_running_loop()
        # In stream order (stable for equal streams, so each keeps its pushes' order): the
        # same sessions then form the same batches tick after tick, which lets the codec
        # reuse their stacked state.
        queue.pending = sorted(
            (j for j in queue.pending if not j.future.cancelled()), key=lambda j: id(j.stream)
        )
        while queue.pending and queue.in_flight < self.workers:
            free = self.workers - queue.in_flight
            calls = max(1, min(free, len(queue.pending) // self.min_split))
            size = min(self.max_batch, -(-len(queue.pending) // calls))
            batch, rest = [], []
            for job in queue.pending:
                # A stream steps once per call and in one call at a time (its state is
                # shared by its pushes, in order); its next push waits for a later batch.
                if len(batch) < size and id(job.stream) not in queue.busy:
                    queue.busy.add(id(job.stream))
                    batch.append(job)
                else:
                    rest.append(job)
            queue.pending = rest
            if not batch:
                break
            queue.in_flight += 1
            self._calls += 1
            self._pushes += len(batch)
            self._largest = max(self._largest, len(batch))
            done = loop.run_in_executor(self.executor, queue.run, batch)
            done.add_done_callback(lambda f, b=batch: self._finish(queue, b, f))

    def _finish(self, queue: _Queue, batch: list[_Job], done: asyncio.Future[list[Any]]) -> None:
        queue.in_flight -= 1
        queue.busy.difference_update(id(job.stream) for job in batch)
        error = None if done.cancelled() else done.exception()
        for i, job in enumerate(batch):
            if job.future.done():
                continue  # the session went away while its frame was being processed
            if done.cancelled():
                job.future.cancel()
            elif error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(done.result()[i])
        if queue.pending and not queue.scheduled:
            queue.scheduled = True
            asyncio.get_running_loop().call_soon(self._start, queue)

    # -- executor side -------------------------------------------------------------------

    def _run_decode(self, batch: list[_Job]) -> list[np.ndarray]:
        return self.codec.decode_streams(
            [j.stream for j in batch], [j.args[0] for j in batch], [j.args[1] for j in batch]
        )

    def _run_encode(self, batch: list[_Job]) -> list[Encoded]:
        return self.codec.encode_streams([j.stream for j in batch], [j.args[0] for j in batch])
