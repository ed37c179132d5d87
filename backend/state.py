"""What the routes share: the Captioner, its public description, the batcher, the settings, the internal errors."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from backend.batching import DynamicBatcher
from ccexpert_core.captions import CaptionResult
from ccexpert_core.inference import Captioner
from ccexpert_core.model_card import ModelCard
from ccexpert_core.protocol import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS, Limits
from ccexpert_core.series import TileWork


@dataclass(frozen=True)
class ServerSettings:
    """How one backend behaves: batching, limits, and the tokens it accepts (``None``: no auth)."""

    max_batch: int = DEFAULT_MAX_BATCH
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    limits: Limits = field(default_factory=Limits)
    tokens: tuple[bytes, ...] | None = None
    ui: bool = True
    #: Copies of this backend behind its URL (``serve --ray --replicas``), reported at /v1/info.
    replicas: int = 1


@dataclass
class BackendState:
    """One per app, at ``app.state.backend``."""

    captioner: Captioner
    model: ModelCard
    batcher: DynamicBatcher[TileWork, list[CaptionResult]]
    settings: ServerSettings
    internal_errors: int = 0

    def record_internal_error(self) -> None:
        """Count a request that ended in a 500 (shown at /v1/info: it should stay 0)."""
        self.internal_errors += 1


def backend_state(request: Request) -> BackendState:
    """FastAPI dependency: the app's :class:`BackendState`."""
    return request.app.state.backend
