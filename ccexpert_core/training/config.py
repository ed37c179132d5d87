"""A training stage as configuration: the paper's three stages differ only in these values, never in code.

A stage YAML names its ``stage`` (1, 2, 3 or I, II, III), which fills the paper's defaults (trainable modules,
learning rates, caption handling, epochs); every other key overrides a default. Unknown keys are an error.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ccexpert_core.errors import CCExpertError
from ccexpert_core.training.shipped import DEEPSPEED, deepspeed_names, is_shipped

#: Module groups a stage can train (see :mod:`ccexpert_core.training.trainable`).
MODULE_GROUPS = ("vision", "dim", "projector", "language")
CAPTION_HANDLING = ("flatten", "random_choice")
#: A Qwen2 language model's linear layers: attention and MLP (LoRA's usual targets).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: The paper's recipe (shared/reference/ccexpert.md, "Training"): what each stage trains and how it reads captions.
STAGES: dict[int, dict[str, Any]] = {
    1: dict(trainable=["dim", "projector"], caption_handling="flatten", learning_rate=1e-5, epochs=1.0),
    2: dict(trainable=list(MODULE_GROUPS), caption_handling="flatten", learning_rate=1e-5, epochs=1.0),
    3: dict(trainable=list(MODULE_GROUPS), caption_handling="random_choice", learning_rate=1e-5, epochs=50.0),
}
_EXPONENT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")
_STAGE_NAMES = {"1": 1, "2": 2, "3": 3, "I": 1, "II": 2, "III": 3}


@dataclass
class StageConfig:
    """Everything one training stage needs. Paths are relative to the YAML file's folder (a recipe's: to its work
    folder)."""

    stage: int
    #: Where the weights start: a model folder (the previous stage's ``output_dir/final``), a hub id on a machine
    #: that reaches the hub, or ``preset:demo`` / ``preset:tiny`` (fresh weights, a tokenizer from the captions).
    init: str
    output_dir: Path
    #: A CC JSON file or a YAML mixture of them.
    data: Path
    eval_data: Path | None = None
    eval_pairs: int = 64
    trainable: list[str] = field(default_factory=list)
    caption_handling: str = "flatten"
    learning_rate: float = 1e-5
    #: The vision tower's own absolute learning rate; default 0.2 × learning_rate.
    vision_learning_rate: float | None = None
    per_device_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    epochs: float = 1.0
    #: Stop after this many optimiser steps (overrides epochs); -1 = run the epochs.
    max_steps: int = -1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    #: "auto": bf16 on CUDA, fp32 on the CPU.
    bf16: bool | str = "auto"
    gradient_checkpointing: bool = True
    #: A DeepSpeed JSON config: a shipped one by name (``zero2``, ``zero3``: training/deepspeed/), a path, or None.
    deepspeed: Path | None = None
    eval_steps: int = 200
    save_steps: int = 200
    save_total_limit: int = 2
    logging_steps: int = 10
    seed: int = 0
    #: Weight of the change-map loss, for models with a change-map head and data with change masks.
    change_loss_weight: float = 1.0
    #: Continue from the newest checkpoint in output_dir (true) or from a given checkpoint folder.
    resume: bool | Path = False
    #: Config fields of a fresh preset model (``init: preset:...``), e.g. ``{dim_enabled: false}``.
    model_overrides: dict[str, Any] = field(default_factory=dict)
    dataloader_workers: int = 0
    #: Another dataset (CC JSON or mixture) mixed into every epoch, so that a fine-tune on a few tiles keeps what
    #: the model knew; ``replay_share`` of each epoch's samples come from it, drawn again each epoch.
    replay: Path | None = None
    replay_share: float = 0.5
    #: How many times per epoch a pair an analyst corrected comes (``review_status: corrected`` in the records of
    #: ``ccexpert export-dataset``): corrections are what the model does not say yet; accepted tiles it already does.
    corrected_repeats: int = 1
    #: Above 0: the language model trains through LoRA adapters of this rank (peft) instead of fully, and
    #: ``trainable`` lists the groups trained fully beside them (the DIM and the projector in a fine-tune).
    lora_rank: int = 0
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    #: The adapters' own absolute learning rate (LoRA usually learns at a higher rate than whole modules); default
    #: ``learning_rate``.
    lora_learning_rate: float | None = None
    #: The language model's layers that get adapters (names of its linear layers).
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    #: Merge the adapters into the weights at the end (a plain model folder every command loads); otherwise the
    #: final folder holds the adapters alone.
    merge_lora: bool = True

    @property
    def vision_lr(self) -> float:
        """The vision tower's learning rate."""
        return 0.2 * self.learning_rate if self.vision_learning_rate is None else self.vision_learning_rate


