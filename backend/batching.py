"""Dynamic batching: pairs from concurrent requests share model batches, and no pair is computed for nobody.

Each request puts its pairs in one queue, with its deadline, and awaits one future per pair. A single collector task
takes up to ``max_batch`` pairs, waiting at most ``max_wait_ms`` after the first for more to arrive, and runs the
model on one worker thread, so the event loop keeps accepting requests (and queueing the next batch) while the model
runs.

A running batch cannot be interrupted, so the deadlines are looked at before it starts: from the seconds per pair of
past batches (with a margin), a batch takes only as many pairs as can be done before the earliest deadline among
them, and a pair that cannot be done in time even alone is refused (its request answers 503 ``timeout`` at once).
A request that leaves (timeout, disconnect, one of its pairs refused) withdraws its pairs from the queue and frees
their images.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from ccexpert_core.protocol import BatchingStats

Pair = TypeVar("Pair")
Result = TypeVar("Result")

#: Weight of the newest batch in the seconds-per-pair estimate.
_ESTIMATE_WEIGHT = 0.5
#: A batch runs as long as its longest caption, and the estimate is an average: a batch is planned at this many
#: times the estimate (measured on the demo model, 50 clients, 2 s timeout: 3 of 157 computed pairs came too late,
#: against 25 of 183 planned at the estimate itself, for as many results delivered).
_MARGIN = 1.5


class QueueFull(Exception):
    """More pairs are waiting than the backend accepts; the client should retry later."""


class DeadlineMissed(TimeoutError):
    """A pair would not be done before its request's deadline, so it was not run."""


class BatchFailed(RuntimeError):
    """The model raised on a batch holding pairs of this request (the model's error is the cause)."""


@dataclass(eq=False)  # identity, not value: a request withdraws its own items
class _Item(Generic[Pair, Result]):
    pair: Pair
    future: asyncio.Future[Result]
    queued_at: float
    deadline: float
    # The futures of every pair of the same request. Futures, not items: an item listing itself would be a
    # reference cycle, and its decoded images would wait for the garbage collector instead of leaving with it.
    siblings: list[asyncio.Future[Result]]


