"""What the API says about the model it serves: an id, a name and a note, never a path on the server.

The Captioner knows its model by what ``--model`` gave (a folder path, or ``preset:NAME``). Clients see instead:

- ``model_id``: a folder's name and a fingerprint of its files (``demo_model@1f0c2a9e``), so two models in folders
  of the same name stay apart and one model keeps its id wherever it is copied; a preset's own name;
- ``model_name``: the first heading of the folder's model card (README.md), else a config's ``_name_or_path`` when
  it is a hub id rather than a path, else the folder's name;
- ``model_note``: what a user must know about the captions (the demo model's synthetic training, a preset's random
  weights), or None.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from ccexpert_core.defaults import DEMO_MODEL_DIR

DEMO_NOTE = "trained on synthetic scenes only: not for real imagery"
PRESET_NOTE = "random weights (untrained): its captions are noise, not descriptions"
#: Bytes read from each end of each file for the fingerprint: weights differ there between checkpoints.
_FINGERPRINT_BYTES = 64 * 1024
#: A hub id: "name" or "owner/name" of letters, digits, "-", "_" and "." (see huggingface_hub's validation).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class ModelCard:
    """The public description of a served model (``model_id``, ``model_name``, ``model_note`` of /v1/info)."""

    model_id: str
    name: str
    note: str | None


def describe_model(model: str) -> ModelCard:
    """The public description of ``model`` as the Captioner was loaded from it (folder path or ``preset:NAME``)."""
    if model.startswith("preset:"):
        return ModelCard(model, f"CCExpert {model.removeprefix('preset:')} preset", PRESET_NOTE)
    folder = Path(model)
    if not folder.is_dir():  # a hub id or a name given in code: not a path on this machine
        return ModelCard(model, model, None)
    folder = folder.resolve()
    name = _card_title(folder) or _config_name(folder) or folder.name
    note = DEMO_NOTE if folder == DEMO_MODEL_DIR.resolve() else None
    return ModelCard(f"{folder.name}@{fingerprint(folder)}", name, note)


def fingerprint(folder: Path) -> str:
    """Eight hex digits from the names, sizes and first and last bytes of the folder's files (Markdown aside).

    Cheap for any model size (128 KiB read per file) and different between checkpoints of one architecture.
    """
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() == ".md":
            continue
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with path.open("rb") as file:
            digest.update(file.read(_FINGERPRINT_BYTES))
            if size > 2 * _FINGERPRINT_BYTES:
                file.seek(-_FINGERPRINT_BYTES, 2)
                digest.update(file.read())
    return digest.hexdigest()[:8]


def _card_title(folder: Path) -> str | None:
    try:
        text = (folder / "README.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    in_front_matter = text.startswith("---")  # a hub model card's YAML header comes before the title
    for number, line in enumerate(text.splitlines()):
        if in_front_matter:
            in_front_matter = not (number > 0 and line.strip() == "---")
            continue
        if line.startswith("# "):
            return line[2:].strip() or None
    return None


def _config_name(folder: Path) -> str | None:
    try:
        value = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(value, str) or not _HUB_ID.match(value) or PureWindowsPath(value).drive:
        return None
    # "owner/name" is also what a relative path looks like: one that exists here is a path, not a name.
    return None if Path(value).exists() else value
