"""The region pipeline behind ``ccexpert caption-region``.

area + two rasters → tile grid → both dates read on one grid, 8-bit RGB → nodata tiles skipped → batches →
engine → the ``captions`` layer of a GeoPackage (and ``changes``, for models with a change-map head), batch by
batch → optional HTML report.

A reader thread prepares the next batch while the engine captions the current one; its queue holds at most
:data:`READ_AHEAD` batches, so memory is bounded by the batch size whatever the region's size.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rasterio.errors import RasterioError

from ccexpert_core.captions import CaptionResult
from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo.area_file import read_area_file
from ccexpert_core.geo.captions_layer import (
    CAPTIONED, FAILED, SKIPPED_NODATA, CaptionsLayer, TileRecord, check_output, read_tiles,
)
from ccexpert_core.geo.changes import tile_changes
from ccexpert_core.defaults import model_note
from ccexpert_core.geo.engine import CaptionEngine
from ccexpert_core.geo.gpkg import timestamp
from ccexpert_core.geo.grid import (
    Area, Bounds, Tile, TileGrid, invert_transform, parse_overlap, pixel_to_geo, run_options,
)
from ccexpert_core.geo.pixels import TilePixels
from ccexpert_core.geo.raster import RasterPair, bounded_read_cache, crs_name, format_bounds, spatial_ref
from ccexpert_core.geo.report import Overview, png_thumbnail, write_report
from ccexpert_core.geo.run_files import OutputBusy, OutputLock, check_run_paths

READ_AHEAD = 1
#: A run stops after this many batches in a row failed in the engine (a backend that is down, say).
MAX_FAILED_BATCHES = 3
OVERVIEW_SIZE = 1024

Log = Callable[[str], None]
Progress = Callable[[int, int], None]


def log_to_stderr(message: str) -> None:
    """The default for messages: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RegionOptions:
    """Everything about a run except the engine (the QGIS dialog collects the same)."""

    tile_size: int = 384
    #: Pixels ("32") or a share of the tile ("10%").
    overlap: str = "0"
    #: The area: bounds in the rasters' CRS, or a GeoJSON file; neither means the whole BEFORE raster.
    bounds: Bounds | None = None
    area_file: Path | None = None
    #: 1-based band numbers (one or three); None for the first three.
    bands: tuple[int, ...] | None = None
    #: Values mapped to 0 and 255; None for a 2–98 % stretch of data that is not 8-bit.
    value_range: tuple[float, float] | None = None
    #: Metres per pixel to resample both dates to; None keeps BEFORE's.
    resolution: float | None = None
    batch_size: int = 8
    #: Tiles with a larger share of nodata in either date are skipped.
    max_nodata: float = 0.5
    report: Path | None = None
    #: Add the caption layers to a GeoPackage that another tool made (refused otherwise, so as not to mix files).
    add_to_existing: bool = False
    #: Areas that need more tiles are refused (a mistyped --resolution can ask for billions).
    max_tiles: int = 1_000_000


@dataclass
class RegionSummary:
    """What a run did."""

    out: Path
    tiles: int
    already_done: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {CAPTIONED: 0, SKIPPED_NODATA: 0, FAILED: 0})
    report: Path | None = None
    #: True when ``max_batches`` stopped the run before the last tile.
    stopped_early: bool = False


@dataclass(frozen=True)
class _Prepared:
    """A tile read and judged by the reader thread: ``status`` None means "to caption"."""

    tile: Tile
    status: str | None
    pixels: TilePixels | None
    thumbnails: tuple[bytes, bytes] | None


