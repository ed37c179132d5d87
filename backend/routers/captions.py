"""``POST /v1/captions``: N (before, after) pairs in one multipart request, one result per pair, in order."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from backend import schemas
from backend.auth import bearer_scheme
from backend.captioning import caption_uploads
from backend.errors import ApiError
from backend.limits import check_image_bytes
from backend.state import BackendState, backend_state
from ccexpert_core import protocol
from ccexpert_core.captions import CaptionResult

router = APIRouter(tags=["captions"], dependencies=[Depends(bearer_scheme)])


def _check_counts(before: list[UploadFile], after: list[UploadFile], tile_ids: list[str] | None, limit: int) -> None:
    if len(before) != len(after):
        raise ApiError(
            422,
            protocol.ERROR_INVALID_REQUEST,
            f"{len(before)} '{protocol.FIELD_BEFORE}' images but {len(after)} '{protocol.FIELD_AFTER}' images: "
            "send one of each per pair",
            protocol.FIELD_AFTER,
        )
    if len(before) > limit:
        raise ApiError(
            422,
            protocol.ERROR_TOO_MANY_PAIRS,
            f"{len(before)} pairs in one request, over the limit of {limit}: split them into several requests",
            protocol.FIELD_BEFORE,
        )
    if tile_ids is not None and len(tile_ids) != len(before):
        raise ApiError(
            422,
            protocol.ERROR_INVALID_REQUEST,
            f"{len(tile_ids)} tile ids for {len(before)} pairs: give one per pair, or none",
            protocol.FIELD_TILE_IDS,
        )


@router.post(
    protocol.CAPTIONS_PATH,
    response_model=schemas.Captions,
    response_model_exclude_unset=True,
    responses=schemas.ERROR_RESPONSES,
    summary="Caption pairs of images",
)
async def create_captions(
    state: Annotated[BackendState, Depends(backend_state)],
    before: Annotated[
        list[UploadFile], File(min_length=1, description="Earlier images (PNG, JPEG or TIFF), one per pair")
    ],
    after: Annotated[list[UploadFile], File(min_length=1, description="Later images, in the same order as `before`")],
    tile_ids: Annotated[list[str] | None, Form(description="Optional: one id per pair, echoed in the results")] = None,
) -> protocol.CaptionsBody:
    """For each pair, in order: the caption, whether it describes a change, the model's confidence and, from a
    model with a change-map head, its coarse change map."""
    limits = state.settings.limits
    _check_counts(before, after, tile_ids, limits.max_pairs_per_request)
    for name, uploads in ((protocol.FIELD_BEFORE, before), (protocol.FIELD_AFTER, after)):
        for index, upload in enumerate(uploads):
            check_image_bytes(upload.size, limits, f"{name}[{index}]")
    results = await caption_uploads(state, [(b.file.read, a.file.read) for b, a in zip(before, after, strict=True)])
    items = [result_item(result) for result in results]
    if tile_ids is not None:
        for item, tile_id in zip(items, tile_ids, strict=True):
            item["tile_id"] = tile_id
    return {"model_id": state.model.model_id, "results": items}


def result_item(result: CaptionResult) -> protocol.CaptionItem:
    """One result on the wire (the change map to 4 decimals, where the model has one)."""
    item: protocol.CaptionItem = {
        "caption": result.caption,
        "change_detected": result.change_detected,
        "confidence": result.confidence,
    }
    if result.change_kind is not None:
        item["change_kind"] = result.change_kind
    if result.change_map is not None:
        item["change_map"] = [[round(value, 4) for value in row] for row in result.change_map]
    return item
