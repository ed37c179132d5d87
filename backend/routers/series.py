"""``POST /v1/series``: tiles of several dates in one multipart request; each image decoded and through the vision
tower once, each interval captioned; one result per tile, one item per interval, in order."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile
from pydantic import BeforeValidator

from backend import schemas
from backend.auth import bearer_scheme
from backend.captioning import caption_series_uploads
from backend.errors import ApiError
from backend.limits import check_image_bytes
from backend.routers.captions import result_item
from backend.state import BackendState, backend_state
from ccexpert_core import protocol
from ccexpert_core.series import Interval, check_intervals, consecutive_intervals

router = APIRouter(tags=["captions"], dependencies=[Depends(bearer_scheme)])


def _invalid(detail: str, field: str) -> ApiError:
    return ApiError(422, protocol.ERROR_INVALID_REQUEST, detail, field)


def _too_many(detail: str, field: str) -> ApiError:
    return ApiError(422, protocol.ERROR_TOO_MANY_PAIRS, detail, field)


def _whole_number(value: object) -> object:
    """A form's number as written: digits only (pydantic would also take ``2.0`` or `` 3`` for an int)."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError(f"'{value[:40]}' is not a whole number of dates")
    return value


def _check_dates(dates: int, limits: protocol.Limits) -> None:
    if dates > limits.max_dates_per_tile:
        raise _too_many(f"{dates} dates per tile, over the limit of {limits.max_dates_per_tile}",
                        protocol.FIELD_DATES)


def _intervals(text: str | None, dates: int) -> tuple[Interval, ...]:
    if text is None:
        return consecutive_intervals(dates)
    try:
        return check_intervals(protocol.parse_intervals(text), dates)
    except ValueError as error:
        raise _invalid(str(error), protocol.FIELD_INTERVALS) from None


def _check(images: int, dates: int, pairs_per_tile: int, tile_ids: list[str] | None, limits: protocol.Limits) -> None:
    """An :class:`ApiError` naming what does not add up or what is over a limit, before any image is read."""
    if images % dates:
        raise _invalid(
            f"{images} images do not make tiles of {dates} dates: send {dates} images per tile, tile after tile",
            protocol.FIELD_IMAGE,
        )
    tiles = images // dates
    if images > limits.max_images_per_request:
        raise _too_many(f"{images} images in one request, over the limit of {limits.max_images_per_request}: "
                        "split the tiles into requests", protocol.FIELD_IMAGE)
    if tiles * pairs_per_tile > limits.max_pairs_per_request:
        raise _too_many(f"{tiles} tiles × {pairs_per_tile} intervals = {tiles * pairs_per_tile} pairs in one request, "
                        f"over the limit of {limits.max_pairs_per_request}: split the tiles into requests",
                        protocol.FIELD_INTERVALS)
    if tile_ids is not None and len(tile_ids) != tiles:
        raise _invalid(f"{len(tile_ids)} tile ids for {tiles} tiles: give one per tile, or none",
                       protocol.FIELD_TILE_IDS)


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
    dates: Annotated[
        int, Form(ge=2, description="How many dates (images) each tile has"), BeforeValidator(_whole_number)
    ],
    intervals: Annotated[
        str | None,
        Form(description="Which dates to compare, earlier first, each once, e.g. 0-1,0-2,1-2 (default: each date and "
                         "the next); each tile's results come in this order"),
    ] = None,
    tile_ids: Annotated[list[str] | None, Form(description="Optional: one id per tile, echoed in the results")] = None,
) -> protocol.SeriesBody:
    """For each tile, for each interval: the caption, whether it describes a change, the model's confidence and,
    from a model with a change-map head, its coarse change map."""
    limits = state.settings.limits
    _check_dates(dates, limits)
    wanted = _intervals(intervals, dates)
    _check(len(image), dates, len(wanted), tile_ids, limits)
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
