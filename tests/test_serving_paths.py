"""One path for every way a model is served: ``ccexpert serve`` (and its Ray Serve replicas, the same app), the
in-process engine of ``caption-region --model`` (and the Ray Data actors, which hold one), and the Captioner's own
``caption`` (training's evaluation, ``caption-pair``) all go through ``Captioner.prepare`` → ``generate`` →
``finish``, and only ``generate`` runs on the model."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.state import ServerSettings
from ccexpert_core import protocol
from ccexpert_core.defaults import DEMO_MODEL_DIR
from ccexpert_core.geo.engine import InProcessEngine
from ccexpert_core.inference import Captioner
from ccexpert_core.series import TileWork

from backend_server import encode, multipart, random_image

STEPS = ("prepare", "generate", "finish")


@pytest.fixture(scope="module")
def captioner() -> Captioner:
    if not (DEMO_MODEL_DIR / "config.json").is_file():
        pytest.skip("no demo model in ccexpert_core/demo_model")
    return Captioner.load(DEMO_MODEL_DIR, device="cpu")


@pytest.fixture
def steps(captioner: Captioner, monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts the Captioner's steps, and records the threads the model's forward passes ran on."""
    seen: Counter = Counter()
    for name in STEPS:
        original = getattr(captioner, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            seen[_name] += 1
            seen[f"{_name}@{threading.current_thread().name.split('_')[0]}"] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(captioner, name, spy)
    return seen


def images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(count)]


def test_the_backend_runs_each_step_on_a_thread_of_its_own(captioner: Captioner, steps: Counter) -> None:
    with TestClient(create_app(captioner, ServerSettings(ui=False))) as client:
        response = client.post(protocol.CAPTIONS_PATH, **multipart([(encode(random_image(1)), encode(random_image(2)))]))
        assert response.status_code == 200, response.text
        stages = client.get(protocol.INFO_PATH).json()["batching"]["stages"]
    assert (steps["prepare@ccexpert-prepare"], steps["generate@ccexpert-model"], steps["finish@ccexpert-finish"]) == (
        1, 1, 1)
    assert all(stages[name]["calls"] == 1 for name in ("decode", "prepare", "model", "finish"))


def test_the_in_process_engine_and_the_captioner_take_the_same_steps(captioner: Captioner, steps: Counter) -> None:
    engine = InProcessEngine(captioner)
    series = [images(3, seed) for seed in range(2)]
    work = [TileWork(tuple(series[0]), ((0, 1), (1, 2))), TileWork(tuple(series[1]), ((0, 2),))]
    by_engine = engine.caption_prepared(engine.prepare(work, ["a", "b"]))
    assert [steps[name] for name in STEPS] == [1, 1, 1]
    direct = captioner.caption_series(series[:1], [(0, 1), (1, 2)]) + captioner.caption_series(series[1:], [(0, 2)])
    assert [steps[name] for name in STEPS] == [3, 3, 3]
    assert [[r.caption for r in tile] for tile in by_engine] == [[r.caption for r in tile] for tile in direct]
    flat = [r.confidence for tile in by_engine for r in tile]
    assert flat == pytest.approx([r.confidence for tile in direct for r in tile], abs=1e-4)  # batch vs alone


def test_ray_data_actors_hold_the_in_process_engine() -> None:
    from ccexpert_core.geo.ray_runner import _CaptionActor

    if not (DEMO_MODEL_DIR / "config.json").is_file():
        pytest.skip("no demo model in ccexpert_core/demo_model")
    assert isinstance(_CaptionActor(str(DEMO_MODEL_DIR), None).engine, InProcessEngine)
