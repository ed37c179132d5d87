"""At the end of a run, on the main thread: the captions layer in the project, styled, and a summary message."""

from __future__ import annotations

from pathlib import Path

from qgis.core import Qgis, QgsMessageLog, QgsProject, QgsVectorLayer

from .job import JobSummary
from .styling import style_captions_layer

LOG_TAG = "CCExpert"


def layer_uri(output: str, layer_name: str) -> str:
    """The OGR source of a GeoPackage layer."""
    return f"{output}|layername={layer_name}"


def open_captions_layer(output: str, layer_name: str, title: str) -> QgsVectorLayer | None:
    """The styled layer, or None when the file holds no such layer (a run that failed before writing)."""
    if not Path(output).is_file():
        return None
    layer = QgsVectorLayer(layer_uri(output, layer_name), title, "ogr")
    if not layer.isValid():
        return None
    style_and_keep(layer)
    return layer


def style_and_keep(layer: QgsVectorLayer) -> None:
    """Style a captions layer with the schema's QML. The writer keeps the same QML in the GeoPackage as the layer's
    default style (never over one saved there before), so the file opens styled anywhere."""
    error = style_captions_layer(layer)
    if error:
        QgsMessageLog.logMessage(f"the captions style does not apply to {layer.source()}: {error}", LOG_TAG,
                                 Qgis.Warning)


def show_result(summary: JobSummary, project: QgsProject, message_bar, title: str) -> QgsVectorLayer | None:
    """Add (or refresh) the captions layer and say what the run did; returns the layer in the project."""
    uri = layer_uri(summary.output, summary.layer_name)
    shown = next((layer for layer in project.mapLayers().values() if layer.source() == uri), None)
    if shown is not None:
        # A resumed run: the layer is there already, with the analyst's own changes to it; show the new tiles.
        shown.reload()
        shown.triggerRepaint()
    else:
        shown = open_captions_layer(summary.output, summary.layer_name, title)
        if shown is not None:
            project.addMapLayer(shown)
    if summary.error and not summary.canceled:
        level = Qgis.Critical
    elif summary.canceled or summary.counts.get("failed"):
        level = Qgis.Warning
    else:
        level = Qgis.Success
    QgsMessageLog.logMessage(summary.message(), LOG_TAG, level)
    message_bar.pushMessage("CCExpert", summary.message(), level, 0 if level == Qgis.Critical else 15)
    return shown
