"""The region pipeline behind ``ccexpert caption-region``.

area + two rasters → tile grid → both dates read on one grid, 8-bit RGB → nodata tiles skipped → batches →
engine → the ``captions`` layer of a GeoPackage (and ``changes``, for models with a change-map head), batch by
batch → optional HTML report.

Where the tiles are read and captioned is a :class:`~ccexpert_core.geo.runner.Runner`'s business (reader threads
and several batches in flight on this machine); this module owns the GeoPackage and writes each batch as it comes
back, in one transaction, whatever the order. Memory is bounded by the batches in flight, whatever the region's size.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ccexpert_core.errors import CCExpertError, FailedTilesError
from ccexpert_core.geo.area_file import read_area_file
from ccexpert_core.geo.captions_layer import (
    CAPTIONED,
    FAILED,
    SKIPPED_NODATA,
    CaptionsLayer,
    SeriesHistory,
    TileRecord,
    check_output,
    read_tiles,
)
from ccexpert_core.geo.changes import tile_changes
from ccexpert_core.geo.dates import DateLabel, check_order, date_from_metadata
from ccexpert_core.geo.engine import CaptionEngine, Interval
from ccexpert_core.geo.gpkg import timestamp
from ccexpert_core.geo.grid import (
    Area,
    Bounds,
    Tile,
    TileGrid,
    invert_transform,
    parse_overlap,
    pixel_to_geo,
    run_options,
)
from ccexpert_core.geo.raster import (
    PairSource,
    RasterPair,
    RasterSeries,
    SeriesSource,
    bounded_read_cache,
    crs_name,
    format_bounds,
    spatial_ref,
)
from ccexpert_core.geo.report import Overview, write_report
from ccexpert_core.geo.run_files import OutputBusy, OutputLock, check_run_paths
from ccexpert_core.geo.runner import BatchOutcome, LocalRunner, Needed, Runner

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
    #: A series of three or more dates: also caption the first date against the last.
    first_to_last: bool = False


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
    #: What the engine has to say about the run (e.g. how many batches each backend answered).
    engine_note: str | None = None
    #: (tile, interval) pairs of the area the run was asked for and the file does not hold as captioned or skipped
    #: once it ends (failed ones, or ones a stopped run never reached), and how many pairs it was asked for.
    unfinished: int = 0
    asked: int = 0


@dataclass(frozen=True)
class _Dating:
    """Which dates and rasters each of a run's intervals compares."""

    labels: Sequence[DateLabel | None]
    names: Sequence[str]
    intervals: Sequence[Interval]

    def of(self, interval: int) -> dict[str, str | None]:
        """The record fields of an interval: its dates (as given, or None) and its rasters' names."""
        i, j = self.intervals[interval]
        label = lambda k: None if self.labels[k] is None else str(self.labels[k])  # noqa: E731
        return {"date_before": label(i), "date_after": label(j), "before_source": self.names[i],
                "after_source": self.names[j]}


class _Writer:
    """Turns finished batches into features, writes them (and, for a series, each tile's history), and stops the
    run once the engine keeps failing."""

    def __init__(
        self, grid: TileGrid, layer: CaptionsLayer, summary: RegionSummary, log: Log, dating: _Dating,
        history: bool = False,
    ) -> None:
        self.grid, self.layer, self.summary, self.log = grid, layer, summary, log
        self.dating, self.history = dating, history
        self.failed_batches = 0

    def write(self, outcome: BatchOutcome) -> int:
        """Write a batch (its features, change areas and, for a series, its tiles' history) in one transaction;
        returns its number of tiles."""
        records = []
        for tile in outcome.tiles:
            changes = None
            if tile.result is not None and tile.result.change_map is not None:
                changes = tile_changes(tile.result.change_map, self.grid.transform, tile.tile)
            records.append(TileRecord(
                tile.tile, self.grid.footprint(tile.tile), tile.status, tile.result, tile.thumbnails, changes,
                interval=tile.interval, change_kind=None if tile.result is None else tile.result.change_kind,
                **self.dating.of(tile.interval),
            ))
        self.layer.write(records, SeriesHistory(self.grid, self.dating.intervals) if self.history else None)
        tiles = {record.tile: None for record in records}
        for record in records:
            self.summary.counts[record.status] += 1
        self._check(outcome)
        return len(tiles)

    def _check(self, outcome: BatchOutcome) -> None:
        # Any engine error (a network failure, a model error) fails its batch only: its tiles are recorded as
        # failed and tried again by the next run; several failures in a row stop the run.
        if outcome.error is None:
            self.failed_batches = 0
            return
        self.failed_batches += 1
        ids = [t.tile.tile_id for t in outcome.tiles]
        self.log(f"warning: captioning tiles {ids[0]}..{ids[-1]} failed: {outcome.error}")
        if self.failed_batches >= MAX_FAILED_BATCHES:
            raise FailedTilesError(
                f"{self.failed_batches} batches in a row failed (last: {outcome.error}); the work done so far is "
                "kept in the GeoPackage: rerun the same command to resume"
            )


