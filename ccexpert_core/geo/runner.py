"""Where a region's tiles are read and captioned: the one seam between the region pipeline (which owns the
GeoPackage and writes what comes back) and the work.

A :class:`Captioning` turns batches of tiles into finished batches, in the order they finish. Each way of
captioning is a factory that gives one: :func:`on_this_machine` (reader threads here, and an engine with several
batches in flight: a model in this process, or backends over HTTP), and
:class:`~ccexpert_core.geo.ray_runner.RayRegion` (reading and captioning on a Ray cluster with the same
:func:`read_batch`). A tile to caption is one :class:`ReadTile`: its images, the intervals to caption and which of
the run's intervals they are.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np
from rasterio.errors import RasterioError

from ccexpert_core.captions import CaptionResult
from ccexpert_core.geo.captions_layer import CAPTIONED, FAILED, SKIPPED_NODATA
from ccexpert_core.geo.engine import CaptionEngine
from ccexpert_core.geo.grid import Tile
from ccexpert_core.geo.pixels import nodata_share
from ccexpert_core.geo.raster import RasterSeries, SeriesSource
from ccexpert_core.geo.report import thumbnail
from ccexpert_core.geo.run_contract import skipped
from ccexpert_core.inflight import Copies, run_in_flight
from ccexpert_core.series import Interval, TileWork

Log = Callable[[str], None]
Prepared = TypeVar("Prepared")

#: Reader threads for rasters read over a network: a read waits for the server more than it works.
REMOTE_READERS = 4

#: Which of the run's intervals each tile still needs, by tile id (tiles not named need them all).
Needed = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class Reading:
    """How a run reads its tiles: the intervals it captions (date index pairs), the nodata share above which an
    interval is skipped, whether thumbnails are kept (for the report), and where notes go."""

    intervals: tuple[Interval, ...]
    max_nodata: float
    thumbnails: bool = False
    log: Log = field(default=lambda message: None, compare=False)


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


@dataclass(frozen=True)
class ReadTile:
    """A tile read and judged, with something to caption: its images (one per date) and the intervals to caption
    as (i, j) into them (its :class:`~ccexpert_core.series.TileWork`), and which of the run's intervals those are."""

    tile: Tile
    work: TileWork[np.ndarray]
    interval_ids: tuple[int, ...]


@dataclass(frozen=True)
class ReadBatch:
    """A batch read and judged: each (tile, interval)'s outcome so far (``CAPTIONED`` still without a result: to
    caption) and the tiles to caption."""

    tiles: list[TileOutcome]
    to_caption: list[ReadTile]


class Captioning(Protocol):
    """Where a run's tiles are read and captioned, and by which model (its id is what outputs record). The run reads
    its values, never sets them (read-only here, so a Ray run may hold them as properties)."""

    @property
    def model_id(self) -> str:
        """The id outputs record."""
        ...

    @property
    def model_note(self) -> str | None:
        """What a user must know about the model's captions (the demo model's synthetic training), if anything."""
        ...

    @property
    def former_ids(self) -> tuple[str, ...]:
        """Other ids outputs of this same model were written under (older versions stored the model's path)."""
        ...

    @property
    def max_pairs(self) -> int | None:
        """Pairs one batch may hold at most (a backend's request limit), None where any number may."""
        ...

    def run(
        self, source: SeriesSource, reading: Reading, batches: Iterable[Sequence[Tile]], needed: Needed | None = None,
    ) -> Generator[BatchOutcome, None, None]:
        """A :class:`BatchOutcome` per batch, each exactly once, in whatever order they finish; closing the
        generator stops the work. ``needed`` limits a tile to some of the run's intervals (a resumed series)."""
        ...

    def describe(self) -> str | None:
        """A line for the run's summary (which backends or workers captioned how much), if there is one to say."""
        ...


def read_batch(dates: RasterSeries, tiles: Sequence[Tile], reading: Reading, needed: Needed | None = None) -> ReadBatch:
    """Read each tile's dates (tiles side by side together: :meth:`RasterSeries.read_tiles`); a tile that cannot be
    read (a remote read that failed after GDAL's retries, say) is failed, so that a rerun reads it again, an interval
    with too much nodata in either of its dates skipped, the others left to caption. Thumbnails only when asked for
    (the report)."""
    judged: list[TileOutcome] = []
    to_caption: list[ReadTile] = []
    unread: dict[int, tuple[RasterioError, list[str]]] = {}  # each failed read and its tiles, said once
    for tile, read in zip(tiles, dates.read_tiles(tiles)):
        wanted = range(len(reading.intervals)) if needed is None or tile.tile_id not in needed else needed[tile.tile_id]
        if isinstance(read, RasterioError):
            unread.setdefault(id(read), (read, []))[1].append(tile.tile_id)
            judged.extend(TileOutcome(tile, FAILED, interval=k) for k in wanted)
            continue
        images = tuple(rgb for rgb, _ in read)
        missing = [nodata_share(valid) for _, valid in read]
        small = [thumbnail(rgb) for rgb in images] if reading.thumbnails else None
        to_do: list[int] = []
        for k in wanted:
            i, j = reading.intervals[k]
            status = SKIPPED_NODATA if skipped(missing, (i, j), reading.max_nodata) else CAPTIONED
            judged.append(TileOutcome(tile, status, thumbnails=(small[i], small[j]) if small else None, interval=k))
            if status == CAPTIONED:  # the result is filled in once captioned
                to_do.append(k)
        if to_do:
            work = TileWork(images, tuple(reading.intervals[k] for k in to_do))
            to_caption.append(ReadTile(tile, work, tuple(to_do)))
    for error, ids in unread.values():
        reading.log(f"warning: {'tile' if len(ids) == 1 else 'tiles'} {', '.join(ids)} could not be read: {error}")
    return ReadBatch(judged, to_caption)


