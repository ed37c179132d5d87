"""A captions layer's tiles read again exactly as its run read them, for the review panel.

The run's grid and 8-bit mapping are rebuilt from the options stored beside the layer (``ccexpert_run_options``:
CRS, geotransform, size, tile size, overlap, bands, value range) and the plugin's tile reader reads the rasters on
it, with the command's pixel rules (``tile_reader.DateSource``). The run's first date fixes the grid: its raster
must have the stored CRS, geotransform and size, natively or resampled to the stored pixel size as a run with a
resolution did; every other date is aligned onto that grid as the run aligned it.

One limit, the same as ``export-dataset``'s: data that is not 8-bit, captioned without a value range, was stretched
2-98 % over the run's tiles; it is fitted again over the layer's tiles, which are the same for a run that went to
its end.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

from .errors import CaptionRunError
from .job import RasterInput
from .shared_modules import grid as tiling
from .shared_modules import run_contract
from .tile_reader import DateSource, PixelGrid, crs_name, crs_text, open_raster, same_crs


def missing_option(options: Mapping[str, str]) -> str | None:
    """The first option the pixels depend on that ``options`` lacks (None: all there)."""
    return next((key for key in run_contract.GRID_OPTIONS if not options.get(key)), None)


class RunPixels:
    """The run's grid over its first date's raster, and every date's tiles read on it.

    ``options`` are the layer's stored run options, ``first`` the run's first date and ``tile_ids`` the layer's
    tiles, which lie within ``bounds`` (in the layer's CRS): the 8-bit mapping of data that needs one is fitted
    over them. Raises :class:`CaptionRunError` for options that cannot be used and a first raster that does not
    match them.
    """

    def __init__(
        self, options: Mapping[str, str], first: RasterInput, role: str, tile_ids: Collection[str],
        bounds: tiling.Bounds,
    ) -> None:
        try:
            self.run = run_contract.read_stored(options)
        except run_contract.RunRefused as error:
            raise CaptionRunError(str(error)) from None
        self.bands, self.value_range = self.run.bands, self.run.value_range
        self.grid = self._matching_grid(first, role)
        try:
            self.tiles = self.run.tile_grid(self.grid.width, self.grid.height, self.grid.transform)
        except ValueError as error:
            raise CaptionRunError(f"the layer's run options do not describe a tile grid: {error}") from None
        self._ids = set(tile_ids)
        self._bounds = bounds
        self._window: tuple[int, int, int, int] | None = None
        self._dates: dict[str, DateSource] = {}
        #: What opening the rasters had to say (bands ignored, alignment).
        self.notices: list[str] = []

    def _mismatch(self, grid: PixelGrid) -> str | None:
        """The first of the grid's transform and size that differ from the run's (the run's own wording)."""
        return self.run.grid_mismatch(self.run.tile_grid(grid.width, grid.height, grid.transform))

    def _matching_grid(self, first: RasterInput, role: str) -> PixelGrid:
        dataset = open_raster(first.source, role)
        native = PixelGrid.of(dataset)
        dataset = None
        if not same_crs(self.run.crs, crs_text(native.wkt)):
            raise CaptionRunError(
                f"{first.name} does not match the layer's run: its CRS is {crs_name(native.wkt)}, the run's was "
                f"{self.run.crs}"
            )
        key = self._mismatch(native)
        if key is None:
            return native
        try:
            # A run with a resolution: the same raster, resampled as the run did it.
            resampled = native.resampled(self.run.pixel_size() * native.metres_per_unit())
        except (CaptionRunError, ValueError, IndexError):
            resampled = None
        if resampled is not None and self._mismatch(resampled) is None:
            return resampled
        found = run_contract.grid_words(self.run.tile_grid(native.width, native.height, native.transform))[key]
        raise CaptionRunError(
            f"{first.name} does not match the layer's run: its {key} is {found}, the run's was {self.run.options[key]}"
        )

    def tile(self, tile_id: str, bounds: tiling.Bounds) -> tiling.Tile:
        """A tile of the run's grid by its id and footprint's bounds (in the layer's CRS); raises
        :class:`CaptionRunError` for one the grid does not have there."""
        tile = self._tiles_within(bounds).get(tile_id)
        if tile is None:
            raise CaptionRunError(f"tile {tile_id} is not in the grid the layer's run options describe")
        return tile

    def _tiles_within(self, bounds: tiling.Bounds) -> dict[str, tiling.Tile]:
        try:
            area = tiling.Area.from_bounds(bounds)
        except ValueError:
            return {}
        return {tile.tile_id: tile for tile in self.tiles.tiles(area)}

    def _stretch_window(self) -> tuple[int, int, int, int]:
        """The pixel window of the layer's tiles, where the run fitted its stretch."""
        if self._window is None:
            tiles = [tile for tile_id, tile in self._tiles_within(self._bounds).items() if tile_id in self._ids]
            if not tiles:
                raise CaptionRunError("none of the layer's tiles is in the grid its run options describe")
            self._window = tiling.tiles_window(tiles)
        return self._window

    def date(self, raster: RasterInput, role: str) -> DateSource:
        """A date's raster on the run's grid with the run's 8-bit mapping (opened once)."""
        if raster.source not in self._dates:
            date = DateSource(raster.source, role, self.grid, self.bands, self.notices.append)
            if self.value_range is not None or date.needs_stretch:
                date.fit_stretch(self._stretch_window(), self.value_range)
            self._dates[raster.source] = date
        return self._dates[raster.source]

    def read(self, raster: RasterInput, role: str, tile: tiling.Tile) -> np.ndarray:
        """A tile of one date: H×W×3 uint8, as the run gave it to the model (invalid pixels black)."""
        rgb, _ = self.date(raster, role).read((tile.x, tile.y, tile.width, tile.height))
        return rgb

    def close(self) -> None:
        """Close every raster."""
        for date in self._dates.values():
            date.close()
        self._dates.clear()
