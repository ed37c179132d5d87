"""What a captions layer looks like in QGIS, as plain data to compare (renderer, labels, map tip, table order and
column widths)."""

from __future__ import annotations

from qgis.core import QgsVectorLayer
from qgis.PyQt.QtGui import QColor

from qgis_plugin.shared_modules import schema


def style_facts(layer: QgsVectorLayer) -> dict:
    """The parts of a layer's style the schema decides."""
    renderer = layer.renderer()
    rules = []
    for rule in renderer.rootRule().children():
        fill = rule.symbol().symbolLayer(0)
        rules.append((
            rule.label(), rule.filterExpression(), fill.color().name(QColor.HexArgb), fill.strokeColor().name(),
            int(fill.strokeStyle()), round(fill.strokeWidth(), 3),
        ))
    table = layer.attributeTableConfig()
    widths = {column.name: column.width for column in table.columns()}
    labeling = layer.labeling()
    return {
        "renderer": renderer.type(), "rules": rules, "labels": layer.labelsEnabled(),
        "label": None if labeling is None else labeling.settings().fieldName,
        "map_tip": layer.mapTipTemplate(), "display": layer.displayExpression(),
        "sort": (table.sortExpression(), int(table.sortOrder())),
        "widths": {name: widths.get(name) for name in schema.COLUMN_WIDTHS},
    }
