"""Small georeferenced GeoTIFFs for the plugin tests, written with QGIS's GDAL: a scene where buildings appear."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from osgeo import gdal, gdal_array, osr

UTM = 32631
ORIGIN = (431000.0, 4829000.0)


def write_geotiff(
    path: Path, data: np.ndarray, epsg: int = UTM, transform: tuple[float, ...] | None = None,
    nodata: float | None = None,
) -> Path:
    """Write (bands, H, W) ``data`` as a GeoTIFF; the default transform is 1 m pixels from :data:`ORIGIN`."""
    count, height, width = data.shape
    data_type = gdal_array.NumericTypeCodeToGDALTypeCode(data.dtype)
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), width, height, count, data_type)
    dataset.SetGeoTransform(transform or (ORIGIN[0], 1.0, 0.0, ORIGIN[1], 0.0, -1.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    dataset.SetProjection(srs.ExportToWkt())
    for index in range(count):
        band = dataset.GetRasterBand(index + 1)
        band.WriteArray(data[index])
        if nodata is not None:
            band.SetNoDataValue(nodata)
    dataset = None  # closing writes the file
    return Path(path)


def scene_pair(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two (3, size, size) uint8 scenes of fields and a road; buildings appear in the second, top-left only."""
    rng = np.random.default_rng(seed)
    palette = np.array([[88, 120, 60], [110, 140, 70], [140, 120, 80], [95, 110, 55]], np.float32)
    cells = max(2, size // 64)
    coarse = palette[rng.integers(0, len(palette), (cells, cells))]
    scene = np.kron(coarse, np.ones((size // cells + 1, size // cells + 1, 1)))[:size, :size]
    scene = scene + rng.normal(0, 5, scene.shape)
    road = slice(size // 2 - 4, size // 2 + 4)
    scene[road, :], scene[:, road] = 150, 150
    after = scene.copy()
    for top, left in ((12, 20), (60, 70), (20, 90)):
        after[top : top + 24, left : left + 30] = (185, 75, 60)
    as_bands = lambda image: np.clip(image, 0, 255).astype(np.uint8).transpose(2, 0, 1)  # noqa: E731
    return as_bands(scene), as_bands(after)


def write_pair(folder: Path, size: int = 256, seed: int = 0) -> tuple[Path, Path]:
    """An 8-bit RGB before/after pair on the same 1 m grid."""
    before, after = scene_pair(size, seed)
    return write_geotiff(folder / "before.tif", before), write_geotiff(folder / "after.tif", after)
