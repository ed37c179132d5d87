"""How a captions layer looks in QGIS: changed / unchanged / skipped / failed tiles, captions as labels and tips.

Confidence stays an attribute: the attribute table opens sorted by it, and it filters like any field.
"""

from __future__ import annotations

from qgis.core import (
    QgsCategorizedSymbolRenderer, QgsFillSymbol, QgsPalLayerSettings, QgsRendererCategory,
    QgsTextBufferSettings, QgsTextFormat, QgsVectorLayer, QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor, QFont

from .captions_gpkg import CAPTIONED, FAILED, SKIPPED_NODATA

CHANGED, UNCHANGED = "changed", "unchanged"
#: The category of a tile: its change flag once captioned, else its status.
CATEGORY_EXPRESSION = (
    f"CASE WHEN \"status\" = '{CAPTIONED}' THEN "
    f"CASE WHEN \"change_detected\" THEN '{CHANGED}' ELSE '{UNCHANGED}' END ELSE \"status\" END"
)
#: Longer captions are cut in labels (a caption is a sentence; the map tip and the table show it whole).
LABEL_MAX_CHARACTERS = 90
#: Only changed tiles are labelled: a region is mostly unchanged, and "no change" labels would bury the rest.
LABEL_EXPRESSION = (
    f"CASE WHEN \"status\" = '{CAPTIONED}' AND \"change_detected\" THEN "
    f"CASE WHEN length(\"caption\") > {LABEL_MAX_CHARACTERS} "
    f"THEN left(\"caption\", {LABEL_MAX_CHARACTERS - 1}) || '…' ELSE \"caption\" END END"
)
MAP_TIP = (
    "<b>[% \"caption\" %]</b><br>[% \"tile_id\" %] · [% \"status\" %] · "
    "confidence [% format_number(\"confidence\", 2) %]"
)
LABEL_WRAP_CHARACTERS = 28

# (category, legend, fill RGBA, outline, outline style)
_CATEGORIES = (
    (CHANGED, "changed", (230, 60, 40, 50), "#d7301f", "solid"),
    (UNCHANGED, "unchanged", (0, 0, 0, 0), "#7a7a7a", "solid"),
    (SKIPPED_NODATA, "skipped (no data)", (0, 0, 0, 0), "#b0b0b0", "dot"),
    (FAILED, "failed (run again)", (255, 160, 0, 60), "#ff8c00", "dash"),
)


def _symbol(fill: tuple[int, int, int, int], outline: str, style: str) -> QgsFillSymbol:
    return QgsFillSymbol.createSimple({
        "color": ",".join(map(str, fill)), "outline_color": outline, "outline_style": style, "outline_width": "0.5",
    })


def _labeling() -> QgsVectorLayerSimpleLabeling:
    settings = QgsPalLayerSettings()
    settings.fieldName = LABEL_EXPRESSION
    settings.isExpression = True
    settings.placement = QgsPalLayerSettings.OverPoint
    settings.autoWrapLength = LABEL_WRAP_CHARACTERS
    text = QgsTextFormat()
    text.setFont(QFont("Sans Serif"))
    text.setSize(8)
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    buffer.setSize(1.0)
    buffer.setColor(QColor(255, 255, 255))
    text.setBuffer(buffer)
    settings.setFormat(text)
    return QgsVectorLayerSimpleLabeling(settings)


def style_captions_layer(layer: QgsVectorLayer) -> None:
    """Categories, labels, map tips, display name and table order for a captions layer."""
    categories = [
        QgsRendererCategory(value, _symbol(fill, outline, style), legend)
        for value, legend, fill, outline, style in _CATEGORIES
    ]
    layer.setRenderer(QgsCategorizedSymbolRenderer(CATEGORY_EXPRESSION, categories))
    layer.setLabeling(_labeling())
    layer.setLabelsEnabled(True)
    layer.setDisplayExpression('"caption"')
    layer.setMapTipTemplate(MAP_TIP)
    table = layer.attributeTableConfig()
    table.setSortExpression('"confidence"')
    table.setSortOrder(Qt.DescendingOrder)
    layer.setAttributeTableConfig(table)
    layer.triggerRepaint()
