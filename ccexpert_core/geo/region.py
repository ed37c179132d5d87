"""The region pipeline behind ``ccexpert caption-region``: the run of :mod:`~ccexpert_core.geo.run_contract`,
wired to rasterio, sqlite3 and a :class:`~ccexpert_core.geo.runner.Captioning`.

area + dates → tile grid → every date read on the first one's grid, 8-bit RGB → nodata intervals skipped → batches →
captioning → the ``captions`` layer of a GeoPackage (and ``changes`` for models with a change-map head, ``history``
for a series), batch by batch → optional HTML report.

Where the tiles are read and captioned is the captioning's business (reader threads and several batches in flight
on this machine, or a Ray cluster); this module owns the GeoPackage and writes each batch as it comes back, in one
transaction, whatever the order. Memory is bounded by the batches in flight, whatever the region's size.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, Unpack

from ccexpert_core.errors import CCExpertError, FailedTilesError
from ccexpert_core.geo import run_contract as contract
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
from ccexpert_core.geo.dates import DateLabel, date_from_metadata
from ccexpert_core.geo.gpkg import timestamp
from ccexpert_core.geo.grid import Area, Bounds, Tile, TileGrid
from ccexpert_core.geo.raster import RasterSeries, crs_name, crs_text, format_bounds, read_environment, spatial_ref
from ccexpert_core.geo.report import Overview, write_report
from ccexpert_core.geo.run_files import check_run_paths
from ccexpert_core.geo.runner import BatchOutcome, Captioning, Needed, Reading
from ccexpert_core.geo.sources import RasterLocation
from ccexpert_core.series import Interval

OVERVIEW_SIZE = 1024
TOOL = "ccexpert caption-region"

Log = Callable[[str], None]
Progress = Callable[[int, int], None]


class RunHooks(TypedDict, total=False):
    """:func:`caption_dates`' keyword arguments that :func:`caption_region` passes on."""

    log: Log
    progress: Progress | None
    max_batches: int | None


def log_to_stderr(message: str) -> None:
    """The default for messages: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True, kw_only=True)
class RegionOptions(contract.RunSettings):
    """Everything about a run except its dates, output and captioning: the run's settings (the plugin's are the
    same) and the command's own."""

    #: The area: bounds in the rasters' CRS, or a GeoJSON file; neither means the whole first raster.
    bounds: Bounds | None = None
    area_file: Path | None = None
    report: Path | None = None
    #: Add the caption layers to a GeoPackage that another tool made (refused otherwise, so as not to mix files).
    add_to_existing: bool = False


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
    #: What the captioning has to say about the run (e.g. how many batches each backend answered).
    engine_note: str | None = None
    #: (tile, interval) pairs of the area the run was asked for and the file does not hold as captioned or skipped
    #: once it ends (failed ones, or ones a stopped run never reached), and how many pairs it was asked for.
    unfinished: int = 0
    asked: int = 0


@dataclass(frozen=True)
class DateInput:
    """One date of a run: where its raster is (a path or URL is made a
    :class:`~ccexpert_core.geo.sources.RasterLocation`), and its date label where known (None: the raster's
    metadata, if it says)."""

    raster: RasterLocation
    label: DateLabel | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "raster", RasterLocation.of(self.raster))


@dataclass(frozen=True)
class _Plan:
    """What a run does, worked out before any tile is read: its dates, intervals, grid and tiles."""

    dating: contract.Dating
    grid: TileGrid
    tiles: list[Tile]

    @property
    def intervals(self) -> tuple[Interval, ...]:
        return self.dating.intervals


class _Writer:
    """Turns finished batches into features and writes them (and, for a series, each tile's history), and stops
    the run as the contract's failure policy says."""

    def __init__(self, plan: _Plan, layer: CaptionsLayer, summary: RegionSummary, log: Log, history: bool) -> None:
        self.plan, self.layer, self.summary, self.log = plan, layer, summary, log
        self.history = SeriesHistory(plan.grid, plan.dating.consecutive()) if history else None
        self.failures = contract.FailurePolicy()

    def write(self, outcome: BatchOutcome) -> int:
        """Write a batch in one transaction; returns its number of tiles."""
        grid = self.plan.grid
        records = []
        for tile in outcome.tiles:
            result = tile.result
            if result is None:
                records.append(TileRecord(tile.tile, grid.footprint(tile.tile), tile.status, interval=tile.interval,
                                          thumbnails=tile.thumbnails, **self.plan.dating.fields(tile.interval)))
                continue
            changes = None if result.change_map is None else tile_changes(result.change_map, grid.transform, tile.tile)
            records.append(TileRecord(
                tile.tile, grid.footprint(tile.tile), tile.status, result.caption, result.change_detected,
                result.confidence, tile.interval, change_kind=result.change_kind, changes=changes,
                thumbnails=tile.thumbnails, **self.plan.dating.fields(tile.interval),
            ))
        self.layer.write(records, self.history)
        for record in records:
            self.summary.counts[record.status] += 1
        if outcome.error is not None:
            ids = [t.tile.tile_id for t in outcome.tiles]
            self.log(f"warning: captioning tiles {ids[0]}..{ids[-1]} failed: {outcome.error}")
        stop = self.failures.after_batch(outcome.error)
        if stop is not None:
            raise FailedTilesError(f"{stop}; the work done so far is kept in the GeoPackage: rerun the same command to "
                                   "resume")
        return len({record.tile for record in records})


