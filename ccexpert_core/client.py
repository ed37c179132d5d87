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

import requests

from ccexpert_core import protocol
from ccexpert_core.captions import CaptionResult
from ccexpert_core.errors import CCExpertError

#: Answers that mean "not now" (a proxy without a backend behind it, a busy or timed-out backend): retried.
RETRY_STATUSES = frozenset({502, 503, 504})

#: An image to send: encoded bytes (PNG/JPEG/TIFF), a file path, a PIL image or an H×W×3 uint8 array.
ImageSource = Any


def encode_image(image: ImageSource) -> bytes:
    """The bytes to upload for one image: files and bytes as they are, PIL images and arrays as PNG."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, Path)):
        try:
            return Path(image).read_bytes()
        except OSError as error:
            raise CCExpertError(f"cannot read image {image}: {error}") from None
    from PIL import Image

    if not isinstance(image, Image.Image):
        dtype = str(getattr(image, "dtype", type(image).__name__))
        if dtype != "uint8":
            raise CCExpertError(
                f"an image array must be uint8 (0..255), got {dtype}; or give a path, bytes or PIL image"
            )
        try:
            image = Image.fromarray(image)
        except (TypeError, ValueError) as error:
            shape = getattr(image, "shape", "?")
            raise CCExpertError(f"cannot turn an array of shape {shape} into an image: {error}") from None
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # lossless; light compression is cheaper than sending more
    return buffer.getvalue()


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
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = (min(10.0, timeout), timeout)
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self._session = requests.Session()
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
        if body.get("api_version") != protocol.API_VERSION:
            raise CCExpertError(
                f"the backend at {self.url} speaks API v{body.get('api_version')}, "
                f"this client v{protocol.API_VERSION}: update the older of the two"
            )
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
        if tile_ids is not None and len(tile_ids) != len(pairs):
            raise CCExpertError(f"{len(tile_ids)} tile ids for {len(pairs)} pairs: give one per pair, or none")
        step = self.limits.max_pairs_per_request
        results: list[CaptionResult] = []
        for start in range(0, len(pairs), step):
            chunk_ids = None if tile_ids is None else list(tile_ids[start : start + step])
            results.extend(self._caption_chunk(pairs[start : start + step], chunk_ids))
        return results

    def _caption_chunk(
        self, pairs: Sequence[tuple[ImageSource, ImageSource]], tile_ids: list[str] | None
    ) -> list[CaptionResult]:
        files = []
        for index, (before, after) in enumerate(pairs):
            files.append((protocol.FIELD_BEFORE, (f"before_{index}", encode_image(before), "application/octet-stream")))
            files.append((protocol.FIELD_AFTER, (f"after_{index}", encode_image(after), "application/octet-stream")))
        data = {protocol.FIELD_TILE_IDS: tile_ids} if tile_ids is not None else None
        body: protocol.CaptionsBody = self._json(self._request("POST", protocol.CAPTIONS_PATH, files=files, data=data))
        items = body.get("results", [])
        if len(items) != len(pairs):
            raise CCExpertError(f"the backend at {self.url} returned {len(items)} results for {len(pairs)} pairs")
        return [
            CaptionResult(
                caption=item["caption"],
                change_detected=bool(item["change_detected"]),
                confidence=float(item["confidence"]),
                change_map=_change_map(item.get("change_map")),
            )
            for item in items
        ]

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.url + path
        for attempt in range(self.retries + 1):
            last_try = attempt == self.retries
            try:
                response = self._session.request(method, url, timeout=self.timeout, **kwargs)
            except requests.ConnectionError as error:  # includes connect timeouts: nothing reached the model
                if last_try:
                    raise CCExpertError(
                        f"cannot reach the backend at {self.url}: {_reason(error)}. Is `ccexpert serve` running there?"
                    ) from None
            except requests.Timeout:
                raise CCExpertError(
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
            raise CCExpertError(f"the backend at {self.url} {kind} ({response.status_code}): {detail}")
        if body is None:
            raise CCExpertError(
                f"{self.url} answered {response.request.path_url} with something other than JSON: "
                "is it a CCExpert backend?"
            )
        return body


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
