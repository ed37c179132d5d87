"""How a region's batches of tiles become captioned batches: read, judged, captioned, handed back in the order they
complete. This is the seam between the region pipeline (which owns the GeoPackage and writes what comes back) and
where the work happens: :class:`LocalRunner` on this machine (reader threads, an engine with several batches in
flight), or a runner on a cluster that reads and captions with the same :func:`read_batch`.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rasterio.errors import RasterioError

from ccexpert_core.captions import CaptionResult
from ccexpert_core.geo.captions_layer import CAPTIONED, FAILED, SKIPPED_NODATA
from ccexpert_core.geo.engine import CaptionEngine
from ccexpert_core.geo.grid import Tile
from ccexpert_core.geo.raster import PairSource, RasterPair
from ccexpert_core.geo.report import png_thumbnail
from ccexpert_core.inflight import run_in_flight

Log = Callable[[str], None]


@dataclass(frozen=True)
class TileOutcome:
    """What became of one tile: its status, the model's result where it was captioned, thumbnails if asked for."""

    tile: Tile
    status: str
    result: CaptionResult | None = None
    thumbnails: tuple[bytes, bytes] | None = None


@dataclass(frozen=True)
class BatchOutcome:
    """A finished batch: every tile's outcome, and the engine's error where it failed the batch's tiles."""

    tiles: list[TileOutcome]
    error: BaseException | None = None


class Runner(Protocol):
    """Turns batches of tiles into finished batches, in whatever order they finish; each batch exactly once."""

    def run(self, batches: Iterable[Sequence[Tile]]) -> Iterator[BatchOutcome]:
        """Yield a :class:`BatchOutcome` per batch as it finishes; closing the iterator stops the work."""
        ...


@dataclass(frozen=True)
class ReadBatch:
    """A batch read and judged: each tile's outcome so far (``status`` None: to caption) and the pixels to caption."""

    tiles: list[TileOutcome]
    to_caption: list[Tile]
    pairs: list[tuple[Any, Any]]


def read_batch(
    pair: RasterPair, tiles: Sequence[Tile], max_nodata: float, thumbnails: bool, log: Log
) -> ReadBatch:
    """Read each tile's two dates; a tile that cannot be read is failed, one with too much nodata skipped, the
    others left to caption (in ``to_caption`` with their pixels). Thumbnails only when asked for (the report)."""
    judged: list[TileOutcome] = []
    to_caption, pairs = [], []
    for tile in tiles:
        try:
            pixels = pair.read_tile(tile)
        except RasterioError as error:
            log(f"warning: tile {tile.tile_id} could not be read: {error}")
            judged.append(TileOutcome(tile, FAILED))
            continue
        small = (png_thumbnail(pixels.before), png_thumbnail(pixels.after)) if thumbnails else None
        if pixels.nodata_share > max_nodata:
            judged.append(TileOutcome(tile, SKIPPED_NODATA, thumbnails=small))
            continue
        judged.append(TileOutcome(tile, CAPTIONED, thumbnails=small))  # the result is filled in once captioned
        to_caption.append(tile)
        pairs.append((pixels.before, pixels.after))
    return ReadBatch(judged, to_caption, pairs)


def finish_batch(read: ReadBatch, results: Sequence[CaptionResult] | None, error: BaseException | None) -> BatchOutcome:
    """The batch's outcome once its tiles to caption have ``results`` (in order), or the engine failed them."""
    if error is None and results is not None and len(results) != len(read.to_caption):
        error = RuntimeError(f"the engine gave {len(results)} results for {len(read.to_caption)} pairs")
    by_tile = {} if error is not None or results is None else dict(zip(read.to_caption, results))
    outcomes = []
    for judged in read.tiles:
        if judged.status != CAPTIONED:
            outcomes.append(judged)
        elif judged.tile in by_tile:
            outcomes.append(TileOutcome(judged.tile, CAPTIONED, by_tile[judged.tile], judged.thumbnails))
        else:
            outcomes.append(TileOutcome(judged.tile, FAILED, thumbnails=judged.thumbnails))
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
        self, source: PairSource, engine: CaptionEngine, max_nodata: float, thumbnails: bool = False,
        readers: int = 2, log: Log = lambda message: None,
    ) -> None:
        self.source, self.engine = source, engine
        self.max_nodata, self.thumbnails = max_nodata, thumbnails
        self.readers, self.log = max(1, readers), log

    def run(self, batches: Iterable[Sequence[Tile]]) -> Iterator[BatchOutcome]:
        """Yield each batch's outcome as it finishes (see :class:`Runner`)."""
        # Rasters are not thread-safe: each reader borrows a pair of its own from this queue.
        pairs: queue.Queue[RasterPair] = queue.Queue()
        opened: list[RasterPair] = []

        def prepare(tiles: Sequence[Tile]) -> _Prepared:
            try:
                pair = pairs.get_nowait()
            except queue.Empty:
                pair = self.source.open()
                opened.append(pair)
            try:
                read = read_batch(pair, tiles, self.max_nodata, self.thumbnails, self.log)
            finally:
                pairs.put(pair)
            ids = [tile.tile_id for tile in read.to_caption]
            return _Prepared(read, self.engine.prepare(read.pairs, ids) if read.pairs else None)

        def call(prepared: _Prepared) -> list[CaptionResult]:
            return [] if prepared.payload is None else self.engine.caption_prepared(prepared.payload)

        try:
            for done in run_in_flight(
                batches, prepare, call, in_flight=max(1, self.engine.in_flight), preparers=self.readers,
            ):
                yield finish_batch(done.prepared.read, done.result, _batch_error(done.error))
        finally:
            # Every pair comes back to the queue once its reader is done with it (a read takes milliseconds).
            for _ in opened:
                pairs.get().close()


def _batch_error(error: BaseException | None) -> BaseException | None:
    """An engine's error fails its batch only; an interruption (Ctrl-C) is the run's, and goes on up."""
    if error is not None and not isinstance(error, Exception):
        raise error
    return error
