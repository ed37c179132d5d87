"""``p_right`` for a captions layer, fitted on its reviews and written through OGR: the plugin's side of the bundled
calibration, running the very SQL ``ccexpert calibrate`` runs with sqlite3 (so either tool's fit is the other's).

The file is read first and written only where the fit changes something: a layer without reviews (or with fewer
than the calibration needs, and no earlier fit to clear) is never written. Like a review, the fit is written on a
connection of its own, closed at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from osgeo import gdal, ogr

from .captions_gpkg import field_definition
from .errors import CaptionRunError
from .review_store import CaptionsFile, now
from .shared_modules import calibration as fitting
from .shared_modules import schema


@dataclass(frozen=True)
class Refit:
    """What a fit found: the reviewed tiles it learned from, the calibration (None below the threshold), and
    whether the file was written."""

    reviews: int
    calibration: fitting.Calibration | None
    written: bool


def _rows(dataset: gdal.Dataset, sql: str) -> Iterator[list[Any]]:
    """The rows of a SELECT, as lists of values."""
    result = dataset.ExecuteSQL(sql)
    if result is None:
        return
    try:
        count = result.GetLayerDefn().GetFieldCount()
        for feature in result:
            yield [None if not feature.IsFieldSetAndNotNull(k) else feature.GetField(k) for k in range(count)]
    finally:
        dataset.ReleaseResultSet(result)


def _execute(dataset: gdal.Dataset, sql: str, file: CaptionsFile) -> None:
    gdal.ErrorReset()
    dataset.ExecuteSQL(sql)
    if gdal.GetLastErrorType() >= gdal.CE_Failure:
        raise CaptionRunError(f"cannot write p_right to {file.path}: {gdal.GetLastErrorMsg()}")


def refit(file: CaptionsFile) -> Refit:
    """Fit the layer's calibration on its reviews and write ``p_right`` and the calibration table (or clear an
    earlier fit that too few reviews are left for). Raises :class:`CaptionRunError` with what went wrong."""
    dataset = gdal.OpenEx(file.path, gdal.OF_VECTOR | gdal.OF_UPDATE, allowed_drivers=["GPKG"])
    if dataset is None:
        raise CaptionRunError(f"cannot write p_right: {file.path} cannot be opened for writing "
                              f"({gdal.GetLastErrorMsg() or 'read-only?'})")
    try:
        layer = dataset.GetLayerByName(file.layer_name)
        if layer is None:
            raise CaptionRunError(f"cannot write p_right: {file.path} no longer holds the layer {file.layer_name}")
        definition = layer.GetLayerDefn()
        present = {definition.GetFieldDefn(k).GetName() for k in range(definition.GetFieldCount())}
        samples = [fitting.sample_of(row) for row in _rows(dataset, fitting.samples_sql(file.layer_name, present))]
        intervals = fitting.interval_dates(_rows(dataset, fitting.intervals_sql(file.layer_name, present)))
        table_name = schema.calibration_table(file.layer_name)
        table = dataset.GetLayerByName(table_name)
        stored = any(True for _ in _rows(dataset, fitting.stored_sql(file.layer_name, present))) or (
            table is not None and table.GetFeatureCount() > 0)
        fitted = fitting.calibrate(samples, intervals)
        if fitted is None and not stored:
            return Refit(len(samples), None, written=False)
        for field in schema.fields_to_add(present):  # an older file: the schema's migration, as the writers do
            if layer.CreateField(field_definition(field)) != ogr.OGRERR_NONE:
                raise CaptionRunError(f"cannot add the field {field.name} to {file.layer_name} of {file.path}: "
                                      f"{gdal.GetLastErrorMsg()}")
        if table is None:
            table = dataset.CreateLayer(table_name, None, ogr.wkbNone,
                                        options=["FID=fid", f"DESCRIPTION={schema.CALIBRATION_DESCRIPTION}"])
            if table is None:
                raise CaptionRunError(f"cannot add the table {table_name} to {file.path}: {gdal.GetLastErrorMsg()}")
            for field in schema.CALIBRATION_FIELDS:
                table.CreateField(field_definition(field))
        dataset.StartTransaction()
        try:
            for statement in (*fitting.table_sql(file.layer_name, fitted, now()),
                              fitting.p_right_sql(file.layer_name, fitted)):
                _execute(dataset, statement, file)
        except BaseException:
            dataset.RollbackTransaction()
            raise
        if dataset.CommitTransaction() != ogr.OGRERR_NONE:
            raise CaptionRunError(f"cannot write p_right to {file.path}: {gdal.GetLastErrorMsg()}")
        return Refit(len(samples), fitted, written=True)
    finally:
        dataset = None
