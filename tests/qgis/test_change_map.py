"""The changes layer's polygons: the plugin's GDAL Polygonize gives the command's (rasterio's) polygons for the same
change maps, on tiles anywhere in a raster, cells covering uneven shares of pixels, holes included."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from qgis_plugin.change_map import tile_changes
from qgis_plugin.shared_modules import grid as tiling
from qgis_plugin.shared_modules import pixels

from conftest import VENV_PYTHON, require_project_venv

CORE = Path(__file__).with_name("core_changes.py")


def _ring(points) -> tuple:
    """A ring as its vertices from the lowest, counterclockwise (the tools may wind holes either way)."""
    vertices = [(round(x, 6), round(y, 6)) for x, y in points[:-1]]
    start = vertices.index(min(vertices))
    vertices = vertices[start:] + vertices[:start]
    doubled_area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(vertices, vertices[1:] + vertices[:1]))
    return tuple(vertices if doubled_area > 0 else vertices[:1] + vertices[1:][::-1])


def _normalised(polygons) -> list:
    """Polygons as sorted normalised rings: the same places, whatever the order and winding."""
    return sorted((_ring(polygon[0]), tuple(sorted(_ring(hole) for hole in polygon[1:]))) for polygon in polygons)


def test_gdal_polygonize_gives_the_commands_polygons(qgis_app) -> None:
    require_project_venv()
    rng = np.random.default_rng(7)
    ring = np.zeros((12, 12))
    ring[2:9, 2:9], ring[4:7, 4:7] = 0.9, 0.1  # a changed square with an unchanged hole
    cases = [
        {"change_map": ring.tolist(), "transform": [431000.0, 0.5, 0.0, 4829000.0, 0.0, -0.5],
         "tile": [1, 2, 768, 384, 384, 384]},
        {"change_map": rng.random((12, 12)).round(4).tolist(), "transform": [500.0, 2.0, 0.0, 900.0, 0.0, -2.0],
         "tile": [0, 0, 0, 0, 384, 384]},
        {"change_map": rng.random((7, 7)).round(4).tolist(), "transform": [10.0, 1.0, 0.0, 20.0, 0.0, -1.5],
         "tile": [3, 1, 100, 300, 250, 190]},  # cells over uneven pixel counts, an edge tile
        {"change_map": np.zeros((12, 12)).tolist(), "transform": [0.0, 1.0, 0.0, 0.0, 0.0, -1.0],
         "tile": [0, 0, 0, 0, 384, 384]},
    ]
    command = subprocess.run([str(VENV_PYTHON), str(CORE), json.dumps(cases)], check=True, capture_output=True,
                             text=True)
    expected = json.loads(command.stdout)
    for case, theirs in zip(cases, expected):
        ours = tile_changes(case["change_map"], tuple(case["transform"]), tiling.Tile(*case["tile"]))
        assert _normalised(ours) == _normalised(theirs)
    assert len(expected[0]) == 1 and len(expected[0][0]) == 2  # the square and its hole
    assert expected[-1] == []  # no change, no polygon


def test_the_mask_stretches_each_cell_over_its_share_of_the_tile() -> None:
    mask = pixels.change_map_mask([[0.9, 0.1], [0.2, 0.6]], 5, 3)
    assert mask.shape == (5, 3)
    assert mask.tolist() == [[True, True, False], [True, True, False], [True, True, False], [False, False, True],
                             [False, False, True]]
