"""Both writers of the captions layer (caption-region's sqlite3 writer, the plugin's OGR writer) build it from the
one schema: the same fields, key and style in their files, each resumes the other's, both migrate older files and
keep the analyst's review; the file opens in QGIS styled, the plugin's layer gets the very same style."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from osgeo import gdal, osr
from qgis.core import QgsProviderRegistry, QgsVectorLayer, QgsVectorLayerCache
from qgis.gui import QgsAttributeTableFilterModel, QgsAttributeTableModel
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor

from ccexpert_core.geo.captions_layer import CaptionsLayer
from ccexpert_core.geo.gpkg import GeoPackage, SpatialRef, polygon_blob
from qgis_plugin.captions_gpkg import CaptionsGeoPackage
from qgis_plugin.errors import CaptionRunError
from qgis_plugin.result_layer import open_captions_layer
from qgis_plugin.shared_modules import grid as tiling
from qgis_plugin.shared_modules import run_contract, schema

from layer_style import style_facts

OPTIONS = {"tile_size": "8"}
TILE = tiling.Tile(0, 1, 0, 0, 8, 8)
RING = [(0, 0), (8, 0), (8, 8), (0, 8), (0, 0)]


def utm_wkt() -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32631)
    return srs.ExportToWkt()


def plugin_writer(path: Path, layer_name: str = "captions") -> CaptionsGeoPackage:
    return CaptionsGeoPackage(str(path), layer_name, utm_wkt(), OPTIONS, "b.tif", "a.tif", "m")


def command_writer(path: Path) -> CaptionsLayer:
    return CaptionsLayer(path, SpatialRef("EPSG:32631", 32631, "EPSG", 32631, utm_wkt()), OPTIONS, "b.tif", "a.tif",
                         "m")


def plugin_file(path: Path) -> Path:
    with plugin_writer(path) as writer:
        writer.write([run_contract.TileRecord(TILE, RING, schema.CAPTIONED, "a road was built", True, 0.5, 0, "2019", "2021",
                                 "roads")])
    return path


def command_file(path: Path) -> Path:
    with command_writer(path) as writer:
        writer.write([run_contract.TileRecord(TILE, RING, schema.CAPTIONED, "a road was built", True, 0.5, interval=0,
                                 date_before="2019", date_after="2021", change_kind="roads")])
    return path


def layout(path: Path) -> dict:
    """Columns of the tables both tools write, the captions layer's unique indexes and its rows (sans time)."""
    run = [f.name for f in schema.RUN_FIELDS if f.name != "created_at"]
    with sqlite3.connect(path) as connection:
        tables = {t: connection.execute(f"PRAGMA table_info({t})").fetchall()
                  for t in ("captions", "ccexpert_run_options", "layer_styles")}
        indexes = {
            tuple(row[2] for row in connection.execute(f"PRAGMA index_info('{name}')"))
            for _, name, unique, *_ in connection.execute("PRAGMA index_list(captions)") if unique
        }
        rows = connection.execute(f"SELECT {', '.join(schema.quote(n) for n in run)} FROM captions").fetchall()
        styles = connection.execute(
            "SELECT f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, styleQML, styleSLD, "
            "useAsDefault, description, owner, ui FROM layer_styles"
        ).fetchall()
    return {"tables": tables, "indexes": indexes, "rows": rows, "styles": styles}


def test_both_tools_write_the_schemas_layer_and_resume_each_others_file(tmp_path: Path) -> None:
    plugin, command = layout(plugin_file(tmp_path / "plugin.gpkg")), layout(command_file(tmp_path / "command.gpkg"))
    assert plugin == command
    columns = plugin["tables"]["captions"]
    assert [(c[1], c[2], c[3], c[4]) for c in columns[2:]] == [
        (f.name, f.sql().split(" ")[0], int(f.not_null), f.default) for f in schema.FIELDS
    ]
    assert plugin["indexes"] == {schema.KEY}
    assert [c[1] for c in plugin["tables"]["layer_styles"]] == ["id", *(f.name for f in schema.STYLES_FIELDS)]
    assert plugin["styles"] == [tuple({**schema.style_row("captions"), "useAsDefault": 1}.values())]
    # Each resumes the other's file: the other's tile counts as done.
    with command_writer(tmp_path / "plugin.gpkg") as writer:
        assert writer.finished_keys() == {("r0_c1", 0)} and writer.finished_ids() == {"r0_c1"}
    with plugin_writer(tmp_path / "command.gpkg") as writer:
        assert writer.finished_keys() == {("r0_c1", 0)} and writer.finished_ids() == {"r0_c1"}
    assert len(layout(tmp_path / "command.gpkg")["styles"]) == 1  # a resume adds no second style


