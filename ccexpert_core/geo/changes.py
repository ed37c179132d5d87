"""A tile's change map turned into polygons in the raster's CRS, for the ``changes`` layer.

Models with a change-map head give, per tile, a g×g grid of change probabilities (one per image token, rows top
to bottom, over the whole tile); models without one give none, and then no ``changes`` layer is written.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from affine import Affine
from rasterio.features import shapes

from ccexpert_core.geo.grid import GeoTransform, Polygon, Tile, pixel_to_geo
from ccexpert_core.geo.pixels import change_map_mask


def tile_changes(change_map: Sequence[Sequence[float]], transform: GeoTransform, tile: Tile) -> list[Polygon]:
    """Polygons around the changed cells of a tile's change map."""
    return change_polygons(change_map_mask(change_map, tile.height, tile.width), transform, tile)


def change_polygons(mask: np.ndarray, transform: GeoTransform, tile: Tile) -> list[Polygon]:
    """Polygons (lists of rings) around the changed pixels of a tile's H×W boolean change map.

    ``transform`` is the raster's geotransform (GDAL order) and ``tile`` says where the map lies in it.
    """
    if mask.shape != (tile.height, tile.width):
        raise ValueError(f"the change map is {mask.shape}, the tile {tile.height}×{tile.width}")
    x0, y0 = pixel_to_geo(transform, tile.x, tile.y)
    tile_transform = Affine.from_gdal(x0, transform[1], transform[2], y0, transform[4], transform[5])
    changed = mask.astype(np.uint8)
    return [
        geometry["coordinates"]
        for geometry, value in shapes(changed, mask=changed.astype(bool), transform=tile_transform)
        if value == 1
    ]
