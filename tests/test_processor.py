"""The pair processor: image preparation, the reference prompt, token layout, labels."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ccexpert_core.errors import CCExpertError
from ccexpert_core.model.processing_ccexpert import IMAGE_MEAN, IMAGE_STD, PairProcessor, load_rgb, normalize_pixels
from ccexpert_core.model.tokenizer import build_word_tokenizer


@pytest.fixture(scope="module")
def processor() -> PairProcessor:
    return PairProcessor(build_word_tokenizer(), image_size=384, tokens_per_image=729)


def test_prompt_is_the_reference_prompt_in_chatml(processor: PairProcessor) -> None:
    assert processor.prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nThis is the Image1 <image>. This is the second Image2 <image>.\n"
        "What difference happened from Image1 to Image2?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_each_image_gets_729_consecutive_tokens_and_no_newline_token(processor: PairProcessor) -> None:
    ids = processor([(np.zeros((256, 256, 3), np.uint8),) * 2])["input_ids"][0].tolist()
    image_positions = [i for i, t in enumerate(ids) if t == processor.image_token_id]
    assert len(image_positions) == 2 * 729
    runs = np.split(np.array(image_positions), np.where(np.diff(image_positions) != 1)[0] + 1)
    assert [len(run) for run in runs] == [729, 729]
    assert runs[0][-1] + 1 < runs[1][0]  # the text between the images separates the two runs


def test_pixels_are_bicubic_384_uint8_and_normalised_as_siglip_wants(processor: PairProcessor, levircc_pair) -> None:
    before, _ = levircc_pair
    pixels = processor.pixel_values([before])
    assert pixels.shape == (1, 3, 384, 384) and pixels.dtype == torch.uint8
    resized = np.array(Image.open(before).convert("RGB").resize((384, 384), Image.Resampling.BICUBIC))
    assert torch.equal(pixels[0], torch.from_numpy(resized).permute(2, 0, 1))
    # The normalisation the model applies on its device is, value for value, the float32 one the CPU used to do.
    as_float = torch.from_numpy(resized.astype(np.float32)).permute(2, 0, 1)[None]
    assert torch.equal(normalize_pixels(pixels, torch.float32), (as_float / 255.0 - IMAGE_MEAN) / IMAGE_STD)
    assert normalize_pixels(pixels, torch.bfloat16).dtype == torch.bfloat16
    normalised = normalize_pixels(pixels, torch.float32)
    assert normalised.min() >= -1 and normalised.max() <= 1


def test_paths_pil_images_and_arrays_give_the_same_pixels(processor: PairProcessor, levircc_pair) -> None:
    path = levircc_pair[0]
    image = Image.open(path)
    from_path, from_pil, from_array = (
        processor.pixel_values([x]) for x in (path, image, np.asarray(image.convert("RGB")))
    )
    assert torch.equal(from_path, from_pil) and torch.equal(from_path, from_array)


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_one_band_and_rgba_images_become_rgb_with_a_note(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    image = Image.new(mode, (40, 30), 120)
    with caplog.at_level(logging.WARNING):
        rgb = load_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (40, 30)
    assert "converted to RGB" in caplog.text


def test_sixteen_bit_image_is_stretched_not_clipped() -> None:
    values = np.linspace(0, 4000, 64 * 64).reshape(64, 64).astype(np.uint16)
    rgb = np.asarray(load_rgb(Image.fromarray(values)))
    assert rgb.min() == 0 and rgb.max() == 255


def test_unreadable_missing_and_malformed_inputs_are_refused_clearly(tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(CCExpertError, match="cannot read image .*broken.png"):
        load_rgb(corrupt)
    with pytest.raises(CCExpertError, match="image not found"):
        load_rgb(tmp_path / "absent.png")
    with pytest.raises(CCExpertError, match="uint8"):
        load_rgb(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(CCExpertError, match="H×W"):
        load_rgb(np.zeros((8, 8, 5), np.uint8))


def test_generation_batches_are_left_padded(processor: PairProcessor) -> None:
    pair = (np.zeros((32, 32, 3), np.uint8),) * 2
    batch = processor([pair, pair])
    assert batch["attention_mask"].all()  # same prompt: no padding needed
    assert batch["pixel_values"].shape[0] == 4  # one row per image, pairs interleaved


def test_training_labels_cover_the_answer_and_end_of_turn_only(processor: PairProcessor) -> None:
    pair = (np.zeros((32, 32, 3), np.uint8),) * 2
    batch = processor([pair, pair], answers=["two buildings have been built", "there is no difference"])
    for row, answer in enumerate(["two buildings have been built", "there is no difference"]):
        labels = batch["labels"][row]
        supervised = labels[labels != -100].tolist()
        assert supervised[-1] == processor.end_of_turn_id
        assert processor.decode(supervised) == answer
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        assert ids[: len(processor._prompt_ids)].tolist() == processor._prompt_ids
    assert batch["attention_mask"][1, -1] == 0  # right padding for training
