"""The model the ``ccexpert`` commands, the backend and ``make demo`` use when none is given (torch only when
:func:`load_captioner` loads one)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ccexpert_core.inference import Captioner

#: The demo model that ships inside the package (rebuilt by ``training/recipes/demo.sh``, which runs
#: ``ccexpert train --recipe demo`` and installs its model here).
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"
#: A tiny model with random weights, for a checkout without the demo model.
UNTRAINED_PRESET = "preset:tiny"


def default_model() -> str:
    """The shipped demo model, or the untrained tiny preset where it is missing."""
    return str(DEMO_MODEL_DIR) if (DEMO_MODEL_DIR / "config.json").is_file() else UNTRAINED_PRESET


def model_note(model: str | Path) -> str | None:
    """What a user should know about a model whose captions do not describe real places, else None."""
    if str(model).startswith("preset:"):
        return f"note: {model} has random weights (untrained): its captions are noise, not descriptions"
    if Path(model).resolve() == DEMO_MODEL_DIR:
        return (
            "note: using the demo model, trained on synthetic scenes only: fine for trying the tools, not for "
            "describing real imagery (give --model with real CCExpert weights for that)"
        )
    return None


def print_model_note(model: str | Path) -> None:
    """Print :func:`model_note` on stderr, if there is one."""
    note = model_note(model)
    if note:
        print(note, file=sys.stderr)


def load_captioner(model: str | None, device: str = "auto", dtype: str | None = None) -> Captioner:
    """The Captioner for ``model`` (the default model where None) on ``device``, with :func:`print_model_note`'s
    note for the demo or a random model; CCExpertError for a device this machine lacks."""
    from ccexpert_core.inference import Captioner
    from ccexpert_core.options import check_device

    check_device(device)
    chosen = model or default_model()
    print_model_note(chosen)
    return Captioner.load(chosen, device=device, dtype=dtype)
