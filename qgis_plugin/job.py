"""One captioning run: tile the area, read every date, keep several batches in flight to one or more backends,
write each batch as it comes back. The run's rules are the command's (the bundled ``run_contract``): its settings,
dates and intervals, stored options, what is left to do, failure policy, tile-count guard and lock; this module wires
GDAL, OGR and QGIS's network to them.

A run is a series of two or more dates (two is the common case): every date is read on the first one's grid and
each interval (consecutive, and the first against the last where asked) is captioned, one feature per tile and
interval. Each date's image of a tile is read and
encoded once and sent once: a tile that needs every interval goes in a series request (the backend's vision tower
sees each image once), a tile that needs only some (a resume, nodata in a date), or a backend that takes pairs
only, gets its intervals' pairs. A series also gets the ``history`` layer; a model with a change-map head the
``changes`` layer. Run options are stored with the command's keys (``dates``), so either tool resumes the other's
output, per tile and interval.

Plain data in, a summary out, no QGIS layer or widget touched: the :class:`~.task.CaptionTask` runs it in a
background thread and the Processing algorithm in its own. The scheduler is the command's own (bundled
``inflight``): two reader threads read and encode batches, each with rasters of its own, while up to ``in_flight``
requests are open, each on a QThread of its own (QGIS's network stack, so proxies and SSL settings apply); batches
are written in the order they come back, one transaction each. Several backends share the work (bundled
``Failover``: the least busy one gets the next batch, one that stops answering hands its batches to the others and
is tried again later; with none answering the run waits out its retry budget). Cancelling stops at once: requests
still open are not waited for, and their batches, never written, are done by the next run, which resumes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from osgeo import gdal

from .area import tile_area
from .backend_client import BackendClient, Request, RequestThreads, pairs_body, series_body
from .captions_gpkg import CaptionsGeoPackage, other_options
from .change_map import tile_changes
from .errors import BackendUnavailable, CaptionRunError
from .png import encode_tile
from .shared_modules import captions, inflight, pixels, run_contract, run_files, schema, sources
from .shared_modules import grid as tiling
from .tile_reader import RasterSeriesReader, crs_name, crs_text, format_bounds

#: How long a run keeps trying by default when no backend answers (a backend restart takes about 20 s).
RETRY_BUDGET_S = 60.0
#: Threads reading and encoding batches (each with its own GDAL datasets).
READERS = 2
#: How the output's lock and messages name this tool.
TOOL = "the CCExpert QGIS plugin"
Interval = tuple[int, int]

class Feedback(Protocol):
    """What a run reports to and asks of whoever runs it (a task, or Processing's ``QgsProcessingFeedback``)."""

    def isCanceled(self) -> bool: ...  # noqa: N802 (QGIS's names)

    def setProgress(self, percent: float) -> None: ...  # noqa: N802

    def pushInfo(self, text: str) -> None: ...  # noqa: N802


@dataclass(frozen=True)
class RasterInput:
    """A raster as GDAL opens it, and the name written to the layer (the file's name, as the command writes it: a
    URL's without its query string)."""

    source: str
    name: str

    @classmethod
    def from_source(cls, source: str) -> "RasterInput":
        """A raster named by its file (QGIS appends ``|option`` parts to some sources)."""
        return cls(source, sources.RasterLocation.of(source.split("|")[0]).name)

    @property
    def location(self) -> sources.RasterLocation:
        """Where the raster is (a file, or a URL), without QGIS's ``|option`` parts."""
        return sources.RasterLocation.of(self.source.split("|")[0])


@dataclass(frozen=True, kw_only=True)
class Job(run_contract.RunSettings):
    """Everything a run needs, resolved to plain values on the main thread (layers, area, token): the run's settings
    (the command's, :class:`run_contract.RunSettings`) and the plugin's own."""

    #: Two or more rasters in time order: BEFORE and AFTER, or a series.
    rasters: tuple[RasterInput, ...]
    output: str
    #: One or more backends serving the same model.
    backend_urls: tuple[str, ...]
    #: Each raster's date as given (2016, 2016-05, 2016-05-12; "" where unknown), in the same order.
    dates: tuple[str, ...] = ()
    token: str = field(default="", repr=False)
    #: Polygons in the first raster's CRS (rings of (x, y), exterior first); None: wherever every raster has pixels.
    area: tuple[tiling.Polygon, ...] | None = None
    layer_name: str = schema.CAPTIONS_LAYER
    #: Requests kept open at each backend; None: enough for ``inflight.QUEUED_MODEL_BATCHES`` of its model
    #: batches.
    in_flight: int | None = None
    #: Seconds the run keeps trying when no backend answers, then stops (what was written stays).
    retry_budget_s: float = RETRY_BUDGET_S

    @property
    def intervals(self) -> tuple[Interval, ...]:
        """The intervals captioned per tile (:func:`run_contract.run_intervals`)."""
        return run_contract.run_intervals(len(self.rasters), self.first_to_last)

    def names(self) -> list[str]:
        """Each raster's name, as features and stored options record it."""
        return [raster.name for raster in self.rasters]

    def roles(self) -> list[str]:
        """How messages name the dates: BEFORE and AFTER, or ``date 2018`` in a series, as the command names them."""
        return run_contract.date_roles(len(self.rasters), self.labels())

    def labels(self) -> list[str]:
        """Each date's label ("" where unknown), one per raster."""
        return [*self.dates, *[""] * (len(self.rasters) - len(self.dates))][: len(self.rasters)]


@dataclass(frozen=True)
class RunProgress:
    """Where a run stands after a batch: tiles of the area finished, and the layer's tiles by what the map shows."""

    done: int
    total: int
    #: The layer's features (earlier runs' included) by the schema's map category (changed, unchanged…).
    categories: dict[str, int]

    def describe(self) -> str:
        """``12 changed, 30 unchanged, 0 skipped (no data), 1 failed (run again)``, as the legend words them."""
        return ", ".join(f"{self.categories.get(c.value, 0)} {c.label}" for c in schema.CATEGORIES)


@dataclass
class JobSummary:
    """What a run did."""

    output: str
    layer_name: str
    tiles: int = 0
    #: Tiles whose every interval was done before this run.
    already_done: int = 0
    #: Features (tile and interval) written by this run, by status.
    counts: dict[str, int] = field(
        default_factory=lambda: {schema.CAPTIONED: 0, schema.SKIPPED_NODATA: 0, schema.FAILED: 0})
    canceled: bool = False
    error: str | None = None
    #: The backend's model: its id (stored with each feature), its name and what to know about it, in words.
    model_id: str = ""
    model_name: str = ""
    model_note: str | None = None
    intervals: int = 1
    #: Features each backend captioned in this run, by URL.
    by_backend: dict[str, int] = field(default_factory=dict)

    @property
    def written(self) -> int:
        """Features written by this run."""
        return sum(self.counts.values())

    def message(self) -> str:
        """One line for the message bar."""
        counts = ", ".join(f"{count} {status.replace('_', ' ')}" for status, count in self.counts.items() if count)
        if len(self.by_backend) > 1:
            counts += " (" + ", ".join(f"{url}: {count}" for url, count in self.by_backend.items()) + ")"
        per_tile = f" ({self.intervals} intervals each)" if self.intervals > 1 else ""
        done = (f"{self.already_done} of {self.tiles} tiles{per_tile} were done before; this run: "
                f"{counts or 'nothing new'}")
        where = f"{self.output} (layer {self.layer_name})"
        if self.canceled:  # whatever stopped the requests open at that moment, the analyst asked for it
            return f"Canceled. {done}. Kept in {where}: run again to resume."
        if self.error and not (self.written or self.already_done):
            return self.error
        if self.error:
            return f"{self.error.rstrip('.')}. {done}. Kept in {where}: run again to resume."
        failed = self.counts.get(schema.FAILED, 0)
        return f"{done}. Written to {where}" + (f": run again to caption the {failed} failed." if failed else ".")


def model_words(info: Mapping[str, Any]) -> str:
    """A backend's model for people: its name and, where there is one, what to know about its captions."""
    name = str(info.get("model_name") or info.get("model_id") or "an unnamed model")
    note = info.get("model_note")
    return f"{name} ({note})" if note else name


def _dating(job: Job) -> run_contract.Dating:
    """The job's dates (parsed, in time order where all are known), rasters and intervals."""
    return run_contract.Dating.of(run_contract.parse_labels(job.labels(), job.names()), job.names(), job.intervals)


def _run_options(reader: RasterSeriesReader, grid: tiling.TileGrid, job: Job, model_id: str) -> dict[str, str]:
    """What decides a tile's pixels and caption, as the contract words it for both tools (either resumes the
    other's output)."""
    dating = _dating(job)
    return run_contract.stored_options(grid, crs_text(reader.grid.wkt), reader.bands, job.value_range,
                                       job.max_nodata, dating.names, dating.labels, dating.intervals, model_id)


def _check(job: Job) -> None:
    """Options, dates and paths, before anything is opened: an output that is an input is refused here."""
    if len(job.rasters) < 2:
        raise CaptionRunError("choose two or more rasters, one per date")
    if len({raster.location.gdal_path for raster in job.rasters}) < len(job.rasters):
        raise CaptionRunError("the same raster is chosen for two dates: choose one raster per date")
    if job.in_flight is not None and job.in_flight < 1:
        raise CaptionRunError(f"the requests in flight must be at least 1, not {job.in_flight}")
    if not job.retry_budget_s >= 0:
        raise CaptionRunError(f"the retry budget must be 0 seconds or more, not {job.retry_budget_s}")
    if not job.backend_urls:
        raise CaptionRunError("give the URL of a backend")
    if not job.layer_name.strip():
        raise CaptionRunError("give the output layer a name")
    if not job.output.strip():
        raise CaptionRunError("choose an output GeoPackage file")
    with run_contract.refused_as(CaptionRunError):
        job.check()
        _dating(job)
    try:
        run_files.check_run_paths(
            {f"the {role} raster": raster.location.local for role, raster in zip(job.roles(), job.rasters)},
            {"the output GeoPackage": Path(job.output)},
        )
    except ValueError as error:
        raise CaptionRunError(str(error)) from None


def _reader(job: Job, log: Callable[[str], None]) -> RasterSeriesReader:
    return RasterSeriesReader([raster.source for raster in job.rasters], job.roles(), job.bands, job.resolution, log)


def preflight(job: Job) -> list[str]:
    """Check the options, dates and paths and open every raster as the run will (quick): raises for an output that
    would overwrite an input, unreadable or disjoint rasters; returns the notices about alignment and band use, for
    the interface to show before the task starts."""
    _check(job)
    notices: list[str] = []
    with _reader(job, notices.append):
        return notices


def _tiles(
    reader: RasterSeriesReader, job: Job, log: Callable[[str], None]
) -> tuple[tiling.TileGrid, list[tiling.Tile]]:
    """The run's grid and the tiles of its area."""
    with run_contract.refused_as(CaptionRunError):
        overlap = run_contract.overlap_px(job.overlap, job.tile_size)
    try:
        grid = tiling.TileGrid(reader.grid.width, reader.grid.height, reader.grid.transform, job.tile_size, overlap)
        area = tile_area(job.area, log) if job.area else tiling.Area.from_bounds(reader.overlap_bounds)
    except ValueError as error:
        raise CaptionRunError(str(error)) from None
    with run_contract.refused_as(CaptionRunError):
        run_contract.check_tile_count(grid, area.bounds, job)
    tiles = grid.tiles(area)
    if not tiles:
        raise CaptionRunError(
            f"the area {format_bounds(area.bounds)} lies outside the rasters {format_bounds(reader.grid.bounds)} "
            f"(both in {crs_name(reader.grid.wkt)})"
        )
    return grid, tiles


def _existing(output: str, layer_name: str) -> tuple[dict[str, str], set[tuple[str, int]]]:
    """An existing output's stored options and its (tile_id, interval) already captioned or skipped, read only
    (nothing is created; a killed writer's journal is rolled back first)."""
    if not Path(output).is_file():
        return {}, set()
    try:
        run_files.roll_back_for_reading(Path(output), TOOL)
    except ValueError as error:
        raise CaptionRunError(str(error)) from None
    dataset = gdal.OpenEx(output, gdal.OF_VECTOR | gdal.OF_READONLY, allowed_drivers=["GPKG"])
    layer = dataset.GetLayerByName(layer_name) if dataset is not None else None
    if layer is None:
        return {}, set()
    table = dataset.GetLayerByName(schema.options_table(layer_name))
    stored = {} if table is None or not layer.GetFeatureCount() else {
        str(f.GetField("key")): str(f.GetField("value") or "") for f in table}
    statuses = ", ".join(f"'{status}'" for status in schema.FINAL_STATUSES)
    layer.SetAttributeFilter(f"status IN ({statuses})")
    layer.SetIgnoredFields(["OGR_GEOMETRY"])
    names = {layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(layer.GetLayerDefn().GetFieldCount())}
    finished = {(f.GetField("tile_id"), f.GetField("interval") if "interval" in names else 0) for f in layer}
    return stored, finished


@dataclass(frozen=True)
class BackendNote:
    """A backend that stopped answering, as the failover says it: what happened and, where no backend is left to
    take its batches, for how long the run keeps trying (``retry_s``) before it stops."""

    text: str
    retry_s: float | None = None

    def __str__(self) -> str:
        if self.retry_s is None:
            return f"{self.text}; its batches go to the other backends, and it is tried again later"
        return f"{self.text}; trying again for up to {self.retry_s:g} s"


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, told before it starts: its tiles, what is left of them, and how long that may take."""

    tiles: int
    intervals: int
    #: Tiles whose every interval an earlier run finished.
    already_done: int
    #: Pairs (tile and interval) left to caption (some may turn out to be skipped for nodata).
    pairs: int
    #: Seconds a pair took in the fastest and the slowest of the requests timed now, after one that warmed the
    #: backend up (None: not timed).
    seconds_per_pair: tuple[float, float] | None = None
    #: How that was measured, for the words.
    timing: str = ""

    def describe(self) -> str:
        """``9 tiles × 2 intervals: 18 pairs to caption, about 40 s–1 min (two requests of 8 pairs took 2.1 and
        3.1 s)``."""
        area = f"{self.tiles} tiles" + (f" × {self.intervals} intervals" if self.intervals > 1 else "")
        done = f" ({self.already_done} done before)" if self.already_done else ""
        if not self.pairs:
            return f"{area}{done}: nothing left to caption"
        text = f"{area}{done}: {self.pairs} pair{'s' * (self.pairs != 1)} to caption"
        if self.seconds_per_pair is not None:
            low, high = (_duration(self.pairs * seconds) for seconds in self.seconds_per_pair)
            text += f", about {low if low == high else f'{low}–{high}'} ({self.timing})"
        return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def plan_job(job: Job, timed: BackendClient | None = None, backends: int = 1) -> RunPlan:
    """Count the job's tiles and what an earlier run left of them; with ``timed``, caption one request of tiles
    still to do at that backend and estimate the run from its speed (shared by ``backends`` alike). Raises
    :class:`CaptionRunError` for what the run would refuse (inputs, dates, an output made with other options, area,
    too many tiles)."""
    _check(job)
    intervals = len(job.intervals)
    with _reader(job, lambda message: None) as reader:
        grid, tiles = _tiles(reader, job, lambda message: None)
        stored, finished = _existing(job.output, job.layer_name)
        wanted = _run_options(reader, grid, job, timed.info()["model_id"] if timed is not None else "")
        if timed is None:
            del wanted["model_id"]  # known once a backend is asked
        refusal = other_options(job.output, stored, wanted) if stored else None
        if refusal is not None:
            raise CaptionRunError(refusal)
        needed = run_contract.still_to_do(tiles, intervals, finished)
        pending = [tile for tile in tiles if tile.tile_id in needed]
        plan = RunPlan(len(tiles), intervals, len(tiles) - len(pending), sum(map(len, needed.values())))
        if timed is None or not pending:
            return plan
        reader.fit_stretch(tiles, job.value_range)
        with run_contract.refused_as(CaptionRunError):
            size = job.tiles_per_batch(intervals, timed.limits.max_pairs_per_request)
        prepared = _prepare(reader, pending[:size], needed, job, timed.compress, _as_series(job, [timed]))
    if not prepared.requests:  # every pair of those tiles is skipped for nodata: nothing to time
        return plan
    seconds = _timed_requests(timed, prepared.requests)
    pairs = len(prepared.to_caption)
    shared = max(1, backends)
    return RunPlan(
        plan.tiles, plan.intervals, plan.already_done, plan.pairs,
        (min(seconds) / pairs / shared, max(seconds) / pairs / shared),
        f"after a first to warm the backend up, two requests of {pairs} pair{'s' * (pairs != 1)} took "
        f"{seconds[0]:.1f} and {seconds[1]:.1f} s" + (f", shared by {backends} backends" if backends > 1 else ""),
    )


def _timed_requests(client: BackendClient, requests: Sequence[Request]) -> tuple[float, float]:
    """Seconds two sends of one batch's ``requests`` took, once a first send warmed the backend up (a model's first
    batch allocates what the others reuse: timed alone, it said 17 s of a run that took 42)."""
    for request in requests:
        client.caption(request)
    timings = []
    for _ in range(2):
        start = time.monotonic()
        for request in requests:
            client.caption(request)
        timings.append(time.monotonic() - start)
    return timings[0], timings[1]


def _as_series(job: Job, clients: Sequence[BackendClient]) -> bool:
    """Whether the job's tiles go in series requests: three or more dates, and every backend takes them."""
    return len(job.rasters) > 2 and all(client.takes_series for client in clients)


