"""The ``captions`` layer of a region's GeoPackage: one polygon per tile with its caption, status and thumbnails;
and, for models with a change-map head, the ``changes`` layer: one multipolygon per tile around the changed places.

Resumable: ``tile_id`` is unique, a batch is written in one transaction, and a rerun skips the tiles already
captioned or skipped (failed tiles are tried again). The options that decide which pixels a tile holds and who
captions it are stored with the layer, and a rerun with other options is refused rather than mixed in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ccexpert_core.captions import CaptionResult
from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo.gpkg import (
    APPLICATION_ID, Bounds, GeoPackage, Point, SpatialRef, blob_bounds, multipolygon_blob, polygon_blob, quote,
    timestamp,
)
from ccexpert_core.geo.grid import Polygon, Tile

LAYER = "captions"
CHANGES_LAYER = "changes"
THUMBNAILS_TABLE = "ccexpert_thumbnails"
OPTIONS_TABLE = "ccexpert_run_options"

CAPTIONED = "captioned"
SKIPPED_NODATA = "skipped_nodata"
FAILED = "failed"
#: Tiles with these statuses are done: a rerun does not redo them.
FINAL_STATUSES = (CAPTIONED, SKIPPED_NODATA)

COLUMNS: tuple[tuple[str, str], ...] = (
    ("tile_id", "TEXT NOT NULL UNIQUE"),
    ("row", "INTEGER NOT NULL"),
    ("col", "INTEGER NOT NULL"),
    ("caption", "TEXT"),
    ("change_detected", "BOOLEAN"),
    ("confidence", "REAL"),
    ("status", "TEXT NOT NULL"),
    ("before_source", "TEXT"),
    ("after_source", "TEXT"),
    ("model_id", "TEXT"),
    ("created_at", "DATETIME"),
)
_NAMES = [name for name, _ in COLUMNS]
_INSERT = (
    f"INSERT INTO {LAYER} (geom, {', '.join(quote(n) for n in _NAMES)}) VALUES ({', '.join('?' * (len(_NAMES) + 1))})"
)
# Replacing is an UPDATE, then an INSERT where nothing was there, not one UPSERT: SQLite lets an UPSERT's conflict
# clause override the INSERT OR REPLACE in the R-tree triggers, which then fail on the tile's own index entry.
_UPDATE = f"UPDATE {LAYER} SET geom = ?, " + ", ".join(f"{quote(n)} = ?" for n in _NAMES[1:]) + " WHERE tile_id = ?"


@dataclass(frozen=True)
class TileRecord:
    """What a run learned about one tile, ready to be written."""

    tile: Tile
    footprint: Sequence[Point]
    status: str
    result: CaptionResult | None = None
    #: PNG bytes of the before and after thumbnails, for the report.
    thumbnails: tuple[bytes, bytes] | None = None
    #: Polygons around the changed places, where the model gives a change map (None where it does not).
    changes: list[Polygon] | None = None


@dataclass(frozen=True)
class StoredTile:
    """One feature of the layer as read back (for the report and summaries)."""

    tile_id: str
    row: int
    col: int
    caption: str | None
    change_detected: bool | None
    confidence: float | None
    status: str
    bounds: Bounds
    before_png: bytes | None
    after_png: bytes | None


def check_output(path: Path, options: Mapping[str, str], add_to_existing: bool = False) -> None:
    """Refuse an existing ``path`` that this run must not write, reading it only (so that a refused run leaves it
    byte for byte as it was): not a GeoPackage, another tool's GeoPackage (unless ``add_to_existing``), a
    ``captions`` layer of another schema, or tiles made with other ``options`` (keys missing from ``options`` are
    not compared: the model's id is known only once it loads)."""
    path = Path(path)
    if not path.exists():
        return
    try:
        connection = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise CCExpertError(f"cannot read the GeoPackage {path}: {error}") from None
    try:
        _check_existing(connection, path, options, add_to_existing)
    except sqlite3.DatabaseError:
        raise CCExpertError(f"{path} exists and is not a GeoPackage: choose another output file") from None
    finally:
        connection.close()


def _check_existing(
    connection: sqlite3.Connection, path: Path, options: Mapping[str, str], add_to_existing: bool
) -> None:
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return  # an empty file: nothing to keep
    if connection.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        raise CCExpertError(f"{path} exists and is not a GeoPackage: choose another output file")
    contents = {row[0] for row in connection.execute("SELECT table_name FROM gpkg_contents")} & tables
    ours = {name for name in contents if name in (LAYER, CHANGES_LAYER) or name.startswith("ccexpert_")}
    if contents and not ours and not add_to_existing:
        shown = ", ".join(sorted(contents)[:3]) + (", …" if len(contents) > 3 else "")
        raise CCExpertError(
            f"{path} is a GeoPackage of another tool (layers {shown}): choose a new output file, or pass "
            "--add-to-existing to add the caption layers beside its own"
        )
    if LAYER not in tables:
        return
    present = {row[1] for row in connection.execute(f"PRAGMA table_info({quote(LAYER)})")}
    missing = [name for name in _NAMES if name not in present]
    if missing:
        raise CCExpertError(
            f"the layer '{LAYER}' of {path} is not a CCExpert captions layer (it has no field {missing[0]}): choose "
            "another output file"
        )
    has_tiles = connection.execute(f"SELECT 1 FROM {LAYER} LIMIT 1").fetchone() is not None
    if not has_tiles or OPTIONS_TABLE not in tables:
        return
    stored = dict(connection.execute(f"SELECT key, value FROM {OPTIONS_TABLE}").fetchall())
    changed = [key for key in options if stored and stored.get(key) != options[key]]
    if changed:
        key = changed[0]
        raise CCExpertError(
            f"{path} holds tiles made with other options ({key}: {stored.get(key)} there, {options[key]} now): "
            "rerun with the same options to resume, or choose another --out"
        )


class CaptionsLayer:
    """The ``captions`` layer of ``path``, created if missing; refuses, before writing anything, what
    :func:`check_output` refuses."""

    def __init__(
        self, path: Path, srs: SpatialRef, options: Mapping[str, str], before_source: str, after_source: str,
        model_id: str, add_to_existing: bool = False,
    ) -> None:
        check_output(path, options, add_to_existing)
        self.package = GeoPackage(path)
        self.before_source, self.after_source, self.model_id = before_source, after_source, model_id
        try:
            with self.package.connection:
                self.srs_id = self.package.srs_id(srs)
            self.package.create_feature_table(LAYER, COLUMNS, self.srs_id, "POLYGON", "ccexpert change captions")
            self.package.create_attribute_table(
                THUMBNAILS_TABLE,
                [("tile_id", "TEXT NOT NULL UNIQUE"), ("before_png", "BLOB"), ("after_png", "BLOB")],
                "ccexpert: tile thumbnails for the HTML report",
            )
            self.package.create_attribute_table(
                OPTIONS_TABLE, [("key", "TEXT NOT NULL UNIQUE"), ("value", "TEXT")],
                "ccexpert: the options the captions were made with",
            )
            self._store_options(options)
        except BaseException:
            self.package.close()
            raise

    def _store_options(self, options: Mapping[str, str]) -> None:
        """Record the run's options where the layer has no tiles yet (check_output compared them otherwise)."""
        connection = self.package.connection
        if connection.execute(f"SELECT 1 FROM {LAYER} LIMIT 1").fetchone() is not None:
            return
        with connection:
            connection.execute(f"DELETE FROM {OPTIONS_TABLE}")
            connection.executemany(f"INSERT INTO {OPTIONS_TABLE} (key, value) VALUES (?, ?)", options.items())

    def finished_ids(self) -> set[str]:
        """Ids of the tiles already captioned or skipped."""
        marks = ", ".join("?" * len(FINAL_STATUSES))
        rows = self.package.connection.execute(f"SELECT tile_id FROM {LAYER} WHERE status IN ({marks})", FINAL_STATUSES)
        return {row[0] for row in rows}

    def write(self, records: Sequence[TileRecord]) -> None:
        """Write a batch of tiles in one transaction (a tile written before is replaced, never duplicated)."""
        now = timestamp()
        rows, thumbnails = [], []
        for record in records:
            result = record.result
            rows.append((
                polygon_blob(record.footprint, self.srs_id), record.tile.tile_id, record.tile.row, record.tile.col,
                None if result is None else result.caption,
                None if result is None else int(result.change_detected),
                None if result is None else result.confidence,
                record.status, self.before_source, self.after_source, self.model_id, now,
            ))
            if record.thumbnails is not None:
                thumbnails.append((record.tile.tile_id, *record.thumbnails))
        xs = [x for record in records for x, _ in record.footprint]
        ys = [y for record in records for _, y in record.footprint]
        mapped = [record for record in records if record.changes is not None]
        try:
            with self.package.connection as connection:
                for geom, tile_id, *values in rows:
                    if connection.execute(_UPDATE, (geom, *values, tile_id)).rowcount == 0:
                        connection.execute(_INSERT, (geom, tile_id, *values))
                connection.executemany(
                    f"INSERT OR REPLACE INTO {THUMBNAILS_TABLE} (tile_id, before_png, after_png) VALUES (?, ?, ?)",
                    thumbnails,
                )
                if records:
                    self.package.extend_extent(LAYER, (min(xs), min(ys), max(xs), max(ys)))
            if mapped:
                self._write_changes(mapped, now)
        except sqlite3.Error as error:
            raise CCExpertError(f"cannot write to {self.package.path}: {error}") from None

    def _write_changes(self, records: Sequence[TileRecord], now: str) -> None:
        # Made on first use, so that outputs of models without a change-map head have no empty layer.
        self.package.create_feature_table(
            CHANGES_LAYER, [("tile_id", "TEXT NOT NULL UNIQUE"), ("model_id", "TEXT"), ("created_at", "DATETIME")],
            self.srs_id, "MULTIPOLYGON", "ccexpert: changed places from the model's change map",
        )
        with self.package.connection as connection:
            for record in records:
                tile_id = record.tile.tile_id
                connection.execute(f"DELETE FROM {CHANGES_LAYER} WHERE tile_id = ?", (tile_id,))
                if record.changes:
                    connection.execute(
                        f"INSERT INTO {CHANGES_LAYER} (geom, tile_id, model_id, created_at) VALUES (?, ?, ?, ?)",
                        (multipolygon_blob(record.changes, self.srs_id), tile_id, self.model_id, now),
                    )
                    points = [p for polygon in record.changes for p in polygon[0]]
                    xs, ys = [p[0] for p in points], [p[1] for p in points]
                    self.package.extend_extent(CHANGES_LAYER, (min(xs), min(ys), max(xs), max(ys)))

    def close(self) -> None:
        """Close the GeoPackage."""
        self.package.close()

    def __enter__(self) -> "CaptionsLayer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_tiles(path: Path) -> Iterator[StoredTile]:
    """The tiles of a region's GeoPackage, row by row, with their thumbnails where stored."""
    try:
        connection = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise CCExpertError(f"cannot read {path}: {error}") from None
    try:
        query = (
            f"SELECT c.tile_id, c.row, c.col, c.caption, c.change_detected, c.confidence, c.status, c.geom, "
            f"t.before_png, t.after_png FROM {LAYER} c LEFT JOIN {THUMBNAILS_TABLE} t ON t.tile_id = c.tile_id "
            f"ORDER BY c.row, c.col"
        )
        for tile_id, row, col, caption, change, confidence, status, geom, before, after in connection.execute(query):
            yield StoredTile(
                tile_id, row, col, caption, None if change is None else bool(change), confidence, status,
                blob_bounds(geom), before, after,
            )
    except sqlite3.Error as error:
        raise CCExpertError(f"cannot read the captions of {path}: {error}") from None
    finally:
        connection.close()
