"""The ``finetune`` recipe: a model learns from an analyst's reviewed tiles (``ccexpert export-dataset``).

Stage III's caption handling on the analyst's pairs, mixed with a replay share of another dataset (so the model
keeps what it knew); the language model through LoRA adapters (peft), the DIM and the projector trained fully, the
vision tower frozen: a few hundred tiles cannot teach a vision tower, and would make it forget. The settings ship
with the package (``training/configs/finetune/<shape>.yaml`` in the repository), picked by the model's shape (demo,
0.5b, 7b). The result is a new model folder with a model card that says what it was tuned on: a plain model every
command loads, or (``merge_lora: false``) the adapters alone, merged later with :func:`merge_into`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ccexpert_core.data.inputs import read_json
from ccexpert_core.defaults import default_model
from ccexpert_core.errors import CCExpertError
from ccexpert_core.model import PRESETS
from ccexpert_core.training.config import StageConfig, load_stage_config
from ccexpert_core.training.lora import merge_adapter
from ccexpert_core.training.run import run_stage
from ccexpert_core.training.shipped import is_shipped, recipe_config

#: Shapes with fine-tune settings, by the preset they match.
SHAPES = ("demo", "0.5b", "7b")
#: What ``ccexpert export-dataset`` writes beside its CC JSON: where the tiles came from and how many of each kind.
EXPORT_SUMMARY = "export.json"
#: The fine-tune's record in the model folder (the model card says the same in words).
RECORD = "finetune.json"
#: Where the Trainer's checkpoints go while it runs (removed once the model is written).
WORK = "checkpoints"


def model_shape(model: str | Path) -> str:
    """Which of :data:`SHAPES` a model folder has (its language model's width and depth)."""
    config_file = Path(model) / "config.json"
    try:
        text = read_json(config_file).get("text_config", {})
    except CCExpertError:
        raise CCExpertError(f"{model} is not a model folder (no readable config.json): give --model FOLDER") from None
    for shape in SHAPES:
        wanted = PRESETS[shape]["text"]
        if all(text.get(key) == wanted[key] for key in ("hidden_size", "num_hidden_layers")):
            return shape
    raise CCExpertError(
        f"{model} has a language model of width {text.get('hidden_size')} and {text.get('num_hidden_layers')} "
        f"layers, none of the shapes with fine-tune settings ({', '.join(SHAPES)}): pass --config SETTINGS.yaml "
        f"(see {recipe_config('finetune', SHAPES[0]).parent})"
    )


def _check_out(out: Path) -> None:
    # A new folder only: a model written over an older one, or over the data, would mix the two.
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CCExpertError(f"--out {out} exists and is not an empty folder: choose a new folder for the model")


def finetune_config(
    model: str, data: Path, out: Path, replay: Path | None = None, replay_share: float | None = None,
    settings: Path | None = None, overrides: Sequence[str] = (),
) -> StageConfig:
    """The fine-tune's stage config: ``settings`` (default: the shipped settings of the model's shape), then the
    model, the data, the replay and ``overrides``; checked whole before anything trains. Relative paths are read
    from ``settings``' folder, or from ``out`` for shipped settings."""
    settings = settings or recipe_config("finetune", model_shape(model))
    placed = [f"init={Path(model).resolve()}", f"data={Path(data).resolve()}", f"output_dir={(out / WORK).resolve()}"]
    if replay is not None:
        placed.append(f"replay={Path(replay).resolve()}")
    if replay_share is not None:
        placed.append(f"replay_share={replay_share}")
    return load_stage_config(settings, [*placed, *overrides], out.resolve() if is_shipped(settings) else None)


def run_finetune(
    data: Path, out: Path, model: str | None = None, replay: Path | None = None, replay_share: float | None = None,
    settings: Path | None = None, overrides: Sequence[str] = (),
) -> Path:
    """Fine-tune ``model`` (default: the shipped demo model) on ``data`` (an export's CC JSON) into the new folder
    ``out``, with its model card and :data:`RECORD`; returns ``out``."""
    model = model or default_model()
    if str(model).startswith("preset:"):
        raise CCExpertError(f"--model {model} has random weights: fine-tune a trained model folder")
    out = Path(out)
    _check_out(out)
    config = finetune_config(model, Path(data), out, replay, replay_share, settings, overrides)
    started = time.time()
    final = run_stage(config, final_dir=out)
    minutes = (time.time() - started) / 60
    shutil.rmtree(out / WORK, ignore_errors=True)
    summary = json.loads((final / "training_summary.json").read_text())
    record = {
        "base_model": str(config.init),
        "data": str(config.data),
        "pairs": summary["pairs"],
        "corrected_repeats": summary["corrected_repeats"],
        "export": _export_summary(config.data),
        "replay": summary["replay"],
        "lora": summary["lora"],
        "learning_rate": config.learning_rate,
        "steps": summary["global_step"],
        "batch": config.per_device_batch_size * config.gradient_accumulation_steps,
        "train_loss": summary["train_loss"],
        "minutes": round(minutes, 2),
    }
    (final / RECORD).write_text(json.dumps(record, indent=1))
    (final / "README.md").write_text(model_card(record))
    return final


def merge_into(adapter: Path, out: Path, base: str | None = None) -> Path:
    """Merge a fine-tune's adapter folder (``merge_lora: false``) into the new plain model folder ``out``."""
    _check_out(Path(out))
    return merge_adapter(adapter, out, base)


def _export_summary(data: Path) -> dict[str, Any] | None:
    """The export's own summary beside its CC JSON, where the data came from ``ccexpert export-dataset``."""
    path = Path(data).parent / EXPORT_SUMMARY
    return read_json(path) if path.is_file() else None


def model_card(record: dict[str, Any]) -> str:
    """The fine-tuned model's README: what it was tuned on, from what, how, and how to use it."""
    export = record["export"]
    if export:
        counts = export["counts"]
        source = (
            f"{record['pairs']} tiles reviewed by an analyst in `{export['captions']}` (exported "
            f"{export['exported_at']}): {counts['corrected']} corrected (the analyst's caption), {counts['accepted']} "
            f"accepted (the model's caption)"
            + (f", {counts['unreviewed']} not reviewed (the model's caption)" if counts.get("unreviewed") else "")
            + f"; rasters {', '.join(f'`{name}`' for name in export['rasters'])}; captioned by `{export['model_ids']}`."
        )
    else:
        source = f"{record['pairs']} pairs of `{record['data']}`."
    replay = record["replay"]
    mixed = (
        f"Mixed with a replay of `{replay['data']}` ({replay['pairs']} pairs): {replay['share']:.0%} of each epoch's "
        "samples, drawn again each epoch, so that the model keeps what it knew."
        if replay
        else "No replay data: the model saw the analyst's tiles only, and may have forgotten some of what it knew."
    )
    repeats = record["corrected_repeats"]
    if repeats > 1:
        mixed += f" Each corrected tile came {repeats} times per epoch (the accepted ones once)."
    lora = record["lora"]
    if lora:
        how = (
            f"LoRA adapters of rank {lora['rank']} (alpha {lora['alpha']:g}, learning rate {lora['learning_rate']:g}) "
            "on the language model's "
            f"{', '.join(lora['targets'])}; {' and '.join(lora['fully_trained']) or 'nothing else'} trained fully; "
            "the vision tower frozen."
        )
        use = (
            "The adapters are merged: this is a plain model folder (`ccexpert caption-region --model THIS_FOLDER`, "
            "`ccexpert serve --model`, the QGIS plugin through a backend)."
            if lora["merged"] else
            "This folder holds the adapters only (peft's layout, the fully trained modules included). Merge them into "
            "a plain model folder with `ccexpert train --recipe finetune --merge THIS_FOLDER --out MODEL`."
        )
    else:
        how = "Every trainable group trained fully."
        use = "A plain model folder: give it to any command with `--model`."
    return f"""# CCExpert fine-tuned on reviewed tiles

Fine-tuned from `{record['base_model']}` (see its own card for what it knew before) by
`ccexpert train --recipe finetune`.

## Tuned on
{source}

{mixed}

## How
Stage III's recipe on these pairs: one caption per pair per epoch; {how} Learning rate {record['learning_rate']:g},
{record['steps']} steps of {record['batch']} samples, final training loss {record['train_loss']:.3f},
{record['minutes']:.1f} minutes.

## Use
{use} Its captions on tiles like the analyst's follow the analyst's wording; elsewhere it is the base model.
"""
