"""What captions the tiles of a region: a model in this process, or a CCExpert backend over HTTP.

Both fit :class:`CaptionEngine`, so the region pipeline (and tests, with a stand-in) need not know which.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ccexpert_core.captions import CaptionResult

if TYPE_CHECKING:
    from ccexpert_core.inference.captioner import Captioner

ImagePair = tuple[np.ndarray, np.ndarray]


class CaptionEngine(Protocol):
    """Captions one batch of (before, after) H×W×3 uint8 pairs, in order.

    ``tile_ids`` name the pairs (for a backend's logs and replies); an engine may ignore them.
    """

    model_id: str

    def caption(self, pairs: Sequence[ImagePair], tile_ids: Sequence[str]) -> list[CaptionResult]:
        """One result per pair, in order."""
        ...


class InProcessEngine:
    """A :class:`~ccexpert_core.inference.captioner.Captioner` in this process; one batch is one forward pass."""

    def __init__(self, captioner: "Captioner") -> None:
        self.captioner = captioner
        self.model_id = captioner.model_id

    def caption(self, pairs: Sequence[ImagePair], tile_ids: Sequence[str]) -> list[CaptionResult]:
        """Caption the whole batch at once (the region pipeline already sized it)."""
        return self.captioner.caption(list(pairs), batch_size=max(1, len(pairs)))


def load_model_engine(model: str | Path, device: str = "auto") -> InProcessEngine:
    """Load a model folder, hub id or ``preset:tiny`` into this process."""
    from ccexpert_core.inference.captioner import Captioner

    return InProcessEngine(Captioner.load(model, device=device))


def load_backend_engine(url: str, token_file: Path | None) -> CaptionEngine:
    """A CCExpert backend at ``url``, authenticated with the token in ``token_file``; it is asked for its model
    id at once, so that a wrong URL or token fails before any tile is read."""
    from ccexpert_core.client import BackendClient, read_token_file

    client = BackendClient(url, None if token_file is None else read_token_file(token_file))
    client.info()  # a wrong URL or a refused token fails here, with the client's message
    return client