def _area(pair: RasterSeries, options: RegionOptions, log: Log = log_to_stderr) -> Area | None:
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
            f"{options.max_tiles:,}: choose a smaller area, a coarser --resolution or larger tiles, or raise "
            "--max-tiles"
        )


@dataclass(frozen=True)
class DateInput:
    """One date of a run: its raster, and its date label where known (None: the raster's metadata, if it says)."""

    path: Path
    label: DateLabel | None = None


def _intervals(count: int, first_to_last: bool) -> list[Interval]:
    """Consecutive dates, and the first against the last when asked (and not already consecutive)."""
    intervals = [(k, k + 1) for k in range(count - 1)]
    if first_to_last and count > 2:
        intervals.append((0, count - 1))
    return intervals


def _labels(dates: RasterSeries, given: Sequence[DateLabel | None], log: Log) -> list[DateLabel | None]:
    """Each date's label as given, else from its raster's metadata; time order checked where all are known."""
    labels = []
    for date, label in zip(dates.dates, given):
        if label is None:
            label = date_from_metadata({**date.dataset.tags(), **date.dataset.tags(ns="IMAGERY")})
            if label is not None:
                log(f"{date.role} ({date.path.name}) is dated {label} by its metadata")
        labels.append(label)
    if all(labels):
        try:
            check_order(labels, [date.path.name for date in dates.dates])  # type: ignore[arg-type]
        except ValueError as error:
            raise CCExpertError(str(error)) from None
    return labels


def _run_options(
    dates: RasterSeries, grid: TileGrid, options: RegionOptions, model_id: str, labels: Sequence[DateLabel | None],
    intervals: Sequence[Interval],
) -> dict[str, str]:
    """What decides a tile's pixels and caption: a rerun with other values must not resume this output."""
    first, last = dates.dates[0], dates.dates[-1]
    stored = run_options(
        grid, dates.grid.crs.to_string(), first.bands, options.value_range, options.max_nodata,
        first.path.name, last.path.name, model_id,
    )
    # Added only where there is something to say, so that outputs of plain two-date runs resume as before.
    if len(dates.dates) > 2 or any(labels):
        stored["dates"] = ";".join(f"{label or ''}={date.path.name}" for label, date in zip(labels, dates.dates))
    if intervals != _intervals(len(dates.dates), False):
        stored["intervals"] = ",".join(f"{i}-{j}" for i, j in intervals)
    return stored


def caption_region(
    before: Path,
    after: Path,
    out: Path,
    load_engine: Callable[[], CaptionEngine],
    options: RegionOptions = RegionOptions(),
    **keywords: object,
) -> RegionSummary:
    """:func:`caption_dates` of two rasters (their dates from their metadata, if it says)."""
    return caption_dates([DateInput(Path(before)), DateInput(Path(after))], out, load_engine, options, **keywords)


