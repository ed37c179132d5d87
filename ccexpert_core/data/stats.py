"""What ``ccexpert dataset-info`` reports: pairs per split, captions per pair, no-change share, vocabulary size."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from ccexpert_core.captions import caption_tokens
from ccexpert_core.data.cc_json import pairs_from_records
from ccexpert_core.data.inputs import read_json
from ccexpert_core.data.levircc import SPLITS, default_images_dir, entries_from_json, entry_pairs, split_entries
from ccexpert_core.data.mixture import load_mixture_parts
from ccexpert_core.errors import CCExpertError

#: The name under which formats without splits (CC JSON, mixtures) report their pairs.
ALL = "all"


class CaptionedPair(Protocol):
    """Anything with reference captions and a change flag (a LEVIR-CC entry, a :class:`PairSample`)."""

    @property
    def captions(self) -> tuple[str, ...]: ...

    @property
    def changed(self) -> bool: ...


def pair_stats(pairs: Sequence[CaptionedPair]) -> dict[str, Any]:
    """Counts for one set of pairs; ``captions_per_pair`` maps a caption count to how many pairs have it."""
    per_pair = Counter(len(pair.captions) for pair in pairs)
    no_change = sum(not pair.changed for pair in pairs)
    vocabulary = {token for pair in pairs for caption in pair.captions for token in caption_tokens(caption)}
    return {
        "pairs": len(pairs),
        "captions_per_pair": {str(count): per_pair[count] for count in sorted(per_pair)},
        "no_change_pairs": no_change,
        "no_change_share": no_change / len(pairs) if pairs else 0.0,
        "vocabulary_size": len(vocabulary),
    }


def _levircc_info(data: Any, path: Path, check_images: bool, images_dir: Path | None) -> dict[str, Any]:
    entries = entries_from_json(data, path)
    if not entries:
        raise CCExpertError(f"{path}: holds no pairs")
    if check_images:
        entry_pairs(entries, images_dir or default_images_dir(path), path)
    # The usual splits first, in their usual order, then any others.
    order = {split: i for i, split in enumerate(SPLITS)}
    splits = sorted({entry.split for entry in entries}, key=lambda split: (order.get(split, len(SPLITS)), split))
    return {
        "format": "levircc",
        "splits": {split: pair_stats(split_entries(entries, split, path)) for split in splits},
        "total": pair_stats(entries),
    }


def dataset_info(
    path: Path, check_images: bool = False, images_dir: Path | None = None, seed: int = 0
) -> dict[str, Any]:
    """Statistics of a dataset given as ``LevirCCcaptions.json``, a CC JSON file or a YAML mixture.

    The format is recognised from the content (``.yaml``/``.yml`` → mixture; a JSON object with ``images`` →
    LEVIR-CC; a JSON list → CC JSON). ``check_images`` also verifies that every image file exists
    (``images_dir`` is LEVIR-CC's images folder, by default ``images/`` beside the captions file).
    """
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        parts = load_mixture_parts(path, seed, check_images)
        pairs = [pair for _, part in parts for pair in part]
        stats = pair_stats(pairs)
        info = {"format": "mixture", "seed": seed, "splits": {ALL: stats}, "total": stats}
        info["sources"] = [
            {"json_path": str(source.json_path), "sampling_strategy": str(source.strategy), "pairs": len(part)}
            for source, part in parts
        ]
    else:
        data = read_json(path)
        if isinstance(data, dict) and "images" in data:
            info = _levircc_info(data, path, check_images, images_dir)
        elif isinstance(data, list):
            stats = pair_stats(pairs_from_records(data, path, check_images))
            info = {"format": "cc-json", "splits": {ALL: stats}, "total": stats}
        else:
            raise CCExpertError(
                f"{path}: neither the LevirCCcaptions.json layout (an object with 'images') "
                "nor CC JSON (a list of pairs)"
            )
    return {"path": str(path), **info}
