"""Request limits and safe image decoding: every bad upload becomes a 413 or 422 naming the image at fault."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import ApiError, error_response
from ccexpert_core import protocol
from ccexpert_core.errors import CCExpertError
from ccexpert_core.model import load_rgb
from ccexpert_core.protocol import Limits

#: Decoders allowed for uploads: the formats the API promises, and no other of Pillow's many parsers.
ACCEPTED_FORMATS = ("PNG", "JPEG", "TIFF")


def guard_pillow(limits: Limits) -> None:
    """Make Pillow itself refuse images over the pixel limit, as a second line behind :func:`decode_image`'s check.

    Pillow raises ``DecompressionBombError`` above twice ``MAX_IMAGE_PIXELS`` when it opens a file (and only warns
    between one and two times). The setting is process-wide: ``ccexpert serve``, which owns its process, calls this.
    """
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # decode_image rejects those images itself


def check_image_bytes(size: int | None, limits: Limits, field: str) -> None:
    """413 for an upload over the byte limit (checked before its bytes are read into memory)."""
    if size is not None and size > limits.max_image_bytes:
        raise ApiError(
            413, protocol.ERROR_TOO_LARGE, f"{field} is {size} bytes, over the limit of {limits.max_image_bytes}", field
        )


def decode_image(data: bytes, limits: Limits, tile_size: int, field: str) -> Image.Image:
    """The upload as an RGB image of ``tile_size`` × ``tile_size``, or an :class:`ApiError` naming ``field``.

    The pixel count is checked from the header before any pixel is decoded. The image is reduced to the model's
    tile size at once with the pair processor's own resize (bicubic), so a request holds small images only while it
    waits for the model, and the model sees the same pixels as when it is given the file in-process.
    """
    check_image_bytes(len(data), limits, field)
    if not data:
        raise ApiError(422, protocol.ERROR_INVALID_IMAGE, f"{field} is empty", field)
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise ApiError(
                    413,
                    protocol.ERROR_TOO_LARGE,
                    f"{field} is {width}×{height} = {width * height} pixels, over the limit of "
                    f"{limits.max_image_pixels}",
                    field,
                )
            image.load()
            rgb = load_rgb(image)
    except ApiError:
        raise
    except Image.DecompressionBombError as error:
        raise ApiError(413, protocol.ERROR_TOO_LARGE, f"{field}: {error}", field) from None
    except CCExpertError as error:
        raise ApiError(422, protocol.ERROR_INVALID_IMAGE, f"{field}: {error}", field) from None
    except UnidentifiedImageError:
        raise ApiError(422, protocol.ERROR_INVALID_IMAGE, f"{field} is not a PNG, JPEG or TIFF image", field) from None
    except Exception as error:  # noqa: BLE001 — any failure to parse untrusted bytes means the image is bad
        raise ApiError(
            422,
            protocol.ERROR_INVALID_IMAGE,
            f"{field} is a damaged or unsupported image ({type(error).__name__}: {error})",
            field,
        ) from None
    size = (tile_size, tile_size)
    return rgb if rgb.size == size else rgb.resize(size, Image.Resampling.BICUBIC)


class BodySizeLimit:
    """413 for a request body over the limit: at once when Content-Length announces it, else while it streams in.

    (FastAPI's own ``max_body_size`` answers the announced case in plain text; this keeps every error JSON.)
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(
                413,
                protocol.ERROR_TOO_LARGE,
                f"the request body is {declared} bytes, over the limit of {self.max_bytes}",
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # Raised inside the body parsing: FastAPI passes HTTPExceptions on to the JSON error handlers.
                raise HTTPException(413, f"the request body is over the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, counting_receive, send)
