"""Training samples as a torch Dataset, and the collator that turns them into model inputs."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ccexpert_core.data import CaptionSample, PairSample, flatten, random_choice
from ccexpert_core.data.inputs import read_json
from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo.schema import CORRECTED
from ccexpert_core.model import PairProcessor


class CaptionDataset(Dataset):
    """Samples of one epoch: every caption ("flatten") or one random caption per pair ("random_choice", drawn
    again each epoch through :meth:`set_epoch`, seeded).

    With ``replay`` pairs, each epoch also holds replay samples (one random caption of each drawn pair), as many as
    make them ``replay_share`` of the epoch's samples, drawn again each epoch: a fine-tune on a few pairs keeps
    seeing the data the model learned from.
    """

    def __init__(
        self, pairs: list[PairSample], caption_handling: str, seed: int = 0,
        replay: Sequence[PairSample] = (), replay_share: float = 0.0,
    ) -> None:
        if not pairs:
            raise CCExpertError("the training data holds no pairs")
        empty = [pair.uid for pair in [*pairs, *replay] if not pair.captions]
        if empty:
            raise CCExpertError(f"{len(empty)} pairs have an empty caption list, e.g. {empty[0]}")
        self.pairs = pairs
        self.caption_handling = caption_handling
        self.seed = seed
        self.replay = list(replay)
        self.replay_share = replay_share if self.replay else 0.0
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's samples (for "flatten" without replay, the same every epoch)."""
        if self.caption_handling == "flatten":
            if not hasattr(self, "own"):
                self.own = flatten(self.pairs)
        else:
            self.own = random_choice(self.pairs, epoch, self.seed)
        self.samples = self.own + self._replay_samples(len(self.own), epoch)

    def _replay_samples(self, own: int, epoch: int) -> list[CaptionSample]:
        if not self.replay_share:
            return []
        wanted = round(own * self.replay_share / (1 - self.replay_share))
        # Another stream than random_choice's (seed + epoch), so the draw of pairs and of captions are independent.
        rng = random.Random(f"replay-{self.seed}-{epoch}")
        drawn = rng.sample(self.replay, wanted) if wanted <= len(self.replay) else rng.choices(self.replay, k=wanted)
        return random_choice(drawn, epoch, self.seed + 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> CaptionSample:
        return self.samples[index]


def corrected_uids(path: Path) -> set[str]:
    """The uids of the pairs an analyst corrected, as ``ccexpert export-dataset`` marks them in its CC JSON
    (``review_status``); none for other data (mixtures, or files without the mark)."""
    if Path(path).suffix.lower() != ".json":
        return set()
    records = read_json(path)
    return {str(record["uid"]) for record in records
            if isinstance(record, dict) and record.get("review_status") == CORRECTED and "uid" in record}


def mask_path_for(sample: CaptionSample | PairSample) -> Path | None:
    """The change mask of a synthetic pair (``mask/<name>`` beside ``A/`` and ``B/``), if there is one."""
    candidate = sample.before_path.parent.parent / "mask" / sample.before_path.name
    return candidate if candidate.is_file() else None


def token_mask(path: Path, grid: int) -> torch.Tensor:
    """A change mask image averaged over the token grid: per token the changed share of its pixels, (grid²,)."""
    mask = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    height, width = mask.shape
    if height % grid or width % grid:
        side = grid * math.ceil(width / grid)
        mask = np.asarray(Image.fromarray(mask).resize((side, side), Image.Resampling.BILINEAR))
        height, width = mask.shape
    shares = mask.reshape(grid, height // grid, grid, width // grid).mean(axis=(1, 3))
    return torch.from_numpy(shares.reshape(-1).copy())


#: The kind target of a changed pair whose kind is unknown (cross-entropy's ignore index), and of a no-change pair.
NO_KIND, UNCHANGED = -100, -1


@dataclass
class PairCollator:
    """Batches of CaptionSamples → inputs with labels (answer + end of turn) and, where samples of the batch have
    a change mask and ``with_masks`` is set, per-token change targets ``change_mask``; with ``change_types``
    also each pair's kind of change ``change_type``: its index there, :data:`UNCHANGED` for a no-change pair,
    :data:`NO_KIND` where unknown. Where only some samples have a mask (a fine-tune's tiles mixed with replay
    pairs), ``change_mask_known`` (B,) says which rows are targets (the others are zeros, and their kind unknown)."""

    processor: PairProcessor
    with_masks: bool = False
    change_types: tuple[str, ...] = ()

    def __call__(self, samples: list[CaptionSample]) -> dict[str, torch.Tensor]:
        batch = dict(
            self.processor([(s.before_path, s.after_path) for s in samples], answers=[s.caption for s in samples])
        )
        if self.with_masks:
            paths = [mask_path_for(sample) for sample in samples]
            if any(paths):
                grid = math.isqrt(self.processor.tokens_per_image)
                empty = torch.zeros(grid * grid)
                batch["change_mask"] = torch.stack([token_mask(path, grid) if path else empty for path in paths])
                if not all(paths):
                    batch["change_mask_known"] = torch.tensor([path is not None for path in paths])
                if self.change_types:
                    kinds = [self._kind(sample) if path else NO_KIND for sample, path in zip(samples, paths)]
                    batch["change_type"] = torch.tensor(kinds, dtype=torch.long)
        return batch

    def _kind(self, sample: CaptionSample) -> int:
        if not sample.changed:
            return UNCHANGED
        return self.change_types.index(sample.change_type) if sample.change_type in self.change_types else NO_KIND
