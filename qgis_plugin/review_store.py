"""A captions layer as the review panel reads and writes it: its features in review order (by p_right too) or as
search hits, the run's stored options and dates, a tile's change polygons, and the analyst's review written back.

Reading goes through the QGIS layer (so a filter the analyst set on it holds) and OGR (the tables QGIS does not
show as fields). A review is written with OGR as one ``UPDATE`` of the schema's review fields of one feature, on a
connection of its own that is closed at once: a run writing the same file (the plugin's task, ``caption-region``)
waits a moment at most, and the run's own fields are never touched, as the run never touches the review's.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from osgeo import gdal, ogr
from qgis.core import QgsFeature, QgsProviderRegistry, QgsRectangle, QgsVectorLayer
from qgis.PyQt.QtCore import QDate, QDateTime, Qt, QVariant

from .captions_gpkg import companion_layer
from .errors import CaptionRunError
from .shared_modules import calibration, run_contract, schema, search
from .shared_modules import grid as tiling

#: What "No change" saves as the analyst's caption: the first of LEVIR-CC's no-change sentences, which the
#: project's no-change rule (and so ``export-dataset``'s change flag) recognises.
NO_CHANGE_CAPTION = "there is no difference"


class Order(enum.Enum):
    """The order the panel steps through a layer's tiles in."""

    #: By p_right, the least likely right first (by confidence while the layer has too few reviews for p_right).
    MOST_UNCERTAIN = "Most uncertain first"
    LOWEST_CONFIDENCE = "Lowest confidence first"
    CHANGED_FIRST = "Changed first"
    TILE_ID = "By tile id"
    #: A fixed shuffle: reviews in this order are a fair sample of the layer, which p_right learns best from (the
    #: lowest-confidence tiles alone tell it little of the others: bench/RESULTS.md).
    RANDOM = "Random (a fair sample for p_right)"


class Verdict(enum.Enum):
    """What the analyst says of a tile's caption."""

    ACCEPT = "accept"
    EDIT = "edit"
    NO_CHANGE = "no change"


@dataclass(frozen=True)
class CaptionsFile:
    """Where a captions layer lives: its GeoPackage and table."""

    path: str
    layer_name: str

    @classmethod
    def of(cls, layer: QgsVectorLayer) -> CaptionsFile | None:
        """The GeoPackage table behind a QGIS layer; None for a layer that is not a CCExpert captions layer in a
        GeoPackage."""
        if layer.providerType() != "ogr" or not is_captions_fields(layer.fields().names()):
            return None
        registry = QgsProviderRegistry.instance()
        assert registry is not None  # QGIS makes it at start
        parts = registry.decodeUri("ogr", layer.source())
        path = str(parts.get("path") or "")
        if not path.lower().endswith(".gpkg"):
            return None
        name = str(parts.get("layerName") or "")
        if not name:  # a file opened without a layer name shows its first table
            dataset = gdal.OpenEx(path, gdal.OF_VECTOR | gdal.OF_READONLY)
            if dataset is None or dataset.GetLayerCount() == 0:
                return None
            name = dataset.GetLayer(0).GetName()
        return cls(path, name)

    @property
    def options_table(self) -> str:
        """The table of the run's options (one per layer name)."""
        return schema.options_table(self.layer_name)

    @property
    def changes_layer(self) -> str:
        """The layer of change polygons that goes with this one (written for models with a change map), named as
        both writers name it."""
        return companion_layer(self.layer_name, schema.CHANGES_LAYER)


def is_captions_fields(names: Sequence[str]) -> bool:
    """Whether a table with these fields is a CCExpert captions layer."""
    return schema.missing_required(names) is None


@dataclass(frozen=True)
class ReviewItem:
    """One feature of a captions layer (a tile and an interval), as the panel shows and reviews it."""

    fid: int
    tile_id: str
    interval: int
    row: int
    col: int
    caption: str | None
    change_detected: bool | None
    confidence: float | None
    status: str
    change_kind: str | None
    date_before: str | None
    date_after: str | None
    before_source: str | None
    after_source: str | None
    review_status: str | None
    reviewed_caption: str | None
    reviewed_at: str | None
    #: The tile's footprint, in the layer's CRS.
    extent: QgsRectangle
    #: How likely the caption is right, fitted on the layer's reviews (None before enough reviews).
    p_right: float | None = None

    @property
    def changed(self) -> bool:
        """Captioned, and the caption says something changed."""
        return self.status == schema.CAPTIONED and bool(self.change_detected)

    @property
    def shown_caption(self) -> str | None:
        """The analyst's caption where there is one, else the model's (what the map labels show)."""
        return self.reviewed_caption or self.caption


