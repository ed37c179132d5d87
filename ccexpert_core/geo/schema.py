"""The captions layer written down once: table names, statuses, fields, the feature key, migration and the default
style, for both writers (``ccexpert_core/geo/captions_layer.py`` on sqlite3, the QGIS plugin's
``captions_gpkg.py`` on OGR), the report and README.

Standard library only, importing nothing of the package but ``captions`` (the no-change sentences the style reads
the analyst's captions by): the QGIS plugin bundles this file as it is, beside its copy of ``captions``.

Rules both writers follow:

- A feature is one tile and one interval of a date series: its key is (``tile_id``, ``interval``), a unique index
  (:func:`key_index_sql`); two-date runs write interval 0 only.
- A run writes the :data:`RUN_FIELDS` and nothing else: the analyst's :data:`REVIEW_FIELDS` and the
  :data:`CALIBRATED_FIELDS` made from them (``p_right``, written by ``geo/calibration.py``'s rule) survive every rerun
  and resume (a tile written again is updated in place, never deleted and inserted).
- Migration: a ``captions`` table that lacks any of the :data:`REQUIRED_FIELDS` is not a CCExpert layer and is
  refused; every other field it lacks is added (``ALTER TABLE … ADD COLUMN``, so ``interval`` reads 0 on the
  tiles already there). Files written before date series keep their ``UNIQUE`` on ``tile_id`` alone: they hold one
  interval per tile, which is all they can hold.
- The default style (:func:`style_qml`) goes into QGIS's ``layer_styles`` table, as the default of a layer that has
  no style there yet; a style already there (the analyst's own, or an earlier one) is never replaced.

QGIS 3.22 offers every table of a GeoPackage as a layer, ``gpkg_contents`` or not (it hides only ``layer_styles``
and ``qgis_projects``, by name), so the internal tables cannot be hidden; they stay registered attribute tables,
as the GeoPackage standard wants, with a description that says what they are.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

# The style's XML is only written here, never parsed (Bandit's B405 is about parsing untrusted XML).
from xml.etree import ElementTree  # nosec B405

if TYPE_CHECKING or __package__ == "ccexpert_core.geo":
    from .. import captions
else:  # the plugin's bundled/ folder holds the shared modules side by side
    from . import captions

CAPTIONS_LAYER = "captions"
#: Both writers name the polygon column so (and the feature id ``fid``).
GEOMETRY_COLUMN = "geom"
#: Changed places from a model's change map (only for models with a change-map head).
CHANGES_LAYER = "changes"
#: Reserved for the time-series work: one feature per tile over all of a series' dates.
HISTORY_LAYER = "history"
THUMBNAILS_TABLE = "ccexpert_thumbnails"
OPTIONS_TABLE = "ccexpert_run_options"
#: The fitted map from confidence to ``p_right``, per interval (see :func:`calibration_table`).
CALIBRATION_TABLE = "ccexpert_calibration"
#: Every internal table's name starts so (a GeoPackage's other tables belong to another tool).
TABLE_PREFIX = "ccexpert_"
#: QGIS's (and GDAL's) table of layer styles in a GeoPackage.
STYLES_TABLE = "layer_styles"

CAPTIONED = "captioned"
SKIPPED_NODATA = "skipped_nodata"
FAILED = "failed"
STATUSES = (CAPTIONED, SKIPPED_NODATA, FAILED)
#: Tiles with these statuses are done: a rerun does not redo them (failed tiles are tried again).
FINAL_STATUSES = (CAPTIONED, SKIPPED_NODATA)

ACCEPTED = "accepted"
CORRECTED = "corrected"
#: What ``review_status`` holds once the analyst has looked at a tile (NULL before).
REVIEW_STATUSES = (ACCEPTED, CORRECTED)
#: What ``change_kind`` holds (NULL for no change, or a kind the caption does not name).
CHANGE_KINDS = ("buildings", "roads", "vegetation", "water", "bare land", "demolition")

# Logical field types; each writer maps them to its own (SQL here, OGR in the plugin).
TEXT, INTEGER, BOOLEAN, REAL, DATETIME = "text", "integer", "boolean", "real", "datetime"
_SQL_TYPES = {TEXT: "TEXT", INTEGER: "INTEGER", BOOLEAN: "BOOLEAN", REAL: "REAL", DATETIME: "DATETIME"}
#: ``DEFAULT CURRENT_TIMESTAMP`` as GDAL writes it in a GeoPackage (its DATETIME format, with milliseconds).
_NOW = "CURRENT_TIMESTAMP"
_GPKG_NOW = "(strftime('%Y-%m-%dT%H:%M:%fZ','now'))"


@dataclass(frozen=True)
class Field:
    """One column: its name, logical type, constraints and what it means."""

    name: str
    type: str
    description: str = ""
    not_null: bool = False
    #: An SQL literal, or ``CURRENT_TIMESTAMP`` (OGR's spelling; see :meth:`sql`).
    default: str | None = None
    #: A maximum length for text (``TEXT(256)``), as OGR declares one.
    width: int | None = None
    #: In every captions layer since the first version: a table without it is not a CCExpert captions layer.
    required: bool = False
    #: The analyst's: never written by a run.
    review: bool = False
    #: Made from the analyst's reviews (the calibration): never written by a run either.
    calibrated: bool = False

    def sql(self) -> str:
        """The column's type and constraints in a GeoPackage's ``CREATE TABLE``, as GDAL writes them."""
        parts = [_SQL_TYPES[self.type] + (f"({self.width})" if self.width else "")]
        if self.not_null:
            parts.append("NOT NULL")
        if self.default is not None:
            parts.append("DEFAULT " + (_GPKG_NOW if self.default == _NOW else self.default))
        return " ".join(parts)


#: The captions layer's fields, in their order in a new file (``fid`` and the polygon ``geom`` come first).
FIELDS: tuple[Field, ...] = (
    Field("tile_id", TEXT, "the tile's place in the grid, r{row}_c{col}: the same pixels on every run",
          not_null=True, required=True),
    Field("interval", INTEGER, "which interval of the date series the feature describes (0 for two dates)",
          not_null=True, default="0"),
    Field("row", INTEGER, "the tile's row in the grid, 0 at the top", not_null=True, required=True),
    Field("col", INTEGER, "the tile's column in the grid, 0 on the left", not_null=True, required=True),
    Field("date_before", TEXT, "the interval's first date as given (2016, 2016-05 or 2016-05-12), empty if unknown"),
    Field("date_after", TEXT, "the interval's second date as given, empty if unknown"),
    Field("caption", TEXT, "what changed, in one sentence, as the model says it", required=True),
    Field("change_detected", BOOLEAN, "whether the caption says something changed", required=True),
    Field("change_kind", TEXT, "what changed: " + ", ".join(CHANGE_KINDS) + "; empty if not named"),
    Field("confidence", REAL, "the model's confidence in its caption, 0 to 1 (for ranking, not a probability)",
          required=True),
    Field("status", TEXT, "captioned, skipped_nodata (too much nodata) or failed (a rerun tries again)",
          not_null=True, required=True),
    Field("before_source", TEXT, "the first date's raster (file or layer name)"),
    Field("after_source", TEXT, "the second date's raster (file or layer name)"),
    Field("model_id", TEXT, "the model that wrote the caption"),
    Field("created_at", DATETIME, "when the run wrote the feature (UTC)"),
    Field("review_status", TEXT, "the analyst's review: accepted or corrected; empty if not reviewed", review=True),
    Field("reviewed_caption", TEXT, "the analyst's caption, where the model's was corrected", review=True),
    Field("reviewed_at", DATETIME, "when the analyst reviewed the feature (UTC)", review=True),
    Field("p_right", REAL, "the probability that the caption is right, fitted on this layer's reviews (empty until "
          "enough tiles are reviewed; see ccexpert calibrate)", calibrated=True),
)
FIELD_NAMES = tuple(field.name for field in FIELDS)
#: What a run writes.
RUN_FIELDS = tuple(field for field in FIELDS if not (field.review or field.calibrated))
#: What only the analyst writes.
REVIEW_FIELDS = tuple(field for field in FIELDS if field.review)
#: What the calibration writes from the analyst's reviews.
CALIBRATED_FIELDS = tuple(field for field in FIELDS if field.calibrated)
REQUIRED_FIELDS = tuple(field.name for field in FIELDS if field.required)
#: A feature's key: one tile, one interval.
KEY = ("tile_id", "interval")

#: The changes layer (models with a change-map head): one multipolygon per tile and interval around its changed
#: places, made on first use.
CHANGES_FIELDS: tuple[Field, ...] = (
    Field("tile_id", TEXT, "the tile's place in the grid, r{row}_c{col}", not_null=True),
    Field("interval", INTEGER, "which interval of the date series", not_null=True, default="0"),
    Field("model_id", TEXT, "the model whose change map it is"),
    Field("created_at", DATETIME, "when the run wrote the feature (UTC)"),
)
CHANGES_DESCRIPTION = "ccexpert: changed places from the model's change map"
HISTORY_DESCRIPTION = "ccexpert: each tile's changes over the dates"

#: The history layer (a series of three or more dates): one polygon per tile over all its intervals.
HISTORY_FIELDS: tuple[Field, ...] = (
    Field("tile_id", TEXT, "the tile's place in the grid, r{row}_c{col}", not_null=True),
    Field("row", INTEGER, "the tile's row in the grid, 0 at the top", not_null=True),
    Field("col", INTEGER, "the tile's column in the grid, 0 on the left", not_null=True),
    Field("timeline", TEXT, "what happened when, interval by interval (2016→2018: …; 2018→2021: no change)"),
    Field("changes", INTEGER, "how many consecutive intervals changed"),
    Field("first_change", TEXT, "the first interval that changed (2016→2018), empty if none"),
    Field("intervals", INTEGER, "how many consecutive intervals are captioned so far"),
    Field("model_id", TEXT, "the model that wrote the captions"),
    Field("created_at", DATETIME, "when the history was last written (UTC)"),
)


#: The calibration table: one row per interval of a captions layer, the map from the model's confidence (and change
#: flag) to ``p_right`` that the layer's reviews fitted (``geo/calibration.py``), rewritten at each fit.
CALIBRATION_FIELDS: tuple[Field, ...] = (
    Field("interval", INTEGER, "which interval of the date series the map is for", not_null=True, default="0"),
    Field("date_before", TEXT, "the interval's first date, empty if unknown"),
    Field("date_after", TEXT, "the interval's second date, empty if unknown"),
    Field("reviews", INTEGER, "the interval's reviewed tiles the map was fitted on"),
    Field("wrong", INTEGER, "of them, how many the analyst corrected"),
    Field("layer_reviews", INTEGER, "the whole layer's reviewed tiles (their fit is the interval's prior)"),
    Field("intercept", REAL, "the map: logit p_right = intercept + slope × logit confidence + changed_shift × changed"),
    Field("slope", REAL, "the map's slope on the logit of the confidence (never below 0: a monotone map)"),
    Field("changed_shift", REAL, "what a changed tile adds to the logit of p_right"),
    Field("method", TEXT, "how the map was fitted, its prior and the reviews it needs"),
    Field("fitted_at", DATETIME, "when the map was fitted (UTC)"),
)
CALIBRATION_DESCRIPTION = "ccexpert: the map from confidence to p_right that the analyst's reviews fitted"


@dataclass(frozen=True)
class IntervalEntry:
    """What the history of a tile needs of one of its consecutive intervals."""

    before: str
    after: str
    status: str
    caption: str | None
    change_detected: bool | None

    @property
    def span(self) -> str:
        """``2016→2018``."""
        return f"{self.before}→{self.after}"


def history(entries: list[IntervalEntry]) -> dict[str, object]:
    """A tile's ``timeline``, ``changes``, ``first_change`` and ``intervals`` from its consecutive intervals, in
    time order (reviewed captions where the analyst gave them)."""
    words = {SKIPPED_NODATA: "no data", FAILED: "not captioned yet"}
    parts, changed = [], []
    for entry in entries:
        said = entry.caption if entry.status == CAPTIONED and entry.caption else words.get(entry.status, entry.status)
        parts.append(f"{entry.span}: {said}")
        if entry.status == CAPTIONED and entry.change_detected:
            changed.append(entry)
    return {
        "timeline": "; ".join(parts), "changes": len(changed), "first_change": changed[0].span if changed else None,
        "intervals": sum(entry.status == CAPTIONED for entry in entries),
    }


#: The columns of QGIS's ``layer_styles`` (its ``id`` comes first), as QGIS creates them through OGR.
STYLES_FID = "id"
STYLES_FIELDS: tuple[Field, ...] = (
    Field("f_table_catalog", TEXT, width=256),
    Field("f_table_schema", TEXT, width=256),
    Field("f_table_name", TEXT, width=256),
    Field("f_geometry_column", TEXT, width=256),
    Field("styleName", TEXT, width=30),
    Field("styleQML", TEXT),
    Field("styleSLD", TEXT),
    Field("useAsDefault", BOOLEAN),
    Field("description", TEXT),
    Field("owner", TEXT, width=30),
    Field("ui", TEXT, width=30),
    Field("update_time", DATETIME, default=_NOW),
)
STYLE_NAME = "ccexpert captions"
STYLE_DESCRIPTION = "CCExpert change captions: changed, unchanged, skipped and failed tiles; reviewed ones outlined"


def style_row(layer_name: str) -> dict[str, object]:
    """The ``layer_styles`` row both writers add for a captions layer (its ``update_time`` is set on writing)."""
    return {
        "f_table_catalog": "", "f_table_schema": "", "f_table_name": layer_name, "f_geometry_column": GEOMETRY_COLUMN,
        "styleName": STYLE_NAME, "styleQML": style_qml(), "styleSLD": None, "useAsDefault": True,
        "description": STYLE_DESCRIPTION, "owner": "", "ui": None,
    }


def options_table(layer_name: str) -> str:
    """Where a layer's run options live: :data:`OPTIONS_TABLE` for ``captions``, one per layer name otherwise."""
    return OPTIONS_TABLE if layer_name == CAPTIONS_LAYER else f"{OPTIONS_TABLE}_{layer_name}"