def run_job(
    job: Job, feedback: Feedback, on_batch: Callable[[RunProgress], None] | None = None,
    on_note: Callable[[BackendNote], None] | None = None,
) -> JobSummary:
    """Caption every tile and interval of the job's area into its GeoPackage, resuming what an earlier run left.

    ``on_batch`` is told after each batch is written, ``on_note`` when a backend stops answering (both from this
    thread; the note is also a warning of ``feedback``). Problems the analyst can fix end in ``summary.error``
    (never raised); work written before them is kept.
    """
    summary = JobSummary(job.output, job.layer_name, intervals=len(job.intervals))
    log = feedback.pushInfo
    try:
        _check(job)
        refused = run_contract.refused_as(CaptionRunError)
        with refused, run_contract.output_locked(Path(job.output), TOOL), _reader(job, log) as reader:
            grid, tiles = _tiles(reader, job, log)
            summary.tiles = len(tiles)
            with _Backends(job, feedback.isCanceled) as backends:
                summary.model_id, summary.model_name = backends.model_id, backends.model_name
                summary.model_note = backends.model_note
                names = job.names()
                with CaptionsGeoPackage(
                    job.output, job.layer_name, reader.grid.wkt, _run_options(reader, grid, job, summary.model_id),
                    names[0], names[-1], summary.model_id,
                ) as output:
                    needed = run_contract.still_to_do(tiles, len(job.intervals), output.finished_keys())
                    pending = [tile for tile in tiles if tile.tile_id in needed]
                    summary.already_done = len(tiles) - len(pending)
                    _log_start(job, backends, summary, len(pending), log)
                    reader.fit_stretch(tiles, job.value_range)
                    writer = _BatchWriter(grid, output, job, summary, feedback, on_batch, on_note)
                    _caption_in_flight(reader, backends, pending, needed, job, writer)
    except CaptionRunError as error:
        summary.error = str(error)
        summary.canceled = feedback.isCanceled()
    return summary


