"""The GeoPackage output: GDAL/OGR reads it with the right CRS and features; the layer is the schema's, keyed on
(tile_id, interval); reruns are checked and keep the analyst's review; older files are migrated; the default style
travels in layer_styles."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest
from rasterio.crs import CRS

from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo import schema
from ccexpert_core.geo.captions_layer import (
    CAPTIONED,
    FAILED,
    LAYER,
    THUMBNAILS_TABLE,
    CaptionsLayer,
    TileRecord,
    check_output,
    read_tiles,
)
from ccexpert_core.geo.gpkg import GeoPackage, polygon_blob
from ccexpert_core.geo.grid import TileGrid
from ccexpert_core.geo.raster import spatial_ref

pyogrio = pytest.importorskip("pyogrio", reason="pyogrio (GDAL/OGR for Python) is needed to read the GeoPackage")

GT = (431000.0, 0.5, 0.0, 4829000.0, 0.0, -0.5)
OPTIONS = {"tile_size": "64", "model_id": "m"}


def records(grid: TileGrid, status: str = CAPTIONED, caption: str = "a road has been built") -> list[TileRecord]:
    said = (caption, True, 0.7) if status == CAPTIONED else (None, None, None)
    return [TileRecord(t, grid.footprint(t), status, *said, thumbnails=(b"png1", b"png2")) for t in grid.tiles()]


def open_layer(path: Path, crs: str = "EPSG:32631", options: dict[str, str] = OPTIONS) -> CaptionsLayer:
    return CaptionsLayer(path, spatial_ref(CRS.from_user_input(crs)), options, "before.tif", "after.tif", "m")


def test_gdal_reads_the_layer_with_its_crs_fields_and_features(tmp_path: Path) -> None:
    out = tmp_path / "captions.gpkg"
    grid = TileGrid(256, 128, GT, 64)
    with open_layer(out) as layer:
        layer.write(records(grid)[:5])
        layer.write(records(grid)[5:])
    info = pyogrio.read_info(out, layer=LAYER)
    assert info["crs"] == "EPSG:32631" and info["features"] == 8 and info["geometry_type"] == "Polygon"
    assert tuple(info["fields"]) == schema.FIELD_NAMES
    assert info["total_bounds"] == pytest.approx((431000.0, 4828936.0, 431128.0, 4829000.0))
    meta, _, geometries, fields = pyogrio.raw.read(out, layer=LAYER)
    columns = dict(zip(meta["fields"], fields))
    assert columns["tile_id"][0] == "r0_c0" and columns["caption"][0] == "a road has been built"
    assert bool(columns["change_detected"][0]) and columns["status"][0] == CAPTIONED
    assert len(geometries) == 8
    stored = list(read_tiles(out))
    assert stored[0].bounds == pytest.approx(grid.bounds(grid.tiles()[0])) and stored[0].before_png == b"png1"


def test_a_crs_without_epsg_code_gets_its_own_srs(tmp_path: Path) -> None:
    out = tmp_path / "custom.gpkg"
    custom = "+proj=laea +lat_0=47 +lon_0=7.5 +x_0=1000 +y_0=2000 +ellps=GRS80 +units=m +no_defs"
    with open_layer(out, custom) as layer:
        layer.write(records(TileGrid(64, 64, GT, 64)))
        assert layer.srs_id >= 100000
    assert CRS.from_user_input(pyogrio.read_info(out, layer=LAYER)["crs"]) == CRS.from_user_input(custom)


def test_tiles_are_replaced_not_duplicated_and_finished_ones_are_known(tmp_path: Path) -> None:
    out = tmp_path / "captions.gpkg"
    grid = TileGrid(128, 64, GT, 64)
    with open_layer(out) as layer:
        layer.write(records(grid, FAILED))
        assert layer.finished_ids() == set()
    with open_layer(out) as layer:
        layer.write(records(grid))
        assert layer.finished_ids() == {"r0_c0", "r0_c1"}
    assert pyogrio.read_info(out, layer=LAYER)["features"] == 2
    package = GeoPackage(out)  # a plain sqlite3 connection lacks the functions of the spatial index's triggers
    with pytest.raises(sqlite3.IntegrityError):
        package.connection.execute(f"INSERT INTO {LAYER} (tile_id, row, col, status) VALUES ('r0_c0', 0, 0, 'x')")
    package.close()


def test_other_options_are_refused_and_the_file_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "captions.gpkg"
    with open_layer(out) as layer:
        layer.write(records(TileGrid(128, 64, GT, 64)))
    with pytest.raises(CCExpertError, match="tile_size: 64 there, 128 now"):
        open_layer(out, options={"tile_size": "128", "model_id": "m"})
    assert pyogrio.read_info(out, layer=LAYER)["features"] == 2


def test_outputs_that_cannot_be_written(tmp_path: Path) -> None:
    text = tmp_path / "notes.gpkg"
    text.write_text("not a database, just some text that is long enough to fill a sqlite header " * 3)
    with pytest.raises(CCExpertError, match="notes.gpkg"):
        open_layer(text)
    assert text.read_text().startswith("not a database")
    with pytest.raises(CCExpertError, match="cannot write"):
        open_layer(tmp_path / "missing-folder" / "out.gpkg")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE t (x)")
    with pytest.raises(CCExpertError, match="not a GeoPackage"):
        open_layer(other)


SYSTEM_PYTHON = Path("/usr/bin/python3")
GPKG_VALIDATOR = Path("/usr/lib/python3/dist-packages/osgeo_utils/samples/validate_gpkg.py")
QGIS_OPEN = """
import sys
from qgis.core import QgsApplication, QgsVectorLayer
app = QgsApplication([], False)
app.initQgis()
for name in ("captions", "changes"):
    layer = QgsVectorLayer(f"{sys.argv[1]}|layername={name}", name, "ogr")
    print(name, layer.isValid(), layer.featureCount(), layer.crs().authid())
