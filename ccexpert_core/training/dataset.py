"""Training samples as a torch Dataset, and the collator that turns them into model inputs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ccexpert_core.data import CaptionSample, PairSample, flatten, random_choice
from ccexpert_core.errors import CCExpertError
from ccexpert_core.model import PairProcessor


class CaptionDataset(Dataset):
    """Samples of one epoch: every caption ("flatten") or one random caption per pair ("random_choice", drawn
    again each epoch through :meth:`set_epoch`, seeded)."""

    def __init__(self, pairs: list[PairSample], caption_handling: str, seed: int = 0) -> None:
        if not pairs:
            raise CCExpertError("the training data holds no pairs")
        empty = [pair.uid for pair in pairs if not pair.captions]
        if empty:
            raise CCExpertError(f"{len(empty)} pairs have an empty caption list, e.g. {empty[0]}")
        self.pairs = pairs
        self.caption_handling = caption_handling
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's samples (a no-op for "flatten")."""
        if self.caption_handling == "flatten":
            if not hasattr(self, "samples"):
                self.samples = flatten(self.pairs)
        else:
            self.samples = random_choice(self.pairs, epoch, self.seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> CaptionSample:
        return self.samples[index]


def mask_path_for(sample: CaptionSample | PairSample) -> Path | None:
    """The change mask of a synthetic pair (``mask/<name>`` beside ``A/`` and ``B/``), if there is one."""
    candidate = sample.before_path.parent.parent / "mask" / sample.before_path.name
    return candidate if candidate.is_file() else None


def token_mask(path: Path, grid: int) -> torch.Tensor:
    """A change mask image averaged over the token grid: per token the changed share of its pixels, (grid²,)."""
    mask = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    height, width = mask.shape
    if height % grid or width % grid:
        mask = np.asarray(Image.fromarray(mask).resize((grid * math.ceil(width / grid),) * 2, Image.Resampling.BILINEAR))
        height, width = mask.shape
    shares = mask.reshape(grid, height // grid, grid, width // grid).mean(axis=(1, 3))
    return torch.from_numpy(shares.reshape(-1).copy())


#: The kind target of a changed pair whose kind is unknown (cross-entropy's ignore index), and of a no-change pair.
NO_KIND, UNCHANGED = -100, -1


@dataclass
class PairCollator:
    """Batches of CaptionSamples → inputs with labels (answer + end of turn) and, where every sample of the batch
    has a change mask and ``with_masks`` is set, per-token change targets ``change_mask``; with ``change_types``
    also each pair's kind of change ``change_type``: its index there, :data:`UNCHANGED` for a no-change pair,
    :data:`NO_KIND` where unknown."""

    processor: PairProcessor
    with_masks: bool = False
    change_types: tuple[str, ...] = ()

    def __call__(self, samples: list[CaptionSample]) -> dict[str, torch.Tensor]:
        batch = dict(
            self.processor([(s.before_path, s.after_path) for s in samples], answers=[s.caption for s in samples])
        )
        if self.with_masks:
            paths = [mask_path_for(sample) for sample in samples]
            if all(paths):
                grid = math.isqrt(self.processor.tokens_per_image)
                batch["change_mask"] = torch.stack([token_mask(path, grid) for path in paths])
                if self.change_types:
                    kinds = [self._kind(sample) for sample in samples]
                    batch["change_type"] = torch.tensor(kinds, dtype=torch.long)
        return batch

    def _kind(self, sample: CaptionSample) -> int:
        if not sample.changed:
            return UNCHANGED
        return self.change_types.index(sample.change_type) if sample.change_type in self.change_types else NO_KIND
