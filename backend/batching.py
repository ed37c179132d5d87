"""Dynamic batching in a pipeline that keeps the model busy: concurrent requests share model batches, the model's
thread does model work only, and no pair is computed for nobody.

Each request puts its items (a tile of work: a pair, or a series of dates with its intervals; weighed by its pairs)
in one queue, with its deadline, and awaits one future per item. Three stages run on their own threads:

- a collector takes up to ``max_batch`` pairs and hands the batch to a preparing thread (``prepare``: the
  processor's CPU work) while the model runs the batches before; it keeps at most ``prepare_ahead`` batches formed
  ahead of the model, and forms a batch less than full only when nothing is ahead of the model and ``max_wait_ms``
  has passed since it began waiting: batches fill while the model is busy, and the model never waits for one;
- the model's one thread runs prepared batches back to back (``run``), nothing else;
- a finishing thread turns the model's answer into results (``finish``) while the model runs the next batch.

A running batch cannot be interrupted, so the deadlines are looked at before it is formed: from the seconds per pair
of past model calls (with a margin) and the work already ahead of it, a batch takes only as many pairs as can be
done before the earliest deadline among them, and an item that cannot be done in time even alone is refused (its
request answers 503 ``timeout`` at once). A request that leaves (timeout, disconnect, an item refused) withdraws
its items from the queue and frees their images; a batch whose requests have all left is never run.

One request never fails another: where a batch holding several requests fails in any stage, each request's items
are run again on their own, so only the request at fault gets the error.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ccexpert_core.protocol import BatchingStats, StageStats

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Weight of the newest batch in the seconds-per-pair estimate.
_ESTIMATE_WEIGHT = 0.5
#: A batch runs as long as its longest caption, and the estimate is an average: a batch is planned at this many
#: times the estimate (measured on the demo model, 50 clients, 2 s timeout: 3 of 157 computed pairs came too late,
#: against 25 of 183 planned at the estimate itself, for as many results delivered).
_MARGIN = 1.5
#: Batches formed ahead of the model (being prepared, or prepared and waiting). Two: the next batch is ready when
#: the model finishes, with room for a slow preparation; more would only form smaller batches earlier.
PREPARE_AHEAD = 2
#: Threads preparing batches (decoding runs on the request threads): two keep up with a GPU on 384-px tiles.
PREPARE_THREADS = 2
#: The stages whose time /v1/info reports (``batching.stages``).
STAGES = ("decode", "prepare", "model", "finish")


class QueueFull(Exception):
    """More pairs are waiting than the backend accepts; the client should retry later."""


class DeadlineMissed(TimeoutError):
    """A pair would not be done before its request's deadline, so it was not run."""


class BatchFailed(RuntimeError):
    """The model raised on this request's items, run on their own (the model's error is the cause)."""


@dataclass(frozen=True)
class ModelStages(Generic[Item, Result]):
    """What the batcher runs: ``prepare`` (items → prepared batch, CPU, any thread), ``run`` (prepared → the model's
    answer, on the model's one thread), ``finish`` (answer → one result per item, CPU, any thread) and ``weight``
    (an item's pairs: what batches, queue limits and deadlines count)."""

    prepare: Callable[[list[Item]], Any]
    run: Callable[[Any], Any]
    finish: Callable[[Any], Sequence[Result]]
    weight: Callable[[Item], int] = lambda item: 1


