"""Several batches in flight: prepared ahead on worker threads, several calls open at once, results handed back in
the order they complete; and a failover over several endpoints (backends) that keeps each busy.

Standard library only, so that the QGIS plugin bundles it beside ``grid.py``: ``ccexpert caption-region`` and the
plugin's task keep a GPU busy the same way. Worker threads are daemons: an interrupted run (Ctrl-C, a cancelled
task) returns at once, and a call still open is simply not waited for — its batch was never written, so the next
run does it again.
"""

from __future__ import annotations

import collections
import math
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

Work = TypeVar("Work")
Prepared = TypeVar("Prepared")
Result = TypeVar("Result")
Endpoint = TypeVar("Endpoint")


class _Closable(Protocol):
    def close(self) -> None: ...


Resource = TypeVar("Resource", bound=_Closable)

#: How long the loop waits for something to finish before it looks at ``should_stop`` again.
_POLL_S = 0.1
#: Requests kept open per backend by default: enough pairs to keep this many of its model batches queued, so its
#: GPU never waits for the next request to arrive.
QUEUED_MODEL_BATCHES = 3


def default_in_flight(info: Mapping[str, Any], batch_size: int) -> int:
    """Requests to keep open at one backend (its ``/v1/info`` body): enough for :data:`QUEUED_MODEL_BATCHES` of
    its model batches of ``batching.max_batch`` pairs, in requests of ``batch_size`` pairs; at least two."""
    model_batch = int((info.get("batching") or {}).get("max_batch") or 16)
    return max(2, math.ceil(QUEUED_MODEL_BATCHES * model_batch / max(1, batch_size)))


class _Pool:
    """A fixed number of daemon threads running submitted functions (``ThreadPoolExecutor``'s threads are joined at
    interpreter exit, which would make Ctrl-C wait for every open request)."""

    def __init__(self, threads: int, name: str) -> None:
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            future, function, argument = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(argument))
            except BaseException as error:  # handed to whoever waits on the future
                future.set_exception(error)

    def submit(self, function: Callable, argument: object) -> Future:
        """Run ``function(argument)`` on a pool thread."""
        future: Future = Future()
        self._tasks.put((future, function, argument))
        return future

    def close(self, wait: bool) -> None:
        """Let the threads end once the tasks queued before have run; ``wait`` for them when nothing is running
        (a finished run: a process must not exit while threads that ran torch or GDAL are still winding down,
        which can abort it in C++ destructors)."""
        for _ in self._threads:
            self._tasks.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


class Copies(Generic[Resource]):
    """Copies of something only one thread at a time may use (GDAL's datasets), one per preparing thread: a thread
    borrows an idle copy, or a new one made on first need, and gives it back when its batch is read."""

    def __init__(self, make: Callable[[], Resource]) -> None:
        self._make = make
        self._idle: queue.SimpleQueue[Resource] = queue.SimpleQueue()
        self._made = 0
        self._count = threading.Lock()

    @contextmanager
    def borrowed(self) -> Iterator[Resource]:
        """An idle copy (or a new one) for the block."""
        try:
            copy = self._idle.get_nowait()
        except queue.Empty:
            copy = self._make()
            with self._count:
                self._made += 1
        try:
            yield copy
        finally:
            self._idle.put(copy)

    def close(self) -> None:
        """Close every copy, each once its thread has given it back (a read still going takes milliseconds)."""
        for _ in range(self._made):
            self._idle.get().close()


@dataclass(frozen=True)
class Done(Generic[Work, Prepared, Result]):
    """One finished call: the work item, what was prepared for it, and the call's result or the error it raised."""

    work: Work
    prepared: Prepared
    result: Result | None
    error: BaseException | None


