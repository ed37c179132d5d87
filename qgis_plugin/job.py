"""One captioning run: tile the area, read both dates, keep several batches in flight to one or more backends, write
each batch as it comes back.

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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from osgeo import gdal

from .area import tile_area
from .backend_client import BackendClient, RequestThreads, multipart_body
from .captions_gpkg import CAPTIONED, DEFAULT_LAYER, FAILED, SKIPPED_NODATA, CaptionsGeoPackage, TileRecord
from .errors import BackendUnavailable, CaptionRunError
from .png import encode_tile
from .shared_modules import grid as tiling
from .shared_modules import inflight, run_files, schema
from .tile_reader import RasterPairReader, crs_name, format_bounds

#: How long a run keeps trying by default when no backend answers (a backend restart takes about 20 s).
RETRY_BUDGET_S = 60.0
#: Threads reading and encoding batches (each with its own GDAL datasets).
READERS = 2


class Feedback(Protocol):
    """What a run reports to and asks of whoever runs it (a task, or Processing's ``QgsProcessingFeedback``)."""

    def isCanceled(self) -> bool: ...  # noqa: N802 (QGIS's names)

    def setProgress(self, percent: float) -> None: ...  # noqa: N802

    def pushInfo(self, text: str) -> None: ...  # noqa: N802


@dataclass(frozen=True)
class RasterInput:
    """A raster as GDAL opens it, and the name written to the layer (the file's name, as the command writes it)."""

    source: str
    name: str

    @classmethod
    def from_source(cls, source: str) -> "RasterInput":
        """A raster named by its file (QGIS appends ``|option`` parts to some sources)."""
        return cls(source, Path(source.split("|")[0]).name or source)

    @property
    def path(self) -> Path:
        """The file itself, without QGIS's ``|option`` parts."""
        return Path(self.source.split("|")[0])


@dataclass(frozen=True)
class Job:
    """Everything a run needs, resolved to plain values on the main thread (layers, area, token)."""

    before: RasterInput
    after: RasterInput
    output: str
    #: One or more backends serving the same model.
    backend_urls: tuple[str, ...]
    token: str = field(default="", repr=False)
    #: Polygons in BEFORE's CRS (rings of (x, y), exterior first); None: wherever both rasters have pixels.
    area: tuple[tiling.Polygon, ...] | None = None
    tile_size: int = 384
    #: Pixels ("32") or a share of the tile ("10%").
    overlap: str = "0"
    #: Metres per pixel to resample both dates to; None keeps BEFORE's.
    resolution: float | None = None
    #: 1-based band numbers (one or three); None for the first three.
    bands: tuple[int, ...] | None = None
    #: Values mapped to 0 and 255; None for a 2–98 % stretch of data that is not 8-bit.
    value_range: tuple[float, float] | None = None
    #: Tiles with a larger share of nodata in either date are skipped.
    max_nodata: float = 0.5
    batch_size: int = 8
    layer_name: str = DEFAULT_LAYER
    #: Requests kept open at each backend; None: enough for ``inflight.QUEUED_MODEL_BATCHES`` of its model
    #: batches.
    in_flight: int | None = None
    #: Seconds the run keeps trying when no backend answers, then stops (what was written stays).
    retry_budget_s: float = RETRY_BUDGET_S


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
    already_done: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {CAPTIONED: 0, SKIPPED_NODATA: 0, FAILED: 0})
    canceled: bool = False
    error: str | None = None
    model_id: str = ""
    #: Tiles each backend captioned in this run, by URL.
    by_backend: dict[str, int] = field(default_factory=dict)

    @property
    def written(self) -> int:
        """Tiles written by this run."""
        return sum(self.counts.values())

    def message(self) -> str:
        """One line for the message bar."""
        counts = ", ".join(f"{count} {status.replace('_', ' ')}" for status, count in self.counts.items() if count)
        if len(self.by_backend) > 1:
            counts += " (" + ", ".join(f"{url}: {count}" for url, count in self.by_backend.items()) + ")"
        done = f"{self.already_done} of {self.tiles} tiles were done before; this run: {counts or 'nothing new'}"
        where = f"{self.output} (layer {self.layer_name})"
        if self.canceled:  # whatever stopped the requests open at that moment, the analyst asked for it
            return f"Canceled. {done}. Kept in {where}: run again to resume."
        if self.error and not (self.written or self.already_done):
            return self.error
        if self.error:
            return f"{self.error.rstrip('.')}. {done}. Kept in {where}: run again to resume."
        return f"{done}. Written to {where}."


