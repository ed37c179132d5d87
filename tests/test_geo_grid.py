"""The tile grid: coverage without gaps, stable ids, full-size edge tiles, areas as bounds or a caller's predicate
(polygon areas are tests/test_geo_area.py's)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ccexpert_core.geo.grid import (
    Area,
    Tile,
    TileGrid,
    invert_transform,
    parse_overlap,
    pixel_to_geo,
    tiles_window,
)

GT = (431000.0, 1.0, 0.0, 4829000.0, 0.0, -1.0)


def coverage(grid: TileGrid, tiles) -> np.ndarray:
    covered = np.zeros((grid.height, grid.width), dtype=int)
    for tile in tiles:
        covered[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width] += 1
    return covered


@pytest.mark.parametrize(
    "width, height, tile_size, overlap",
    [(1000, 700, 384, 0), (1000, 700, 384, 64), (385, 384, 384, 0), (97, 53, 32, 7), (1, 1, 16, 0), (100, 30, 64, 10)],
)
def test_grid_covers_the_raster_with_full_size_tiles(width: int, height: int, tile_size: int, overlap: int) -> None:
    grid = TileGrid(width, height, GT, tile_size, overlap)
    tiles = grid.tiles()
    assert coverage(grid, tiles).min() >= 1  # no gap
    for tile in tiles:
        assert (tile.width, tile.height) == (min(tile_size, width), min(tile_size, height))  # no padding
        assert 0 <= tile.x and tile.x + tile.width <= width and 0 <= tile.y and tile.y + tile.height <= height
    ids = [t.tile_id for t in tiles]
    assert len(set(ids)) == len(ids)
    assert ids == [t.tile_id for t in TileGrid(width, height, GT, tile_size, overlap).tiles()]  # deterministic
    # Neighbours overlap by the requested amount, except where an edge tile was shifted inward (more overlap).
    xs = sorted({t.x for t in tiles})
    assert all(b - a == tile_size - overlap for a, b in itertools.pairwise(xs[:-1]))


def test_ids_do_not_depend_on_the_area() -> None:
    grid = TileGrid(1000, 1000, GT, 256, 32)
    by_id = {t.tile_id: t for t in grid.tiles()}
    for tile in grid.tiles(Area.from_bounds((431300, 4828300, 431700, 4828700))):
        assert by_id[tile.tile_id] == tile


@pytest.mark.parametrize("bounds", [(431000, 4828000, 432000, 4829000), (431100.5, 4828250, 431690, 4828420)])
def test_bounds_area_is_covered_and_nothing_outside_is_taken(bounds) -> None:
    grid = TileGrid(1000, 1000, GT, 128, 16)
    area = Area.from_bounds(bounds)
    tiles = grid.tiles(area)
    covered = coverage(grid, tiles) > 0
    xmin, ymin, xmax, ymax = bounds
    col0, col1 = int(np.floor(xmin - GT[0])), int(np.ceil(xmax - GT[0]))
    row0, row1 = int(np.floor(GT[3] - ymax)), int(np.ceil(GT[3] - ymin))
    assert covered[row0:row1, col0:col1].all()
    for tile in set(grid.tiles()) - set(tiles):
        tx0, ty0, tx1, ty1 = grid.bounds(tile)
        assert tx1 <= xmin or tx0 >= xmax or ty1 <= ymin or ty0 >= ymax


def test_tiles_that_only_touch_the_area_are_left_out() -> None:
    grid = TileGrid(512, 512, GT, 128)
    # Exactly the first two tile columns and rows.
    area = Area.from_bounds((431000, 4829000 - 256, 431256, 4829000))
    assert sorted(t.tile_id for t in grid.tiles(area)) == ["r0_c0", "r0_c1", "r1_c0", "r1_c1"]


def test_the_predicate_gets_the_shrunk_footprints_of_the_tiles_within_the_bounds_at_once() -> None:
    grid = TileGrid(400, 300, GT, 100)
    calls: list[np.ndarray] = []

    def every_other(corners: np.ndarray) -> np.ndarray:
        calls.append(corners)
        return np.arange(len(corners)) % 2 == 0

    x0, y0 = GT[0], GT[3]
    tiles = grid.tiles(Area((x0 + 150, y0 - 250, x0 + 350, y0 - 50), every_other))
    (corners,) = calls
    # Columns 1..3 and rows 0..2 lie within the bounds, row by row; every other one is taken, in that order.
    assert corners.shape == (9, 4, 2)
    candidates = [(r, c) for r in range(3) for c in range(1, 4)]
    assert [(t.row, t.col) for t in tiles] == candidates[::2]
    # Corners (x, y), (x + w, y), (x + w, y + h), (x, y + h) of the pixel window, a millionth of a pixel inside.
    e = 1e-6
    expected = [(x0 + 100 + e, y0 - e), (x0 + 200 - e, y0 - e), (x0 + 200 - e, y0 - 100 + e),
                (x0 + 100 + e, y0 - 100 + e)]
    assert corners[0] == pytest.approx(np.array(expected), abs=1e-9)
    assert grid.tiles(Area((x0 + 500, y0 - 50, x0 + 600, y0), every_other)) == [] and len(calls) == 1  # none to ask


def test_a_predicate_must_answer_once_per_tile_and_bounds_must_be_finite() -> None:
    grid = TileGrid(300, 300, GT, 100)
    with pytest.raises(ValueError, match="predicate gave"):
        grid.tiles(Area(grid.raster_bounds, lambda corners: np.ones(len(corners) + 1, bool)))
    with pytest.raises(ValueError, match="finite"):
        Area((0.0, 0.0, float("nan"), 1.0), lambda corners: np.ones(len(corners), bool))


@pytest.mark.parametrize("degrees", [0, 30, 90, 161])
def test_bounds_on_a_rotated_raster_take_the_tiles_whose_interiors_meet_them(degrees: float) -> None:
    shapely = pytest.importorskip("shapely")
    angle = np.radians(degrees)
    gt = (1000.0, np.cos(angle), -np.sin(angle), 2000.0, np.sin(angle), np.cos(angle))
    grid = TileGrid(500, 400, gt, 64, 8)
    cx, cy = pixel_to_geo(gt, 230, 170)
    bounds = (cx - 100, cy - 75, cx + 100, cy + 75)
    rectangle = shapely.box(*bounds)
    # Independently: GEOS says where interiors meet ("T********"), on the exact footprints.
    expected = [t.tile_id for t in grid.tiles()
                if shapely.relate_pattern(rectangle, shapely.Polygon(grid.footprint(t)), "T********")]
    assert expected and [t.tile_id for t in grid.tiles(Area.from_bounds(bounds))] == expected


def test_rotated_geotransform_footprints() -> None:
    angle = np.radians(30)
    gt = (1000.0, np.cos(angle), -np.sin(angle), 2000.0, np.sin(angle), np.cos(angle))
    grid = TileGrid(200, 200, gt, 100)
    tile = grid.tiles()[3]
    ring = grid.footprint(tile)
    assert ring[0] == ring[-1] and len(ring) == 5
    inverse = invert_transform(gt)
    col, row = pixel_to_geo(inverse, *ring[2])
    assert (col, row) == pytest.approx((tile.x + tile.width, tile.y + tile.height))


def test_parse_overlap_and_bad_values() -> None:
    assert parse_overlap("32", 384) == 32
    assert parse_overlap("10%", 384) == 38
    assert parse_overlap(0, 384) == 0
    for bad in ("384", "100%", "-1", "abc"):
        with pytest.raises(ValueError):
            parse_overlap(bad, 384)
    with pytest.raises(ValueError):
        Area.from_bounds((1, 1, 0, 2))
    with pytest.raises(ValueError):
        TileGrid(10, 10, GT, 16, 16)


def test_tiles_window_holds_all_tiles() -> None:
    assert tiles_window([Tile(0, 1, 10, 0, 8, 8), Tile(1, 0, 2, 8, 8, 6)]) == (2, 0, 16, 14)


@pytest.mark.parametrize("module", ["grid", "pixels"])
def test_bundled_modules_import_only_numpy(module: str) -> None:
    """The plugin bundles these files as they are: nothing but the standard library and numpy."""
    import ast
    import importlib
    from pathlib import Path

    source = importlib.import_module(f"ccexpert_core.geo.{module}")
    tree = ast.parse(Path(source.__file__).read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported <= {"__future__", "math", "collections", "dataclasses", "numpy"}
