"""Dynamic batching: pairs from concurrent requests share model batches.

Each request puts its pairs in one queue and awaits one future per pair. A single collector task takes up to
``max_batch`` pairs, waiting at most ``max_wait_ms`` after the first for more to arrive, and runs the model on one
worker thread, so the event loop keeps accepting requests (and queueing the next batch) while the model runs.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from ccexpert_core.protocol import BatchingStats

Pair = TypeVar("Pair")
Result = TypeVar("Result")


class QueueFull(Exception):
    """More pairs are waiting than the backend accepts; the client should retry later."""


@dataclass
class _Item(Generic[Pair, Result]):
    pair: Pair
    future: "asyncio.Future[Result]"


class DynamicBatcher(Generic[Pair, Result]):
    """Groups pairs from concurrent :meth:`submit` calls into calls of ``run_batch`` (list of pairs → results)."""

    def __init__(
        self,
        run_batch: Callable[[list[Pair]], Sequence[Result]],
        max_batch: int,
        max_wait_ms: float,
        max_queued: int,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.max_queued = max_queued
        self._pending: collections.deque[_Item[Pair, Result]] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        # One thread: the model is not shared between concurrent calls, and torch already uses all cores per call.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ccexpert-model")
        self.batches = 0
        self.pairs = 0
        self.max_batch_size = 0

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

    async def submit(self, pairs: Sequence[Pair]) -> list[Result]:
        """Results for ``pairs`` in order, computed in whatever batches the traffic allows.

        Raises :class:`QueueFull` when the queue cannot take them. Cancelling the call (a request timeout)
        withdraws the pairs that have not reached the model yet.
        """
        if self._arrived is None:
            raise RuntimeError("the batcher is not started")
        if len(self._pending) + len(pairs) > self.max_queued:
            raise QueueFull(f"{len(self._pending)} pairs are already waiting (limit {self.max_queued})")
        loop = asyncio.get_running_loop()
        items = [_Item(pair, loop.create_future()) for pair in pairs]
        self._pending.extend(items)
        self._arrived.set()
        # gather cancels every future when the caller is cancelled; the collector skips cancelled items.
        return list(await asyncio.gather(*(item.future for item in items)))

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
        }

    async def _collect(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + self.max_wait_s
            while len(self._pending) < self.max_batch and (remaining := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take()
            if batch:
                await self._run(loop, batch)

    def _take(self) -> list[_Item[Pair, Result]]:
        batch: list[_Item[Pair, Result]] = []
        while self._pending and len(batch) < self.max_batch:
            item = self._pending.popleft()
            if not item.future.done():  # a request that timed out or disconnected has cancelled its futures
                batch.append(item)
        return batch

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Item[Pair, Result]]) -> None:
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, [item.pair for item in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"the model returned {len(results)} results for {len(batch)} pairs")
        except Exception as error:  # the model failed: every request in the batch gets the error (a logged 500)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        self.batches += 1
        self.pairs += len(batch)
        self.max_batch_size = max(self.max_batch_size, len(batch))
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
