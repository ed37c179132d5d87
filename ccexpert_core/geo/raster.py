"""Every date of a region read on one pixel grid, tile by tile, as 8-bit RGB with their nodata (rasterio).

The grid is the first date's (optionally resampled to a ground resolution); every later date is warped onto it
(bilinear) when its CRS, resolution or origin differ. Bands are picked (default the first three; one band is
repeated to grey RGB), and data that is not 8-bit is mapped to 8-bit with a percentile stretch computed once per
raster over the area or with a fixed value range. Nodata values, masks, alpha bands and pixels outside a raster
count as nodata. Those value rules are :mod:`ccexpert_core.geo.pixels`, shared with the QGIS plugin; this module
does the reading.

A date is any raster GDAL opens, where :class:`~ccexpert_core.geo.sources.RasterLocation` says it is: a local file,
or a COG over HTTP or object storage. Reads follow the raster's blocks: the tiles of a row read side by side are one
window per date (for a remote COG tiled at the run's tile size, one request for the row's blocks), and a read that
fails (after GDAL's retries) is an error for those tiles only.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.env import get_gdal_config
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo import run_contract
from ccexpert_core.geo.gpkg import SpatialRef
from ccexpert_core.geo.grid import Bounds, GeoTransform, Tile, pixel_to_geo, tiles_window
from ccexpert_core.geo.pixels import STATS_READ_SIZE, Stretch, decimated_shape, pick_bands, to_rgb
from ccexpert_core.geo.sources import READDIR_OPTION, REMOTE_READDIR, RasterLocation, cloud_defaults

#: GDAL's block cache during a run. Its default (5 % of the RAM) fills up as a region is read, so memory would
#: grow with the region; this holds a row of tiles' blocks of common rasters. ``GDAL_CACHEMAX`` overrides it
#: (e.g. for very wide striped rasters, whose strips are decoded again for every tile when they do not fit).
READ_CACHE_BYTES = 64 * 2**20

#: GDAL counts pixels along a side in a C int.
MAX_GRID_SIDE = 2**31 - 1
#: The widest window (in pixels) read at once for tiles side by side: a few MB of 8-bit RGB a row of tiles.
ROW_READ_PIXELS = 8192

#: Opening a remote raster sets GDAL's directory-listing option for a moment, process-wide on the main thread: no
#: other raster of this module opens meanwhile (a local one would miss its side files).
_OPENING = threading.Lock()

Log = Callable[[str], None]


@dataclass(frozen=True)
class PixelGrid:
    """Where tiles are cut: a CRS, an affine transform and a size in pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, dataset: rasterio.DatasetReader) -> "PixelGrid":
        """A dataset's own grid."""
        return cls(dataset.crs, dataset.transform, dataset.width, dataset.height)

    @property
    def gdal_transform(self) -> GeoTransform:
        """The transform in GDAL's order, as :mod:`~ccexpert_core.geo.grid` takes it."""
        return self.transform.to_gdal()

    @property
    def bounds(self) -> Bounds:
        """``(xmin, ymin, xmax, ymax)`` in the grid's CRS."""
        corners = ((0, 0), (self.width, 0), (0, self.height), (self.width, self.height))
        xs, ys = zip(*(pixel_to_geo(self.gdal_transform, col, row) for col, row in corners))
        return min(xs), min(ys), max(xs), max(ys)

    @property
    def pixel_size(self) -> float:
        """The side of a pixel in CRS units (the larger one where pixels are not square)."""
        return max(math.hypot(self.transform.a, self.transform.d), math.hypot(self.transform.b, self.transform.e))

    def resampled(self, metres: float) -> "PixelGrid":
        """The same extent with pixels of ``metres`` on the ground (north-up grids in a projected CRS)."""
        if metres <= 0:
            raise CCExpertError(f"--resolution must be a positive number of metres per pixel, not {metres}")
        if self.crs.is_geographic:
            raise CCExpertError(
                f"--resolution is in metres but the rasters' CRS ({crs_name(self.crs)}) is in degrees: "
                "reproject them to a projected CRS first, or leave --resolution out"
            )
        if self.transform.b or self.transform.d:
            raise CCExpertError("--resolution needs a north-up raster (its geotransform has rotation terms)")
        size = metres / self.crs.linear_units_factor[1]
        width = max(1, round(self.width * abs(self.transform.a) / size))
        height = max(1, round(self.height * abs(self.transform.e) / size))
        if max(width, height) > MAX_GRID_SIDE:
            raise CCExpertError(
                f"--resolution {metres:g} gives a grid of {width:,} × {height:,} pixels, more than GDAL can read "
                f"({MAX_GRID_SIDE:,} a side): choose a coarser resolution"
            )
        transform = Affine(math.copysign(size, self.transform.a), 0, self.transform.c,
                           0, math.copysign(size, self.transform.e), self.transform.f)
        return PixelGrid(self.crs, transform, width, height)


