"""The CCExpert backend over QGIS's network stack, so that the analyst's proxy, SSL and network settings apply.

Requests are blocking (``QgsBlockingNetworkRequest``: call from a task's thread, or briefly from the interface for
"Test connection"); bodies follow the shared wire format (``protocol``). Connection failures and 502/503/504 are
retried with exponential backoff; every failure ends as a :class:`CaptionRunError` whose message says what to do.
A request in flight is let finish: its captions are worth writing, and cancelling happens between batches.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from qgis.core import QgsBlockingNetworkRequest
from qgis.PyQt.QtCore import QByteArray, QUrl
from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest

from .errors import CaptionRunError
from .shared_modules import protocol

#: Answers that mean "not now" (a proxy without a backend behind it, a busy backend): retried.
RETRY_STATUSES = frozenset({502, 503, 504})
#: Network errors that mean the backend is not (or no longer) there: retried.
RETRY_ERRORS = frozenset({
    QNetworkReply.ConnectionRefusedError,
    QNetworkReply.RemoteHostClosedError,
    QNetworkReply.TemporaryNetworkFailureError,
    QNetworkReply.NetworkSessionFailedError,
    QNetworkReply.UnknownNetworkError,
})
#: The backoff sleeps in steps this long, checking for cancellation between them.
_SLEEP_STEP_S = 0.1

PngPair = tuple[bytes, bytes]


class _Answer(NamedTuple):
    status: int  # 0 when no HTTP answer came
    content: bytes
    error: str  # Qt's words for what went wrong
    timed_out: bool


def multipart_body(pairs: Sequence[PngPair], tile_ids: Sequence[str]) -> tuple[bytes, str]:
    """A captions request body and its content type: ``before``/``after`` per pair, then ``tile_ids``."""
    boundary = f"ccexpert-{uuid.uuid4().hex}"
    parts = []
    for index, (before, after) in enumerate(pairs):
        for field, data in ((protocol.FIELD_BEFORE, before), (protocol.FIELD_AFTER, after)):
            header = (f'Content-Disposition: form-data; name="{field}"; filename="{field}_{index}.png"\r\n'
                      "Content-Type: image/png\r\n\r\n")
            parts.append(header.encode() + data)
    for tile_id in tile_ids:
        parts.append(f'Content-Disposition: form-data; name="{protocol.FIELD_TILE_IDS}"\r\n\r\n{tile_id}'.encode())
    delimiter = f"--{boundary}\r\n".encode()
    body = b"".join(delimiter + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class BackendClient:
    """Talks to one backend with an optional bearer token.

    ``retries`` is how many times a request is repeated after a connection failure or a 502/503/504, waiting
    ``backoff_s``, then twice that…; ``is_canceled`` cuts those waits short.
    """

    def __init__(
        self, url: str, token: str = "", is_canceled: Callable[[], bool] = lambda: False, retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self.url = url.strip().rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise CaptionRunError(f"the backend URL must start with http:// or https://, not '{url}'")
        self.token = token.strip()
        self.is_canceled = is_canceled
        self.retries, self.backoff_s = max(0, retries), backoff_s
        self._limits: protocol.Limits | None = None

    def info(self) -> dict[str, Any]:
        """``GET /v1/info`` (checks the token and the API version; keeps the request limits)."""
        body = self._json(self._request(protocol.INFO_PATH))
        if body.get("api_version") != protocol.API_VERSION:
            raise CaptionRunError(
                f"the backend at {self.url} speaks API v{body.get('api_version')}, "
                f"this plugin v{protocol.API_VERSION}: update the older of the two"
            )
        self._limits = protocol.Limits.from_dict(body.get("limits", {}))
        return body

    def caption(self, pairs: Sequence[PngPair], tile_ids: Sequence[str]) -> list[dict[str, Any]]:
        """One result per (before PNG, after PNG) pair, in order, in as many requests as the backend's limit needs."""
        step = (self._limits or protocol.Limits.from_dict(self.info().get("limits", {}))).max_pairs_per_request
        results: list[dict[str, Any]] = []
        for start in range(0, len(pairs), step):
            chunk = pairs[start : start + step]
            body, content_type = multipart_body(chunk, tile_ids[start : start + step])
            answer = self._json(self._request(protocol.CAPTIONS_PATH, body, content_type))
            items = answer.get("results", [])
            if len(items) != len(chunk):
                raise CaptionRunError(f"the backend at {self.url} returned {len(items)} results for {len(chunk)} pairs")
            results.extend(items)
        return results

    def _request(self, path: str, body: bytes | None = None, content_type: str = "") -> _Answer:
        """The answer to a GET (no body) or POST, after the retries."""
        for attempt in range(self.retries + 1):
            request = QNetworkRequest(QUrl(self.url + path))
            if self.token:
                request.setRawHeader(protocol.AUTH_HEADER.encode(), f"{protocol.AUTH_SCHEME} {self.token}".encode())
            blocking = QgsBlockingNetworkRequest()
            if body is None:
                outcome = blocking.get(request, True)
            else:
                request.setHeader(QNetworkRequest.ContentTypeHeader, content_type)
                outcome = blocking.post(request, QByteArray(body), True)
            reply = blocking.reply()
            answer = _Answer(
                int(reply.attribute(QNetworkRequest.HttpStatusCodeAttribute) or 0), bytes(reply.content()),
                blocking.errorMessage(), outcome == QgsBlockingNetworkRequest.TimeoutError,
            )
            # A timeout is not retried: the backend is there but slow, and asking again would only add load.
            retry = answer.status in RETRY_STATUSES or (answer.status == 0 and reply.error() in RETRY_ERRORS)
            if not retry or attempt == self.retries or self.is_canceled():
                return answer
            self._wait(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns")

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self.is_canceled():
            time.sleep(min(_SLEEP_STEP_S, left))

    def _json(self, answer: _Answer) -> dict[str, Any]:
        status = answer.status
        if answer.timed_out:
            raise CaptionRunError(
                f"the backend at {self.url} did not answer within QGIS's network timeout: lower the batch size, or "
                "raise the timeout in Settings › Options › Network"
            )
        if status == 0:
            tries = f" (tried {self.retries + 1} times)" if self.retries else ""
            raise CaptionRunError(
                f"cannot reach the backend at {self.url}{tries}: {answer.error or 'no answer'}. "
                "Is `ccexpert serve` running there?"
            )
        if status == 401:
            if self.token:
                raise CaptionRunError(
                    f"the backend at {self.url} refused the token (401): enter one of the tokens in the backend's "
                    "--token-file"
                )
            raise CaptionRunError(f"the backend at {self.url} needs a token (401): enter one in the Backend section")
        try:
            body = json.loads(answer.content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            body = None
        if status >= 400:
            detail = body.get("detail") if isinstance(body, dict) else None
            kind = "rejected the request" if status < 500 else "failed"
            raise CaptionRunError(f"the backend at {self.url} {kind} ({status}): {detail or answer.error}")
        if not isinstance(body, dict):
            raise CaptionRunError(f"{self.url} answered with something other than JSON: is it a CCExpert backend?")
        return body