def _log_start(job: Job, backends: _Backends, summary: JobSummary, pending: int, log: Callable[[str], None]) -> None:
    count = len(job.intervals)
    series = f"{count} intervals of {len(job.rasters)} dates; " if count > 1 else ""
    log(f"{summary.tiles} tiles cover the area; {series}{summary.already_done} already in {job.output}, {pending} to "
        f"do; up to {backends.in_flight} requests in flight to {len(backends.clients)} backend(s); captions by "
        f"{model_words(backends.infos[0])}")


class _Backends:
    """The run's backends (one model): requests on QThreads of their own, the failover between backends, and the
    switch that stops new requests once the run stops."""

    def __init__(self, job: Job, is_canceled: Callable[[], bool]) -> None:
        self.stop = threading.Event()
        stopped = lambda: self.stop.is_set() or is_canceled()  # noqa: E731
        # Each client retries little on its own: a backend that does not answer is the failover's to handle.
        self.clients = [BackendClient(url, job.token, stopped, retries=1) for url in job.backend_urls]
        self.infos = [client.info() for client in self.clients]  # a wrong URL or token fails here, with its message
        models = {info["model_id"] for info in self.infos}
        if len(models) > 1:
            shown = ", ".join(f"{c.url} serves {i['model_id']}" for c, i in zip(self.clients, self.infos))
            raise CaptionRunError(f"the backends serve different models ({shown}): give backends of one model")
        first = self.infos[0]
        self.model_id, self.model_name = str(first["model_id"]), str(first.get("model_name") or first["model_id"])
        self.model_note: str | None = first.get("model_note")
        intervals = len(job.intervals)
        with run_contract.refused_as(CaptionRunError):
            #: Tiles per request: every interval of a tile goes in the same request as its images.
            self.tiles_per_batch = job.tiles_per_batch(
                intervals, min(client.limits.max_pairs_per_request for client in self.clients))
        pairs = self.tiles_per_batch * intervals
        self.in_flight = sum(job.in_flight or inflight.default_in_flight(info, pairs) for info in self.infos)
        self.compress = any(client.compress for client in self.clients)
        self.series = _as_series(job, self.clients)
        self.budget_s = job.retry_budget_s
        #: What the failover said from its threads, for the run's thread to log (feedback is not thread-safe).
        self.notes: queue.SimpleQueue[BackendNote] = queue.SimpleQueue()
        several = len(self.clients) > 1
        self._failover: inflight.Failover[BackendClient, list[Request], tuple[str, list[dict[str, Any]]]]
        self._failover = inflight.Failover(
            # A batch's requests (a series one and a pairs one at most) go to the same backend.
            self.clients, lambda client, requests: (client.url, [r for q in requests for r in client.caption(q)]),
            lambda error: isinstance(error, BackendUnavailable), budget_s=job.retry_budget_s,
            on_down=lambda client, error: self.notes.put(
                BackendNote(str(error), None if several else job.retry_budget_s)
            ),
        )
        self._threads = RequestThreads(self.in_flight)

    def caption(self, requests: list[Request]) -> tuple[str, list[dict[str, Any]]]:
        """(URL of the backend that answered, its results in order) for one batch's requests."""
        try:
            return self._threads.call(self._failover, requests)
        except inflight.NoEndpointLeft as error:
            raise CaptionRunError(f"no backend answered for {self.budget_s:g} s (last: {error})") from None

    def __enter__(self) -> "_Backends":
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop: nothing new is sent, and requests still open are not waited for."""
        self.stop.set()
        self._threads.close()


@dataclass(frozen=True)
class _Prepared:
    """A batch read, judged and encoded: its tiles with the intervals each needs, the (tile, interval) pairs to
    caption in the order of the results of its requests (none: nothing to send)."""

    tiles: list[tiling.Tile]
    needed: dict[str, list[int]]
    to_caption: list[tuple[tiling.Tile, int]]
    requests: list[Request]


def _prepare(
    reader: RasterSeriesReader, tiles: Sequence[tiling.Tile], needed: Mapping[str, Sequence[int]], job: Job,
    compress: bool, as_series: bool,
) -> _Prepared:
    """Read every date of each tile once, skip the intervals with too much nodata in either of their dates, and
    encode each date's image once: ``as_series``, the tiles that need every interval in one series request, the
    others' intervals in a pairs request (only the bytes are kept: a batch in flight holds no arrays)."""
    intervals = job.intervals
    series: list[tuple[tiling.Tile, list[bytes]]] = []
    pairs: list[tuple[tiling.Tile, int, tuple[bytes, bytes]]] = []
    for tile in tiles:
        read = reader.read_dates(tile)
        missing = [pixels.nodata_share(valid) for _, valid in read]
        wanted = [k for k in needed[tile.tile_id] if not run_contract.skipped(missing, intervals[k], job.max_nodata)]
        if as_series and len(wanted) == len(intervals):
            series.append((tile, [encode_tile(image, compress) for image, _ in read]))
            continue
        used = {date for k in wanted for date in intervals[k]}
        encoded = {date: encode_tile(read[date][0], compress) for date in used}
        pairs += [(tile, k, (encoded[intervals[k][0]], encoded[intervals[k][1]])) for k in wanted]
    requests = []
    if series:
        requests.append(series_body([images for _, images in series], intervals, [t.tile_id for t, _ in series]))
    if pairs:
        requests.append(pairs_body([pair for _, _, pair in pairs], [tile.tile_id for tile, _, _ in pairs]))
    to_caption = [(tile, k) for tile, _ in series for k in range(len(intervals))]
    to_caption += [(tile, k) for tile, k, _ in pairs]
    wanted_by_tile = {tile.tile_id: list(needed[tile.tile_id]) for tile in tiles}
    return _Prepared(list(tiles), wanted_by_tile, to_caption, requests)


