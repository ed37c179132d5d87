"""CCExpert on transformers: LLaVA-OneVision with the Difference-aware Integration Module.

Each sample holds one pair of images. ``pixel_values`` has one row per image, the pairs' images interleaved:
(before₁, after₁, before₂, after₂, …) — shape (2B, 3, H, W). Each image contributes N = (H / patch)² tokens;
the prompt holds N image tokens per ``<image>`` placeholder, with no newline token.

Image features are built in two steps, so an image shared by several pairs (a series of dates) goes through the
vision tower once: ``encode_images`` (the tower, any images) and ``pair_image_features`` (the DIM per pair and the
projector, from those hidden states). ``get_image_features`` is the two for interleaved pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionModel,
    LlavaOnevisionPreTrainedModel,
)
from transformers import initialization as init
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from ccexpert_core.model.configuration_ccexpert import BASE_MODEL_TYPE, CCExpertConfig
from ccexpert_core.model.dim import ChangeAwareLayer, ChangeMapHead, DifferenceAwareIntegration, DimLinear
from ccexpert_core.model.processing_ccexpert import normalize_pixels


@dataclass
class CCExpertVisionOutput(ModelOutput):
    """The vision tower's hidden states that image features are built from, one row per image (n images).

    last_hidden_state: (n, N, C) the tower's output.
    features: (n, N, C) the hidden states of ``vision_feature_layer``, the projector's input with the DIM off
        (None with the DIM on: its last level is its residual base).
    levels: (L, n, N, C) the hidden states of the DIM's layers, None with the DIM off.
    """

    last_hidden_state: torch.Tensor | None = None
    features: torch.Tensor | None = None
    levels: torch.Tensor | None = None


@dataclass
class CCExpertImageOutput(BaseModelOutputWithPooling):
    """Vision-side output: ``pooler_output`` is a tuple of per-image (N, d) features ready for the prompt.

    last_hidden_state: the vision tower's output for ``get_image_features``' pixel_values; None from
    ``pair_image_features``, whose pairs may share images.

    change_features: the DIM's change queries (L, B, N, C), None with the DIM off.
    level_weights: the DIM's adaptive level weights (L, B), None with the DIM off.
    change_score: "is anything changed" logits (B,) from the DIM's change summary, None without one.
    change_type_score: "no change, or which kind" logits (B, 1 + K) from the change summary, None without kinds.
    """

    change_features: torch.Tensor | None = None
    level_weights: torch.Tensor | None = None
    change_score: torch.Tensor | None = None
    change_type_score: torch.Tensor | None = None


def _interleave(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(P, …) twice → (2P, …) as first₁, second₁, first₂, second₂, …"""
    return torch.stack((first, second), dim=1).flatten(0, 1)