def caption_region(
    before: Path, after: Path, out: Path, open_captioning: Callable[[], Captioning],
    options: RegionOptions = RegionOptions(), **keywords: Unpack[RunHooks],
) -> RegionSummary:
    """:func:`caption_dates` of two rasters (their dates from their metadata, if it says)."""
    dates = [DateInput(RasterLocation.of(before)), DateInput(RasterLocation.of(after))]
    return caption_dates(dates, out, open_captioning, options, **keywords)


def caption_dates(
    dates: Sequence[DateInput],
    out: Path,
    open_captioning: Callable[[], Captioning],
    options: RegionOptions = RegionOptions(),
    *,
    log: Log = log_to_stderr,
    progress: Progress | None = None,
    max_batches: int | None = None,
) -> RegionSummary:
    """Caption every tile of the area, for each of the run's intervals (two dates: one), into the GeoPackage
    ``out``, resuming what an earlier run left.

    ``open_captioning`` is called once the inputs and the output are checked, so that a mistake is reported before
    a large model loads or a cluster is joined. ``max_batches`` stops after that many batches (for tests and trial
    runs). Raises :class:`~ccexpert_core.errors.CCExpertError` for bad input; work written before an error is kept.
    """
    out = Path(out)
    with contract.refused_as(CCExpertError):
        roles = _checked(dates, out, options)
    _say_what_is_withheld(dates, roles, log)
    rasters = [date.raster for date in dates]
    with contract.refused_as(CCExpertError), contract.output_locked(out, TOOL), read_environment(), RasterSeries(
            rasters, roles, options.bands, options.resolution, log) as series:
        plan = _plan(series, [date.label for date in dates], options, log)
        # Everything but the model's id can be checked against an existing output before a large model loads.
        known = _stored_options(series, plan, options, "")
        del known["model_id"]
        check_output(out, known, options.add_to_existing)
        captioning = open_captioning()
        summary = RegionSummary(out, len(plan.tiles))
        with CaptionsLayer(
            out, spatial_ref(series.grid.crs), _stored_options(series, plan, options, captioning.model_id),
            plan.dating.names[0], plan.dating.names[-1], captioning.model_id, options.add_to_existing,
            {"model_id": captioning.former_ids},
        ) as layer:
            _caption(series, plan, layer, captioning, options, summary, log, progress, max_batches)
        if options.report is not None:
            summary.report = _write_report(series, plan, out, options.report, captioning)
    return summary


def _checked(dates: Sequence[DateInput], out: Path, options: RegionOptions) -> list[str]:
    """The dates' roles, once the settings, the dates' order and the paths are checked (nothing is opened)."""
    if len(dates) < 2:
        raise contract.RunRefused("a run needs two or more dates")
    options.check()
    names = [date.raster.name for date in dates]
    contract.check_time_order([date.label for date in dates], names)
    roles = contract.date_roles(len(dates), [date.label for date in dates])
    if len({date.raster.gdal_path for date in dates}) < len(dates) and len(dates) > 2:
        raise contract.RunRefused("the same raster is given for two dates: give one raster per date")
    # A remote raster is no file of this machine: only local ones can be what an output would overwrite.
    inputs: dict[str, Path | None] = {role: date.raster.local for role, date in zip(roles, dates)}
    try:
        check_run_paths({**inputs, "--area": options.area_file}, {"--out": out, "--report": options.report})
    except ValueError as error:
        raise contract.RunRefused(str(error)) from None
    return roles


def _say_what_is_withheld(dates: Sequence[DateInput], roles: Sequence[str], log: Log) -> None:
    """Say which rasters' addresses are recorded without part of what was given (a URL's user, password or query
    string: a signed URL's signature), so that no one looks for it in the output."""
    for role, date in zip(roles, dates):
        if date.raster.withholds_credentials:
            log(f"{role} is read from {date.raster.shown}; what its address holds beyond the path (a user, password "
                "or query string) is used to read it and never written (not to the GeoPackage, its options or the "
                "report)")


def _plan(series: RasterSeries, given: Sequence[DateLabel | None], options: RegionOptions, log: Log) -> _Plan:
    """The run's dates (from the rasters' metadata where not given), intervals, grid and tiles."""
    labels = _labels(series, given, log)
    intervals = contract.run_intervals(len(series.dates), options.first_to_last)
    dating = contract.Dating.of(labels, [date.location.name for date in series.dates], intervals)
    grid = TileGrid(series.grid.width, series.grid.height, series.grid.gdal_transform, options.tile_size,
                    contract.overlap_px(options.overlap, options.tile_size))
    area = _area(series, options, log)
    contract.check_tile_count(grid, None if area is None else area.bounds, options, "--max-tiles")
    tiles = grid.tiles(area)
    if not tiles:
        assert area is not None  # the whole raster always has tiles
        raise contract.RunRefused(
            f"the area {format_bounds(area.bounds)} lies outside the rasters {format_bounds(series.grid.bounds)} "
            f"(both in {crs_name(series.grid.crs)})"
        )
    return _Plan(dating, grid, tiles)


