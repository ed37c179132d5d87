"""Convert a checkpoint of the CCExpert reference implementation (LLaVA-NeXT layout) to this project's layout.

The reference (``Meize0729/CCExpert``, transformers 4.40) saves ``model.layers.*`` for Qwen2, a 27-layer SigLIP
with its head under ``model.vision_tower.vision_tower.*``, ``model.mm_projector.0/2`` and the DIM as
``model.vision_resampler.*``. The published weights live outside the hub, so the vision and text shapes and the
tokenizer (with its ``<image>`` token) come from the matching llava-hf LLaVA-OneVision base folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from ccexpert_core.errors import CCExpertError
from ccexpert_core.model.configuration_ccexpert import CCExpertConfig
from ccexpert_core.model.loading import processor_for, save_model
from ccexpert_core.model.modeling_ccexpert import CCExpertForConditionalGeneration

_DIM = r"^model\.vision_resampler\."
_LAYER = _DIM + r"layers\.(\d+)\."

#: (reference key pattern, this project's key); the first pattern that matches renames the key.
RENAMES: tuple[tuple[str, str], ...] = (
    (r"^model\.(embed_tokens|layers|norm)\.", r"model.language_model.\1."),
    (r"^lm_head\.", "lm_head."),
    (r"^model\.vision_tower\.vision_tower\.vision_model\.", "model.vision_tower."),
    (r"^model\.mm_projector\.0\.", "model.multi_modal_projector.linear_1."),
    (r"^model\.mm_projector\.2\.", "model.multi_modal_projector.linear_2."),
    (r"^model\.image_newline$", "model.image_newline"),
    (_DIM + r"expert_change_feature_extractor_model\.linear_mapping\.", "model.dim.change_init.gate."),
    (_DIM + r"expert_change_feature_extractor_model\.proj\.", "model.dim.change_init.proj."),
    (_LAYER + r"change_self_attn\.", r"model.dim.layers.\1.change_self_attn."),
    (_LAYER + r"cross_attn_change_to_imageABC\.", r"model.dim.layers.\1.change_to_images_attn."),
    (_LAYER + r"cross_attn_imageAB_to_change\.", r"model.dim.layers.\1.images_to_change_attn."),
    (_LAYER + r"norm([123])\.", r"model.dim.layers.\1.norm\2."),
    (_LAYER + r"mlp\.lin1\.", r"model.dim.layers.\1.mlp.0."),
    (_LAYER + r"mlp\.lin2\.", r"model.dim.layers.\1.mlp.2."),
    (_LAYER + r"image_a_flag_embed\.weight$", r"model.dim.layers.\1.type_image_a"),
    (_LAYER + r"image_b_flag_embed\.weight$", r"model.dim.layers.\1.type_image_b"),
    (_LAYER + r"change_flag_embed\.weight$", r"model.dim.layers.\1.type_change"),
    (_DIM + r"ChangeAwareTokenReduce\.feature_map_level_gate\.([02])\.", r"model.dim.adjust.gate.\1."),
)

#: Weights the reference saves but never uses in CCExpert's forward pass.
UNUSED = (
    r"^model\.mm_cc_projector\.",
    _LAYER + r"norm4\.",
    _DIM + r"ChangeAwareTokenReduce\.(change_for_key_proj|cross_attn)\.",
    r"^model\.vision_tower\.vision_tower\.vision_model\.head\.",
)
_VISION_LAYER = re.compile(r"^model\.vision_tower\.encoder\.layers\.(\d+)\.")
_EMBEDDINGS = ("model.language_model.embed_tokens.weight", "lm_head.weight")


def rename_reference_key(key: str, vision_layers: int) -> str | None:
    """This project's name for a reference key, or None for weights the conversion drops.

    Raises CCExpertError for a key it does not know (never drops weights silently).
    """
    if any(re.search(pattern, key) for pattern in UNUSED):
        return None
    for pattern, replacement in RENAMES:
        if re.search(pattern, key):
            new = re.sub(pattern, replacement, key)
            layer = _VISION_LAYER.match(new)
            # The -hf vision tower stops where LLaVA-OneVision reads its features (26 of SigLIP's 27 layers).
            return None if layer and int(layer.group(1)) >= vision_layers else new
    raise CCExpertError(f"unknown key in the reference checkpoint: {key}")


def read_reference_weights(src: Path) -> dict[str, torch.Tensor]:
    """All tensors of a reference checkpoint folder (safetensors shards, or PyTorch .bin shards)."""
    files = sorted(src.glob("*.safetensors")) or sorted(src.glob("*.bin"))
    if not files:
        raise CCExpertError(f"no *.safetensors or *.bin weights in {src}")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            part = load_file(file) if file.suffix == ".safetensors" else torch.load(file, weights_only=True)
        except Exception as error:  # any unreadable file is the user's to fix, whatever the library raised
            raise CCExpertError(f"cannot read weights from {file}: {error}") from None
        weights.update(part)
    return weights


def _fit_vocabulary(tensor: torch.Tensor, rows: int, key: str) -> torch.Tensor:
    """Pad an embedding matrix to the base vocabulary (the -hf tokenizer adds image/video tokens)."""
    if tensor.shape[0] == rows:
        return tensor
    if tensor.shape[0] > rows:
        raise CCExpertError(f"{key} has {tensor.shape[0]} rows, more than the base vocabulary's {rows}: wrong base?")
    # New rows start at the mean embedding, the usual choice when a vocabulary grows.
    padding = tensor.float().mean(dim=0, keepdim=True).expand(rows - tensor.shape[0], -1).to(tensor.dtype)
    return torch.cat((tensor, padding))


def convert_reference_checkpoint(src: str | Path, dst: str | Path, base: str | Path) -> Path:
    """Write a CCExpert model folder at ``dst`` from the reference checkpoint ``src`` and the llava-hf base
    folder ``base`` of the same size (its config and tokenizer; its weights are not read)."""
    src, base = Path(src), Path(base)
    for folder, what in ((src, "reference checkpoint"), (base, "LLaVA-OneVision base")):
        if not folder.is_dir():
            raise CCExpertError(f"{what} folder not found: {folder}")
    weights = read_reference_weights(src)
    has_dim = any(re.search(_DIM, key) for key in weights)
    try:
        config = CCExpertConfig.from_pretrained(str(base), dim_enabled=has_dim)
    except OSError as error:
        raise CCExpertError(f"cannot read the base config in {base}: {error}") from None
    vision_layers = config.vision_config.num_hidden_layers
    state: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        new = rename_reference_key(key, vision_layers)
        if new is not None:
            state[new] = tensor
    for key in _EMBEDDINGS:
        if key in state:
            state[key] = _fit_vocabulary(state[key], config.text_config.vocab_size, key)

    with torch.device("meta"):
        model = CCExpertForConditionalGeneration(config)
    expected = set(model.state_dict())
    optional = {"model.image_newline"} | ({"lm_head.weight"} if config.tie_word_embeddings else set())
    missing = sorted(expected - set(state) - optional)
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise CCExpertError(
            f"the reference checkpoint does not fit the base config of {base}: "
            f"missing {missing[:5]}{'…' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''} ({len(unexpected)})"
        )
    if "model.image_newline" not in state:
        # LLaVA-OneVision's newline embedding is never used by CCExpert (no newline token); keep it defined.
        state["model.image_newline"] = torch.zeros(config.text_config.hidden_size)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return save_model(model, processor_for(config, base), dst)
