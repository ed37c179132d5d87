"""HTTP client for the CCExpert backend (``ccexpert serve``): timeouts, retries with backoff, bearer auth (and the
token file it reads the token from).

>>> client = BackendClient("http://127.0.0.1:8000", token="…")
>>> client.caption([("before.png", "after.png")])   # → [CaptionResult(caption=..., change_detected=..., ...)]

Every failure is a :class:`~ccexpert_core.errors.CCExpertError` whose message says what to do.
Pillow is needed only to send PIL images or arrays (paths and PNG bytes go as they are).
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import requests
import requests.adapters

from ccexpert_core import protocol
from ccexpert_core.captions import CaptionResult, change_kind
from ccexpert_core.errors import CCExpertError

#: Answers that mean "not now" (a proxy without a backend behind it, a busy or timed-out backend): retried.
RETRY_STATUSES = frozenset({502, 503, 504})
#: Encoded (before, after) bytes, ready to send.
EncodedPair = tuple[bytes, bytes]


class BackendUnavailable(CCExpertError):
    """The backend did not answer (no connection, a timeout, or 502/503/504 after the retries): the same request
    may succeed elsewhere or later, unlike a request the backend refused."""

#: An image to send: encoded bytes (PNG/JPEG/TIFF), a file path, a PIL image or an H×W×3 uint8 array.
ImageSource = Any


def encode_array(rgb: np.ndarray, compress: bool = True) -> bytes:
    """An H×W×3 uint8 array as lossless bytes the backend decodes to exactly these pixels: PNG at zlib's fastest
    level where bytes cost (a backend across a network), uncompressed TIFF where they do not (loopback: a tenth of
    PNG's CPU time, so that the client is never what a GPU waits for)."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    buffer = io.BytesIO()
    if compress:
        image.save(buffer, format="PNG", compress_level=1)
    else:
        image.save(buffer, format="TIFF")
    return buffer.getvalue()


def encode_image(image: ImageSource, compress: bool = True) -> bytes:
    """The bytes to upload for one image: files and bytes as they are, PIL images and arrays losslessly (see
    :func:`encode_array`)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, Path)):
        try:
            return Path(image).read_bytes()
        except OSError as error:
            raise CCExpertError(f"cannot read image {image}: {error}") from None
    from PIL import Image

    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    dtype = str(getattr(image, "dtype", type(image).__name__))
    if dtype != "uint8":
        raise CCExpertError(f"an image array must be uint8 (0..255), got {dtype}; or give a path, bytes or PIL image")
    try:
        return encode_array(image, compress)
    except (TypeError, ValueError) as error:
        shape = getattr(image, "shape", "?")
        raise CCExpertError(f"cannot turn an array of shape {shape} into an image: {error}") from None


def read_token_file(path: str | Path) -> str:
    """The token in a token file: its first line that is not blank or a ``#`` comment (so the backend's own token
    file, one token per line, works too)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CCExpertError(f"cannot read the token file {path}: {error}") from None
    tokens = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not tokens:
        raise CCExpertError(f"the token file {path} holds no token (blank and # lines are ignored)")
    return tokens[0]


