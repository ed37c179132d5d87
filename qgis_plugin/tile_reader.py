"""Every date read on one pixel grid, tile by tile, as 8-bit RGB with its validity (GDAL as QGIS ships it).

The rules are the ``caption-region`` command's (``ccexpert_core/geo/raster.py``, on rasterio), so that the plugin
and the command send the backend the same pixels, which a test checks: tiles are cut on the first date's grid
(BEFORE's; optionally resampled to a ground resolution); each later date is warped onto it (bilinear) when its CRS,
resolution or origin differ;
the first three bands are read by default and one band is repeated to grey; data that is not 8-bit is stretched
(2–98 % over the area) or mapped from a fixed range; nodata values, masks, alpha bands and pixels outside a raster
are invalid. Those rules on values are the command's own module, bundled (``pixels``); this one reads with GDAL.
Not thread-safe: a reader is used by one thread at a time; :meth:`RasterSeriesReader.copy` gives another thread
its own (GDAL datasets cannot be shared between threads).

A raster is any source GDAL opens: a file, or a COG over HTTP or object storage (``/vsicurl/``, ``/vsis3/``… or a
URL; the bundled ``sources`` says where it is). A remote one is opened and read with GDAL's settings for remote
reads (retries with back-off, merged ranges, no side files looked for) on the reading thread only, under whatever
the user or QGIS set, so that QGIS's own layers are read as before; messages name it without its credentials.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from osgeo import gdal, gdal_array, osr

from .errors import CaptionRunError
from .shared_modules import grid as tiling
from .shared_modules import pixels, run_contract, sources

Log = Callable[[str], None]
Window = tuple[int, int, int, int]  # x, y, width, height in grid pixels


def _srs(wkt: str) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    # x = easting/longitude whatever the CRS's axis order, as geotransforms and QGIS have it.
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def crs_text(wkt: str) -> str:
    """How a run stores the CRS ``wkt`` (:func:`run_contract.crs_text`: its EPSG code, where it names one)."""
    srs = _srs(wkt)
    code = srs.GetAuthorityCode(None) if srs.GetAuthorityName(None) == "EPSG" else None
    return run_contract.crs_text(int(code) if code and code.isdigit() else None, wkt)


def same_crs(first: str, second: str) -> bool:
    """Whether two stored CRSs (``EPSG:n`` or WKT, as either tool wrote them) are one CRS."""
    parsed = []
    for text in (first, second):
        srs = osr.SpatialReference()
        if srs.SetFromUserInput(text) != 0:
            return False
        parsed.append(srs)
    return bool(parsed[0].IsSame(parsed[1]))


def crs_name(wkt: str) -> str:
    """``EPSG:32631`` where the CRS has an EPSG code, else its name (the command's wording)."""
    srs = _srs(wkt)
    if srs.GetAuthorityName(None) == "EPSG" and srs.GetAuthorityCode(None):
        return f"EPSG:{srs.GetAuthorityCode(None)}"
    return srs.GetName() or "a custom CRS"


def format_bounds(bounds: tiling.Bounds) -> str:
    """Bounds for a message: ``(xmin, ymin, xmax, ymax)`` with six significant digits."""
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"


@dataclass(frozen=True)
class PixelGrid:
    """Where tiles are cut: a CRS (WKT), a GDAL geotransform and a size in pixels."""

    wkt: str
    transform: tiling.GeoTransform
    width: int
    height: int

    @classmethod
    def of(cls, dataset: gdal.Dataset) -> "PixelGrid":
        """A dataset's own grid."""
        return cls(dataset.GetProjection(), tuple(dataset.GetGeoTransform()), dataset.RasterXSize, dataset.RasterYSize)

    def same_as(self, other: "PixelGrid") -> bool:
        """Same pixels on the ground: transform, size and CRS."""
        return (self.transform, self.width, self.height) == (other.transform, other.width, other.height) and bool(
            _srs(self.wkt).IsSame(_srs(other.wkt))
        )

    @property
    def bounds(self) -> tiling.Bounds:
        """``(xmin, ymin, xmax, ymax)`` in the grid's CRS."""
        corners = [tiling.pixel_to_geo(self.transform, c, r) for c in (0, self.width) for r in (0, self.height)]
        xs, ys = zip(*corners)
        return min(xs), min(ys), max(xs), max(ys)

    @property
    def north_up(self) -> bool:
        """No rotation terms and rows going south."""
        _, _, row_rotation, _, column_rotation, pixel_height = self.transform
        return row_rotation == 0 and column_rotation == 0 and pixel_height < 0

    @property
    def pixel_size(self) -> float:
        """The side of a pixel in CRS units (the larger one where pixels are not square)."""
        _, a, b, _, d, e = self.transform
        return max(math.hypot(a, d), math.hypot(b, e))

    def metres_per_unit(self) -> float:
        """The CRS's linear unit in metres."""
        return _srs(self.wkt).GetLinearUnits()

    def resampled(self, metres: float) -> "PixelGrid":
        """The same extent with pixels of ``metres`` on the ground (north-up grids in a projected CRS)."""
        if metres <= 0:
            raise CaptionRunError(f"the resolution must be a positive number of metres per pixel, not {metres}")
        if _srs(self.wkt).IsGeographic():
            raise CaptionRunError(
                f"the resolution is in metres but BEFORE's CRS ({crs_name(self.wkt)}) is in degrees: reproject the "
                "rasters to a projected CRS first, or keep the native resolution"
            )
        if not self.north_up:
            raise CaptionRunError("a resolution in metres needs a north-up BEFORE raster (it has rotation terms)")
        x0, a, _, y0, _, e = self.transform
        size = metres / self.metres_per_unit()
        width = max(1, round(self.width * abs(a) / size))
        height = max(1, round(self.height * abs(e) / size))
        return PixelGrid(self.wkt, (x0, math.copysign(size, a), 0.0, y0, 0.0, math.copysign(size, e)), width, height)


@contextmanager
def remote_settings(location: sources.RasterLocation, opening: bool = False) -> Iterator[None]:
    """GDAL's settings for reading a remote raster (``sources.CLOUD_DEFAULTS``; on ``opening``, no side files looked
    for), set on this thread alone while it opens or reads ``location``, under what the user or QGIS set."""
    if not location.remote:
        yield
        return
    wanted = sources.cloud_defaults(lambda key: gdal.GetConfigOption(key) is not None)
    if opening and gdal.GetConfigOption(sources.READDIR_OPTION) is None:
        wanted[sources.READDIR_OPTION] = sources.REMOTE_READDIR
    before = {key: gdal.GetThreadLocalConfigOption(key) for key in wanted}
    for key, value in wanted.items():
        gdal.SetThreadLocalConfigOption(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            gdal.SetThreadLocalConfigOption(key, value)


def open_raster(source: str, role: str) -> gdal.Dataset:
    """Open a georeferenced raster (a file, a URL or a GDAL path), with errors that say which input is wrong and why
    (never with a URL's credentials)."""
    location = sources.RasterLocation.of(source)
    with remote_settings(location, opening=True):
        # Verbose: GDAL says why (no such file, the server's answer), not only that it could not open it.
        dataset = gdal.OpenEx(location.gdal_path, gdal.OF_RASTER | gdal.OF_READONLY | gdal.OF_VERBOSE_ERROR)
    if dataset is None:
        said = location.redact(gdal.GetLastErrorMsg()) or "unknown format"
        raise CaptionRunError(f"{role} raster {location} cannot be read: {said}")
    if not dataset.GetProjection():
        raise CaptionRunError(
            f"{role} raster {location} has no coordinate reference system in the file: give a georeferenced raster "
            "(e.g. a GeoTIFF with a CRS)"
        )
    return dataset


def _warped(dataset: gdal.Dataset, target: PixelGrid, role: str) -> gdal.Dataset:
    """``dataset`` seen on ``target``'s grid through a warped VRT (bilinear, with an alpha band for the outside)."""
    if not target.north_up:
        raise CaptionRunError(f"{role} cannot be aligned onto a rotated grid: warp BEFORE to a north-up raster first")
    x0, a, _, y0, _, e = target.transform
    view = gdal.Warp(
        "", dataset, format="VRT", dstSRS=target.wkt, resampleAlg="bilinear", dstAlpha=True,
        # Bounds and resolution together fix the geotransform exactly (bounds with a size would round it).
        outputBounds=(x0, y0 + target.height * e, x0 + target.width * a, y0), xRes=a, yRes=-e,
    )
    if view is None:
        raise CaptionRunError(f"{role} cannot be aligned onto BEFORE's grid: {gdal.GetLastErrorMsg()}")
    return view


class DateSource:
    """One date seen on the working grid: its bands, its 8-bit mapping and its validity mask."""

    def __init__(self, source: str, role: str, target: PixelGrid, bands: Sequence[int] | None, log: Log) -> None:
        self.source, self.role = source, role
        self.location = sources.RasterLocation.of(source)
        self.dataset = open_raster(source, role)
        try:
            self.bands = pixels.pick_bands(self.dataset.RasterCount, bands, role, log)
        except ValueError as error:
            raise CaptionRunError(f"bands: {error}") from None
        data_types = [self.dataset.GetRasterBand(b).DataType for b in self.bands]
        self.is_float = np.issubdtype(gdal_array.GDALTypeCodeToNumericTypeCode(data_types[0]), np.floating)
        self.needs_stretch = any(t != gdal.GDT_Byte for t in data_types)
        self.native = PixelGrid.of(self.dataset)
        # Reading through a warped VRT would resample even on the dataset's own grid: read directly then.
        self.view = self.dataset if self.native.same_as(target) else _warped(self.dataset, target, role)
        self.stretch: pixels.Stretch | None = None

    def close(self) -> None:
        """Let GDAL close the view and the file."""
        self.view = self.dataset = None

    def _read(self, window: Window, out_shape: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        """``(data, masks)``: (bands, H, W) values and (bands, H, W) GDAL validity masks (0 = invalid)."""
        x, y, width, height = window
        buf_height, buf_width = out_shape or (height, width)
        size = dict(buf_xsize=buf_width, buf_ysize=buf_height, resample_alg=gdal.GRIORA_NearestNeighbour)
        with remote_settings(self.location):
            data = self.view.ReadAsArray(x, y, width, height, band_list=list(self.bands), **size)
            masks = [self.view.GetRasterBand(b).GetMaskBand().ReadAsArray(x, y, width, height, **size)
                     for b in self.bands]
        if data is None or any(m is None for m in masks):
            said = self.location.redact(gdal.GetLastErrorMsg())
            raise CaptionRunError(f"{self.role} raster {self.location} cannot be read: {said}")
        return data.reshape(len(self.bands), buf_height, buf_width), np.stack(masks)

    def fit_stretch(self, window: Window, value_range: tuple[float, float] | None) -> None:
        """Decide the 8-bit mapping: ``value_range`` if given, else percentiles over ``window`` when not 8-bit."""
        if value_range is not None:
            self.stretch = pixels.Stretch.fixed(value_range, len(self.bands))
            return
        if not self.needs_stretch:
            return
        _, _, width, height = window
        data, masks = self._read(window, pixels.decimated_shape(width, height, pixels.STATS_READ_SIZE))
        self.stretch = pixels.Stretch.percentiles(data, masks, self.is_float)

    def read(self, window: Window, out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(rgb, valid)``: H×W×3 uint8 (invalid pixels black) and the H×W validity of every picked band."""
        return pixels.to_rgb(*self._read(window, out_shape), self.stretch, self.is_float)


class RasterSeriesReader:
    """Two or more dates on the first one's grid (resampled to ``resolution`` metres per pixel if given): each
    later date is aligned onto it, and must overlap it. ``roles`` name the dates in messages (BEFORE and AFTER for
    two, ``date 2018``… for a series, as the command names them)."""

    def __init__(
        self,
        sources: Sequence[str],
        roles: Sequence[str],
        bands: Sequence[int] | None = None,
        resolution: float | None = None,
        log: Log = lambda message: None,
    ) -> None:
        if len(sources) < 2 or len(roles) != len(sources):
            raise CaptionRunError("a run needs two or more rasters, one per date")
        self._options = (list(sources), list(roles), bands, resolution)
        native = PixelGrid.of(open_raster(sources[0], roles[0]))
        self.grid = native if resolution is None else native.resampled(resolution)
        if resolution is not None:
            log(f"every date is resampled to {resolution:g} m per pixel "
                f"({roles[0]} has {native.pixel_size * native.metres_per_unit():g} m)")
        self.dates = [DateSource(source, role, self.grid, bands, log) for source, role in zip(sources, roles)]
        self.bounds = [self.grid.bounds] + [self._bounds_on_grid(date) for date in self.dates[1:]]
        first = roles[0]
        for date in self.dates[1:]:
            if not date.native.same_as(native):
                log(f"{date.role} is aligned onto {first}'s grid with bilinear resampling: "
                    f"{_grid_difference(date.native, native)}")

    def _bounds_on_grid(self, date: DateSource) -> tiling.Bounds:
        """A later date's extent in the grid's CRS; refuses one that does not overlap the first."""
        first = self.dates[0].role
        transform = osr.CoordinateTransformation(_srs(date.native.wkt), _srs(self.grid.wkt))
        if transform is None:
            raise CaptionRunError(f"{date.role}'s CRS cannot be transformed to {first}'s: {gdal.GetLastErrorMsg()}")
        ax0, ay0, ax1, ay1 = transform.TransformBounds(*date.native.bounds, 21)
        bx0, by0, bx1, by1 = self.grid.bounds
        if ax0 >= bx1 or ax1 <= bx0 or ay0 >= by1 or ay1 <= by0:
            raise CaptionRunError(
                f"{first} and {date.role} do not overlap: {first} covers {format_bounds((bx0, by0, bx1, by1))}, "
                f"{date.role} covers {format_bounds((ax0, ay0, ax1, ay1))} (in {crs_name(self.grid.wkt)})"
            )
        return ax0, ay0, ax1, ay1

    @property
    def overlap_bounds(self) -> tiling.Bounds:
        """Where every date has pixels, in the grid's CRS."""
        x0s, y0s, x1s, y1s = zip(*self.bounds)
        return max(x0s), max(y0s), min(x1s), min(y1s)

    @property
    def bands(self) -> tuple[int, ...]:
        """The bands read (the first date's: every date reads the same numbers)."""
        return self.dates[0].bands

    def copy(self) -> "RasterSeriesReader":
        """Another reader of the same rasters on the same grid, with the same 8-bit mappings, for another thread
        (its notices were given by this one)."""
        twin = RasterSeriesReader(*self._options)
        for date, original in zip(twin.dates, self.dates):
            date.stretch = original.stretch
        return twin

    def close(self) -> None:
        """Close every raster."""
        for date in self.dates:
            date.close()

    def __enter__(self) -> "RasterSeriesReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fit_stretch(self, tiles: Sequence[tiling.Tile], value_range: tuple[float, float] | None) -> None:
        """Fit each date's 8-bit mapping over the tiles' extent (once, before any tile is read)."""
        window = tiling.tiles_window(tiles)
        for date in self.dates:
            date.fit_stretch(window, value_range)

    def read_dates(self, tile: tiling.Tile) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every date's ``(rgb, valid)`` of a tile, in date order."""
        window = (tile.x, tile.y, tile.width, tile.height)
        return [date.read(window) for date in self.dates]


def _grid_difference(source: PixelGrid, target: PixelGrid) -> str:
    differences = []
    if not _srs(source.wkt).IsSame(_srs(target.wkt)):
        differences.append(f"CRS {crs_name(source.wkt)} → {crs_name(target.wkt)}")
    if not math.isclose(source.pixel_size, target.pixel_size, rel_tol=1e-9):
        differences.append(f"pixel size {source.pixel_size:g} → {target.pixel_size:g}")
    if (source.transform[0], source.transform[3]) != (target.transform[0], target.transform[3]):
        differences.append("origin differs")
    if (source.width, source.height) != (target.width, target.height):
        differences.append(f"size {source.width}×{source.height} → {target.width}×{target.height} px")
    return ", ".join(differences)
