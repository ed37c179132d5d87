"""Building, saving and loading CCExpert models, with errors a user can act on."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TypedDict, Unpack, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ccexpert_core.errors import CCExpertError
from ccexpert_core.model.configuration_ccexpert import BASE_MODEL_TYPE, CCExpertConfig
from ccexpert_core.model.modeling_ccexpert import CCExpertForConditionalGeneration
from ccexpert_core.model.presets import DimOverrides, preset_config
from ccexpert_core.model.processing_ccexpert import PairProcessor
from ccexpert_core.model.tokenizer import IMAGE_TOKEN, build_word_tokenizer

#: ``--model preset:tiny`` builds a tiny model with random weights in memory (seed 0), for trying things out.
PRESET_PREFIX = "preset:"
KNOWN_MODEL_TYPES = (CCExpertConfig.model_type, BASE_MODEL_TYPE)
#: Presets small enough to build with random weights here; they use a word-level tokenizer built on the spot.
SMALL_PRESETS = ("tiny", "demo")


def processor_for(config: CCExpertConfig, tokenizer_source: str | Path) -> PairProcessor:
    """The pair processor matching a model's image size and tokens per image."""
    return PairProcessor.from_pretrained(tokenizer_source, config.vision_config.image_size, config.tokens_per_image)


class _TokenizerFields(TypedDict):
    vocab_size: int
    image_token_index: int
    pad_token_id: int | None
    eos_token_id: int | None


def _tokenizer_fields(tokenizer: PreTrainedTokenizerBase) -> _TokenizerFields:
    """Config fields that follow from a tokenizer built here."""
    return _TokenizerFields(
        vocab_size=len(tokenizer),
        image_token_index=cast(int, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)),  # one token: one id
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_tiny_model(
    seed: int = 0, **overrides: Unpack[DimOverrides]
) -> tuple[CCExpertForConditionalGeneration, PairProcessor]:
    """A ``tiny`` preset model with random (seeded) weights and its word-level tokenizer."""
    return build_preset_model("tiny", seed=seed, **overrides)


def build_preset_model(
    name: str, seed: int = 0, vocabulary_texts: Iterable[str] = (), **overrides: Unpack[DimOverrides]
) -> tuple[CCExpertForConditionalGeneration, PairProcessor]:
    """A small preset (``tiny``, ``demo``) with random (seeded) weights and a word-level tokenizer that knows
    the words of ``vocabulary_texts`` (e.g. the training captions) besides its base vocabulary."""
    tokenizer = build_word_tokenizer(vocabulary_texts)
    config = preset_config(name, **_tokenizer_fields(tokenizer), **overrides)
    torch.manual_seed(seed)
    model = CCExpertForConditionalGeneration(config).eval()
    processor = PairProcessor(tokenizer, config.vision_config.image_size, config.tokens_per_image)
    return model, processor


def save_model(model: PreTrainedModel, processor: PairProcessor, path: str | Path) -> Path:
    """Write a model folder (config, safetensors weights, tokenizer) that :func:`load_model` reads back."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path)
        processor.save_pretrained(path)
    except OSError as error:
        raise CCExpertError(f"cannot write the model to {path}: {error}") from None
    return path


def _check_model_folder(path: Path) -> None:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CCExpertError(
            f"{path} is not a model folder (no config.json): give a CCExpert or LLaVA-OneVision model folder"
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as error:
        raise CCExpertError(f"cannot read {config_file}: {error}") from None
    if model_type not in KNOWN_MODEL_TYPES:
        raise CCExpertError(
            f"{path} holds a '{model_type}' model, not a CCExpert or LLaVA-OneVision one "
            f"(model_type must be one of {', '.join(KNOWN_MODEL_TYPES)})"
        )


def load_model(
    source: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[CCExpertForConditionalGeneration, PairProcessor]:
    """Load a CCExpert from a local folder, a hub id (where the hub is reachable) or ``preset:tiny``.

    A LLaVA-OneVision base folder (llava-hf layout) loads as a CCExpert with a freshly initialised DIM.
    """
    text = str(source)
    if text.startswith(PRESET_PREFIX):
        name = text[len(PRESET_PREFIX):]
        if name not in SMALL_PRESETS:
            raise CCExpertError(
                f"'{text}': only {', '.join('preset:' + p for p in SMALL_PRESETS)} can be built with random weights"
            )
        model, processor = build_preset_model(name)
        # transformers wraps PreTrainedModel.to in functools.wraps, which typeshed types as no method (no self)
        return model.to(device=device, dtype=dtype), processor  # type: ignore[call-arg]
    path = Path(text).expanduser()
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        if not path.exists():
            raise CCExpertError(f"model folder not found: {path}")
        _check_model_folder(path)
    try:
        model = CCExpertForConditionalGeneration.from_pretrained(str(path if path.exists() else text), dtype=dtype)
        processor = processor_for(model.config, path if path.exists() else text)
    except CCExpertError:
        raise
    except OSError as error:
        raise CCExpertError(
            f"cannot load the model '{text}': {error}. Give a local model folder, or a hub id on a machine that "
            "can reach the hub."
        ) from None
    return model.to(device).eval(), processor  # type: ignore[arg-type]  # PreTrainedModel.to: see above


def count_parameters(model: CCExpertForConditionalGeneration) -> dict[str, int]:
    """Parameter counts: ``total`` (tied weights once), ``vision``, ``language``, ``projector``, ``dim``."""
    inner = model.model

    def count(module: torch.nn.Module | None) -> int:
        return 0 if module is None else sum(p.numel() for p in module.parameters())

    return {
        "total": count(model),
        "vision": count(inner.vision_tower),
        "language": count(inner.language_model) + (0 if model.config.tie_word_embeddings else count(model.lm_head)),
        "projector": count(inner.multi_modal_projector),
        "dim": count(inner.dim),
    }


def preset_on_meta(name: str, **overrides: Unpack[DimOverrides]) -> CCExpertForConditionalGeneration:
    """A preset's model with no memory behind its weights (the meta device): for counting and inspection."""
    if name in SMALL_PRESETS:
        config = preset_config(name, **_tokenizer_fields(build_word_tokenizer()), **overrides)
    else:
        config = preset_config(name, **overrides)
    with torch.device("meta"):
        return CCExpertForConditionalGeneration(config)