def _plain(value: object) -> object:
    """A feature's attribute as plain Python: None for NULL, ISO 8601 text for dates."""
    if value is None or (isinstance(value, QVariant) and value.isNull()):
        return None
    if isinstance(value, QDateTime):
        return value.toString(Qt.DateFormat.ISODateWithMs) if value.isValid() else None
    if isinstance(value, QDate):
        return value.toString(Qt.DateFormat.ISODate) if value.isValid() else None
    return value


def _item(feature: QgsFeature, names: set[str]) -> ReviewItem:
    def get(name: str) -> object:
        return _plain(feature[name]) if name in names else None

    def text(name: str) -> str | None:
        value = get(name)
        return None if value is None else str(value)

    def number(name: str, default: int = 0) -> int:
        value = get(name)
        return default if value is None else int(value)  # type: ignore[call-overload]  # an integer field

    changed, confidence = get("change_detected"), get("confidence")
    return ReviewItem(
        fid=feature.id(), tile_id=str(text("tile_id")), interval=number("interval"), row=number("row"),
        col=number("col"), caption=text("caption"), change_detected=None if changed is None else bool(changed),
        confidence=None if confidence is None else float(confidence),  # type: ignore[arg-type]  # a real field
        status=str(text("status")), change_kind=text("change_kind"), date_before=text("date_before"),
        date_after=text("date_after"), before_source=text("before_source"), after_source=text("after_source"),
        review_status=text("review_status"), reviewed_caption=text("reviewed_caption"),
        reviewed_at=text("reviewed_at"), extent=feature.geometry().boundingBox(),
        p_right=None if get("p_right") is None else float(get("p_right")),  # type: ignore[arg-type]  # a real field
    )


def read_items(layer: QgsVectorLayer) -> list[ReviewItem]:
    """The layer's features (those its filter lets through), in no particular order."""
    names = set(layer.fields().names())
    return [_item(feature, names) for feature in layer.getFeatures()]


def ordered(items: Sequence[ReviewItem], order: Order, unreviewed_only: bool = False) -> list[ReviewItem]:
    """``items`` in ``order``; ties (and the tile id order) by row, column and interval. Lowest confidence puts the
    tiles without one (skipped, failed) last; changed first puts the doubtful changed tiles first; most uncertain
    goes by p_right where the layer has one, else as lowest confidence does; random is a fixed shuffle."""
    kept = [item for item in items if not (unreviewed_only and item.review_status)]

    def place(item: ReviewItem) -> tuple[int, int, int]:
        return item.row, item.col, item.interval

    def doubt(item: ReviewItem) -> tuple[bool, float]:
        return item.confidence is None, item.confidence or 0.0

    def uncertainty(item: ReviewItem) -> tuple[bool, float]:
        return item.p_right is None, item.p_right or 0.0

    if order is Order.MOST_UNCERTAIN and any(item.p_right is not None for item in kept):
        return sorted(kept, key=lambda item: (*uncertainty(item), *doubt(item), *place(item)))
    if order in (Order.LOWEST_CONFIDENCE, Order.MOST_UNCERTAIN):
        return sorted(kept, key=lambda item: (*doubt(item), *place(item)))
    if order is Order.RANDOM:  # the same shuffle every time, so that the analyst can stop and come back
        return sorted(kept, key=lambda item: (zlib.crc32(f"{item.tile_id}/{item.interval}".encode()), *place(item)))
    if order is Order.CHANGED_FIRST:
        return sorted(kept, key=lambda item: (not item.changed, *doubt(item), *place(item)))
    return sorted(kept, key=place)


def search_entry(item: ReviewItem) -> search.Entry:
    """An item as the bundled search ranks it."""
    return search.Entry(
        item.fid, item.tile_id, item.row, item.col, item.interval, item.status, item.caption, item.change_detected,
        item.change_kind, item.confidence, item.date_before, item.date_after, item.review_status,
        item.reviewed_caption, item.p_right,
    )