def caption_dates(
    dates: Sequence[DateInput],
    out: Path,
    load_engine: Callable[[], CaptionEngine],
    options: RegionOptions = RegionOptions(),
    *,
    log: Log = log_to_stderr,
    progress: Progress | None = None,
    max_batches: int | None = None,
    make_runner: Callable[[PairSource | SeriesSource, CaptionEngine, list[Interval]], Runner] | None = None,
) -> RegionSummary:
    """Caption every tile of the area, for each interval between consecutive dates (two dates: one interval),
    into the GeoPackage ``out``, resuming what an earlier run left.

    ``load_engine`` is called once the inputs and the output are checked, so that a mistake is reported before a
    large model loads. ``max_batches`` stops after that many batches (for tests and trial runs). ``make_runner``
    chooses where tiles are read and captioned (default: :class:`~ccexpert_core.geo.runner.LocalRunner`).
    Raises :class:`~ccexpert_core.errors.CCExpertError` for bad input; work written before an error is kept.
    """
    if len(dates) < 2:
        raise CCExpertError("a run needs two or more dates")
    if options.batch_size < 1:
        raise CCExpertError(f"--batch-size must be at least 1, not {options.batch_size}")
    if not 0 <= options.max_nodata <= 1:
        raise CCExpertError(f"the nodata share must be between 0 and 1, not {options.max_nodata}")
    given = [date.label for date in dates]
    if all(given):
        try:
            check_order(given, [Path(date.path).name for date in dates])  # type: ignore[arg-type]
        except ValueError as error:
            raise CCExpertError(str(error)) from None
    paired = len(dates) == 2
    roles = ["BEFORE", "AFTER"] if paired else [f"date {date.label or k + 1}" for k, date in enumerate(dates)]
    inputs: dict[str, Path | None] = {role: Path(date.path) for role, date in zip(roles, dates)}
    if len(set(map(str, inputs.values()))) < len(dates) and not paired:
        raise CCExpertError("the same raster is given for two dates: give one raster per date")
    try:
        check_run_paths({**inputs, "--area": options.area_file}, {"--out": Path(out), "--report": options.report})
    except ValueError as error:
        raise CCExpertError(str(error)) from None
    paths = [Path(date.path) for date in dates]
    opened = (RasterPair(paths[0], paths[1], options.bands, options.resolution, log) if paired
              else RasterSeries(paths, roles, options.bands, options.resolution, log))
    with _locked(Path(out)), bounded_read_cache(), opened as series:
        labels = _labels(series, given, log)
        intervals = _intervals(len(dates), options.first_to_last)
        try:
            overlap = parse_overlap(options.overlap, options.tile_size)
            grid = TileGrid(series.grid.width, series.grid.height, series.grid.gdal_transform, options.tile_size,
                            overlap)
        except ValueError as error:
            raise CCExpertError(str(error)) from None
        area = _area(series, options, log)
        _check_tile_count(grid, area, options)
        tiles = grid.tiles(area)
        if not tiles:
            raise CCExpertError(
                f"the area {format_bounds(area.bounds)} lies outside the rasters "
                f"{format_bounds(series.grid.bounds)} (both in {crs_name(series.grid.crs)})"
            )
        # Everything but the model's id can be checked against an existing output before a large model loads.
        known = _run_options(series, grid, options, "", labels, intervals)
        del known["model_id"]
        check_output(Path(out), known, options.add_to_existing)
        engine = load_engine()
        summary = RegionSummary(Path(out), len(tiles))
        names = [date.path.name for date in series.dates]
        with CaptionsLayer(
            Path(out), spatial_ref(series.grid.crs), _run_options(series, grid, options, engine.model_id, labels,
                                                                  intervals),
            names[0], names[-1], engine.model_id, options.add_to_existing,
            {"model_id": engine.former_ids},
        ) as layer:
            finished = layer.finished_keys()
            needed = {t.tile_id: [k for k in range(len(intervals)) if (t.tile_id, k) not in finished] for t in tiles}
            pending = [t for t in tiles if needed[t.tile_id]]
            summary.already_done = len(tiles) - len(pending)
            shown = f"{len(intervals)} intervals of {len(dates)} dates; " if not paired else ""
            log(f"{len(tiles)} tiles of {min(options.tile_size, grid.width)}×{min(options.tile_size, grid.height)} px "
                f"cover the area; {shown}{summary.already_done} already in {out}, {len(pending)} to do")
            series.fit_stretch(tiles, options.value_range)
            batches = [pending[i : i + options.batch_size] for i in range(0, len(pending), options.batch_size)]
            if max_batches is not None and len(batches) > max_batches:
                batches, summary.stopped_early = batches[:max_batches], True
            source = series.source()
            runner = make_runner(source, engine, intervals) if make_runner else LocalRunner(
                source, engine, options.max_nodata, thumbnails=options.report is not None, log=log,
                intervals=intervals,
            )
            partial = {tile_id: wanted for tile_id, wanted in needed.items() if len(wanted) < len(intervals)}
            writer = _Writer(grid, layer, summary, log, _Dating(labels, names, intervals), history=not paired)
            _caption_batches(runner, batches, writer, progress, partial or None)
            summary.engine_note = engine.describe()
            kept = layer.finished_keys()
            summary.asked = len(tiles) * len(intervals)
            summary.unfinished = sum((t.tile_id, k) not in kept for t in tiles for k in range(len(intervals)))
        if options.report is not None:
            summary.report = _write_report(series, grid, tiles, Path(out), options.report, engine)
    return summary


def _caption_batches(
    runner: Runner, batches: list[list[Tile]], writer: _Writer, progress: Progress | None, needed: Needed | None,
) -> None:
    total = sum(len(batch) for batch in batches)
    if not total:
        return
    if progress is not None:
        progress(0, total)
    done = 0
    outcomes = runner.run(batches, needed)
    try:
        for outcome in outcomes:
            done += writer.write(outcome)
            if progress is not None:
                progress(done, total)
    finally:
        outcomes.close()  # an error or Ctrl-C: stop reading and captioning at once; what was written stays


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


def _write_report(
    dates: RasterSeries, grid: TileGrid, tiles: list[Tile], out: Path, path: Path, engine: CaptionEngine
) -> Path:
    rgb, (x, y, width, height) = dates.overview(tiles, OVERVIEW_SIZE)
    overview = Overview(rgb, grid.bounds(Tile(0, 0, x, y, width, height)))
    wanted = {t.tile_id for t in tiles}
    facts = {date.role: str(date.path) for date in dates.dates}
    facts.update({"GeoPackage": str(out), "model": engine.model_id, "CRS": crs_name(dates.grid.crs),
                  "written": timestamp()})
    note = f"Note on the model: {engine.model_note}." if engine.model_note else ""
    return write_report(path, (t for t in read_tiles(out) if t.tile_id in wanted), overview, facts, note)
