"""Inference: the :class:`Captioner` (load once, caption batches of image pairs)."""

from ccexpert_core.inference.captioner import Captioner, resolve_device

__all__ = ["Captioner", "resolve_device"]
