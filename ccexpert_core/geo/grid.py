"""The tile grid over an area of a raster: pixel windows, stable ids and geo-footprints of the tiles, and the run
options that a resumed run must match.

Pure Python + numpy, with no import from the rest of the package: the QGIS plugin bundles this file as it is
(no GDAL, rasterio or shapely there). Errors are ``ValueError`` with a message meant for a user.

Conventions:

- A geotransform is GDAL's 6-tuple ``(x0, pixel_width, row_rotation, y0, column_rotation, pixel_height)``:
  the pixel corner ``(col, row)`` lies at ``x = x0 + col*gt[1] + row*gt[2]``, ``y = y0 + col*gt[4] + row*gt[5]``.
- Areas are in the raster's CRS: bounds ``(xmin, ymin, xmax, ymax)`` or polygons, each a list of rings
  (the exterior first, then holes), each ring a sequence of ``(x, y)`` points (closed or not).
- Tiles are cut from the raster's pixel (0, 0), whatever the area, so a tile's id ``r{row}_c{col}`` names the
  same pixels for a given raster, tile size and overlap: a rerun with a larger area resumes cleanly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

GeoTransform = tuple[float, float, float, float, float, float]
Point = tuple[float, float]
Ring = Sequence[Point]
Polygon = Sequence[Ring]
Bounds = tuple[float, float, float, float]

#: Tiles are shrunk by this many pixels before the intersection test, so that a tile that only touches the
#: area along an edge (e.g. the next column when the area ends exactly on a tile border) is not selected.
_TOUCH_TOLERANCE_PX = 1e-6


def parse_overlap(text: str | int, tile_size: int) -> int:
    """Overlap in pixels from ``"32"`` (pixels) or ``"10%"`` (of the tile size); 0 ≤ overlap < tile size."""
    raw = str(text).strip()
    try:
        overlap = round(tile_size * float(raw[:-1]) / 100) if raw.endswith("%") else int(raw)
    except ValueError:
        raise ValueError(f"overlap must be pixels (e.g. 32) or a percentage (e.g. 10%), not '{text}'") from None
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be at least 0 and less than the tile size ({tile_size} px), not {overlap} px")
    return overlap


def pixel_to_geo(transform: GeoTransform, col: float, row: float) -> Point:
    """Geo coordinates of the pixel-space point ``(col, row)`` (pixel corners are integers)."""
    x0, a, b, y0, d, e = transform
    return x0 + col * a + row * b, y0 + col * d + row * e


def invert_transform(transform: GeoTransform) -> GeoTransform:
    """The inverse geotransform: used like a geotransform, it maps ``(x, y)`` to ``(col, row)``."""
    x0, a, b, y0, d, e = transform
    det = a * e - b * d
    if det == 0:
        raise ValueError(f"the geotransform {transform} cannot be inverted (a pixel has no area)")
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return -(x0 * ia + y0 * ib), ia, ib, -(x0 * id_ + y0 * ie), id_, ie


class Area:
    """A region of interest: one or more polygons (with holes), or plain bounds.

    A point is in the area when it is inside any polygon (even-odd rule within a polygon, so holes are
    excluded); polygons may overlap each other.
    """

    def __init__(self, polygons: Iterable[Polygon]) -> None:
        edge_arrays = []
        for polygon in polygons:
            edges = [e for e in (_ring_edges(ring) for ring in polygon) if len(e)]
            if edges:
                edge_arrays.append(np.concatenate(edges))
        if not edge_arrays:
            raise ValueError("the area has no polygon with at least three points")
        self._set_edges(edge_arrays)

    def _set_edges(self, edge_arrays: list[np.ndarray]) -> None:
        # One (E, 4) array of edges (x0, y0, x1, y1) per polygon, every ring closed: the even-odd test needs
        # only edges, so rings need not be kept apart.
        self._polygons = edge_arrays
        self._edges = np.concatenate(edge_arrays)

    @classmethod
    def from_bounds(cls, bounds: Bounds) -> "Area":
        """The rectangle ``(xmin, ymin, xmax, ymax)``."""
        xmin, ymin, xmax, ymax = (float(v) for v in bounds)
        if not (xmin < xmax and ymin < ymax):
            raise ValueError(f"bounds must be XMIN,YMIN,XMAX,YMAX with XMIN < XMAX and YMIN < YMAX, not {bounds}")
        return cls([[[(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax)]]])

    @property
    def bounds(self) -> Bounds:
        """``(xmin, ymin, xmax, ymax)`` of all polygons."""
        xs, ys = self._edges[:, 0], self._edges[:, 1]
        return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())

    def transformed(self, transform: GeoTransform) -> "Area":
        """The same area with every point mapped through an affine ``transform`` (GDAL order)."""
        x0, a, b, y0, d, e = transform
        mapped = []
        for edges in self._polygons:
            xs, ys = edges[:, 0::2], edges[:, 1::2]
            out = np.empty_like(edges)
            out[:, 0::2], out[:, 1::2] = x0 + xs * a + ys * b, y0 + xs * d + ys * e
            mapped.append(out)
        area = Area.__new__(Area)
        area._set_edges(mapped)
        return area

    def contains(self, x: float, y: float) -> bool:
        """True when the point is strictly inside a polygon (points on a boundary may go either way)."""
        return any(_crossings(edges, x, y) % 2 == 1 for edges in self._polygons)

    def intersects_box(self, box: Bounds) -> bool:
        """True when the box ``(xmin, ymin, xmax, ymax)`` and the area share a point.

        Either a polygon edge passes through the box, or the box lies wholly inside or outside the area, which
        its centre then tells.
        """
        xmin, ymin, xmax, ymax = box
        if _edges_hit_box(self._edges, box):
            return True
        return self.contains((xmin + xmax) / 2, (ymin + ymax) / 2)


def _ring_edges(ring: Ring) -> np.ndarray:
    points = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
    if len(points) > 1 and np.array_equal(points[0], points[-1]):
        points = points[:-1]
    if len(points) < 3:
        return np.empty((0, 4))
    return np.hstack([points, np.roll(points, -1, axis=0)])


def _crossings(edges: np.ndarray, x: float, y: float) -> int:
    """How many edges a ray from (x, y) towards +x crosses (the even-odd rule)."""
    x0, y0, x1, y1 = edges.T
    straddles = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at_y = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return int(np.count_nonzero(straddles & (x_at_y > x)))


def _edges_hit_box(edges: np.ndarray, box: Bounds) -> bool:
    """True when any segment meets the closed box (Liang–Barsky clipping, all segments at once)."""
    xmin, ymin, xmax, ymax = box
    x0, y0, x1, y1 = edges.T
    dx, dy = x1 - x0, y1 - y0
    t_enter, t_leave = np.zeros(len(edges)), np.ones(len(edges))
    missed = np.zeros(len(edges), dtype=bool)
    for p, q in ((-dx, x0 - xmin), (dx, xmax - x0), (-dy, y0 - ymin), (dy, ymax - y0)):
        missed |= (p == 0) & (q < 0)  # parallel to this side and outside it
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = q / p
        t_enter = np.where(p < 0, np.maximum(t_enter, ratio), t_enter)
        t_leave = np.where(p > 0, np.minimum(t_leave, ratio), t_leave)
    return bool(np.any(~missed & (t_enter <= t_leave)))


@dataclass(frozen=True)
class Tile:
    """One tile: its place in the grid (row, col) and its pixel window (x, y, width, height)."""

    row: int
    col: int
    x: int
    y: int
    width: int
    height: int

    @property
    def tile_id(self) -> str:
        """A stable name, ``r{row}_c{col}``."""
        return f"r{self.row}_c{self.col}"


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride`` pixels, the last one shifted inward to end at ``size``."""
    if size <= tile:
        return [0]
    count = math.ceil((size - tile) / stride) + 1
    return [min(i * stride, size - tile) for i in range(count)]


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``tile_size`` pixels, ``overlap`` pixels apart, over a ``width`` × ``height`` raster.

    Tiles keep their full size (edge tiles are shifted inward rather than padded); a raster smaller than a tile
    along an axis gets one tile of the raster's size along it.
    """

    width: int
    height: int
    transform: GeoTransform
    tile_size: int = 384
    overlap: int = 0

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"the raster has no pixels ({self.width} × {self.height})")
        if self.tile_size < 1:
            raise ValueError(f"the tile size must be at least 1 pixel, not {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(f"overlap must be at least 0 and less than the tile size, not {self.overlap}")

    def tiles(self, area: Area | None = None) -> list[Tile]:
        """The tiles that share some area with ``area`` (in the raster's CRS), row by row; all tiles if None."""
        stride = self.tile_size - self.overlap
        cols = _tile_starts(self.width, self.tile_size, stride)
        rows = _tile_starts(self.height, self.tile_size, stride)
        tile_w, tile_h = min(self.tile_size, self.width), min(self.tile_size, self.height)
        pixel_area = None if area is None else area.transformed(invert_transform(self.transform))
        if pixel_area is not None:
            px0, py0, px1, py1 = pixel_area.bounds
            cols_in = [c for c, x in enumerate(cols) if x < px1 and x + tile_w > px0]
            rows_in = [r for r, y in enumerate(rows) if y < py1 and y + tile_h > py0]
        else:
            cols_in, rows_in = list(range(len(cols))), list(range(len(rows)))
        tiles = []
        for r in rows_in:
            for c in cols_in:
                tile = Tile(r, c, cols[c], rows[r], tile_w, tile_h)
                if pixel_area is None or pixel_area.intersects_box(_shrunk_window(tile)):
                    tiles.append(tile)
        return tiles

    def footprint(self, tile: Tile) -> list[Point]:
        """The tile's outline in the raster's CRS: a closed ring of five points (exact for rotated rasters)."""
        corners = [(0, 0), (tile.width, 0), (tile.width, tile.height), (0, tile.height), (0, 0)]
        return [pixel_to_geo(self.transform, tile.x + dx, tile.y + dy) for dx, dy in corners]

    def bounds(self, tile: Tile) -> Bounds:
        """The tile's ``(xmin, ymin, xmax, ymax)`` in the raster's CRS."""
        xs, ys = zip(*self.footprint(tile))
        return min(xs), min(ys), max(xs), max(ys)

    @property
    def raster_bounds(self) -> Bounds:
        """The whole raster's ``(xmin, ymin, xmax, ymax)``."""
        whole = Tile(0, 0, 0, 0, self.width, self.height)
        return self.bounds(whole)


def tiles_window(tiles: Sequence[Tile]) -> tuple[int, int, int, int]:
    """The pixel window ``(x, y, width, height)`` that holds all ``tiles``."""
    x0, y0 = min(t.x for t in tiles), min(t.y for t in tiles)
    x1, y1 = max(t.x + t.width for t in tiles), max(t.y + t.height for t in tiles)
    return x0, y0, x1 - x0, y1 - y0


def run_options(
    grid: TileGrid,
    crs: str,
    bands: Sequence[int],
    value_range: tuple[float, float] | None,
    max_nodata: float,
    before_source: str,
    after_source: str,
    model_id: str,
) -> dict[str, str]:
    """What decides a tile's pixels and caption, as an output stores it: a rerun with other values must not resume
    that output. ``caption-region`` and the plugin word it the same, so that each resumes the other's output."""
    return {
        "crs": crs,
        "geotransform": ",".join(f"{v:.12g}" for v in grid.transform),
        "size": f"{grid.width}x{grid.height}",
        "tile_size": str(grid.tile_size),
        "overlap_px": str(grid.overlap),
        "bands": ",".join(map(str, bands)),
        # The default stretch's name as outputs already store it (pixels.STRETCH_PERCENTILES is that stretch).
        "value_range": "stretch 2-98%" if value_range is None else ",".join(map(str, value_range)),
        "max_nodata": f"{max_nodata:g}",
        "before_source": before_source,
        "after_source": after_source,
        "model_id": model_id,
    }


def _shrunk_window(tile: Tile) -> Bounds:
    e = _TOUCH_TOLERANCE_PX
    return tile.x + e, tile.y + e, tile.x + tile.width - e, tile.y + tile.height - e
