"""Request limits and safe image decoding: every bad upload becomes a 413 or 422 naming the image at fault."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
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
        # A multi-page TIFF opens at its first page, and that page is the image: GeoTIFFs keep their overviews and
        # masks in the pages after it (documented in the README and the OpenAPI description).
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


#: Room for a multipart part's own headers (Content-Disposition, Content-Type) on top of its data.
PART_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class BodyRule:
    """What one request body may hold: bytes in all, bytes in one multipart part (a file), multipart parts.

    ``max_parts`` None: no count of its own (the multipart parser still refuses more than 1,000 files or fields).
    """

    max_bytes: int
    max_file_bytes: int
    max_parts: int | None = None


def api_body_rule(limits: Limits) -> BodyRule:
    """The API's rule: a full captions request, each image within its limit.

    No part count: the API ignores form fields it does not know, and a client may send some; the body and file
    limits already bound what a request can make the backend store.
    """
    return BodyRule(limits.max_body_bytes(), limits.max_image_bytes)


class _BodyOverLimit(HTTPException):
    """Raised from ``receive`` once a body streams past its rule; the middleware answers 413 in its place."""


class MultipartScanner:
    """Counts a multipart body's parts and measures the one coming in, as the bytes stream past (nothing is kept)."""

    def __init__(self, boundary: bytes, rule: BodyRule) -> None:
        self._delimiter = b"\r\n--" + boundary
        self._rule = rule
        self._tail = b"\r\n"  # the body's first delimiter has no line break before it
        self._offset = 0  # stream position of self._tail[0], counting the virtual line break
        self._part_start = 0  # stream position where the current part began
        self.delimiters = 0

    @classmethod
    def for_content_type(cls, content_type: str, rule: BodyRule) -> MultipartScanner | None:
        """A scanner for a ``multipart/form-data`` body, else None."""
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        return cls(boundary, rule) if kind == b"multipart/form-data" and boundary else None

    def feed(self, chunk: bytes) -> str | None:
        """Take the next chunk; why the body is refused, if it now is."""
        data = self._tail + chunk
        largest = 0  # the largest part this chunk completes or continues
        search = 0
        while (found := data.find(self._delimiter, search)) != -1:
            self.delimiters += 1
            largest = max(largest, self._offset + found - self._part_start)
            search = found + len(self._delimiter)
            self._part_start = self._offset + search
        keep = len(self._delimiter) - 1
        self._offset += max(0, len(data) - keep)
        self._tail = data[-keep:]
        largest = max(largest, self._offset + len(self._tail) - self._part_start)
        # The parts lie between the delimiters: the closing delimiter ends the last one.
        if self._rule.max_parts is not None and self.delimiters - 1 > self._rule.max_parts:
            return f"the request holds more than {self._rule.max_parts} parts"
        if largest > self._rule.max_file_bytes + PART_HEADER_BYTES:
            return f"an uploaded file is over the limit of {self._rule.max_file_bytes} bytes"
        return None


class BodySizeLimit:
    """413 for a request body over its rule: at once when Content-Length announces it, else as it streams in.

    The rule is per path prefix (the UI takes a pair at most, the API a full request). While a multipart body
    streams in, its parts are counted and the one coming in is measured, so a huge file is refused when it passes
    the image limit, not after the whole body has been stored. What the client still sends is read and dropped by
    uvicorn, so the connection stays usable, for at most the header timeout of :mod:`backend.connections`.
    (FastAPI's own ``max_body_size`` answers the announced case in plain text; this keeps every error JSON.)
    """

    def __init__(self, app: ASGIApp, rule: BodyRule, rules_by_prefix: dict[str, BodyRule] | None = None) -> None:
        self.app = app
        self.rule = rule
        self.rules_by_prefix = rules_by_prefix or {}

    def _rule_for(self, path: str) -> BodyRule:
        return next((rule for prefix, rule in self.rules_by_prefix.items() if path.startswith(prefix)), self.rule)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = self._rule_for(scope.get("path", ""))
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > rule.max_bytes:
            await _too_large(f"the request body is {declared} bytes, over the limit of {rule.max_bytes}")(
                scope, receive, send
            )
            return
        scanner = MultipartScanner.for_content_type(headers.get("content-type", ""), rule)
        received = 0
        refusal: str | None = None
        started = False

        async def limited_receive() -> Message:
            nonlocal received, refusal
            if refusal is None:
                message = await receive()
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > rule.max_bytes:
                    refusal = f"the request body is over the limit of {rule.max_bytes} bytes"
                elif scanner is not None:
                    refusal = scanner.feed(chunk)
                if refusal is None:
                    return message
            raise _BodyOverLimit(413, refusal)

        async def answering_send(message: Message) -> None:
            nonlocal started
            if refusal is not None:
                return  # the app's answer to a body cut short gives way to the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, answering_send)
        except Exception:
            if refusal is None or started:
                raise
        if refusal is not None and not started:
            await _too_large(refusal)(scope, receive, send)


def _too_large(detail: str) -> JSONResponse:
    return error_response(413, protocol.ERROR_TOO_LARGE, detail)
