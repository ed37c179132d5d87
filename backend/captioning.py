"""From uploaded bytes to results: decode with limits (off the event loop), then through the batcher, with a timeout.

The REST route and the Gradio UI both caption through :func:`caption_uploads`, so they share every check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from PIL import Image

from backend.batching import DeadlineMissed, QueueFull
from backend.errors import ApiError
from backend.limits import decode_image
from backend.state import BackendState
from ccexpert_core import protocol
from ccexpert_core.captions import CaptionResult

#: Reads one upload's bytes (called in a worker thread, so one image at a time is in memory as bytes).
Loader = Callable[[], bytes]


def _decode_pairs(
    state: BackendState, uploads: Sequence[tuple[Loader, Loader]]
) -> list[tuple[Image.Image, Image.Image]]:
    limits, tile = state.settings.limits, state.captioner.tile_size
    return [
        (
            decode_image(before(), limits, tile, f"{protocol.FIELD_BEFORE}[{index}]"),
            decode_image(after(), limits, tile, f"{protocol.FIELD_AFTER}[{index}]"),
        )
        for index, (before, after) in enumerate(uploads)
    ]


async def caption_uploads(state: BackendState, uploads: Sequence[tuple[Loader, Loader]]) -> list[CaptionResult]:
    """Results for (before, after) uploads in order; :class:`ApiError` for bad images, a full queue or a timeout."""
    pairs = await asyncio.to_thread(_decode_pairs, state, uploads)
    timeout = state.settings.limits.request_timeout_s
    # The batcher keeps the deadline itself, so it never starts pairs that would be done after the client is gone.
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        return await state.batcher.submit(pairs, deadline)
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
