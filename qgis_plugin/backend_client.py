"""The CCExpert backend over QGIS's network stack, so that the analyst's proxy, SSL and network settings apply.

Requests are blocking (``QgsBlockingNetworkRequest``): call them from a QThread — a task's, or one of
:class:`RequestThreads`' — or briefly from the interface for "Test connection". A plain Python thread will not
do: QGIS's network timeout runs on a Qt timer, and Qt timers only run in threads Qt started. Bodies follow the
shared wire format (``protocol``). Connection failures and 502/503/504 are retried with exponential backoff, then
raised as :class:`BackendUnavailable` (the run's failover sends the batch elsewhere or waits for the backend to
come back); every other failure is a :class:`CaptionRunError` whose message says what to do.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar
from urllib.parse import urlsplit

from qgis.core import QgsBlockingNetworkRequest
from qgis.PyQt.QtCore import QByteArray, QRunnable, QThreadPool, QUrl
from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest

from .errors import BackendUnavailable, CaptionRunError, NotABackend, TokenNeeded
from .shared_modules import protocol

#: Answers that mean "not now" (a proxy without a backend behind it, a busy backend): retried.
RETRY_STATUSES = frozenset({502, 503, 504})
#: Network errors that mean the backend is not (or no longer) there: retried before giving up on it.
RETRY_ERRORS = frozenset({
    QNetworkReply.NetworkError.ConnectionRefusedError,
    QNetworkReply.NetworkError.RemoteHostClosedError,
    QNetworkReply.NetworkError.TemporaryNetworkFailureError,
    QNetworkReply.NetworkError.NetworkSessionFailedError,
    QNetworkReply.NetworkError.UnknownNetworkError,
})
#: The backoff sleeps in steps this long, checking for cancellation between them.
_SLEEP_STEP_S = 0.1

EncodedPair = tuple[bytes, bytes]
Argument = TypeVar("Argument")
Result = TypeVar("Result")


class _Answer(NamedTuple):
    status: int  # 0 when no HTTP answer came
    content: bytes
    error: str  # Qt's words for what went wrong
    timed_out: bool


def _json_object(content: bytes) -> dict[str, Any] | None:
    """``content`` as a JSON object, or None where it is not one."""
    try:
        body = json.loads(content)
    except (UnicodeDecodeError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _image_type(data: bytes) -> tuple[str, str]:
    """(file suffix, MIME type) of encoded image bytes, for the part's headers (the backend reads the bytes)."""
    if data.startswith(b"\x89PNG"):
        return "png", "image/png"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tif", "image/tiff"
    return "jpg", "image/jpeg"