class _BatchReader:
    """Prepares batches in a background thread, at most :data:`READ_AHEAD` ahead of the consumer."""

    _END = object()

    def __init__(self, batches: Sequence[Sequence[Tile]], prepare: Callable[[Tile], _Prepared]) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(batches, prepare), name="tile-reader", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, batches: Sequence[Sequence[Tile]], prepare: Callable[[Tile], _Prepared]) -> None:
        try:
            for batch in batches:
                if not self._put([prepare(tile) for tile in batch]):
                    return
            self._put(self._END)
        except BaseException as error:  # handed to the consumer, which raises it in the main thread
            self._put(error)

    def __iter__(self) -> Iterator[list[_Prepared]]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop reading and wait for the thread, so that the rasters may be closed."""
        self._stop.set()
        self._thread.join()


class _RegionRun:
    """How one run reads and captions tiles: the open rasters, the grid and the engine."""

    def __init__(
        self, pair: RasterPair, grid: TileGrid, engine: CaptionEngine, options: RegionOptions, log: Log
    ) -> None:
        self.pair, self.grid, self.engine = pair, grid, engine
        self.options, self.log = options, log
        self.failed_batches = 0
        self.last_error: Exception | None = None

    def prepare(self, tile: Tile) -> _Prepared:
        """Read a tile (in the reader thread) and decide whether it goes to the engine."""
        try:
            pixels = self.pair.read_tile(tile)
        except RasterioError as error:
            self.log(f"warning: tile {tile.tile_id} could not be read: {error}")
            return _Prepared(tile, FAILED, None, None)
        thumbnails = (png_thumbnail(pixels.before), png_thumbnail(pixels.after))
        if pixels.nodata_share > self.options.max_nodata:
            return _Prepared(tile, SKIPPED_NODATA, None, thumbnails)
        return _Prepared(tile, None, pixels, thumbnails)

    def caption(self, batch: list[_Prepared]) -> list[TileRecord]:
        """Caption a batch's readable tiles and turn the whole batch into records."""
        todo = [p for p in batch if p.status is None]
        results: list[CaptionResult] | None = []
        if todo:
            results = self._run_engine(todo)
        by_tile = dict(zip((p.tile for p in todo), results or []))
        records = []
        for prepared in batch:
            tile = prepared.tile
            result = by_tile.get(tile)
            status = prepared.status or (CAPTIONED if result is not None else FAILED)
            changes = None
            if result is not None and result.change_map is not None:
                changes = tile_changes(result.change_map, self.grid.transform, tile)
            records.append(TileRecord(tile, self.grid.footprint(tile), status, result, prepared.thumbnails, changes))
        return records

    def _run_engine(self, todo: list[_Prepared]) -> list[CaptionResult] | None:
        ids = [p.tile.tile_id for p in todo]
        try:
            results = self.engine.caption([(p.pixels.before, p.pixels.after) for p in todo], ids)
            if len(results) != len(todo):
                raise RuntimeError(f"the engine gave {len(results)} results for {len(todo)} pairs")
        # Any engine error (a network failure, a model error) fails this batch only: its tiles are recorded as
        # failed and tried again by the next run; several failures in a row stop the run (see check_engine).
        except Exception as error:
            self.failed_batches += 1
            self.last_error = error
            self.log(f"warning: captioning tiles {ids[0]}..{ids[-1]} failed: {error}")
            return None
        self.failed_batches = 0
        return results

    def check_engine(self) -> None:
        """Stop the run once the engine has failed too many batches in a row (call after writing a batch)."""
        if self.failed_batches >= MAX_FAILED_BATCHES:
            raise CCExpertError(
                f"{self.failed_batches} batches in a row failed (last: {self.last_error}); the work done so far is "
                "kept in the GeoPackage: rerun the same command to resume"
            )


def _area(pair: RasterPair, options: RegionOptions, log: Log = log_to_stderr) -> Area | None:
    """The run's area in the rasters' CRS (None: the whole BEFORE raster); notes on its polygons go to ``log``."""
    if options.area_file is not None:
        return read_area_file(options.area_file, pair.grid.crs, log)
    if options.bounds is not None:
        try:
            return Area.from_bounds(options.bounds)
        except ValueError as error:
            raise CCExpertError(str(error)) from None
    return None


def _tiles_along(size: int, tile: int, stride: int, start: float, end: float) -> int:
    """At most how many tiles along one axis of ``size`` pixels meet the span ``start``..``end`` (pixels)."""
    span = max(0.0, min(float(size), end) - max(0.0, start))
    everywhere = 1 if size <= tile else math.ceil((size - tile) / stride) + 1
    return min(everywhere, math.ceil(span / stride) + 1)


def _check_tile_count(grid: TileGrid, area: Area | None, options: RegionOptions) -> None:
    """Refuse, from arithmetic alone, an area that needs more than ``max_tiles`` tiles (before any tile exists)."""
    stride = grid.tile_size - grid.overlap
    if area is None:
        x0, y0, x1, y1 = 0.0, 0.0, float(grid.width), float(grid.height)
    else:
        inverse = invert_transform(grid.transform)
        xmin, ymin, xmax, ymax = area.bounds
        corners = [pixel_to_geo(inverse, x, y) for x in (xmin, xmax) for y in (ymin, ymax)]
        x0, x1 = min(c[0] for c in corners), max(c[0] for c in corners)
        y0, y1 = min(c[1] for c in corners), max(c[1] for c in corners)
    count = (_tiles_along(grid.width, grid.tile_size, stride, x0, x1)
             * _tiles_along(grid.height, grid.tile_size, stride, y0, y1))
    if count > options.max_tiles:
        resolution = f" at {options.resolution:g} m per pixel" if options.resolution else ""
        raise CCExpertError(
            f"the area needs up to {count:,} tiles of {grid.tile_size} px{resolution}, over --max-tiles "
            f"{options.max_tiles:,}: choose a smaller area, a coarser --resolution or larger tiles, or raise --max-tiles"
        )


def _run_options(pair: RasterPair, grid: TileGrid, options: RegionOptions, model_id: str) -> dict[str, str]:
    """What decides a tile's pixels and caption: a rerun with other values must not resume this output."""
    return run_options(
        grid, pair.grid.crs.to_string(), pair.before.bands, options.value_range, options.max_nodata,
        pair.before.path.name, pair.after.path.name, model_id,
    )


