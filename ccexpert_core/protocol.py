"""The wire format between clients and the CCExpert backend (API v1): paths, field names, limits, bodies.

This module is the one definition both sides use: the backend builds its routes and OpenAPI models from it,
:mod:`ccexpert_core.client` and the QGIS plugin (which bundles this file) build their requests from it.
Standard library only, so it runs in any Python, QGIS's included.

A captions request is ``multipart/form-data`` with the fields :data:`FIELD_BEFORE` and :data:`FIELD_AFTER`
repeated once per pair (the i-th ``before`` goes with the i-th ``after``; PNG, JPEG or TIFF bytes) and, optionally,
:data:`FIELD_TILE_IDS` repeated once per pair. Authenticated backends want ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, fields
from typing import Any, TypedDict

API_VERSION = "1"
API_PREFIX = f"/v{API_VERSION}"
HEALTH_PATH = f"{API_PREFIX}/health"
INFO_PATH = f"{API_PREFIX}/info"
CAPTIONS_PATH = f"{API_PREFIX}/captions"
#: A series of dates per tile: each image sent (and through the vision tower) once, captioned for each interval.
SERIES_PATH = f"{API_PREFIX}/series"
#: The Gradio UI's mount point; ``gradio_client`` connects to ``URL + UI_PATH + "/"``.
UI_PATH = "/ui"
#: The Gradio endpoint name: ``Client(...).predict(before, after, api_name=UI_API_NAME)``.
UI_API_NAME = "/caption"

FIELD_BEFORE = "before"
FIELD_AFTER = "after"
FIELD_TILE_IDS = "tile_ids"
#: Series requests: every tile's images, tile after tile, each tile's dates in time order.
FIELD_IMAGE = "image"
#: Series requests: how many dates each tile has (two or more).
FIELD_DATES = "dates"
#: Series requests: which dates to compare, "0-1,1-2" (the default: each date against the next).
FIELD_INTERVALS = "intervals"

AUTH_HEADER = "Authorization"
AUTH_SCHEME = "Bearer"

DEFAULT_PORT = 8000
DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_WAIT_MS = 20.0
#: Seconds a client may take to send a request's headers, and may stay silent while sending its body (the backend's
#: defaults): past them the connection is closed, with a 408 once some of the request has arrived.
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0

#: Error codes in :class:`ErrorBody` (``error``); the HTTP status says the class, the code says which problem.
ERROR_UNAUTHORIZED = "unauthorized"
ERROR_INVALID_REQUEST = "invalid_request"
ERROR_INVALID_IMAGE = "invalid_image"
ERROR_TOO_LARGE = "too_large"
ERROR_TOO_MANY_PAIRS = "too_many_pairs"
ERROR_BUSY = "busy"
ERROR_TIMEOUT = "timeout"
ERROR_NOT_FOUND = "not_found"
ERROR_INTERNAL = "internal"


@dataclass(frozen=True)
class Limits:
    """What one request may hold; the backend rejects more with 413 (sizes) or 422 (counts), before decoding."""

    #: Pairs the model captions for one request: pairs of a captions request, tiles × intervals of a series request
    #: (clients split longer lists).
    max_pairs_per_request: int = 32
    #: Images in one request (a series request's tiles × dates).
    max_images_per_request: int = 64
    #: Dates of one tile in a series request (a tile asks for each interval of its dates at most once).
    max_dates_per_tile: int = 64
    #: Encoded bytes of one image.
    max_image_bytes: int = 16 * 1024 * 1024
    #: Decoded pixels (width × height) of one image, checked from the header before decoding.
    max_image_pixels: int = 4096 * 4096
    #: Seconds a captions request may wait for its results (queue + model) before a 503.
    request_timeout_s: float = 120.0
    #: Pairs waiting for the model across all requests; more are refused with 503 until the queue drains.
    max_queued_pairs: int = 512

    def max_body_bytes(self) -> int:
        """The largest multipart body a full request can need (images plus generous room for the framing)."""
        images = max(self.max_images_per_request, 2 * self.max_pairs_per_request)
        return images * (self.max_image_bytes + 64 * 1024) + 1024 * 1024

    def to_dict(self) -> dict[str, Any]:
        """The limits as JSON-ready values (the ``limits`` of :class:`InfoBody`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Limits":
        """Limits from an info body; unknown keys (a newer backend's) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


class HealthBody(TypedDict):
    """``GET /v1/health`` (no auth)."""

    status: str  # "ok" once the model is loaded, else "loading"
    model_loaded: bool
    api_version: str


class StageStats(TypedDict):
    """One stage of the backend's work since it started: calls, wall seconds, CPU seconds of its threads."""

    calls: int
    seconds: float
    cpu_s: float


class BatchingStats(TypedDict):
    """How the dynamic batcher has grouped pairs since the backend started."""

    max_batch: int
    max_wait_ms: float
    batches: int
    pairs: int
    mean_batch_size: float
    max_batch_size: int
    queued_pairs: int
    #: Pairs taken back before the model ran them: their request timed out, left, or could not be done in time.
    withdrawn_pairs: int
    #: Batches that failed and were run again request by request, so that only the request at fault failed.
    isolated_batches: int
    #: Time spent per stage (decode, prepare, model, finish): what keeps the model waiting, if anything.
    stages: dict[str, StageStats]


class InfoBody(TypedDict):
    """``GET /v1/info``."""

    api_version: str
    version: str  # the ccexpert package version
    model_id: str  # the model folder's name and a fingerprint of its files (or the preset); never a server path
    #: What the model calls itself (its model card's title), for people; never a path on the server.
    model_name: str
    #: What a user must know about the model's captions (e.g. the demo model's synthetic training), or null.
    model_note: str | None
    tile_size: int
    prompt: str
    device: str
    dtype: str
    limits: dict[str, Any]  # Limits.to_dict()
    batching: BatchingStats
    internal_errors: int  # requests that ended in a 500: should stay 0
    #: Copies of this backend, one model each, answering at this URL (Ray Serve replicas; 1 for one process).
    replicas: int
    #: Whether ``POST /v1/series`` is served (older backends lack it: clients send a series as pairs there).
    series: bool


class CaptionItem(TypedDict, total=False):
    """One pair's result; ``tile_id`` only when the request gave tile ids, ``change_map`` only from a model with
    a change-map head: per token of its g×g image grid (rows top to bottom), the probability that this place
    changed (4 decimals)."""

    caption: str
    change_detected: bool
    confidence: float
    tile_id: str
    change_map: list[list[float]]
    #: The kind of change (buildings, roads, vegetation, water, bare land, demolition), where one is named.
    change_kind: str


class CaptionsBody(TypedDict):
    """``POST /v1/captions``: one item per pair, in request order."""

    model_id: str
    results: list[CaptionItem]


class SeriesItem(TypedDict, total=False):
    """One tile's results in a series request: one :class:`CaptionItem` per interval, in the intervals' order."""

    tile_id: str
    intervals: list[CaptionItem]


class SeriesBody(TypedDict):
    """``POST /v1/series``: one item per tile, in request order."""

    model_id: str
    results: list[SeriesItem]


def version_problem(info: dict[str, Any], url: str, client: str) -> str | None:
    """Why ``client`` (speaking this API version) cannot use the backend at ``url`` whose ``/v1/info`` is ``info``;
    None where it can."""
    if info.get("api_version") == API_VERSION:
        return None
    return (f"the backend at {url} speaks API v{info.get('api_version')}, {client} v{API_VERSION}: update the older "
            "of the two")


def format_intervals(intervals: list[tuple[int, int]]) -> str:
    """``[(0, 1), (1, 2)]`` → ``"0-1,1-2"`` (the :data:`FIELD_INTERVALS` value)."""
    return ",".join(f"{i}-{j}" for i, j in intervals)


def parse_intervals(text: str) -> list[tuple[int, int]]:
    """The :data:`FIELD_INTERVALS` value as (i, j) pairs, or ``ValueError`` saying how it is written (the rules for
    which intervals a tile may ask are :func:`ccexpert_core.series.check_intervals`)."""
    intervals = []
    for part in text.split(","):
        first, sep, second = part.strip().partition("-")
        if not sep or not _is_index(first) or not _is_index(second):
            raise ValueError(
                f"intervals are written 0-1,1-2 (date indices in ASCII digits, earlier first), not '{text[:80]}'"
            )
        intervals.append((int(first), int(second)))
    return intervals


def _is_index(text: str) -> bool:
    return 0 < len(text) <= 4 and text.isascii() and text.isdigit()


class ErrorBody(TypedDict, total=False):
    """Every 4xx/5xx: a code from the ``ERROR_*`` constants, a message for a person, the field at fault if any."""

    error: str
    detail: str
    field: str


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, IPv6 bracketed or not) is this machine: ``localhost``, 127.0.0.0/8,
    ``::1``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_backend_url(url: str) -> str:
    """``url`` without trailing slashes, or ``ValueError`` saying what is wrong with it: clients need an ``http://``
    or ``https://`` URL with a host (and, if given, a port from 1 to 65535)."""
    from urllib.parse import urlsplit

    text = url.strip().rstrip("/")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"the backend URL '{url}' has a port that is not a number from 1 to 65535") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"the backend URL must start with http:// or https://, not '{url}' (e.g. http://127.0.0.1:8000)")
    if not parts.hostname:
        raise ValueError(f"the backend URL '{url}' names no host (e.g. http://127.0.0.1:8000)")
    if port == 0:
        raise ValueError(f"the backend URL '{url}' has port 0: give the port the backend listens on")
    if parts.query or parts.fragment:
        raise ValueError(f"the backend URL '{url}' has a query or fragment: give just scheme, host, port (and path)")
    return text