def expected_style() -> dict:
    """What the schema says the layer looks like: a rule per category keyed on what the map says of a tile (the
    analyst's caption where there is one), then the "reviewed" rule over them."""
    styles = {"solid": Qt.SolidLine, "dot": Qt.DotLine, "dash": Qt.DashLine}
    rules = []
    for entry in schema.CATEGORIES:
        fill = QColor(entry.colour)
        fill.setAlpha(round(entry.fill_opacity * 255))
        rules.append((entry.label, f"({schema.CATEGORY_EXPRESSION}) = '{entry.value}'", fill.name(QColor.HexArgb),
                      entry.colour, int(styles[entry.outline_style]), schema.OUTLINE_WIDTH_MM))
    reviewed = QColor(schema.REVIEWED_COLOUR)
    reviewed.setAlpha(0)
    rules.append((schema.REVIEWED_LABEL, schema.REVIEWED_EXPRESSION, reviewed.name(QColor.HexArgb),
                  schema.REVIEWED_COLOUR, int(Qt.SolidLine), schema.REVIEWED_OUTLINE_WIDTH_MM))
    return {
        "renderer": "RuleRenderer", "rules": rules,
        "labels": True, "label": schema.LABEL_EXPRESSION, "map_tip": schema.MAP_TIP,
        "display": schema.DISPLAY_EXPRESSION, "sort": (schema.SORT_EXPRESSION, int(Qt.DescendingOrder)),
        "widths": schema.COLUMN_WIDTHS,
    }


def test_the_commands_geopackage_opens_styled_and_the_plugins_layer_gets_the_same_style(tmp_path: Path) -> None:
    opened = QgsVectorLayer(f"{command_file(tmp_path / 'command.gpkg')}|layername=captions", "command", "ogr")
    assert opened.isValid() and style_facts(opened) == expected_style()  # straight from the file's layer_styles
    shown = open_captions_layer(str(plugin_file(tmp_path / "plugin.gpkg")), "captions", "plugin")
    assert shown is not None and style_facts(shown) == style_facts(opened)
    offered = QgsProviderRegistry.instance().querySublayers(str(tmp_path / "command.gpkg"))
    names = [sublayer.name() for sublayer in offered]
    # QGIS 3.22 offers every table but layer_styles: the internal attribute tables cannot be hidden from it.
    assert "captions" in names and schema.STYLES_TABLE not in names


def test_the_attribute_table_lists_changed_tiles_first_then_by_confidence(tmp_path: Path, qgis_canvas) -> None:
    path = tmp_path / "ordered.gpkg"
    tiles = [("unchanged", True, False, 0.9), ("changed_low", True, True, 0.3), ("failed", False, None, None),
             ("changed_high", True, True, 0.8)]
    with command_writer(path) as writer:
        writer.write([
            run_contract.TileRecord(tiling.Tile(0, col, 0, col * 8, 8, 8), RING, schema.CAPTIONED if ok else schema.FAILED,
                       *((name, change, confidence) if ok else (None, None, None)))
            for col, (name, ok, change, confidence) in enumerate(tiles)
        ])
    layer = open_captions_layer(str(path), "captions", "ordered")
    cache = QgsVectorLayerCache(layer, 100)
    table = QgsAttributeTableModel(cache)
    table.loadLayer()
    ordered = QgsAttributeTableFilterModel(qgis_canvas, table)
    config = layer.attributeTableConfig()
    ordered.sort(config.sortExpression(), config.sortOrder())  # what the attribute table dialog does on opening
    column = layer.fields().indexOf("caption")
    assert [ordered.data(ordered.index(row, column), Qt.DisplayRole) for row in range(ordered.rowCount())][:3] == [
        "changed_high", "changed_low", "unchanged",
    ]
    del ordered, table, cache


OLD_COLUMNS = [
    ("tile_id", "TEXT NOT NULL UNIQUE"), ("row", "INTEGER NOT NULL"), ("col", "INTEGER NOT NULL"),
    ("caption", "TEXT"), ("change_detected", "BOOLEAN"), ("confidence", "REAL"), ("status", "TEXT NOT NULL"),
    ("before_source", "TEXT"), ("after_source", "TEXT"), ("model_id", "TEXT"), ("created_at", "DATETIME"),
]


