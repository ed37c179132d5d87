"""Named model shapes: ``tiny`` (CPU tests, random weights), ``demo`` (the small model trained here on synthetic
scenes, with a change-map head), ``0.5b`` and ``7b`` (the paper's; for counting on the meta device, or to lay out
a fresh model on a GPU machine)."""

from __future__ import annotations

from typing import Any, TypedDict, Unpack

from transformers import Qwen2Config, SiglipVisionConfig

from ccexpert_core.data.synthetic import CHANGE_TYPES
from ccexpert_core.errors import CCExpertError
from ccexpert_core.model.configuration_ccexpert import CCExpertConfig

#: SigLIP-so400m/14 at 384 px as llava-hf keeps it (26 layers, no head).
_SIGLIP_SO400M = dict(
    hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16, patch_size=14,
    image_size=384, vision_use_head=False,
)
_QWEN2_0_5B = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    vocab_size=152000, max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True,
)
_QWEN2_7B = dict(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
    vocab_size=152128, max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=False,
)
#: Random weights with the real token geometry (729 tokens per image): about 0.3 s a pair on two CPU cores,
#: most of it generating the full 40 tokens (an untrained model never stops early).
_TINY_VISION = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, patch_size=14,
    image_size=384, vision_use_head=False,
)
_TINY_TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=4096, tie_word_embeddings=True,
)

#: The demo model trained on these CPUs (patch 32: 144 tokens per image; ~3M parameters).
_DEMO_VISION = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, patch_size=32,
    image_size=384, vision_use_head=False,
)
_DEMO_TEXT = dict(
    hidden_size=192, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=1024, tie_word_embeddings=True,
)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vision=_TINY_VISION, text=_TINY_TEXT, dim=dict(dim_num_heads=4)),
    "demo": dict(
        vision=_DEMO_VISION,
        text=_DEMO_TEXT,
        # Two levels of the 4-layer tower (not four): the DIM is most of a training step's cost on a CPU. The
        # synthetic generator's kinds of change are told apart by the change head and summary.
        dim=dict(
            dim_num_heads=4, dim_vision_layers=[2, 4], change_head=True, dim_change_summary=True,
            change_types=list(CHANGE_TYPES),
        ),
    ),
    "0.5b": dict(vision=_SIGLIP_SO400M, text=_QWEN2_0_5B, dim={}, image_token_index=151646),
    "7b": dict(vision=_SIGLIP_SO400M, text=_QWEN2_7B, dim={}, image_token_index=151646),
}

#: Base checkpoints on the Hugging Face hub that the real presets correspond to.
BASE_CHECKPOINTS = {
    "0.5b": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
    "7b": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
}


class DimOverrides(TypedDict, total=False):
    """The DIM's settings a preset's model may be built with instead of the preset's (see :class:`CCExpertConfig`)."""

    dim_enabled: bool
    dim_vision_layers: list[int] | None
    dim_depth: int
    dim_num_heads: int | None
    dim_mlp_ratio: int
    dim_change_summary: bool
    change_head: bool
    change_types: list[str] | None


class ConfigOverrides(DimOverrides, total=False):
    """The config fields :func:`preset_config` sets besides the preset's: the DIM's and the tokenizer's special
    token ids (a model built here has its tokenizer's)."""

    pad_token_id: int | None
    eos_token_id: int | None


def preset_config(
    name: str, *, vocab_size: int | None = None, image_token_index: int | None = None,
    **overrides: Unpack[ConfigOverrides],
) -> CCExpertConfig:
    """The CCExpertConfig of a preset. ``tiny`` and ``demo`` need their tokenizer's ``vocab_size`` and
    ``image_token_index``;
    ``overrides`` set any config field (e.g. ``dim_enabled=False`` for the paper's baseline)."""
    if name not in PRESETS:
        raise CCExpertError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    text = dict(preset["text"])
    if vocab_size is not None:
        text["vocab_size"] = vocab_size
    if "vocab_size" not in text:
        raise ValueError(f"preset '{name}' needs a vocab_size (its tokenizer's)")
    token = image_token_index if image_token_index is not None else preset.get("image_token_index")
    if token is None:
        raise ValueError(f"preset '{name}' needs an image_token_index (its tokenizer's <image> id)")
    return CCExpertConfig(
        vision_config=SiglipVisionConfig(**preset["vision"]),
        text_config=Qwen2Config(**text),
        image_token_index=token,
        tie_word_embeddings=text["tie_word_embeddings"],
        **{**preset["dim"], **overrides},
    )