def read_environment() -> rasterio.Env:
    """A rasterio environment for a run's reads: GDAL's block cache at :data:`READ_CACHE_BYTES` and GDAL's settings
    for remote rasters (:data:`~ccexpert_core.geo.sources.CLOUD_DEFAULTS`), each unless the user set it (in the
    environment, as GDAL reads it). Entered on the main thread, the settings are process-wide: they hold for the
    reader threads too."""
    cache = {} if _is_set("GDAL_CACHEMAX") else {"GDAL_CACHEMAX": READ_CACHE_BYTES}
    return rasterio.Env(**cache, **cloud_defaults(_is_set))


def _is_set(key: str) -> bool:
    """Whether GDAL has a value for the setting ``key`` (from the environment or an enclosing environment)."""
    return get_gdal_config(key) is not None


def crs_name(crs: CRS) -> str:
    """``EPSG:32631`` where the CRS has an EPSG code, else its name."""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt().split('"')[1]


def crs_text(crs: CRS) -> str:
    """How a run stores ``crs`` (:func:`~ccexpert_core.geo.run_contract.crs_text`)."""
    return run_contract.crs_text(crs.to_epsg(), crs.to_wkt())


def same_crs(first: str, second: str) -> bool:
    """Whether two stored CRSs (``EPSG:n`` or WKT, as any version of either tool wrote them) are one CRS."""
    try:
        return CRS.from_user_input(first) == CRS.from_user_input(second)
    except CRSError:
        return False


def spatial_ref(crs: CRS) -> SpatialRef:
    """The GeoPackage description of a CRS: EPSG-coded where possible, WKT 1 as GDAL writes it."""
    epsg = crs.to_epsg()
    wkt = crs.to_wkt(version="WKT1_GDAL")
    if epsg:
        return SpatialRef(crs_name(crs), epsg, "EPSG", epsg, wkt)
    return SpatialRef(crs_name(crs), None, "NONE", None, wkt)


def open_raster(location: RasterLocation | Path | str, role: str) -> rasterio.DatasetReader:
    """Open a georeferenced raster, local or remote, with errors that say which input is wrong and why (never a
    URL's credentials)."""
    location = RasterLocation.of(location)
    local = location.local
    if local is not None and not local.is_file():
        raise CCExpertError(f"{role} raster not found: {local}")
    try:
        with warnings.catch_warnings():
            # A raster without georeferencing is refused just below, with a clearer message.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            dataset = _open_dataset(location)
    except RasterioError as error:
        raise CCExpertError(_unreadable(location, role, error)) from None
    if dataset.crs is None:
        dataset.close()
        side_files = (
            f" (a remote raster is opened without its side files, such as a .tfw or .aux.xml: set "
            f"{READDIR_OPTION}=NO to read them)" if location.remote else ""
        )
        raise CCExpertError(
            f"{role} raster {location} has no coordinate reference system{side_files}: give a georeferenced raster "
            "(e.g. a GeoTIFF with a CRS)"
        )
    return dataset


def _open_dataset(location: RasterLocation) -> rasterio.DatasetReader:
    """``rasterio.open``, without listing a remote raster's folder or asking for side files (a request each), unless
    the user set how GDAL lists folders on open."""
    with _OPENING:
        if not location.remote or _is_set(READDIR_OPTION):
            return rasterio.open(location.gdal_path)
        with rasterio.Env(**{READDIR_OPTION: REMOTE_READDIR}):
            return rasterio.open(location.gdal_path)


