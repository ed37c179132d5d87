"""The captions layer of a GeoPackage, written with OGR batch by batch: ``caption-region``'s layer, built from the
same schema (``ccexpert_core/geo/schema.py``, bundled), so that either tool resumes the other's file.

A feature is one tile and one interval, (``tile_id``, ``interval``) is unique, a batch (its features, their change
areas and, for a series, its tiles' histories) is written in one transaction, a rerun skips features already
captioned or skipped (failed ones are tried again) and updates a feature written before in place, so the analyst's
review fields are never touched. The options that decide a tile's
pixels are stored beside the layer so that a rerun with other options is refused rather than mixed in. A layer
written before this schema gets the fields it lacks; the default style goes into ``layer_styles`` as QGIS keeps it.
Beside it, as the command writes them: for a series of three or more dates the ``history`` layer (one polygon per
tile over all its intervals, from the schema's ``history()``), and for a model with a change-map head the
``changes`` layer (one multipolygon per tile and interval around the changed places, made on first use).
Everything is written through OGR (QGIS may hold the file open).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from osgeo import gdal, ogr, osr

from .errors import CaptionRunError
from .shared_modules import grid as tiling
from .shared_modules import run_contract, schema
from .tile_reader import same_crs

# How OGR declares the schema's types so that a GeoPackage gets the same SQL types as caption-region writes:
# OFTInteger64 → INTEGER (a plain OFTInteger would be MEDIUMINT), OFTInteger + boolean → BOOLEAN, OFTReal → REAL,
# OFTDateTime → DATETIME, OFTString → TEXT.
_OGR_TYPES = {
    schema.TEXT: (ogr.OFTString, ogr.OFSTNone),
    schema.INTEGER: (ogr.OFTInteger64, ogr.OFSTNone),
    schema.BOOLEAN: (ogr.OFTInteger, ogr.OFSTBoolean),
    schema.REAL: (ogr.OFTReal, ogr.OFSTNone),
    schema.DATETIME: (ogr.OFTDateTime, ogr.OFSTNone),
}


def field_definition(field: schema.Field) -> ogr.FieldDefn:
    """A schema field as OGR declares it (type, subtype, width, NOT NULL, default)."""
    field_type, subtype = _OGR_TYPES[field.type]
    definition = ogr.FieldDefn(field.name, field_type)
    definition.SetSubType(subtype)
    if field.width:
        definition.SetWidth(field.width)
    definition.SetNullable(not field.not_null)
    if field.default is not None:
        definition.SetDefault(field.default)
    return definition


def other_options(path: str, stored: Mapping[str, str], options: Mapping[str, str]) -> str | None:
    """Why an output whose layer stored ``stored`` must not be resumed with ``options`` (None: it may be): the
    contract's comparison, the CRS compared by what it is."""
    key = run_contract.changed_option(stored, options, same_crs)
    if key is None:
        return None
    return run_contract.other_options(
        path, stored, options, key, "run again with the same options to resume, or choose another output file or "
        "layer name")


def companion_layer(layer_name: str, kind: str) -> str:
    """The name of a captions layer's ``history`` or ``changes`` layer: the command's names beside its
    ``captions``, prefixed by the layer's name otherwise (two captions layers in one file keep theirs apart)."""
    return kind if layer_name == schema.CAPTIONS_LAYER else f"{layer_name}_{kind}"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _now() -> str:
    """Now, in UTC, as OGR parses a date-time string."""
    return datetime.now(UTC).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3] + "+00"


