"""bf16 batches: batched == one at a time, left-padded rows included, never a NaN or empty caption."""

from __future__ import annotations

import pytest
import torch

from ccexpert_core.data.synthetic import SceneGenerator
from ccexpert_core.defaults import DEMO_MODEL_DIR
from ccexpert_core.inference import Captioner, PreparedWork
from ccexpert_core.series import TileWork

#: Extra prompt tokens per row (the start of the system turn, repeated): rows of different lengths, so the batch is
#: left-padded, and the row with the plain prompt is the most padded one. The Captioner's own prompts are all the
#: same length; these rows stand for any prompt that is not.
PREFIXES = [0, 3, 7, 12]


@pytest.fixture(scope="module")
def captioner() -> Captioner:
    if not (DEMO_MODEL_DIR / "config.json").is_file():
        pytest.skip("no demo model in ccexpert_core/demo_model")
    return Captioner.load(DEMO_MODEL_DIR, device="cpu", dtype="bfloat16")


@pytest.fixture(scope="module")
def prepared(captioner: Captioner) -> PreparedWork:
    scenes = SceneGenerator(seed=3)
    return captioner.prepare([TileWork.pair(p.before, p.after) for p in map(scenes.pair, range(len(PREFIXES)))])


def caption(captioner: Captioner, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor):
    """Results of rows of prompts whose pairs are consecutive images of ``pixel_values``, one per row."""
    pairs = len(input_ids)
    work = PreparedWork(pixel_values, torch.arange(0, 2 * pairs, 2), torch.arange(1, 2 * pairs, 2), input_ids,
                        attention_mask, (1,) * pairs)
    return [results[0] for results in captioner.finish(captioner.generate(work))]


def rows_of_different_lengths(prepared: PreparedWork) -> list[torch.Tensor]:
    prompt = prepared.input_ids[0]
    return [torch.cat((prompt[:extra], prompt)) for extra in PREFIXES]


def left_padded(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for index, row in enumerate(rows):
        input_ids[index, width - len(row) :] = row
        attention_mask[index, width - len(row) :] = 1
    return input_ids, attention_mask


def test_bf16_batch_equals_one_at_a_time(captioner: Captioner, prepared: PreparedWork) -> None:
    assert captioner.dtype == torch.bfloat16
    batched = captioner.finish(captioner.generate(prepared))
    batched = [results[0] for results in batched]
    single = [
        caption(captioner, prepared.input_ids[i : i + 1], prepared.attention_mask[i : i + 1],
                prepared.pixel_values[2 * i : 2 * i + 2])[0]
        for i in range(prepared.pairs)
    ]
    assert [r.caption for r in batched] == [r.caption for r in single]
    assert [r.confidence for r in batched] == pytest.approx([r.confidence for r in single], abs=1e-3)
    assert all(r.caption and 0.0 < r.confidence <= 1.0 for r in batched)


def test_bf16_left_padded_rows_equal_one_at_a_time(captioner: Captioner, prepared: PreparedWork) -> None:
    pad = captioner.processor.tokenizer.pad_token_id
    rows = rows_of_different_lengths(prepared)
    input_ids, attention_mask = left_padded(rows, pad)
    assert (attention_mask == 0).sum(dim=1).tolist() == [max(PREFIXES) - extra for extra in PREFIXES]
    batched = caption(captioner, input_ids, attention_mask, prepared.pixel_values)
    single = [
        caption(captioner, row[None], torch.ones_like(row)[None], prepared.pixel_values[2 * i : 2 * i + 2])[0]
        for i, row in enumerate(rows)
    ]
    # Row 0, the most padded, among them: a NaN there would have raised CaptionError instead.
    assert [r.caption for r in batched] == [r.caption for r in single]
    assert [r.confidence for r in batched] == pytest.approx([r.confidence for r in single], abs=1e-3)