class _LayerCategories:
    """The layer's features by the schema's map category, kept current batch by batch (read once from the file)."""

    def __init__(self, path: str, layer_name: str) -> None:
        self._categories: dict[tuple[str, int], str] = {}
        dataset = gdal.OpenEx(path, gdal.OF_VECTOR | gdal.OF_READONLY)
        layer = dataset.GetLayerByName(layer_name) if dataset is not None else None
        if layer is None:
            return
        layer.SetIgnoredFields(["OGR_GEOMETRY"])
        for feature in layer:  # the writer has migrated the layer: every field of the schema is there
            key = (feature.GetField("tile_id"), feature.GetField("interval"))
            self._categories[key] = schema.category(feature.GetField("status"), feature.GetField("change_detected"))

    def update(self, records: Sequence[run_contract.TileRecord]) -> None:
        """Count a written batch (a feature written again leaves its earlier category)."""
        for record in records:
            key = (record.tile.tile_id, record.interval)
            self._categories[key] = schema.category(record.status, record.change_detected)

    def counts(self) -> dict[str, int]:
        """Features by category, every category present."""
        counts = {category.value: 0 for category in schema.CATEGORIES}
        for category in self._categories.values():
            counts[category] = counts.get(category, 0) + 1
        return counts


def _records(
    grid: tiling.TileGrid, prepared: _Prepared, results: list[dict[str, Any]] | None, dating: run_contract.Dating,
) -> list[run_contract.TileRecord]:
    """The batch's records, one per tile and interval: skipped, captioned with its result, or failed where
    ``results`` is None."""
    answered = dict(zip(prepared.to_caption, results or []))
    sent = set(prepared.to_caption)
    records = []
    for tile in prepared.tiles:
        footprint = grid.footprint(tile)
        for k in prepared.needed[tile.tile_id]:
            dated = dating.fields(k)
            if (tile, k) not in sent:
                records.append(run_contract.TileRecord(tile, footprint, schema.SKIPPED_NODATA, interval=k, **dated))
            elif (tile, k) not in answered:
                records.append(run_contract.TileRecord(tile, footprint, schema.FAILED, interval=k, **dated))
            else:
                result = answered[tile, k]
                caption = str(result["caption"])
                change_map = result.get("change_map")
                records.append(run_contract.TileRecord(
                    tile, footprint, schema.CAPTIONED, caption, bool(result["change_detected"]),
                    float(result["confidence"]),
                    interval=k, change_kind=result.get("change_kind") or captions.change_kind(caption),
                    changes=None if change_map is None else tile_changes(change_map, grid.transform, tile), **dated,
                ))
    return records


