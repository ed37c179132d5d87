"""Area geometry on shapely (GEOS): GeoJSON polygons parsed and checked, brought into the rasters' CRS, invalid ones
repaired or refused, and the tile predicate that :class:`~ccexpert_core.geo.grid.Area` takes (a prepared
``intersects`` over arrays of tile footprints).

The repair rule (the README's caption-region section tells users; the plugin's ``area.py`` applies the same rule
with QgsGeometry, and ``tests/area_cases.json`` holds both to it):

- a valid polygon is taken as it is; polygons may overlap each other, the area is their union;
- an invalid one (a bow-tie, a ring that crosses itself, a hole outside its exterior…) is repaired by GEOS
  ``make_valid`` (its "linework" method, which QgsGeometry.makeValid follows too), keeping the polygons of the
  result and dropping the lines and points a collapse leaves, and a note says so;
- it is refused where the repair would change what it means: nothing with an area is left, or the repaired polygon
  differs from "its exterior minus its holes" (each ring repaired on its own) by more than
  :data:`MAX_REPAIR_CHANGE` of that — make_valid turns a hole outside the exterior, or where holes overlap, into area.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import shapely
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.warp import transform
from shapely.geometry.base import BaseGeometry

from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo.grid import Area
from ccexpert_core.geo.raster import crs_name

Log = Callable[[str], None]
#: A repair may change what an invalid polygon covers by at most this share of "its exterior minus its holes".
MAX_REPAIR_CHANGE = 0.01
#: GEOS's validity reasons end with the place, e.g. "Self-intersection[431005 4828995]".
_REASON = re.compile(r"^(?P<what>.*?)\s*\[(?P<x>\S+) (?P<y>\S+)\]$")


def geojson_polygons(geometry: Mapping[str, object], name: str) -> list[tuple[str, shapely.Polygon]]:
    """The polygons of a GeoJSON Polygon or MultiPolygon, each named for messages (``name``, or ``name, polygon 2``
    for the parts of a MultiPolygon); empty ones are left out, as RFC 7946 allows.

    Raises :class:`CCExpertError` for coordinates that are not rings of at least three finite ``[x, y]`` numbers.
    """
    coordinates = geometry.get("coordinates")
    if geometry.get("type") == "Polygon":
        parts, names = [coordinates], [name]
    else:
        if not isinstance(coordinates, list):
            raise CCExpertError(
                f"{name}: a MultiPolygon's coordinates must be a list of polygons, not {json_excerpt(coordinates)}"
            )
        parts = coordinates
        names = [f"{name}, polygon {k}" if len(parts) > 1 else name for k in range(1, len(parts) + 1)]
    polygons = []
    for part, part_name in zip(parts, names):
        if not isinstance(part, list):
            raise CCExpertError(
                f"{part_name}: a Polygon's coordinates must be a list of rings, not {json_excerpt(part)}"
            )
        if part:
            rings = [_ring(ring, f"{part_name}, ring {i}") for i, ring in enumerate(part, 1)]
            polygons.append((part_name, shapely.Polygon(rings[0], rings[1:])))
    return polygons


def _ring(ring: Any, where: str) -> np.ndarray:
    if not isinstance(ring, list):
        raise CCExpertError(f"{where}: a ring must be a list of [x, y] positions, not {json_excerpt(ring)}")
    for j, position in enumerate(ring, 1):
        if not isinstance(position, list) or len(position) < 2:
            raise CCExpertError(f"{where}, position {j}: a position must be [x, y], not {json_excerpt(position)}")
        for value in position[:2]:
            # bool is an int to Python, and json reads NaN and Infinity: none of them is a coordinate.
            if type(value) not in (int, float) or not math.isfinite(value):
                raise CCExpertError(
                    f"{where}, position {j}: coordinates must be finite numbers, not {json_excerpt(value)}"
                )
    points = np.array([position[:2] for position in ring], dtype=np.float64)
    closed = len(points) > 1 and bool((points[0] == points[-1]).all())
    if len(points) - closed < 3:
        raise CCExpertError(
            f"{where} has {len(points)} position{'s' * (len(points) != 1)}: a ring needs at least 4 "
            "(three corners and the first again)"
        )
    return points


def to_crs(polygon: shapely.Polygon, source: CRS, target: CRS, name: str, source_name: str) -> shapely.Polygon:
    """``polygon`` (in ``source``, called ``source_name`` in messages) in ``target``; raises
    :class:`CCExpertError` where its coordinates cannot be in ``source`` or PROJ cannot place them in ``target``."""
    if source == target:
        return polygon
    points = shapely.get_coordinates(polygon)
    if source.is_geographic:
        outside = (np.abs(points[:, 0]) > 360) | (np.abs(points[:, 1]) > 90)
        if outside.any():
            x, y = points[np.argmax(outside)]
            raise CCExpertError(
                f"{name} has coordinates such as ({x:.12g}, {y:.12g}), which are not longitude, latitude, yet its CRS "
                f"is {source_name}: name the file's CRS in a crs member, or reproject it (ogr2ogr -t_srs EPSG:4326)"
            )

    def project(xy: np.ndarray) -> np.ndarray:
        xs, ys = transform(source, target, xy[:, 0], xy[:, 1])
        return np.column_stack([xs, ys])

    try:
        moved = shapely.transform(polygon, project)
    except CPLE_BaseError as error:  # PROJ's refusals, as rasterio raises GDAL errors (no public alias)
        raise CCExpertError(
            f"{name} lies outside where the rasters' CRS ({crs_name(target)}) is defined: PROJ says {error}"
        ) from None
    if not np.isfinite(shapely.get_coordinates(moved)).all():
        raise CCExpertError(f"{name} lies outside where the rasters' CRS ({crs_name(target)}) is defined")
    return moved


def checked_polygon(polygon: shapely.Polygon, name: str, log: Log) -> BaseGeometry:
    """``polygon`` if it is valid; else its repair by ``make_valid`` (noted through ``log``), or
    :class:`CCExpertError` where the repair would change what it means (see the module's docstring)."""
    if polygon.is_valid:
        return polygon
    reason = validity_reason(shapely.is_valid_reason(polygon))
    repaired = _repaired(polygon)
    if repaired.area == 0:
        raise CCExpertError(
            f"{name} is not a valid polygon ({reason}) and has no area left once repaired: fix it, or leave it out"
        )
    # What the polygon means: its exterior minus its holes, each ring repaired on its own.
    holes = shapely.union_all([_repaired(shapely.Polygon(ring)) for ring in polygon.interiors])
    expected = _repaired(shapely.Polygon(polygon.exterior)).difference(holes)
    changed = repaired.symmetric_difference(expected).area
    if changed > MAX_REPAIR_CHANGE * expected.area:
        share = f"{changed / expected.area:.0%} of it" if expected.area else "all of it"
        raise CCExpertError(
            f"{name} is not a valid polygon ({reason}), and repairing it would change what it covers by {share} "
            "(a hole outside its exterior, or holes that overlap, would become area): fix it in a GIS"
        )
    count = len(_polygons(repaired))
    log(f"warning: {name} is not a valid polygon ({reason}); it was repaired (make_valid) into {count} "
        f"polygon{'s' * (count != 1)}")
    return repaired


def validity_reason(reason: str) -> str:
    """GEOS's reason, e.g. ``Self-intersection[5 5]``, as a message says it: ``self-intersection at (5, 5)``."""
    match = _REASON.match(reason)
    if match is None:
        return reason[:1].lower() + reason[1:]
    what = match["what"][:1].lower() + match["what"][1:]
    return f"{what} at ({float(match['x']):.12g}, {float(match['y']):.12g})"


def _repaired(polygon: shapely.Polygon) -> BaseGeometry:
    """make_valid's polygons, without the lines and points that collapsed parts leave."""
    return shapely.union_all(_polygons(shapely.make_valid(polygon, method="linework")))


def _polygons(geometry: BaseGeometry) -> list[shapely.Polygon]:
    if isinstance(geometry, shapely.Polygon):
        return [] if geometry.is_empty else [geometry]
    if isinstance(geometry, (shapely.MultiPolygon, shapely.GeometryCollection)):
        return [polygon for part in geometry.geoms for polygon in _polygons(part)]
    return []


def area_from_polygons(polygons: Sequence[tuple[str, shapely.Polygon]], log: Log) -> Area:
    """The union of named polygons (in the rasters' CRS) as the tiler takes it: its bounds and a prepared GEOS
    ``intersects`` over all tile footprints at once. Invalid polygons are repaired or refused by
    :func:`checked_polygon`."""
    union = shapely.union_all([checked_polygon(polygon, name, log) for name, polygon in polygons])
    if union.is_empty:
        raise CCExpertError("the area has no polygon")
    shapely.prepare(union)

    def intersects(corners: np.ndarray) -> np.ndarray:
        rings = np.concatenate([corners, corners[:, :1]], axis=1)
        return np.asarray(shapely.intersects(union, shapely.polygons(rings)))  # one per ring: an array

    xmin, ymin, xmax, ymax = (float(v) for v in union.bounds)
    return Area((xmin, ymin, xmax, ymax), intersects)


def json_excerpt(value: object) -> str:
    """A JSON value as a message quotes it, cut short (the file may be large)."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
