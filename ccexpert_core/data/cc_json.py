"""CC-Foundation-style JSON: a list of ``{uid, change_flag, img1_path, img2_path, change_caption: [..]}``.

``img1_path`` is the earlier image, ``img2_path`` the later one; relative paths are relative to the JSON file's
folder, so a dataset folder can move as a whole. ``change_caption`` is a list of captions (a single string is read
as a list of one). ``change_flag`` (0/1) is the dataset's label; when absent it follows the captions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ccexpert_core.data.inputs import read_json, require_captions, require_field
from ccexpert_core.data.samples import PairSample, changed_from_captions, require_images
from ccexpert_core.errors import CCExpertError


def _image_path(folder: Path, path: str) -> Path:
    # An absolute path stays as it is; normpath folds "../" so equal files give equal paths (no symlink lookups).
    return Path(os.path.normpath(folder / path))


def _pair(record: Any, folder: Path, where: str) -> PairSample:
    given = require_field(record, "change_caption", (list, str), where)
    captions = require_captions([given] if isinstance(given, str) else given, f"{where}: 'change_caption'")
    flag = record.get("change_flag")
    if flag not in (None, 0, 1):  # True/False compare equal to 1/0, so they pass too
        raise CCExpertError(f"{where}: 'change_flag' should be 0 or 1, got {flag!r}")
    change_type = record.get("change_type")
    if change_type is not None and not isinstance(change_type, str):
        raise CCExpertError(f"{where}: 'change_type' should be a name (text) or null, got {change_type!r}")
    return PairSample(
        uid=str(require_field(record, "uid", (str, int), where)),
        before_path=_image_path(folder, require_field(record, "img1_path", str, where)),
        after_path=_image_path(folder, require_field(record, "img2_path", str, where)),
        captions=captions,
        changed=changed_from_captions(captions) if flag is None else bool(flag),
        change_type=change_type,
    )


def pairs_from_records(data: object, source: Path, check_images: bool = True) -> list[PairSample]:
    """The pairs of an already parsed CC JSON document (``source`` is the file it came from)."""
    source = Path(source)
    if not isinstance(data, list):
        raise CCExpertError(f"{source}: expected a JSON list of pairs ({{uid, img1_path, img2_path, change_caption}})")
    if not data:
        raise CCExpertError(f"{source}: holds no pairs")
    folder = source.resolve().parent
    pairs = [_pair(record, folder, f"{source}: [{i}]") for i, record in enumerate(data)]
    if check_images:
        require_images(pairs, source)
    return pairs


def read_cc_json(path: Path, check_images: bool = True) -> list[PairSample]:
    """The pairs of a CC JSON file; with ``check_images`` every image must exist."""
    return pairs_from_records(read_json(path), Path(path), check_images)


def write_cc_json(pairs: Sequence[PairSample], path: Path) -> None:
    """Write ``pairs`` as CC JSON, image paths relative to the file's folder."""
    path = Path(path)
    folder = path.resolve().parent
    records = [
        {
            "uid": pair.uid,
            "change_flag": int(pair.changed),
            "img1_path": os.path.relpath(pair.before_path.resolve(), folder),
            "img2_path": os.path.relpath(pair.after_path.resolve(), folder),
            "change_caption": list(pair.captions),
            **({"change_type": pair.change_type} if pair.change_type is not None else {}),
        }
        for pair in pairs
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
