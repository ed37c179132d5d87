"""The app factory: one :class:`~ccexpert_core.inference.Captioner` behind API v1, the batcher, auth and the UI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from backend.auth import DOCS_ASSETS_PATH, TokenChecker, TokenGuard
from backend.batching import DynamicBatcher
from backend.captioning import captioner_stages
from backend.errors import install_error_handlers
from backend.limits import BodySizeLimit, api_body_rule
from backend.memory import release_free_memory
from backend.routers import captions, series, status
from backend.schemas import document_limits
from backend.state import BackendState, ServerSettings
from ccexpert_core import __version__, protocol
from ccexpert_core.inference import Captioner

DESCRIPTION = """Plain-language change captions for pairs of co-registered images.

Send pairs to `POST /v1/captions` (multipart: `before` and `after` repeated once per pair), or a series of dates per
tile to `POST /v1/series` (`image` repeated, `dates` per tile, optional `intervals`); concurrent requests share
model batches. Protected routes want `Authorization: Bearer <token>` when the backend has a token file.
The Gradio UI is at `/ui/`. The wire format is `ccexpert_core/protocol.py`."""


def create_app(captioner: Captioner, settings: ServerSettings | None = None) -> FastAPI:
    """A FastAPI app serving ``captioner``; the batcher starts and stops with the app's lifespan.

    Process-wide settings are the caller's: ``ccexpert serve`` also calls :func:`backend.limits.guard_pillow`.
    """
    settings = settings or ServerSettings()
    batcher = DynamicBatcher(
        captioner_stages(captioner),
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        max_queued=settings.limits.max_queued_pairs,
        # After a burst the images, uploads and activations are freed but glibc keeps the pages: give them back.
        on_idle=release_free_memory,
    )
    state = BackendState(
        captioner=captioner, model=captioner.card, batcher=batcher, settings=settings
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    # FastAPIOffline: /docs and /redoc with their scripts served from the package, since backends often run
    # where no CDN can be reached (FastAPI's own pages load them from jsDelivr and stay blank offline).
    app = FastAPIOffline(
        static_url=DOCS_ASSETS_PATH,
        title="CCExpert backend",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.backend = state
    install_error_handlers(app, on_internal_error=state.record_internal_error)
    rules_by_prefix = {}
    if settings.ui:
        from backend.ui import mount_ui, ui_body_rule  # gradio is heavy: imported only when the UI is served

        rules_by_prefix[protocol.UI_PATH + "/"] = ui_body_rule(settings.limits.max_image_bytes)
        mount_ui(app, state)
    app.add_middleware(BodySizeLimit, rule=api_body_rule(settings.limits), rules_by_prefix=rules_by_prefix)
    app.include_router(status.router)
    app.include_router(captions.router)
    app.include_router(series.router)
    document_limits(app, settings.limits)
    # Added last, so outermost: a request without a token is turned away before its body is read.
    app.add_middleware(TokenGuard, checker=TokenChecker(settings.tokens))
    return app
