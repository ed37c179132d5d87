"""How a region's batches of tiles become captioned batches: read, judged, captioned, handed back in the order they
complete. This is the seam between the region pipeline (which owns the GeoPackage and writes what comes back) and
where the work happens: :class:`LocalRunner` on this machine (reader threads, an engine with several batches in
flight), or a runner on a cluster that reads and captions with the same :func:`read_batch`.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rasterio.errors import RasterioError

from ccexpert_core.captions import CaptionResult
from ccexpert_core.geo.captions_layer import CAPTIONED, FAILED, SKIPPED_NODATA
from ccexpert_core.geo.engine import CaptionEngine
from ccexpert_core.geo.grid import Tile
from ccexpert_core.geo.raster import PairSource, RasterSeries, SeriesSource
from ccexpert_core.geo.report import thumbnail
from ccexpert_core.inflight import run_in_flight
from ccexpert_core.series import PAIR_INTERVALS, Interval

Log = Callable[[str], None]


@dataclass(frozen=True)
class TileOutcome:
    """What became of one tile in one interval of its dates: its status, the model's result where it was
    captioned, thumbnails (of the interval's two dates) if asked for."""

    tile: Tile
    status: str
    result: CaptionResult | None = None
    thumbnails: tuple[bytes, bytes] | None = None
    #: Which of the run's intervals (an index into its list of (i, j)); 0 for a pair.
    interval: int = 0


@dataclass(frozen=True)
class BatchOutcome:
    """A finished batch: every tile's outcome per interval, and the engine's error where it failed the batch."""

    tiles: list[TileOutcome]
    error: BaseException | None = None


#: Which of the run's intervals each tile still needs, by tile id (tiles not named need them all).
Needed = Mapping[str, Sequence[int]]


class Runner(Protocol):
    """Turns batches of tiles into finished batches, in whatever order they finish; each batch exactly once."""

    def run(self, batches: Iterable[Sequence[Tile]], needed: Needed | None = None) -> Iterator[BatchOutcome]:
        """Yield a :class:`BatchOutcome` per batch as it finishes; closing the iterator stops the work. ``needed``
        limits a tile to some of the run's intervals (a resumed series)."""
        ...


@dataclass(frozen=True)
class ReadBatch:
    """A batch read and judged: each (tile, interval)'s outcome so far (``CAPTIONED`` still without a result: to
    caption) and, per tile to caption, its images and the intervals to caption (as (i, j) into the images)."""

    tiles: list[TileOutcome]
    to_caption: list[Tile]
    series: list[list[Any]]
    intervals: list[list[Interval]]
    #: For each tile to caption, the indices of its intervals in the run's list (what outcomes are keyed by).
    interval_ids: list[list[int]]

    @property
    def pairs(self) -> list[tuple[Any, Any]]:
        """The tiles to caption as (before, after) pairs (a two-date run)."""
        return [(images[0], images[1]) for images in self.series]


def read_batch(
    dates: RasterSeries, tiles: Sequence[Tile], max_nodata: float, thumbnails: bool, log: Log,
    intervals: Sequence[Interval] = PAIR_INTERVALS, needed: Needed | None = None,
) -> ReadBatch:
    """Read each tile's dates; a tile that cannot be read is failed, an interval with too much nodata in either of
    its dates skipped, the others left to caption. Thumbnails only when asked for (the report)."""
    judged: list[TileOutcome] = []
    to_caption, series, wanted_intervals, wanted_ids = [], [], [], []
    for tile in tiles:
        wanted = list(range(len(intervals))) if needed is None or tile.tile_id not in needed else list(
            needed[tile.tile_id])
        try:
            read = dates.read_dates(tile)
        except RasterioError as error:
            log(f"warning: tile {tile.tile_id} could not be read: {error}")
            judged.extend(TileOutcome(tile, FAILED, interval=k) for k in wanted)
            continue
        images = [rgb for rgb, _ in read]
        missing = [1.0 - float(valid.mean()) for _, valid in read]
        small = [thumbnail(rgb) for rgb in images] if thumbnails else None
        to_do, to_do_ids = [], []
        for k in wanted:
            i, j = intervals[k]
            pictures = (small[i], small[j]) if small else None
            status = SKIPPED_NODATA if max(missing[i], missing[j]) > max_nodata else CAPTIONED
            judged.append(TileOutcome(tile, status, thumbnails=pictures, interval=k))
            if status == CAPTIONED:  # the result is filled in once captioned
                to_do.append(intervals[k])
                to_do_ids.append(k)
        if to_do:
            to_caption.append(tile)
            series.append(images)
            wanted_intervals.append(to_do)
            wanted_ids.append(to_do_ids)
    return ReadBatch(judged, to_caption, series, wanted_intervals, wanted_ids)


def finish_batch(
    read: ReadBatch, results: Sequence[Sequence[CaptionResult]] | None, error: BaseException | None
) -> BatchOutcome:
    """The batch's outcome once its tiles to caption have ``results`` (per tile, per interval, in order), or the
    engine failed them."""
    if error is None and results is not None and [len(r) for r in results] != [len(w) for w in read.intervals]:
        error = RuntimeError(f"the engine gave {sum(map(len, results))} results for "
                             f"{sum(map(len, read.intervals))} pairs")
    captioned: dict[tuple[Tile, int], CaptionResult] = {}
    if error is None and results is not None:
        for tile, ids, tile_results in zip(read.to_caption, read.interval_ids, results):
            captioned.update(((tile, k), result) for k, result in zip(ids, tile_results))
    outcomes = []
    for judged in read.tiles:
        if judged.status != CAPTIONED:
            outcomes.append(judged)
        elif (judged.tile, judged.interval) in captioned:
            result = captioned[judged.tile, judged.interval]
            outcomes.append(TileOutcome(judged.tile, CAPTIONED, result, judged.thumbnails, judged.interval))
        else:
            outcomes.append(TileOutcome(judged.tile, FAILED, thumbnails=judged.thumbnails, interval=judged.interval))
    return BatchOutcome(outcomes, error)


@dataclass(frozen=True)
class _Prepared:
    read: ReadBatch
    payload: Any


class LocalRunner:
    """Reader threads (each with its own rasters) read and prepare batches while the engine captions earlier ones,
    with up to ``engine.in_flight`` batches open at once.

    Memory is bounded: at most ``in_flight + readers`` batches are read or open at any time.
    """

    def __init__(
        self, source: PairSource | SeriesSource, engine: CaptionEngine, max_nodata: float, thumbnails: bool = False,
        readers: int = 2, log: Log = lambda message: None, intervals: Sequence[Interval] = PAIR_INTERVALS,
    ) -> None:
        self.source, self.engine = source, engine
        self.max_nodata, self.thumbnails = max_nodata, thumbnails
        self.readers, self.log = max(1, readers), log
        self.intervals = list(intervals)

    def run(self, batches: Iterable[Sequence[Tile]], needed: Needed | None = None) -> Iterator[BatchOutcome]:
        """Yield each batch's outcome as it finishes (see :class:`Runner`)."""
        # Rasters are not thread-safe: each reader borrows rasters of its own from this queue.
        opened_sets: queue.Queue[RasterSeries] = queue.Queue()
        opened: list[RasterSeries] = []

        def prepare(tiles: Sequence[Tile]) -> _Prepared:
            try:
                dates = opened_sets.get_nowait()
            except queue.Empty:
                dates = self.source.open()
                opened.append(dates)
            try:
                read = read_batch(dates, tiles, self.max_nodata, self.thumbnails, self.log, self.intervals, needed)
            finally:
                opened_sets.put(dates)
            ids = [tile.tile_id for tile in read.to_caption]
            return _Prepared(read, self.engine.prepare(read.series, read.intervals, ids) if read.series else None)

        def call(prepared: _Prepared) -> list[list[CaptionResult]]:
            return [] if prepared.payload is None else self.engine.caption_prepared(prepared.payload)

        try:
            for done in run_in_flight(
                batches, prepare, call, in_flight=max(1, self.engine.in_flight), preparers=self.readers,
            ):
                yield finish_batch(done.prepared.read, done.result, _batch_error(done.error))
        finally:
            # Every set comes back to the queue once its reader is done with it (a read takes milliseconds).
            for _ in opened:
                opened_sets.get().close()


def _batch_error(error: BaseException | None) -> BaseException | None:
    """An engine's error fails its batch only; an interruption (Ctrl-C) is the run's, and goes on up."""
    if error is not None and not isinstance(error, Exception):
        raise error
    return error