class CaptionsGeoPackage:
    """The layer ``layer_name`` of the GeoPackage ``path``, created if missing and migrated to the schema if older;
    refuses a layer of another schema and a resume with other options."""

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
        self._migrate()
        self._add_style()

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
        # One transaction: the table with its rows in the GeoPackage's own tables, or none of them (a full disk).
        with self._transaction():
            layer = self.dataset.CreateLayer(
                self.layer_name, srs, ogr.wkbPolygon,
                options=[
                    "FID=fid", f"GEOMETRY_NAME={schema.GEOMETRY_COLUMN}", "SPATIAL_INDEX=YES",
                    f"DESCRIPTION={schema.layer_description()}",
                ],
            )
            if layer is None:
                raise CaptionRunError(f"cannot add the layer {self.layer_name} to {self.path}: "
                                      f"{gdal.GetLastErrorMsg()}")
            for field in schema.FIELDS:
                layer.CreateField(field_definition(field))
        return layer

    def _field_names(self) -> set[str]:
        definition = self.layer.GetLayerDefn()
        return {definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())}

    def _check_fields(self) -> None:
        missing = schema.missing_required(self._field_names())
        if missing is not None:
            raise CaptionRunError(
                f"the layer {self.layer_name} of {self.path} is not a CCExpert captions layer (no field {missing}): "
                "choose another layer name or file"
            )

    def _migrate(self) -> None:
        """Add the fields an older layer lacks (OGR alters the table) and the unique index of the key."""
        for field in schema.fields_to_add(self._field_names()):
            if self.layer.CreateField(field_definition(field)) != ogr.OGRERR_NONE:
                raise CaptionRunError(
                    f"cannot add the field {field.name} to the layer {self.layer_name} of {self.path}: "
                    f"{gdal.GetLastErrorMsg()}"
                )
        gdal.ErrorReset()
        self.dataset.ExecuteSQL(schema.key_index_sql(self.layer_name))
        if gdal.GetLastErrorType() >= gdal.CE_Failure:
            raise CaptionRunError(f"cannot index the layer {self.layer_name} of {self.path}: {gdal.GetLastErrorMsg()}")

    def _add_style(self) -> None:
        """The schema's style as the layer's default in ``layer_styles``, unless the layer has a style there."""
        styles = self.dataset.GetLayerByName(schema.STYLES_TABLE)
        if styles is None:
            styles = self.dataset.CreateLayer(
                schema.STYLES_TABLE, None, ogr.wkbNone, options=[f"FID={schema.STYLES_FID}"]
            )
            for field in schema.STYLES_FIELDS:
                styles.CreateField(field_definition(field))
        styles.SetAttributeFilter(f"f_table_name = {_literal(self.layer_name)}")
        try:
            if styles.GetNextFeature() is not None:
                return
        finally:
            styles.SetAttributeFilter(None)
        feature = ogr.Feature(styles.GetLayerDefn())
        for name, value in {**schema.style_row(self.layer_name), "update_time": _now()}.items():
            if value is None:
                feature.SetFieldNull(name)
            else:
                feature.SetField(name, int(value) if isinstance(value, bool) else value)
        if styles.CreateFeature(feature) != ogr.OGRERR_NONE:
            raise CaptionRunError(f"cannot store the layer's style in {self.path}: {gdal.GetLastErrorMsg()}")

    def _options_layer(self) -> ogr.Layer:
        name = schema.options_table(self.layer_name)
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
            refusal = other_options(self.path, stored, options)
            if refusal is not None:
                raise CaptionRunError(refusal)
            return
        with self._transaction():
            for feature in list(table):
                table.DeleteFeature(feature.GetFID())
            for key, value in options.items():
                feature = ogr.Feature(table.GetLayerDefn())
                feature.SetField("key", key)
                feature.SetField("value", value)
                table.CreateFeature(feature)

    def finished_keys(self) -> set[tuple[str, int]]:
        """(tile_id, interval) of the features already captioned or skipped."""
        self.layer.SetAttributeFilter(f"status IN ({', '.join(_literal(s) for s in schema.FINAL_STATUSES)})")
        try:
            return {(feature.GetField("tile_id"), feature.GetField("interval")) for feature in self.layer}
        finally:
            self.layer.SetAttributeFilter(None)

    def finished_ids(self) -> set[str]:
        """Ids of the tiles whose first interval (a two-date run's only one) is already captioned or skipped."""
        return {tile_id for tile_id, interval in self.finished_keys() if interval == 0}

    def _written(self, records: Sequence[run_contract.TileRecord]) -> dict[tuple[str, int], int]:
        """The fids of the features these records write again, by key."""
        ids = ", ".join(_literal(tile_id) for tile_id in {record.tile.tile_id for record in records})
        self.layer.SetAttributeFilter(f"tile_id IN ({ids})")
        try:
            return {(f.GetField("tile_id"), f.GetField("interval")): f.GetFID() for f in self.layer}
        finally:
            self.layer.SetAttributeFilter(None)

    def write(
        self, records: Sequence[run_contract.TileRecord], history: Mapping[int, tuple[int, int]] | None = None,
    ) -> None:
        """Write a batch in one transaction: its features (a feature written before is updated, its review kept,
        never duplicated), their change areas and, with ``history`` (a series' intervals that compare a date with
        the next: :meth:`run_contract.Dating.consecutive`), the history of each of its tiles; a kill or a full disk
        anywhere in it leaves all of the batch or none of it."""
        if not records:
            return
        now = _now()
        mapped = [record for record in records if record.changes is not None]
        # Layers are made before the batch's transaction (each in one of its own): GDAL cannot take a layer it made
        # back with a rollback.
        changes = self._companion(
            "changes", ogr.wkbMultiPolygon, schema.CHANGES_FIELDS, schema.CHANGES_DESCRIPTION, schema.KEY
        ) if mapped else None
        told = self._companion(
            "history", ogr.wkbPolygon, schema.HISTORY_FIELDS, schema.HISTORY_DESCRIPTION, ("tile_id",)
        ) if history else None
        written = self._written(records)
        with self._transaction():
            self._write_features(records, written, now)
            if changes is not None:
                self._write_changes(changes, mapped, now)
            if told is not None and history:
                self._write_history(told, records, history, now)

    def _write_features(
        self, records: Sequence[run_contract.TileRecord], written: Mapping[tuple[str, int], int], now: str,
    ) -> None:
        before_source, after_source, model_id = self.sources
        for record in records:
            key = (record.tile.tile_id, record.interval)
            fid = written.get(key)
            feature = ogr.Feature(self.layer.GetLayerDefn()) if fid is None else self.layer.GetFeature(fid)
            feature.SetGeometryDirectly(_polygon(record.footprint))
            _set_fields(feature, schema.RUN_FIELDS, record.values(before_source, after_source, model_id, now))
            done = self.layer.CreateFeature(feature) if fid is None else self.layer.SetFeature(feature)
            if done != ogr.OGRERR_NONE:
                raise CaptionRunError(f"cannot write tile {record.tile.tile_id} to {self.path}: "
                                      f"{gdal.GetLastErrorMsg()}")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction around the body: rolled back where it raises; a commit that fails is said."""
        self.dataset.StartTransaction()
        try:
            yield
        except BaseException:
            self.dataset.RollbackTransaction()
            raise
        if self.dataset.CommitTransaction() != ogr.OGRERR_NONE:
            raise CaptionRunError(f"cannot write to {self.path}: {gdal.GetLastErrorMsg()}")

    def _companion(self, kind: str, geometry_type: int, fields: Sequence[schema.Field], description: str,
                   key: Sequence[str]) -> ogr.Layer:
        """The ``history`` or ``changes`` layer, created with the captions layer's CRS and a unique index on
        ``key`` where missing."""
        name = companion_layer(self.layer_name, kind)
        layer = self.dataset.GetLayerByName(name)
        if layer is not None:
            return layer
        with self._transaction():  # the table with its rows in the GeoPackage's own tables, or none of them
            layer = self.dataset.CreateLayer(
                name, self.layer.GetSpatialRef(), geometry_type,
                options=["FID=fid", f"GEOMETRY_NAME={schema.GEOMETRY_COLUMN}", "SPATIAL_INDEX=YES",
                         f"DESCRIPTION={description}"],
            )
            if layer is None:
                raise CaptionRunError(f"cannot add the layer {name} to {self.path}: {gdal.GetLastErrorMsg()}")
            for field in fields:
                layer.CreateField(field_definition(field))
            columns = ", ".join(schema.quote(column) for column in key)
            self.dataset.ExecuteSQL(
                f"CREATE UNIQUE INDEX IF NOT EXISTS {schema.quote(name + '_key')} ON {schema.quote(name)} ({columns})"
            )
        return layer

    def _write_changes(self, layer: ogr.Layer, records: Sequence[run_contract.TileRecord], now: str) -> None:
        """Each record's changed places replace what the ``changes`` layer held for its tile and interval (nothing
        where its change map shows no change)."""
        model_id = self.sources[2]
        for record in records:
            layer.SetAttributeFilter(f"tile_id = {_literal(record.tile.tile_id)} AND \"interval\" = "
                                     f"{record.interval}")
            for fid in [feature.GetFID() for feature in layer]:
                layer.DeleteFeature(fid)
            layer.SetAttributeFilter(None)
            if not record.changes:
                continue
            feature = ogr.Feature(layer.GetLayerDefn())
            feature.SetGeometryDirectly(_multipolygon(record.changes))
            for name, value in (("tile_id", record.tile.tile_id), ("interval", record.interval),
                                ("model_id", model_id), ("created_at", now)):
                feature.SetField(name, value)
            if layer.CreateFeature(feature) != ogr.OGRERR_NONE:
                raise CaptionRunError(f"cannot write the changes of tile {record.tile.tile_id} to {self.path}: "
                                      f"{gdal.GetLastErrorMsg()}")

    def _write_history(
        self, layer: ogr.Layer, records: Sequence[run_contract.TileRecord], consecutive: Mapping[int, tuple[int, int]],
        now: str,
    ) -> None:
        """The ``history`` feature of each tile of ``records`` from what the captions layer holds of its
        ``consecutive`` intervals (the analyst's caption where one was given); a tile's history is replaced."""
        footprints = {record.tile.tile_id: (record.tile, record.footprint) for record in records}
        ids = ", ".join(_literal(tile_id) for tile_id in sorted(footprints))
        entries: dict[str, dict[int, schema.IntervalEntry]] = {tile_id: {} for tile_id in footprints}
        self.layer.SetAttributeFilter(f"tile_id IN ({ids})")
        self.layer.SetIgnoredFields(["OGR_GEOMETRY"])
        try:
            for feature in self.layer:
                k = feature.GetField("interval")
                if k not in consecutive:
                    continue
                i, j = consecutive[k]
                caption = feature.GetField("reviewed_caption") or feature.GetField("caption")
                changed = None if feature.IsFieldNull("change_detected") else bool(feature.GetField("change_detected"))
                entries[feature.GetField("tile_id")][k] = schema.IntervalEntry(
                    run_contract.history_date(feature.GetField("date_before"), i),
                    run_contract.history_date(feature.GetField("date_after"), j),
                    feature.GetField("status"), caption, changed,
                )
        finally:
            self.layer.SetAttributeFilter(None)
            self.layer.SetIgnoredFields([])
        model_id = self.sources[2]
        layer.SetAttributeFilter(f"tile_id IN ({ids})")
        for fid in [feature.GetFID() for feature in layer]:
            layer.DeleteFeature(fid)
        layer.SetAttributeFilter(None)
        for tile_id, (tile, footprint) in footprints.items():
            told = [entries[tile_id][k] for k in sorted(entries[tile_id])]
            values = {"tile_id": tile_id, "row": tile.row, "col": tile.col, **schema.history(told),
                      "model_id": model_id, "created_at": now}
            feature = ogr.Feature(layer.GetLayerDefn())
            feature.SetGeometryDirectly(_polygon(footprint))
            _set_fields(feature, schema.HISTORY_FIELDS, values)
            if layer.CreateFeature(feature) != ogr.OGRERR_NONE:
                raise CaptionRunError(f"cannot write the history of tile {tile_id} to {self.path}: "
                                      f"{gdal.GetLastErrorMsg()}")

    def close(self) -> None:
        """Close the file (OGR writes the layer's extent then)."""
        self.layer = self.dataset = None

    def __enter__(self) -> "CaptionsGeoPackage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ring(points: Sequence[tiling.Point]) -> ogr.Geometry:
    outline = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in points:
        outline.AddPoint_2D(x, y)
    return outline


def _set_fields(feature: ogr.Feature, fields: Sequence[schema.Field], values: Mapping[str, object]) -> None:
    """Each of ``fields`` from ``values`` (None: a null field)."""
    for field in fields:
        value = values[field.name]
        if value is None:
            feature.SetFieldNull(field.name)
        else:
            feature.SetField(field.name, value)


def _polygon(ring: Sequence[tiling.Point], holes: Sequence[Sequence[tiling.Point]] = ()) -> ogr.Geometry:
    polygon = ogr.Geometry(ogr.wkbPolygon)
    for points in (ring, *holes):
        polygon.AddGeometryDirectly(_ring(points))
    return polygon


def _multipolygon(polygons: Sequence[tiling.Polygon]) -> ogr.Geometry:
    multipolygon = ogr.Geometry(ogr.wkbMultiPolygon)
    for rings in polygons:
        multipolygon.AddGeometryDirectly(_polygon(rings[0], rings[1:]))
    return multipolygon