class DynamicBatcher(Generic[Pair, Result]):
    """Groups pairs from concurrent :meth:`submit` calls into calls of ``run_batch`` (list of pairs → results).

    ``on_idle``, if given, runs on the model's thread once the queue has stayed empty for ``idle_s`` after some work
    (the backend returns freed memory to the system there).
    """

    def __init__(
        self,
        run_batch: Callable[[list[Pair]], Sequence[Result]],
        max_batch: int,
        max_wait_ms: float,
        max_queued: int,
        on_idle: Callable[[], object] | None = None,
        idle_s: float = 1.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.max_queued = max_queued
        self._on_idle = on_idle
        self.idle_s = idle_s
        self._pending: collections.deque[_Item[Pair, Result]] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        # One thread: the model is not shared between concurrent calls, and torch already uses all cores per call.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ccexpert-model")
        self._seconds_per_pair: float | None = None
        self._worked_since_idle = False
        self.batches = 0
        self.pairs = 0
        self.max_batch_size = 0
        self.withdrawn_pairs = 0

    async def start(self) -> None:
        """Start the collector on the running event loop."""
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._collect(), name="ccexpert-batcher")

    async def stop(self) -> None:
        """Stop collecting; requests still waiting are cancelled."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._pending:
            self._pending.popleft().future.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, pairs: Sequence[Pair], deadline: float = math.inf) -> list[Result]:
        """Results for ``pairs`` in order, computed in whatever batches the traffic allows, before ``deadline``.

        ``deadline`` is in the event loop's clock (``loop.time()``). Raises :class:`QueueFull` when the queue cannot
        take the pairs, :class:`DeadlineMissed` when they would not be done in time, ``TimeoutError`` when the
        deadline passes and :class:`BatchFailed` when the model fails. Whenever the call ends without results (those
        cases, or its cancellation by a disconnect), the pairs that have not reached the model leave the queue.
        """
        if self._arrived is None:
            raise RuntimeError("the batcher is not started")
        if not pairs:
            return []
        if len(self._pending) + len(pairs) > self.max_queued:
            raise QueueFull(f"{len(self._pending)} pairs are already waiting (limit {self.max_queued})")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Result]] = [loop.create_future() for _ in pairs]
        now = loop.time()
        request = [_Item(pair, future, now, deadline, futures) for pair, future in zip(pairs, futures, strict=True)]
        self._pending.extend(request)
        self._arrived.set()
        timeout = None if deadline == math.inf else max(0.0, deadline - now)
        try:
            _, waiting = await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            self._withdraw(request)
        # Every exception is fetched (none is reported later as "never retrieved"), and a new one is raised: the
        # stored ones never get this frame in their traceback, which would make a reference cycle through the
        # futures here and keep the request's images until the garbage collector runs.
        failures = [future.exception() for future in futures if future.done() and not future.cancelled()]
        failure = next((error for error in failures if error is not None), None)
        if isinstance(failure, DeadlineMissed):
            raise DeadlineMissed(*failure.args)
        if failure is not None:
            raise BatchFailed(f"the model failed on a batch of this request ({type(failure).__name__})") from failure
        if waiting:
            raise TimeoutError("the deadline passed before the results were ready")
        return [future.result() for future in futures]

    def stats(self) -> BatchingStats:
        """Counters since start, for /v1/info."""
        return {
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_s * 1000.0,
            "batches": self.batches,
            "pairs": self.pairs,
            "mean_batch_size": self.pairs / self.batches if self.batches else 0.0,
            "max_batch_size": self.max_batch_size,
            "queued_pairs": len(self._pending),
            "withdrawn_pairs": self.withdrawn_pairs,
        }

    def _withdraw(self, request: list[_Item[Pair, Result]]) -> None:
        # A request that ends without results (timeout, disconnect, a failed pair) takes its waiting pairs, and
        # their decoded images, out of the queue at once rather than when the collector reaches them.
        for item in request:
            item.future.cancel()  # a no-op for the pairs that have their result
        leaving = set(map(id, request))
        before = len(self._pending)
        self._pending = collections.deque(item for item in self._pending if id(item) not in leaving)
        self.withdrawn_pairs += before - len(self._pending)

    async def _collect(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_work(loop)
            deadline = loop.time() + self.max_wait_s
            while len(self._pending) < self.max_batch and (remaining := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take(loop.time())
            if batch:
                await self._run(loop, batch)

    async def _wait_for_work(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._arrived is not None
        while not self._pending:
            self._arrived.clear()
            if not (self._worked_since_idle and self._on_idle is not None):
                await self._arrived.wait()
                continue
            try:
                await asyncio.wait_for(self._arrived.wait(), self.idle_s)
            except TimeoutError:
                self._worked_since_idle = False
                await loop.run_in_executor(self._executor, self._on_idle)

    def _fits(self, pairs: int, seconds_left: float) -> bool:
        return self._seconds_per_pair is None or pairs * self._seconds_per_pair * _MARGIN <= seconds_left

    def _take(self, now: float) -> list[_Item[Pair, Result]]:
        batch: list[_Item[Pair, Result]] = []
        earliest = math.inf
        while self._pending and len(batch) < self.max_batch:
            item = self._pending[0]
            if item.future.done():  # cancelled along with a refused pair of the same request
                self._pending.popleft()
                self.withdrawn_pairs += 1
                continue
            first = min(earliest, item.deadline)
            if self._fits(len(batch) + 1, first - now):
                batch.append(self._pending.popleft())
                earliest = first
            elif batch:
                break  # the batch is as large as its earliest deadline allows; the rest waits for the next one
            elif not self._fits(1, item.deadline - item.queued_at):
                # By the estimate no pair could ever be done in its time, even one sent just now: the estimate is
                # stale (a slow first batch) or the model too slow for the timeout. Run this one alone to measure
                # again, so a cold start cannot leave behind an estimate that refuses everything for good.
                batch.append(self._pending.popleft())
            else:
                self._refuse(self._pending.popleft(), now)
        return batch

    def _refuse(self, item: _Item[Pair, Result], now: float) -> None:
        assert self._seconds_per_pair is not None
        self.withdrawn_pairs += 1
        item.future.set_exception(
            DeadlineMissed(
                f"{max(0.0, item.deadline - now):.1f} s were left and a pair takes about "
                f"{self._seconds_per_pair:.1f} s now"
            )
        )
        for sibling in item.siblings:  # the request fails as a whole: its other pairs are not worth computing
            sibling.cancel()

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Item[Pair, Result]]) -> None:
        self._worked_since_idle = True
        started = time.monotonic()
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, [item.pair for item in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"the model returned {len(results)} results for {len(batch)} pairs")
        except Exception as error:  # the model failed: every request in the batch gets the error (a logged 500)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        observed = (time.monotonic() - started) / len(batch)
        previous = self._seconds_per_pair
        self._seconds_per_pair = (
            observed if previous is None else _ESTIMATE_WEIGHT * observed + (1 - _ESTIMATE_WEIGHT) * previous
        )
        self.batches += 1
        self.pairs += len(batch)
        self.max_batch_size = max(self.max_batch_size, len(batch))
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
