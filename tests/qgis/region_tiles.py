"""Run in the project's .venv (rasterio): the tiles ``ccexpert caption-region`` reads, saved for comparison.

Usage: python region_tiles.py BEFORE AFTER OUT.npz OPTIONS_JSON — the options are RegionOptions' tile_size, overlap,
bounds, bands, value_range and resolution. The npz holds ``{tile_id}/before``, ``{tile_id}/after`` (H×W×3 uint8)
and ``{tile_id}/nodata`` for every tile of the area, chosen as the command chooses them.
"""

import json
import sys
from pathlib import Path

import numpy as np

from ccexpert_core.geo.grid import Area, TileGrid, parse_overlap
from ccexpert_core.geo.pixels import nodata_share
from ccexpert_core.geo.raster import RasterSeries


def main(before: str, after: str, out: str, options_json: str) -> None:
    options = json.loads(options_json)
    tile_size = options.get("tile_size", 384)
    with RasterSeries([Path(before), Path(after)], bands=options.get("bands"), resolution=options.get("resolution"),
                      log=print) as pair:
        grid = TileGrid(
            pair.grid.width, pair.grid.height, pair.grid.gdal_transform, tile_size,
            parse_overlap(options.get("overlap", "0"), tile_size),
        )
        bounds = options.get("bounds")
        tiles = grid.tiles(None if bounds is None else Area.from_bounds(bounds))
        value_range = options.get("value_range")
        pair.fit_stretch(tiles, None if value_range is None else tuple(value_range))
        arrays = {}
        # As a run reads them: the tiles side by side in a row in one window per date.
        for tile, read in zip(tiles, pair.read_tiles(tiles)):
            (before_rgb, before_valid), (after_rgb, after_valid) = read
            arrays[f"{tile.tile_id}/before"] = before_rgb
            arrays[f"{tile.tile_id}/after"] = after_rgb
            arrays[f"{tile.tile_id}/nodata"] = np.float64(max(nodata_share(before_valid), nodata_share(after_valid)))
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:5])