_PATH_FIELDS = ("output_dir", "data", "eval_data", "replay")


def _parse_stage(value: Any, where: str) -> int:
    stage = _STAGE_NAMES.get(str(value).strip().upper())
    if stage is None:
        raise CCExpertError(f"{where}: unknown stage {value!r}: use 1, 2 or 3 (I, II, III)")
    return stage


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise CCExpertError(f"override {text!r} should be KEY=VALUE (e.g. max_steps=100)")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise CCExpertError(f"override {text!r}: the value is not YAML (e.g. max_steps=100, trainable=[dim])") from None


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str | list | dict) or value is None else str(value)


def _number(value: Any) -> float | None:
    """``value`` as a number: YAML's numbers, and the text YAML 1.1 leaves of some (2e-3 without a dot, 1e400,
    nan); None where it is no number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (_EXPONENT.fullmatch(value.strip()) or value.strip().lower() in _NOT_FINITE):
        return float(value)
    return None


_NOT_FINITE = ("nan", "inf", "+inf", "-inf")
#: What a value of each type a field can have must be, in words.
_WORDS: dict[Any, str] = {
    bool: "true or false", int: "a whole number", float: "a finite number", str: "text", Path: "a path",
    list: "a list of names ([a, b])", dict: "a mapping (e.g. {dim_enabled: false})",
}
_NOT_ONE = object()


def _as(kind: Any, value: Any) -> Any:
    """``value`` as a ``kind`` (numbers finite, whole for an int), or ``_NOT_ONE``."""
    if kind in (int, float):
        number = _number(value)
        if number is None or not math.isfinite(number) or (kind is int and number != int(number)):
            return _NOT_ONE
        return kind(number)
    accepted: Any = {bool: bool, str: str, Path: str | Path, list: list, dict: dict}.get(kind, object)
    if not isinstance(value, accepted) or (kind is list and not all(isinstance(item, str) for item in value)):
        return _NOT_ONE
    return value


def _typed(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the field ``name`` of type ``hint`` takes it, or ValueError saying what it must be."""
    kinds = [typing.get_origin(member) or member
             for member in (typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,))]
    if value is None and type(None) in kinds:
        return None
    for kind in (kind for kind in kinds if kind is not type(None)):
        converted = _as(kind, value)
        if converted is not _NOT_ONE:
            return converted
    words = " or ".join(_WORDS[kind] for kind in kinds if kind is not type(None))
    raise ValueError(f"{name} must be {words}, not {_shown(value)}")


def _deepspeed(value: str, base_dir: Path, where: str) -> Path:
    """A stage's ``deepspeed`` as a file: a bare name (``zero2``) is a shipped config, anything else a path."""
    if "/" in value or Path(value).suffix:
        return (base_dir / value).resolve()
    path = DEEPSPEED / f"{value}.json"
    if not path.is_file():
        raise CCExpertError(
            f"{where}: deepspeed: {value!r} is not a shipped DeepSpeed config ({', '.join(deepspeed_names())}): name "
            "one, or give the path of a JSON file"
        )
    return path


