"""The change-map hook: a tile's boolean change map becomes polygons in the raster's CRS."""

from __future__ import annotations

import numpy as np
import pytest

from ccexpert_core.geo.changes import change_polygons, tile_changes
from ccexpert_core.geo.grid import Tile
from ccexpert_core.geo.pixels import change_map_mask

GT = (431000.0, 0.5, 0.0, 4829000.0, 0.0, -0.5)


def ring_area(ring) -> float:
    xs, ys = np.asarray(ring).T
    return abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2


def test_two_blobs_become_two_polygons_where_they_are() -> None:
    tile = Tile(1, 2, x=200, y=100, width=64, height=64)
    mask = np.zeros((64, 64), bool)
    mask[4:14, 10:30] = True  # 10 × 20 px
    mask[40:60, 40:44] = True  # 20 × 4 px
    polygons = sorted(change_polygons(mask, GT, tile), key=lambda p: ring_area(p[0]), reverse=True)
    assert len(polygons) == 2
    assert [ring_area(p[0]) for p in polygons] == pytest.approx([200 * 0.25, 80 * 0.25])
    xs, ys = np.asarray(polygons[0][0]).T
    assert xs.min() == 431000 + (200 + 10) * 0.5 and ys.max() == 4829000 - (100 + 4) * 0.5


def test_no_change_gives_no_polygon_and_a_wrong_shape_is_refused() -> None:
    tile = Tile(0, 0, 0, 0, 8, 8)
    assert change_polygons(np.zeros((8, 8), bool), GT, tile) == []
    with pytest.raises(ValueError):
        change_polygons(np.zeros((4, 8), bool), GT, tile)


def test_a_change_map_is_stretched_over_its_tile() -> None:
    change_map = ((0.9, 0.1, 0.1), (0.1, 0.1, 0.1), (0.1, 0.1, 0.6))
    mask = change_map_mask(change_map, 60, 30)
    assert mask.shape == (60, 30)
    assert mask[:20, :10].all() and mask[40:, 20:].all() and mask.sum() == 2 * 20 * 10
    polygons = tile_changes(change_map, GT, Tile(0, 0, 0, 0, 30, 60))
    assert sorted(ring_area(p[0]) for p in polygons) == pytest.approx([50.0, 50.0])
