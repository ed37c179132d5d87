"""The typed records every dataset format is read into, and the two ways to turn pairs into training samples.

A pair has several reference captions; training sees either all of them ("flatten": one sample per caption)
or one chosen at random per pair and epoch ("random choice", seeded by ``seed + epoch`` so a run is repeatable).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ccexpert_core.captions import is_no_change
from ccexpert_core.data.inputs import some
from ccexpert_core.errors import CCExpertError


@dataclass(frozen=True)
class PairSample:
    """One bi-temporal image pair with its reference captions."""

    uid: str
    before_path: Path
    after_path: Path
    captions: tuple[str, ...]
    #: False for a "no change" pair.
    changed: bool
    #: The kind of change where the data says it (the synthetic generator's ``change_type``), else None.
    change_type: str | None = None


@dataclass(frozen=True)
class CaptionSample:
    """One training sample: a pair and one of its captions."""

    uid: str
    before_path: Path
    after_path: Path
    caption: str
    changed: bool
    change_type: str | None = None


def changed_from_captions(captions: Iterable[str]) -> bool:
    """A pair has changed unless every caption is a no-change sentence (:func:`ccexpert_core.captions.is_no_change`)."""
    return not all(is_no_change(caption) for caption in captions)


def _caption_sample(pair: PairSample, caption: str) -> CaptionSample:
    return CaptionSample(pair.uid, pair.before_path, pair.after_path, caption, pair.changed, pair.change_type)


def flatten(pairs: Sequence[PairSample]) -> list[CaptionSample]:
    """One sample per caption, in order (a pair with 5 captions gives 5 samples)."""
    return [_caption_sample(pair, caption) for pair in pairs for caption in pair.captions]


def random_choice(pairs: Sequence[PairSample], epoch: int, seed: int = 0) -> list[CaptionSample]:
    """One sample per pair with one of its captions drawn at random; the same ``seed + epoch`` draws the same."""
    rng = random.Random(seed + epoch)
    return [_caption_sample(pair, rng.choice(pair.captions)) for pair in pairs]


def require_images(pairs: Iterable[PairSample], source: Path) -> None:
    """Raise a :class:`CCExpertError` naming ``source`` and a few of the image files that do not exist."""
    missing = {
        str(path) for pair in pairs for path in (pair.before_path, pair.after_path) if not path.is_file()
    }
    if missing:
        raise CCExpertError(f"{source}: {len(missing)} image files are missing: {some(missing)}")
