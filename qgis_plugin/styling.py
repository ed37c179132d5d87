"""How a captions layer looks in QGIS: the schema's default style (``schema.style_qml``), the very QML that both
writers store in the GeoPackage's ``layer_styles``, so a layer looks the same whichever tool made it and wherever
it is opened.

Changed / unchanged / skipped / failed tiles as the map should say it (the analyst's caption where there is one: a tile
reviewed "No change" is drawn unchanged), reviewed ones outlined with a "reviewed" legend entry of their own, captions
of changed tiles as labels and map tips, the attribute table sorted changed first, then by confidence, with the
caption columns wide enough to read.
The history layer of a series by how often each tile changed, the changes layer as filled changed places.
"""

from __future__ import annotations

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsRendererCategory,
    QgsSingleSymbolRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtXml import QDomDocument

from .shared_modules import schema


def style_captions_layer(layer: QgsVectorLayer) -> str | None:
    """Apply the schema's style to a captions layer; QGIS's message where it could not (None when it did)."""
    document = QDomDocument("qgis")
    document.setContent(schema.style_qml())
    applied, error = layer.importNamedStyle(document)
    if not applied:
        return error or "QGIS did not take the style"
    layer.triggerRepaint()
    return None


#: The history layer's classes: how many of a tile's intervals changed (two or more in one class), with the fill
#: opacity that says it louder the more often it changed.
HISTORY_CLASSES = (
    (0, "no change", "#1a9850", 0.0),
    (1, "changed once", "#fc8d59", 0.35),
    (2, "changed twice or more", "#b30000", 0.6),
)


def _fill(colour: str, opacity: float, width_mm: float = 0.5) -> QgsFillSymbol:
    colour_rgb = QColor(colour)
    values = f"{colour_rgb.red()},{colour_rgb.green()},{colour_rgb.blue()}"
    symbol = QgsFillSymbol.createSimple({
        "color": f"{values},{round(opacity * 255)}", "style": "solid" if opacity else "no",
        "outline_color": f"{values},255", "outline_width": str(width_mm), "outline_width_unit": "MM",
    })
    assert symbol is not None, "a simple fill from valid properties"
    return symbol


def style_history_layer(layer: QgsVectorLayer) -> None:
    """A series' history layer: tiles by how many of their intervals changed, the timeline as map tip."""
    categories = [QgsRendererCategory(value, _fill(colour, opacity), label) for value, label, colour, opacity
                  in HISTORY_CLASSES]
    last = HISTORY_CLASSES[-1][0]
    layer.setRenderer(QgsCategorizedSymbolRenderer(
        f'CASE WHEN "changes" >= {last} THEN {last} ELSE coalesce("changes", 0) END', categories,
    ))
    layer.setMapTipTemplate('<b>[% "tile_id" %]</b> · [% "changes" %] change(s)<br>[% "timeline" %]')
    layer.setDisplayExpression('"timeline"')
    layer.triggerRepaint()


def style_changes_layer(layer: QgsVectorLayer) -> None:
    """The changes layer: the changed places, filled over the captions' tiles."""
    changed = next(entry for entry in schema.CATEGORIES if entry.value == schema.CHANGED)
    layer.setRenderer(QgsSingleSymbolRenderer(_fill(changed.colour, 0.45, 0.3)))
    layer.triggerRepaint()
