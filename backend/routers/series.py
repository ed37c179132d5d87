"""``POST /v1/series``: tiles of several dates in one multipart request; each image decoded and through the vision
tower once, each interval captioned; one result per tile, one item per interval, in order."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from backend import schemas
from backend.auth import bearer_scheme
from backend.captioning import caption_series_uploads
from backend.errors import ApiError
from backend.limits import check_image_bytes
from backend.routers.captions import result_item
from backend.state import BackendState, backend_state
from ccexpert_core import protocol

router = APIRouter(tags=["captions"], dependencies=[Depends(bearer_scheme)])
#: Dates per tile a request may hold (a request's images are bounded anyway; this keeps the schema honest).
MAX_DATES = 64


def _invalid(detail: str, field: str) -> ApiError:
    return ApiError(422, protocol.ERROR_INVALID_REQUEST, detail, field)


def _check(images: list[UploadFile], dates: int, tile_ids: list[str] | None, limit: int) -> int:
    """The number of tiles, or an :class:`ApiError` naming what does not add up."""
    if dates < 2:
        raise _invalid(f"a series needs two or more dates per tile, not {dates}", protocol.FIELD_DATES)
    if len(images) % dates:
        raise _invalid(
            f"{len(images)} images do not make tiles of {dates} dates: send {dates} images per tile, tile after tile",
            protocol.FIELD_IMAGE,
        )
    tiles = len(images) // dates
    # A series request may hold as many images as a pairs request: the body limits stay the same.
    if len(images) > 2 * limit:
        raise ApiError(
            422, protocol.ERROR_TOO_MANY_PAIRS,
            f"{len(images)} images in one request, over the limit of {2 * limit}: split the tiles into requests",
            protocol.FIELD_IMAGE,
        )
    if tile_ids is not None and len(tile_ids) != tiles:
        raise _invalid(f"{len(tile_ids)} tile ids for {tiles} tiles: give one per tile, or none",
                       protocol.FIELD_TILE_IDS)
    return tiles


@router.post(
    protocol.SERIES_PATH,
    response_model=schemas.Series,
    response_model_exclude_unset=True,
    responses=schemas.ERROR_RESPONSES,
    summary="Caption series of dates, tile by tile",
)
async def create_series_captions(
    state: Annotated[BackendState, Depends(backend_state)],
    image: Annotated[
        list[UploadFile], File(min_length=2, description="Every tile's images (PNG, JPEG or TIFF), in time order, "
                                                         "tile after tile")
    ],
    dates: Annotated[int, Form(ge=2, le=MAX_DATES, description="How many dates (images) each tile has")],
    intervals: Annotated[
        str | None,
        Form(description="Which dates to compare, earlier first, e.g. 0-1,1-2,0-2 (default: each date and the next)"),
    ] = None,
    tile_ids: Annotated[list[str] | None, Form(description="Optional: one id per tile, echoed in the results")] = None,
) -> protocol.SeriesBody:
    """For each tile, for each interval: the caption, whether it describes a change, the model's confidence and,
    from a model with a change-map head, its coarse change map."""
    limits = state.settings.limits
    _check(image, dates, tile_ids, limits.max_pairs_per_request)
    try:
        wanted = protocol.parse_intervals(intervals, dates) if intervals else [(k, k + 1) for k in range(dates - 1)]
    except ValueError as error:
        raise _invalid(str(error), protocol.FIELD_INTERVALS) from None
    for index, upload in enumerate(image):
        check_image_bytes(upload.size, limits, f"{protocol.FIELD_IMAGE}[{index}]")
    results = await caption_series_uploads(state, [upload.file.read for upload in image], dates, wanted)
    items: list[protocol.SeriesItem] = []
    for index, tile_results in enumerate(results):
        item: protocol.SeriesItem = {"intervals": [result_item(result) for result in tile_results]}
        if tile_ids is not None:
            item["tile_id"] = tile_ids[index]
        items.append(item)
    return {"model_id": state.model.model_id, "results": items}