app.exitQgis()
"""


def layer_with_changes(path: Path) -> Path:
    grid = TileGrid(128, 64, GT, 64)
    square = [[(431001.0, 4828999.0), (431010.0, 4828999.0), (431010.0, 4828990.0), (431001.0, 4828999.0)]]
    with open_layer(path) as layer:
        layer.write([TileRecord(t, grid.footprint(t), CAPTIONED, changes=[square]) for t in grid.tiles()])
    return path


def test_gdal_validator_accepts_the_geopackage(tmp_path: Path) -> None:
    if not GPKG_VALIDATOR.exists():
        pytest.skip(f"GDAL's GeoPackage validator is not installed ({GPKG_VALIDATOR}, Debian's python3-gdal)")
    out = layer_with_changes(tmp_path / "captions.gpkg")
    result = subprocess.run([str(SYSTEM_PYTHON), str(GPKG_VALIDATOR), str(out)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stdout + result.stderr


def test_qgis_opens_both_layers(tmp_path: Path) -> None:
    probe = subprocess.run([str(SYSTEM_PYTHON), "-c", "import qgis.core"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("QGIS's Python (python3-qgis) is not installed")
    out = layer_with_changes(tmp_path / "captions.gpkg")
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(runtime), "GDAL_PAM_ENABLED": "NO"}
    result = subprocess.run([str(SYSTEM_PYTHON), "-c", QGIS_OPEN, str(out)], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.stdout.splitlines() == ["captions True 2 EPSG:32631", "changes True 2 EPSG:32631"], result.stderr


def test_the_layer_has_a_spatial_index_gdal_uses_and_it_follows_replaced_tiles(tmp_path: Path) -> None:
    out = tmp_path / "captions.gpkg"
    grid = TileGrid(256, 128, GT, 64)
    with open_layer(out) as layer:
        layer.write(records(grid, FAILED))
    with open_layer(out) as layer:
        layer.write(records(grid)[:3])  # three tiles replaced in place (an upsert: the update triggers)
    sql = f"SELECT HasSpatialIndex('{LAYER}', 'geom') AS indexed"
    assert pyogrio.raw.read(out, sql=sql)[3][0][0] == 1
    _, _, geometries, _ = pyogrio.raw.read(out, layer=LAYER, bbox=(431000.0, 4828990.0, 431010.0, 4829000.0))
    assert len(geometries) == 1  # the R-tree answers the window query: tile r0_c0 only
    with sqlite3.connect(out) as connection:
        index = connection.execute(f"SELECT id, minx, maxx, miny, maxy FROM rtree_{LAYER}_geom ORDER BY id").fetchall()
        tiles = connection.execute(f"SELECT fid, row, col FROM {LAYER} ORDER BY fid").fetchall()
    assert [entry[0] for entry in index] == [fid for fid, _, _ in tiles]
    for (_, min_x, max_x, min_y, max_y), (_, row, col) in zip(index, tiles):
        assert (min_x, min_y, max_x, max_y) == pytest.approx(grid.bounds(grid.tiles()[row * 4 + col]), abs=0.01)


def test_a_file_written_without_a_spatial_index_gets_one_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "captions.gpkg"
    grid = TileGrid(128, 64, GT, 64)
    with open_layer(out) as layer:
        layer.write(records(grid, FAILED))
    with sqlite3.connect(out) as connection:  # as files written before the index existed
        for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            connection.execute(f'DROP TRIGGER "{name}"')
        connection.execute(f"DROP TABLE rtree_{LAYER}_geom")
        connection.execute("DELETE FROM gpkg_extensions")
    with open_layer(out) as layer:
        layer.write(records(grid)[:1])
    assert pyogrio.raw.read(out, sql=f"SELECT HasSpatialIndex('{LAYER}', 'geom')")[3][0][0] == 1
    with sqlite3.connect(out) as connection:
        assert connection.execute(f"SELECT count(*) FROM rtree_{LAYER}_geom").fetchone()[0] == 2


def table_info(path: Path, table: str) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        return connection.execute(f"PRAGMA table_info({table})").fetchall()


def unique_indexes(path: Path, table: str) -> set[tuple[str, ...]]:
    """The columns of each unique constraint or index of ``table``."""
    with sqlite3.connect(path) as connection:
        indexes = [row[1] for row in connection.execute(f"PRAGMA index_list({table})") if row[2]]
        return {tuple(row[2] for row in connection.execute(f"PRAGMA index_info('{name}')")) for name in indexes}


def test_the_layer_is_the_schemas_and_gdal_reads_the_new_fields(tmp_path: Path) -> None:
    out = tmp_path / "captions.gpkg"
    grid = TileGrid(128, 64, GT, 64)
    tile = grid.tiles()[0]
    with open_layer(out) as layer:
        layer.write([TileRecord(
            tile, grid.footprint(tile), CAPTIONED, "a road has been built", True, 0.8,
            interval=0, date_before="2016", date_after="2018-05", change_kind="roads",
        )])
    columns = table_info(out, LAYER)
    assert [(c[1], c[2]) for c in columns[:2]] == [("fid", "INTEGER"), ("geom", "POLYGON")]
    expected = [(f.name, f.sql().split(" ")[0], int(f.not_null), f.default) for f in schema.FIELDS]
    assert [(name, kind, not_null, default) for _, name, kind, not_null, default, _ in columns[2:]] == expected
    assert unique_indexes(out, LAYER) == {schema.KEY}  # tile_id is no longer unique on its own
    meta, _, _, fields = pyogrio.raw.read(out, layer=LAYER)
    read = {name: values[0] for name, values in zip(meta["fields"], fields)}
    assert (read["interval"], read["date_before"], read["date_after"], read["change_kind"]) == (0, "2016", "2018-05",
                                                                                                 "roads")
    assert read["review_status"] is None and read["reviewed_caption"] is None
    with sqlite3.connect(out) as connection:
        (description,) = connection.execute("SELECT description FROM gpkg_contents WHERE table_name = ?", (LAYER,))
    assert description[0] == schema.layer_description() and "change_kind: what changed" in description[0]


def test_two_intervals_of_a_tile_are_two_features_and_a_rerun_writes_each_once(tmp_path: Path) -> None:
    out = tmp_path / "series.gpkg"
    grid = TileGrid(64, 64, GT, 64)
    tile = grid.tiles()[0]

    def series(status: str) -> list[TileRecord]:
        said = ("a house appears", True, 0.6) if status == CAPTIONED else (None, None, None)
        return [
            TileRecord(tile, grid.footprint(tile), status, *said, thumbnails=(b"b%d" % i, b"a%d" % i), interval=i,
                       date_before=before, date_after=after)
            for i, (before, after) in enumerate([("2016", "2018"), ("2018", "2020")])
        ]

    with open_layer(out) as layer:
        layer.write(series(FAILED))
        assert layer.finished_keys() == set()
        layer.write(series(CAPTIONED))
        layer.write(series(CAPTIONED))
        assert layer.finished_keys() == {("r0_c0", 0), ("r0_c0", 1)} and layer.finished_ids() == {"r0_c0"}
    stored = list(read_tiles(out))
    assert [(t.tile_id, t.interval, t.date_before, t.date_after, t.status) for t in stored] == [
        ("r0_c0", 0, "2016", "2018", CAPTIONED), ("r0_c0", 1, "2018", "2020", CAPTIONED),
    ]
    assert [t.before_png for t in stored] == [b"b0", b"b1"]  # each interval keeps its own thumbnails
    assert pyogrio.read_info(out, layer=LAYER)["features"] == 2


def test_the_review_survives_a_rewrite_of_the_tile(tmp_path: Path) -> None:
    out = tmp_path / "reviewed.gpkg"
    grid = TileGrid(128, 64, GT, 64)
    with open_layer(out) as layer:
        layer.write(records(grid))
    package = GeoPackage(out)  # the spatial index's triggers need the GeoPackage functions
    with package.connection:
        package.connection.execute(
            f"UPDATE {LAYER} SET review_status = 'corrected', reviewed_caption = 'two houses were built', "
            "reviewed_at = '2024-05-01T10:00:00.000Z' WHERE tile_id = 'r0_c0'"
        )
    package.close()
    with open_layer(out) as layer:
        layer.write(records(grid, caption="a new road"))
    stored = {t.tile_id: t for t in read_tiles(out)}
    assert stored["r0_c0"].caption == "a new road"
    assert (stored["r0_c0"].review_status, stored["r0_c0"].reviewed_caption, stored["r0_c0"].reviewed_at) == (
        schema.CORRECTED, "two houses were built", "2024-05-01T10:00:00.000Z"
    )
    assert stored["r0_c1"].review_status is None and len(stored) == 2


# The captions layer and thumbnails table as files were written before date series, change kinds and review.
OLD_COLUMNS = [
    ("tile_id", "TEXT NOT NULL UNIQUE"), ("row", "INTEGER NOT NULL"), ("col", "INTEGER NOT NULL"),
    ("caption", "TEXT"), ("change_detected", "BOOLEAN"), ("confidence", "REAL"), ("status", "TEXT NOT NULL"),
    ("before_source", "TEXT"), ("after_source", "TEXT"), ("model_id", "TEXT"), ("created_at", "DATETIME"),
]


def old_file(path: Path, grid: TileGrid) -> Path:
    """A GeoPackage as caption-region wrote it before this schema: two tiles, the first captioned."""
    package = GeoPackage(path)
    with package.connection:
        srs_id = package.srs_id(spatial_ref(CRS.from_user_input("EPSG:32631")))
    package.create_feature_table(LAYER, OLD_COLUMNS, srs_id, "POLYGON", "ccexpert change captions")
    package.create_attribute_table(
        THUMBNAILS_TABLE, [("tile_id", "TEXT NOT NULL UNIQUE"), ("before_png", "BLOB"), ("after_png", "BLOB")]
    )
    package.create_attribute_table(schema.OPTIONS_TABLE, [("key", "TEXT NOT NULL UNIQUE"), ("value", "TEXT")])
    with package.connection as connection:
        for tile, status, caption in zip(grid.tiles(), (CAPTIONED, FAILED), ("a road has been built", None)):
            connection.execute(
                f"INSERT INTO {LAYER} (geom, tile_id, row, col, caption, change_detected, confidence, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (polygon_blob(grid.footprint(tile), srs_id), tile.tile_id, tile.row, tile.col, caption,
                 None if caption is None else 1, None if caption is None else 0.7, status),
            )
            connection.execute(f"INSERT INTO {THUMBNAILS_TABLE} (tile_id, before_png) VALUES (?, ?)",
                               (tile.tile_id, b"old"))
        connection.executemany(f"INSERT INTO {schema.OPTIONS_TABLE} VALUES (NULL, ?, ?)", OPTIONS.items())
    package.close()
    return path


def test_a_file_written_before_this_schema_is_resumed_and_migrated(tmp_path: Path) -> None:
    grid = TileGrid(128, 64, GT, 64)
    out = old_file(tmp_path / "old.gpkg", grid)
    check_output(out, OPTIONS)  # the fields it lacks are no reason to refuse it
    with open_layer(out) as layer:
        assert layer.finished_ids() == {"r0_c0"} and layer.one_interval_per_tile
        layer.write(records(grid)[1:])  # the failed tile, again
        with pytest.raises(CCExpertError, match="written before date series"):
            layer.write([TileRecord(grid.tiles()[0], grid.footprint(grid.tiles()[0]), FAILED, interval=1)])
    names = [column[1] for column in table_info(out, LAYER)]
    assert set(names) == {"fid", "geom", *schema.FIELD_NAMES}
    assert unique_indexes(out, LAYER) == {("tile_id",), schema.KEY}  # the old UNIQUE kept: one interval per tile
    stored = list(read_tiles(out))
    assert [(t.tile_id, t.interval, t.status) for t in stored] == [("r0_c0", 0, CAPTIONED), ("r0_c1", 0, CAPTIONED)]
    assert stored[0].caption == "a road has been built" and stored[0].before_png == b"old"
    info = pyogrio.read_info(out, layer=LAYER)
    assert info["features"] == 2 and set(info["fields"]) == set(schema.FIELD_NAMES)


def test_a_captions_table_without_an_original_field_is_refused_read_only(tmp_path: Path) -> None:
    grid = TileGrid(64, 64, GT, 64)
    out = old_file(tmp_path / "other.gpkg", grid)
    with sqlite3.connect(out) as connection:
        connection.execute(f"ALTER TABLE {LAYER} DROP COLUMN confidence")
    before = out.read_bytes()
    with pytest.raises(CCExpertError, match="is not a CCExpert captions layer \\(it has no field confidence\\)"):
        open_layer(out)
    assert out.read_bytes() == before


def test_the_default_style_is_stored_in_layer_styles_once_and_never_over_another(tmp_path: Path) -> None:
    out = tmp_path / "styled.gpkg"
    grid = TileGrid(128, 64, GT, 64)
    for _ in range(2):  # a resume adds no second row
        with open_layer(out) as layer:
            layer.write(records(grid))
    with sqlite3.connect(out) as connection:
        rows = connection.execute(
            "SELECT f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, useAsDefault, "
            "styleQML, update_time FROM layer_styles"
        ).fetchall()
        registered = connection.execute(
            "SELECT data_type FROM gpkg_contents WHERE table_name = 'layer_styles'"
        ).fetchall()
    assert [row[:6] for row in rows] == [("", "", LAYER, "geom", schema.STYLE_NAME, 1)] and rows[0][7]
    assert registered == [("attributes",)]  # as QGIS registers it
    qml = ElementTree.fromstring(rows[0][6].split("\n", 1)[1])
    renderer = qml.find("renderer-v2")
    assert renderer.get("type") == "RuleRenderer"
    assert [r.get("label") for r in renderer.iter("rule")] == [*(c.label for c in schema.CATEGORIES), "reviewed"]
    assert qml.get("labelsEnabled") == "1"
    assert qml.find("labeling/settings/text-style").get("fieldName") == schema.LABEL_EXPRESSION
    assert qml.findtext("mapTip") == schema.MAP_TIP
    assert qml.find("attributetableconfig").get("sortExpression") == schema.SORT_EXPRESSION

    with sqlite3.connect(out) as connection:  # the analyst saves a style of their own over it
        connection.execute("UPDATE layer_styles SET styleName = 'mine', styleQML = '<qgis/>'")
    with open_layer(out) as layer:
        layer.write(records(grid))
    with sqlite3.connect(out) as connection:
        assert connection.execute("SELECT styleName, styleQML FROM layer_styles").fetchall() == [("mine", "<qgis/>")]
