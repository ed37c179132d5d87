"""A small GeoPackage writer on sqlite3 (OGC GeoPackage 1.3): feature and attribute tables that GDAL/OGR and
QGIS open, written in transactions.

Standard library only. Feature tables get the GeoPackage R-tree spatial index (extension ``gpkg_rtree_index``),
kept by the standard triggers; their ``ST_*`` functions are registered on each connection here, as GDAL does on its
own, so that this writer and GDAL/QGIS can both go on writing the same file. A table is created in one transaction
with its rows in the GeoPackage's own tables and its R-tree, and reopening a file repairs a table that lacks them.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo.schema import STYLES_FID, STYLES_FIELDS, STYLES_TABLE, quote

Point = tuple[float, float]
Bounds = tuple[float, float, float, float]

APPLICATION_ID = 0x47504B47  # "GPKG"
USER_VERSION = 10300  # GeoPackage 1.3.0
#: srs_id values for CRSs without an EPSG code start here (GDAL does the same).
FIRST_CUSTOM_SRS_ID = 100000
_EMPTY_FLAG = 0b1_0000

_WGS84_WKT = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],'
    'AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,'
    'AUTHORITY["EPSG","9122"]],AXIS["Latitude",NORTH],AXIS["Longitude",EAST],AUTHORITY["EPSG","4326"]]'
)

# The mandatory tables (spec §1.1.2, §1.1.3, §2.1.5) and their required rows.
_CORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS gpkg_spatial_ref_sys (
  srs_name TEXT NOT NULL, srs_id INTEGER PRIMARY KEY, organization TEXT NOT NULL,
  organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL, description TEXT);
CREATE TABLE IF NOT EXISTS gpkg_contents (
  table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL, identifier TEXT UNIQUE,
  description TEXT DEFAULT '',
  last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
  CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
CREATE TABLE IF NOT EXISTS gpkg_geometry_columns (
  table_name TEXT NOT NULL, column_name TEXT NOT NULL, geometry_type_name TEXT NOT NULL,
  srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
  CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
  CONSTRAINT uk_gc_table_name UNIQUE (table_name),
  CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
  CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys (srs_id));
CREATE TABLE IF NOT EXISTS gpkg_extensions (
  table_name TEXT, column_name TEXT, extension_name TEXT NOT NULL, definition TEXT NOT NULL, scope TEXT NOT NULL,
  CONSTRAINT ge_tce UNIQUE (table_name, column_name, extension_name));
INSERT OR IGNORE INTO gpkg_spatial_ref_sys VALUES
  ('WGS 84 geodetic', 4326, 'EPSG', 4326, '{wgs84}', 'longitude/latitude coordinates in decimal degrees'),
  ('Undefined cartesian SRS', -1, 'NONE', -1, 'undefined', 'undefined cartesian coordinate reference system'),
  ('Undefined geographic SRS', 0, 'NONE', 0, 'undefined', 'undefined geographic coordinate reference system');
""".replace("{wgs84}", _WGS84_WKT)


@dataclass(frozen=True)
class SpatialRef:
    """A row of ``gpkg_spatial_ref_sys``; ``srs_id`` None lets the GeoPackage pick one (CRSs without a code)."""

    name: str
    srs_id: int | None
    organization: str
    organization_coordsys_id: int | None
    definition: str


def timestamp() -> str:
    """Now, in the GeoPackage DATETIME format (ISO 8601, UTC, milliseconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _header(points: Sequence[Point], srs_id: int) -> bytes:
    """The ``GP`` header with an XY envelope ``[minx, maxx, miny, maxy]``, little-endian."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    flags = 0b0000_0011  # envelope [minx, maxx, miny, maxy] (bits 1-3 = 1), little-endian (bit 0 = 1)
    return struct.pack("<2sBBi4d", b"GP", 0, flags, srs_id, min(xs), max(xs), min(ys), max(ys))


def _wkb_polygon(rings: Sequence[Sequence[Point]]) -> bytes:
    parts = [struct.pack("<BII", 1, 3, len(rings))]
    for ring in rings:
        parts.append(struct.pack("<I", len(ring)) + struct.pack(f"<{2 * len(ring)}d", *(c for p in ring for c in p)))
    return b"".join(parts)


def polygon_blob(ring: Sequence[Point], srs_id: int) -> bytes:
    """A one-ring polygon as a GeoPackage geometry (header, then little-endian WKB)."""
    return _header(ring, srs_id) + _wkb_polygon([ring])


