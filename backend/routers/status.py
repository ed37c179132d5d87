"""``GET /v1/health`` (open, for load balancers) and ``GET /v1/info`` (model, limits, batching statistics)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from backend import schemas
from backend.auth import bearer_scheme
from backend.state import BackendState, backend_state
from ccexpert_core import __version__, protocol

router = APIRouter(tags=["status"])


@router.get(protocol.HEALTH_PATH, response_model=schemas.Health, summary="Is the backend up and its model loaded?")
async def health(request: Request) -> protocol.HealthBody:
    """Open to everyone (no token), so load balancers and scripts can probe it."""
    loaded = getattr(request.app.state, "backend", None) is not None
    return {"status": "ok" if loaded else "loading", "model_loaded": loaded, "api_version": protocol.API_VERSION}


@router.get(
    protocol.INFO_PATH,
    response_model=schemas.Info,
    responses={401: schemas.ERROR_RESPONSES[401]},
    dependencies=[Depends(bearer_scheme)],
    summary="The model, the limits and the batching statistics",
)
async def info(state: Annotated[BackendState, Depends(backend_state)]) -> protocol.InfoBody:
    """What the backend runs and how it has batched so far."""
    captioner = state.captioner
    return {
        "api_version": protocol.API_VERSION,
        "version": __version__,
        "model_id": state.model.model_id,
        "model_name": state.model.name,
        "model_note": state.model.note,
        "tile_size": captioner.tile_size,
        "prompt": captioner.prompt,
        "device": str(captioner.device),
        "dtype": str(captioner.dtype).removeprefix("torch."),
        "limits": state.settings.limits.to_dict(),
        "batching": state.batcher.stats(),
        "internal_errors": state.internal_errors,
        "replicas": state.settings.replicas,
        "series": True,
    }