def _form(files: Sequence[tuple[str, bytes]], fields: Sequence[tuple[str, str]]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of image ``files`` and text ``fields`` (name, value), and its content type."""
    boundary = f"ccexpert-{uuid.uuid4().hex}"
    delimiter = f"--{boundary}\r\n".encode()
    parts: list[bytes] = []
    for index, (field, data) in enumerate(files):
        suffix, mime = _image_type(data)
        header = (f'Content-Disposition: form-data; name="{field}"; filename="{field}_{index}.{suffix}"\r\n'
                  f"Content-Type: {mime}\r\n\r\n")
        # Header, image and delimiter as separate pieces: one join copies each image once.
        parts += [delimiter, header.encode(), data, b"\r\n"]
    for name, value in fields:
        parts += [delimiter, f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Request(NamedTuple):
    """A request body ready to send to ``path``: ``tiles`` pairs, or ``tiles`` series of ``intervals`` each."""

    path: str
    body: bytes
    content_type: str
    tiles: int
    #: Intervals per tile of a series request; 0 for pairs.
    intervals: int = 0


def pairs_body(pairs: Sequence[EncodedPair], tile_ids: Sequence[str]) -> Request:
    """A captions request: ``before``/``after`` per pair, then ``tile_ids``."""
    files = [(field, data) for before, after in pairs
             for field, data in ((protocol.FIELD_BEFORE, before), (protocol.FIELD_AFTER, after))]
    body, content_type = _form(files, [(protocol.FIELD_TILE_IDS, tile_id) for tile_id in tile_ids])
    return Request(protocol.CAPTIONS_PATH, body, content_type, len(pairs))


def series_body(
    series: Sequence[Sequence[bytes]], intervals: Sequence[tuple[int, int]], tile_ids: Sequence[str]
) -> Request:
    """A series request: every tile's images in time order (each image once; every tile as many dates), captioned
    for ``intervals``."""
    fields = [(protocol.FIELD_DATES, str(len(series[0]))),
              (protocol.FIELD_INTERVALS, protocol.format_intervals(list(intervals)))]
    body, content_type = _form([(protocol.FIELD_IMAGE, data) for images in series for data in images],
                               fields + [(protocol.FIELD_TILE_IDS, tile_id) for tile_id in tile_ids])
    return Request(protocol.SERIES_PATH, body, content_type, len(series), len(intervals))


class BackendClient:
    """Talks to one backend with an optional bearer token.

    ``retries`` is how many times a request is repeated after a connection failure or a 502/503/504, waiting
    ``backoff_s``, then twice that…; ``is_canceled`` cuts those waits short and refuses new requests (one already
    sent is let finish: QGIS 3.22 cannot abort a blocking request safely, see :class:`RequestThreads`).
    """

    def __init__(  # nosec B107
        self, url: str, token: str = "", is_canceled: Callable[[], bool] = lambda: False, retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        try:
            self.url = protocol.check_backend_url(url)
        except ValueError as error:
            raise CaptionRunError(str(error)) from None
        self.token = token.strip()
        self.is_canceled = is_canceled
        self.retries, self.backoff_s = max(0, retries), backoff_s
        #: Whether tile images are compressed for the trip (not to a backend on this machine: see png.py).
        self.compress = not protocol.is_loopback(urlsplit(self.url).hostname or "")
        self._info: dict[str, Any] | None = None

    def info(self) -> dict[str, Any]:
        """``GET /v1/info``: checks that a CCExpert backend answers (:class:`NotABackend` otherwise), the token and
        the API version; keeps what it said (the request limits, whether it takes series)."""
        answer = self._request(protocol.INFO_PATH)
        if answer.status == 404 or (200 <= answer.status < 300 and not _json_object(answer.content)):
            said = "404 Not Found" if answer.status == 404 else "something other than JSON"
            raise self._not_a_backend(f"it answered {said} to {protocol.INFO_PATH}")
        if answer.status >= 400 and answer.status not in (401, *RETRY_STATUSES):
            body = _json_object(answer.content)
            if body is None or "error" not in body:  # every refusal of the backend is JSON with an error code
                raise self._not_a_backend(f"it answered {answer.status} to {protocol.INFO_PATH}")
        body = self._json(answer)
        if "api_version" not in body:
            raise self._not_a_backend(f"its {protocol.INFO_PATH} has no api_version")
        problem = protocol.version_problem(body, self.url, "this plugin")
        if problem is not None:
            raise CaptionRunError(problem)
        self._info = body
        return body

    def _not_a_backend(self, why: str) -> NotABackend:
        hint = ""
        base, _, tail = self.url.rpartition(protocol.UI_PATH)
        if base and not tail:  # the web UI's address: the API is at the server's root
            hint = f"; {self.url} is the backend's web UI: its URL is {base}"
        return NotABackend(f"nothing at {self.url} answers as a CCExpert backend ({why}){hint}")

    def _known_info(self) -> dict[str, Any]:
        return self._info if self._info is not None else self.info()

    @property
    def limits(self) -> protocol.Limits:
        """The backend's request limits (from :meth:`info`, asked once)."""
        return protocol.Limits.from_dict(self._known_info().get("limits", {}))

    @property
    def takes_series(self) -> bool:
        """Whether the backend serves series requests (:func:`series_body`; older ones take pairs only)."""
        return bool(self._known_info().get("series"))

    def caption(self, request: Request) -> list[dict[str, Any]]:
        """The results of one request, in order: pair by pair, or tile by tile and interval by interval."""
        answer = self._json(self._request(request.path, request.body, request.content_type))
        items = answer.get("results", [])
        if request.intervals:
            if len(items) == request.tiles and all(len(item.get("intervals", [])) == request.intervals
                                                   for item in items):
                return [result for item in items for result in item["intervals"]]
        elif len(items) == request.tiles:
            return items
        raise CaptionRunError(f"the backend at {self.url} returned results that do not match the request "
                              f"({len(items)} for {request.tiles} {'tiles' if request.intervals else 'pairs'})")

    def _request(self, path: str, body: bytes | None = None, content_type: str = "") -> _Answer:
        """The answer to a GET (no body) or POST, after the retries."""
        for attempt in range(self.retries + 1):
            self._check_running()
            request = QNetworkRequest(QUrl(self.url + path))
            if self.token:
                request.setRawHeader(protocol.AUTH_HEADER.encode(), f"{protocol.AUTH_SCHEME} {self.token}".encode())
            blocking = QgsBlockingNetworkRequest()
            if body is None:
                outcome = blocking.get(request, True)
            else:
                request.setHeader(QNetworkRequest.KnownHeaders.ContentTypeHeader, content_type)
                outcome = blocking.post(request, QByteArray(body), True)
            self._check_running()  # the run stopped while this request was open: nobody reads its answer
            reply = blocking.reply()
            answer = _Answer(
                int(reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute) or 0), bytes(reply.content()),
                blocking.errorMessage(), outcome == QgsBlockingNetworkRequest.ErrorCode.TimeoutError,
            )
            # A timeout is not repeated here: the backend is there but slow, and asking it again would only add
            # load; the run's failover may send the batch to another backend.
            retry = answer.status in RETRY_STATUSES or (answer.status == 0 and reply.error() in RETRY_ERRORS)
            if not retry or attempt == self.retries:
                return answer
            self._wait(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns")

    def _check_running(self) -> None:
        if self.is_canceled():
            raise CaptionRunError("the run was stopped before the backend answered")

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self.is_canceled():
            time.sleep(min(_SLEEP_STEP_S, left))

    def _json(self, answer: _Answer) -> dict[str, Any]:
        status = answer.status
        if answer.timed_out:
            raise BackendUnavailable(
                f"the backend at {self.url} did not answer within QGIS's network timeout: lower the batch size or "
                "the requests in flight, or raise the timeout in Settings › Options › Network"
            )
        if status == 0:
            tries = f" (tried {self.retries + 1} times)" if self.retries else ""
            raise BackendUnavailable(
                f"cannot reach the backend at {self.url}{tries}: {answer.error or 'no answer'}. "
                "Is `ccexpert serve` running there?"
            )
        if status == 401:
            if self.token:
                raise CaptionRunError(
                    f"the backend at {self.url} refused the token (401): enter one of the tokens in the backend's "
                    "--token-file"
                )
            raise TokenNeeded(f"the backend at {self.url} needs a token (401): enter one in the Backend section")
        body = _json_object(answer.content)
        if status >= 400:
            detail = body.get("detail") if body is not None else None
            kind = "rejected the request" if status < 500 else "failed"
            error = BackendUnavailable if status in RETRY_STATUSES else CaptionRunError
            raise error(f"the backend at {self.url} {kind} ({status}): {detail or answer.error}")
        if body is None:
            raise self._not_a_backend("it answered with something other than JSON")
        return body


class _Call(QRunnable):
    """One function call on a pool thread; ``done`` is set once it returned or raised."""

    def __init__(self, function: Callable[[Any], Any], argument: Any) -> None:
        super().__init__()
        self.setAutoDelete(False)  # Python owns it: the caller reads the result after run()
        self.function, self.argument = function, argument
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.result = self.function(self.argument)
        except BaseException as error:  # handed to the caller's thread, which raises it
            self.error = error
        finally:
            self.done.set()


class RequestThreads:
    """Runs blocking network calls on ``threads`` QThreads of their own, for callers on any thread (the in-flight
    scheduler's are plain Python threads, where QGIS's network timeout would never fire).

    A run that stops does not wait for the requests it left open: in QGIS 3.22 aborting a blocking request through
    its feedback drops the reply it waits for, and the request then never returns. They end when their backend
    answers (or at QGIS's network timeout); their answers are not read, their batches are done by the next run.
    """

    #: Pools whose runs stopped with requests open, kept alive until those end (a pool destroyed waits for them).
    _draining: ClassVar[list[QThreadPool]] = []

    def __init__(self, threads: int) -> None:
        self._pool = QThreadPool()
        self._pool.setMaxThreadCount(max(1, threads))

    def call(self, function: Callable[[Argument], Result], argument: Argument) -> Result:
        """``function(argument)`` on one of the pool's threads, waited for; its error is raised here."""
        call = _Call(function, argument)
        self._pool.start(call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def close(self) -> None:
        """Let go of the pool now; one with requests still open lives on until they end."""
        drained = [pool for pool in RequestThreads._draining if pool.activeThreadCount() == 0]
        for pool in drained:
            RequestThreads._draining.remove(pool)
        if self._pool.activeThreadCount():
            RequestThreads._draining.append(self._pool)
