"""At the end of a run, on the main thread: the captions layer in the project, styled, described (the model in
words in its metadata) and, for a dated run, in time with its rasters; the series' history layer and the changes
layer beside it, in the run's group at the top of the layer tree (changes over captions over history, so that the
history, which has no time of its own, never hides what the Temporal Controller animates); and a summary message
short enough for one line of the message bar, with the whole of it under "Show more"."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from osgeo import gdal
from qgis.core import (
    Qgis,
    QgsLayerMetadata,
    QgsLayerTreeGroup,
    QgsMapLayer,
    QgsMessageLog,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)

from .captions_gpkg import companion_layer
from .job import JobSummary, model_words
from .shared_modules import dates
from .styling import style_captions_layer, style_changes_layer, style_history_layer
from .temporal import cover_dates, set_interval_temporal, set_raster_temporal, set_temporal

LOG_TAG = "CCExpert"
#: The keyword vocabulary of the layers' metadata.
KEYWORDS = "CCExpert"


def layer_uri(output: str, layer_name: str) -> str:
    """The OGR source of a GeoPackage layer."""
    return f"{output}|layername={layer_name}"


def shown_layer(project: QgsProject, output: str, layer_name: str) -> QgsVectorLayer | None:
    """The project's layer of that GeoPackage layer, if the project shows it."""
    uri = layer_uri(output, layer_name)
    return next((layer for layer in project.mapLayers().values()
                 if isinstance(layer, QgsVectorLayer) and layer.source() == uri), None)


def open_captions_layer(output: str, layer_name: str, title: str) -> QgsVectorLayer | None:
    """The styled layer, or None when the file holds no such layer (a run that failed before writing)."""
    layer = _open(output, layer_name, title)
    if layer is not None:
        style_and_keep(layer)
    return layer


def _open(output: str, layer_name: str, title: str) -> QgsVectorLayer | None:
    if not Path(output).is_file():
        return None
    layer = QgsVectorLayer(layer_uri(output, layer_name), title, "ogr")
    return layer if layer.isValid() else None


def add_captions_layer(project: QgsProject, layer: QgsVectorLayer, group_name: str) -> None:
    """Add a run's captions layer in a group of its own at the top of the layer tree (wherever the analyst's
    current layer is: QGIS would otherwise insert it there, in the middle of the tree)."""
    project.addMapLayer(layer, False)
    root = project.layerTreeRoot()
    assert root is not None, "a project has a layer tree"
    group = root.findGroup(group_name) or root.insertGroup(0, group_name)
    assert group is not None, "a group was found or made"
    group.insertLayer(0, layer)


def _add_beside(project: QgsProject, layer: QgsVectorLayer, captions: QgsVectorLayer, above: bool) -> None:
    """Add a companion layer just above (changes) or below (history) the captions layer, in its group."""
    project.addMapLayer(layer, False)
    root = project.layerTreeRoot()
    assert root is not None, "a project has a layer tree"
    node = root.findLayer(captions.id())
    parent = node.parent() if node is not None else None
    if node is None or not isinstance(parent, QgsLayerTreeGroup):  # the analyst removed the captions layer
        root.insertLayer(0, layer)
        return
    index = parent.children().index(node)
    parent.insertLayer(index if above else index + 1, layer)


def style_and_keep(layer: QgsVectorLayer) -> None:
    """Style a captions layer with the schema's QML. The writer keeps the same QML in the GeoPackage as the layer's
    default style (never over one saved there before), so the file opens styled anywhere."""
    error = style_captions_layer(layer)
    if error:
        QgsMessageLog.logMessage(f"the captions style does not apply to {layer.source()}: {error}", LOG_TAG,
                                 Qgis.MessageLevel.Warning)


def describe(layer: QgsMapLayer, summary: JobSummary, what: str, labels: Sequence[str]) -> None:
    """The layer's metadata (Layer Properties › Metadata): which model wrote it, in words, and from which dates."""
    metadata = QgsLayerMetadata(layer.metadata())
    metadata.setTitle(layer.name())
    span = " → ".join(label for label in labels if label)
    metadata.setAbstract(
        f"{what} by CCExpert{f' ({span})' if span else ''}.\n"
        f"Model: {model_words(_info(summary))}.\n"
        f"Model id: {summary.model_id}.\nFile: {summary.output}."
    )
    metadata.addKeywords(KEYWORDS, [word for word in ("change captions", summary.model_name, summary.model_id,
                                                      *labels) if word])
    layer.setMetadata(metadata)


