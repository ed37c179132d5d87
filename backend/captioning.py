"""From uploaded bytes to results: decode with limits (off the event loop), then through the batcher, with a timeout.

The REST routes and the Gradio UI all caption through here, so they share every check. The batcher's unit is a
tile's :class:`~ccexpert_core.series.TileWork` (a pair, or a series of dates with its intervals), checked before it
joins a batch; :func:`captioner_stages` gives the batcher the Captioner's three steps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from PIL import Image

from backend.batching import DeadlineMissed, ModelStages, QueueFull
from backend.errors import ApiError
from backend.limits import decode_image
from backend.state import BackendState
from ccexpert_core import protocol
from ccexpert_core.captions import CaptionResult
from ccexpert_core.inference import Captioner
from ccexpert_core.series import Interval, TileWork

#: Reads one upload's bytes (called in a worker thread, so one image at a time is in memory as bytes).
Loader = Callable[[], bytes]


def captioner_stages(captioner: Captioner) -> ModelStages[TileWork, list[CaptionResult]]:
    """The Captioner's prepare / generate / finish as the batcher's stages; a tile weighs its intervals."""
    return ModelStages(captioner.prepare, captioner.generate, captioner.finish, weight=lambda tile: tile.pairs)


def _decode(state: BackendState, uploads: Sequence[Loader], fields: Sequence[str]) -> list[Image.Image]:
    limits, tile = state.settings.limits, state.captioner.tile_size
    with state.batcher.clock.measure("decode"):
        return [decode_image(load(), limits, tile, field) for load, field in zip(uploads, fields, strict=True)]


async def _submit(state: BackendState, work: list[TileWork]) -> list[list[CaptionResult]]:
    """Results per tile, per interval, through the batcher; :class:`ApiError` for a full queue or a timeout."""
    timeout = state.settings.limits.request_timeout_s
    # The batcher keeps the deadline itself, so it never starts pairs that would be done after the client is gone.
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        return await state.batcher.submit(work, deadline)
    except QueueFull as error:
        raise ApiError(503, protocol.ERROR_BUSY, f"the backend is busy: {error}; retry later") from None
    except DeadlineMissed as error:
        raise ApiError(
            503,
            protocol.ERROR_TIMEOUT,
            f"the backend is overloaded and would not finish within {timeout:g} s ({error}); retry later",
        ) from None
    except TimeoutError:
        raise ApiError(
            503, protocol.ERROR_TIMEOUT, f"no result within {timeout:g} s: the backend is overloaded; retry later"
        ) from None


async def caption_uploads(state: BackendState, uploads: Sequence[tuple[Loader, Loader]]) -> list[CaptionResult]:
    """Results for (before, after) uploads in order; :class:`ApiError` for bad images, a full queue or a timeout."""
    loaders = [load for pair in uploads for load in pair]
    names = (protocol.FIELD_BEFORE, protocol.FIELD_AFTER)
    fields = [f"{name}[{index}]" for index in range(len(uploads)) for name in names]
    images = await asyncio.to_thread(_decode, state, loaders, fields)
    work = [TileWork.pair(images[2 * k], images[2 * k + 1]) for k in range(len(uploads))]
    return [results[0] for results in await _submit(state, work)]


async def caption_series_uploads(
    state: BackendState, uploads: Sequence[Loader], dates: int, intervals: tuple[Interval, ...]
) -> list[list[CaptionResult]]:
    """Results per tile, per interval, for ``uploads`` holding ``dates`` images per tile, tile after tile;
    ``intervals`` already checked against ``dates`` (:func:`ccexpert_core.series.check_intervals`)."""
    fields = [f"{protocol.FIELD_IMAGE}[{index}]" for index in range(len(uploads))]
    images = await asyncio.to_thread(_decode, state, uploads, fields)
    work = [TileWork(tuple(images[k : k + dates]), intervals) for k in range(0, len(images), dates)]
    return await _submit(state, work)