class StageClock:
    """Thread CPU time and wall time spent in each stage, for /v1/info (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[str, StageStats] = {name: {"calls": 0, "seconds": 0.0, "cpu_s": 0.0} for name in STAGES}

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        """Count the time the block takes, on the calling thread, against ``stage``."""
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
            with self._lock:
                stats = self._stats[stage]
                stats["calls"] += 1
                stats["seconds"] += wall
                stats["cpu_s"] += cpu

    def stats(self) -> dict[str, StageStats]:
        """A copy of the counters."""
        with self._lock:
            return {name: dict(stats) for name, stats in self._stats.items()}  # type: ignore[misc]


@dataclass(eq=False)  # identity, not value: a request withdraws its own items
class _Item(Generic[Item, Result]):
    item: Item
    pairs: int
    future: asyncio.Future[Result]
    queued_at: float
    deadline: float
    # The futures of every item of the same request. Futures, not items: an item listing itself would be a
    # reference cycle, and its decoded images would wait for the garbage collector instead of leaving with it.
    siblings: list[asyncio.Future[Result]]


@dataclass(eq=False)
class _Batch(Generic[Item, Result]):
    items: list[_Item[Item, Result]]
    pairs: int
    prepared: asyncio.Future[Any]


class DynamicBatcher(Generic[Item, Result]):
    """Groups items from concurrent :meth:`submit` calls into model batches, through ``stages``.

    ``on_idle``, if given, runs on the model's thread once the queue has stayed empty for ``idle_s`` after some work
    (the backend returns freed memory to the system there).
    """

    def __init__(
        self,
        stages: ModelStages[Item, Result],
        max_batch: int,
        max_wait_ms: float,
        max_queued: int,
        on_idle: Callable[[], object] | None = None,
        idle_s: float = 1.0,
        prepare_ahead: int = PREPARE_AHEAD,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._stages = stages
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.max_queued = max_queued
        self.prepare_ahead = max(1, prepare_ahead)
        self._on_idle = on_idle
        self.idle_s = idle_s
        self.clock = StageClock()
        self._pending: collections.deque[_Item[Item, Result]] = collections.deque()
        self._pending_pairs = 0
        self._formed: asyncio.Queue[_Batch[Item, Result]] | None = None
        self._changed: asyncio.Condition | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._finishing: set[asyncio.Task[None]] = set()
        # One model thread: the model is not shared between concurrent calls, and a device runs one batch at a time.
        self._model = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ccexpert-model")
        self._preparers = ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="ccexpert-prepare")
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ccexpert-finish")
        self._seconds_per_pair: float | None = None
        self._ahead_pairs = 0  # formed, not yet on the model
        self._running_until = 0.0  # when the batch on the model should be done, by the estimate
        self._worked_since_idle = False
        self._open_batches = 0  # formed and not yet done with
        self.batches = 0
        self.pairs = 0
        self.max_batch_size = 0
        self.withdrawn_pairs = 0
        self.isolated_batches = 0

    async def start(self) -> None:
        """Start the collector and the model's feeder on the running event loop."""
        self._formed = asyncio.Queue()
        self._changed = asyncio.Condition()
        self._tasks = [asyncio.create_task(self._collect(), name="ccexpert-batcher"),
                       asyncio.create_task(self._feed_model(), name="ccexpert-model-feeder")]

    async def stop(self) -> None:
        """Stop collecting; requests still waiting are cancelled."""
        for task in (*self._tasks, *self._finishing):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._finishing, return_exceptions=True)
        while self._pending:
            self._pending.popleft().future.cancel()
        for executor in (self._model, self._preparers, self._finisher):
            executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, items: Sequence[Item], deadline: float = math.inf) -> list[Result]:
        """Results for ``items`` in order, computed in whatever batches the traffic allows, before ``deadline``.

        ``deadline`` is in the event loop's clock (``loop.time()``). Raises :class:`QueueFull` when the queue cannot
        take the items' pairs, :class:`DeadlineMissed` when they would not be done in time, ``TimeoutError`` when the
        deadline passes and :class:`BatchFailed` when the model fails on them. Whenever the call ends without results
        (those cases, or its cancellation by a disconnect), the items that have not reached the model leave the queue.
        """
        if self._changed is None:
            raise RuntimeError("the batcher is not started")
        if not items:
            return []
        weights = [max(1, self._stages.weight(item)) for item in items]
        if self._pending_pairs + sum(weights) > self.max_queued:
            raise QueueFull(f"{self._pending_pairs} pairs are already waiting (limit {self.max_queued})")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Result]] = [loop.create_future() for _ in items]
        now = loop.time()
        request = [_Item(item, weight, future, now, deadline, futures)
                   for item, weight, future in zip(items, weights, futures, strict=True)]
        self._pending.extend(request)
        self._pending_pairs += sum(weights)
        await self._notify()
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
            raise BatchFailed(f"the model failed on this request ({type(failure).__name__})") from failure
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
            "queued_pairs": self._pending_pairs,
            "withdrawn_pairs": self.withdrawn_pairs,
            "isolated_batches": self.isolated_batches,
            "stages": self.clock.stats(),
        }

    # ----- the queue -----
    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def _wait_until(self, ready: Callable[[], bool], timeout: float | None = None) -> bool:
        assert self._changed is not None
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(ready), timeout)
            except TimeoutError:
                return False
        return True

    def _pop(self) -> _Item[Item, Result]:
        item = self._pending.popleft()
        self._pending_pairs -= item.pairs
        return item

    def _withdraw(self, request: list[_Item[Item, Result]]) -> None:
        # A request that ends without results (timeout, disconnect, a failed item) takes its waiting items, and
        # their decoded images, out of the queue at once rather than when the collector reaches them.
        for item in request:
            item.future.cancel()  # a no-op for the items that have their result
        leaving = set(map(id, request))
        kept = collections.deque(item for item in self._pending if id(item) not in leaving)
        gone = sum(item.pairs for item in self._pending if id(item) in leaving)
        self._pending, self._pending_pairs = kept, self._pending_pairs - gone
        self.withdrawn_pairs += gone

    # ----- the collector -----
    async def _collect(self) -> None:
        formed = self._formed
        assert formed is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_work(loop)
            # Only so many batches ahead of the model: the rest waits in the queue, where batches keep filling.
            await self._wait_until(lambda: formed.qsize() < self.prepare_ahead)
            await self._fill(loop, loop.time() + self.max_wait_s)
            taken = self._take(loop.time())
            if taken:
                self._worked_since_idle = True
                self._open_batches += 1
                pairs = sum(item.pairs for item in taken)
                self._ahead_pairs += pairs
                prepared = loop.run_in_executor(self._preparers, self._prepare, [item.item for item in taken])
                formed.put_nowait(_Batch(taken, pairs, prepared))

    async def _fill(self, loop: asyncio.AbstractEventLoop, fill_until: float) -> None:
        """Wait until a full batch is waiting, or until the model would otherwise run out of work: nothing formed
        ahead of it and ``max_wait_ms`` passed. A batch less than full is only formed where the model needs it."""
        formed = self._formed
        assert formed is not None
        while self._pending_pairs < self.max_batch:
            nothing_ahead = formed.empty()
            remaining = fill_until - loop.time()
            if nothing_ahead and remaining <= 0:
                return

            def ready(ahead: bool = nothing_ahead) -> bool:
                return self._pending_pairs >= self.max_batch or formed.empty() != ahead

            await self._wait_until(ready, remaining if nothing_ahead else None)

    async def _wait_for_work(self, loop: asyncio.AbstractEventLoop) -> None:
        while not self._pending:
            if not (self._worked_since_idle and self._on_idle is not None):
                await self._wait_until(lambda: bool(self._pending))
                continue
            # Idle means every batch done with (its results delivered and its tensors freed), then ``idle_s`` with
            # nothing arriving: only then is memory given back.
            await self._wait_until(lambda: bool(self._pending) or self._open_batches == 0)
            if not self._pending and not await self._wait_until(lambda: bool(self._pending), self.idle_s):
                self._worked_since_idle = False
                await loop.run_in_executor(self._model, self._on_idle)

    def _ahead_s(self, now: float) -> float:
        """Seconds of model work, by the estimate, before a batch formed now would start."""
        assert self._seconds_per_pair is not None
        return max(0.0, self._running_until - now) + self._ahead_pairs * self._seconds_per_pair

    def _fits(self, pairs: int, seconds_left: float, ahead_s: float = 0.0) -> bool:
        return self._seconds_per_pair is None or ahead_s + pairs * self._seconds_per_pair * _MARGIN <= seconds_left

    def _take(self, now: float) -> list[_Item[Item, Result]]:
        batch: list[_Item[Item, Result]] = []
        pairs, earliest = 0, math.inf
        ahead = 0.0 if self._seconds_per_pair is None else self._ahead_s(now)
        while self._pending:
            item = self._pending[0]
            if item.future.done():  # cancelled along with a refused item of the same request
                self.withdrawn_pairs += self._pop().pairs
                continue
            if batch and pairs + item.pairs > self.max_batch:
                break
            first = min(earliest, item.deadline)
            if self._fits(pairs + item.pairs, first - now, ahead):
                batch.append(self._pop())
                pairs, earliest = pairs + item.pairs, first
            elif batch:
                break  # the batch is as large as its earliest deadline allows; the rest waits for the next one
            elif not self._fits(item.pairs, item.deadline - item.queued_at):
                # By the estimate no item could ever be done in its time, even one sent just now: the estimate is
                # stale (a slow first batch) or the model too slow for the timeout. Run this one alone to measure
                # again, so a cold start cannot leave behind an estimate that refuses everything for good.
                batch.append(self._pop())
                break
            else:
                self._refuse(self._pop(), now)
        return batch

    def _refuse(self, item: _Item[Item, Result], now: float) -> None:
        assert self._seconds_per_pair is not None
        self.withdrawn_pairs += item.pairs
        item.future.set_exception(
            DeadlineMissed(
                f"{max(0.0, item.deadline - now):.1f} s were left and a pair takes about "
                f"{self._seconds_per_pair:.1f} s now"
            )
        )
        for sibling in item.siblings:  # the request fails as a whole: its other items are not worth computing
            sibling.cancel()

    # ----- the stages -----
    def _prepare(self, items: list[Item]) -> Any:
        with self.clock.measure("prepare"):
            return self._stages.prepare(items)

    def _run(self, prepared: Any) -> Any:
        with self.clock.measure("model"):
            return self._stages.run(prepared)

    def _finish(self, answer: Any, count: int) -> Sequence[Result]:
        with self.clock.measure("finish"):
            results = self._stages.finish(answer)
        if len(results) != count:
            raise RuntimeError(f"the model returned {len(results)} results for {count} items")
        return results

    async def _feed_model(self) -> None:
        """The model's side: prepared batches in the order they were formed, back to back."""
        assert self._formed is not None
        while True:
            batch = await self._formed.get()
            await self._notify()  # room for the collector to form the next batch
            answered = await self._on_model(batch)
            del batch  # with it its prepared pixels: freed before the next batch's arrive
            if answered is None:
                await self._closed()
                continue
            task = asyncio.create_task(self._deliver(*answered))
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)

    async def _on_model(self, batch: _Batch[Item, Result]) -> tuple[list[_Item[Item, Result]], Any] | None:
        """Run one formed batch on the model: its items and the model's answer, or None where nothing is left to
        finish (it failed, and its requests were answered, or they had all left)."""
        loop = asyncio.get_running_loop()
        try:
            prepared = await batch.prepared
        except Exception as error:
            self._ahead_pairs -= batch.pairs
            await self._failed(batch.items, error)
            return None
        self._ahead_pairs -= batch.pairs
        if all(item.future.done() for item in batch.items):  # every request has left: computed for nobody
            self.withdrawn_pairs += batch.pairs
            return None
        self._running_until = loop.time() + (self._seconds_per_pair or 0.0) * batch.pairs
        started = time.perf_counter()
        try:
            answer = await loop.run_in_executor(self._model, self._run, prepared)
        except Exception as error:
            await self._failed(batch.items, error)
            return None
        finally:
            self._running_until = 0.0
        self._measured(batch.pairs, time.perf_counter() - started)
        return batch.items, answer

    async def _closed(self) -> None:
        """A formed batch is done with (answered, failed or dropped)."""
        self._open_batches -= 1
        await self._notify()

    def _measured(self, pairs: int, seconds: float) -> None:
        observed = seconds / pairs
        previous = self._seconds_per_pair
        self._seconds_per_pair = (
            observed if previous is None else _ESTIMATE_WEIGHT * observed + (1 - _ESTIMATE_WEIGHT) * previous
        )
        self.batches += 1
        self.pairs += pairs
        self.max_batch_size = max(self.max_batch_size, pairs)

    async def _deliver(self, items: list[_Item[Item, Result]], answer: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._finisher, self._finish, answer, len(items))
        except Exception as error:
            del answer
            await self._failed(items, error)
            return
        finally:
            await self._closed()
        for item, result in zip(items, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    # ----- failures -----
    async def _failed(self, items: list[_Item[Item, Result]], error: Exception) -> None:
        """A stage raised on a batch: the error is its request's where the batch held one request; else each
        request's items run again on their own, so that only the request at fault fails."""
        requests: dict[int, list[_Item[Item, Result]]] = {}
        for item in items:
            if not item.future.done():
                requests.setdefault(id(item.siblings), []).append(item)
        if len(requests) == 1:
            (alone,) = requests.values()
            for item in alone:
                item.future.set_exception(error)
            return
        self.isolated_batches += 1
        loop = asyncio.get_running_loop()
        for alone in requests.values():
            try:
                prepared = await loop.run_in_executor(self._preparers, self._prepare, [item.item for item in alone])
                started = time.perf_counter()
                answer = await loop.run_in_executor(self._model, self._run, prepared)
                self._measured(sum(item.pairs for item in alone), time.perf_counter() - started)
                results = await loop.run_in_executor(self._finisher, self._finish, answer, len(alone))
            except Exception as own_error:
                for item in alone:
                    if not item.future.done():
                        item.future.set_exception(own_error)
                continue
            for item, result in zip(alone, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