def finish_batch(
    read: ReadBatch, results: Sequence[Sequence[CaptionResult]] | None, error: BaseException | None
) -> BatchOutcome:
    """The batch's outcome once its tiles to caption have ``results`` (per tile, per interval, in order), or the
    engine failed them."""
    if error is None and results is not None and [len(r) for r in results] != [
        len(t.interval_ids) for t in read.to_caption
    ]:
        error = RuntimeError(f"the engine gave {sum(map(len, results))} results for "
                             f"{sum(len(t.interval_ids) for t in read.to_caption)} pairs")
    captioned: dict[tuple[str, int], CaptionResult] = {}
    if error is None and results is not None:
        for read_tile, tile_results in zip(read.to_caption, results):
            captioned.update(((read_tile.tile.tile_id, k), r) for k, r in zip(read_tile.interval_ids, tile_results))
    outcomes = []
    for judged in read.tiles:
        key = (judged.tile.tile_id, judged.interval)
        if judged.status != CAPTIONED:
            outcomes.append(judged)
        elif key in captioned:
            outcomes.append(TileOutcome(judged.tile, CAPTIONED, captioned[key], judged.thumbnails, judged.interval))
        else:
            outcomes.append(TileOutcome(judged.tile, FAILED, thumbnails=judged.thumbnails, interval=judged.interval))
    return BatchOutcome(outcomes, error)


def batch_error(error: BaseException | None) -> BaseException | None:
    """An engine's error fails its batch only; an interruption (Ctrl-C) is the run's, and goes on up."""
    if error is not None and not isinstance(error, Exception):
        raise error
    return error


@dataclass(frozen=True)
class _Prepared(Generic[Prepared]):
    read: ReadBatch
    payload: Prepared | None


class LocalCaptioning(Generic[Prepared]):
    """Reader threads (each with its own rasters) read and prepare batches while the engine captions earlier ones,
    with up to ``engine.in_flight`` batches open at once; rasters read over a network get :data:`REMOTE_READERS`
    readers, whose reads mostly wait for answers. Memory is bounded: at most ``in_flight + readers``
    batches are read or open at any time."""

    def __init__(self, engine: CaptionEngine[Prepared], readers: int = 2) -> None:
        self.engine, self.readers = engine, max(1, readers)
        self.model_id, self.model_note, self.former_ids = engine.model_id, engine.model_note, engine.former_ids
        self.max_pairs = engine.max_pairs

    def describe(self) -> str | None:
        """What the engine has to say about the run."""
        return self.engine.describe()

    def run(
        self, source: SeriesSource, reading: Reading, batches: Iterable[Sequence[Tile]], needed: Needed | None = None,
    ) -> Generator[BatchOutcome, None, None]:
        """Yield each batch's outcome as it finishes (see :class:`Captioning`)."""
        remote = any(location.remote for location in source.locations)
        readers = max(self.readers, REMOTE_READERS) if remote else self.readers
        rasters = Copies(source.open)

        def prepare(tiles: Sequence[Tile]) -> _Prepared[Prepared]:
            with rasters.borrowed() as dates:
                read = read_batch(dates, tiles, reading, needed)
            if not read.to_caption:
                return _Prepared(read, None)
            ids = [t.tile.tile_id for t in read.to_caption]
            return _Prepared(read, self.engine.prepare([t.work for t in read.to_caption], ids))

        def call(prepared: _Prepared[Prepared]) -> list[list[CaptionResult]]:
            return [] if prepared.payload is None else self.engine.caption_prepared(prepared.payload)

        try:
            for done in run_in_flight(
                batches, prepare, call, in_flight=max(1, self.engine.in_flight), preparers=readers,
            ):
                yield finish_batch(done.prepared.read, done.result, batch_error(done.error))
        finally:
            rasters.close()


def on_this_machine(engine: CaptionEngine[Prepared]) -> LocalCaptioning[Prepared]:
    """Tiles read here and captioned by ``engine`` (a model in this process, or backends over HTTP)."""
    return LocalCaptioning(engine)