class BackendClient:
    """Talks to one backend. Thread-safe enough for a few worker threads sharing it (one requests session).

    ``timeout`` bounds each request (seconds; connecting gets at most 10); ``retries`` is how many times a request
    is repeated after a connection failure or a 502/503/504, waiting ``backoff_s``, then twice that, and so on.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 180.0,
        retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        try:
            self.url = protocol.check_backend_url(url)
        except ValueError as error:
            raise CCExpertError(str(error)) from None
        self.token = token
        self.timeout = (min(10.0, timeout), timeout)
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        #: Whether images are compressed for the trip (not to a backend on this machine: see encode_array).
        self.compress = not protocol.is_loopback(urlsplit(self.url).hostname or "")
        self._session = requests.Session()
        # Several requests share the session when batches are in flight: keep a connection for each.
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=64)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        if token:
            self._session.headers[protocol.AUTH_HEADER] = f"{protocol.AUTH_SCHEME} {token}"
        self._info: protocol.InfoBody | None = None

    def close(self) -> None:
        """Close the connections."""
        self._session.close()

    def __enter__(self) -> "BackendClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self) -> protocol.HealthBody:
        """``GET /v1/health``: whether the backend is up and its model loaded (needs no token)."""
        return self._json(self._request("GET", protocol.HEALTH_PATH))

    def info(self) -> protocol.InfoBody:
        """``GET /v1/info``, fetched afresh (and kept for :attr:`model_id` and :attr:`limits`)."""
        body: protocol.InfoBody = self._json(self._request("GET", protocol.INFO_PATH))
        problem = protocol.version_problem(dict(body), self.url, "this client")
        if problem is not None:
            raise CCExpertError(problem)
        self._info = body
        return body

    @property
    def model_id(self) -> str:
        """The backend's model id (from /v1/info, fetched once)."""
        return (self._info or self.info())["model_id"]

    @property
    def limits(self) -> protocol.Limits:
        """The backend's request limits (from /v1/info, fetched once)."""
        return protocol.Limits.from_dict((self._info or self.info())["limits"])

    def caption(
        self, pairs: Sequence[tuple[ImageSource, ImageSource]], tile_ids: Sequence[str] | None = None
    ) -> list[CaptionResult]:
        """Results for (before, after) pairs, in order; long lists go in several requests within the backend's limit."""
        encoded = [(encode_image(b, self.compress), encode_image(a, self.compress)) for b, a in pairs]
        return self.caption_encoded(encoded, tile_ids)

    def caption_encoded(
        self, pairs: Sequence[EncodedPair], tile_ids: Sequence[str] | None = None
    ) -> list[CaptionResult]:
        """Results for pairs already encoded (PNG, JPEG or TIFF bytes), in order, in as many requests as needed."""
        if tile_ids is not None and len(tile_ids) != len(pairs):
            raise CCExpertError(f"{len(tile_ids)} tile ids for {len(pairs)} pairs: give one per pair, or none")
        step = self.limits.max_pairs_per_request
        results: list[CaptionResult] = []
        for start in range(0, len(pairs), step):
            chunk_ids = None if tile_ids is None else list(tile_ids[start : start + step])
            results.extend(self._caption_chunk(pairs[start : start + step], chunk_ids))
        return results

    def caption_series_encoded(
        self, series: Sequence[Sequence[bytes]], intervals: list[tuple[int, int]], tile_ids: Sequence[str] | None = None
    ) -> list[list[CaptionResult]]:
        """Results per tile, per interval (``(i, j)`` into each tile's dates), for tiles of several encoded dates:
        ``POST /v1/series``, each image sent once, in as many requests as the backend's limit needs."""
        dates = len(series[0]) if series else 0
        if any(len(images) != dates for images in series):
            raise CCExpertError("every tile of a series request needs the same number of dates")
        limits = self.limits
        # Within the backend's limits on images and on pairs (tiles × intervals) per request.
        step = max(1, min(limits.max_images_per_request // max(1, dates),
                          limits.max_pairs_per_request // max(1, len(intervals))))
        results: list[list[CaptionResult]] = []
        for start in range(0, len(series), step):
            chunk = series[start : start + step]
            files = [(protocol.FIELD_IMAGE, (f"image_{n}", data, "application/octet-stream"))
                     for n, data in enumerate(image for images in chunk for image in images)]
            data: dict[str, Any] = {protocol.FIELD_DATES: str(dates),
                                    protocol.FIELD_INTERVALS: protocol.format_intervals(intervals)}
            if tile_ids is not None:
                data[protocol.FIELD_TILE_IDS] = list(tile_ids[start : start + step])
            body: protocol.SeriesBody = self._json(self._request("POST", protocol.SERIES_PATH, files=files, data=data))
            items = body.get("results", [])
            if len(items) != len(chunk) or any(len(item.get("intervals", [])) != len(intervals) for item in items):
                raise CCExpertError(f"the backend at {self.url} returned results that do not match the request")
            results.extend([_result(answer) for answer in item["intervals"]] for item in items)
        return results

    def _caption_chunk(self, pairs: Sequence[EncodedPair], tile_ids: list[str] | None) -> list[CaptionResult]:
        files = []
        for index, (before, after) in enumerate(pairs):
            files.append((protocol.FIELD_BEFORE, (f"before_{index}", before, "application/octet-stream")))
            files.append((protocol.FIELD_AFTER, (f"after_{index}", after, "application/octet-stream")))
        data = {protocol.FIELD_TILE_IDS: tile_ids} if tile_ids is not None else None
        body: protocol.CaptionsBody = self._json(self._request("POST", protocol.CAPTIONS_PATH, files=files, data=data))
        items = body.get("results", [])
        if len(items) != len(pairs):
            raise CCExpertError(f"the backend at {self.url} returned {len(items)} results for {len(pairs)} pairs")
        return [_result(item) for item in items]

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.url + path
        for attempt in range(self.retries + 1):
            last_try = attempt == self.retries
            try:
                response = self._session.request(method, url, timeout=self.timeout, **kwargs)
            except requests.ConnectionError as error:  # includes connect timeouts: nothing reached the model
                if last_try:
                    raise BackendUnavailable(
                        f"cannot reach the backend at {self.url}: {_reason(error)}. Is `ccexpert serve` running there?"
                    ) from None
            except requests.Timeout:
                raise BackendUnavailable(
                    f"the backend at {self.url} did not answer {method} {path} within {self.timeout[1]:g} s"
                ) from None
            else:
                if response.status_code not in RETRY_STATUSES or last_try:
                    return response
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _json(self, response: requests.Response) -> Any:
        if response.status_code == 401:
            if self.token:
                raise CCExpertError(
                    f"the backend at {self.url} refused the token (401): use one of the tokens in the backend's "
                    "--token-file"
                )
            raise CCExpertError(f"the backend at {self.url} needs a token (401): pass one, e.g. with --token-file")
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            if isinstance(body, dict) and "detail" in body:
                detail = str(body["detail"])
            else:
                detail = response.text[:300] or response.reason
            kind = "rejected the request" if response.status_code < 500 else "failed"
            error_type = BackendUnavailable if response.status_code in RETRY_STATUSES else CCExpertError
            raise error_type(f"the backend at {self.url} {kind} ({response.status_code}): {detail}")
        if body is None:
            raise CCExpertError(
                f"{self.url} answered {response.request.path_url} with something other than JSON: "
                "is it a CCExpert backend?"
            )
        return body


def _result(item: protocol.CaptionItem) -> CaptionResult:
    """A result off the wire."""
    return CaptionResult(
        caption=item["caption"],
        change_detected=bool(item["change_detected"]),
        confidence=float(item["confidence"]),
        change_map=_change_map(item.get("change_map")),
        # The backend's model may tell the kind; an older backend does not, and the words still do.
        change_kind=item.get("change_kind") or change_kind(item["caption"]),
    )


def _reason(error: requests.ConnectionError) -> str:
    # requests nests the socket error (urllib3's MaxRetryError → .reason → __cause__); the innermost one says it best.
    cause: BaseException = error
    for _ in range(8):
        inner = getattr(cause, "reason", None) or cause.__cause__ or (cause.args[0] if cause.args else None)
        if not isinstance(inner, BaseException):
            break
        cause = inner
    return str(cause) or type(cause).__name__


def _change_map(rows: list[list[float]] | None) -> tuple[tuple[float, ...], ...] | None:
    """A result's change map as :class:`CaptionResult` holds it (None where the backend's model has none)."""
    return None if rows is None else tuple(tuple(float(value) for value in row) for row in rows)
