"""A date given as a STAC Item: the raster is one of its assets, the date the item's own (pystac reads the item).

A STAC Item (a JSON file or URL, as catalogues such as NAIP's or open disaster data's publish them) describes one
acquisition: when (``datetime``, or a ``start_datetime``/``end_datetime`` span) and its files (assets, with roles).
The asset read is the one asked for by name or role (``--stac-asset``), else the item's ``visual`` one (by name or
role), else its ``rgb`` one, else its only raster; its ``href`` (relative ones resolved against the item) is where
the raster is, so it is read as any other date, locally or over the network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import pystac

from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo.dates import DateLabel
from ccexpert_core.geo.sources import RasterLocation

#: Names (or roles) of the asset read by default, in order: the item's true-colour picture.
DEFAULT_ASSETS = ("visual", "rgb")
#: Media types of assets that are rasters GDAL reads (COGs, GeoTIFFs, JPEG 2000).
RASTER_MEDIA_TYPES = ("image/tiff", "image/vnd.stac.geotiff", "application/x-geotiff", "image/jp2")
#: Roles of assets that are pictures of the item, not its data.
NOT_DATA_ROLES = {"thumbnail", "overview", "metadata"}

Log = Callable[[str], None]


@dataclass(frozen=True)
class ItemRaster:
    """What a STAC item gives a run: the raster of the chosen asset and the item's date (None where it has none
    precise enough to be a year, month or day)."""

    raster: RasterLocation
    label: DateLabel | None
    item_id: str
    asset: str


def is_item(location: RasterLocation) -> bool:
    """Whether a date given as ``location`` is a STAC item (a JSON document; no raster GDAL reads is one)."""
    return location.name.lower().endswith((".json", ".geojson"))


def item_raster(location: RasterLocation, asset: str | None = None) -> ItemRaster:
    """The chosen asset's raster and the item's date, read from the STAC item at ``location`` (a file or URL);
    :class:`CCExpertError` saying what to give where the item cannot be read or has no such asset."""
    href = location.href
    if href is None:
        raise CCExpertError(f"the STAC item {location} cannot be read from there: give its https:// URL or a file")
    try:
        item = pystac.Item.from_file(href)
    except pystac.STACTypeError as error:
        raise CCExpertError(f"{location} is not a STAC Item ({error}): give an item's JSON (one acquisition), not a "
                            "catalogue or collection") from None
    except Exception as error:  # pystac wraps a failed read in a bare Exception ("Could not read uri …")
        cause = error.__cause__ or error
        said = str(cause).replace(href, location.shown) or type(cause).__name__
        raise CCExpertError(f"the STAC item {location} cannot be read: {said}") from None
    key = _asset_key(item, asset, location)
    raster = RasterLocation.of(item.assets[key].get_absolute_href() or item.assets[key].href)
    return ItemRaster(raster, item_date(item), item.id, key)


def _asset_key(item: pystac.Item, wanted: str | None, location: RasterLocation) -> str:
    """The key of the asset to read: ``wanted`` by name, else by role; by default the item's picture."""
    assets = item.assets
    if wanted is not None:
        found = wanted if wanted in assets else next((k for k, a in assets.items() if a.has_role(wanted)), None)
        if found is None:
            raise CCExpertError(f"the STAC item {item.id} ({location}) has no asset named or with the role '{wanted}' "
                                f"(its assets: {_listed(item)})")
        return found
    for name in DEFAULT_ASSETS:
        found = next((k for k, a in assets.items() if k.lower() == name or a.has_role(name)), None)
        if found is not None:
            return found
    rasters = [key for key, value in assets.items() if _is_data_raster(value)]
    if len(rasters) == 1:
        return rasters[0]
    raise CCExpertError(
        f"the STAC item {item.id} ({location}) has no visual asset and {len(rasters)} raster assets: choose one with "
        f"--stac-asset NAME (its assets: {_listed(item)})"
    )


def _is_data_raster(asset: pystac.Asset) -> bool:
    media = (asset.media_type or "").lower()
    return media.startswith(RASTER_MEDIA_TYPES) and not NOT_DATA_ROLES & set(asset.roles or ())


def _listed(item: pystac.Item) -> str:
    return ", ".join(f"{key} ({', '.join(asset.roles or ()) or 'no role'})" for key, asset in item.assets.items())


def item_date(item: pystac.Item) -> DateLabel | None:
    """The item's date: the day of its ``datetime``, else what its ``start_datetime``..``end_datetime`` span has in
    common (the day, month or year), else None."""
    if item.datetime is not None:
        return _day(item.datetime)
    start, end = item.common_metadata.start_datetime, item.common_metadata.end_datetime
    if start is None or end is None:
        return None
    first, last = _day(start), _day(end)
    for size in (10, 7, 4):  # a day, a month, a year in common
        if first.text[:size] == last.text[:size]:
            return DateLabel.parse(first.text[:size])
    return None


def _day(moment: datetime) -> DateLabel:
    return DateLabel.parse(moment.date().isoformat())


def dated_raster(
    given: RasterLocation, label: DateLabel | None, role: str, asset: str | None, log: Log,
) -> tuple[RasterLocation, DateLabel | None]:
    """A date as a run reads it: a raster as given; a STAC item as its asset's raster, dated by the item (a label
    given for it must be the item's date, or a span that holds it)."""
    if not is_item(given):
        return given, label
    found = item_raster(given, asset)
    if label is None:
        label = found.label
    elif found.label is not None and not (label.first <= found.label.first and found.label.last <= label.last):
        raise CCExpertError(f"{role}: the STAC item {found.item_id} is dated {found.label}, not {label}: give its "
                            "date, or leave the date out to take the item's")
    dated = f", dated {label} by the item" if found.label is not None and label == found.label else ""
    log(f"{role} is the STAC item {found.item_id}'s asset '{found.asset}': {found.raster}{dated}")
    return found.raster, label


def dated_rasters(
    given: Sequence[tuple[str, RasterLocation, DateLabel | None]], asset: str | None, log: Log,
) -> list[tuple[RasterLocation, DateLabel | None]]:
    """Each given ``(option, raster, label)`` as a run reads it (:func:`dated_raster`; ``option`` names it in
    messages); ``asset`` (``--stac-asset``) is refused where no STAC item is given."""
    if asset is not None and not any(is_item(raster) for _, raster, _ in given):
        raise CCExpertError("--stac-asset goes with a STAC item given as a date (its JSON file or URL)")
    return [dated_raster(raster, label, option, asset, log) for option, raster, label in given]
