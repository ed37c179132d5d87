"""When a raster layer was taken, as far as QGIS can tell: its file's metadata (``TIFFTAG_DATETIME`` and the
others the command reads, so both tools date a raster alike), else a date in its layer or file name; and raster
layers in time order, for the dialog's defaults."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from pathlib import Path

from osgeo import gdal
from qgis.core import QgsRasterLayer

from .shared_modules import dates


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


def in_time_order(layers: Iterable[QgsRasterLayer]) -> list[QgsRasterLayer]:
    """Dated layers by date, then the others by name."""
    def key(layer: QgsRasterLayer) -> tuple[int, date, str]:
        found = layer_date(layer)
        return (0, found.first, layer.name()) if found is not None else (1, date.max, layer.name())

    return sorted(layers, key=key)
