"""How a raster's values become the 8-bit RGB tiles a model sees: which bands, which stretch, which pixels are nodata.

Pure Python + numpy, with no import from the rest of the package: the QGIS plugin bundles this file as it is.
``ccexpert caption-region`` (rasterio, :mod:`ccexpert_core.geo.raster`) and the plugin (GDAL) each read the values
their own way and hand them here, so that both send a model the same bytes for the same inputs.

Arrays are band-first, as both readers give them: values ``(bands, H, W)`` and validity masks ``(bands, H, W)``
in GDAL's convention (0 or False: invalid; anything else: valid). Errors are ``ValueError`` with a message meant for
a user; callers add how their user chooses (an option, a field).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: Percentiles of the default stretch for data that is not 8-bit (QGIS's "cumulative count cut" default).
STRETCH_PERCENTILES = (2.0, 98.0)
#: The stretch's percentiles come from a read of the area decimated to at most this many pixels a side,
#: so that memory does not grow with the region.
STATS_READ_SIZE = 1024


def pick_bands(count: int, bands: Sequence[int] | None, role: str, log: Callable[[str], None]) -> tuple[int, ...]:
    """The band numbers to read (1-based) of ``role``'s raster of ``count`` bands: ``bands``, else the first three
    (or the only one). One band is read as grey RGB, which ``log`` is told."""
    if bands is None:
        if count == 2:
            raise ValueError(f"{role} raster has 2 bands: choose one (grey) or three")
        bands = (1, 2, 3) if count >= 3 else (1,)
    bands = tuple(bands)
    if len(bands) not in (1, 3):
        raise ValueError(f"choose one or three band numbers, not {len(bands)}")
    missing = [b for b in bands if not 1 <= b <= count]
    if missing:
        raise ValueError(f"{role} raster has {count} band(s): band {missing[0]} does not exist (bands count from 1)")
    if len(bands) == 1:
        log(f"{role} is read from one band ({bands[0]}), repeated to grey RGB; the model expects colour")
    return bands


def decimated_shape(width: int, height: int, max_size: int) -> tuple[int, int]:
    """``(H, W)`` of a ``width`` × ``height`` window read at most ``max_size`` pixels a side (never upsampled)."""
    scale = min(1.0, max_size / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass(frozen=True)
class Stretch:
    """A linear map of each band's ``low``..``high`` onto 0..255 (values outside are clipped).

    The arithmetic runs in float32 whatever the input, so that every reader gives the same bytes.
    """

    low: np.ndarray
    high: np.ndarray

    @classmethod
    def fixed(cls, value_range: tuple[float, float], band_count: int) -> "Stretch":
        """The same ``(low, high)`` range for every band."""
        low, high = (np.full(band_count, value, np.float32) for value in value_range)
        return cls(low, high)

    @classmethod
    def percentiles(cls, data: np.ndarray, masks: np.ndarray, is_float: bool) -> "Stretch":
        """The :data:`STRETCH_PERCENTILES` of each band's valid (and, for float data, finite) values; a band with
        none maps 0..1."""
        lows, highs = [], []
        for band, mask in zip(data, masks):
            values = band[mask > 0]
            values = values[np.isfinite(values)] if is_float else values
            low, high = np.percentile(values, STRETCH_PERCENTILES) if values.size else (0.0, 1.0)
            lows.append(low)
            highs.append(high)
        return cls(np.asarray(lows, np.float32), np.asarray(highs, np.float32))

    def apply(self, data: np.ndarray) -> np.ndarray:
        """(bands, H, W) values → (bands, H, W) uint8."""
        low, high = self.low[:, None, None], self.high[:, None, None]
        # A constant band (high == low) maps to black rather than dividing by zero.
        span = np.where(high > low, high - low, np.inf)
        scaled = (data.astype(np.float32) - low) * (255.0 / span)
        return np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)


def to_rgb(
    data: np.ndarray, masks: np.ndarray, stretch: Stretch | None, is_float: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb, valid)`` from one or three bands' values and masks: H×W×3 uint8 (stretched, or cast where the data is
    8-bit and no stretch is given; invalid pixels black; one band repeated to grey) and the H×W validity of every
    band (masked, or not finite in float data, in any band makes a pixel invalid)."""
    valid = np.all(masks > 0, axis=0)
    if is_float:
        valid &= np.all(np.isfinite(data), axis=0)
    pixels = stretch.apply(data) if stretch is not None else data.astype(np.uint8, copy=False)
    # Band by band into pixel-interleaved order: half the time of a transposed copy, and the read's own buffer is
    # left as it was (nodata pixels are blacked out in the copy, and only when there are any).
    rgb = np.empty((*pixels.shape[1:], 3), np.uint8)
    for index in range(3):
        rgb[..., index] = pixels[index if len(pixels) == 3 else 0]
    if not valid.all():
        rgb[~valid] = 0
    return rgb, valid


def nodata_share(valid: np.ndarray) -> float:
    """The share of a tile's pixels that are nodata in one date (``valid`` as :func:`to_rgb` gives it)."""
    return 1.0 - float(valid.mean())


#: A change map's cells with a change probability above this count as changed (both tools' ``changes`` layer).
CHANGE_THRESHOLD = 0.5


def change_map_mask(change_map: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """The H×W boolean mask of a g×g change map stretched over a tile (each cell covers its share of pixels)."""
    cells = np.asarray(change_map, dtype=np.float32) > CHANGE_THRESHOLD
    rows = np.arange(height) * cells.shape[0] // height
    cols = np.arange(width) * cells.shape[1] // width
    return cells[rows][:, cols]