def multipolygon_blob(polygons: Sequence[Sequence[Sequence[Point]]], srs_id: int) -> bytes:
    """Polygons (each a list of rings, the exterior first) as one GeoPackage MULTIPOLYGON."""
    points = [p for polygon in polygons for p in polygon[0]]
    body = struct.pack("<BII", 1, 6, len(polygons)) + b"".join(_wkb_polygon(polygon) for polygon in polygons)
    return _header(points, srs_id) + body


def is_empty(blob: bytes | None) -> bool:
    """Whether a GeoPackage geometry is NULL or flagged empty."""
    return blob is None or bool(blob[3] & _EMPTY_FLAG)


def blob_bounds(blob: bytes) -> Bounds:
    """``(xmin, ymin, xmax, ymax)`` of a non-empty GeoPackage geometry: its header's envelope, or for a point
    without one (GDAL writes points so) the point itself."""
    flags = blob[3]
    order = "<" if flags & 1 else ">"
    envelope = (flags >> 1) & 0b111
    if envelope:
        min_x, max_x, min_y, max_y = struct.unpack_from(f"{order}4d", blob, 8)
        return min_x, min_y, max_x, max_y
    wkb = 8
    wkb_order = "<" if blob[wkb] == 1 else ">"
    (geometry_type,) = struct.unpack_from(f"{wkb_order}I", blob, wkb + 1)
    if geometry_type % 1000 != 1:
        raise ValueError(f"a GeoPackage geometry of WKB type {geometry_type} without an envelope")
    x, y = struct.unpack_from(f"{wkb_order}2d", blob, wkb + 5)
    return x, y, x, y


def _bound(index: int) -> Callable[[bytes | None], float | None]:
    return lambda blob: None if blob is None or is_empty(blob) else blob_bounds(blob)[index]


def _register_spatial_functions(connection: sqlite3.Connection) -> None:
    """The SQL functions the R-tree triggers call (GDAL registers the same ones on its connections)."""
    connection.create_function("ST_IsEmpty", 1, lambda blob: int(is_empty(blob)), deterministic=True)
    for name, index in (("ST_MinX", 0), ("ST_MinY", 1), ("ST_MaxX", 2), ("ST_MaxY", 3)):
        connection.create_function(name, 1, _bound(index), deterministic=True)


def _rtree_sql(table: str, column: str) -> list[str]:
    """Creating, filling and keeping the R-tree of ``table.column``: GeoPackage 1.3's triggers (Annex F.3), those
    Debian 12's GDAL writes and its validator asks for."""
    rtree, t, c = quote(f"rtree_{table}_{column}"), quote(table), quote(column)
    values = f"NEW.fid, ST_MinX(NEW.{c}), ST_MaxX(NEW.{c}), ST_MinY(NEW.{c}), ST_MaxY(NEW.{c})"
    new_set, new_unset = f"(NEW.{c} NOTNULL AND NOT ST_IsEmpty(NEW.{c}))", f"(NEW.{c} ISNULL OR ST_IsEmpty(NEW.{c}))"

    def trigger(suffix: str, event: str, when: str, body: str) -> str:
        name = quote(f"rtree_{table}_{column}_{suffix}")
        return f"CREATE TRIGGER {name} AFTER {event} ON {t} WHEN {when} BEGIN {body}; END"

    return [
        f"CREATE VIRTUAL TABLE {rtree} USING rtree(id, minx, maxx, miny, maxy)",
        f"INSERT OR REPLACE INTO {rtree} SELECT fid, ST_MinX({c}), ST_MaxX({c}), ST_MinY({c}), ST_MaxY({c}) "
        f"FROM {t} WHERE {c} NOTNULL AND NOT ST_IsEmpty({c})",
        trigger("insert", "INSERT", new_set, f"INSERT OR REPLACE INTO {rtree} VALUES ({values})"),
        trigger(
            "update1", f"UPDATE OF {c}", f"OLD.fid = NEW.fid AND {new_set}",
            f"INSERT OR REPLACE INTO {rtree} VALUES ({values})",
        ),
        trigger(
            "update2", f"UPDATE OF {c}", f"OLD.fid = NEW.fid AND {new_unset}", f"DELETE FROM {rtree} WHERE id = OLD.fid"
        ),
        trigger(
            "update3", f"UPDATE OF {c}", f"OLD.fid != NEW.fid AND {new_set}",
            f"DELETE FROM {rtree} WHERE id = OLD.fid; INSERT OR REPLACE INTO {rtree} VALUES ({values})",
        ),
        trigger(
            "update4", "UPDATE", f"OLD.fid != NEW.fid AND {new_unset}",
            f"DELETE FROM {rtree} WHERE id IN (OLD.fid, NEW.fid)",
        ),
        trigger("delete", "DELETE", f"OLD.{c} NOT NULL", f"DELETE FROM {rtree} WHERE id = OLD.fid"),
    ]


