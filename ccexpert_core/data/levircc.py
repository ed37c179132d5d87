"""LEVIR-CC in its original layout: ``LevirCCcaptions.json`` beside ``images/<split>/A|B/<filename>``.

The captions file is
``{"images": [{"filename", "imgid", "split", "changeflag", "sentences": [{"tokens": [..]}, ..]}, ..]}``.
Captions are built from ``tokens`` (lower case, no final "."): ``raw`` differs between copies of the file, so
nothing here depends on it. Pair ids follow CCExpert's own files: ``Levir_CC_<split>_img<imgid>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccexpert_core.data.cc_json import write_cc_json
from ccexpert_core.data.inputs import read_json, require_captions, require_field
from ccexpert_core.data.samples import PairSample, changed_from_captions, require_images
from ccexpert_core.errors import CCExpertError

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class LevirCCEntry:
    """One pair of the captions file, without its images."""

    imgid: int
    filename: str
    split: str
    captions: tuple[str, ...]
    changed: bool

    @property
    def uid(self) -> str:
        """The id CCExpert's files give this pair, e.g. ``Levir_CC_test_img8148``."""
        return f"Levir_CC_{self.split}_img{self.imgid}"


def _entry(record: Any, where: str) -> LevirCCEntry:
    sentences = require_field(record, "sentences", list, where)
    joined = []
    for i, sentence in enumerate(sentences):
        tokens = require_field(sentence, "tokens", list, f"{where}.sentences[{i}]")
        if not all(isinstance(token, str) for token in tokens):
            raise CCExpertError(f"{where}.sentences[{i}]: 'tokens' should be a list of strings")
        joined.append(" ".join(tokens))
    captions = require_captions(joined, f"{where}.sentences")
    # The file's own flag is the dataset's label; a file without one falls back on the captions.
    flag = record.get("changeflag")
    if flag not in (None, 0, 1):
        raise CCExpertError(f"{where}: 'changeflag' should be 0 or 1, got {flag!r}")
    return LevirCCEntry(
        imgid=require_field(record, "imgid", int, where),
        filename=require_field(record, "filename", str, where),
        split=require_field(record, "split", str, where),
        captions=captions,
        changed=changed_from_captions(captions) if flag is None else bool(flag),
    )


def entries_from_json(data: object, source: Path) -> list[LevirCCEntry]:
    """The entries of an already parsed captions file (``source`` names it in errors)."""
    images = require_field(data, "images", list, str(source))
    return [_entry(record, f"{source}: images[{i}]") for i, record in enumerate(images)]


def read_levircc(captions_path: Path) -> list[LevirCCEntry]:
    """Every entry of ``LevirCCcaptions.json``, all splits, in file order."""
    return entries_from_json(read_json(captions_path), Path(captions_path))


def split_entries(entries: Sequence[LevirCCEntry], split: str, source: Path) -> list[LevirCCEntry]:
    """The entries of one split; an empty split is a :class:`CCExpertError` listing the splits there are."""
    chosen = [entry for entry in entries if entry.split == split]
    if not chosen:
        present = sorted({entry.split for entry in entries}) or ["none"]
        raise CCExpertError(f"{source}: no pairs in split '{split}' (splits in the file: {', '.join(present)})")
    return chosen


def default_images_dir(captions_path: Path) -> Path:
    """Where the original layout keeps the images: ``images/`` beside the captions file."""
    return Path(captions_path).parent / "images"


def entry_pairs(entries: Sequence[LevirCCEntry], images_dir: Path, source: Path) -> list[PairSample]:
    """The entries as pairs with image paths ``images_dir/<split>/A|B/<filename>``; every image must exist."""
    images_dir = Path(images_dir).resolve()
    pairs = [
        PairSample(
            uid=entry.uid,
            before_path=images_dir / entry.split / "A" / entry.filename,
            after_path=images_dir / entry.split / "B" / entry.filename,
            captions=entry.captions,
            changed=entry.changed,
        )
        for entry in entries
    ]
    require_images(pairs, source)
    return pairs


def levircc_pairs(captions_path: Path, split: str, images_dir: Path | None = None) -> list[PairSample]:
    """The pairs of one split with their image paths (``images_dir`` defaults to ``images/`` beside the file)."""
    captions_path = Path(captions_path)
    entries = split_entries(read_levircc(captions_path), split, captions_path)
    return entry_pairs(entries, images_dir or default_images_dir(captions_path), captions_path)


def convert_levircc(captions_path: Path, split: str, out_path: Path, images_dir: Path | None = None) -> int:
    """Write one split as CC-Foundation-style JSON (image paths relative to ``out_path``); returns the pair count."""
    pairs = levircc_pairs(captions_path, split, images_dir)
    write_cc_json(pairs, out_path)
    return len(pairs)
