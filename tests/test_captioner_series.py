"""Series of dates: each image through the vision tower once, each interval captioned as its pair alone would be."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccexpert_core.data.synthetic import SceneGenerator
from ccexpert_core.defaults import DEMO_MODEL_DIR
from ccexpert_core.errors import CCExpertError
from ccexpert_core.inference import Captioner
from ccexpert_core.model import build_tiny_model
from ccexpert_core.series import TileWork

INTERVALS = [(0, 1), (1, 2), (2, 3)]


@pytest.fixture(scope="module")
def captioner() -> Captioner:
    if not (DEMO_MODEL_DIR / "config.json").is_file():
        pytest.skip("no demo model in ccexpert_core/demo_model")
    return Captioner.load(DEMO_MODEL_DIR, device="cpu")


@pytest.fixture(scope="module")
def series() -> list[list[np.ndarray]]:
    """Two tiles at four dates (synthetic scenes the demo model reads: unchanged and changed intervals)."""
    scenes = SceneGenerator(seed=21)
    first, second, third = (scenes.pair(i) for i in range(3))
    return [
        [first.before, first.after, first.after, second.before],
        [third.before, third.after, second.after, second.after],
    ]


class TowerCounter:
    """Counts the vision tower's calls and the images they encode."""

    def __init__(self, captioner: Captioner) -> None:
        self.images: list[int] = []
        self.handle = captioner.model.model.vision_tower.register_forward_pre_hook(
            lambda _module, args: self.images.append(args[0].shape[0])
        )

    def __enter__(self) -> TowerCounter:
        return self

    def __exit__(self, *_: object) -> None:
        self.handle.remove()


@pytest.fixture(scope="module")
def runs(captioner: Captioner, series: list) -> dict:
    """The series call and the same intervals as pair calls, with the images each sent through the tower."""
    with TowerCounter(captioner) as by_series:
        results = captioner.caption_series(series, batch_size=8)
    with TowerCounter(captioner) as by_pairs:
        pairs = [captioner.caption([(tile[i], tile[j]) for i, j in INTERVALS], batch_size=8) for tile in series]
    return {"series": results, "pairs": pairs, "series_images": by_series.images, "pair_images": by_pairs.images}


def test_each_image_is_encoded_once_per_series_not_once_per_interval(runs: dict) -> None:
    assert runs["series_images"] == [8]  # one tower call over both tiles' four dates
    assert runs["pair_images"] == [6, 6]  # three intervals as pairs: six images per tile


def test_series_results_equal_the_pair_calls(runs: dict) -> None:
    for by_series, by_pairs in zip(runs["series"], runs["pairs"], strict=True):
        assert [r.caption for r in by_series] == [r.caption for r in by_pairs]
        assert [r.confidence for r in by_series] == pytest.approx([r.confidence for r in by_pairs], abs=1e-5)
        for ours, theirs in zip(by_series, by_pairs):
            assert np.allclose(ours.change_map, theirs.change_map, atol=1e-5)
    # The series has unchanged and changed intervals: the comparison is not between identical answers.
    assert len({r.caption for tile in runs["series"] for r in tile}) > 1


def test_chosen_intervals_come_in_their_order(captioner: Captioner, series: list) -> None:
    intervals = [(1, 3), (0, 2)]
    [tile] = captioner.caption_series(series[:1], intervals=intervals)
    expected = captioner.caption([(series[0][i], series[0][j]) for i, j in intervals])
    assert [r.caption for r in tile] == [r.caption for r in expected]
    assert [r.confidence for r in tile] == pytest.approx([r.confidence for r in expected], abs=1e-5)


def test_small_batches_split_by_tile(captioner: Captioner, series: list) -> None:
    with TowerCounter(captioner) as counter:
        # batch_size counts pairs: three intervals fit once in four, so one tile per model call.
        results = captioner.caption_series(series, intervals=INTERVALS, batch_size=4)
    assert counter.images == [4, 4]
    assert [len(tile) for tile in results] == [3, 3]


def test_images_no_interval_uses_are_not_encoded(captioner: Captioner, series: list) -> None:
    prepared = captioner.prepare([TileWork(tuple(tile), ((0, 3),)) for tile in series])
    assert prepared.pixel_values.shape[0] == 4 and prepared.per_tile == (1, 1)
    assert prepared.before.tolist() == [0, 2] and prepared.after.tolist() == [1, 3]


def test_tiles_asking_for_different_intervals_share_one_model_call(captioner: Captioner, series: list) -> None:
    # What a resumed series or a date covering part of the area sends: tiles of one batch with other intervals.
    work = [TileWork(tuple(series[0]), ((0, 1), (1, 2))), TileWork(tuple(series[1]), ((0, 1),))]
    with TowerCounter(captioner) as counter:
        results = captioner.caption_work(work, batch_size=8)
    assert counter.images == [5]
    assert [len(tile) for tile in results] == [2, 1]
    assert [r.caption for r in results[1]] == [captioner.caption([(series[1][0], series[1][1])])[0].caption]


@pytest.mark.parametrize(
    ("tiles", "intervals", "message"),
    [
        ([["a", "b"], ["a", "b", "c"]], [(1, 2)], "not two dates of 2"),
        ([["a"]], None, "two or more dates"),
        ([["a", "b", "c"]], [(1, 1)], "0 ≤ i < j < 3"),
        ([["a", "b", "c"]], [(0, 3)], "0 ≤ i < j < 3"),
        ([["a", "b", "c"]], [(0, 1), (0, 1)], "repeated"),
    ],
)
def test_bad_series_are_refused(captioner: Captioner, tiles: list, intervals: list | None, message: str) -> None:
    with pytest.raises(CCExpertError, match=message):
        captioner.caption_series(tiles, intervals=intervals)


def test_no_series_gives_no_results(captioner: Captioner) -> None:
    assert captioner.caption_series([]) == []


@pytest.mark.parametrize("dim_enabled", [True, False])
def test_pair_features_from_shared_encodings_equal_get_image_features(dim_enabled: bool) -> None:
    model, processor = build_tiny_model(seed=2, dim_enabled=dim_enabled)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    pairs = [(0, 1), (1, 2), (0, 2)]
    with torch.no_grad():
        expected = model.model.get_image_features(processor.pixel_values([images[k] for pair in pairs for k in pair]))
        vision = model.model.encode_images(processor.pixel_values(images))
        before, after = (torch.tensor(side) for side in zip(*pairs))
        ours = model.model.pair_image_features(vision, before, after)
    assert torch.allclose(torch.stack(ours.pooler_output), torch.stack(expected.pooler_output), atol=1e-5)
    if dim_enabled:
        assert torch.allclose(ours.level_weights, expected.level_weights, atol=1e-6)