class GeoPackage:
    """An open GeoPackage file: created when missing, refused when the file is something else."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.connection = sqlite3.connect(self.path, timeout=30)
            _register_spatial_functions(self.connection)
        except sqlite3.Error as error:
            raise CCExpertError(f"cannot write the GeoPackage {self.path}: {error}") from None
        try:
            self._check_or_create()
        except sqlite3.OperationalError as error:  # locked, read-only, disk full...
            self.connection.close()
            raise CCExpertError(f"cannot write the GeoPackage {self.path}: {error}") from None
        except sqlite3.DatabaseError:  # the other database errors here mean "not an SQLite file at all"
            self.connection.close()
            raise CCExpertError(f"{self.path} exists and is not a GeoPackage: choose another output file") from None
        except BaseException:
            self.connection.close()
            raise

    def _check_or_create(self) -> None:
        connection = self.connection
        application_id = connection.execute("PRAGMA application_id").fetchone()[0]
        has_tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
        if has_tables and application_id != APPLICATION_ID:
            raise CCExpertError(f"{self.path} exists and is not a GeoPackage: choose another output file")
        # BEGIN IMMEDIATE takes the write lock now, so that a read-only file fails before any work is done; the
        # header and the mandatory tables are one transaction (a full disk leaves all of them or none).
        try:
            connection.executescript(
                f"BEGIN IMMEDIATE; PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {USER_VERSION};"
                f"{_CORE_SCHEMA} COMMIT;"
            )
        except BaseException:
            if connection.in_transaction:
                connection.rollback()
            raise

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction around the body, creating tables included, rolled back where the body or the commit
        fails; inside another transaction, part of it. (Python's sqlite3 runs a CREATE outside any transaction unless
        one was begun: a full disk could then leave a table without its ``gpkg_contents`` row.)"""
        connection = self.connection
        if connection.in_transaction:
            yield connection
            return
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
            connection.commit()
        except BaseException:
            if connection.in_transaction:
                connection.rollback()
            raise

    def close(self) -> None:
        """Close the file."""
        self.connection.close()

    def table_exists(self, name: str) -> bool:
        """Whether a table of that name is in the file."""
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return self.connection.execute(query, (name,)).fetchone() is not None

    def srs_id(self, ref: SpatialRef) -> int:
        """The id of ``ref`` in ``gpkg_spatial_ref_sys``, adding the row if needed (call inside a transaction)."""
        connection = self.connection
        if ref.srs_id is not None:
            found = connection.execute("SELECT 1 FROM gpkg_spatial_ref_sys WHERE srs_id = ?", (ref.srs_id,))
            if found.fetchone() is None:
                connection.execute(
                    "INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, NULL)",
                    (ref.name, ref.srs_id, ref.organization, ref.organization_coordsys_id, ref.definition),
                )
            return ref.srs_id
        same = connection.execute("SELECT srs_id FROM gpkg_spatial_ref_sys WHERE definition = ?", (ref.definition,))
        row = same.fetchone()
        if row is not None:
            return int(row[0])
        highest = connection.execute("SELECT max(srs_id) FROM gpkg_spatial_ref_sys").fetchone()[0]
        srs_id = max(FIRST_CUSTOM_SRS_ID, highest + 1)
        connection.execute(
            "INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, NULL)",
            (ref.name, srs_id, ref.organization, srs_id, ref.definition),
        )
        return srs_id

    def create_feature_table(
        self, name: str, columns: Sequence[tuple[str, str]], srs_id: int, geometry_type: str, description: str = ""
    ) -> None:
        """Add a feature table (``fid``, ``geom`` and ``columns`` as (name, SQL type)) with its rows in the
        GeoPackage's own tables and its spatial index, in one transaction; a table that exists gets whichever of
        those it lacks (files left so by a full disk, or written without an index, are repaired here)."""
        with self.transaction() as connection:
            if not self.table_exists(name):
                self._create_table(name, [("geom", geometry_type), *columns])
            registered = self._register(name, "features", description, srs_id)
            connection.execute(
                "INSERT OR IGNORE INTO gpkg_geometry_columns VALUES (?, 'geom', ?, ?, 0, 0)",
                (name, geometry_type, srs_id),
            )
            if not self._has_spatial_index(name, "geom"):
                self._add_spatial_index(name, "geom")
            if registered:  # a repaired row: its extent is that of the features already there
                bounds = connection.execute(
                    "SELECT min(ST_MinX(geom)), min(ST_MinY(geom)), max(ST_MaxX(geom)), max(ST_MaxY(geom)) "
                    f"FROM {quote(name)} WHERE geom NOT NULL AND NOT ST_IsEmpty(geom)"
                ).fetchone()
                if bounds[0] is not None:
                    self.extend_extent(name, bounds)

    def _has_spatial_index(self, table: str, column: str) -> bool:
        """Whether the R-tree of ``table.column`` is there with the triggers that keep it (an index without them,
        as a write cut short could leave, would miss every later feature)."""
        prefix = f"rtree_{table}_{column}"
        names = {row[0] for row in self.connection.execute(
            "SELECT name FROM sqlite_master WHERE name = ?1 OR (type = 'trigger' AND name IN (?1 || '_insert', "
            "?1 || '_delete'))", (prefix,),
        )}
        return names == {prefix, f"{prefix}_insert", f"{prefix}_delete"}

    def _add_spatial_index(self, table: str, column: str) -> None:
        """The R-tree of ``table.column``, built anew (what a cut-short write left of one is dropped first)."""
        prefix = f"rtree_{table}_{column}"
        triggers = self.connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? AND substr(name, 1, ?) = ?",
            (table, len(prefix) + 1, prefix + "_"),
        ).fetchall()
        for (trigger,) in triggers:
            self.connection.execute(f"DROP TRIGGER {quote(trigger)}")
        self.connection.execute(f"DROP TABLE IF EXISTS {quote(prefix)}")
        for statement in _rtree_sql(table, column):
            self.connection.execute(statement)
        self.connection.execute(
            "INSERT OR REPLACE INTO gpkg_extensions VALUES (?, ?, 'gpkg_rtree_index', ?, 'write-only')",
            (table, column, "http://www.geopackage.org/spec/#extension_rtree"),
        )

    def create_attribute_table(
        self, name: str, columns: Sequence[tuple[str, str]], description: str = "", fid: str = "fid"
    ) -> None:
        """Add a table without geometry (``fid`` and ``columns``) and its ``gpkg_contents`` row, in one
        transaction; a table that exists gets the row where it lacks it."""
        with self.transaction():
            if not self.table_exists(name):
                self._create_table(name, columns, fid)
            self._register(name, "attributes", description, None)

    def _create_table(self, name: str, columns: Sequence[tuple[str, str]], fid: str = "fid") -> None:
        definitions = ", ".join(f"{quote(column)} {sql_type}" for column, sql_type in columns)
        self.connection.execute(
            f"CREATE TABLE {quote(name)} ({quote(fid)} INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, {definitions})"
        )

    def columns(self, table: str) -> list[str]:
        """The names of a table's columns, in order."""
        return [row[1] for row in self.connection.execute(f"PRAGMA table_info({quote(table)})")]

    def add_style(self, style: Mapping[str, object]) -> None:
        """Add a row (column → value) to QGIS's ``layer_styles``, made as QGIS makes it where missing, unless the
        table it styles (``f_table_name``) has a style there already: a style someone saved is never replaced."""
        with self.transaction():
            self.create_attribute_table(STYLES_TABLE, [(f.name, f.sql()) for f in STYLES_FIELDS], fid=STYLES_FID)
            styled = self.connection.execute(
                f"SELECT 1 FROM {quote(STYLES_TABLE)} WHERE f_table_name = ? LIMIT 1", (style["f_table_name"],)
            )
            if styled.fetchone() is not None:
                return
            row = {**style, "update_time": timestamp()}
            self.connection.execute(
                f"INSERT INTO {quote(STYLES_TABLE)} ({', '.join(quote(name) for name in row)}) "
                f"VALUES ({', '.join('?' * len(row))})",
                tuple(row.values()),
            )

    def _register(self, name: str, data_type: str, description: str, srs_id: int | None) -> bool:
        """The table's ``gpkg_contents`` row, where it has none; whether it was added."""
        added = self.connection.execute(
            "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, description, last_change, "
            "srs_id) VALUES (?, ?, ?, ?, ?, ?)",
            (name, data_type, name, description, timestamp(), srs_id),
        )
        return added.rowcount > 0

    def extend_extent(self, name: str, bounds: Bounds) -> None:
        """Grow a table's extent in ``gpkg_contents`` to cover ``bounds`` (call inside a transaction)."""
        min_x, min_y, max_x, max_y = bounds
        self.connection.execute(
            "UPDATE gpkg_contents SET min_x = min(coalesce(min_x, ?1), ?1), min_y = min(coalesce(min_y, ?2), ?2), "
            "max_x = max(coalesce(max_x, ?3), ?3), max_y = max(coalesce(max_y, ?4), ?4), last_change = ?5 "
            "WHERE table_name = ?6",
            (min_x, min_y, max_x, max_y, timestamp(), name),
        )
