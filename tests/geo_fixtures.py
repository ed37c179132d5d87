"""Helpers for the region tests: small georeferenced rasters and an engine that needs no model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine

from ccexpert_core.captions import CaptionResult
from ccexpert_core.geo.engine import Engine
from ccexpert_core.geo.synthetic import synthetic_pair, write_geotiff

CRS = "EPSG:32631"
ORIGIN = (431000.0, 4829000.0)
NO_CHANGE = "there is no difference"


def utm_transform(pixel_size: float = 1.0, origin: tuple[float, float] = ORIGIN) -> Affine:
    """A north-up transform in the test CRS."""
    return Affine(pixel_size, 0, origin[0], 0, -pixel_size, origin[1])


def write_pair(folder: Path, size: int = 160, seed: int = 0, **kwargs) -> tuple[Path, Path]:
    """A synthetic before/after GeoTIFF pair on the same 1 m grid."""
    first, second = synthetic_pair(size, seed)
    return (
        write_geotiff(folder / "before.tif", first, CRS, utm_transform(), **kwargs),
        write_geotiff(folder / "after.tif", second, CRS, utm_transform(), **kwargs),
    )


class FakeEngine(Engine):
    """Says "change" when the two images differ on average, and remembers what it was given; gives every tile
    ``change_map`` as its change map, like a model with a change-map head would."""

    model_id = "fake-engine"

    def __init__(
        self, fail_on_calls: Sequence[int] = (), error: BaseException | None = None,
        change_map: tuple[tuple[float, ...], ...] | None = None,
    ) -> None:
        self.change_map = change_map
        self.calls: list[list[str]] = []
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self.fail_on_calls = set(fail_on_calls)
        self.error = error or RuntimeError("injected failure")

    def caption(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]], tile_ids: Sequence[str]) -> list[CaptionResult]:
        self.calls.append(list(tile_ids))
        if len(self.calls) in self.fail_on_calls:
            raise self.error
        self.pairs.extend(pairs)
        results = []
        for before, after in pairs:
            assert before.dtype == np.uint8 and before.ndim == 3 and before.shape[2] == 3
            difference = np.abs(before.astype(int) - after.astype(int)).mean()
            caption = f"changed by {difference:.1f}" if difference > 4 else NO_CHANGE
            results.append(CaptionResult.from_caption(caption, 0.5, self.change_map))
        return results

    @property
    def captioned_ids(self) -> list[str]:
        """Every tile id it captioned (successful calls only)."""
        return [i for n, call in enumerate(self.calls, 1) if n not in self.fail_on_calls for i in call]


@dataclass(frozen=True)
class PairPixels:
    """A tile of a two-date series: both dates' 8-bit RGB and the larger share of nodata of the two."""

    before: np.ndarray
    after: np.ndarray
    nodata_share: float


def pair_pixels(series, tile) -> PairPixels:  # noqa: ANN001 (a RasterSeries of two dates, a Tile)
    """Both dates of ``tile`` as the region pipeline reads them."""
    (before, before_valid), (after, after_valid) = series.read_dates(tile)
    return PairPixels(before, after, float(1.0 - min(before_valid.mean(), after_valid.mean())))