def run_in_flight(
    work: Iterable[Work],
    prepare: Callable[[Work], Prepared],
    call: Callable[[Prepared], Result],
    *,
    in_flight: int,
    preparers: int = 2,
    ahead: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[Done[Work, Prepared, Result], None, None]:
    """Prepare each work item on ``preparers`` threads, keep up to ``in_flight`` calls open, yield each finished call.

    At most ``in_flight + ahead`` items are prepared or open at any time (``ahead`` defaults to ``preparers``), so
    memory is bounded whatever the length of ``work``. Calls start in the order of ``work``; results come in the
    order calls finish. A call's error is yielded in its :class:`Done`; an error in ``prepare`` is raised here (it is
    not the batch's fault: a bug or a broken input stops the run). ``should_stop`` is polled: once true, nothing new
    starts and the iterator ends without waiting for open calls. Closing the iterator early does the same.
    """
    if in_flight < 1 or preparers < 1:
        raise ValueError(f"in_flight and preparers must be at least 1, not {in_flight} and {preparers}")
    limit = in_flight + (preparers if ahead is None else max(0, ahead))
    preparing: collections.deque[tuple[Work, Future]] = collections.deque()
    open_calls: dict[Future, tuple[Work, Prepared]] = {}
    items = iter(work)
    exhausted = False
    prepare_pool, call_pool = _Pool(preparers, "prepare"), _Pool(in_flight, "call")
    try:
        while True:
            if should_stop():
                return
            while not exhausted and len(preparing) + len(open_calls) < limit:
                try:
                    item = next(items)
                except StopIteration:
                    exhausted = True
                    break
                preparing.append((item, prepare_pool.submit(prepare, item)))
            # Calls start in order: the oldest prepared item first, as soon as a slot is free.
            while preparing and preparing[0][1].done() and len(open_calls) < in_flight:
                item, future = preparing.popleft()
                prepared = future.result()  # a prepare error is raised here, in the caller's thread
                open_calls[call_pool.submit(call, prepared)] = (item, prepared)
            if exhausted and not preparing and not open_calls:
                return
            waiting = list(open_calls)
            if preparing and len(open_calls) < in_flight:
                waiting.append(preparing[0][1])
            finished, _ = wait(waiting, timeout=_POLL_S, return_when=FIRST_COMPLETED)
            for future in finished:
                if future not in open_calls:
                    continue  # a prepare finished: the loop above starts its call
                item, prepared = open_calls.pop(future)
                error = future.exception()
                yield Done(item, prepared, None if error else future.result(), error)
    finally:
        completed = exhausted and not preparing and not open_calls
        for _, future in preparing:
            future.cancel()
        for future in open_calls:
            future.cancel()
        prepare_pool.close(wait=completed)
        call_pool.close(wait=completed)


class NoEndpointLeft(Exception):
    """Every endpoint failed as unavailable for longer than the retry budget."""


class Failover(Generic[Endpoint, Prepared, Result]):
    """Sends each call to the least busy live endpoint; one that fails as unavailable is set aside and the call goes
    to another. When none is live, calls wait and try the set-aside ones again (a backend being restarted comes
    back), until ``budget_s`` has passed without any endpoint answering.

    ``call(endpoint, prepared)`` does the work; ``unavailable(error)`` says whether an error means "this endpoint
    is not answering" (try elsewhere) rather than "this request is bad" (raised to the caller at once);
    ``on_down(endpoint, error)`` is told once each time an endpoint is set aside. Thread-safe.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        call: Callable[[Endpoint, Prepared], Result],
        unavailable: Callable[[BaseException], bool],
        *,
        budget_s: float = 60.0,
        retry_after_s: float = 2.0,
        on_down: Callable[[Endpoint, BaseException], None] = lambda endpoint, error: None,
    ) -> None:
        if not endpoints:
            raise ValueError("give at least one endpoint")
        self.endpoints = list(endpoints)
        self._call, self._unavailable, self._on_down = call, unavailable, on_down
        self.budget_s, self.retry_after_s = budget_s, retry_after_s
        self._lock = threading.Lock()
        self._busy = [0] * len(self.endpoints)
        self._down_since: list[float | None] = [None] * len(self.endpoints)
        #: Calls each endpoint answered, by index in ``endpoints``.
        self.answered = [0] * len(self.endpoints)

    def _pick(self) -> int | None:
        """The least busy live endpoint, else the one set aside longest ago once ``retry_after_s`` has passed."""
        now = time.monotonic()
        with self._lock:
            live = [i for i, since in enumerate(self._down_since) if since is None]
            if not live:
                due = [
                    i for i, since in enumerate(self._down_since)
                    if since is not None and now - since >= self.retry_after_s
                ]
                if not due:
                    return None
                live = [min(due, key=lambda i: self._down_since[i] or 0.0)]
                self._down_since[live[0]] = now  # one caller probes it; others keep waiting
            chosen = min(live, key=lambda i: self._busy[i])
            self._busy[chosen] += 1
            return chosen

    def __call__(self, prepared: Prepared) -> Result:
        """The result of ``call`` on some endpoint; raises the call's own error, or :class:`NoEndpointLeft`."""
        deadline = time.monotonic() + self.budget_s
        last_error: BaseException | None = None
        while True:
            index = self._pick()
            if index is None:
                if time.monotonic() > deadline:
                    raise NoEndpointLeft(str(last_error)) from last_error
                time.sleep(min(self.retry_after_s, 0.2))
                continue
            try:
                result = self._call(self.endpoints[index], prepared)
            except BaseException as error:
                with self._lock:
                    self._busy[index] -= 1
                if not self._unavailable(error):
                    raise
                last_error = error
                self._set_down(index, error)
                if time.monotonic() > deadline:
                    raise NoEndpointLeft(str(error)) from error
                continue
            with self._lock:
                self._busy[index] -= 1
                self.answered[index] += 1
                self._down_since[index] = None  # it answered (a probe, perhaps): live again
            return result

    def _set_down(self, index: int, error: BaseException) -> None:
        with self._lock:
            newly = self._down_since[index] is None
            self._down_since[index] = time.monotonic()
        if newly:
            self._on_down(self.endpoints[index], error)
