"""Reading ``--area``: polygons from a GeoJSON file, brought into the rasters' CRS.

GeoJSON's coordinates are longitude/latitude (RFC 7946) unless the file has a ``crs`` member, as GDAL and QGIS
write for other CRSs. Other vector formats convert with ``ogr2ogr -f GeoJSON area.geojson area.gpkg``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform_geom

from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo.grid import Area

#: RFC 7946's CRS: longitude, latitude on WGS 84.
GEOJSON_DEFAULT_CRS = "OGC:CRS84"


def _geometries(document: dict[str, Any]) -> list[dict[str, Any]]:
    kind = document.get("type")
    if kind == "FeatureCollection":
        return [g for feature in document.get("features", []) for g in _geometries(feature)]
    if kind == "Feature":
        return [] if document.get("geometry") is None else _geometries(document["geometry"])
    if kind == "GeometryCollection":
        return [g for geometry in document.get("geometries", []) for g in _geometries(geometry)]
    if kind in ("Polygon", "MultiPolygon"):
        return [document]
    return []


def _file_crs(document: dict[str, Any], path: Path) -> CRS:
    name = (document.get("crs") or {}).get("properties", {}).get("name", GEOJSON_DEFAULT_CRS)
    try:
        return CRS.from_user_input(name)
    except CRSError:
        raise CCExpertError(f"the area file {path} names a CRS that is not known: {name}") from None


def read_area_file(path: Path, crs: CRS) -> Area:
    """The (multi)polygons of a GeoJSON file (a FeatureCollection, Feature or geometry) in ``crs``."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CCExpertError(f"area file not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CCExpertError(f"the area file {path} is not readable GeoJSON: {error}") from None
    geometries = _geometries(document) if isinstance(document, dict) else []
    if not geometries:
        raise CCExpertError(f"the area file {path} has no Polygon or MultiPolygon")
    source = _file_crs(document, path)
    polygons = []
    for geometry in geometries:
        if source != crs:
            geometry = transform_geom(source, crs, geometry)
        parts = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
        polygons.extend(parts)
    try:
        return Area(polygons)
    except (ValueError, TypeError) as error:
        raise CCExpertError(f"the area file {path} has no usable polygon: {error}") from None
