"""A captions layer of a GeoPackage read with sqlite3, for ``ccexpert search`` and ``ccexpert calibrate``: the file
checked (a GeoPackage, the layer there, a CCExpert captions layer), its features as search entries.

Read-only: a file is read as it is (fields an older file lacks read as empty), never changed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo import schema
from ccexpert_core.geo.search import Entry

#: Entry's fields, in its order, as the layer's columns.
_ENTRY_COLUMNS = ("fid", "tile_id", "row", "col", "interval", "status", "caption", "change_detected", "change_kind",
                  "confidence", "date_before", "date_after", "review_status", "reviewed_caption", "p_right")


@contextmanager
def read_layer(path: Path, layer_name: str) -> Iterator[tuple[sqlite3.Connection, set[str]]]:
    """A read-only connection to the file and the columns of its captions layer ``layer_name``; a file that is not
    a GeoPackage with such a layer is a :class:`CCExpertError` that says what it is instead."""
    path = Path(path)
    if not path.is_file():
        raise CCExpertError(f"{path} does not exist: give the GeoPackage caption-region or QGIS wrote")
    try:
        connection = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise CCExpertError(f"cannot read {path}: {error}") from None
    try:
        try:
            layers = [row[0] for row in connection.execute("SELECT table_name FROM gpkg_contents ORDER BY 1")]
        except sqlite3.DatabaseError:
            raise CCExpertError(f"{path} is not a GeoPackage: give the GeoPackage caption-region or QGIS wrote") \
                from None
        if layer_name not in layers:
            captions = [name for name in layers if schema.missing_required(_columns(connection, name)) is None]
            raise CCExpertError(f"{path} has no layer '{layer_name}' (its captions layers: "
                                f"{', '.join(captions) or 'none'}): name the captions layer with --layer")
        columns = _columns(connection, layer_name)
        missing = schema.missing_required(columns)
        if missing is not None:
            raise CCExpertError(f"the layer '{layer_name}' of {path} is not a CCExpert captions layer (it has no "
                                f"{missing} field)")
        yield connection, columns
    except sqlite3.Error as error:
        raise CCExpertError(f"cannot read the layer '{layer_name}' of {path}: {error}") from None
    finally:
        connection.close()


def _columns(connection: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in connection.execute(f"PRAGMA table_info({schema.quote(table)})")}


def read_entries(path: Path, layer_name: str = schema.CAPTIONS_LAYER) -> list[Entry]:
    """Every feature of the layer as a search entry."""
    with read_layer(path, layer_name) as (connection, columns):
        selected = ", ".join(schema.quote(name) if name in columns else ("0" if name == "interval" else "NULL")
                             for name in _ENTRY_COLUMNS)
        rows = connection.execute(f"SELECT {selected} FROM {schema.quote(layer_name)}").fetchall()
    return [
        Entry(fid, tile_id, row, col, interval or 0, status, caption, None if changed is None else bool(changed),
              kind, confidence, before, after, review, reviewed, p_right)
        for (fid, tile_id, row, col, interval, status, caption, changed, kind, confidence, before, after, review,
             reviewed, p_right) in rows
    ]
