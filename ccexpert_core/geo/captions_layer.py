"""The ``captions`` layer of a region's GeoPackage: one polygon per tile and interval of the date series, with its
caption, status and thumbnails; and, for models with a change-map head, the ``changes`` layer: one multipolygon per
tile and interval around the changed places.

The fields, key, migration and default style are :mod:`ccexpert_core.geo.schema`'s (the QGIS plugin's writer
builds its layer from the same module). Resumable: (``tile_id``, ``interval``) is unique, a batch (its features,
their change areas and, for a series, its tiles' history) is written in one transaction, a rerun skips the features
already captioned or skipped (failed ones are tried again), and a feature written again is updated in place, so the
analyst's review survives. The options that decide which pixels a tile holds and who captions it are stored with the
layer, and a rerun with other options is refused rather than mixed in. Files written before this schema are migrated
on resume (the fields they lack are added).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo import run_contract, schema
from ccexpert_core.geo.gpkg import (
    APPLICATION_ID,
    Bounds,
    GeoPackage,
    SpatialRef,
    blob_bounds,
    multipolygon_blob,
    polygon_blob,
    quote,
    timestamp,
)
from ccexpert_core.geo.grid import Tile, TileGrid
from ccexpert_core.geo.run_contract import TileRecord

LAYER = schema.CAPTIONS_LAYER
CHANGES_LAYER = schema.CHANGES_LAYER
HISTORY_LAYER = schema.HISTORY_LAYER
THUMBNAILS_TABLE = schema.THUMBNAILS_TABLE
OPTIONS_TABLE = schema.OPTIONS_TABLE

CAPTIONED = schema.CAPTIONED
SKIPPED_NODATA = schema.SKIPPED_NODATA
FAILED = schema.FAILED
FINAL_STATUSES = schema.FINAL_STATUSES

#: The captions layer's columns as (name, SQL type and constraints), from the schema.
COLUMNS: tuple[tuple[str, str], ...] = tuple((field.name, field.sql()) for field in schema.FIELDS)
_KEY_COLUMNS = (("tile_id", "TEXT NOT NULL"), ("interval", "INTEGER NOT NULL DEFAULT 0"))
_THUMBNAIL_COLUMNS = (*_KEY_COLUMNS, ("before_png", "BLOB"), ("after_png", "BLOB"))
_CHANGES_COLUMNS = tuple((field.name, field.sql()) for field in schema.CHANGES_FIELDS)
_HISTORY_COLUMNS = tuple((field.name, field.sql()) for field in schema.HISTORY_FIELDS)

_RUN_NAMES = [field.name for field in schema.RUN_FIELDS]
_VALUE_NAMES = [name for name in _RUN_NAMES if name not in schema.KEY]
_KEY_WHERE = " AND ".join(f"{quote(name)} = ?" for name in schema.KEY)
_INSERT = (
    f"INSERT INTO {quote(LAYER)} (geom, {', '.join(quote(n) for n in _RUN_NAMES)}) "
    f"VALUES ({', '.join('?' * (len(_RUN_NAMES) + 1))})"
)
# Replacing is an UPDATE, then an INSERT where nothing was there, not one UPSERT: SQLite lets an UPSERT's conflict
# clause override the INSERT OR REPLACE in the R-tree triggers, which then fail on the tile's own index entry. It
# sets the run's fields only, so the analyst's review stays.
_UPDATE = (
    f"UPDATE {quote(LAYER)} SET geom = ?, " + ", ".join(f"{quote(n)} = ?" for n in _VALUE_NAMES)
    + f" WHERE {_KEY_WHERE}"
)


@dataclass(frozen=True)
class SeriesHistory:
    """What a series' ``history`` layer is written from: the run's grid and the intervals a tile's history tells
    (those that compare a date with the next: :meth:`~ccexpert_core.geo.run_contract.Dating.consecutive`)."""

    grid: TileGrid
    consecutive: Mapping[int, tuple[int, int]]


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
    interval: int = 0
    date_before: str | None = None
    date_after: str | None = None
    change_kind: str | None = None
    review_status: str | None = None
    reviewed_caption: str | None = None
    reviewed_at: str | None = None


def check_output(
    path: Path, options: Mapping[str, str], add_to_existing: bool = False,
    also_accepted: Mapping[str, Collection[str]] | None = None,
) -> None:
    """Refuse an existing ``path`` that this run must not write, reading it only (so that a refused run leaves it
    byte for byte as it was): not a GeoPackage, another tool's GeoPackage (unless ``add_to_existing``), a
    ``captions`` layer of another schema, or tiles made with other ``options`` (keys missing from ``options`` are
    not compared: the model's id is known only once it loads). ``also_accepted`` names stored values that count as
    the same as ``options``' (a model's id as older versions stored it)."""
    path = Path(path)
    if not path.exists():
        return
    try:
        connection = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise CCExpertError(f"cannot read the GeoPackage {path}: {error}") from None
    try:
        _check_existing(connection, path, options, add_to_existing, also_accepted or {})
    except sqlite3.DatabaseError:
        raise CCExpertError(f"{path} exists and is not a GeoPackage: choose another output file") from None
    finally:
        connection.close()


def _check_existing(
    connection: sqlite3.Connection, path: Path, options: Mapping[str, str], add_to_existing: bool,
    also_accepted: Mapping[str, Collection[str]],
) -> None:
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return  # an empty file: nothing to keep
    if connection.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        raise CCExpertError(f"{path} exists and is not a GeoPackage: choose another output file")
    contents = {row[0] for row in connection.execute("SELECT table_name FROM gpkg_contents")} & tables
    layers = (LAYER, CHANGES_LAYER, schema.HISTORY_LAYER)
    ours = {name for name in contents if name in layers or name.startswith(schema.TABLE_PREFIX)}
    if contents and not ours and not add_to_existing:
        shown = ", ".join(sorted(contents)[:3]) + (", …" if len(contents) > 3 else "")
        raise CCExpertError(
            f"{path} is a GeoPackage of another tool (layers {shown}): choose a new output file, or pass "
            "--add-to-existing to add the caption layers beside its own"
        )
    if LAYER not in tables:
        return
    present = {row[1] for row in connection.execute(f"PRAGMA table_info({quote(LAYER)})")}
    missing = schema.missing_required(present)
    if missing is not None:
        raise CCExpertError(
            f"the layer '{LAYER}' of {path} is not a CCExpert captions layer (it has no field {missing}): choose "
            "another output file"
        )
    has_tiles = connection.execute(f"SELECT 1 FROM {LAYER} LIMIT 1").fetchone() is not None
    if not has_tiles or OPTIONS_TABLE not in tables:
        return
    stored = dict(connection.execute(f"SELECT key, value FROM {OPTIONS_TABLE}").fetchall())
    key = run_contract.changed_option(stored, options, _same_crs, also_accepted) if stored else None
    if key is not None:
        raise CCExpertError(run_contract.other_options(
            path, stored, options, key, "rerun with the same options to resume, or choose another --out"))


def _same_crs(first: str, second: str) -> bool:
    from ccexpert_core.geo.raster import same_crs  # rasterio, only where two CRSs are written differently

    return same_crs(first, second)


class CaptionsLayer:
    """The ``captions`` layer of ``path``, created if missing and migrated to the schema if older; refuses, before
    writing anything, what :func:`check_output` refuses."""

    def __init__(
        self, path: Path, srs: SpatialRef, options: Mapping[str, str], before_source: str, after_source: str,
        model_id: str, add_to_existing: bool = False, also_accepted: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        check_output(path, options, add_to_existing, also_accepted)
        self.package = GeoPackage(path)
        self.before_source, self.after_source, self.model_id = before_source, after_source, model_id
        try:
            with self.package.transaction():
                self.srs_id = self.package.srs_id(srs)
            self.package.create_feature_table(LAYER, COLUMNS, self.srs_id, "POLYGON", schema.layer_description())
            self._keyed(LAYER, COLUMNS)
            for companion, add in ((CHANGES_LAYER, self._add_changes_layer), (HISTORY_LAYER, self._add_history_layer)):
                if self.package.table_exists(companion):
                    add()  # a file a full disk or an earlier version left without their GeoPackage rows is repaired
            #: Files written before date series keep ``tile_id`` unique on its own: one interval per tile.
            self.one_interval_per_tile = _unique_alone(self.package.connection, LAYER, "tile_id")
            self.package.create_attribute_table(
                THUMBNAILS_TABLE, _THUMBNAIL_COLUMNS, "ccexpert: tile thumbnails for the HTML report"
            )
            self._keyed(THUMBNAILS_TABLE, _THUMBNAIL_COLUMNS)
            self.package.create_attribute_table(
                OPTIONS_TABLE, [("key", "TEXT NOT NULL UNIQUE"), ("value", "TEXT")],
                "ccexpert: the options the captions were made with",
            )
            self._store_options(options)
            self.package.add_style(schema.style_row(LAYER))
        except sqlite3.Error as error:
            self.package.close()
            raise CCExpertError(f"cannot write to {path}: {error}") from None
        except BaseException:
            self.package.close()
            raise

    def _keyed(self, table: str, columns: Sequence[tuple[str, str]]) -> None:
        """Add the columns an older ``table`` lacks, and the unique index of the feature key."""
        present = set(self.package.columns(table))
        with self.package.transaction() as connection:
            for name, sql_type in columns:
                if name not in present:
                    connection.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(name)} {sql_type}")
            connection.execute(schema.key_index_sql(table))

    def _store_options(self, options: Mapping[str, str]) -> None:
        """Record the run's options where the layer has no tiles yet (check_output compared them otherwise)."""
        with self.package.transaction() as connection:
            if connection.execute(f"SELECT 1 FROM {LAYER} LIMIT 1").fetchone() is not None:
                return
            connection.execute(f"DELETE FROM {OPTIONS_TABLE}")
            connection.executemany(f"INSERT INTO {OPTIONS_TABLE} (key, value) VALUES (?, ?)", options.items())

    def finished_keys(self) -> set[tuple[str, int]]:
        """(tile_id, interval) of the features already captioned or skipped."""
        marks = ", ".join("?" * len(FINAL_STATUSES))
        rows = self.package.connection.execute(
            f'SELECT tile_id, "interval" FROM {LAYER} WHERE status IN ({marks})', FINAL_STATUSES
        )
        return {(tile_id, interval) for tile_id, interval in rows}

    def finished_ids(self) -> set[str]:
        """Ids of the tiles whose first interval (a two-date run's only one) is already captioned or skipped."""
        return {tile_id for tile_id, interval in self.finished_keys() if interval == 0}

    def write(self, records: Sequence[TileRecord], history: SeriesHistory | None = None) -> None:
        """Write a batch in one transaction: its features (a feature written before is updated, its review kept,
        never duplicated), their change areas and, with ``history``, the history of each of their tiles; a run
        killed or a disk filled anywhere in it leaves all of the batch or none of it."""
        if self.one_interval_per_tile and any(record.interval != 0 for record in records):
            raise CCExpertError(
                f"{self.package.path} was written before date series and holds one interval per tile: write a series "
                "of more than two dates to a new file"
            )
        now = timestamp()
        try:
            with self.package.transaction():
                self._write_features(records, now)
                mapped = [record for record in records if record.changes is not None]
                if mapped:
                    self._write_changes(mapped, now)
                if history is not None:
                    tiles = list({record.tile.tile_id: record.tile for record in records}.values())
                    self._write_history(tiles, history, now)
        except sqlite3.Error as error:
            raise CCExpertError(f"cannot write to {self.package.path}: {error}") from None

    def _write_features(self, records: Sequence[TileRecord], now: str) -> None:
        connection = self.package.connection
        for record in records:
            values = record.values(self.before_source, self.after_source, self.model_id, now)
            geom = polygon_blob(record.footprint, self.srs_id)
            key = tuple(values[name] for name in schema.KEY)
            if connection.execute(_UPDATE, (geom, *(values[n] for n in _VALUE_NAMES), *key)).rowcount == 0:
                connection.execute(_INSERT, (geom, *(values[n] for n in _RUN_NAMES)))
        connection.executemany(
            f'INSERT OR REPLACE INTO {THUMBNAILS_TABLE} (tile_id, "interval", before_png, after_png) '
            "VALUES (?, ?, ?, ?)",
            [(r.tile.tile_id, r.interval, *r.thumbnails) for r in records if r.thumbnails is not None],
        )
        if records:
            xs = [x for record in records for x, _ in record.footprint]
            ys = [y for record in records for _, y in record.footprint]
            self.package.extend_extent(LAYER, (min(xs), min(ys), max(xs), max(ys)))

    def _add_changes_layer(self) -> None:
        """The ``changes`` layer with its key, made where missing, repaired where a write cut short left it so."""
        self.package.create_feature_table(
            CHANGES_LAYER, _CHANGES_COLUMNS, self.srs_id, "MULTIPOLYGON", schema.CHANGES_DESCRIPTION,
        )
        self._keyed(CHANGES_LAYER, _CHANGES_COLUMNS)

    def _add_history_layer(self) -> None:
        """The ``history`` layer keyed by tile, made where missing, repaired where a write cut short left it so."""
        self.package.create_feature_table(
            HISTORY_LAYER, _HISTORY_COLUMNS, self.srs_id, "POLYGON", schema.HISTORY_DESCRIPTION
        )
        with self.package.transaction() as connection:
            index = quote(HISTORY_LAYER + "_key")
            connection.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {quote(HISTORY_LAYER)} (tile_id)")

    def _write_changes(self, records: Sequence[TileRecord], now: str) -> None:
        # Made on first use, so that outputs of models without a change-map head have no empty layer.
        self._add_changes_layer()
        connection = self.package.connection
        for record in records:
            key = (record.tile.tile_id, record.interval)
            connection.execute(f'DELETE FROM {CHANGES_LAYER} WHERE tile_id = ? AND "interval" = ?', key)
            if record.changes:
                connection.execute(
                    f'INSERT INTO {CHANGES_LAYER} (geom, tile_id, "interval", model_id, created_at) '
                    "VALUES (?, ?, ?, ?, ?)",
                    (multipolygon_blob(record.changes, self.srs_id), *key, self.model_id, now),
                )
                points = [p for polygon in record.changes for p in polygon[0]]
                xs, ys = [p[0] for p in points], [p[1] for p in points]
                self.package.extend_extent(CHANGES_LAYER, (min(xs), min(ys), max(xs), max(ys)))

    def _write_history(self, tiles: Sequence[Tile], history: SeriesHistory, now: str) -> None:
        """The ``history`` feature of each of ``tiles`` from what the layer holds of its consecutive intervals (a
        tile's history is replaced)."""
        if not self.package.table_exists(HISTORY_LAYER):
            self._add_history_layer()
        consecutive = history.consecutive
        ids = [tile.tile_id for tile in tiles]
        marks = ", ".join("?" * len(ids))
        connection = self.package.connection
        rows = connection.execute(
            f'SELECT tile_id, "interval", date_before, date_after, status, '
            f"coalesce(nullif(reviewed_caption, ''), caption), change_detected FROM {quote(LAYER)} "
            f"WHERE tile_id IN ({marks})", ids,
        ).fetchall()
        entries: dict[str, dict[int, schema.IntervalEntry]] = {tile_id: {} for tile_id in ids}
        for tile_id, k, before, after, status, caption, changed in rows:
            if k in consecutive:
                i, j = consecutive[k]
                entries[tile_id][k] = schema.IntervalEntry(
                    run_contract.history_date(before, i), run_contract.history_date(after, j), status, caption,
                    None if changed is None else bool(changed),
                )
        names = [field.name for field in schema.HISTORY_FIELDS]
        insert = (f"INSERT INTO {quote(HISTORY_LAYER)} (geom, {', '.join(quote(n) for n in names)}) "
                  f"VALUES ({', '.join('?' * (len(names) + 1))})")
        for tile in tiles:
            told = [entries[tile.tile_id][k] for k in sorted(entries[tile.tile_id])]
            values = {"tile_id": tile.tile_id, "row": tile.row, "col": tile.col, **schema.history(told),
                      "model_id": self.model_id, "created_at": now}
            footprint = history.grid.footprint(tile)
            connection.execute(f"DELETE FROM {quote(HISTORY_LAYER)} WHERE tile_id = ?", (tile.tile_id,))
            connection.execute(insert, (polygon_blob(footprint, self.srs_id), *(values[n] for n in names)))
            xs, ys = [x for x, _ in footprint], [y for _, y in footprint]
            self.package.extend_extent(HISTORY_LAYER, (min(xs), min(ys), max(xs), max(ys)))

    def close(self) -> None:
        """Close the GeoPackage."""
        self.package.close()

    def __enter__(self) -> "CaptionsLayer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unique_alone(connection: sqlite3.Connection, table: str, column: str) -> bool:
    """Whether ``column`` of ``table`` has a UNIQUE constraint or index of its own."""
    for _, name, unique, *_ in connection.execute(f"PRAGMA index_list({quote(table)})").fetchall():
        columns = [row[2] for row in connection.execute(f"PRAGMA index_info({quote(name)})")]
        if unique and columns == [column]:
            return True
    return False


