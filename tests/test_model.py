"""CCExpert's model classes on transformers: the baseline switch, saving and loading, base checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from ccexpert_core.model import CCExpertForConditionalGeneration, build_tiny_model, load_model, save_model
from ccexpert_core.model.processing_ccexpert import normalize_pixels


def random_pairs(count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [tuple(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(2)) for _ in range(count)]


def stock_twin(model: CCExpertForConditionalGeneration) -> LlavaOnevisionForConditionalGeneration:
    """A stock LLaVA-OneVision with the same shapes and (DIM aside) the same weights."""
    config = LlavaOnevisionConfig(**{k: v for k, v in model.config.to_dict().items() if not k.startswith("dim_")})
    stock = LlavaOnevisionForConditionalGeneration(config).eval()
    missing, unexpected = stock.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(key.startswith("model.dim.") for key in unexpected)
    return stock


def test_dim_off_is_bit_for_bit_the_stock_vision_tower_and_projector() -> None:
    model, processor = build_tiny_model(seed=3, dim_enabled=False)
    assert model.model.dim is None
    stock = stock_twin(model)
    pixels = processor.pixel_values([image for pair in random_pairs(2) for image in pair])
    with torch.no_grad():
        ours = torch.stack(model.model.get_image_features(pixels).pooler_output)
        # The stock tower takes normalised floats: CCExpert normalises the processor's uint8 pixels itself.
        hidden = stock.model.vision_tower(normalize_pixels(pixels, torch.float32), output_hidden_states=True).hidden_states[-1]
        expected = stock.model.multi_modal_projector(hidden)
    assert torch.equal(ours, expected)
    assert ours.shape == (4, model.config.tokens_per_image, model.config.text_config.hidden_size)


def test_dim_on_changes_the_features_of_each_image() -> None:
    model, processor = build_tiny_model(seed=3)
    stock = stock_twin(model)
    pixels = processor.pixel_values([image for pair in random_pairs(1) for image in pair])
    with torch.no_grad():
        out = model.model.get_image_features(pixels)
        floats = normalize_pixels(pixels, torch.float32)
        plain = stock.model.multi_modal_projector(stock.model.vision_tower(floats, output_hidden_states=True).hidden_states[-1])
    assert not torch.allclose(torch.stack(out.pooler_output), plain)
    assert out.level_weights.shape == (4, 1)
    assert out.change_features.shape[:2] == (4, 1)


def test_save_and_load_give_identical_logits(tmp_path: Path) -> None:
    model, processor = build_tiny_model(seed=5)
    inputs = processor(random_pairs(2, seed=1))
    with torch.no_grad():
        before = model(**inputs).logits
    save_model(model, processor, tmp_path / "m")
    loaded, loaded_processor = load_model(tmp_path / "m")
    assert type(loaded) is CCExpertForConditionalGeneration
    with torch.no_grad():
        after = loaded(**loaded_processor(random_pairs(2, seed=1))).logits
    assert torch.equal(before, after)


def test_auto_class_loads_a_saved_ccexpert_as_ccexpert(tiny_model_dir: Path) -> None:
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert type(model) is CCExpertForConditionalGeneration
    assert model.model.dim is not None


def test_llava_onevision_base_folder_loads_every_base_weight_and_a_fresh_dim(tmp_path: Path) -> None:
    ours, processor = build_tiny_model(seed=7)
    base = stock_twin(ours)
    torch.manual_seed(11)
    for parameter in base.parameters():  # weights distinct from ours, so a silent re-init would show
        parameter.data.normal_()
    base.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")

    model, info = CCExpertForConditionalGeneration.from_pretrained(tmp_path / "base", output_loading_info=True)
    assert type(model) is CCExpertForConditionalGeneration and model.config.model_type == "ccexpert"
    assert info["missing_keys"] and all(key.startswith("model.dim.") for key in info["missing_keys"])
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    base_state = base.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("model.dim."):
            assert torch.isfinite(value).all(), key
        else:
            assert torch.equal(value, base_state[key]), f"{key} was not loaded from the base checkpoint"
    dim_linear = model.model.dim.change_init.gate.weight
    assert 0.01 < dim_linear.std().item() < 0.03  # truncated normal, std 0.02, as the reference initialises

    loaded, loaded_processor = load_model(tmp_path / "base")
    with torch.no_grad():
        assert torch.isfinite(loaded(**loaded_processor(random_pairs(1))).logits).all()


def test_baseline_checkpoint_saves_and_loads_without_dim(tmp_path: Path) -> None:
    model, processor = build_tiny_model(dim_enabled=False)
    save_model(model, processor, tmp_path / "baseline")
    loaded, _ = load_model(tmp_path / "baseline")
    assert loaded.config.dim_enabled is False and loaded.model.dim is None


def test_pixel_values_must_hold_pairs() -> None:
    model, processor = build_tiny_model()
    pixels = processor.pixel_values([random_pairs(1)[0][0]])
    with pytest.raises(ValueError, match="interleaved"):
        model.model.get_image_features(pixels)
