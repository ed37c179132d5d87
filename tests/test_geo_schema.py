"""The captions layer's schema: the fields in their order with their constraints, the key and migration rules, the
default style as QML (keyed on the analyst's captions, a "reviewed" rule of its own, the captions' columns wide
enough), and the report drawn in the style's palette. The module stands alone but for captions (the plugin bundles
both)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from ccexpert_core.geo import schema
from ccexpert_core.geo.captions_layer import StoredTile
from ccexpert_core.geo.report import thumbnail, write_report


def test_the_module_imports_only_the_standard_library_and_its_bundled_neighbour_captions() -> None:
    tree = ast.parse(Path(schema.__file__).read_text(encoding="utf-8"))
    absolute = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and not node.level)
        for alias in node.names
    }
    relative = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level
                for alias in node.names}
    assert absolute <= {"__future__", "collections", "dataclasses", "typing", "xml"}
    assert relative == {"captions"}  # the no-change sentences; bundled beside it in the plugin


def test_the_fields_in_order_with_their_types_constraints_and_descriptions() -> None:
    assert schema.FIELD_NAMES == (
        "tile_id", "interval", "row", "col", "date_before", "date_after", "caption", "change_detected", "change_kind",
        "confidence", "status", "before_source", "after_source", "model_id", "created_at", "review_status",
        "reviewed_caption", "reviewed_at", "p_right",
    )
    sql = {field.name: field.sql() for field in schema.FIELDS}
    assert sql["tile_id"] == "TEXT NOT NULL" and sql["interval"] == "INTEGER NOT NULL DEFAULT 0"
    assert (sql["change_detected"], sql["confidence"], sql["created_at"]) == ("BOOLEAN", "REAL", "DATETIME")
    assert all(field.description and "\n" not in field.description for field in schema.FIELDS)
    assert [field.name for field in schema.REVIEW_FIELDS] == ["review_status", "reviewed_caption", "reviewed_at"]
    assert not set(schema.REVIEW_FIELDS) & set(schema.RUN_FIELDS)
    # p_right is the calibration's (made from the reviews): a run never writes it either.
    assert [field.name for field in schema.CALIBRATED_FIELDS] == ["p_right"] and sql["p_right"] == "REAL"
    assert not set(schema.CALIBRATED_FIELDS) & set(schema.RUN_FIELDS)
    assert schema.REQUIRED_FIELDS == ("tile_id", "row", "col", "caption", "change_detected", "confidence", "status")
    # A field that is NOT NULL and not required must have a default: ALTER TABLE adds it to rows already there.
    assert all(f.default is not None for f in schema.FIELDS if f.not_null and not f.required)


def test_the_key_and_the_migration_rules() -> None:
    assert schema.KEY == ("tile_id", "interval")
    assert schema.key_index_sql("my layer") == (
        'CREATE UNIQUE INDEX IF NOT EXISTS "my layer_key" ON "my layer" ("tile_id", "interval")'
    )
    old = ["tile_id", "row", "col", "caption", "change_detected", "confidence", "status", "before_source",
           "after_source", "model_id", "created_at"]
    assert schema.missing_required(old) is None
    assert [f.name for f in schema.fields_to_add(old)] == [
        "interval", "date_before", "date_after", "change_kind", "review_status", "reviewed_caption", "reviewed_at",
        "p_right",
    ]
    assert schema.missing_required([name for name in old if name != "caption"]) == "caption"
    assert schema.fields_to_add(schema.FIELD_NAMES) == ()
    assert schema.options_table("captions") == "ccexpert_run_options"
    assert schema.options_table("roads") == "ccexpert_run_options_roads"
    assert schema.FINAL_STATUSES == (schema.CAPTIONED, schema.SKIPPED_NODATA)


def test_the_style_renders_as_qml_with_renderer_labels_map_tip_and_table_order() -> None:
    text = schema.style_qml()
    assert text.startswith("<!DOCTYPE qgis")
    root = ElementTree.fromstring(text.split("\n", 1)[1])
    assert root.tag == "qgis" and root.get("labelsEnabled") == "1" and root.findtext("layerGeometryType") == "2"
    renderer = root.find("renderer-v2")
    assert renderer.get("type") == "RuleRenderer"
    rules = renderer.findall("rules/rule")
    assert [(r.get("label"), r.get("filter")) for r in rules] == [
        *[(c.label, f"({schema.CATEGORY_EXPRESSION}) = '{c.value}'") for c in schema.CATEGORIES],
        (schema.REVIEWED_LABEL, schema.REVIEWED_EXPRESSION),  # over the categories: a legend entry of its own
    ]
    looks = [(c.colour, c.fill_opacity, c.outline_style, schema.OUTLINE_WIDTH_MM) for c in schema.CATEGORIES]
    looks.append((schema.REVIEWED_COLOUR, 0, "solid", schema.REVIEWED_OUTLINE_WIDTH_MM))
    for (colour, opacity, style, width), rule in zip(looks, rules):
        symbol = renderer.find(f"symbols/symbol[@name='{rule.get('symbol')}']")
        layer = symbol.find("layer")
        options = {o.get("name"): o.get("value") for o in layer.findall("Option/Option")}
        red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
        assert layer.get("class") == "SimpleFill" and options["outline_color"] == f"{red},{green},{blue},255"
        assert options["color"] == f"{red},{green},{blue},{round(opacity * 255)}"
        assert options["outline_style"] == style and options["outline_width"] == str(width)
    label = root.find("labeling/settings/text-style")
    assert label.get("fieldName") == schema.LABEL_EXPRESSION and label.get("isExpression") == "1"
    assert "reviewed_caption" in schema.LABEL_EXPRESSION and str(schema.LABEL_MAX_CHARACTERS) in schema.LABEL_EXPRESSION
    assert root.findtext("mapTip") == schema.MAP_TIP and root.findtext("previewExpression") == '"caption"'
    table = root.find("attributetableconfig")
    assert table.get("sortExpression") == schema.SORT_EXPRESSION and table.get("sortOrder") == "1"
    widths = {c.get("name"): int(c.get("width")) for c in table.findall("columns/column") if c.get("name")}
    assert list(widths) == ["fid", *schema.FIELD_NAMES] and widths["caption"] == schema.COLUMN_WIDTHS["caption"]
    row = schema.style_row("captions")
    assert row["styleQML"] == text and row["useAsDefault"] is True and row["f_geometry_column"] == "geom"
    assert set(row) | {"update_time"} == {field.name for field in schema.STYLES_FIELDS}


def test_category_follows_the_analysts_caption_then_the_status_then_the_change_flag() -> None:
    assert schema.category(schema.CAPTIONED, True) == schema.CHANGED
    assert schema.category(schema.CAPTIONED, False) == schema.UNCHANGED
    assert schema.category(schema.FAILED, None) == schema.FAILED
    assert schema.category(schema.CAPTIONED, True, "There is no  difference.") == schema.UNCHANGED  # "No change"
    assert schema.category(schema.CAPTIONED, False, "a road has been built") == schema.CHANGED
    assert {c.value for c in schema.CATEGORIES} == {schema.CHANGED, schema.UNCHANGED, *schema.STATUSES} - {
        schema.CAPTIONED
    }


def test_the_report_draws_each_tile_in_its_categorys_colour(tmp_path: Path) -> None:
    png = thumbnail(np.zeros((8, 8, 3), np.uint8))
    cases = [(schema.CAPTIONED, True), (schema.CAPTIONED, False), (schema.SKIPPED_NODATA, None), (schema.FAILED, None)]
    tiles = [
        StoredTile(f"r0_c{i}", 0, i, "x" if status == schema.CAPTIONED else None, change, 0.5, status,
                   (i * 10.0, 0.0, i * 10.0 + 10, 10.0), png, png)
        for i, (status, change) in enumerate(cases)
    ]
    page = write_report(tmp_path / "r.html", tiles, None, {}).read_text(encoding="utf-8")
    cards = re.findall(
        r'class="card" id="[^"]*" style="border-left-color: (#[0-9a-f]{6})">.*?class="small">(r0_c\d+) ·', page, re.DOTALL
    )
    drawn = {tile: colour for colour, tile in cards}
    palette = {c.value: c.colour for c in schema.CATEGORIES}
    assert drawn == {f"r0_c{i}": palette[schema.category(*case)] for i, case in enumerate(cases)}


def test_readme_lists_every_field_of_the_layer() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    listed = readme[readme.index("## Caption a region"):]
    listed = listed[: listed.index("\n\n", listed.index("- `tile_id` —"))]
    names = re.findall(r"`([a-z_]+)`", " ".join(line.split(" — ")[0] for line in listed.splitlines()
                                                if line.startswith("- `")))
    assert tuple(names) == schema.FIELD_NAMES