def old_file(path: Path, columns: list[tuple[str, str]] = OLD_COLUMNS) -> Path:
    """A captions layer as both tools wrote it before this schema, with a captioned and a failed tile."""
    package = GeoPackage(path)
    with package.connection:
        srs_id = package.srs_id(SpatialRef("EPSG:32631", 32631, "EPSG", 32631, utm_wkt()))
    package.create_feature_table("captions", columns, srs_id, "POLYGON")
    package.create_attribute_table(schema.OPTIONS_TABLE, [("key", "TEXT NOT NULL UNIQUE"), ("value", "TEXT")])
    names = [name for name, _ in columns]
    with package.connection as connection:
        for col, status in enumerate((schema.CAPTIONED, schema.FAILED)):
            values = {"tile_id": f"r0_c{col}", "row": 0, "col": col, "status": status, "caption": "old",
                      "change_detected": 1, "confidence": 0.5}
            present = [name for name in values if name in names]
            connection.execute(
                f"INSERT INTO captions (geom, {', '.join(present)}) VALUES (?{', ?' * len(present)})",
                (polygon_blob(RING, srs_id), *(values[name] for name in present)),
            )
        connection.executemany(f"INSERT INTO {schema.OPTIONS_TABLE} VALUES (NULL, ?, ?)", OPTIONS.items())
    package.close()
    return path


def test_the_plugin_migrates_an_older_file_and_never_touches_the_review(tmp_path: Path) -> None:
    path = old_file(tmp_path / "old.gpkg")
    with plugin_writer(path) as writer:
        assert writer.finished_ids() == {"r0_c0"}
        writer.write([run_contract.TileRecord(tiling.Tile(0, 1, 0, 8, 8, 8), RING, schema.CAPTIONED, "a house", True, 0.7)])
    dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR | gdal.OF_UPDATE)
    dataset.ExecuteSQL("UPDATE captions SET review_status = 'accepted', reviewed_caption = 'a house, yes' "
                       "WHERE tile_id = 'r0_c1'")
    dataset = None  # GDAL 3.6 datasets close when released
    with plugin_writer(path) as writer:  # the tile written again, as a rerun does
        writer.write([run_contract.TileRecord(tiling.Tile(0, 1, 0, 8, 8, 8), RING, schema.CAPTIONED, "two houses", True, 0.9)])
    with sqlite3.connect(path) as connection:
        names = [row[1] for row in connection.execute("PRAGMA table_info(captions)")]
        rows = connection.execute(
            'SELECT tile_id, "interval", status, caption, review_status, reviewed_caption FROM captions ORDER BY col'
        ).fetchall()
    assert set(names) == {"fid", "geom", *schema.FIELD_NAMES}
    assert rows == [("r0_c0", 0, "captioned", "old", None, None),
                    ("r0_c1", 0, "captioned", "two houses", "accepted", "a house, yes")]
    with command_writer(path) as writer:  # and the command resumes the migrated file
        assert writer.finished_ids() == {"r0_c0", "r0_c1"}


def test_two_intervals_of_a_tile_are_two_features_of_the_plugins_layer(tmp_path: Path) -> None:
    path = tmp_path / "series.gpkg"
    for _ in range(2):  # a rerun writes each interval once
        with plugin_writer(path) as writer:
            writer.write([run_contract.TileRecord(TILE, RING, schema.CAPTIONED, "a road", True, 0.5, interval, before, after)
                          for interval, (before, after) in enumerate([("2016", "2018"), ("2018", "2020")])])
            assert writer.finished_keys() == {("r0_c1", 0), ("r0_c1", 1)}
    with sqlite3.connect(path) as connection:
        assert connection.execute(
            'SELECT tile_id, "interval", date_before, date_after FROM captions ORDER BY "interval"'
        ).fetchall() == [("r0_c1", 0, "2016", "2018"), ("r0_c1", 1, "2018", "2020")]


def test_a_layer_without_an_original_field_is_refused_by_the_plugin(tmp_path: Path) -> None:
    path = old_file(tmp_path / "foreign.gpkg", [column for column in OLD_COLUMNS if column[0] != "status"])

    def table() -> list:
        with sqlite3.connect(path) as connection:
            return [connection.execute(f"PRAGMA {pragma}(captions)").fetchall() for pragma in ("table_info",
                    "index_list")] + [connection.execute("SELECT * FROM captions").fetchall()]

    before = table()
    with pytest.raises(CaptionRunError, match="is not a CCExpert captions layer \\(no field status\\)"):
        plugin_writer(path)
    assert table() == before  # nothing added to it