def caption_region(
    before: Path,
    after: Path,
    out: Path,
    load_engine: Callable[[], CaptionEngine],
    options: RegionOptions = RegionOptions(),
    *,
    log: Log = log_to_stderr,
    progress: Progress | None = None,
    max_batches: int | None = None,
) -> RegionSummary:
    """Caption every tile of the area into the GeoPackage ``out``, resuming what an earlier run left.

    ``load_engine`` is called once the inputs and the output are checked, so that a mistake is reported before a
    large model loads. ``max_batches`` stops after that many batches (for tests and trial runs).
    Raises :class:`~ccexpert_core.errors.CCExpertError` for bad input; work written before an error is kept.
    """
    if options.batch_size < 1:
        raise CCExpertError(f"--batch-size must be at least 1, not {options.batch_size}")
    if not 0 <= options.max_nodata <= 1:
        raise CCExpertError(f"the nodata share must be between 0 and 1, not {options.max_nodata}")
    try:
        check_run_paths(
            {"BEFORE": Path(before), "AFTER": Path(after), "--area": options.area_file},
            {"--out": Path(out), "--report": options.report},
        )
    except ValueError as error:
        raise CCExpertError(str(error)) from None
    with (
        _locked(Path(out)),
        bounded_read_cache(),
        RasterPair(Path(before), Path(after), options.bands, options.resolution, log) as pair,
    ):
        try:
            overlap = parse_overlap(options.overlap, options.tile_size)
            grid = TileGrid(pair.grid.width, pair.grid.height, pair.grid.gdal_transform, options.tile_size, overlap)
        except ValueError as error:
            raise CCExpertError(str(error)) from None
        area = _area(pair, options, log)
        _check_tile_count(grid, area, options)
        tiles = grid.tiles(area)
        if not tiles:
            raise CCExpertError(
                f"the area {format_bounds(area.bounds)} lies outside the rasters {format_bounds(pair.grid.bounds)} "
                f"(both in {crs_name(pair.grid.crs)})"
            )
        # Everything but the model's id can be checked against an existing output before a large model loads.
        known = _run_options(pair, grid, options, model_id="")
        del known["model_id"]
        check_output(Path(out), known, options.add_to_existing)
        engine = load_engine()
        summary = RegionSummary(Path(out), len(tiles))
        with CaptionsLayer(
            Path(out), spatial_ref(pair.grid.crs), _run_options(pair, grid, options, engine.model_id),
            pair.before.path.name, pair.after.path.name, engine.model_id, options.add_to_existing,
        ) as layer:
            finished = layer.finished_ids()
            pending = [t for t in tiles if t.tile_id not in finished]
            summary.already_done = len(tiles) - len(pending)
            log(f"{len(tiles)} tiles of {min(options.tile_size, grid.width)}×{min(options.tile_size, grid.height)} px "
                f"cover the area; {summary.already_done} already in {out}, {len(pending)} to do")
            pair.fit_stretch(tiles, options.value_range)
            batches = [pending[i : i + options.batch_size] for i in range(0, len(pending), options.batch_size)]
            if max_batches is not None and len(batches) > max_batches:
                batches, summary.stopped_early = batches[:max_batches], True
            _caption_batches(_RegionRun(pair, grid, engine, options, log), batches, layer, summary, progress)
        if options.report is not None:
            summary.report = _write_report(pair, grid, tiles, Path(out), options.report, engine.model_id)
    return summary


def _caption_batches(
    run: _RegionRun, batches: list[list[Tile]], layer: CaptionsLayer, summary: RegionSummary,
    progress: Progress | None,
) -> None:
    total = sum(len(batch) for batch in batches)
    if not total:
        return
    if progress is not None:
        progress(0, total)
    reader = _BatchReader(batches, run.prepare)
    try:
        done = 0
        for batch in reader:
            records = run.caption(batch)
            layer.write(records)
            for record in records:
                summary.counts[record.status] += 1
            done += len(records)
            if progress is not None:
                progress(done, total)
            run.check_engine()
    finally:
        reader.close()


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold the output's lock for the run (a second run on the same output is refused, not mixed in)."""
    lock = OutputLock(out, "ccexpert caption-region")
    try:
        lock.acquire()
    except (OutputBusy, ValueError) as error:
        raise CCExpertError(str(error)) from None
    try:
        yield
    finally:
        lock.release()


def _write_report(pair: RasterPair, grid: TileGrid, tiles: list[Tile], out: Path, path: Path, model_id: str) -> Path:
    rgb, (x, y, width, height) = pair.overview(tiles, OVERVIEW_SIZE)
    overview = Overview(rgb, grid.bounds(Tile(0, 0, x, y, width, height)))
    wanted = {t.tile_id for t in tiles}
    facts = {
        "BEFORE": str(pair.before.path), "AFTER": str(pair.after.path), "GeoPackage": str(out),
        "model": model_id, "CRS": crs_name(pair.grid.crs), "written": timestamp(),
    }
    note = model_note(model_id) or ""
    return write_report(path, (t for t in read_tiles(out) if t.tile_id in wanted), overview, facts, note)
