"""Reading predictions and references for ``ccexpert evaluate``.

Two forms are accepted:

- CCExpert's JSON Lines (:func:`read_ccexpert_predictions`): one ``{"uid", "pred", "change_caption": [refs]}`` per
  line, references inline. A uid may repeat (distributed inference pads its last batch) only with identical
  content; it counts once.
- Predictions keyed by LEVIR-CC pair (:func:`read_keyed_predictions`), with ``LevirCCcaptions.json`` for the
  references: a JSON object ``{key: caption}`` or a JSON list of ``{"filename" | "imgid": key, "caption" | "pred":
  caption}`` (``filename`` wins when an item has both). A key is a file name (``test_000001.png``), an ``imgid``
  (number or string of digits) or a CCExpert uid (``Levir_CC_test_img8148``). Keys of pairs in another split are
  ignored; keys of no pair at all are an error.

In both forms a ``null`` caption counts as a missing prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccexpert_core.data.inputs import json_type, read_json, read_jsonl, require_captions, require_field, some
from ccexpert_core.data.levircc import read_levircc, split_entries
from ccexpert_core.errors import CCExpertError


@dataclass(frozen=True)
class EvaluationSet:
    """What to score: predictions (pairs without one are absent) and references, keyed by the same pair ids."""

    predictions: dict[str, str]
    references: dict[str, tuple[str, ...]]


def _caption(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise CCExpertError(f"{where}: a prediction should be a string (or null), got {json_type(value)}")
    return value


def read_ccexpert_predictions(path: Path) -> EvaluationSet:
    """Predictions and references from CCExpert's JSON Lines, keyed by ``uid``, each uid once."""
    predictions: dict[str, str] = {}
    references: dict[str, tuple[str, ...]] = {}
    first_line: dict[str, tuple[int, str | None]] = {}
    for number, record in read_jsonl(path):
        where = f"{path}: line {number}"
        uid = str(require_field(record, "uid", (str, int), where))
        refs = require_captions(require_field(record, "change_caption", list, where), f"{where}: 'change_caption'")
        pred = _caption(record.get("pred"), f"{where}: 'pred'")
        if uid in first_line:
            line, earlier = first_line[uid]
            if (earlier, references[uid]) != (pred, refs):
                raise CCExpertError(
                    f"{where}: uid {uid} was already on line {line} with a different pred or change_caption"
                )
            continue
        first_line[uid] = (number, pred)
        references[uid] = refs
        if pred is not None:
            predictions[uid] = pred
    if not references:
        raise CCExpertError(
            f"{path}: holds no prediction records (one JSON object per line: uid, pred, change_caption)"
        )
    return EvaluationSet(predictions, references)


def _key(value: Any, where: str) -> str:
    # JSON object keys are always strings, so list items' integer imgids become strings too.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CCExpertError(f"{where}: a key should be a file name or an imgid, got {json_type(value)}")
    return str(value)


def _keyed_items(data: Any, path: Path) -> list[tuple[str, str | None, str]]:
    """``(key, caption, where)`` for every prediction of a keyed predictions document."""
    if isinstance(data, dict):
        return [(key, _caption(value, f"{path}: {key!r}"), f"{path}: {key!r}") for key, value in data.items()]
    if not isinstance(data, list):
        raise CCExpertError(
            f"{path}: expected a JSON object {{file name or imgid: caption}} or a list of "
            '{"filename"|"imgid": .., "caption"|"pred": ..}'
        )
    items = []
    for i, item in enumerate(data):
        where = f"{path}: [{i}]"
        if not isinstance(item, dict) or not ({"filename", "imgid"} & item.keys()):
            raise CCExpertError(f"{where}: expected an object with 'filename' or 'imgid'")
        if not ({"caption", "pred"} & item.keys()):
            raise CCExpertError(f"{where}: expected an object with 'caption' or 'pred'")
        key = _key(item["filename"] if "filename" in item else item["imgid"], where)
        items.append((key, _caption(item["caption"] if "caption" in item else item["pred"], where), where))
    return items


def read_keyed_predictions(path: Path, references_path: Path, split: str = "test") -> EvaluationSet:
    """Predictions keyed by LEVIR-CC pair, scored against one split of ``LevirCCcaptions.json``; ids are file names."""
    entries = read_levircc(references_path)
    chosen = split_entries(entries, split, references_path)
    index = {key: entry for entry in entries for key in (entry.filename, str(entry.imgid), entry.uid)}
    predictions: dict[str, str] = {}
    unknown = []
    for key, caption, where in _keyed_items(read_json(path), Path(path)):
        entry = index.get(key)
        if entry is None:
            unknown.append(key)
        elif entry.split == split and caption is not None:
            if predictions.setdefault(entry.filename, caption) != caption:
                raise CCExpertError(f"{where}: a second, different prediction for {entry.filename}")
    if unknown:
        raise CCExpertError(
            f"{path}: {len(unknown)} keys match no pair of {references_path}: {some(unknown)} "
            "(keys are file names like test_000001.png, imgid numbers or uids like Levir_CC_test_img8148)"
        )
    return EvaluationSet(predictions, {entry.filename: entry.captions for entry in chosen})
