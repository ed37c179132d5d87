"""When a raster layer was taken, as far as QGIS can tell: its file's metadata (``TIFFTAG_DATETIME`` and the
others the command reads, so both tools date a raster alike), else a date in its layer or file name; and raster
layers in time order, for the dialog's defaults."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import date
from pathlib import Path

from osgeo import gdal
from qgis.core import QgsProject, QgsRasterLayer

from .shared_modules import dates

#: Words of an undated layer's name that place it first or last of two (``town_before``, ``post-flood``).
EARLIER_WORDS = frozenset(("before", "pre", "old", "older", "earlier", "first"))
LATER_WORDS = frozenset(("after", "post", "new", "newer", "later", "last"))


def layer_date(layer: QgsRasterLayer) -> dates.DateLabel | None:
    """The layer's date from its raster's metadata, else from its name or its file's name; None if none says."""
    source = layer.source().split("|")[0] if layer.providerType() == "gdal" else ""
    if source:
        dataset = gdal.OpenEx(source, gdal.OF_RASTER | gdal.OF_READONLY)
        if dataset is not None:
            tags = {**(dataset.GetMetadata() or {}), **(dataset.GetMetadata("IMAGERY") or {})}
            found = dates.date_from_metadata(tags)
            if found is not None:
                return found
    found = dates.date_from_name(layer.name())
    if found is None and source:
        found = dates.date_from_name(Path(source).stem)
    return found


def stacking_order(project: QgsProject) -> list[str]:
    """The project's layer ids from the bottom of the layer tree up: the order they were added in, as QGIS puts
    each new layer on top."""
    root = project.layerTreeRoot()
    return [] if root is None else list(reversed(root.findLayerIds()))


def _name_hint(layer: QgsRasterLayer) -> int:
    words = set(re.split(r"[^a-z0-9]+", layer.name().lower()))
    return 0 if words & EARLIER_WORDS else 2 if words & LATER_WORDS else 1


def in_time_order(layers: Iterable[QgsRasterLayer], stacking: Sequence[str] = ()) -> list[QgsRasterLayer]:
    """Dated layers by date, then the undated ones: a name that says before or after first, then the order they
    were added in (``stacking``: layer ids from the bottom of the layer tree up), then by name."""
    added = {layer_id: index for index, layer_id in enumerate(stacking)}

    def key(layer: QgsRasterLayer) -> tuple[int, date, int, int, str]:
        found = layer_date(layer)
        if found is not None:
            return (0, found.first, 0, 0, layer.name())
        return (1, date.max, _name_hint(layer), added.get(layer.id(), len(added)), layer.name())

    return sorted(layers, key=key)
