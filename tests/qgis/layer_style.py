"""What a captions layer looks like in QGIS, as plain data to compare (renderer, labels, map tip, table order)."""

from __future__ import annotations

from qgis.core import QgsSymbolLayer, QgsVectorLayer
from qgis.PyQt.QtGui import QColor


def style_facts(layer: QgsVectorLayer) -> dict:
    """The parts of a layer's style the schema decides."""
    renderer = layer.renderer()
    categories = []
    for category in renderer.categories():
        fill = category.symbol().symbolLayer(0)
        width = fill.dataDefinedProperties().property(QgsSymbolLayer.PropertyStrokeWidth)
        categories.append((
            category.value(), category.label(), fill.color().name(QColor.HexArgb), fill.strokeColor().name(),
            int(fill.strokeStyle()), width.expressionString() if width.isActive() else None,
        ))
    table = layer.attributeTableConfig()
    labeling = layer.labeling()
    return {
        "renderer": renderer.type(), "attribute": getattr(renderer, "classAttribute", lambda: None)(),
        "categories": categories, "labels": layer.labelsEnabled(),
        "label": None if labeling is None else labeling.settings().fieldName,
        "map_tip": layer.mapTipTemplate(), "display": layer.displayExpression(),
        "sort": (table.sortExpression(), int(table.sortOrder())),
    }