def _companion(project: QgsProject, summary: JobSummary, kind: str, captions: QgsVectorLayer) -> QgsVectorLayer | None:
    """The run's history or changes layer in the project (reloaded when shown already), styled, beside the captions
    layer; None where the file has no such layer (two dates; a model without a change map)."""
    name = companion_layer(summary.layer_name, kind)
    layer = shown_layer(project, summary.output, name)
    if layer is not None:
        layer.reload()
        layer.triggerRepaint()
        return layer
    dataset = gdal.OpenEx(summary.output, gdal.OF_VECTOR | gdal.OF_READONLY)
    if dataset is None or dataset.GetLayerByName(name) is None:
        return None
    dataset = None  # closed before QGIS opens the file
    layer = _open(summary.output, name, f"{captions.name()} — {kind}")
    if layer is None:
        return None
    (style_history_layer if kind == "history" else style_changes_layer)(layer)
    _add_beside(project, layer, captions, above=kind == "changes")
    return layer


def show_result(
    summary: JobSummary, project: QgsProject, message_bar, title: str, labels: Sequence[str] = (),
    controller: object = None, rasters: Sequence[QgsRasterLayer] = (),
) -> QgsVectorLayer | None:
    """Add (or refresh) the captions layer and its companions and say what the run did; returns the captions layer.

    ``labels`` are the run's dates as typed: where every date is known the layer follows the Temporal Controller
    (``controller``, the map canvas's), the project's time range covers them, and each of ``rasters`` (the dates'
    layers, in order) shows from its date until the next one's, unless the analyst gave it a time already.
    """
    shown = shown_layer(project, summary.output, summary.layer_name)
    if shown is not None:
        # A resumed run: the layer is there already, with the analyst's own changes to it; show the new tiles.
        shown.reload()
        shown.triggerRepaint()
    else:
        shown = open_captions_layer(summary.output, summary.layer_name, title)
        if shown is not None:
            add_captions_layer(project, shown, title)
    if shown is not None and summary.model_id:
        describe(shown, summary, "Change captions, one polygon per tile and interval", labels)
        parsed = [dates.DateLabel.parse(label) for label in labels if label]
        dated = len(parsed) == len(labels) >= 2
        if dated:
            set_temporal(shown)
            cover_dates(project, controller, parsed)
            if len(rasters) == len(parsed):
                set_raster_temporal(rasters, parsed)
        for kind, what in (("history", "Each tile's changes over the dates"),
                           ("changes", "Changed places from the model's change map")):
            companion = _companion(project, summary, kind, shown)  # None where the file has none
            if companion is not None:
                describe(companion, summary, what, labels)
                if kind == "changes" and dated:
                    set_interval_temporal(companion, parsed)
    say_summary(summary, message_bar, title)
    return shown


def summary_level(summary: JobSummary) -> Qgis.MessageLevel:
    """The message bar's level for a run's end: failed, canceled (or with failed tiles), or done."""
    if summary.error and not summary.canceled:
        return Qgis.MessageLevel.Critical
    if summary.canceled or summary.counts.get("failed"):
        return Qgis.MessageLevel.Warning
    return Qgis.MessageLevel.Success


def short_summary(summary: JobSummary) -> str:
    """One line for the message bar: what this run did, or why it stopped and what to do; the file by its name."""
    counts = ", ".join(f"{count} {status.replace('_', ' ')}" for status, count in summary.counts.items() if count)
    name = Path(summary.output).name
    before = f" ({summary.already_done} of {summary.tiles} tiles done before)" if summary.already_done else ""
    if summary.canceled:
        return f"Canceled. {counts or 'Nothing new'} kept in {name}{before}: run again to resume."
    if summary.error and not (summary.written or summary.already_done):
        return summary.error
    if summary.error:
        return f"{summary.error.rstrip('.')}. {counts or 'Nothing new'} kept in {name}: run again to resume."
    model = f", by {summary.model_name}" if summary.model_name else ""
    failed = summary.counts.get("failed", 0)
    again = f": run again to caption the {failed} failed" if failed else ""  # as the command's exit status 3 says
    return f"{counts or 'nothing new to caption'}{before} in {name}{model}{again}."


def say_summary(summary: JobSummary, message_bar, title: str) -> None:
    """The run's last word on the message bar (one line; "Show more" has all of it) and in the log panel."""
    level = summary_level(summary)
    details = summary.message()
    if summary.model_id and not (summary.error and not summary.written):
        details += f" Captions by {model_words(_info(summary))}."
    QgsMessageLog.logMessage(details, LOG_TAG, level)
    message_bar.pushMessage(title, short_summary(summary), details, level,
                            0 if level == Qgis.MessageLevel.Critical else 15)


def _info(summary: JobSummary) -> dict[str, object]:
    return {"model_name": summary.model_name, "model_id": summary.model_id, "model_note": summary.model_note}