def found(items: Sequence[ReviewItem], query: str, unreviewed_only: bool = False) -> list[ReviewItem]:
    """The items that match a query in words, best first; a bad query raises ``ValueError`` saying why."""
    by_fid = {item.fid: item for item in items if not (unreviewed_only and item.review_status)}
    hits = search.SearchIndex([search_entry(item) for item in by_fid.values()]).search(query)
    return [by_fid[hit.entry.fid] for hit in hits]


def with_p_right(items: Sequence[ReviewItem], fitted: calibration.Calibration | None) -> list[ReviewItem]:
    """The items with the p_right the file now holds (what the calibration's SQL wrote)."""
    def value(item: ReviewItem) -> float | None:
        if fitted is None or item.status != schema.CAPTIONED:
            return None
        return fitted.p_right(item.confidence, item.change_detected, item.interval)

    return [replace(item, p_right=value(item)) for item in items]


def trust_note(items: Sequence[ReviewItem]) -> str:
    """What p_right says of the tiles nobody reviewed, or how many reviews it waits for."""
    reviewed = sum(1 for item in items if item.review_status in schema.REVIEW_STATUSES
                   and item.status == schema.CAPTIONED and item.confidence is not None)
    waiting = [item for item in items if item.changed and not item.review_status]
    known = [item.p_right for item in waiting if item.p_right is not None]
    if not known:
        return (f"p_right (how likely a caption is right) comes once {calibration.MIN_REVIEWS} tiles are reviewed: "
                f"{reviewed} so far.")
    return (f"Of the {len(waiting)} unreviewed changed tiles, about {round(calibration.expected_wrong(known))} are "
            f"likely wrong (p_right from {reviewed} reviews).")


def review_of(item: ReviewItem, verdict: Verdict, text: str = "") -> tuple[str, str | None]:
    """``(review_status, reviewed_caption)`` for a verdict: accepting keeps the model's caption (no caption of the
    analyst's); an edit is a correction unless its text is the model's caption; "no change" accepts a model that
    said no change and corrects one that said otherwise, with :data:`NO_CHANGE_CAPTION`."""
    if verdict is Verdict.ACCEPT:
        if not item.caption:
            raise CaptionRunError(f"tile {item.tile_id} has no caption to accept ({item.status}): edit it instead")
        return schema.ACCEPTED, None
    if verdict is Verdict.NO_CHANGE:
        if item.status == schema.CAPTIONED and item.change_detected is False:
            return schema.ACCEPTED, None
        return schema.CORRECTED, NO_CHANGE_CAPTION
    caption = " ".join(text.split())
    if not caption:
        raise CaptionRunError("type the caption the tile should have (or press Accept or No change)")
    if caption == " ".join((item.caption or "").split()):
        return schema.ACCEPTED, None
    return schema.CORRECTED, caption


