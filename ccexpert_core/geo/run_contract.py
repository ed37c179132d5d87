"""One captioning run, as both tools run it: the rules of ``ccexpert caption-region`` and the QGIS plugin, once.

A run is a series of two or more dates over one tile grid. This module says, for both tools: the run's settings and
how they are checked, how dates are named in messages (BEFORE/AFTER, or ``date 2018``) and which intervals are
captioned (consecutive, or also first to last), the options stored with the output (written and read back in one
place; the CRS compared one way), what is still to do on a resume, the failure policy, the tile-count guard and
the output's lock. The orchestrators (:mod:`ccexpert_core.geo.region`, ``qgis_plugin/job.py``) wire their I/O to
these rules; every reader of a run's GeoPackage (``export-dataset``, the review dock) reads its options with
:func:`read_stored`.

Standard library only (and its bundled neighbours), so the plugin bundles it. A refusal is :class:`RunRefused`, a
``ValueError`` with a message meant for a user; each tool turns it into its own error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from . import grid as tiling
from . import run_files
from .dates import DateLabel, check_order

#: (i, j): two dates of the series, by index, earlier first.
Interval = tuple[int, int]
#: The layer a run writes unless told otherwise.
DEFAULT_LAYER = "captions"
#: A run stops after this many batches in a row failed (a backend that is down, say); their tiles stay failed.
MAX_FAILED_BATCHES = 3
#: Areas that need more tiles are refused unless the run allows more (a mistyped resolution can ask for billions).
DEFAULT_MAX_TILES = 1_000_000
#: The options a tile's pixels depend on: a layer without them was not written by a run of this schema.
GRID_OPTIONS = ("crs", "geotransform", "size", "tile_size", "overlap_px", "bands", "value_range")
#: How the default 8-bit mapping is stored (pixels.STRETCH_PERCENTILES is that stretch).
STRETCH = "stretch 2-98%"


class RunRefused(ValueError):
    """The run cannot go ahead as asked; the message says what to change."""


@contextmanager
def refused_as(error: Callable[[str], Exception]) -> Iterator[None]:
    """Within the block, the contract's refusals are raised as the tool's own ``error`` (one line for the user)."""
    try:
        yield
    except RunRefused as refusal:
        raise error(str(refusal)) from None


# ----- the run's settings -----
@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """What both tools ask of a run besides its inputs, output and engine: the grid, the pixels, the batches."""

    tile_size: int = 384
    #: Pixels ("32") or a share of the tile ("10%").
    overlap: str = "0"
    #: 1-based band numbers (one or three); None for the first three.
    bands: tuple[int, ...] | None = None
    #: Values mapped to 0 and 255; None for a 2–98 % stretch of data that is not 8-bit.
    value_range: tuple[float, float] | None = None
    #: Metres per pixel to resample every date to; None keeps the first date's.
    resolution: float | None = None
    #: Pairs (tile and interval) per batch: a batch holds batch_size // intervals tiles, at least one.
    batch_size: int = 8
    #: An interval with a larger share of nodata in either of its dates is skipped.
    max_nodata: float = 0.5
    #: Areas that need more tiles are refused.
    max_tiles: int = DEFAULT_MAX_TILES
    #: A series of three or more dates: also caption the first date against the last.
    first_to_last: bool = False

    def check(self) -> None:
        """:class:`RunRefused` for a value no run can use, before anything is opened."""
        if not 32 <= self.tile_size <= 4096:
            raise RunRefused(f"the tile size must be 32 to 4096 pixels, not {self.tile_size}")
        overlap_px(self.overlap, self.tile_size)
        if self.bands is not None and (len(self.bands) not in (1, 3) or min(self.bands) < 1):
            raise RunRefused(f"give one or three band numbers from 1, not {', '.join(map(str, self.bands))}")
        if self.value_range is not None:
            low, high = self.value_range
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise RunRefused(f"the value range must be two finite numbers, low before high, not {low}, {high}")
        if self.resolution is not None and not (math.isfinite(self.resolution) and self.resolution > 0):
            raise RunRefused(f"the resolution must be a positive number of metres per pixel, not {self.resolution}")
        if not 1 <= self.batch_size <= 256:
            raise RunRefused(f"the batch size must be 1 to 256 pairs, not {self.batch_size}")
        if not 0 <= self.max_nodata <= 1:
            raise RunRefused(f"the nodata share must be between 0 and 1, not {self.max_nodata}")
        if self.max_tiles < 1:
            raise RunRefused(f"the tile limit must be at least 1, not {self.max_tiles}")

    def tiles_per_batch(self, intervals: int, pairs_per_request: int | None = None) -> int:
        """Tiles per batch of ``batch_size`` pairs (at most ``pairs_per_request``, a backend's limit): every interval
        of a tile goes in the same batch as its images, at least one tile; :class:`RunRefused` where one tile's
        intervals are more than a request may hold."""
        if pairs_per_request is not None and intervals > pairs_per_request:
            raise RunRefused(
                f"a tile brings {intervals} pairs (one per interval), and a request to the backend takes at most "
                f"{pairs_per_request}: caption fewer dates at a time"
            )
        pairs = self.batch_size if pairs_per_request is None else min(self.batch_size, pairs_per_request)
        return max(1, pairs // max(1, intervals))


def overlap_px(overlap: str | int, tile_size: int) -> int:
    """The overlap in pixels (``32`` or ``10%`` of the tile), or :class:`RunRefused`."""
    try:
        return tiling.parse_overlap(overlap, tile_size)
    except ValueError as error:
        raise RunRefused(str(error)) from None


# ----- dates and intervals -----
def date_roles(count: int, labels: Sequence[object | None] = ()) -> list[str]:
    """How messages name a run's dates: BEFORE and AFTER for two, else ``date 2018`` (``date 3`` where undated)."""
    if count == 2:
        return ["BEFORE", "AFTER"]
    given = [*labels, *[None] * count][:count]
    return [f"date {label or k + 1}" for k, label in enumerate(given)]


def run_intervals(dates: int, first_to_last: bool = False) -> tuple[Interval, ...]:
    """The intervals a run captions: each date against the next, and the first against the last when asked (three
    dates or more: with two, it is the one interval already)."""
    intervals = tuple((k, k + 1) for k in range(dates - 1))
    return intervals + ((0, dates - 1),) if first_to_last and dates > 2 else intervals


def parse_labels(texts: Sequence[str | None], names: Sequence[str]) -> list[DateLabel | None]:
    """Each date's label parsed (None where not given), in time order where every date is known; ``names`` say
    which input each date is. :class:`RunRefused` for a label that is no date, or dates out of order."""
    roles = date_roles(len(names))
    labels: list[DateLabel | None] = []
    for role, name, text in zip(roles, names, texts):
        try:
            labels.append(DateLabel.parse(text) if text and text.strip() else None)
        except ValueError as error:
            raise RunRefused(f"{role} ({name}): {error}") from None
    labels += [None] * (len(names) - len(labels))
    check_time_order(labels, names)
    return labels


def check_time_order(labels: Sequence[DateLabel | None], names: Sequence[str]) -> None:
    """:class:`RunRefused` for dates out of time order, where every date is known."""
    known = [label for label in labels if label is not None]
    if len(known) == len(labels):
        try:
            check_order(known, list(names))
        except ValueError as error:
            raise RunRefused(str(error)) from None


class IntervalFields(TypedDict):
    """The fields every feature of one interval records: its two dates (as given, or None) and rasters."""

    date_before: str | None
    date_after: str | None
    before_source: str | None
    after_source: str | None


@dataclass(frozen=True)
class Dating:
    """Which dates and rasters each of a run's intervals compares: what every feature of an interval records."""

    labels: tuple[str | None, ...]
    names: tuple[str, ...]
    intervals: tuple[Interval, ...]

    @classmethod
    def of(cls, labels: Sequence[object | None], names: Sequence[str], intervals: Sequence[Interval]) -> Dating:
        """From the run's labels (DateLabels or text; None where unknown), rasters' names and intervals."""
        texts = tuple(None if label is None or not str(label) else str(label) for label in labels)
        return cls(texts, tuple(names), tuple(intervals))

    def fields(self, interval: int) -> IntervalFields:
        """The fields of one interval's features: its dates (as given, or None) and its rasters' names."""
        i, j = self.intervals[interval]
        return {"date_before": self.labels[i], "date_after": self.labels[j], "before_source": self.names[i],
                "after_source": self.names[j]}

    def consecutive(self) -> dict[int, Interval]:
        """The intervals that compare a date with the next, by index: what a tile's history tells."""
        return {k: (i, j) for k, (i, j) in enumerate(self.intervals) if j == i + 1}


def history_date(label: str | None, index: int) -> str:
    """A date in a tile's history: its label, or ``date 3`` where unknown."""
    return label or f"date {index + 1}"


# ----- one tile's record -----
@dataclass(frozen=True)
class TileRecord:
    """What a run learned about one tile in one interval, ready for either tool's writer."""

    tile: tiling.Tile
    footprint: Sequence[tiling.Point]
    status: str
    caption: str | None = None
    change_detected: bool | None = None
    confidence: float | None = None
    #: Which of the run's intervals (0 for two dates), and its dates as given (None where unknown).
    interval: int = 0
    date_before: str | None = None
    date_after: str | None = None
    #: One of the schema's CHANGE_KINDS, or None.
    change_kind: str | None = None
    #: The interval's two rasters, where they are not the layer's (a series compares other dates per interval).
    before_source: str | None = None
    after_source: str | None = None
    #: Polygons around the changed places from the model's change map (None: the model gives no change map).
    changes: list[tiling.Polygon] | None = None
    #: PNG bytes of the interval's two thumbnails, for the command's report.
    thumbnails: tuple[bytes, bytes] | None = None

    def values(self, before_source: str, after_source: str, model_id: str, created_at: str) -> dict[str, object]:
        """The feature's run fields (the schema's RUN_FIELDS), the layer's rasters where the record names none."""
        return {
            "tile_id": self.tile.tile_id, "interval": self.interval, "row": self.tile.row, "col": self.tile.col,
            "date_before": self.date_before, "date_after": self.date_after, "caption": self.caption,
            "change_detected": None if self.change_detected is None else int(self.change_detected),
            "change_kind": self.change_kind, "confidence": self.confidence, "status": self.status,
            "before_source": self.before_source or before_source, "after_source": self.after_source or after_source,
            "model_id": model_id, "created_at": created_at,
        }


# ----- the options stored with the output -----
def crs_text(epsg: int | None, wkt: str) -> str:
    """How a run stores its CRS: ``EPSG:n`` where GDAL identifies an EPSG code, else the CRS's WKT."""
    return f"EPSG:{epsg}" if epsg else wkt


def grid_words(grid: tiling.TileGrid) -> dict[str, str]:
    """The grid's part of the stored options: its transform, size, tile size and overlap, as every run words it."""
    return {
        "geotransform": ",".join(f"{value:.12g}" for value in grid.transform),
        "size": f"{grid.width}x{grid.height}",
        "tile_size": str(grid.tile_size),
        "overlap_px": str(grid.overlap),
    }


def stored_options(
    grid: tiling.TileGrid, crs: str, bands: Sequence[int], value_range: tuple[float, float] | None,
    max_nodata: float, names: Sequence[str], labels: Sequence[object | None], intervals: Sequence[Interval],
    model_id: str,
) -> dict[str, str]:
    """What decides a tile's pixels and caption, as an output stores it: a rerun with other values must not resume
    that output. Both tools store exactly this, so that each resumes the other's output. ``crs`` is
    :func:`crs_text`'s."""
    stored = {
        "crs": crs,
        **grid_words(grid),
        "bands": ",".join(map(str, bands)),
        "value_range": STRETCH if value_range is None else ",".join(map(str, value_range)),
        "max_nodata": f"{max_nodata:g}",
        "before_source": names[0],
        "after_source": names[-1],
        "model_id": model_id,
    }
    texts = [None if label is None else str(label) for label in labels]
    # Only where there is something to say, so that outputs of plain two-date runs resume as before.
    if len(names) > 2 or any(texts):
        stored["dates"] = ";".join(f"{label or ''}={name}" for label, name in zip(texts, names))
    if tuple(intervals) != run_intervals(len(names)):
        stored["intervals"] = ",".join(f"{i}-{j}" for i, j in intervals)
    return stored


def changed_option(
    stored: Mapping[str, str], wanted: Mapping[str, str], same_crs: Callable[[str, str], bool],
    also_accepted: Mapping[str, Collection[str]] | None = None,
) -> str | None:
    """The first of ``wanted``'s options an output stored otherwise (None: it may be resumed). Keys missing from
    ``wanted`` are not compared (a model's id before it loads); ``also_accepted`` names stored values that count as
    the same (a model's id as older versions stored it). The CRS is the same where the texts are, or where
    ``same_crs`` (each tool's CRS library) finds the two the same CRS, an EPSG code against its WKT included."""
    accepted = also_accepted or {}
    for key, value in wanted.items():
        there = stored.get(key)
        if there == value or there in accepted.get(key, ()):
            continue
        if key == "crs" and there is not None and same_crs(there, value):
            continue
        return key
    return None


def other_options(path: object, stored: Mapping[str, str], wanted: Mapping[str, str], key: str, how: str) -> str:
    """The refusal of an output made with other options (``how``: what the user does to resume, e.g. "rerun with the
    same options")."""
    return (f"{path} holds tiles made with other options ({key}: {stored.get(key)} there, {wanted[key]} now): "
            f"{how}")


@dataclass(frozen=True)
class RunDate:
    """One date of a stored run: its label as given (empty where unknown) and its raster's file name."""

    label: str
    name: str


@dataclass(frozen=True)
class StoredRun:
    """A run's options as read back from its output (:func:`read_stored`)."""

    options: Mapping[str, str]
    crs: str
    bands: tuple[int, ...]
    value_range: tuple[float, float] | None
    tile_size: int
    overlap_px: int
    dates: tuple[RunDate, ...]
    intervals: tuple[Interval, ...]

    def role(self, index: int) -> str:
        """How messages name one of the run's dates (:func:`date_roles`)."""
        return date_roles(len(self.dates), [date.label for date in self.dates])[index]

    def described(self) -> str:
        """The dates for a message: ``2016=a.tif, 2018=b.tif``."""
        return ", ".join(f"{date.label}={date.name}" if date.label else date.name for date in self.dates)

    def grid_mismatch(self, grid: tiling.TileGrid) -> str | None:
        """The first of the transform and size a raster's grid words otherwise than the run stored them."""
        found = grid_words(grid)
        return next((key for key in ("geotransform", "size") if found[key] != self.options[key]), None)

    def pixel_size(self) -> float:
        """The run's pixel size, in the CRS's units (what a resampled run resampled to)."""
        return abs(float(self.options["geotransform"].split(",")[1]))

    def tile_grid(self, width: int, height: int, transform: tiling.GeoTransform) -> tiling.TileGrid:
        """The run's tile grid over a raster grid."""
        return tiling.TileGrid(width, height, transform, self.tile_size, self.overlap_px)


def read_stored(options: Mapping[str, str]) -> StoredRun:
    """A run's stored options, read (a plain two-date run stores its two rasters' names only); :class:`RunRefused`
    where the ones the pixels depend on are missing or cannot be read."""
    missing = next((key for key in GRID_OPTIONS if not options.get(key)), None)
    if missing is not None:
        raise RunRefused(f"the layer does not record its run's options ({missing} is missing): its tiles' pixels "
                         "cannot be rebuilt")
    try:
        bands = tuple(int(band) for band in options["bands"].split(","))
        value_range = None
        if not options["value_range"].startswith("stretch"):
            low, high = (float(value) for value in options["value_range"].split(","))
            value_range = (low, high)
        tile_size, overlap = int(options["tile_size"]), int(options["overlap_px"])
        if options.get("dates"):
            dates = tuple(RunDate(*entry.split("=", 1)) for entry in options["dates"].split(";"))
        else:
            dates = (RunDate("", options.get("before_source", "")), RunDate("", options.get("after_source", "")))
        intervals = run_intervals(len(dates))
        if options.get("intervals"):
            pairs = (text.split("-") for text in options["intervals"].split(","))
            intervals = tuple((int(i), int(j)) for i, j in pairs)
    except (TypeError, ValueError):
        shown = ", ".join(f"{key} {options.get(key)}" for key in (*GRID_OPTIONS[3:], "dates", "intervals"))
        raise RunRefused(f"the layer's run options cannot be read ({shown})") from None
    return StoredRun(options, options["crs"], bands, value_range, tile_size, overlap, dates, intervals)


def skipped(nodata: Sequence[float], interval: Interval, max_nodata: float) -> bool:
    """Whether a tile's interval is skipped: either of its dates has a larger share of nodata than allowed
    (``nodata``: each date's share, as :func:`~ccexpert_core.geo.pixels.nodata_share` gives it)."""
    i, j = interval
    return max(nodata[i], nodata[j]) > max_nodata


# ----- what is left to do -----
def still_to_do(tiles: Iterable[tiling.Tile], intervals: int,
                finished: Collection[tuple[str, int]]) -> dict[str, list[int]]:
    """For each tile with work left, its intervals (by index) the output does not hold as captioned or skipped:
    failed ones are tried again."""
    left = {tile.tile_id: [k for k in range(intervals) if (tile.tile_id, k) not in finished] for tile in tiles}
    return {tile_id: wanted for tile_id, wanted in left.items() if wanted}


def unfinished(tiles: Iterable[tiling.Tile], intervals: int, finished: Collection[tuple[str, int]]) -> int:
    """(tile, interval) pairs of the area an output does not hold as captioned or skipped."""
    return sum(len(wanted) for wanted in still_to_do(tiles, intervals, finished).values())


# ----- the failure policy -----
class FailurePolicy:
    """A batch the engine failed is written as failed (a rerun tries its tiles again) and the run goes on; after
    :data:`MAX_FAILED_BATCHES` failed batches in a row it stops, keeping what it wrote."""

    def __init__(self, max_in_a_row: int = MAX_FAILED_BATCHES) -> None:
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0

    def after_batch(self, error: BaseException | None) -> str | None:
        """Count a finished batch; the reason to stop the run, once it must."""
        self.in_a_row = 0 if error is None else self.in_a_row + 1
        if self.in_a_row < self.max_in_a_row:
            return None
        return f"{self.in_a_row} batches in a row failed (last: {error})"


# ----- the tile-count guard -----
def check_tile_count(
    grid: tiling.TileGrid, bounds: tiling.Bounds | None, settings: RunSettings, limit: str = "the tile limit",
) -> int:
    """At most how many tiles the area needs, from arithmetic alone (before any tile exists); :class:`RunRefused`
    over ``settings.max_tiles`` (``limit``: how the tool names that setting)."""
    count = grid.tiles_at_most(bounds)
    if count > settings.max_tiles:
        resolution = f" at {settings.resolution:g} m per pixel" if settings.resolution else ""
        raise RunRefused(
            f"the area needs up to {count:,} tiles of {grid.tile_size} px{resolution}, over {limit} "
            f"({settings.max_tiles:,}): choose a smaller area, a coarser resolution or larger tiles, or raise {limit}"
        )
    return count


# ----- the output's lock -----
@contextmanager
def output_locked(output: Path, tool: str) -> Iterator[None]:
    """Hold the output's lock while the run writes: a second run on the same file (by any path) is refused, not
    mixed in, whichever tool runs it."""
    lock = run_files.OutputLock(Path(output), tool)
    try:
        lock.acquire()
    except (run_files.OutputBusy, ValueError) as error:
        raise RunRefused(str(error)) from None
    try:
        yield
    finally:
        lock.release()
