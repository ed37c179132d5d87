"""The batcher and the request path in-process, with stand-in stages: grouping by pairs, the pipeline (the model's
thread runs the model only; batch N+1 prepared while batch N runs), deadlines, a full queue, failures that stay with
the request at fault."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.batching import BatchFailed, DeadlineMissed, DynamicBatcher, ModelStages, QueueFull
from backend.state import ServerSettings
from ccexpert_core import protocol
from ccexpert_core.captions import CaptionResult
from ccexpert_core.model_card import ModelCard

from backend_server import encode, multipart, random_image


def run(coroutine):
    return asyncio.run(coroutine)


async def _with_batcher(batcher: DynamicBatcher, body):
    await batcher.start()
    try:
        return await body()
    finally:
        await batcher.stop()


def model_stages(model: Callable[[list], list], weight: Callable[[object], int] = lambda item: 1) -> ModelStages:
    """Stages around ``model`` (items → results): nothing to prepare, nothing to finish."""
    return ModelStages(prepare=list, run=model, finish=list, weight=weight)


async def until(condition: Callable[[], bool]) -> None:
    """Wait, without a deadline of its own (the test's timeout is the limit), until ``condition`` holds."""
    while not condition():
        await asyncio.sleep(0.005)


def test_concurrent_submits_share_batches_and_keep_their_own_results() -> None:
    calls: list[list[int]] = []

    def model(pairs: list[int]) -> list[int]:
        calls.append(list(pairs))
        return [pair * 10 for pair in pairs]

    batcher = DynamicBatcher(model_stages(model), max_batch=4, max_wait_ms=50, max_queued=100)

    async def body():
        return await asyncio.gather(*(batcher.submit([3 * i, 3 * i + 1, 3 * i + 2]) for i in range(3)))

    results = run(_with_batcher(batcher, body))
    assert results == [[0, 10, 20], [30, 40, 50], [60, 70, 80]]
    assert all(len(call) <= 4 for call in calls)
    assert sorted(pair for call in calls for pair in call) == list(range(9))
    assert len(calls) == 3  # 9 pairs in batches of at most 4: 4 + 4 + 1
    stats = batcher.stats()
    assert (stats["batches"], stats["pairs"], stats["max_batch_size"]) == (3, 9, 4)


def test_batches_and_the_queue_count_pairs_not_tiles() -> None:
    # A tile of a series asking for three intervals weighs three pairs.
    calls: list[list[str]] = []

    def model(tiles: list[str]) -> list[str]:
        calls.append(list(tiles))
        return tiles

    batcher = DynamicBatcher(model_stages(model, weight=len), max_batch=4, max_wait_ms=50, max_queued=6)

    async def body():
        done = await asyncio.gather(batcher.submit(["abc"]), batcher.submit(["de"]), batcher.submit(["f"]))
        with pytest.raises(QueueFull):
            await batcher.submit(["abcd", "efg"])  # 7 pairs: over the queue's 6
        return done

    assert run(_with_batcher(batcher, body)) == [["abc"], ["de"], ["f"]]
    # In the order they came, never more than 4 pairs a batch: 3, then 2 + 1.
    assert calls == [["abc"], ["de", "f"]]
    assert batcher.stats()["pairs"] == 6


def test_max_batch_one_never_merges() -> None:
    calls: list[list[int]] = []
    batcher = DynamicBatcher(model_stages(lambda pairs: calls.append(pairs) or pairs), max_batch=1, max_wait_ms=50,
                             max_queued=100)

    async def body():
        return await asyncio.gather(*(batcher.submit([i]) for i in range(5)))

    assert run(_with_batcher(batcher, body)) == [[i] for i in range(5)]
    assert [len(call) for call in calls] == [1] * 5


def test_the_model_thread_runs_the_model_only_and_the_next_batch_is_prepared_while_it_runs() -> None:
    threads: dict[str, set[str]] = {"prepare": set(), "run": set(), "finish": set()}
    first_running, second_prepared = threading.Event(), threading.Event()
    order: list[str] = []

    def stage(name: str, body: Callable) -> Callable:
        def call(value):
            threads[name].add(threading.current_thread().name)
            return body(value)
        return call

    def prepare(items: list[str]) -> list[str]:
        if items == ["second"]:
            order.append("second prepared")
            second_prepared.set()
        return items

    def model(items: list[str]) -> list[str]:
        if items == ["first"]:
            first_running.set()
            # Batch 1 stays on the model until batch 2 has been prepared beside it.
            assert second_prepared.wait(30), "batch 2 was not prepared while batch 1 ran"
            order.append("first done")
        return items

    stages = ModelStages(stage("prepare", prepare), stage("run", model), stage("finish", list))
    batcher = DynamicBatcher(stages, max_batch=1, max_wait_ms=0, max_queued=100)

    async def body():
        first = asyncio.ensure_future(batcher.submit(["first"]))
        await until(first_running.is_set)
        return await asyncio.gather(first, batcher.submit(["second"]))

    assert run(_with_batcher(batcher, body)) == [["first"], ["second"]]
    assert order == ["second prepared", "first done"]
    assert {name.split("_")[0] for name in threads["run"]} == {"ccexpert-model"}
    assert not threads["prepare"] & threads["run"] and not threads["finish"] & threads["run"]
    stages_seen = batcher.stats()["stages"]
    assert stages_seen["prepare"]["calls"] == stages_seen["model"]["calls"] == stages_seen["finish"]["calls"] == 2


def test_a_withdrawn_request_is_skipped_and_a_full_queue_refused() -> None:
    release, busy = threading.Event(), threading.Event()
    prepared: list[list[str]] = []
    calls: list[list[str]] = []

    def model(pairs: list[str]) -> list[str]:
        calls.append(list(pairs))
        busy.set()
        release.wait(30)
        return pairs

    stages = ModelStages(lambda items: prepared.append(list(items)) or items, model, list)
    batcher = DynamicBatcher(stages, max_batch=2, max_wait_ms=0, max_queued=3, prepare_ahead=1)

    async def body():
        blocking = asyncio.ensure_future(batcher.submit(["first"]))
        await until(busy.is_set)  # the model is now busy with "first"
        late = asyncio.ensure_future(batcher.submit(["late-1", "late-2"]))
        await until(lambda: ["late-1", "late-2"] in prepared)  # formed: the one batch ahead of the model
        late.cancel()  # its client leaves: the batch ahead of the model is dropped
        waiting = asyncio.ensure_future(batcher.submit(["kept"]))
        await until(lambda: batcher.stats()["queued_pairs"] == 1)  # behind the batch ahead
        with pytest.raises(QueueFull):
            await batcher.submit(["x", "y", "z"])
        release.set()
        return await blocking, await waiting

    assert run(_with_batcher(batcher, body)) == (["first"], ["kept"])
    assert calls == [["first"], ["kept"]]  # the request that left never reached the model


def test_pairs_that_cannot_be_done_in_time_are_never_computed() -> None:
    # 30 one-pair requests at once, 2.2 s each, on a model taking 0.4 s per pair. Batches used to take whatever was
    # waiting (16 pairs: 6.4 s, every request long gone: pairs computed, no result delivered). Now a batch holds what
    # can be done before its earliest deadline, and the rest is refused at once.
    calls: list[int] = []

    def model(pairs: list[int]) -> list[int]:
        calls.append(len(pairs))
        time.sleep(0.4 * len(pairs))
        return pairs

    batcher = DynamicBatcher(model_stages(model), max_batch=16, max_wait_ms=10, max_queued=100)

    async def body():
        await batcher.submit([-1])  # one batch, so the batcher knows how long a pair takes
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.2
        return await asyncio.gather(*(batcher.submit([i], deadline) for i in range(30)), return_exceptions=True)

    outcomes = run(_with_batcher(batcher, body))
    delivered = [outcome for outcome in outcomes if isinstance(outcome, list)]
    assert delivered and all(isinstance(outcome, (list, DeadlineMissed)) for outcome in outcomes), outcomes
    assert sum(calls) == 1 + len(delivered)  # every pair the model computed reached its request in time
    stats = batcher.stats()
    assert stats["withdrawn_pairs"] == 30 - len(delivered) and stats["queued_pairs"] == 0


def test_a_request_that_leaves_takes_its_pairs_out_of_the_queue_at_once() -> None:
    release, busy = threading.Event(), threading.Event()
    prepared: list[list[str]] = []
    calls: list[list[str]] = []

    def model(pairs: list[str]) -> list[str]:
        calls.append(list(pairs))
        busy.set()
        release.wait(30)
        return pairs

    stages = ModelStages(lambda items: prepared.append(list(items)) or items, model, list)
    batcher = DynamicBatcher(stages, max_batch=8, max_wait_ms=0, max_queued=100, prepare_ahead=1)

    async def body():
        busy_request = asyncio.ensure_future(batcher.submit(["first"]))
        await until(busy.is_set)  # the model is now busy with "first"
        ahead = asyncio.ensure_future(batcher.submit(["ahead"]))
        await until(lambda: ["ahead"] in prepared)  # formed at once: the one batch ahead of the model
        leaving = asyncio.ensure_future(batcher.submit(["a", "b", "c"]))
        await until(lambda: batcher.stats()["queued_pairs"] == 3)  # queued behind the batch ahead
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        left = batcher.stats()
        release.set()
        return await busy_request, await ahead, left

    first, ahead, left = run(_with_batcher(batcher, body))
    assert first == ["first"] and ahead == ["ahead"] and calls == [["first"], ["ahead"]]
    assert (left["queued_pairs"], left["withdrawn_pairs"]) == (0, 3)  # gone before the collector came back


def test_memory_is_released_once_after_each_burst() -> None:
    released = threading.Event()
    count: list[int] = []

    def on_idle() -> None:
        count.append(1)
        released.set()

    batcher = DynamicBatcher(model_stages(lambda pairs: pairs), max_batch=4, max_wait_ms=0, max_queued=100,
                             on_idle=on_idle, idle_s=0.1)

    async def body():
        await asyncio.sleep(0.3)  # idle, but nothing was done: nothing to release
        quiet = len(count)
        await asyncio.gather(*(batcher.submit([i]) for i in range(6)))
        await until(released.is_set)
        after_burst = len(count)
        await asyncio.sleep(0.3)  # still idle: released once, not again
        return quiet, after_burst, len(count)

    assert run(_with_batcher(batcher, body)) == (0, 1, 1)


def test_a_failing_request_fails_alone_among_concurrent_ones() -> None:
    # One request whose item the model cannot take, batched with 20 others: the batch fails, each request is run
    # again on its own, and only the poisoned one gets the error.
    calls: list[list[int]] = []

    def model(pairs: list[int]) -> list[int]:
        calls.append(list(pairs))
        if -1 in pairs:
            raise RuntimeError("this item breaks the model")
        return [pair * 10 for pair in pairs]

    batcher = DynamicBatcher(model_stages(model), max_batch=32, max_wait_ms=50, max_queued=100)

    async def body():
        requests = [batcher.submit([i]) for i in range(10)] + [batcher.submit([-1])]
        requests += [batcher.submit([i]) for i in range(10, 20)]
        return await asyncio.gather(*requests, return_exceptions=True)

    outcomes = run(_with_batcher(batcher, body))
    poisoned = outcomes.pop(10)
    assert isinstance(poisoned, BatchFailed) and str(poisoned.__cause__) == "this item breaks the model"
    assert outcomes == [[i * 10] for i in range(20)]
    assert batcher.stats()["isolated_batches"] >= 1


def test_a_failure_in_any_stage_stays_with_its_request() -> None:
    def finish(results: list[int]) -> list[int]:
        if -1 in results:
            raise ValueError("cannot decode this answer")
        return results

    batcher = DynamicBatcher(ModelStages(list, list, finish), max_batch=8, max_wait_ms=50, max_queued=100)

    async def body():
        return await asyncio.gather(batcher.submit([1]), batcher.submit([-1]), batcher.submit([2]),
                                    return_exceptions=True)

    good, bad, other = run(_with_batcher(batcher, body))
    assert (good, other) == ([1], [2])
    assert isinstance(bad, BatchFailed) and str(bad.__cause__) == "cannot decode this answer"


def test_a_model_failure_reaches_the_request_it_belongs_to() -> None:
    def model(pairs: list[int]) -> list[int]:
        raise RuntimeError("out of memory")

    batcher = DynamicBatcher(model_stages(model), max_batch=8, max_wait_ms=20, max_queued=100)

    async def body():
        return await asyncio.gather(batcher.submit([1]), batcher.submit([2]), return_exceptions=True)

    outcomes = run(_with_batcher(batcher, body))
    assert all(isinstance(outcome, BatchFailed) for outcome in outcomes)
    assert all(str(outcome.__cause__) == "out of memory" for outcome in outcomes)  # the model's error, for the log


@dataclass
class StandInCaptioner:
    """Duck-types the Captioner's three steps for the app: fixed answers, and a gate to hold the model busy."""

    gate: threading.Event = field(default_factory=threading.Event)
    fail: bool = False
    model_id: str = "stand-in"
    card: ModelCard = ModelCard("stand-in", "a stand-in", None)
    tile_size: int = 16
    prompt: str = "What changed?"
    device: str = "cpu"
    dtype: str = "torch.float32"

    def prepare(self, work: list) -> list:
        assert all(image.size == (16, 16) and image.mode == "RGB" for tile in work for image in tile.images)
        return work

    def generate(self, work: list) -> list:
        self.gate.wait(10)
        if self.fail:
            raise RuntimeError("the GPU fell off the bus")
        return work

    def finish(self, work: list) -> list[list[CaptionResult]]:
        return [[CaptionResult.from_caption("there is no difference", 0.9)] * tile.pairs for tile in work]


def _app(captioner: StandInCaptioner, **limits: float) -> TestClient:
    settings = ServerSettings(limits=protocol.Limits(**limits), ui=False)
    return TestClient(create_app(captioner, settings), raise_server_exceptions=False)


def _pair() -> dict[str, object]:
    image = encode(random_image(5, (20, 12)))
    return multipart([(image, image)])


def test_request_path_returns_results_and_info() -> None:
    captioner = StandInCaptioner()
    captioner.gate.set()
    with _app(captioner) as client:
        response = client.post(protocol.CAPTIONS_PATH, **_pair())
        assert response.status_code == 200
        assert response.json() == {
            "model_id": "stand-in",
            "results": [{"caption": "there is no difference", "change_detected": False, "confidence": 0.9}],
        }
        info = client.get(protocol.INFO_PATH).json()
        assert (info["dtype"], info["batching"]["pairs"], info["internal_errors"]) == ("float32", 1, 0)


def test_a_slow_model_gives_503_timeout() -> None:
    captioner = StandInCaptioner()  # gate closed: the model does not answer in time
    with _app(captioner, request_timeout_s=0.2) as client:
        response = client.post(protocol.CAPTIONS_PATH, **_pair())
        captioner.gate.set()
    assert response.status_code == 503
    assert response.json()["error"] == protocol.ERROR_TIMEOUT


def test_an_unexpected_failure_is_a_generic_counted_500() -> None:
    captioner = StandInCaptioner(fail=True)
    captioner.gate.set()
    with _app(captioner) as client:
        response = client.post(protocol.CAPTIONS_PATH, **_pair())
        assert response.status_code == 500
        assert response.json() == {
            "error": protocol.ERROR_INTERNAL,
            "detail": "internal error in the backend; see its log",
        }
        assert client.get(protocol.INFO_PATH).json()["internal_errors"] == 1
