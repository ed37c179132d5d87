"""Georeferenced test and demo rasters: a small synthetic area where buildings appear between two dates
(:func:`synthetic_pair`, for geometry tests), and the demo's synthetic town (:func:`write_demo_rasters`), made of
the scenes the demo model was trained on (:mod:`ccexpert_core.data.synthetic`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from ccexpert_core.data.synthetic import synthetic_town, synthetic_town_series

#: The demo area: UTM zone 31N, 0.5 m per pixel (about LEVIR-CC's resolution).
DEMO_CRS = "EPSG:32631"
DEMO_ORIGIN = (431000.0, 4829000.0)
DEMO_PIXEL_SIZE = 0.5
#: 3 × 3 scenes of 384 px: the default tile grid cuts the town back into its scenes.
DEMO_SCENES = 3
DEMO_SIZE = DEMO_SCENES * 384
DEMO_SEED = 2026


def write_geotiff(
    path: Path, data: np.ndarray, crs: str, transform: Affine, nodata: float | None = None
) -> Path:
    """Write ``data`` (bands × H × W, or H × W × 3 uint8 as images come) as a tiled, deflated GeoTIFF."""
    if data.ndim == 3 and data.shape[-1] == 3 and data.shape[0] != 3:
        data = data.transpose(2, 0, 1)
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    tiled = height >= 256 and width >= 256
    profile = dict(
        driver="GTiff", width=width, height=height, count=count, dtype=data.dtype.name, crs=crs,
        transform=transform, nodata=nodata, compress="deflate", tiled=tiled,
        **({"blockxsize": 256, "blockysize": 256} if tiled else {}),
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data)
    return Path(path)


def synthetic_pair(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two H×W×3 uint8 images of the same fields and roads; buildings are added in the second one."""
    rng = np.random.default_rng(seed)
    # Fields: a coarse random grid of greens and browns, blown up, plus fine texture.
    cells = max(2, size // 96)
    palette = np.array([[88, 120, 60], [110, 140, 70], [140, 120, 80], [95, 110, 55]], np.float32)
    coarse = palette[rng.integers(0, len(palette), (cells, cells))]
    scene = np.kron(coarse, np.ones((size // cells + 1, size // cells + 1, 1)))[:size, :size]
    scene = scene + rng.normal(0, 6, scene.shape)
    road = slice(size // 2 - 6, size // 2 + 6)
    scene[road, :], scene[:, road] = 150, 150
    before = scene.copy()
    after = scene + rng.normal(0, 3, scene.shape)  # the second date is a different acquisition
    for _ in range(max(1, size // 64)):
        height, width = rng.integers(14, 36, 2)
        top, left = rng.integers(0, size - 40, 2)
        after[top : top + height, left : left + width] = rng.choice([[180, 70, 60], [200, 200, 200], [120, 120, 130]])
    return (np.clip(before, 0, 255).astype(np.uint8), np.clip(after, 0, 255).astype(np.uint8))


def write_demo_rasters(folder: Path) -> tuple[Path, Path]:
    """The demo's georeferenced GeoTIFF pair under ``folder`` (written once, then reused): before, after."""
    folder = Path(folder)
    before, after = folder / "before.tif", folder / "after.tif"
    if not (before.is_file() and after.is_file()):
        transform = Affine(DEMO_PIXEL_SIZE, 0, DEMO_ORIGIN[0], 0, -DEMO_PIXEL_SIZE, DEMO_ORIGIN[1])
        town = synthetic_town(DEMO_SCENES, DEMO_SCENES, seed=DEMO_SEED)
        write_geotiff(before, town.before, DEMO_CRS, transform)
        write_geotiff(after, town.after, DEMO_CRS, transform)
    return before, after


#: The demo series: the town at four dates.
DEMO_SERIES_DATES = ("2016", "2018", "2021", "2024")


def write_demo_series(folder: Path, dates: tuple[str, ...] = DEMO_SERIES_DATES, scenes: int = DEMO_SCENES,
                      seed: int = DEMO_SEED) -> list[Path]:
    """The demo town at several dates as GeoTIFFs under ``folder`` (``town_<date>.tif``, written once), each dated
    in its metadata (``TIFFTAG_DATETIME``) as a camera would."""
    folder = Path(folder)
    paths = [folder / f"town_{date}.tif" for date in dates]
    if not all(path.is_file() for path in paths):
        transform = Affine(DEMO_PIXEL_SIZE, 0, DEMO_ORIGIN[0], 0, -DEMO_PIXEL_SIZE, DEMO_ORIGIN[1])
        town = synthetic_town_series(scenes, scenes, len(dates), seed=seed)
        for path, date, image in zip(paths, dates, town.images):
            write_geotiff(path, image, DEMO_CRS, transform)
            with rasterio.open(path, "r+") as dataset:
                dataset.update_tags(TIFFTAG_DATETIME=f"{date[:4]}:{(date + '-06')[5:7]}:15 10:30:00")
    return paths
