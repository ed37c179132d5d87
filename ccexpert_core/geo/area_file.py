"""Reading ``--area``: the polygons of a GeoJSON file, checked and brought into the rasters' CRS.

GeoJSON's coordinates are longitude/latitude (RFC 7946) unless the file has a ``crs`` member as GDAL and QGIS write
it for other CRSs, ``{"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32631"}}``. Other vector formats
convert with ``ogr2ogr -f GeoJSON area.geojson area.gpkg``. A file that is not such GeoJSON ends in one
:class:`CCExpertError` line that names the feature, ring and position at fault; the geometry rules are
:mod:`ccexpert_core.geo.area`'s.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shapely
from rasterio.crs import CRS
from rasterio.errors import CRSError

from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo.area import Log, area_from_polygons, geojson_polygons, json_excerpt, to_crs
from ccexpert_core.geo.grid import Area
from ccexpert_core.geo.raster import crs_name

#: RFC 7946's CRS: longitude, latitude on WGS 84.
GEOJSON_DEFAULT_CRS = "OGC:CRS84"
#: Geometries that hold no area: left out, with a note.
_NOT_AREAS = ("Point", "MultiPoint", "LineString", "MultiLineString")
_CRS_MEMBER = '{"type": "name", "properties": {"name": "EPSG:32631"}}'


@dataclass
class _Contents:
    """What a walk through the document found."""

    polygons: list[tuple[str, shapely.Polygon]] = field(default_factory=list)
    not_areas: Counter[str] = field(default_factory=Counter)
    empty: int = 0


def _walk(node: Any, where: str, found: _Contents) -> None:
    if not isinstance(node, dict):
        raise CCExpertError(f"{where} must be a GeoJSON object, not {json_excerpt(node)}")
    kind = node.get("type")
    if kind == "FeatureCollection":
        for i, feature in enumerate(_members(node, "features", where), 1):
            if not (isinstance(feature, dict) and feature.get("type") == "Feature"):
                raise CCExpertError(f"{where}, feature {i} is not a GeoJSON Feature: {json_excerpt(feature)}")
            _walk(feature, f"{where}, feature {i}", found)
    elif kind == "Feature":
        if node.get("geometry") is not None:  # null: a feature that is nowhere
            _walk(node["geometry"], where, found)
    elif kind == "GeometryCollection":
        for j, geometry in enumerate(_members(node, "geometries", where), 1):
            _walk(geometry, f"{where}, geometry {j}", found)
    elif kind in ("Polygon", "MultiPolygon"):
        polygons = geojson_polygons(node, where)
        found.polygons.extend(polygons)
        found.empty += not polygons
    elif kind in _NOT_AREAS:
        found.not_areas[kind] += 1
    else:
        raise CCExpertError(
            f"{where} has the type {json_excerpt(kind)}, which GeoJSON does not know (an area is Polygon or "
            "MultiPolygon geometries, alone or in a Feature, FeatureCollection or GeometryCollection)"
        )


def _members(node: dict[str, Any], key: str, where: str) -> list[Any]:
    members = node.get(key)
    if not isinstance(members, list):
        raise CCExpertError(f"{where}: a {node['type']}'s {key} must be a list, not {json_excerpt(members)}")
    return members


def _file_crs(document: dict[str, Any], path: Path) -> tuple[CRS, str]:
    """The file's CRS, and how messages name it."""
    member = document.get("crs")
    if member is None:
        return CRS.from_user_input(GEOJSON_DEFAULT_CRS), f"{GEOJSON_DEFAULT_CRS}, GeoJSON's default (no crs member)"
    properties = member.get("properties") if isinstance(member, dict) else None
    name = properties.get("name") if isinstance(properties, dict) else None
    if not (isinstance(member, dict) and member.get("type") == "name" and isinstance(name, str)):
        raise CCExpertError(
            f"the area file {path}: the crs member must be like {_CRS_MEMBER}, as GDAL and QGIS write it, not "
            f"{json_excerpt(member)}"
        )
    try:
        crs = CRS.from_user_input(name)
    except CRSError:
        raise CCExpertError(f"the area file {path} names a CRS that is not known: {name}") from None
    return crs, crs_name(crs)


def _counted(kinds: Counter[str]) -> str:
    return ", ".join(f"{count} {kind}{'s' * (count > 1)}" for kind, count in sorted(kinds.items()))


def _nothing_found(found: _Contents) -> str:
    if found.not_areas:
        return f": it holds only geometries without area ({_counted(found.not_areas)})"
    if found.empty:
        return ": its polygons are empty"
    return ": it holds no geometry"


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_area_file(path: Path, crs: CRS, log: Log = _to_stderr) -> Area:
    """The (multi)polygons of a GeoJSON file (a FeatureCollection, Feature or geometry) in ``crs``, as the tiler
    takes them; notes (geometries left out, polygons repaired) go to ``log``, one line each on stderr by default."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CCExpertError(f"area file not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CCExpertError(f"the area file {path} is not readable GeoJSON: {error}") from None
    if not isinstance(document, dict):
        raise CCExpertError(f"the area file {path} is not a GeoJSON object: {json_excerpt(document)}")
    source, source_name = _file_crs(document, path)
    found = _Contents()
    _walk(document, f"the area file {path}", found)
    if not found.polygons:
        raise CCExpertError(f"the area file {path} has no Polygon or MultiPolygon{_nothing_found(found)}")
    if found.not_areas:
        log(f"warning: the area file {path}: {_counted(found.not_areas)} left out (an area is made of polygons)")
    moved = [(name, to_crs(polygon, source, crs, name, source_name)) for name, polygon in found.polygons]
    return area_from_polygons(moved, log)