def calibration_table(layer_name: str) -> str:
    """Where a layer's calibration lives: :data:`CALIBRATION_TABLE` for ``captions``, one per layer name otherwise."""
    return CALIBRATION_TABLE if layer_name == CAPTIONS_LAYER else f"{CALIBRATION_TABLE}_{layer_name}"


def layer_description() -> str:
    """The captions layer's description in ``gpkg_contents`` (GDAL's DESCRIPTION, QGIS's abstract): what a
    feature is and what each field means."""
    return "CCExpert change captions: one polygon per tile and interval.\n" + "\n".join(
        f"{field.name}: {field.description}" for field in FIELDS
    )


def quote(name: str) -> str:
    """An SQL identifier, quoted (``row`` and ``interval`` are keywords somewhere)."""
    return '"' + name.replace('"', '""') + '"'


def key_index_sql(layer_name: str) -> str:
    """The statement both writers run on a captions layer: the unique index of its key."""
    columns = ", ".join(quote(name) for name in KEY)
    return f"CREATE UNIQUE INDEX IF NOT EXISTS {quote(layer_name + '_key')} ON {quote(layer_name)} ({columns})"


def missing_required(present: Collection[str]) -> str | None:
    """The first required field a table with columns ``present`` lacks (None: it is a captions layer)."""
    return next((name for name in REQUIRED_FIELDS if name not in present), None)


