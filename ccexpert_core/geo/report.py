"""The region report: one self-contained HTML page (inline CSS, base64 PNG images, no external assets).

An overview of the region with each tile coloured by what was found, then a card per tile with the before and
after thumbnails, the caption and the status (changed tiles first, most confident first).
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo.captions_layer import StoredTile
from ccexpert_core.geo.gpkg import Bounds
from ccexpert_core.geo.schema import CATEGORIES, CHANGED, FAILED, SKIPPED_NODATA, UNCHANGED, category

THUMBNAIL_SIZE = 128
#: Cards shown in the page; the GeoPackage holds every tile, the page stays small enough for a browser.
MAX_CARDS = 120

#: The map's palette (the QGIS style's categories), so that the page and the layer read the same.
_COLOURS = {entry.value: entry.colour for entry in CATEGORIES}
_LABELS = {CHANGED: "change", UNCHANGED: "no change", SKIPPED_NODATA: "skipped (nodata)", FAILED: "failed"}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin-bottom: .2em; } .meta { color: #555; margin: .1em 0; }
.note { background: #fff3cd; border: 1px solid #e0c36a; padding: .5em .8em; margin: .8em 0; }
.overview { position: relative; display: inline-block; margin: 1em 0; border: 1px solid #ccc; }
.overview img, .overview svg { display: block; width: min(90vw, 900px); height: auto; }
.overview svg { position: absolute; top: 0; left: 0; height: 100%; }
.legend span { display: inline-block; margin-right: 1.2em; } .legend i { display: inline-block; width: .9em;
  height: .9em; margin-right: .3em; vertical-align: middle; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; }
.card { background: #fff; border: 1px solid #ddd; border-left: 6px solid; padding: .5em; width: 280px; }
.card img { width: 134px; height: 134px; image-rendering: pixelated; }
.card .caption { margin: .3em 0; } .card .small { color: #666; font-size: .85em; }
"""


@dataclass(frozen=True)
class Overview:
    """A picture of the region (H×W×3 uint8) and the ``(xmin, ymin, xmax, ymax)`` it covers."""

    rgb: np.ndarray
    bounds: Bounds


def png_bytes(rgb: np.ndarray) -> bytes:
    """H×W×3 uint8 → PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def png_thumbnail(rgb: np.ndarray, size: int = THUMBNAIL_SIZE) -> bytes:
    """A PNG of at most ``size`` pixels a side (aspect kept), made for every tile: a box-filter reduction and light
    compression take a quarter of the time of Pillow's defaults."""
    image = Image.fromarray(rgb)
    image = image.reduce(-(-max(image.size) // size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _kind(tile: StoredTile) -> str:
    return category(tile.status, tile.change_detected)


def _overview_html(tiles: list[StoredTile], overview: Overview) -> str:
    xmin, ymin, xmax, ymax = overview.bounds
    # SVG's y grows downwards: draw in (x, -y) so that geo coordinates can be used as they are.
    shapes = []
    for tile in tiles:
        x0, y0, x1, y1 = tile.bounds
        colour = _COLOURS.get(_kind(tile), "#000")
        shapes.append(
            f'<rect x="{x0}" y="{-y1}" width="{x1 - x0}" height="{y1 - y0}" fill="{colour}" fill-opacity="0.3" '
            f'stroke="{colour}" stroke-width="1.5" vector-effect="non-scaling-stroke">'
            f"<title>{html.escape(tile.tile_id)}: {html.escape(tile.caption or _LABELS.get(_kind(tile), ''))}"
            "</title></rect>"
        )
    return (
        f'<div class="overview"><img alt="BEFORE overview" src="{_data_uri(png_bytes(overview.rgb))}">'
        f'<svg viewBox="{xmin} {-ymax} {xmax - xmin} {ymax - ymin}" preserveAspectRatio="none">'
        + "".join(shapes)
        + "</svg></div>"
    )


def _card_html(tile: StoredTile) -> str:
    kind = _kind(tile)
    images = "".join(
        f'<img alt="{label}" title="{label}" src="{_data_uri(png)}">'
        for label, png in (("before", tile.before_png), ("after", tile.after_png))
        if png is not None
    )
    caption = html.escape(tile.caption) if tile.caption else f"<em>{_LABELS.get(kind, kind)}</em>"
    detail = _LABELS.get(kind, kind) + (f" · confidence {tile.confidence:.2f}" if tile.confidence is not None else "")
    return (
        f'<div class="card" style="border-left-color: {_COLOURS.get(kind, "#000")}">{images}'
        f'<div class="caption">{caption}</div>'
        f'<div class="small">{html.escape(tile.tile_id)} · {detail}</div></div>'
    )


def _card_order(tile: StoredTile) -> tuple[int, float, int, int]:
    rank = {CHANGED: 0, UNCHANGED: 1, FAILED: 2, SKIPPED_NODATA: 3}.get(_kind(tile), 4)
    return rank, -(tile.confidence or 0.0), tile.row, tile.col


def write_report(
    path: Path, tiles: Iterable[StoredTile], overview: Overview | None, facts: Mapping[str, str], note: str = ""
) -> Path:
    """Write the HTML report; ``facts`` are shown as "key: value" lines under the title, ``note`` in a box."""
    tiles = list(tiles)
    counts = {kind: sum(1 for t in tiles if _kind(t) == kind) for kind in _LABELS}
    legend = "".join(
        f'<span><i style="background: {_COLOURS[kind]}"></i>{_LABELS[kind]}: {counts[kind]}</span>' for kind in _LABELS
    )
    cards = sorted(tiles, key=_card_order)
    hidden = len(cards) - MAX_CARDS
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>CCExpert region report</title>",
        f"<style>{_CSS}</style></head><body><h1>What changed in this region</h1>",
        *(f'<p class="meta">{html.escape(k)}: {html.escape(v)}</p>' for k, v in facts.items()),
        f'<div class="note">{html.escape(note)}</div>' if note else "",
        f'<p class="legend">{legend}</p>',
        _overview_html(tiles, overview) if overview is not None and tiles else "",
        '<p class="meta">Each tile: BEFORE on the left, AFTER on the right; changed tiles first.</p>',
        '<div class="cards">', *(_card_html(t) for t in cards[:MAX_CARDS]), "</div>",
        f"<p class=\"meta\">{hidden} more tiles are in the GeoPackage.</p>" if hidden > 0 else "",
        "</body></html>",
    ]
    path = Path(path)
    # Written beside the target, then renamed over it: a failed write never leaves half a page or a lost file.
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text("\n".join(parts), encoding="utf-8")
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise CCExpertError(f"cannot write the report {path}: {error}") from None
    return path
