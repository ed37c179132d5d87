"""Conversion from the reference implementation's checkpoint layout, on a tiny checkpoint written in that layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from ccexpert_cli.main import main
from ccexpert_core.errors import CCExpertError
from ccexpert_core.model import build_tiny_model, load_model
from ccexpert_core.model.convert_reference import convert_reference_checkpoint

#: Our key → the reference's (LLaVA-NeXT + CC_expert module names), written independently of the converter.
TO_REFERENCE = [
    (r"^model\.language_model\.", "model."),
    (r"^model\.vision_tower\.", "model.vision_tower.vision_tower.vision_model."),
    (r"^model\.multi_modal_projector\.linear_1\.", "model.mm_projector.0."),
    (r"^model\.multi_modal_projector\.linear_2\.", "model.mm_projector.2."),
    (r"^model\.dim\.change_init\.gate\.", "model.vision_resampler.expert_change_feature_extractor_model.linear_mapping."),
    (r"^model\.dim\.change_init\.proj\.", "model.vision_resampler.expert_change_feature_extractor_model.proj."),
    (r"^model\.dim\.adjust\.gate\.", "model.vision_resampler.ChangeAwareTokenReduce.feature_map_level_gate."),
    (r"\.change_to_images_attn\.", ".cross_attn_change_to_imageABC."),
    (r"\.images_to_change_attn\.", ".cross_attn_imageAB_to_change."),
    (r"\.mlp\.0\.", ".mlp.lin1."),
    (r"\.mlp\.2\.", ".mlp.lin2."),
    (r"\.type_image_a$", ".image_a_flag_embed.weight"),
    (r"\.type_image_b$", ".image_b_flag_embed.weight"),
    (r"\.type_change$", ".change_flag_embed.weight"),
    (r"^model\.dim\.layers\.", "model.vision_resampler.layers."),
]
REFERENCE_VOCAB_SHORTFALL = 3  # the -hf vocabulary adds a few tokens (image, video) to the reference's


def to_reference_layout(model) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        for pattern, replacement in TO_REFERENCE:
            key = re.sub(pattern, replacement, key)
        state[key] = value.clone()
    embed = "model.embed_tokens.weight"
    state[embed] = state[embed][:-REFERENCE_VOCAB_SHORTFALL].clone()
    width = model.config.vision_config.hidden_size
    layers = model.config.vision_config.num_hidden_layers
    prefix = "model.vision_tower.vision_tower.vision_model."
    # What the reference also saves: SigLIP's 27th layer and head, unused DIM modules, the unused cc projector.
    for key in [k for k in state if k.startswith(f"{prefix}encoder.layers.{layers - 1}.")]:
        state[key.replace(f"layers.{layers - 1}.", f"layers.{layers}.")] = torch.randn_like(state[key])
    state[f"{prefix}head.probe"] = torch.randn(1, 1, width)
    state["model.vision_resampler.layers.0.norm4.weight"] = torch.ones(width)
    state["model.vision_resampler.ChangeAwareTokenReduce.change_for_key_proj.weight"] = torch.randn(width, width)
    state["model.vision_resampler.ChangeAwareTokenReduce.cross_attn.in_proj_weight"] = torch.randn(3 * width, width)
    state["model.mm_cc_projector.0.weight"] = torch.randn(4, width)
    return state


@pytest.fixture(scope="module")
def reference_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    model, processor = build_tiny_model(seed=21)
    root = tmp_path_factory.mktemp("convert")
    config = LlavaOnevisionConfig(**{k: v for k, v in model.config.to_dict().items() if not k.startswith("dim_")})
    LlavaOnevisionForConditionalGeneration(config).save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    # The reference always uses width/128 heads, which a 64-wide tiny model cannot: tell the base config.
    config_file = root / "base" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "dim_num_heads": 4}))
    (root / "reference").mkdir()
    state = to_reference_layout(model)
    save_file({k: v.contiguous() for k, v in state.items()}, root / "reference" / "model.safetensors")
    return model, processor, root


def test_conversion_round_trip_gives_the_same_model(reference_checkpoint) -> None:
    original, processor, root = reference_checkpoint
    convert_reference_checkpoint(root / "reference", root / "converted", root / "base")
    converted, converted_processor = load_model(root / "converted")
    kept = original.config.text_config.vocab_size - REFERENCE_VOCAB_SHORTFALL
    for key, value in original.state_dict().items():
        got = converted.state_dict()[key]
        if key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(got[:kept], value[:kept]), key
        else:
            assert torch.equal(got, value), key
    pair = [tuple(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2))]
    with torch.no_grad():
        expected = original(**processor(pair)).logits[..., :kept]
        actual = converted(**converted_processor(pair)).logits[..., :kept]
    assert torch.equal(expected, actual)


def test_convert_reference_command(reference_checkpoint, capsys: pytest.CaptureFixture) -> None:
    _, _, root = reference_checkpoint
    assert main(["convert-reference", str(root / "reference"), str(root / "cli-out"), "--base", str(root / "base")]) == 0
    assert (root / "cli-out" / "config.json").is_file()
    assert main(["convert-reference", str(root / "nowhere"), str(root / "x"), "--base", str(root / "base")]) == 2
    assert "reference checkpoint folder not found" in capsys.readouterr().err


def test_unknown_reference_keys_are_an_error_not_a_silent_drop(reference_checkpoint, tmp_path: Path) -> None:
    _, _, root = reference_checkpoint
    (tmp_path / "ref").mkdir()
    save_file({"model.something_else.weight": torch.zeros(2)}, tmp_path / "ref" / "model.safetensors")
    with pytest.raises(CCExpertError, match="unknown key .*something_else"):
        convert_reference_checkpoint(tmp_path / "ref", tmp_path / "out", root / "base")
