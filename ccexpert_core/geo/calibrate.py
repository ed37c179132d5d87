"""``p_right`` for a captions layer of a GeoPackage, fitted on its reviews and written with sqlite3 (the command's
side of :mod:`ccexpert_core.geo.calibration`; the QGIS plugin does the same through OGR after each review).

The file is read first and written only where the fit changes something: a layer without reviews (or with fewer than
the calibration needs, and no earlier fit to clear) is left byte for byte as it was.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo import calibration as fitting
from ccexpert_core.geo import schema
from ccexpert_core.geo.gpkg import GeoPackage, timestamp
from ccexpert_core.geo.search_entries import read_layer


@dataclass(frozen=True)
class Recalibrated:
    """What a fit found and did."""

    #: Reviewed tiles it learned from (captioned, with a confidence), and how many of them were corrected.
    reviews: int
    wrong: int
    calibration: fitting.Calibration | None
    #: Whether the file was written.
    written: bool
    #: Tiles holding a p_right now.
    tiles: int = 0
    #: The changed tiles nobody reviewed, and how many of them are wrong, expected from their p_right.
    unreviewed_changed: int = 0
    likely_wrong: float = 0.0


def recalibrate(path: Path, layer_name: str = schema.CAPTIONS_LAYER) -> Recalibrated:
    """Fit the layer's calibration on its reviews and write ``p_right`` and the calibration table (or clear an
    earlier fit that too few reviews are left for)."""
    table = schema.calibration_table(layer_name)
    with read_layer(path, layer_name) as (connection, columns):
        samples = [fitting.sample_of(row) for row in connection.execute(fitting.samples_sql(layer_name, columns))]
        intervals = fitting.interval_dates(connection.execute(fitting.intervals_sql(layer_name, columns)))
        stored = connection.execute(fitting.stored_sql(layer_name, columns)).fetchone() is not None
        has_table = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                       (table,)).fetchone() is not None
        stored = stored or (has_table and connection.execute(
            f"SELECT 1 FROM {schema.quote(table)} LIMIT 1").fetchone() is not None)
    calibration = fitting.calibrate(samples, intervals)
    wrong = sum(not sample.right for sample in samples)
    if calibration is None and not stored:
        return Recalibrated(len(samples), wrong, None, written=False)
    package = GeoPackage(path)
    try:
        present = set(package.columns(layer_name))
        with package.connection as writing:
            for field in schema.fields_to_add(present):  # an older file: the schema's migration, as a writer does
                writing.execute(f"ALTER TABLE {schema.quote(layer_name)} ADD COLUMN {schema.quote(field.name)} "
                                f"{field.sql()}")
        package.create_attribute_table(table, [(f.name, f.sql()) for f in schema.CALIBRATION_FIELDS],
                                       schema.CALIBRATION_DESCRIPTION)
        with package.connection as writing:
            for statement in fitting.table_sql(layer_name, calibration, timestamp()):
                writing.execute(statement)
            writing.execute(fitting.p_right_sql(layer_name, calibration))
        return _summary(package.connection, layer_name, len(samples), wrong, calibration)
    except sqlite3.Error as error:
        raise CCExpertError(f"cannot write p_right to the layer '{layer_name}' of {path}: {error}") from None
    finally:
        package.close()


def _summary(connection: sqlite3.Connection, layer_name: str, reviews: int, wrong: int,
             calibration: fitting.Calibration | None) -> Recalibrated:
    table = schema.quote(layer_name)
    tiles = connection.execute(f"SELECT count(*) FROM {table} WHERE p_right IS NOT NULL").fetchone()[0]
    unreviewed = [row[0] for row in connection.execute(
        f"SELECT p_right FROM {table} WHERE status = ? AND change_detected AND review_status IS NULL",
        (schema.CAPTIONED,))]
    known = [p for p in unreviewed if p is not None]
    return Recalibrated(reviews, wrong, calibration, True, tiles, len(unreviewed), fitting.expected_wrong(known))