def fields_to_add(present: Collection[str]) -> tuple[Field, ...]:
    """The fields a captions layer with columns ``present`` lacks: a writer adds them before writing."""
    return tuple(field for field in FIELDS if field.name not in present)


# The look: one palette for QGIS and the HTML report.

CHANGED = "changed"
UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Category:
    """A class of tiles on the map and in the report."""

    #: What :data:`CATEGORY_EXPRESSION` gives for the tile (and :func:`category` in Python).
    value: str
    label: str
    colour: str
    #: 0 draws the outline only.
    fill_opacity: float
    #: A QGIS pen style: solid, dot, dash.
    outline_style: str


CATEGORIES: tuple[Category, ...] = (
    Category(CHANGED, "changed", "#d7301f", 0.25, "solid"),
    Category(UNCHANGED, "unchanged", "#1a9850", 0.0, "solid"),
    Category(SKIPPED_NODATA, "skipped (no data)", "#969696", 0.0, "dot"),
    Category(FAILED, "failed (run again)", "#ff8c00", 0.25, "dash"),
)
#: The analyst's caption says nothing changed: one of the no-change sentences once normalised (lower case, no full
#: stops, single spaces), as ``captions.is_no_change`` decides it in Python.
_NORMALISED_REVIEW = "regexp_replace(trim(replace(lower(\"reviewed_caption\"), '.', '')), '\\\\s+', ' ')"
REVIEWED_NO_CHANGE = (
    f"{_NORMALISED_REVIEW} IN (" + ", ".join(f"'{sentence}'" for sentence in captions.NO_CHANGE_SENTENCES) + ")"
)
#: The category of a tile, keyed on what the map says of it: the analyst's caption where there is one (a tile
#: reviewed "No change" is unchanged), else the change flag once captioned, else its status.
CATEGORY_EXPRESSION = (
    f"CASE WHEN coalesce(\"reviewed_caption\", '') <> '' THEN "
    f"CASE WHEN {REVIEWED_NO_CHANGE} THEN '{UNCHANGED}' ELSE '{CHANGED}' END "
    f"WHEN \"status\" = '{CAPTIONED}' THEN "
    f"CASE WHEN \"change_detected\" THEN '{CHANGED}' ELSE '{UNCHANGED}' END ELSE \"status\" END"
)
#: Reviewed tiles: their category's fill under an outline of their own, a legend entry of its own (widths in mm).
REVIEWED_EXPRESSION = '"review_status" IS NOT NULL'
REVIEWED_LABEL = "reviewed"
REVIEWED_COLOUR = "#253494"
OUTLINE_WIDTH_MM = 0.5
REVIEWED_OUTLINE_WIDTH_MM = 1.2
#: The caption to show: the analyst's where there is one.
SHOWN_CAPTION = "coalesce(nullif(\"reviewed_caption\", ''), \"caption\")"
_SHOWN_CHANGED = f"({CATEGORY_EXPRESSION}) = '{CHANGED}'"
#: Longer captions are cut in labels (the map tip and the attribute table show them whole).
LABEL_MAX_CHARACTERS = 90
LABEL_WRAP_CHARACTERS = 28
#: Only changed tiles are labelled: a region is mostly unchanged, and "no change" labels would bury the rest.
LABEL_EXPRESSION = (
    f"CASE WHEN {_SHOWN_CHANGED} THEN "
    f"CASE WHEN length({SHOWN_CAPTION}) > {LABEL_MAX_CHARACTERS} "
    f"THEN left({SHOWN_CAPTION}, {LABEL_MAX_CHARACTERS - 1}) || '…' ELSE {SHOWN_CAPTION} END END"
)
MAP_TIP = (
    f"<b>[% {SHOWN_CAPTION} %]</b><br>[% \"tile_id\" %] · [% \"status\" %] · "
    "confidence [% format_number(\"confidence\", 2) %]"
    "[% CASE WHEN \"p_right\" IS NOT NULL THEN ' · p_right ' || format_number(\"p_right\", 2) END %]"
    "[% CASE WHEN \"change_kind\" IS NOT NULL THEN ' · ' || \"change_kind\" END %]"
    "[% CASE WHEN \"date_before\" <> '' OR \"date_after\" <> '' THEN '<br>' || coalesce(\"date_before\", '?') "
    "|| ' → ' || coalesce(\"date_after\", '?') END %]"
    "[% CASE WHEN \"review_status\" IS NOT NULL THEN '<br>reviewed: ' || \"review_status\" END %]"
)
DISPLAY_EXPRESSION = '"caption"'
#: The attribute table's order, descending: changed tiles first, then by confidence. QGIS 3.22 sorts on one
#: expression's value (not an SQL ORDER BY list), so the two keys are folded into one number.
SORT_EXPRESSION = f"CASE WHEN {_SHOWN_CHANGED} THEN 2 ELSE 0 END + coalesce(\"confidence\", 0)"
#: Attribute table column widths in pixels (-1: QGIS's own): the captions wide enough to read.
COLUMN_WIDTHS = {"caption": 420, "reviewed_caption": 320}


