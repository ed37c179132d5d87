"""The Captioner: batching, confidence, the no-change decision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ccexpert_core.captions import CaptionResult, is_no_change, normalize_caption
from ccexpert_core.inference import Captioner


@pytest.fixture(scope="module")
def captioner(tiny_model_dir: Path) -> Captioner:
    return Captioner.load(tiny_model_dir, device="cpu")


def pairs(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(42)
    sizes = [(256, 256), (384, 384), (100, 180), (512, 300), (256, 256)]
    return [
        (rng.integers(0, 256, (*sizes[i % 5], 3), dtype=np.uint8), rng.integers(0, 256, (*sizes[i % 5], 3), dtype=np.uint8))
        for i in range(count)
    ]


def test_batched_and_one_at_a_time_captions_are_identical(captioner: Captioner) -> None:
    inputs = pairs(5)
    batched = captioner.caption(inputs, batch_size=4)
    single = [captioner.caption([pair], batch_size=1)[0] for pair in inputs]
    assert [r.caption for r in batched] == [r.caption for r in single]
    assert [r.confidence for r in batched] == pytest.approx([r.confidence for r in single], rel=1e-4)


def test_results_carry_caption_change_flag_and_confidence(captioner: Captioner, levircc_pair) -> None:
    [result] = captioner.caption([levircc_pair])
    assert isinstance(result, CaptionResult)
    assert 0.0 < result.confidence <= 1.0
    assert result.change_detected == (not is_no_change(result.caption))
    assert captioner.tile_size == 384 and "<image>" in captioner.prompt


def test_no_change_decision_follows_levir_cc_sentences() -> None:
    assert is_no_change("There is no difference .")
    assert is_no_change("the two scenes seem identical")
    assert not is_no_change("two buildings have been built at the top")
    assert normalize_caption("  The scene is the same as before. ") == "the scene is the same as before"
    assert CaptionResult.from_caption("no change has occurred", 0.9).change_detected is False


def test_empty_input_gives_no_results(captioner: Captioner) -> None:
    assert captioner.caption([]) == []