class _BatchWriter:
    """Writes finished batches (features, change areas, a series' histories), keeps the layer's categories, the
    summary and the progress current, and stops the run as the contract's failure policy says."""

    def __init__(self, grid: tiling.TileGrid, output: CaptionsGeoPackage, job: Job, summary: JobSummary,
                 feedback: Feedback, on_batch: Callable[[RunProgress], None] | None,
                 on_note: Callable[[BackendNote], None] | None) -> None:
        self.grid, self.output, self.summary, self.feedback = grid, output, summary, feedback
        self.on_batch, self.on_note = on_batch, on_note
        self.dating = _dating(job)
        # As the command: a series has a history layer, two dates none.
        self.history = self.dating.consecutive() if len(job.rasters) > 2 else None
        self.categories = _LayerCategories(job.output, job.layer_name)
        self.failures = run_contract.FailurePolicy()
        self.done = summary.already_done

    def note(self, note: BackendNote) -> None:
        """A backend stopped answering: a warning in the run's log, and the note itself to whoever listens."""
        self.feedback.pushInfo(f"warning: {note}")
        if self.on_note is not None:
            self.on_note(note)

    def report(self) -> None:
        """The progress over the whole area's tiles, and the layer's categories."""
        self.feedback.setProgress(100.0 * self.done / self.summary.tiles)
        if self.on_batch is not None:
            self.on_batch(RunProgress(self.done, self.summary.tiles, self.categories.counts()))

    def write(self, batch: inflight.Done[list[tiling.Tile], _Prepared, tuple[str, list[dict[str, Any]]]]) -> None:
        """Write one finished batch: its tiles failed where the backends failed it."""
        error = batch.error
        if error is not None and not isinstance(error, CaptionRunError):
            raise error  # a bug, not the backend's answer: the task logs its traceback
        url, results = batch.result if error is None and batch.result is not None else ("", None)
        records = _records(self.grid, batch.prepared, results, self.dating)
        self.output.write(records, self.history)
        self.categories.update(records)
        for record in records:
            self.summary.counts[record.status] += 1
        if url and results:
            self.summary.by_backend[url] = self.summary.by_backend.get(url, 0) + len(results)
        self.done += len(batch.prepared.tiles)
        self.report()
        if error is not None:
            ids = [tile.tile_id for tile in batch.prepared.tiles]
            self.feedback.pushInfo(f"warning: captioning tiles {ids[0]}..{ids[-1]} failed: {error}")
        stop = self.failures.after_batch(error)
        if stop is not None:
            raise CaptionRunError(stop)  # the summary says what was kept and how to resume