def _labels(series: RasterSeries, given: Sequence[DateLabel | None], log: Log) -> list[DateLabel | None]:
    """Each date's label as given, else from its raster's metadata; time order checked where all are known."""
    labels = []
    for date, label in zip(series.dates, given):
        if label is None:
            label = date_from_metadata({**date.dataset.tags(), **date.dataset.tags(ns="IMAGERY")})
            if label is not None:
                log(f"{date.role} ({date.location.name}) is dated {label} by its metadata")
        labels.append(label)
    contract.check_time_order(labels, [date.location.name for date in series.dates])
    return labels


def _area(series: RasterSeries, options: RegionOptions, log: Log) -> Area | None:
    """The run's area in the rasters' CRS (None: the whole first raster); notes on its polygons go to ``log``."""
    if options.area_file is not None:
        return read_area_file(options.area_file, series.grid.crs, log)
    if options.bounds is not None:
        try:
            return Area.from_bounds(options.bounds)
        except ValueError as error:
            raise contract.RunRefused(str(error)) from None
    return None


def _stored_options(series: RasterSeries, plan: _Plan, options: RegionOptions, model_id: str) -> dict[str, str]:
    """The options stored with the output (the contract's wording)."""
    dating = plan.dating
    return contract.stored_options(plan.grid, crs_text(series.grid.crs), series.dates[0].bands, options.value_range,
                                   options.max_nodata, dating.names, dating.labels, dating.intervals, model_id)


def _caption(
    series: RasterSeries, plan: _Plan, layer: CaptionsLayer, captioning: Captioning, options: RegionOptions,
    summary: RegionSummary, log: Log, progress: Progress | None, max_batches: int | None,
) -> None:
    """Caption what is still to do of the plan's tiles, batch by batch, into ``layer``."""
    intervals = len(plan.intervals)
    needed = contract.still_to_do(plan.tiles, intervals, layer.finished_keys())
    pending = [tile for tile in plan.tiles if tile.tile_id in needed]
    summary.already_done = len(plan.tiles) - len(pending)
    shown = f"{intervals} intervals of {len(series.dates)} dates; " if len(series.dates) > 2 else ""
    log(f"{len(plan.tiles)} tiles of {min(options.tile_size, plan.grid.width)}×"
        f"{min(options.tile_size, plan.grid.height)} px cover the area; {shown}{summary.already_done} already in "
        f"{layer.package.path}, {len(pending)} to do")
    series.fit_stretch(plan.tiles, options.value_range)
    size = options.tiles_per_batch(intervals, captioning.max_pairs)
    batches = [pending[i : i + size] for i in range(0, len(pending), size)]
    if max_batches is not None and len(batches) > max_batches:
        batches, summary.stopped_early = batches[:max_batches], True
    partial = {tile_id: wanted for tile_id, wanted in needed.items() if len(wanted) < intervals}
    reading = Reading(plan.intervals, options.max_nodata, options.report is not None, log)
    writer = _Writer(plan, layer, summary, log, history=len(series.dates) > 2)
    _write_batches(captioning, series, reading, batches, writer, progress, partial or None)
    summary.engine_note = captioning.describe()
    summary.asked = len(plan.tiles) * intervals
    summary.unfinished = contract.unfinished(plan.tiles, intervals, layer.finished_keys())


def _write_batches(
    captioning: Captioning, series: RasterSeries, reading: Reading, batches: list[list[Tile]], writer: _Writer,
    progress: Progress | None, needed: Needed | None,
) -> None:
    total = sum(len(batch) for batch in batches)
    if not total:
        return
    if progress is not None:
        progress(0, total)
    done = 0
    outcomes = captioning.run(series.source(), reading, batches, needed)
    try:
        for outcome in outcomes:
            done += writer.write(outcome)
            if progress is not None:
                progress(done, total)
    finally:
        outcomes.close()  # an error or Ctrl-C: stop reading and captioning at once; what was written stays


def _write_report(series: RasterSeries, plan: _Plan, out: Path, path: Path, captioning: Captioning) -> Path:
    rgb, (x, y, width, height) = series.overview(plan.tiles, OVERVIEW_SIZE)
    overview = Overview(rgb, plan.grid.bounds(Tile(0, 0, x, y, width, height)))
    wanted = {t.tile_id for t in plan.tiles}
    facts = {date.role: date.location.shown for date in series.dates}
    facts.update({"GeoPackage": str(out), "model": captioning.model_id, "CRS": crs_name(series.grid.crs),
                  "written": timestamp()})
    note = f"Note on the model: {captioning.model_note}." if captioning.model_note else ""
    return write_report(path, (t for t in read_tiles(out) if t.tile_id in wanted), overview, facts, note)
