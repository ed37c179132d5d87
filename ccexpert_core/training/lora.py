"""LoRA on the language model (peft), with whole groups (the DIM, the projector) trained fully beside the adapters,
and merging the adapters back into a plain model folder that every command loads.

An adapter folder is peft's (``adapter_config.json`` + ``adapter_model.safetensors``, the fully trained groups
included as its ``modules_to_save``) with the model's tokenizer beside it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model

from ccexpert_core.errors import CCExpertError
from ccexpert_core.model import (
    CCExpertForConditionalGeneration,
    PairProcessor,
    load_model,
    save_model,
)

#: A group trained fully beside the adapters → the model's modules that peft keeps whole copies of (full names:
#: peft matches the end of a module's name).
GROUP_MODULES = {
    "vision": ("model.vision_tower",),
    "dim": ("model.dim", "model.change_head"),
    "projector": ("model.multi_modal_projector",),
}
ADAPTER_CONFIG = "adapter_config.json"


def lora_config(
    model: CCExpertForConditionalGeneration, rank: int, alpha: float, dropout: float, targets: Sequence[str],
    full_groups: Iterable[str],
) -> LoraConfig:
    """Adapters of ``rank`` on the language model's ``targets`` layers only (the vision tower and the DIM have
    layers of the same names); ``full_groups`` trained whole."""
    names = "|".join(re.escape(name) for name in targets)
    modules = [name for group in full_groups for name in GROUP_MODULES[group]]
    present = {name for name, _ in model.named_modules()}
    pattern = re.compile(rf"model\.language_model\..*\.({names})")
    if not any(pattern.fullmatch(name) for name in present):
        raise CCExpertError(
            f"lora_targets {list(targets)} name no layer of the language model (Qwen2's are q_proj, k_proj, v_proj, "
            "o_proj, gate_proj, up_proj, down_proj)"
        )
    return LoraConfig(
        # peft annotates lora_alpha as an int; it only scales by alpha / rank, and a float alpha is ours to give.
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern.pattern,  # type: ignore[arg-type]
        modules_to_save=[name for name in modules if name in present], bias="none",
    )


def add_lora(model: CCExpertForConditionalGeneration, config: LoraConfig) -> PeftModel:
    """``model`` with adapters: only they and the fully trained groups' copies train."""
    return get_peft_model(model, config)


def merged(model: PeftModel) -> CCExpertForConditionalGeneration:
    """The adapters folded into the weights (and the fully trained copies put in place): a plain CCExpert."""
    return model.merge_and_unload()


def save_adapter(model: PeftModel, processor: PairProcessor, folder: Path, base: str) -> Path:
    """Write the adapters (and fully trained groups) with the tokenizer; ``base`` is recorded as the model they
    apply to."""
    folder = Path(folder)
    try:
        model.save_pretrained(str(folder))
        processor.save_pretrained(folder)
    except OSError as error:
        raise CCExpertError(f"cannot write the adapter to {folder}: {error}") from None
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    config["base_model_name_or_path"] = base
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return folder


def adapter_base(folder: Path) -> str:
    """The model an adapter folder applies to, as recorded when it was written."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        raise CCExpertError(f"{folder} is not a LoRA adapter folder (no {ADAPTER_CONFIG})")
    try:
        base = json.loads(path.read_text()).get("base_model_name_or_path")
    except ValueError as error:
        raise CCExpertError(f"cannot read {path}: {error}") from None
    if not base:
        raise CCExpertError(f"{path} does not say which model it applies to: pass --model BASE")
    return str(base)


def merge_adapter(folder: Path, out: Path, base: str | None = None) -> Path:
    """Apply the adapter folder to its base model (``base``, else the one it records), merge, and write a plain
    model folder ``out``."""
    model, _ = load_model(base or adapter_base(folder))
    try:
        tuned = PeftModel.from_pretrained(model, str(folder))
    except (OSError, ValueError, KeyError) as error:
        raise CCExpertError(f"cannot apply the adapter {folder} to {base or adapter_base(folder)}: {error}") from None
    # The adapter folder's tokenizer is the one the fine-tune trained with (the same as the base's).
    config = model.config
    processor = PairProcessor.from_pretrained(folder, config.vision_config.image_size, config.tokens_per_image)
    return save_model(merged(tuned), processor, out)
