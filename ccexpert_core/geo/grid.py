"""The tile grid over an area of a raster: pixel windows, stable ids and geo-footprints of the tiles, and the run
options that a resumed run must match.

Pure Python + numpy, with no import from the rest of the package: the QGIS plugin bundles this file as it is
(no GDAL, rasterio or shapely there). Errors are ``ValueError`` with a message meant for a user.

Conventions:

- A geotransform is GDAL's 6-tuple ``(x0, pixel_width, row_rotation, y0, column_rotation, pixel_height)``:
  the pixel corner ``(col, row)`` lies at ``x = x0 + col*gt[1] + row*gt[2]``, ``y = y0 + col*gt[4] + row*gt[5]``.
- An :class:`Area` is in the raster's CRS: its bounds ``(xmin, ymin, xmax, ymax)`` and a predicate on tile
  footprints (:data:`TilePredicate`) from the caller's geometry library, so that no geometry is re-implemented here.
  Polygons travel as plain data (what the plugin hands its task thread): a list of rings (the exterior first, then
  holes), each ring a sequence of ``(x, y)`` points.
- Tiles are cut from the raster's pixel (0, 0), whatever the area, so a tile's id ``r{row}_c{col}`` names the
  same pixels for a given raster, tile size and overlap: a rerun with a larger area resumes cleanly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

GeoTransform = tuple[float, float, float, float, float, float]
Point = tuple[float, float]
Ring = Sequence[Point]
Polygon = Sequence[Ring]
Bounds = tuple[float, float, float, float]

#: Footprints are shrunk by this many pixels before the predicate sees them, so that a tile that only touches the
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


#: Which of N tiles meet an area: given their footprints in the raster's CRS, an (N, 4, 2) array of the corners
#: ``(x, y)``, ``(x + w, y)``, ``(x + w, y + h)``, ``(x, y + h)`` of each pixel window mapped to geo coordinates, it
#: returns N booleans, True where the footprint and the area share a point (GEOS ``intersects``). The tiler shrinks
#: each footprint by :data:`_TOUCH_TOLERANCE_PX` first, so that a tile that only touches the area is not selected.
TilePredicate = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Area:
    """A region of interest as the tiler takes it: its bounds in the raster's CRS and the predicate that says which
    tiles meet it.

    The geometry behind the predicate is the caller's (shapely in the core, QgsGeometry in the plugin: GEOS both);
    :meth:`from_bounds` is the one area this module builds itself.
    """

    bounds: Bounds
    intersects: TilePredicate

    def __post_init__(self) -> None:
        xmin, ymin, xmax, ymax = self.bounds
        if not all(math.isfinite(v) for v in self.bounds) or xmin > xmax or ymin > ymax:
            raise ValueError(f"the area's bounds must be finite XMIN,YMIN,XMAX,YMAX, not {self.bounds}")

    @classmethod
    def from_bounds(cls, bounds: Bounds) -> Area:
        """The rectangle ``(xmin, ymin, xmax, ymax)``."""
        xmin, ymin, xmax, ymax = (float(v) for v in bounds)
        if not (xmin < xmax and ymin < ymax):
            raise ValueError(f"bounds must be XMIN,YMIN,XMAX,YMAX with XMIN < XMAX and YMIN < YMAX, not {bounds}")
        rectangle = np.array([(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax)])

        def intersects(corners: np.ndarray) -> np.ndarray:
            # A footprint is a parallelogram (an affine image of a window): it and the rectangle are apart exactly
            # when their projections are apart on an axis of either, i.e. x, y or the normal of a footprint side.
            sides = np.stack([corners[:, 1] - corners[:, 0], corners[:, 3] - corners[:, 0]], axis=1)
            normals = np.concatenate(
                [np.broadcast_to(np.eye(2), (len(corners), 2, 2)), sides[..., ::-1] * (1.0, -1.0)], axis=1
            )
            tile = np.einsum("ncd,nad->nac", corners, normals)
            box = np.einsum("cd,nad->nac", rectangle, normals)
            apart = (tile.max(axis=2) < box.min(axis=2)) | (box.max(axis=2) < tile.min(axis=2))
            return ~apart.any(axis=1)

        return cls((xmin, ymin, xmax, ymax), intersects)


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


def _tiles_along(size: int, tile: int, stride: int, start: float, end: float) -> int:
    """At most how many tiles along one axis of ``size`` pixels meet the span ``start``..``end`` (pixels)."""
    span = max(0.0, min(float(size), end) - max(0.0, start))
    everywhere = 1 if size <= tile else math.ceil((size - tile) / stride) + 1
    return min(everywhere, math.ceil(span / stride) + 1)


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
        """The tiles that share some area with ``area`` (in the raster's CRS), row by row; all tiles if None.

        Only the tiles within the area's bounds reach its predicate, all in one call.
        """
        stride = self.tile_size - self.overlap
        cols = np.array(_tile_starts(self.width, self.tile_size, stride))
        rows = np.array(_tile_starts(self.height, self.tile_size, stride))
        tile_w, tile_h = min(self.tile_size, self.width), min(self.tile_size, self.height)
        cols_in, rows_in = np.arange(len(cols)), np.arange(len(rows))
        if area is not None:
            px0, py0, px1, py1 = self._pixel_bounds(area.bounds)
            cols_in = cols_in[(cols < px1) & (cols + tile_w > px0)]
            rows_in = rows_in[(rows < py1) & (rows + tile_h > py0)]
        r, c = (index.ravel() for index in np.meshgrid(rows_in, cols_in, indexing="ij"))
        if area is not None and len(r):
            e = _TOUCH_TOLERANCE_PX
            corners = self._corners(cols[c] + e, rows[r] + e, tile_w - 2 * e, tile_h - 2 * e)
            selected = np.asarray(area.intersects(corners), dtype=bool)
            if selected.shape != r.shape:
                raise ValueError(f"the area's predicate gave {selected.shape} answers for {len(r)} tiles")
            r, c = r[selected], c[selected]
        xs, ys = cols.tolist(), rows.tolist()
        return [Tile(row, col, xs[col], ys[row], tile_w, tile_h) for row, col in zip(r.tolist(), c.tolist())]

    def tiles_at_most(self, bounds: Bounds | None = None) -> int:
        """At most how many tiles meet ``bounds`` (in the raster's CRS; None: the whole raster), from arithmetic
        alone: cheap whatever the count, so an area can be refused before its tiles exist."""
        x0, y0, x1, y1 = (0.0, 0.0, float(self.width), float(self.height)) if bounds is None else (
            self._pixel_bounds(bounds))
        stride = self.tile_size - self.overlap
        return (_tiles_along(self.width, self.tile_size, stride, x0, x1)
                * _tiles_along(self.height, self.tile_size, stride, y0, y1))

    def _pixel_bounds(self, bounds: Bounds) -> Bounds:
        """``bounds`` (in the raster's CRS) as the pixel-space box that holds them."""
        xmin, ymin, xmax, ymax = bounds
        inverse = invert_transform(self.transform)
        cols, rows = zip(*(pixel_to_geo(inverse, x, y) for x in (xmin, xmax) for y in (ymin, ymax)))
        return min(cols), min(rows), max(cols), max(rows)

    def _corners(self, x: np.ndarray, y: np.ndarray, width: float, height: float) -> np.ndarray:
        """The (N, 4, 2) geo corners of N pixel windows, in :data:`TilePredicate`'s order."""
        x0, a, b, y0, d, e = self.transform
        cols = x[:, None] + np.array([0.0, width, width, 0.0])
        rows = y[:, None] + np.array([0.0, 0.0, height, height])
        return np.stack([x0 + cols * a + rows * b, y0 + cols * d + rows * e], axis=2)

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