def _run_options(pair: RasterPairReader, grid: tiling.TileGrid, job: Job, model_id: str) -> dict[str, str]:
    """What decides a tile's pixels and caption, worded as the command words it, so each can resume the other."""
    crs = crs_name(pair.grid.wkt)
    return tiling.run_options(
        grid, crs if crs.startswith("EPSG:") else pair.grid.wkt, pair.before.bands, job.value_range, job.max_nodata,
        job.before.name, job.after.name, model_id,
    )


def _check(job: Job) -> None:
    """Options and paths, before anything is opened: an output that is an input is refused here."""
    if job.batch_size < 1:
        raise CaptionRunError(f"the batch size must be at least 1, not {job.batch_size}")
    if job.in_flight is not None and job.in_flight < 1:
        raise CaptionRunError(f"the requests in flight must be at least 1, not {job.in_flight}")
    if not job.retry_budget_s >= 0:
        raise CaptionRunError(f"the retry budget must be 0 seconds or more, not {job.retry_budget_s}")
    if not 0 <= job.max_nodata <= 1:
        raise CaptionRunError(f"the nodata share must be between 0 and 1, not {job.max_nodata}")
    if not job.backend_urls:
        raise CaptionRunError("give the URL of a backend")
    if not job.layer_name.strip():
        raise CaptionRunError("give the output layer a name")
    if not job.output.strip():
        raise CaptionRunError("choose an output GeoPackage file")
    try:
        run_files.check_run_paths(
            {"the BEFORE raster": job.before.path, "the AFTER raster": job.after.path},
            {"the output GeoPackage": Path(job.output)},
        )
    except ValueError as error:
        raise CaptionRunError(str(error)) from None


def preflight(job: Job) -> list[str]:
    """Check the options and paths and open both rasters as the run will (quick): raises for an output that would
    overwrite an input, unreadable or disjoint rasters; returns the notices about alignment and band use, for the
    interface to show before the task starts."""
    _check(job)
    notices: list[str] = []
    with RasterPairReader(job.before.source, job.after.source, job.bands, job.resolution, notices.append):
        return notices


@contextmanager
def _locked(output: str) -> Iterator[None]:
    """Hold the output's lock file while the run writes (a second run on the same output is refused, not mixed in;
    the command takes the same lock)."""
    lock = run_files.OutputLock(Path(output), "the CCExpert QGIS plugin")
    try:
        lock.acquire()
    except (run_files.OutputBusy, ValueError) as error:
        raise CaptionRunError(str(error)) from None
    try:
        yield
    finally:
        lock.release()