def category(status: str, change_detected: bool | None, reviewed_caption: str | None = None) -> str:
    """The :class:`Category` value of a tile (what :data:`CATEGORY_EXPRESSION` gives in QGIS)."""
    if reviewed_caption:
        return UNCHANGED if captions.is_no_change(reviewed_caption) else CHANGED
    if status == CAPTIONED:
        return CHANGED if change_detected else UNCHANGED
    return status


def _rgba(colour: str, opacity: float = 1.0) -> str:
    """``#rrggbb`` → QGIS's ``r,g,b,a``."""
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"{red},{green},{blue},{round(opacity * 255)}"


def _options(parent: ElementTree.Element, values: dict[str, str], name: str | None = None) -> ElementTree.Element:
    """A QGIS ``Option`` map of strings (how 3.x stores a symbol layer's properties)."""
    element = ElementTree.SubElement(parent, "Option", {"type": "Map", **({"name": name} if name else {})})
    for key, value in values.items():
        ElementTree.SubElement(element, "Option", {"name": key, "value": value, "type": "QString"})
    return element


def _fill_symbol(parent: ElementTree.Element, name: str, fill: str, outline: str, style: str, width: float) -> None:
    symbol = ElementTree.SubElement(
        parent, "symbol", {"type": "fill", "name": name, "alpha": "1", "clip_to_extent": "1", "force_rhr": "0"}
    )
    layer = ElementTree.SubElement(symbol, "layer", {"class": "SimpleFill", "enabled": "1", "locked": "0", "pass": "0"})  # nosec B105
    _options(layer, {
        "color": fill, "style": "no" if fill.endswith(",0") else "solid", "outline_color": outline,
        "outline_style": style, "outline_width": str(width), "outline_width_unit": "MM", "joinstyle": "miter",
    })


