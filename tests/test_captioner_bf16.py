"""bf16 batches: batched == one at a time, left-padded rows included, never a NaN or empty caption."""

from __future__ import annotations

import pytest
import torch

from ccexpert_core.data.synthetic import SceneGenerator
from ccexpert_core.defaults import DEMO_MODEL_DIR
from ccexpert_core.inference import Captioner, PreparedBatch

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
def prepared(captioner: Captioner) -> PreparedBatch:
    scenes = SceneGenerator(seed=3)
    return captioner.prepare([(p.before, p.after) for p in (scenes.pair(i) for i in range(len(PREFIXES)))])


def rows_of_different_lengths(prepared: PreparedBatch) -> list[torch.Tensor]:
    prompt = prepared.input_ids[0]
    return [torch.cat((prompt[:extra], prompt)) for extra in PREFIXES]


def left_padded(rows: list[torch.Tensor], pixel_values: torch.Tensor, pad: int) -> PreparedBatch:
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for index, row in enumerate(rows):
        input_ids[index, width - len(row) :] = row
        attention_mask[index, width - len(row) :] = 1
    return PreparedBatch(input_ids, attention_mask, pixel_values)


def test_bf16_batch_equals_one_at_a_time(captioner: Captioner, prepared: PreparedBatch) -> None:
    assert captioner.dtype == torch.bfloat16
    batched = captioner.caption_prepared(prepared)
    single = [
        captioner.caption_prepared(PreparedBatch(prepared.input_ids[i : i + 1], prepared.attention_mask[i : i + 1],
                                                 prepared.pixel_values[2 * i : 2 * i + 2]))[0]
        for i in range(len(prepared))
    ]
    assert [r.caption for r in batched] == [r.caption for r in single]
    assert [r.confidence for r in batched] == pytest.approx([r.confidence for r in single], abs=1e-3)
    assert all(r.caption and 0.0 < r.confidence <= 1.0 for r in batched)


def test_bf16_left_padded_rows_equal_one_at_a_time(captioner: Captioner, prepared: PreparedBatch) -> None:
    pad = captioner.processor.tokenizer.pad_token_id
    rows = rows_of_different_lengths(prepared)
    batch = left_padded(rows, prepared.pixel_values, pad)
    assert (batch.attention_mask == 0).sum(dim=1).tolist() == [max(PREFIXES) - extra for extra in PREFIXES]
    batched = captioner.caption_prepared(batch)
    single = [
        captioner.caption_prepared(
            PreparedBatch(row[None], torch.ones_like(row)[None], prepared.pixel_values[2 * i : 2 * i + 2])
        )[0]
        for i, row in enumerate(rows)
    ]
    # Row 0, the most padded, among them: a NaN there would have raised CaptionError instead.
    assert [r.caption for r in batched] == [r.caption for r in single]
    assert [r.confidence for r in batched] == pytest.approx([r.confidence for r in single], abs=1e-3)