def run_job(job: Job, feedback: Feedback, on_batch: Callable[[RunProgress], None] | None = None) -> JobSummary:
    """Caption every tile of the job's area into its GeoPackage, resuming what an earlier run left.

    ``on_batch`` is told after each batch is written (from this thread). Problems the analyst can fix end in
    ``summary.error`` (never raised); work written before them is kept.
    """
    summary = JobSummary(job.output, job.layer_name)
    log = feedback.pushInfo
    try:
        _check(job)
        with (
            _locked(job.output),
            RasterPairReader(job.before.source, job.after.source, job.bands, job.resolution, log) as pair,
        ):
            try:
                overlap = tiling.parse_overlap(job.overlap, job.tile_size)
                grid = tiling.TileGrid(pair.grid.width, pair.grid.height, pair.grid.transform, job.tile_size, overlap)
                area = tile_area(job.area, log) if job.area else tiling.Area.from_bounds(pair.overlap_bounds)
            except ValueError as error:
                raise CaptionRunError(str(error)) from None
            tiles = grid.tiles(area)
            if not tiles:
                raise CaptionRunError(
                    f"the area {format_bounds(area.bounds)} lies outside the rasters {format_bounds(pair.grid.bounds)} "
                    f"(both in {crs_name(pair.grid.wkt)})"
                )
            summary.tiles = len(tiles)
            with _Backends(job, feedback.isCanceled) as backends:
                summary.model_id = backends.model_id
                with CaptionsGeoPackage(
                    job.output, job.layer_name, pair.grid.wkt, _run_options(pair, grid, job, summary.model_id),
                    job.before.name, job.after.name, summary.model_id,
                ) as output:
                    finished = output.finished_ids()
                    pending = [tile for tile in tiles if tile.tile_id not in finished]
                    summary.already_done = len(tiles) - len(pending)
                    log(f"{len(tiles)} tiles cover the area; {summary.already_done} already in {job.output}, "
                        f"{len(pending)} to do; up to {backends.in_flight} requests in flight to "
                        f"{len(backends.clients)} backend(s)")
                    pair.fit_stretch(tiles, job.value_range)
                    _caption_in_flight(pair, grid, backends, output, pending, job, summary, feedback, on_batch)
    except CaptionRunError as error:
        summary.error = str(error)
        summary.canceled = feedback.isCanceled()
    return summary


class _Backends:
    """The run's backends (one model): requests on QThreads of their own, the failover between backends, and the
    switch that stops new requests once the run stops."""

    def __init__(self, job: Job, is_canceled: Callable[[], bool]) -> None:
        self.stop = threading.Event()
        stopped = lambda: self.stop.is_set() or is_canceled()
        # Each client retries little on its own: a backend that does not answer is the failover's to handle.
        self.clients = [BackendClient(url, job.token, stopped, retries=1) for url in job.backend_urls]
        infos = [client.info() for client in self.clients]  # a wrong URL or token fails here, with its message
        models = {info["model_id"] for info in infos}
        if len(models) > 1:
            shown = ", ".join(f"{c.url} serves {i['model_id']}" for c, i in zip(self.clients, infos))
            raise CaptionRunError(f"the backends serve different models ({shown}): give backends of one model")
        self.model_id = infos[0]["model_id"]
        #: Pairs per request: the batch size, within every backend's limit.
        self.batch_size = min([job.batch_size] + [client.limits.max_pairs_per_request for client in self.clients])
        self.in_flight = sum(job.in_flight or inflight.default_in_flight(info, self.batch_size) for info in infos)
        self.compress = any(client.compress for client in self.clients)
        self.budget_s = job.retry_budget_s
        #: What the failover said from its threads, for the run's thread to log (feedback is not thread-safe).
        self.notes: queue.SimpleQueue[str] = queue.SimpleQueue()
        several = len(self.clients) > 1
        self._failover = inflight.Failover(
            self.clients, lambda client, request: (client.url, client.caption_body(*request)),
            lambda error: isinstance(error, BackendUnavailable), budget_s=job.retry_budget_s,
            on_down=lambda client, error: self.notes.put(
                f"{error}; its batches go to the other backends, and it is tried again later" if several
                else f"{error}; trying again for up to {job.retry_budget_s:g} s"
            ),
        )
        self._threads = RequestThreads(self.in_flight)

    def caption(self, request: tuple[bytes, str, int]) -> tuple[str, list[dict[str, Any]]]:
        """(URL of the backend that answered, its results) for one request body (see ``caption_body``)."""
        try:
            return self._threads.call(self._failover, request)
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
    """A batch read, judged and encoded: its tiles, those to caption, and their request (None: nothing to send)."""

    tiles: list[tiling.Tile]
    to_caption: list[tiling.Tile]
    request: tuple[bytes, str, int] | None


def _prepare(pair: RasterPairReader, tiles: Sequence[tiling.Tile], max_nodata: float, compress: bool) -> _Prepared:
    """Read both dates of each tile, keep those with little enough nodata, and encode them into one request (only
    the bytes are kept: a batch in flight holds no arrays)."""
    to_caption, images = [], []
    for tile in tiles:
        pixels = pair.read_tile(tile)
        if pixels.nodata_share <= max_nodata:
            to_caption.append(tile)
            images.append((encode_tile(pixels.before, compress), encode_tile(pixels.after, compress)))
    if not to_caption:
        return _Prepared(list(tiles), to_caption, None)
    body, content_type = multipart_body(images, [tile.tile_id for tile in to_caption])
    return _Prepared(list(tiles), to_caption, (body, content_type, len(to_caption)))


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

    def update(self, records: Sequence[TileRecord]) -> None:
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


