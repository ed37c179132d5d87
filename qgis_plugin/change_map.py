"""A tile's change map turned into polygons in the raster's CRS, for the ``changes`` layer: the rule of
``ccexpert_core/geo/changes.py`` (the command's), on QGIS's GDAL instead of rasterio.

A model with a change-map head gives, per tile, a g×g grid of change probabilities (rows top to bottom, over the
whole tile). Cells above the bundled ``pixels.CHANGE_THRESHOLD`` are changed; the grid is stretched over the tile's
pixels (``pixels.change_map_mask``: each cell covering its share of rows and columns) and GDAL's Polygonize,
4-connected as rasterio's ``shapes`` (which calls it), draws the outlines with the raster's geotransform. A test
checks that both give the same polygons.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from osgeo import gdal, ogr

from .shared_modules import grid as tiling
from .shared_modules import pixels


def tile_changes(
    change_map: Sequence[Sequence[float]], transform: tiling.GeoTransform, tile: tiling.Tile
) -> list[tiling.Polygon]:
    """Polygons (lists of rings, exterior first) around the changed cells of a tile's change map; ``transform``
    is the raster's geotransform (GDAL order) and ``tile`` says where the map lies in it."""
    mask = pixels.change_map_mask(change_map, tile.height, tile.width).astype(np.uint8)
    if not mask.any():
        return []
    raster = gdal.GetDriverByName("MEM").Create("", tile.width, tile.height, 1, gdal.GDT_Byte)
    x0, y0 = tiling.pixel_to_geo(transform, tile.x, tile.y)
    raster.SetGeoTransform((x0, transform[1], transform[2], y0, transform[4], transform[5]))
    band = raster.GetRasterBand(1)
    band.WriteArray(mask)
    vectors = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = vectors.CreateLayer("changes", None, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
    # The band is its own mask: only changed pixels (value 1) become polygons.
    if gdal.Polygonize(band, band, layer, 0, []) != gdal.CE_None:
        raise RuntimeError(f"GDAL could not polygonize a change map: {gdal.GetLastErrorMsg()}")
    polygons: list[tiling.Polygon] = []
    for feature in layer:
        geometry = feature.GetGeometryRef()
        polygons.append([
            [(x, y) for x, y, *_ in geometry.GetGeometryRef(i).GetPoints()] for i in range(geometry.GetGeometryCount())
        ])
    return polygons
