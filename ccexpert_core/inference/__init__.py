"""Inference: the :class:`Captioner` (load once, caption batches of image pairs or series of dates)."""

from ccexpert_core.inference.captioner import (
    Captioner,
    CaptionError,
    Generated,
    PreparedWork,
    batches_of_pairs,
    resolve_device,
)

__all__ = ["CaptionError", "Captioner", "Generated", "PreparedWork", "batches_of_pairs", "resolve_device"]
