"""Search the project's captions layers from QGIS's locator bar (Ctrl+K): ``cc demolished houses 2018..2021``.

Each hit shows its caption, and below it the layer, the tile, the dates, the kind of change and how far to trust it;
choosing one zooms the map to the tile and opens it in the review dock. The ranking is the bundled search's (the
same as ``ccexpert search`` and the review dock's search field). A layer's tiles are read once and again only when
its GeoPackage or its filter changes, so that each key typed searches at once, on QGIS's main thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from qgis.core import (
    QgsFeatureRequest,
    QgsFeedback,
    QgsLocatorContext,
    QgsLocatorFilter,
    QgsLocatorResult,
    QgsVectorLayer,
)

from .qgis_compat import locator_user_data, project
from .review_panel import zoom_to_tile
from .review_store import CaptionsFile, read_items, search_entry
from .shared_modules import search

PREFIX = "cc"
#: Hits shown per layer (the locator bar lists a few; more words narrow them).
HITS_PER_LAYER = 20


@dataclass
class _LayerIndex:
    """A layer's tiles, searchable, and what they were read from."""

    signature: tuple
    index: search.SearchIndex


def _signature(layer: QgsVectorLayer, file: CaptionsFile) -> tuple:
    """What the layer's tiles depend on: its file (and SQLite's journal beside it) as last written, and its filter."""
    stamps: list[tuple[int, int] | None] = []
    for path in (file.path, file.path + "-wal"):
        try:
            status = os.stat(path)
            stamps.append((status.st_mtime_ns, status.st_size))
        except OSError:
            stamps.append(None)
    return (file.path, file.layer_name, layer.subsetString(), *stamps)


class LayerIndexes:
    """The searchable tiles of each captions layer, kept between searches (shared by a filter's clones)."""

    def __init__(self) -> None:
        self._indexes: dict[str, _LayerIndex] = {}

    def of(self, layer: QgsVectorLayer, file: CaptionsFile) -> search.SearchIndex:
        """The layer's index, read again where its file or filter changed."""
        signature = _signature(layer, file)
        kept = self._indexes.get(layer.id())
        if kept is None or kept.signature != signature:
            kept = _LayerIndex(signature, search.SearchIndex([search_entry(item) for item in read_items(layer)]))
            self._indexes[layer.id()] = kept
        return kept.index


def captions_layers() -> list[tuple[QgsVectorLayer, CaptionsFile]]:
    """The project's captions layers (GeoPackage layers with the captions schema)."""
    found = []
    for layer in project().mapLayers().values():
        if isinstance(layer, QgsVectorLayer):
            file = CaptionsFile.of(layer)
            if file is not None:
                found.append((layer, file))
    return found


def describe(layer: QgsVectorLayer, entry: search.Entry) -> str:
    """The line under a hit's caption: the layer, the tile, the dates, the kind, the trust."""
    parts = [layer.name(), entry.tile_id + (f" interval {entry.interval}" if entry.interval else "")]
    if entry.dates:
        parts.append(entry.dates)
    parts.append(entry.kind or ("changed" if entry.changed else "no change"))
    if entry.p_right is not None:
        parts.append(f"p_right {entry.p_right:.2f}")
    elif entry.confidence is not None:
        parts.append(f"confidence {entry.confidence:.2f}")
    if entry.review_status:
        parts.append(entry.review_status)
    return " · ".join(parts)


class CaptionsLocatorFilter(QgsLocatorFilter):
    """The locator bar's search over the project's captions layers; ``open_tile`` shows a chosen tile in the review
    dock."""

    def __init__(self, iface, open_tile: Callable[[QgsVectorLayer, int], None],
                 indexes: LayerIndexes | None = None) -> None:
        super().__init__()
        self.iface = iface
        self.open_tile = open_tile
        self.indexes = indexes or LayerIndexes()

    def clone(self) -> CaptionsLocatorFilter:
        """A copy for one search (QGIS runs each search on a clone), sharing the layers' indexes."""
        return CaptionsLocatorFilter(self.iface, self.open_tile, self.indexes)

    def name(self) -> str:
        return "ccexpert_captions"

    def displayName(self) -> str:  # noqa: N802 (QGIS's name)
        return "CCExpert captions"

    def prefix(self) -> str:
        return PREFIX

    def flags(self) -> QgsLocatorFilter.Flags:
        """Fast: a search over indexes already read takes milliseconds, on the main thread where layers are read."""
        return QgsLocatorFilter.Flags(QgsLocatorFilter.Flag.FlagFast)

    def fetchResults(self, string: str | None, context: QgsLocatorContext,  # noqa: N802
                     feedback: QgsFeedback | None) -> None:
        """Each captions layer's best tiles for the query; a query that cannot be read gets one line saying why."""
        if not (string or "").strip():
            return
        try:
            query = search.parse_query(string or "")
        except ValueError as error:
            self.resultFetched.emit(QgsLocatorResult(self, str(error), ""))
            return
        for layer, file in captions_layers():
            if feedback is not None and feedback.isCanceled():
                return
            hits = self.indexes.of(layer, file).search(query, HITS_PER_LAYER)
            for rank, hit in enumerate(hits):
                result = QgsLocatorResult(self, hit.entry.shown_caption or "", f"{layer.id()}\t{hit.entry.fid}")
                result.description = describe(layer, hit.entry)
                result.group = layer.name()
                result.score = 1.0 - rank / (HITS_PER_LAYER + 1)
                self.resultFetched.emit(result)

    def triggerResult(self, result: QgsLocatorResult) -> None:  # noqa: N802
        """Zoom to the chosen tile, flash it, and open it in the review dock."""
        layer_id, _, fid_text = str(locator_user_data(result) or "").partition("\t")
        layer = project().mapLayer(layer_id)
        if not isinstance(layer, QgsVectorLayer) or not fid_text:
            return  # the line that says why a query cannot be read, or a layer removed since
        fid = int(fid_text)
        feature = next(layer.getFeatures(QgsFeatureRequest(fid)), None)
        canvas = self.iface.mapCanvas()
        if feature is not None and canvas is not None:
            zoom_to_tile(canvas, project(), layer, feature.geometry().boundingBox())
            canvas.flashFeatureIds(layer, [fid])
        self.open_tile(layer, fid)