def _caption_in_flight(
    reader: RasterSeriesReader, backends: _Backends, pending: list[tiling.Tile], needed: Mapping[str, Sequence[int]],
    job: Job, writer: _BatchWriter,
) -> None:
    """Read, caption and write ``pending`` with batches in flight; progress counts the whole area's tiles. A batch
    the backends failed is written as failed (the next run does it again)."""
    feedback, summary = writer.feedback, writer.summary
    writer.report()
    readers = inflight.Copies(reader.copy)

    def prepare(tiles: list[tiling.Tile]) -> _Prepared:
        with readers.borrowed() as own:
            return _prepare(own, tiles, needed, job, backends.compress, backends.series)

    def call(prepared: _Prepared) -> tuple[str, list[dict[str, Any]]]:
        return backends.caption(prepared.requests) if prepared.requests else ("", [])

    def log_notes() -> None:
        while not backends.notes.empty():
            writer.note(backends.notes.get())

    def should_stop() -> bool:
        # The scheduler polls this in the run's thread several times a second: where the failover's notes (a
        # backend down, even while no batch comes back) reach the log.
        log_notes()
        return feedback.isCanceled() or backends.stop.is_set()

    size = backends.tiles_per_batch
    batches = [pending[start : start + size] for start in range(0, len(pending), size)]
    finished = inflight.run_in_flight(
        batches, prepare, call, in_flight=backends.in_flight, preparers=READERS, should_stop=should_stop,
    )
    try:
        for batch in finished:
            writer.write(batch)
        summary.canceled = writer.done < summary.tiles and feedback.isCanceled()
    finally:
        finished.close()  # nothing new starts, and the requests still open are not waited for
        log_notes()
        readers.close()
