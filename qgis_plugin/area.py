"""The processing area: polygons (rings of (x, y)) in the BEFORE raster's CRS, resolved on the main thread, and the
area the bundled tiler takes (bounds and a prepared GEOS predicate), built in the run's thread.

Invalid polygons are repaired or refused by the core's rule (``ccexpert_core/geo/area.py``; the README's
caption-region section): QgsGeometry.makeValid, which follows GEOS's "linework" repair as shapely's make_valid
does, keeping the polygons of the result; refused where nothing with an area is left, or where the repair differs
from "the exterior minus the holes" by more than :data:`MAX_REPAIR_CHANGE` of that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsCurvePolygon,
    QgsGeometry,
    QgsLineString,
    QgsMultiSurface,
    QgsPointXY,
    QgsPolygon,
    QgsRectangle,
    QgsWkbTypes,
)

from .errors import CaptionRunError
from .shared_modules import grid as tiling

#: Points added along each side of a rectangle before it is reprojected, so that its edges may bend.
RECTANGLE_DENSIFY = 16
#: A repair may change what an invalid polygon covers by at most this share (the core's MAX_REPAIR_CHANGE).
MAX_REPAIR_CHANGE = 0.01
#: Footprints the predicate answers together where their bounding box is inside or outside the area, and the
#: size of run below which it tests them one by one.
_RUN, _SMALL_RUN = 64, 4


def polygons_in_crs(
    geometries: Iterable[QgsGeometry], source: QgsCoordinateReferenceSystem, target: QgsCoordinateReferenceSystem,
    context: QgsCoordinateTransformContext, what: str,
) -> tuple[tiling.Polygon, ...]:
    """The polygons (and multipolygon parts) of ``geometries``, reprojected; other geometry types are ignored."""
    if not source.isValid():
        raise CaptionRunError(
            f"{what} has no CRS, so its polygons cannot be placed on the rasters: set it (Layer Properties › Source)"
        )
    transform = QgsCoordinateTransform(source, target, context)
    polygons: list[tiling.Polygon] = []
    for original in geometries:
        geometry = QgsGeometry(original)
        if geometry.isEmpty() or not _polygonal(geometry):
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


def tile_area(polygons: Sequence[tiling.Polygon], log: Callable[[str], None]) -> tiling.Area:
    """The union of ``polygons`` (in the raster's CRS) as the tiler takes it; invalid ones are repaired with a note
    through ``log``, or refused (:class:`CaptionRunError`) where the repair would change what they mean."""
    checked = [_checked(_polygon(rings), f"polygon {i} of the area", log) for i, rings in enumerate(polygons, 1)]
    union = QgsGeometry.unaryUnion(checked)
    if union.isEmpty():
        raise CaptionRunError("the area has no polygon")
    box = union.boundingBox()
    return tiling.Area((box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum()), _PreparedArea(union))


class _PreparedArea:
    """The tiler's predicate: a prepared GEOS engine's ``intersects``.

    QGIS has no call over arrays of geometries, so footprints go in runs (neighbours: the tiler gives them row by
    row): a run whose bounding box lies inside the area, or misses it, is answered at once; a run across the area's
    boundary is halved until its runs are small enough to test footprint by footprint.
    """

    def __init__(self, geometry: QgsGeometry) -> None:
        self._geometry = geometry  # the engine was made from this geometry's pointer: keep it alive with the engine
        engine = QgsGeometry.createGeometryEngine(geometry.constGet())
        if engine is None:  # only for a null geometry, which tile_area refuses before
            raise CaptionRunError("the area has no polygon")
        engine.prepareGeometry()
        self._engine = engine

    def __call__(self, corners: np.ndarray) -> np.ndarray:
        answers = np.zeros(len(corners), dtype=bool)
        for start in range(0, len(corners), _RUN):
            self._answer(corners, answers, start, min(start + _RUN, len(corners)))
        return answers

    def _answer(self, corners: np.ndarray, answers: np.ndarray, start: int, stop: int) -> None:
        run = corners[start:stop]
        if stop - start <= _SMALL_RUN:
            rings = np.concatenate([run, run[:, :1]], axis=1)
            xs, ys = rings[:, :, 0].tolist(), rings[:, :, 1].tolist()
            answers[start:stop] = [self._engine.intersects(QgsPolygon(QgsLineString(x, y))) for x, y in zip(xs, ys)]
            return
        (xmin, ymin), (xmax, ymax) = run.min(axis=(0, 1)), run.max(axis=(0, 1))
        box = QgsGeometry.fromRect(QgsRectangle(xmin, ymin, xmax, ymax))
        if self._engine.contains(box.constGet()):
            answers[start:stop] = True
        elif self._engine.intersects(box.constGet()):
            middle = (start + stop) // 2
            self._answer(corners, answers, start, middle)
            self._answer(corners, answers, middle, stop)


def _polygon(rings: tiling.Polygon) -> QgsGeometry:
    return QgsGeometry.fromPolygonXY([[QgsPointXY(x, y) for x, y in ring] for ring in rings])


def _checked(geometry: QgsGeometry, name: str, log: Callable[[str], None]) -> QgsGeometry:
    """``geometry`` if GEOS finds it valid, else its repair (noted) or CaptionRunError: the core's rule."""
    if geometry.isGeosValid():
        return geometry
    reason = _reason(geometry)
    repaired = _repaired(geometry)
    if _area(repaired) == 0:
        raise CaptionRunError(
            f"{name} is not a valid polygon ({reason}) and has no area left once repaired: fix it, or leave it out"
        )
    # What the polygon means: its exterior minus its holes, each ring repaired on its own.
    rings = [[(point.x(), point.y()) for point in ring] for ring in geometry.asPolygon()]
    holes = QgsGeometry.unaryUnion([_repaired(_polygon([ring])) for ring in rings[1:]])
    expected = _repaired(_polygon(rings[:1]))
    if not (holes.isEmpty() or expected.isEmpty()):
        expected = expected.difference(holes)
    changed = _area(repaired) if expected.isEmpty() else _area(repaired.symDifference(expected))
    if changed > MAX_REPAIR_CHANGE * _area(expected):
        share = f"{changed / _area(expected):.0%} of it" if _area(expected) else "all of it"
        raise CaptionRunError(
            f"{name} is not a valid polygon ({reason}), and repairing it would change what it covers by {share} "
            "(a hole outside its exterior, or holes that overlap, would become area): fix it in the layer"
        )
    count = len(repaired.asGeometryCollection())
    log(f"warning: {name} is not a valid polygon ({reason}); it was repaired (makeValid) into {count} "
        f"polygon{'s' * (count != 1)}")
    return repaired


def _reason(geometry: QgsGeometry) -> str:
    """What GEOS finds wrong first, as the core words it: ``self-intersection at (5, 5)``."""
    errors = geometry.validateGeometry(Qgis.GeometryValidationEngine.Geos)
    if not errors:
        return "GEOS finds it invalid"
    what = errors[0].what()
    what = what[:1].lower() + what[1:]
    if not errors[0].hasWhere():
        return what
    where = errors[0].where()
    return f"{what} at ({where.x():.12g}, {where.y():.12g})"


def _polygonal(geometry: QgsGeometry) -> bool:
    """A polygon or multipolygon (curved ones too), asked of the geometry's class: the same test in every QGIS
    (QgsWkbTypes.PolygonGeometry of 3.22 is Qgis.GeometryType.Polygon from 3.30 on)."""
    return isinstance(geometry.constGet(), (QgsCurvePolygon, QgsMultiSurface))


def _area(geometry: QgsGeometry) -> float:
    """The geometry's area, 0 for an empty one (QgsGeometry.area gives -1 for a null geometry)."""
    return 0.0 if geometry.isEmpty() else geometry.area()


def _repaired(geometry: QgsGeometry) -> QgsGeometry:
    """makeValid's polygons, without the lines and points that collapsed parts leave."""
    valid = geometry.makeValid()
    parts = [valid] if _polygonal(valid) else valid.asGeometryCollection()
    polygons = [part for part in parts if _polygonal(part) and not part.isEmpty()]
    return QgsGeometry.unaryUnion(polygons) if polygons else QgsGeometry()
