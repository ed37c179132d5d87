"""The processing area as the bundled tiler takes it: polygons (rings of (x, y)) in the BEFORE raster's CRS."""

from __future__ import annotations

from collections.abc import Iterable

from qgis.core import (
    Qgis, QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsCoordinateTransformContext, QgsGeometry,
    QgsRectangle, QgsWkbTypes,
)

from .errors import CaptionRunError
from .shared_modules import grid as tiling

#: Points added along each side of a rectangle before it is reprojected, so that its edges may bend.
RECTANGLE_DENSIFY = 16


def polygons_in_crs(
    geometries: Iterable[QgsGeometry], source: QgsCoordinateReferenceSystem, target: QgsCoordinateReferenceSystem,
    context: QgsCoordinateTransformContext, what: str,
) -> tuple[tiling.Polygon, ...]:
    """The polygons (and multipolygon parts) of ``geometries``, reprojected; other geometry types are ignored."""
    transform = QgsCoordinateTransform(source, target, context)
    polygons: list[tiling.Polygon] = []
    for original in geometries:
        geometry = QgsGeometry(original)
        if geometry.isEmpty() or geometry.type() != QgsWkbTypes.PolygonGeometry:
            continue
        if QgsWkbTypes.isCurvedType(geometry.wkbType()):
            geometry.convertToStraightSegment()
        if geometry.transform(transform) != Qgis.GeometryOperationResult.Success:
            raise CaptionRunError(f"{what} cannot be transformed to the BEFORE raster's CRS ({target.authid()})")
        parts = geometry.asMultiPolygon() if geometry.isMultipart() else [geometry.asPolygon()]
        polygons.extend(tuple(tuple((p.x(), p.y()) for p in ring) for ring in part) for part in parts)
    if not polygons:
        raise CaptionRunError(f"{what} holds no polygon: choose a polygon layer with features (or other features)")
    return tuple(polygons)


def rectangle_in_crs(
    rectangle: QgsRectangle, source: QgsCoordinateReferenceSystem, target: QgsCoordinateReferenceSystem,
    context: QgsCoordinateTransformContext, what: str,
) -> tuple[tiling.Polygon, ...]:
    """A rectangle (map extent, drawn box) as a polygon in ``target`` (a quadrilateral with bent sides if need be)."""
    if rectangle.isEmpty():
        raise CaptionRunError(f"{what} is empty")
    outline = QgsGeometry.fromRect(rectangle).densifyByCount(RECTANGLE_DENSIFY)
    return polygons_in_crs([outline], source, target, context, what)
