"""How a captions layer looks in QGIS: the schema's default style (``schema.style_qml``), the very QML that both
writers store in the GeoPackage's ``layer_styles``, so a layer looks the same whichever tool made it and wherever
it is opened.

Changed / unchanged / skipped / failed tiles, thicker outlines on reviewed ones, captions of changed tiles as labels
(the analyst's where there is one) and map tips, the attribute table sorted changed first, then by confidence.
"""

from __future__ import annotations

from qgis.core import QgsVectorLayer
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
