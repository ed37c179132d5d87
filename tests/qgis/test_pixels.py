"""The plugin reads the same pixels as ``ccexpert caption-region`` (its layer schema: test_captions_schema.py).

Tiles: the command's reader (rasterio, in the project's .venv) dumps its uint8 tiles; the plugin's reader (GDAL in
QGIS's Python) must give identical arrays for the same inputs and options, warped inputs included.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from qgis_plugin.shared_modules import grid as tiling
from qgis_plugin.shared_modules import pixels as shared_pixels
from qgis_plugin.tile_reader import RasterSeriesReader

from conftest import VENV_PYTHON, require_project_venv
from rasters import scene_pair, write_geotiff

DUMPER = Path(__file__).with_name("region_tiles.py")


def command_tiles(before: Path, after: Path, out: Path, options: dict) -> np.lib.npyio.NpzFile:
    """The tiles caption-region's reader produces (run in the project's .venv)."""
    require_project_venv()
    subprocess.run(
        [str(VENV_PYTHON), str(DUMPER), str(before), str(after), str(out), json.dumps(options)],
        check=True, capture_output=True,
    )
    return np.load(out)


def plugin_tiles(before: Path, after: Path, options: dict) -> dict[str, np.ndarray]:
    """The same, from the plugin's reader and the bundled grid."""
    tile_size = options.get("tile_size", 384)
    with RasterSeriesReader([str(before), str(after)], ["BEFORE", "AFTER"], options.get("bands"),
                            options.get("resolution")) as pair:
        grid = tiling.TileGrid(
            pair.grid.width, pair.grid.height, pair.grid.transform, tile_size,
            tiling.parse_overlap(options.get("overlap", "0"), tile_size),
        )
        bounds = options.get("bounds")
        tiles = grid.tiles(None if bounds is None else tiling.Area.from_bounds(bounds))
        value_range = options.get("value_range")
        pair.fit_stretch(tiles, None if value_range is None else tuple(value_range))
        arrays = {}
        for tile in tiles:
            (before_rgb, before_valid), (after_rgb, after_valid) = pair.read_dates(tile)
            share = max(shared_pixels.nodata_share(before_valid), shared_pixels.nodata_share(after_valid))
            arrays |= {f"{tile.tile_id}/before": before_rgb, f"{tile.tile_id}/after": after_rgb,
                       f"{tile.tile_id}/nodata": np.float64(share)}
    return arrays


def sixteen_bit(seed: int, hole: tuple[slice, slice]) -> np.ndarray:
    """Four uint16 bands of noise with a nodata (0) hole."""
    data = np.random.default_rng(seed).integers(200, 4000, (4, 200, 220)).astype(np.uint16)
    data[(slice(None), *hole)] = 0
    return data


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8-bit RGB on one grid, AFTER reprojected to degrees, and 4-band 16-bit with nodata on a shifted grid."""
    folder = tmp_path_factory.mktemp("pixels")
    first, second = scene_pair(256)
    paths = {
        "before": write_geotiff(folder / "before.tif", first), "after": write_geotiff(folder / "after.tif", second),
    }
    paths["after_4326"] = folder / "after_4326.tif"
    gdal.Warp(str(paths["after_4326"]), str(paths["after"]), dstSRS="EPSG:4326", xRes=1.6e-5, yRes=1.6e-5)
    paths["before16"] = write_geotiff(folder / "b16.tif", sixteen_bit(1, np.s_[:20, :30]), nodata=0)
    paths["after16"] = write_geotiff(
        folder / "a16.tif", sixteen_bit(2, np.s_[150:, 100:]), transform=(431003.3, 1.3, 0, 4829002.1, 0, -1.3),
        nodata=0,
    )
    return paths


CASES = {
    "8-bit, overlap in %": ("before", "after", {"tile_size": 96, "overlap": "10%"}),
    "8-bit, bounds, resampled to 2 m": ("before", "after", {"tile_size": 64, "resolution": 2.0,
                                                             "bounds": [431010, 4828800, 431150, 4828990]}),
    "AFTER in EPSG:4326, warped": ("before", "after_4326", {"tile_size": 96}),
    "16-bit, 4 bands, nodata, stretch, AFTER on another grid": ("before16", "after16", {"tile_size": 64}),
    "16-bit, bands 4,2,1, fixed range": ("before16", "after16", {"tile_size": 64, "bands": [4, 2, 1],
                                                                  "value_range": [200, 3000]}),
}


@pytest.mark.parametrize("case", CASES)
def test_plugin_tiles_are_pixel_identical_to_caption_regions(case: str, inputs: dict[str, Path], tmp_path: Path):
    before, after, options = CASES[case]
    expected = command_tiles(inputs[before], inputs[after], tmp_path / "command.npz", options)
    produced = plugin_tiles(inputs[before], inputs[after], options)
    assert sorted(produced) == sorted(expected.files)
    for key in expected.files:
        assert produced[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(produced[key], expected[key], err_msg=key)
