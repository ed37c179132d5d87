"""The captions layer of a GeoPackage, written with OGR batch by batch: the ``caption-region`` command's schema.

Same fields and types as ``ccexpert_core/geo/captions_layer.py`` (a test compares them), so that either tool
can resume the other's file: ``tile_id`` is unique, a batch is written in one transaction, a rerun skips tiles
already captioned or skipped (failed tiles are tried again), and the options that decide a tile's pixels are
stored beside the layer so that a rerun with other options is refused rather than mixed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from osgeo import gdal, ogr, osr

from .errors import CaptionRunError
from .shared_modules import grid as tiling

#: The command's layer name; its options table is named for it.
DEFAULT_LAYER = "captions"
CAPTIONED = "captioned"
SKIPPED_NODATA = "skipped_nodata"
FAILED = "failed"
#: Tiles with these statuses are done: a rerun does not redo them.
FINAL_STATUSES = (CAPTIONED, SKIPPED_NODATA)


@dataclass(frozen=True)
class Field:
    """One attribute of the layer, as OGR declares it (type, subtype, NOT NULL, UNIQUE)."""

    name: str
    type: int
    subtype: int = ogr.OFSTNone
    not_null: bool = False
    unique: bool = False


# As OGR declares them in a GeoPackage: OFTInteger64 → INTEGER, OFTInteger + boolean → BOOLEAN, OFTReal → REAL,
# OFTDateTime → DATETIME.
FIELDS: tuple[Field, ...] = (
    Field("tile_id", ogr.OFTString, not_null=True, unique=True),
    Field("row", ogr.OFTInteger64, not_null=True),
    Field("col", ogr.OFTInteger64, not_null=True),
    Field("caption", ogr.OFTString),
    Field("change_detected", ogr.OFTInteger, ogr.OFSTBoolean),
    Field("confidence", ogr.OFTReal),
    Field("status", ogr.OFTString, not_null=True),
    Field("before_source", ogr.OFTString),
    Field("after_source", ogr.OFTString),
    Field("model_id", ogr.OFTString),
    Field("created_at", ogr.OFTDateTime),
)


def options_table(layer_name: str) -> str:
    """Where a layer's run options live: the command's table for ``captions``, one per layer name otherwise."""
    return "ccexpert_run_options" if layer_name == DEFAULT_LAYER else f"ccexpert_run_options_{layer_name}"


@dataclass(frozen=True)
class TileRecord:
    """What a run learned about one tile, ready to be written."""

    tile: tiling.Tile
    footprint: Sequence[tiling.Point]
    status: str
    caption: str | None = None
    change_detected: bool | None = None
    confidence: float | None = None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class CaptionsGeoPackage:
    """The layer ``layer_name`` of the GeoPackage ``path``, created if missing; refuses to resume other options."""

    def __init__(
        self, path: str, layer_name: str, srs_wkt: str, options: Mapping[str, str], before_source: str,
        after_source: str, model_id: str,
    ) -> None:
        self.path, self.layer_name = path, layer_name
        self.sources = (before_source, after_source, model_id)
        self.dataset = self._open()
        self.layer = self.dataset.GetLayerByName(layer_name) or self._create_layer(srs_wkt)
        self._check_fields()
        self._check_options(options)

    def _open(self) -> gdal.Dataset:
        if Path(self.path).exists():
            dataset = gdal.OpenEx(self.path, gdal.OF_VECTOR | gdal.OF_UPDATE, allowed_drivers=["GPKG"])
            if dataset is None:
                raise CaptionRunError(
                    f"{self.path} exists and is not a writable GeoPackage: choose another output file"
                )
            return dataset
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        dataset = gdal.GetDriverByName("GPKG").Create(self.path, 0, 0, 0, gdal.GDT_Unknown)
        if dataset is None:
            raise CaptionRunError(f"cannot create the GeoPackage {self.path}: {gdal.GetLastErrorMsg()}")
        return dataset

    def _create_layer(self, srs_wkt: str) -> ogr.Layer:
        srs = osr.SpatialReference()
        srs.ImportFromWkt(srs_wkt)
        # With GDAL's R-tree: the command's own writer registers the functions its triggers call, so it can resume.
        layer = self.dataset.CreateLayer(
            self.layer_name, srs, ogr.wkbPolygon,
            options=["FID=fid", "GEOMETRY_NAME=geom", "SPATIAL_INDEX=YES", "DESCRIPTION=ccexpert change captions"],
        )
        if layer is None:
            raise CaptionRunError(f"cannot add the layer {self.layer_name} to {self.path}: {gdal.GetLastErrorMsg()}")
        for field in FIELDS:
            definition = ogr.FieldDefn(field.name, field.type)
            definition.SetSubType(field.subtype)
            definition.SetNullable(not field.not_null)
            definition.SetUnique(field.unique)
            layer.CreateField(definition)
        return layer

    def _check_fields(self) -> None:
        definition = self.layer.GetLayerDefn()
        present = {definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())}
        missing = [field.name for field in FIELDS if field.name not in present]
        if missing:
            raise CaptionRunError(
                f"the layer {self.layer_name} of {self.path} is not a CCExpert captions layer (no field {missing[0]}): "
                "choose another layer name or file"
            )

    def _options_layer(self) -> ogr.Layer:
        name = options_table(self.layer_name)
        layer = self.dataset.GetLayerByName(name)
        if layer is None:
            layer = self.dataset.CreateLayer(name, None, ogr.wkbNone, options=["FID=fid"])
            key = ogr.FieldDefn("key", ogr.OFTString)
            key.SetNullable(False)
            key.SetUnique(True)
            layer.CreateField(key)
            layer.CreateField(ogr.FieldDefn("value", ogr.OFTString))
        return layer

    def _check_options(self, options: Mapping[str, str]) -> None:
        table = self._options_layer()
        stored = {feature.GetField("key"): feature.GetField("value") for feature in table}
        if stored and self.layer.GetFeatureCount() > 0:
            changed = [key for key in options if stored.get(key) != options[key]]
            if changed:
                key = changed[0]
                raise CaptionRunError(
                    f"{self.path} holds tiles made with other options ({key}: {stored.get(key)} there, {options[key]} "
                    "now): run again with the same options to resume, or choose another output file or layer name"
                )
            return
        self.dataset.StartTransaction()
        for feature in list(table):
            table.DeleteFeature(feature.GetFID())
        for key, value in options.items():
            feature = ogr.Feature(table.GetLayerDefn())
            feature.SetField("key", key)
            feature.SetField("value", value)
            table.CreateFeature(feature)
        self.dataset.CommitTransaction()

    def finished_ids(self) -> set[str]:
        """Ids of the tiles already captioned or skipped."""
        self.layer.SetAttributeFilter(f"status IN ({', '.join(_literal(s) for s in FINAL_STATUSES)})")
        try:
            return {feature.GetField("tile_id") for feature in self.layer}
        finally:
            self.layer.SetAttributeFilter(None)

    def write(self, records: Sequence[TileRecord]) -> None:
        """Write a batch in one transaction; a tile written before is replaced, never duplicated."""
        if not records:
            return
        now = datetime.now(timezone.utc).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3] + "+00"
        ids = ", ".join(_literal(record.tile.tile_id) for record in records)
        before_source, after_source, model_id = self.sources
        self.dataset.StartTransaction()
        try:
            self.dataset.ExecuteSQL(f"DELETE FROM {_quote(self.layer_name)} WHERE tile_id IN ({ids})")
            for record in records:
                feature = ogr.Feature(self.layer.GetLayerDefn())
                feature.SetGeometryDirectly(_polygon(record.footprint))
                values = {
                    "tile_id": record.tile.tile_id, "row": record.tile.row, "col": record.tile.col,
                    "caption": record.caption,
                    "change_detected": None if record.change_detected is None else int(record.change_detected),
                    "confidence": record.confidence, "status": record.status, "before_source": before_source,
                    "after_source": after_source, "model_id": model_id, "created_at": now,
                }
                for name, value in values.items():
                    if value is None:
                        feature.SetFieldNull(name)
                    else:
                        feature.SetField(name, value)
                if self.layer.CreateFeature(feature) != ogr.OGRERR_NONE:
                    raise CaptionRunError(f"cannot write tile {record.tile.tile_id} to {self.path}: "
                                          f"{gdal.GetLastErrorMsg()}")
        except BaseException:
            self.dataset.RollbackTransaction()
            raise
        if self.dataset.CommitTransaction() != ogr.OGRERR_NONE:
            raise CaptionRunError(f"cannot write to {self.path}: {gdal.GetLastErrorMsg()}")

    def close(self) -> None:
        """Close the file (OGR writes the layer's extent then)."""
        self.layer = self.dataset = None

    def __enter__(self) -> "CaptionsGeoPackage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _polygon(ring: Sequence[tiling.Point]) -> ogr.Geometry:
    outline = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in ring:
        outline.AddPoint_2D(x, y)
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometryDirectly(outline)
    return polygon
