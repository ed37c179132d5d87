"""Both dates of a region read on one pixel grid, tile by tile, as 8-bit RGB with their nodata (rasterio).

The grid is BEFORE's (optionally resampled to a ground resolution); AFTER is warped onto it (bilinear) when its
CRS, resolution or origin differ. Bands are picked (default the first three; one band is repeated to grey RGB),
and data that is not 8-bit is mapped to 8-bit with a percentile stretch computed once per raster over the area
or with a fixed value range. Nodata values, masks, alpha bands and pixels outside a raster count as nodata.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo.gpkg import SpatialRef
from ccexpert_core.geo.grid import Bounds, GeoTransform, Tile, pixel_to_geo

#: Percentiles of the default stretch for data that is not 8-bit (QGIS's "cumulative count cut" default).
STRETCH_PERCENTILES = (2.0, 98.0)
#: The stretch's percentiles come from a read of the area decimated to at most this many pixels a side,
#: so that memory does not grow with the region.
STATS_READ_SIZE = 1024
#: GDAL's block cache during a run. Its default (5 % of the RAM) fills up as a region is read, so memory would
#: grow with the region; this holds a row of tiles' blocks of common rasters. ``GDAL_CACHEMAX`` overrides it
#: (e.g. for very wide striped rasters, whose strips are decoded again for every tile when they do not fit).
READ_CACHE_BYTES = 64 * 2**20

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
        transform = Affine(math.copysign(size, self.transform.a), 0, self.transform.c,
                           0, math.copysign(size, self.transform.e), self.transform.f)
        return PixelGrid(self.crs, transform, width, height)


def bounded_read_cache() -> rasterio.Env:
    """A rasterio environment with GDAL's block cache at :data:`READ_CACHE_BYTES` (unless ``GDAL_CACHEMAX`` is
    set); the cache size is process-wide, so it also holds for the reader thread."""
    if "GDAL_CACHEMAX" in os.environ:
        return rasterio.Env()
    return rasterio.Env(GDAL_CACHEMAX=READ_CACHE_BYTES)


def crs_name(crs: CRS) -> str:
    """``EPSG:32631`` where the CRS has an EPSG code, else its name."""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt().split('"')[1]


def spatial_ref(crs: CRS) -> SpatialRef:
    """The GeoPackage description of a CRS: EPSG-coded where possible, WKT 1 as GDAL writes it."""
    epsg = crs.to_epsg()
    wkt = crs.to_wkt(version="WKT1_GDAL")
    if epsg:
        return SpatialRef(crs_name(crs), epsg, "EPSG", epsg, wkt)
    return SpatialRef(crs_name(crs), None, "NONE", None, wkt)


def open_raster(path: Path, role: str) -> rasterio.DatasetReader:
    """Open a georeferenced raster, with errors that say which input is wrong and why."""
    if not Path(path).is_file():
        raise CCExpertError(f"{role} raster not found: {path}")
    try:
        with warnings.catch_warnings():
            # A raster without georeferencing is refused just below, with a clearer message.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            dataset = rasterio.open(path)
    except RasterioError as error:
        raise CCExpertError(f"{role} raster {path} cannot be read: not a raster format GDAL knows ({error})") from None
    if dataset.crs is None:
        dataset.close()
        raise CCExpertError(
            f"{role} raster {path} has no coordinate reference system: give a georeferenced raster "
            "(e.g. a GeoTIFF with a CRS)"
        )
    return dataset


def pick_bands(dataset: rasterio.DatasetReader, bands: Sequence[int] | None, role: str, log: Log) -> tuple[int, ...]:
    """The band numbers to read (1-based): the first three by default; one band is repeated to grey RGB."""
    if bands is None:
        if dataset.count == 2:
            raise CCExpertError(f"{role} raster has 2 bands: choose one or three with --bands (e.g. --bands 1)")
        bands = (1, 2, 3) if dataset.count >= 3 else (1,)
    bands = tuple(bands)
    if len(bands) not in (1, 3):
        raise CCExpertError(f"--bands takes one or three band numbers, not {len(bands)}")
    missing = [b for b in bands if not 1 <= b <= dataset.count]
    if missing:
        raise CCExpertError(
            f"{role} raster has {dataset.count} band(s): band {missing[0]} does not exist (bands count from 1)"
        )
    if len(bands) == 1:
        log(f"warning: {role} is read from one band ({bands[0]}), repeated to grey RGB; the model expects colour")
    return bands


@dataclass(frozen=True)
class Stretch:
    """A linear map of each band's ``low``..``high`` onto 0..255 (values outside are clipped)."""

    low: np.ndarray
    high: np.ndarray

    def apply(self, data: np.ndarray) -> np.ndarray:
        """(bands, H, W) values → (bands, H, W) uint8."""
        low, high = self.low[:, None, None], self.high[:, None, None]
        # A constant band (high == low) maps to black rather than dividing by zero.
        span = np.where(high > low, high - low, np.inf)
        scaled = (data.astype(np.float32) - low) * (255.0 / span)
        return np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)