class CCExpertModel(LlavaOnevisionModel):
    """LLaVA-OneVision's model with the DIM between the vision tower and the projector."""

    config_class = CCExpertConfig
    config: CCExpertConfig

    def __init__(self, config: CCExpertConfig) -> None:
        super().__init__(config)
        assert config.dim_num_heads is not None  # CCExpertConfig sets it from the vision width when not given
        self.dim = (
            DifferenceAwareIntegration(
                width=config.vision_config.hidden_size,
                num_heads=config.dim_num_heads,
                depth=config.dim_depth,
                mlp_ratio=config.dim_mlp_ratio,
                change_summary=config.dim_change_summary,
                num_change_types=len(config.change_types or ()),
            )
            if config.dim_enabled
            else None
        )
        self.change_head = (
            ChangeMapHead(config.vision_config.hidden_size, len(config.change_types or ()))
            if config.change_head
            else None
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """The DIM as the reference initialises it: truncated normal (std 0.02) Linear weights, zero biases,
        LayerNorm (1, 0) (the generic default), type embeddings N(0, 1) like the reference's ``nn.Embedding``.
        Nothing is zero-initialised, so the module changes the features from the first step. The ``init``
        functions leave weights loaded from a checkpoint alone."""
        if isinstance(module, DimLinear):
            init.trunc_normal_(module.weight, std=0.02)
            init.zeros_(module.bias)
        elif isinstance(module, ChangeAwareLayer):
            for embedding in (module.type_image_a, module.type_image_b, module.type_change):
                init.normal_(embedding, std=1.0)
        else:
            super()._init_weights(module)

    def encode_images(
        self, pixel_values: torch.Tensor, vision_feature_layer: int | None = None, **kwargs
    ) -> CCExpertVisionOutput:
        """pixel_values (n, 3, H, W), any n images → the hidden states their features are built from, in one
        vision-tower call. uint8 pixels (the processor's) are normalised here, on the model's device."""
        if pixel_values.dtype == torch.uint8:
            pixel_values = normalize_pixels(pixel_values, self.vision_tower.dtype)
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError("CCExpert selects one vision feature layer (an int); the DIM picks its own levels")
        # Ask only for the hidden states used: the others are not kept (memory at large batches).
        kwargs.update(output_hidden_states=[layer, *self._dim_layers()], return_dict=True)
        vision = self.vision_tower(pixel_values, **kwargs)
        hidden = vision.hidden_states
        if self.dim is None:
            return CCExpertVisionOutput(last_hidden_state=vision.last_hidden_state, features=hidden[layer])
        levels = torch.stack([hidden[i] for i in self._dim_layers()])  # (L, n, N, C)
        return CCExpertVisionOutput(last_hidden_state=vision.last_hidden_state, levels=levels)

    def pair_image_features(
        self, vision: CCExpertVisionOutput, before: torch.Tensor, after: torch.Tensor
    ) -> CCExpertImageOutput:
        """The features of P pairs whose images are rows ``before[k]`` and ``after[k]`` (LongTensors (P,)) of
        ``vision``: the DIM sees each pair exactly as it would in a pair run. ``pooler_output`` holds 2P (N, d)
        features, pairs in order, before and after interleaved (the prompt's order)."""
        change = weights = score = kind = None
        if self.dim is None:
            assert vision.features is not None  # encode_images keeps the features where there is no DIM
            features = _interleave(vision.features[before], vision.features[after])
        else:
            assert vision.levels is not None  # and the DIM's levels where there is one
            out = self.dim(vision.levels[:, before], vision.levels[:, after])
            features = _interleave(out.image_a, out.image_b)
            change, weights, score, kind = out.change, out.level_weights, out.change_score, out.change_type_score
        projected = self.multi_modal_projector(features)
        return CCExpertImageOutput(
            # transformers types pooler_output as a Tensor; its own LLaVA-OneVision puts per-image features there as
            # a tuple too, which its forward concatenates.
            pooler_output=tuple(projected),  # type: ignore[arg-type]
            change_features=change,
            level_weights=weights,
            change_score=score,
            change_type_score=kind,
        )

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.Tensor | None = None,
        **kwargs,
    ) -> CCExpertImageOutput:
        """pixel_values (2B, 3, H, W), pairs interleaved → per-image projected features (N, d), in order.

        With the DIM off this is the stock vision tower (``vision_feature_layer``) + projector, image by image.
        """
        if pixel_values.dim() != 4 or pixel_values.shape[0] % 2:
            raise ValueError(
                "pixel_values must be (2·pairs, 3, H, W) with before/after interleaved, "
                f"got {tuple(pixel_values.shape)}"
            )
        vision = self.encode_images(pixel_values, vision_feature_layer, **kwargs)
        before = torch.arange(0, pixel_values.shape[0], 2, device=pixel_values.device)
        output = self.pair_image_features(vision, before, before + 1)
        output.last_hidden_state = vision.last_hidden_state
        return output

    def _dim_layers(self) -> list[int]:
        if self.dim is None:
            return []
        assert self.config.dim_vision_layers is not None  # CCExpertConfig sets the default levels when not given
        return list(self.config.dim_vision_layers)


class CCExpertForConditionalGeneration(LlavaOnevisionForConditionalGeneration):
    """CCExpert for caption generation: ``from_pretrained`` takes a CCExpert folder or a LLaVA-OneVision base
    folder (every base weight loaded, the DIM freshly initialised)."""

    config_class = CCExpertConfig
    config: CCExpertConfig

    def __init__(self, config: CCExpertConfig) -> None:
        # The stock __init__ would build a plain LlavaOnevisionModel first, only to replace it.
        LlavaOnevisionPreTrainedModel.__init__(self, config)
        self.model = CCExpertModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def change_logits(
        self, image_outputs: CCExpertImageOutput | None
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Per-token change logits (B, N), row-major over the image grid, and per-token change-type logits
        (B, N, K) (None without ``change_types``), from a forward pass's ``image_outputs``; None without a
        change-map head (or without images in that pass)."""
        head = self.model.change_head
        if head is None or image_outputs is None or getattr(image_outputs, "change_features", None) is None:
            return None
        return head(image_outputs.change_features)


def _register() -> None:
    """Make the Auto classes and transformers' checkpoint key renaming know CCExpert (idempotent)."""
    AutoConfig.register(CCExpertConfig.model_type, CCExpertConfig, exist_ok=True)
    AutoModel.register(CCExpertConfig, CCExpertModel, exist_ok=True)
    AutoModelForImageTextToText.register(CCExpertConfig, CCExpertForConditionalGeneration, exist_ok=True)
    # Custom classes don't get the library's renaming of LLaVA-OneVision checkpoint keys; without it the language
    # model would load as missing, i.e. silently random.
    register_checkpoint_conversion_mapping(
        CCExpertConfig.model_type, get_checkpoint_conversion_mapping(BASE_MODEL_TYPE), overwrite=True
    )


_register()