def _unreadable(location: RasterLocation, role: str, error: RasterioError) -> str:
    """Why a raster cannot be opened, in a line without its credentials."""
    said = _without_credentials(str(error), location)
    if not location.remote:
        return f"{role} raster {location} cannot be read: not a raster format GDAL knows ({said})"
    if "not recognized as being in a supported file format" in said:
        said = "the server answered, but not with a raster GDAL knows"
    return (f"{role} raster {location} cannot be read: {said}: check the address, that the server answers from here "
            "and, for a private bucket or server, the credentials in the environment (AWS_*, GS_*, AZURE_*, "
            "GDAL_HTTP_*)")


def _without_credentials(text: str, location: RasterLocation) -> str:
    """GDAL's message about ``location``, with the raster named as it is shown (GDAL names it as it was opened)."""
    return location.redact(text).strip().rstrip(".")

def _pick_bands(count: int, bands: Sequence[int] | None, role: str, log: Log) -> tuple[int, ...]:
    """:func:`~ccexpert_core.geo.pixels.pick_bands` in the command's words (its option, its warnings)."""
    try:
        return pick_bands(count, bands, role, lambda message: log(f"warning: {message}"))
    except ValueError as error:
        raise CCExpertError(f"--bands: {error}") from None


class DateSource:
    """One date seen on the working grid: its bands, its 8-bit mapping and its validity mask."""

    def __init__(
        self, location: RasterLocation | Path | str, role: str, grid: PixelGrid, bands: Sequence[int] | None, log: Log,
    ) -> None:
        self.location = RasterLocation.of(location)
        self.role = role
        self.dataset = open_raster(self.location, role)
        try:
            self.bands = _pick_bands(self.dataset.count, bands, role, log)
            self.is_float = np.issubdtype(np.dtype(self.dataset.dtypes[self.bands[0] - 1]), np.floating)
            self.needs_stretch = any(self.dataset.dtypes[b - 1] != "uint8" for b in self.bands)
            # Reading through a warped VRT costs little when the grid is the dataset's own, but the pixels would
            # still go through resampling: read directly then.
            self.view = self.dataset if PixelGrid.of(self.dataset) == grid else WarpedVRT(
                self.dataset, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                resampling=Resampling.bilinear, add_alpha=True,
            )
        except BaseException:
            self.dataset.close()
            raise
        self.stretch: Stretch | None = None

    def close(self) -> None:
        """Close the view and the file."""
        if self.view is not self.dataset:
            self.view.close()
        self.dataset.close()

    def fit_stretch(self, window: Window, value_range: tuple[float, float] | None) -> None:
        """Decide the 8-bit mapping: ``value_range`` if given, else percentiles over ``window`` when not 8-bit."""
        if value_range is not None:
            self.stretch = Stretch.fixed(value_range, len(self.bands))
            return
        if not self.needs_stretch:
            return
        shape = (len(self.bands), *decimated_shape(window.width, window.height, STATS_READ_SIZE))
        sample = self.view.read(self.bands, window=window, out_shape=shape, masked=True, resampling=Resampling.nearest)
        self.stretch = Stretch.percentiles(sample.data, ~np.ma.getmaskarray(sample), self.is_float)

    def read(self, window: Window, out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(rgb, valid)``: H×W×3 uint8 (invalid pixels black) and the H×W validity of every picked band."""
        shape = None if out_shape is None else (len(self.bands), *out_shape)
        data, masks = self._values(window, shape)
        return to_rgb(data, masks, self.stretch, self.is_float)

    def read_row(self, tiles: Sequence[Tile]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each of ``tiles`` (side by side in one row of the grid) as :meth:`read` gives it: one window for them all
        where this date is read on its own grid (the same values, cut apart), each tile alone through a warped view
        (whose resampling is computed per window)."""
        if len(tiles) == 1 or self.view is not self.dataset:
            return [self.read(Window(t.x, t.y, t.width, t.height)) for t in tiles]
        x0, y0 = tiles[0].x, tiles[0].y
        data, masks = self._values(Window(x0, y0, max(t.x + t.width for t in tiles) - x0, tiles[0].height), None)
        return [
            to_rgb(data[:, :, t.x - x0 : t.x - x0 + t.width], masks[:, :, t.x - x0 : t.x - x0 + t.width], self.stretch,
                   self.is_float)
            for t in tiles
        ]

    def _values(self, window: Window, shape: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
        """The picked bands' values and masks over ``window``; a failed read (a remote one after GDAL's retries)
        is a RasterioError that names this date, as it is shown."""
        try:
            data = self.view.read(self.bands, window=window, out_shape=shape)
            masks = self.view.read_masks(self.bands, window=window, out_shape=shape)
        except RasterioError as error:
            # rasterio says "Read failed. See previous exception" and chains GDAL's own words (a CURL error…).
            said = _without_credentials(str(error.__cause__ or error), self.location)
            raise type(error)(f"{self.role} ({self.location}): {said}") from None
        return data, masks


class RasterSeries:
    """Two or more dates on the first one's grid (resampled to ``resolution`` metres per pixel if given); each
    later date is aligned onto it. ``roles`` name the dates in messages (default: BEFORE/AFTER for two, else
    ``date 1``, ``date 2``…: :func:`~ccexpert_core.geo.run_contract.date_roles`).

    Use as a context manager. Not thread-safe: one thread at a time may read it.
    """

    def __init__(
        self,
        paths: Sequence[RasterLocation | Path | str],
        roles: Sequence[str] | None = None,
        bands: Sequence[int] | None = None,
        resolution: float | None = None,
        log: Log = print,
    ) -> None:
        roles = run_contract.date_roles(len(paths)) if roles is None else roles
        if len(paths) < 2 or len(paths) != len(roles):
            raise CCExpertError(f"give at least two dates, each with a name (got {len(paths)} rasters)")
        first = open_raster(paths[0], roles[0])
        native = PixelGrid.of(first)
        first.close()
        self._bands, self._resolution = None if bands is None else tuple(bands), resolution
        self.grid = native if resolution is None else native.resampled(resolution)
        if resolution is not None:
            log(
                f"every date is resampled to {resolution:g} m per pixel ({roles[0]} has "
                f"{native.pixel_size * native.crs.linear_units_factor[1]:g} m)"
            )
        self.dates: list[DateSource] = []
        try:
            for path, role in zip(paths, roles):
                self.dates.append(DateSource(path, role, self.grid, bands, log))
            for date in self.dates[1:]:
                self._check_overlap(date)
        except BaseException:
            self.close()
            raise
        for date in self.dates[1:]:
            aligned = PixelGrid.of(date.dataset)
            if aligned != native:
                log(f"{date.role} ({date.location.name}) is aligned onto {roles[0]}'s grid with bilinear resampling: "
                    f"{_grid_difference(aligned, native)}")

    def _check_overlap(self, date: DateSource) -> None:
        first = self.dates[0]
        bx0, by0, bx1, by1 = self.grid.bounds
        other = PixelGrid.of(date.dataset)
        try:
            ax0, ay0, ax1, ay1 = transform_bounds(other.crs, self.grid.crs, *other.bounds)
        except (CRSError, RasterioError) as error:
            raise CCExpertError(f"{date.role}'s CRS cannot be transformed to {first.role}'s: {error}") from None
        if ax0 >= bx1 or ax1 <= bx0 or ay0 >= by1 or ay1 <= by0:
            raise CCExpertError(
                f"{first.role} ({first.location.name}) and {date.role} ({date.location.name}) do not overlap: "
                f"{first.role} covers {format_bounds((bx0, by0, bx1, by1))}, {date.role} covers "
                f"{format_bounds((ax0, ay0, ax1, ay1))} (in {crs_name(self.grid.crs)})"
            )

    def __enter__(self) -> "RasterSeries":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every date's raster."""
        for date in self.dates:
            date.close()

    def fit_stretch(self, tiles: Sequence[Tile], value_range: tuple[float, float] | None) -> None:
        """Fit each date's 8-bit mapping over the tiles' extent (once, before any tile is read)."""
        window = Window(*tiles_window(tiles))
        for date in self.dates:
            date.fit_stretch(window, value_range)

    def source(self) -> "SeriesSource":
        """How to open these rasters again exactly as they are read here, stretch included (call after
        :meth:`fit_stretch`): for reader threads, which need rasters of their own, and for other processes."""
        return SeriesSource(
            tuple(date.location for date in self.dates), tuple(date.role for date in self.dates), self._bands,
            self._resolution, tuple(date.stretch for date in self.dates),
        )

    def read_dates(self, tile: Tile) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every date's ``(rgb, valid)`` of a tile (see :meth:`DateSource.read`)."""
        window = Window(tile.x, tile.y, tile.width, tile.height)
        return [date.read(window) for date in self.dates]

    def read_tiles(self, tiles: Sequence[Tile]) -> list[list[tuple[np.ndarray, np.ndarray]] | RasterioError]:
        """For each tile, every date's ``(rgb, valid)`` as :meth:`read_dates` gives it, or the error that kept it
        from being read. Tiles side by side in a row are read together (:meth:`DateSource.read_row`); a failed read
        fails the tiles it was for."""
        read: list[list[tuple[np.ndarray, np.ndarray]] | RasterioError] = []
        for row in _side_by_side(tiles):
            try:
                per_date = [date.read_row(row) for date in self.dates]
            except RasterioError as error:
                read.extend(error for _ in row)
                continue
            read.extend([reads[k] for reads in per_date] for k in range(len(row)))
        return read

    def overview(self, tiles: Sequence[Tile], max_size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The first date over the tiles' extent, decimated to at most ``max_size`` pixels a side:
        ``(rgb, (x, y, w, h))`` with the window in grid pixels."""
        x0, y0, width, height = tiles_window(tiles)
        rgb, _ = self.dates[0].read(Window(x0, y0, width, height), out_shape=decimated_shape(width, height, max_size))
        return rgb, (x0, y0, width, height)


@dataclass(frozen=True)
class SeriesSource:
    """What opens a run's rasters as the run reads them: where they are, roles, bands, resolution and each date's
    fitted 8-bit mapping. Picklable, so that reader threads and other processes read the very pixels the run would."""

    locations: tuple[RasterLocation, ...]
    roles: tuple[str, ...]
    bands: tuple[int, ...] | None
    resolution: float | None
    stretches: tuple[Stretch | None, ...]

    def open(self) -> RasterSeries:
        """The rasters, opened with the run's mapping."""
        series = RasterSeries(self.locations, self.roles, self.bands, self.resolution, log=lambda message: None)
        for date, stretch in zip(series.dates, self.stretches):
            date.stretch = stretch
        return series


def _side_by_side(tiles: Sequence[Tile]) -> Iterator[list[Tile]]:
    """``tiles`` in their order, in runs of tiles of one grid row that touch or overlap the one before (at most
    :data:`ROW_READ_PIXELS` wide): what one window reads."""
    row: list[Tile] = []
    for tile in tiles:
        if row and _continues(row, tile):
            row.append(tile)
            continue
        if row:
            yield row
        row = [tile]
    if row:
        yield row


def _continues(row: Sequence[Tile], tile: Tile) -> bool:
    """Whether ``tile`` lies on ``row``'s grid row, right after its last tile (touching or overlapping it), within
    :data:`ROW_READ_PIXELS` of its start."""
    last = row[-1]
    same_row = (tile.y, tile.height) == (row[0].y, row[0].height)
    return same_row and last.x < tile.x <= last.x + last.width and tile.x + tile.width - row[0].x <= ROW_READ_PIXELS


def _grid_difference(source: PixelGrid, target: PixelGrid) -> str:
    differences = []
    if source.crs != target.crs:
        differences.append(f"CRS {crs_name(source.crs)} → {crs_name(target.crs)}")
    if not math.isclose(source.pixel_size, target.pixel_size, rel_tol=1e-9):
        differences.append(f"pixel size {source.pixel_size:g} → {target.pixel_size:g}")
    if (source.transform.c, source.transform.f) != (target.transform.c, target.transform.f):
        differences.append("origin differs")
    if (source.width, source.height) != (target.width, target.height):
        differences.append(f"size {source.width}×{source.height} → {target.width}×{target.height} px")
    return ", ".join(differences)


def format_bounds(bounds: Bounds) -> str:
    """Bounds for a message: ``(xmin, ymin, xmax, ymax)`` with six significant digits."""
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"