def _records(grid: tiling.TileGrid, prepared: _Prepared, results: list[dict[str, Any]] | None) -> list[TileRecord]:
    """The batch's records: skipped, captioned with its result, or failed where ``results`` is None."""
    by_tile = dict(zip(prepared.to_caption, results or []))
    records = []
    for tile in prepared.tiles:
        footprint = grid.footprint(tile)
        if tile not in prepared.to_caption:
            records.append(TileRecord(tile, footprint, SKIPPED_NODATA))
        elif tile not in by_tile:
            records.append(TileRecord(tile, footprint, FAILED))
        else:
            result = by_tile[tile]
            records.append(TileRecord(
                tile, footprint, CAPTIONED, str(result["caption"]), bool(result["change_detected"]),
                float(result["confidence"]),
            ))
    return records


def _caption_in_flight(
    pair: RasterPairReader, grid: tiling.TileGrid, backends: _Backends, output: CaptionsGeoPackage,
    pending: list[tiling.Tile], job: Job, summary: JobSummary, feedback: Feedback,
    on_batch: Callable[[RunProgress], None] | None,
) -> None:
    """Read, caption and write ``pending`` with batches in flight; progress counts the whole area's tiles.

    A batch the backends failed is written as failed (the next run does it again) and stops the run.
    """
    categories = _LayerCategories(job.output, job.layer_name)
    done = summary.already_done

    def report() -> None:
        feedback.setProgress(100.0 * done / summary.tiles)
        if on_batch is not None:
            on_batch(RunProgress(done, summary.tiles, categories.counts()))

    report()
    # GDAL datasets are not thread-safe: each reader thread borrows rasters of its own from this queue.
    readers: queue.SimpleQueue[RasterPairReader] = queue.SimpleQueue()
    opened: list[RasterPairReader] = []

    def prepare(tiles: list[tiling.Tile]) -> _Prepared:
        try:
            reader = readers.get_nowait()
        except queue.Empty:
            reader = pair.copy()
            opened.append(reader)
        try:
            return _prepare(reader, tiles, job.max_nodata, backends.compress)
        finally:
            readers.put(reader)

    def call(prepared: _Prepared) -> tuple[str, list[dict[str, Any]]]:
        return ("", []) if prepared.request is None else backends.caption(prepared.request)

    def log_notes() -> None:
        while not backends.notes.empty():
            feedback.pushInfo(f"warning: {backends.notes.get()}")

    def should_stop() -> bool:
        # The scheduler polls this in the run's thread several times a second: where the failover's notes (a
        # backend down, even while no batch comes back) reach the log.
        log_notes()
        return feedback.isCanceled() or backends.stop.is_set()

    size = backends.batch_size
    batches = [pending[start : start + size] for start in range(0, len(pending), size)]
    finished = inflight.run_in_flight(
        batches, prepare, call, in_flight=backends.in_flight, preparers=READERS, should_stop=should_stop,
    )
    try:
        for batch in finished:
            error = batch.error
            if error is not None and not isinstance(error, CaptionRunError):
                raise error  # a bug, not the backend's answer: the task logs its traceback
            url, results = ("", None) if error is not None else batch.result
            records = _records(grid, batch.prepared, results)
            output.write(records)
            categories.update(records)
            for record in records:
                summary.counts[record.status] += 1
            if url and results:
                summary.by_backend[url] = summary.by_backend.get(url, 0) + len(results)
            done += len(records)
            report()
            if error is not None:
                raise error
        summary.canceled = done < summary.tiles and feedback.isCanceled()
    finally:
        finished.close()  # an error or a cancel: nothing new starts, open requests are not waited for
        log_notes()
        for _ in opened:
            readers.get().close()