def build_stage_config(
    values: dict[str, Any], base_dir: Path, where: str, overrides: dict[str, str] | None = None
) -> StageConfig:
    """A StageConfig from parsed values: the stage's defaults, then ``values``; paths resolved against base_dir.

    Every value is checked against its field's type (numbers finite, whole where counted) and range before
    anything is built; ``overrides`` (key → the ``KEY=VALUE`` it came from) names a bad value's origin."""
    if not isinstance(values, dict):
        raise CCExpertError(f"{where}: a stage config is a mapping of keys to values")
    known = {f.name for f in dataclasses.fields(StageConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CCExpertError(
            f"{where}: unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )
    for required in ("stage", "init", "output_dir", "data"):
        if values.get(required) in (None, ""):
            raise CCExpertError(f"{where}: '{required}' is required")
    stage = _parse_stage(values["stage"], where)
    hints = typing.get_type_hints(StageConfig)
    checked = {}
    for name, value in values.items():
        try:
            checked[name] = value if name == "stage" else _typed(name, value, hints[name])
        except ValueError as error:
            origin = (overrides or {}).get(name)
            raise CCExpertError(f"{error} (override {origin})" if origin else f"{where}: {error}") from None
    merged = {**STAGES[stage], **checked, "stage": stage}
    if merged.get("deepspeed") is not None:
        merged["deepspeed"] = _deepspeed(str(merged["deepspeed"]), base_dir, where)
    for name in _PATH_FIELDS:
        if merged.get(name) is not None:
            merged[name] = (base_dir / str(merged[name])).resolve()
    if isinstance(merged.get("resume"), str):
        merged["resume"] = (base_dir / merged["resume"]).resolve()
    init = str(merged["init"])
    if not init.startswith("preset:") and (init.startswith((".", "/")) or (base_dir / init).exists()):
        merged["init"] = str((base_dir / init).resolve())
    config = StageConfig(**merged)
    _validate(config, where)
    return config


def _validate(config: StageConfig, where: str) -> None:
    bad = sorted(set(config.trainable) - set(MODULE_GROUPS))
    if bad or not (config.trainable or config.lora_rank):
        raise CCExpertError(f"{where}: trainable must list some of {', '.join(MODULE_GROUPS)}; got {config.trainable}")
    if config.lora_rank < 0 or config.lora_alpha <= 0 or not 0 <= config.lora_dropout < 1 or not config.lora_targets:
        raise CCExpertError(
            f"{where}: LoRA needs lora_rank >= 0 (0: off), lora_alpha > 0, 0 <= lora_dropout < 1 and lora_targets"
        )
    if config.lora_rank and "language" in config.trainable:
        raise CCExpertError(
            f"{where}: with LoRA (lora_rank > 0) the language model trains through its adapters: list only the groups "
            "trained fully in trainable (e.g. [dim, projector])"
        )
    if not 0 < config.replay_share < 1:
        raise CCExpertError(f"{where}: replay_share must be between 0 and 1 (the share of replay samples), not "
                            f"{config.replay_share}")
    if config.caption_handling not in CAPTION_HANDLING:
        raise CCExpertError(f"{where}: caption_handling must be one of {', '.join(CAPTION_HANDLING)}")
    for name in ("per_device_batch_size", "gradient_accumulation_steps", "eval_pairs", "eval_steps", "save_steps",
                 "corrected_repeats"):
        if getattr(config, name) < 1:
            raise CCExpertError(f"{where}: {name} must be at least 1")
    if config.eval_data is not None and config.save_steps % config.eval_steps:
        raise CCExpertError(
            f"{where}: save_steps ({config.save_steps}) must be a multiple of eval_steps ({config.eval_steps}): the "
            "best evaluated checkpoint is the one kept"
        )
    if config.max_steps != -1 and config.max_steps < 1:
        raise CCExpertError(f"{where}: max_steps must be -1 (run the epochs) or at least 1, not {config.max_steps}")
    for name in ("epochs", "max_grad_norm"):
        if getattr(config, name) <= 0:
            raise CCExpertError(f"{where}: {name} must be above 0, not {getattr(config, name)}")
    for name in ("weight_decay", "change_loss_weight", "dataloader_workers", "lora_rank"):
        if getattr(config, name) < 0:
            raise CCExpertError(f"{where}: {name} must be 0 or more, not {getattr(config, name)}")
    if not 0 <= config.warmup_ratio <= 1:
        raise CCExpertError(f"{where}: warmup_ratio must be from 0 to 1, not {config.warmup_ratio}")
    adapter_rate = config.lora_learning_rate
    if config.learning_rate <= 0 or config.vision_lr < 0 or (adapter_rate is not None and adapter_rate <= 0):
        raise CCExpertError(f"{where}: learning rates must be positive")
    if config.deepspeed is not None and not config.deepspeed.is_file():
        raise CCExpertError(f"{where}: DeepSpeed config not found: {config.deepspeed}")


def load_stage_config(path: str | Path, overrides: Sequence[str] = (), work: Path | None = None) -> StageConfig:
    """Read a stage YAML and apply ``KEY=VALUE`` overrides (values parsed as YAML). Relative paths are read from the
    YAML's folder, or from ``work`` where given: the work folder of a recipe, whose shipped settings must never
    write beside themselves, into the installed package."""
    path = Path(path)
    if work is None and is_shipped(path):
        raise CCExpertError(
            f"{path} is a recipe's settings (its paths are relative to the recipe's work folder): run "
            f"`ccexpert train --recipe {path.resolve().parent.name}` instead"
        )
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise CCExpertError(f"stage config not found: {path}") from None
    except (OSError, yaml.YAMLError) as error:
        raise CCExpertError(f"cannot read stage config {path}: {error}") from None
    if not isinstance(values, dict):
        raise CCExpertError(f"{path}: a stage config is a mapping of keys to values")
    given: dict[str, str] = {}
    for item in overrides:
        key, value = _parse_override(item)
        values[key], given[key] = value, item.strip()
    base = Path(work).resolve() if work is not None else path.resolve().parent
    return build_stage_config(values, base, str(path), given)
