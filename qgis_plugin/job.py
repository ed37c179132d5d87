"""One captioning run: tile the area, read both dates, caption batch by batch, write each batch at once.

Plain data in, a summary out, no QGIS layer or widget touched: the :class:`~.task.CaptionTask` runs it in a
background thread and the Processing algorithm in its own. Cancelling stops between batches; a backend that stays
down after the retries stops the run; whatever was written before stays, and running again resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .area import tile_area
from .backend_client import BackendClient
from .captions_gpkg import CAPTIONED, DEFAULT_LAYER, FAILED, SKIPPED_NODATA, CaptionsGeoPackage, TileRecord
from .errors import CaptionRunError
from .png import png_bytes
from .shared_modules import grid as tiling
from .tile_reader import RasterPairReader, crs_name, format_bounds


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


@dataclass(frozen=True)
class Job:
    """Everything a run needs, resolved to plain values on the main thread (layers, area, token)."""

    before: RasterInput
    after: RasterInput
    output: str
    backend_url: str
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

    @property
    def written(self) -> int:
        """Tiles written by this run."""
        return sum(self.counts.values())

    def message(self) -> str:
        """One line for the message bar."""
        counts = ", ".join(f"{count} {status.replace('_', ' ')}" for status, count in self.counts.items() if count)
        done = f"{self.already_done} of {self.tiles} tiles were done before; this run: {counts or 'nothing new'}"
        where = f"{self.output} (layer {self.layer_name})"
        if self.error and not (self.written or self.already_done):
            return self.error
        if self.error:
            return f"{self.error.rstrip('.')}. {done}. Kept in {where}: run again to resume."
        if self.canceled:
            return f"Canceled. {done}. Kept in {where}: run again to resume."
        return f"{done}. Written to {where}."


def _run_options(pair: RasterPairReader, grid: tiling.TileGrid, job: Job, model_id: str) -> dict[str, str]:
    """What decides a tile's pixels and caption, worded as the command words it, so each can resume the other."""
    crs = crs_name(pair.grid.wkt)
    return tiling.run_options(
        grid, crs if crs.startswith("EPSG:") else pair.grid.wkt, pair.before.bands, job.value_range, job.max_nodata,
        job.before.name, job.after.name, model_id,
    )


def _check(job: Job) -> None:
    if job.batch_size < 1:
        raise CaptionRunError(f"the batch size must be at least 1, not {job.batch_size}")
    if not 0 <= job.max_nodata <= 1:
        raise CaptionRunError(f"the nodata share must be between 0 and 1, not {job.max_nodata}")
    if not job.layer_name.strip():
        raise CaptionRunError("give the output layer a name")
    if not job.output.strip():
        raise CaptionRunError("choose an output GeoPackage file")


def preflight(job: Job) -> list[str]:
    """Open both rasters as the run will (quick): raises for unreadable or disjoint rasters, returns the notices
    about alignment and band use, for the interface to show before the task starts."""
    notices: list[str] = []
    with RasterPairReader(job.before.source, job.after.source, job.bands, job.resolution, notices.append):
        return notices


def run_job(job: Job, feedback: Feedback) -> JobSummary:
    """Caption every tile of the job's area into its GeoPackage, resuming what an earlier run left.

    Problems the analyst can fix end in ``summary.error`` (never raised); work written before them is kept.
    """
    summary = JobSummary(job.output, job.layer_name)
    log = feedback.pushInfo
    try:
        _check(job)
        with RasterPairReader(job.before.source, job.after.source, job.bands, job.resolution, log) as pair:
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
            client = BackendClient(job.backend_url, job.token, feedback.isCanceled)
            summary.model_id = client.info()["model_id"]
            with CaptionsGeoPackage(
                job.output, job.layer_name, pair.grid.wkt, _run_options(pair, grid, job, summary.model_id),
                job.before.name, job.after.name, summary.model_id,
            ) as output:
                finished = output.finished_ids()
                pending = [tile for tile in tiles if tile.tile_id not in finished]
                summary.already_done = len(tiles) - len(pending)
                log(f"{len(tiles)} tiles cover the area; {summary.already_done} already in {job.output}, "
                    f"{len(pending)} to do")
                pair.fit_stretch(tiles, job.value_range)
                _caption_batches(pair, grid, client, output, pending, job, summary, feedback)
    except CaptionRunError as error:
        summary.error = str(error)
        summary.canceled = feedback.isCanceled()
    return summary


def _caption_batches(
    pair: RasterPairReader, grid: tiling.TileGrid, client: BackendClient, output: CaptionsGeoPackage,
    pending: list[tiling.Tile], job: Job, summary: JobSummary, feedback: Feedback,
) -> None:
    """Read, caption and write ``pending`` batch by batch; progress counts the whole area's tiles."""
    feedback.setProgress(100.0 * summary.already_done / summary.tiles)
    for start in range(0, len(pending), job.batch_size):
        if feedback.isCanceled():
            summary.canceled = True
            return
        records, error = _caption_batch(pair, grid, client, pending[start : start + job.batch_size], job)
        output.write(records)
        for record in records:
            summary.counts[record.status] += 1
        feedback.setProgress(100.0 * (summary.already_done + summary.written) / summary.tiles)
        if error is not None:
            raise error


def _caption_batch(
    pair: RasterPairReader, grid: tiling.TileGrid, client: BackendClient, batch: list[tiling.Tile], job: Job
) -> tuple[list[TileRecord], CaptionRunError | None]:
    """One batch's records, and the backend's error if it failed them (they are then written as failed)."""
    pixels = {tile: pair.read_tile(tile) for tile in batch}
    todo = [tile for tile in batch if pixels[tile].nodata_share <= job.max_nodata]
    results: dict[tiling.Tile, dict] = {}
    error = None
    if todo:
        try:
            answers = client.caption(
                [(png_bytes(pixels[t].before), png_bytes(pixels[t].after)) for t in todo], [t.tile_id for t in todo]
            )
            results = dict(zip(todo, answers))
        except CaptionRunError as caught:
            error = caught
    records = []
    for tile in batch:
        footprint = grid.footprint(tile)
        if tile not in todo:
            records.append(TileRecord(tile, footprint, SKIPPED_NODATA))
        elif tile not in results:
            records.append(TileRecord(tile, footprint, FAILED))
        else:
            result = results[tile]
            records.append(TileRecord(
                tile, footprint, CAPTIONED, str(result["caption"]), bool(result["change_detected"]),
                float(result["confidence"]),
            ))
    return records, error
