"""Inference: the :class:`Captioner` (load once, caption batches of image pairs or series of dates)."""

from ccexpert_core.inference.captioner import Captioner, CaptionError, PreparedBatch, PreparedSeries, resolve_device

__all__ = ["CaptionError", "Captioner", "PreparedBatch", "PreparedSeries", "resolve_device"]
