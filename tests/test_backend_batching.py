"""The batcher and the request path in-process, with a stand-in model: grouping, deadlines, a full queue, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.batching import BatchFailed, DeadlineMissed, DynamicBatcher, QueueFull
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


def test_concurrent_submits_share_batches_and_keep_their_own_results() -> None:
    calls: list[list[int]] = []

    def model(pairs: list[int]) -> list[int]:
        calls.append(list(pairs))
        return [pair * 10 for pair in pairs]

    batcher = DynamicBatcher(model, max_batch=4, max_wait_ms=50, max_queued=100)

    async def body():
        return await asyncio.gather(*(batcher.submit([3 * i, 3 * i + 1, 3 * i + 2]) for i in range(3)))

    results = run(_with_batcher(batcher, body))
    assert results == [[0, 10, 20], [30, 40, 50], [60, 70, 80]]
    assert all(len(call) <= 4 for call in calls)
    assert sorted(pair for call in calls for pair in call) == list(range(9))
    assert len(calls) == 3  # 9 pairs in batches of at most 4: 4 + 4 + 1
    stats = batcher.stats()
    assert (stats["batches"], stats["pairs"], stats["max_batch_size"]) == (3, 9, 4)


def test_max_batch_one_never_merges() -> None:
    calls: list[list[int]] = []
    batcher = DynamicBatcher(lambda pairs: calls.append(pairs) or pairs, max_batch=1, max_wait_ms=50, max_queued=100)

    async def body():
        return await asyncio.gather(*(batcher.submit([i]) for i in range(5)))

    assert run(_with_batcher(batcher, body)) == [[i] for i in range(5)]
    assert [len(call) for call in calls] == [1] * 5


def test_a_withdrawn_request_is_skipped_and_a_full_queue_refused() -> None:
    release = threading.Event()
    calls: list[list[str]] = []

    def model(pairs: list[str]) -> list[str]:
        calls.append(list(pairs))
        release.wait(10)
        return pairs

    batcher = DynamicBatcher(model, max_batch=2, max_wait_ms=0, max_queued=3)

    async def body():
        blocking = asyncio.ensure_future(batcher.submit(["first"]))
        await asyncio.sleep(0.05)  # the model is now busy with "first"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.submit(["late-1", "late-2"]), 0.05)
        waiting = asyncio.ensure_future(batcher.submit(["kept"]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit(["x", "y", "z"])
        release.set()
        return await blocking, await waiting

    assert run(_with_batcher(batcher, body)) == (["first"], ["kept"])
    assert calls == [["first"], ["kept"]]  # the timed-out request never reached the model


def test_pairs_that_cannot_be_done_in_time_are_never_computed() -> None:
    # 30 one-pair requests at once, 2.2 s each, on a model taking 0.4 s per pair. Batches used to take whatever was
    # waiting (16 pairs: 6.4 s, every request long gone: pairs computed, no result delivered). Now a batch holds what
    # can be done before its earliest deadline, and the rest is refused at once.
    calls: list[int] = []

    def model(pairs: list[int]) -> list[int]:
        calls.append(len(pairs))
        time.sleep(0.4 * len(pairs))
        return pairs

    batcher = DynamicBatcher(model, max_batch=16, max_wait_ms=10, max_queued=100)

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
    release = threading.Event()
    calls: list[list[str]] = []

    def model(pairs: list[str]) -> list[str]:
        calls.append(list(pairs))
        release.wait(10)
        return pairs

    batcher = DynamicBatcher(model, max_batch=8, max_wait_ms=0, max_queued=100)

    async def body():
        busy = asyncio.ensure_future(batcher.submit(["first"]))
        await asyncio.sleep(0.05)  # the model is now busy with "first"
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            await batcher.submit(["a", "b", "c"], loop.time() + 0.1)
        left = batcher.stats()
        release.set()
        return await busy, left

    first, left = run(_with_batcher(batcher, body))
    assert first == ["first"] and calls == [["first"]]
    assert (left["queued_pairs"], left["withdrawn_pairs"]) == (0, 3)  # gone before the collector came back


def test_memory_is_released_once_after_each_burst() -> None:
    released: list[float] = []
    batcher = DynamicBatcher(
        lambda pairs: pairs, max_batch=4, max_wait_ms=0, max_queued=100, on_idle=lambda: released.append(1), idle_s=0.1
    )

    async def body():
        await asyncio.sleep(0.3)  # idle, but nothing was done: nothing to release
        quiet = len(released)
        await asyncio.gather(*(batcher.submit([i]) for i in range(6)))
        await asyncio.sleep(0.5)
        after_burst = len(released)
        await asyncio.sleep(0.3)
        return quiet, after_burst, len(released)

    assert run(_with_batcher(batcher, body)) == (0, 1, 1)


def test_a_model_failure_reaches_every_request_of_its_batch() -> None:
    def model(pairs: list[int]) -> list[int]:
        raise RuntimeError("out of memory")

    batcher = DynamicBatcher(model, max_batch=8, max_wait_ms=20, max_queued=100)

    async def body():
        return await asyncio.gather(batcher.submit([1]), batcher.submit([2]), return_exceptions=True)

    outcomes = run(_with_batcher(batcher, body))
    assert all(isinstance(outcome, BatchFailed) for outcome in outcomes)
    assert all(str(outcome.__cause__) == "out of memory" for outcome in outcomes)  # the model's error, for the log


@dataclass
class StandInCaptioner:
    """Duck-types the Captioner for the app: fixed answers, and a gate to hold the model busy."""

    gate: threading.Event = field(default_factory=threading.Event)
    fail: bool = False
    model_id: str = "stand-in"
    card: ModelCard = ModelCard("stand-in", "a stand-in", None)
    tile_size: int = 16
    prompt: str = "What changed?"
    device: str = "cpu"
    dtype: str = "torch.float32"

    def caption(self, pairs, batch_size: int) -> list[CaptionResult]:
        assert all(image.size == (16, 16) and image.mode == "RGB" for pair in pairs for image in pair)
        self.gate.wait(10)
        if self.fail:
            raise RuntimeError("the GPU fell off the bus")
        return [CaptionResult.from_caption("there is no difference", 0.9) for _ in pairs]


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