def _literal(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def now() -> str:
    """Now, in UTC, in the GeoPackage's DATETIME format (as both writers write ``created_at``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def save_review(file: CaptionsFile, item: ReviewItem, status: str, caption: str | None) -> ReviewItem:
    """Write a review into the feature's review fields (the model's caption stays as it is); returns the item as
    reviewed. Raises :class:`CaptionRunError` with what went wrong."""
    if status not in schema.REVIEW_STATUSES:
        raise ValueError(f"a review is one of {schema.REVIEW_STATUSES}, not {status}")
    reviewed_at = now()
    values = {"review_status": status, "reviewed_caption": caption, "reviewed_at": reviewed_at}
    where = f"fid = {int(item.fid)} AND tile_id = {_literal(item.tile_id)}"
    dataset = gdal.OpenEx(file.path, gdal.OF_VECTOR | gdal.OF_UPDATE, allowed_drivers=["GPKG"])
    if dataset is None:
        raise CaptionRunError(f"cannot save the review: {file.path} cannot be opened for writing "
                              f"({gdal.GetLastErrorMsg() or 'read-only?'})")
    try:
        gdal.ErrorReset()
        # One statement, its own transaction: the lock a run may be holding is waited for (GDAL's busy handler).
        # Bandit's B608 is marked below: the names are the schema's, quoted; the values go through _literal.
        dataset.ExecuteSQL(
            f"UPDATE {schema.quote(file.layer_name)} SET "  # nosec B608
            + ", ".join(f"{schema.quote(name)} = {_literal(value)}" for name, value in values.items())
            + f" WHERE {where}"
        )
        if gdal.GetLastErrorType() >= gdal.CE_Failure:
            raise CaptionRunError(f"cannot save the review of tile {item.tile_id} to {file.path}: "
                                  f"{gdal.GetLastErrorMsg()}")
        written = dataset.ExecuteSQL(
            f"SELECT review_status, reviewed_at FROM {schema.quote(file.layer_name)} WHERE {where}"  # nosec B608
        )
        row = written.GetNextFeature() if written is not None else None
        found = None if row is None else (row.GetField(0), row.GetField(1))
        if written is not None:
            dataset.ReleaseResultSet(written)
    finally:
        dataset = None
    if found is None or found[0] != status:
        raise CaptionRunError(f"cannot save the review of tile {item.tile_id}: {file.path} no longer holds that "
                              "feature (reload the layer)")
    return replace(item, review_status=status, reviewed_caption=caption, reviewed_at=reviewed_at)


def read_options(file: CaptionsFile) -> dict[str, str]:
    """The run's options stored beside the layer; empty where the file has none."""
    dataset = gdal.OpenEx(file.path, gdal.OF_VECTOR | gdal.OF_READONLY, allowed_drivers=["GPKG"])
    table = None if dataset is None else dataset.GetLayerByName(file.options_table)
    if table is None:
        return {}
    names = {table.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(table.GetLayerDefn().GetFieldCount())}
    if not {"key", "value"} <= names:
        return {}
    return {str(feature.GetField("key")): str(feature.GetField("value") or "") for feature in table}


def has_changes(file: CaptionsFile) -> bool:
    """Whether the file holds the change polygons of this layer."""
    dataset = gdal.OpenEx(file.path, gdal.OF_VECTOR | gdal.OF_READONLY, allowed_drivers=["GPKG"])
    return dataset is not None and dataset.GetLayerByName(file.changes_layer) is not None


def tile_changes(file: CaptionsFile, tile_id: str, interval: int) -> list[tiling.Polygon]:
    """The changed places of one tile and interval, as polygons (rings of (x, y), exterior first) in the layer's
    CRS; none where the model gave no change map or found nothing."""
    dataset = gdal.OpenEx(file.path, gdal.OF_VECTOR | gdal.OF_READONLY, allowed_drivers=["GPKG"])
    layer = None if dataset is None else dataset.GetLayerByName(file.changes_layer)
    if layer is None:
        return []
    names = {layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(layer.GetLayerDefn().GetFieldCount())}
    where = f"tile_id = {_literal(tile_id)}" + (f' AND "interval" = {int(interval)}' if "interval" in names else "")
    layer.SetAttributeFilter(where)
    polygons: list[tiling.Polygon] = []
    for feature in layer:
        geometry = feature.GetGeometryRef()
        if geometry is None:
            continue
        parts = [geometry] if geometry.GetGeometryType() in (ogr.wkbPolygon, ogr.wkbPolygon25D) else [
            geometry.GetGeometryRef(k) for k in range(geometry.GetGeometryCount())
        ]
        for part in parts:
            rings = [part.GetGeometryRef(k).GetPoints() or [] for k in range(part.GetGeometryCount())]
            polygons.append([[(x, y) for x, y, *_ in ring] for ring in rings])
    return polygons


def run_of(options: Mapping[str, str]) -> run_contract.StoredRun | None:
    """The run a layer's stored options describe (its dates, intervals, grid and mapping), None where it cannot be
    read (the panel says what is missing)."""
    try:
        return run_contract.read_stored(options)
    except run_contract.RunRefused:
        return None


def interval_dates(run: run_contract.StoredRun, item: ReviewItem) -> tuple[int, int]:
    """The dates an item's interval compares; raises :class:`CaptionRunError` for an interval the run lacks."""
    if not 0 <= item.interval < len(run.intervals):
        raise CaptionRunError(f"tile {item.tile_id}: interval {item.interval} is not one of the run's "
                              f"{len(run.intervals)}")
    return run.intervals[item.interval]