def style_qml() -> str:
    """The default style as QGIS QML (3.22 and later): a rule-based renderer with a rule per :data:`CATEGORIES`
    entry on :data:`CATEGORY_EXPRESSION` (a simple fill each), then the "reviewed" rule over them (an outline of
    its own on reviewed tiles, a legend entry of its own); labels from :data:`LABEL_EXPRESSION`, the map tip, the
    display expression, the attribute table's sort and column widths."""
    root = ElementTree.Element("qgis", {
        "version": "3.22.0", "styleCategories": "Symbology|Labeling|Fields|MapTips|AttributeTable",
        "labelsEnabled": "1",
    })
    renderer = ElementTree.SubElement(root, "renderer-v2", {
        "type": "RuleRenderer", "symbollevels": "0", "forceraster": "0", "enableorderby": "0",
    })
    rules = ElementTree.SubElement(renderer, "rules", {"key": "{ccexpert-rules}"})
    symbols = ElementTree.SubElement(renderer, "symbols")
    for index, entry in enumerate(CATEGORIES):
        ElementTree.SubElement(rules, "rule", {
            "key": f"{{ccexpert-{entry.value}}}", "label": entry.label, "symbol": str(index),
            "filter": f"({CATEGORY_EXPRESSION}) = '{entry.value}'",
        })
        _fill_symbol(symbols, str(index), _rgba(entry.colour, entry.fill_opacity), _rgba(entry.colour),
                     entry.outline_style, OUTLINE_WIDTH_MM)
    reviewed = str(len(CATEGORIES))
    ElementTree.SubElement(rules, "rule", {
        "key": "{ccexpert-reviewed}", "label": REVIEWED_LABEL, "symbol": reviewed, "filter": REVIEWED_EXPRESSION,
    })
    _fill_symbol(symbols, reviewed, _rgba(REVIEWED_COLOUR, 0), _rgba(REVIEWED_COLOUR), "solid",
                 REVIEWED_OUTLINE_WIDTH_MM)
    labeling = ElementTree.SubElement(root, "labeling", {"type": "simple"})
    settings = ElementTree.SubElement(labeling, "settings", {"calloutType": "simple"})
    text = ElementTree.SubElement(settings, "text-style", {
        "fieldName": LABEL_EXPRESSION, "isExpression": "1", "fontFamily": "Sans Serif", "fontSize": "8",
        "fontSizeUnit": "Point", "textColor": "0,0,0,255", "textOpacity": "1",
    })
    ElementTree.SubElement(text, "text-buffer", {
        "bufferDraw": "1", "bufferSize": "1", "bufferSizeUnits": "MM", "bufferColor": "255,255,255,255",
        "bufferOpacity": "1",
    })
    ElementTree.SubElement(settings, "text-format", {
        "autoWrapLength": str(LABEL_WRAP_CHARACTERS), "useMaxLineLengthForAutoWrap": "1", "multilineAlign": "3",
    })
    ElementTree.SubElement(settings, "placement", {"placement": "1"})  # over the polygon's centroid
    ElementTree.SubElement(settings, "rendering", {"drawLabels": "1", "obstacle": "1"})
    ElementTree.SubElement(root, "previewExpression").text = DISPLAY_EXPRESSION
    ElementTree.SubElement(root, "mapTip").text = MAP_TIP
    table = ElementTree.SubElement(root, "attributetableconfig", {
        "sortExpression": SORT_EXPRESSION, "sortOrder": "1", "actionWidgetStyle": "dropDown",  # 1: descending
    })
    columns = ElementTree.SubElement(table, "columns")
    for name in ("fid", *FIELD_NAMES):
        ElementTree.SubElement(columns, "column", {
            "type": "field", "name": name, "width": str(COLUMN_WIDTHS.get(name, -1)), "hidden": "0",
        })
    ElementTree.SubElement(columns, "column", {"type": "actions", "width": "-1", "hidden": "1"})
    ElementTree.SubElement(root, "layerGeometryType").text = "2"  # polygons
    ElementTree.indent(root, " ")
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ElementTree.tostring(root, "unicode")