#: What :func:`read_tiles` reads of each feature, in :class:`StoredTile`'s order, and what a file written before a
#: field existed gives for it.
_STORED = (
    ("tile_id", None), ("row", None), ("col", None), ("caption", None), ("change_detected", None),
    ("confidence", None), ("status", None), ("interval", 0), ("date_before", None), ("date_after", None),
    ("change_kind", None), ("review_status", None), ("reviewed_caption", None), ("reviewed_at", None),
)


def read_tiles(path: Path) -> Iterator[StoredTile]:
    """The features of a region's GeoPackage by row, column and interval, with their thumbnails where stored (a
    file is read as it is: fields it lacks read as they would after migration)."""
    try:
        connection = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise CCExpertError(f"cannot read {path}: {error}") from None
    try:
        present = {row[1] for row in connection.execute(f"PRAGMA table_info({quote(LAYER)})")}
        thumbnails = {row[1] for row in connection.execute(f"PRAGMA table_info({quote(THUMBNAILS_TABLE)})")}
        selected = ", ".join(
            f"c.{quote(name)}" if name in present else ("NULL" if default is None else str(default))
            for name, default in _STORED
        )
        series = "interval" in present and "interval" in thumbnails
        join = "t.tile_id = c.tile_id" + (' AND t."interval" = c."interval"' if series else "")
        order = 'c."row", c."col"' + (', c."interval"' if "interval" in present else "")
        query = (
            f"SELECT {selected}, c.geom, t.before_png, t.after_png FROM {LAYER} c "
            f"LEFT JOIN {THUMBNAILS_TABLE} t ON {join} ORDER BY {order}"
        )
        for values in connection.execute(query):
            tile_id, row, col, caption, change, confidence, status, *extra, geom, before, after = values
            yield StoredTile(
                tile_id, row, col, caption, None if change is None else bool(change), confidence, status,
                blob_bounds(geom), before, after, *extra,
            )
    except sqlite3.Error as error:
        raise CCExpertError(f"cannot read the captions of {path}: {error}") from None
    finally:
        connection.close()