class DateSource:
    """One date seen on the working grid: its bands, its 8-bit mapping and its validity mask."""

    def __init__(self, path: Path, role: str, grid: PixelGrid, bands: Sequence[int] | None, log: Log) -> None:
        self.path = Path(path)
        self.role = role
        self.dataset = open_raster(self.path, role)
        try:
            self.bands = pick_bands(self.dataset, bands, role, log)
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
            low, high = (np.full(len(self.bands), value, np.float32) for value in value_range)
            self.stretch = Stretch(low, high)
            return
        if not self.needs_stretch:
            return
        scale = min(1.0, STATS_READ_SIZE / max(window.width, window.height))
        shape = (len(self.bands), max(1, round(window.height * scale)), max(1, round(window.width * scale)))
        sample = self.view.read(self.bands, window=window, out_shape=shape, masked=True, resampling=Resampling.nearest)
        lows, highs = [], []
        for band in sample:
            values = band.compressed()
            values = values[np.isfinite(values)] if self.is_float else values
            low, high = np.percentile(values, STRETCH_PERCENTILES) if values.size else (0.0, 1.0)
            lows.append(low)
            highs.append(high)
        self.stretch = Stretch(np.asarray(lows, np.float32), np.asarray(highs, np.float32))

    def read(self, window: Window, out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(rgb, valid)``: H×W×3 uint8 (invalid pixels black) and the H×W validity of every picked band."""
        shape = None if out_shape is None else (len(self.bands), *out_shape)
        data = self.view.read(self.bands, window=window, out_shape=shape)
        valid = np.all(self.view.read_masks(self.bands, window=window, out_shape=shape) > 0, axis=0)
        if self.is_float:
            valid &= np.all(np.isfinite(data), axis=0)
        pixels = self.stretch.apply(data) if self.stretch is not None else data.astype(np.uint8)
        pixels[:, ~valid] = 0
        if len(self.bands) == 1:
            pixels = np.repeat(pixels, 3, axis=0)
        return np.ascontiguousarray(pixels.transpose(1, 2, 0)), valid


@dataclass(frozen=True)
class TilePixels:
    """One tile of both dates as H×W×3 uint8, and the larger share of nodata of the two."""

    before: np.ndarray
    after: np.ndarray
    nodata_share: float


class RasterPair:
    """BEFORE and AFTER on BEFORE's grid (resampled to ``resolution`` metres per pixel if given).

    Use as a context manager. Not thread-safe: one thread at a time may read it.
    """

    def __init__(
        self,
        before: Path,
        after: Path,
        bands: Sequence[int] | None = None,
        resolution: float | None = None,
        log: Log = print,
    ) -> None:
        first = open_raster(before, "BEFORE")
        native = PixelGrid.of(first)
        first.close()
        self.grid = native if resolution is None else native.resampled(resolution)
        if resolution is not None:
            log(
                f"both rasters are resampled to {resolution:g} m per pixel (BEFORE has "
                f"{native.pixel_size * native.crs.linear_units_factor[1]:g} m)"
            )
        self.before = DateSource(before, "BEFORE", self.grid, bands, log)
        try:
            self.after = DateSource(after, "AFTER", self.grid, bands, log)
        except BaseException:
            self.before.close()
            raise
        try:
            self._check_overlap()
        except BaseException:
            self.close()
            raise
        aligned = PixelGrid.of(self.after.dataset)
        if aligned != native:
            log(f"AFTER ({self.after.path.name}) is aligned onto BEFORE's grid with bilinear resampling: "
                f"{_grid_difference(aligned, native)}")

    def _check_overlap(self) -> None:
        bx0, by0, bx1, by1 = self.grid.bounds
        after = PixelGrid.of(self.after.dataset)
        try:
            ax0, ay0, ax1, ay1 = transform_bounds(after.crs, self.grid.crs, *after.bounds)
        except (CRSError, RasterioError) as error:
            raise CCExpertError(f"AFTER's CRS cannot be transformed to BEFORE's: {error}") from None
        if ax0 >= bx1 or ax1 <= bx0 or ay0 >= by1 or ay1 <= by0:
            raise CCExpertError(
                f"BEFORE ({self.before.path.name}) and AFTER ({self.after.path.name}) do not overlap: BEFORE covers "
                f"{format_bounds((bx0, by0, bx1, by1))}, AFTER covers {format_bounds((ax0, ay0, ax1, ay1))} "
                f"(in {crs_name(self.grid.crs)})"
            )

    def __enter__(self) -> "RasterPair":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close both rasters."""
        self.before.close()
        self.after.close()

    def fit_stretch(self, tiles: Sequence[Tile], value_range: tuple[float, float] | None) -> None:
        """Fit each date's 8-bit mapping over the tiles' extent (once, before any tile is read)."""
        x0, y0 = min(t.x for t in tiles), min(t.y for t in tiles)
        x1, y1 = max(t.x + t.width for t in tiles), max(t.y + t.height for t in tiles)
        window = Window(x0, y0, x1 - x0, y1 - y0)
        self.before.fit_stretch(window, value_range)
        self.after.fit_stretch(window, value_range)

    def read_tile(self, tile: Tile) -> TilePixels:
        """Both dates' pixels of a tile."""
        window = Window(tile.x, tile.y, tile.width, tile.height)
        before, before_valid = self.before.read(window)
        after, after_valid = self.after.read(window)
        share = 1.0 - min(before_valid.mean(), after_valid.mean())
        return TilePixels(before, after, float(share))

    def overview(self, tiles: Sequence[Tile], max_size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """BEFORE over the tiles' extent, decimated to at most ``max_size`` pixels a side: ``(rgb, (x, y, w, h))``
        with the window in grid pixels."""
        x0, y0 = min(t.x for t in tiles), min(t.y for t in tiles)
        width = max(t.x + t.width for t in tiles) - x0
        height = max(t.y + t.height for t in tiles) - y0
        scale = min(1.0, max_size / max(width, height))
        shape = (max(1, round(height * scale)), max(1, round(width * scale)))
        rgb, _ = self.before.read(Window(x0, y0, width, height), out_shape=shape)
        return rgb, (x0, y0, width, height)


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
