"""The region report: one self-contained HTML page (inline CSS, base64 JPEG images, no external assets).

An overview of the region with each tile coloured by what was found (each linking to its card), where the analyst
reviewed tiles a reliability diagram (how often the captions were right against the model's confidence and against
``p_right``), then a card per tile with the before and after thumbnails — for a series, every date in a row with the
captions between —, the caption and the status (changed tiles first, most confident first).
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
from ccexpert_core.geo import calibration
from ccexpert_core.geo.captions_layer import StoredTile
from ccexpert_core.geo.gpkg import Bounds
from ccexpert_core.geo.schema import (
    ACCEPTED,
    CAPTIONED,
    CATEGORIES,
    CHANGED,
    FAILED,
    REVIEW_STATUSES,
    SKIPPED_NODATA,
    UNCHANGED,
    category,
)

THUMBNAIL_SIZE = 128
THUMBNAIL_QUALITY = 80
OVERVIEW_QUALITY = 85
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
.card:target { outline: 3px solid #2b8cbe; }
.series { display: flex; align-items: center; gap: .4em; }
.series + .small { margin-top: .3em; } .card:has(.series) { width: auto; }
.step { width: 130px; font-size: .85em; border-top: 3px solid; padding-top: .2em; }
.step .when { display: block; color: #666; }
.reliability { display: flex; gap: 1.5em; align-items: flex-start; margin: 1em 0; }
.reliability svg { width: 320px; height: 320px; background: #fff; border: 1px solid #ccc; }
.reliability table { border-collapse: collapse; font-size: .9em; }
.reliability td, .reliability th { padding: .15em .6em; text-align: right; border-bottom: 1px solid #eee; }
"""
#: The reliability diagram's two series: the model's confidence and the calibrated p_right.
_RAW_COLOUR, _CALIBRATED_COLOUR = "#969696", "#2b8cbe"
_PLOT = 300  # the diagram's square, in SVG units, inside a 10-unit margin


@dataclass(frozen=True)
class Overview:
    """A picture of the region (H×W×3 uint8) and the ``(xmin, ymin, xmax, ymax)`` it covers."""

    rgb: np.ndarray
    bounds: Bounds


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def overview_jpeg(rgb: np.ndarray) -> bytes:
    """The region's overview picture as JPEG (a photo: a tenth of a PNG's bytes)."""
    return _jpeg(Image.fromarray(rgb), OVERVIEW_QUALITY)


def thumbnail(rgb: np.ndarray, size: int = THUMBNAIL_SIZE) -> bytes:
    """A JPEG of at most ``size`` pixels a side (aspect kept), for the report's cards: a box-filter reduction; a
    few kilobytes, so that a page of a hundred tiles stays light."""
    image = Image.fromarray(rgb)
    return _jpeg(image.reduce(-(-max(image.size) // size)), THUMBNAIL_QUALITY)


def _data_uri(data: bytes) -> str:
    kind = "png" if data.startswith(b"\x89PNG") else "jpeg"  # older outputs stored PNG thumbnails
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class _TileCard:
    """A tile as the report shows it: its features (one per interval, in order) and what they add up to."""

    features: list[StoredTile]

    @property
    def tile_id(self) -> str:
        return self.features[0].tile_id

    @property
    def kind(self) -> str:
        """Changed if any interval changed, else the first feature's category."""
        kinds = [_kind(feature) for feature in self.features]
        return CHANGED if CHANGED in kinds else kinds[0]

    @property
    def confidence(self) -> float:
        return max((feature.confidence or 0.0) for feature in self.features)


def _kind(tile: StoredTile) -> str:
    return category(tile.status, tile.change_detected)


def _shown(feature: StoredTile) -> str | None:
    """The caption to show: the analyst's where the tile was corrected."""
    return feature.reviewed_caption or feature.caption


def _overview_html(cards: list[_TileCard], overview: Overview, linked: set[str]) -> str:
    xmin, ymin, xmax, ymax = overview.bounds
    # SVG's y grows downwards: draw in (x, -y) so that geo coordinates can be used as they are.
    shapes = []
    for card in cards:
        x0, y0, x1, y1 = card.features[0].bounds
        colour = _COLOURS.get(card.kind, "#000")
        said = "; ".join(_shown(f) or _LABELS.get(_kind(f), "") for f in card.features)
        shape = (
            f'<rect x="{x0}" y="{-y1}" width="{x1 - x0}" height="{y1 - y0}" fill="{colour}" fill-opacity="0.3" '
            f'stroke="{colour}" stroke-width="1.5" vector-effect="non-scaling-stroke">'
            f"<title>{html.escape(card.tile_id)}: {html.escape(said)}</title></rect>"
        )
        shapes.append(f'<a href="#tile-{html.escape(card.tile_id)}">{shape}</a>' if card.tile_id in linked else shape)
    return (
        f'<div class="overview"><img alt="overview" src="{_data_uri(overview_jpeg(overview.rgb))}">'
        f'<svg viewBox="{xmin} {-ymax} {xmax - xmin} {ymax - ymin}" preserveAspectRatio="none">'
        + "".join(shapes)
        + "</svg></div>"
    )


def _image(label: str, data: bytes | None) -> str:
    return f'<img alt="{label}" title="{label}" src="{_data_uri(data)}">' if data is not None else ""


def _interval(feature: StoredTile) -> str:
    if feature.date_before or feature.date_after:
        return f"{feature.date_before or '?'}→{feature.date_after or '?'}"
    return ""


def _card_html(card: _TileCard) -> str:
    features = card.features
    if len(features) == 1:
        feature = features[0]
        kind = _kind(feature)
        images = _image(feature.date_before or "before", feature.before_png) + _image(
            feature.date_after or "after", feature.after_png)
        said = _shown(feature)
        caption = html.escape(said) if said else f"<em>{_LABELS.get(kind, kind)}</em>"
        when = _interval(feature)
        body = f'<div class="pair">{images}</div><div class="caption">{caption}</div>'
        detail = (f"{when} · " if when else "") + _LABELS.get(kind, kind) + (
            f" · confidence {feature.confidence:.2f}" if feature.confidence is not None else "")
    else:
        # A series: the dates' thumbnails in a row, each interval's caption between its two dates.
        steps = [_image(features[0].date_before or "date 1", features[0].before_png)]
        for feature in features:
            said = _shown(feature)
            words = html.escape(said) if said else f"<em>{_LABELS.get(_kind(feature), feature.status)}</em>"
            steps.append(f'<div class="step" style="border-color: {_COLOURS.get(_kind(feature), "#000")}">'
                         f'<span class="when">{html.escape(_interval(feature))}</span>{words}</div>')
            steps.append(_image(feature.date_after or "later", feature.after_png))
        body = f'<div class="series">{"".join(steps)}</div>'
        detail = f"{sum(_kind(f) == CHANGED for f in features)} of {len(features)} intervals changed"
    return (
        f'<div class="card" id="tile-{html.escape(card.tile_id)}" '
        f'style="border-left-color: {_COLOURS.get(card.kind, "#000")}">{body}'
        f'<div class="small">{html.escape(card.tile_id)} · {detail}</div></div>'
    )


def _card_order(card: _TileCard) -> tuple[int, float, int, int]:
    rank = {CHANGED: 0, UNCHANGED: 1, FAILED: 2, SKIPPED_NODATA: 3}.get(card.kind, 4)
    first = card.features[0]
    return rank, -card.confidence, first.row, first.col


def _reviewed(tiles: Iterable[StoredTile]) -> list[calibration.Sample]:
    """The reviewed captioned tiles, as the calibration learns from them."""
    return [
        calibration.Sample(tile.confidence, bool(tile.change_detected), tile.interval, tile.review_status == ACCEPTED)
        for tile in tiles
        if tile.status == CAPTIONED and tile.confidence is not None and tile.review_status in REVIEW_STATUSES
    ]


def _series_svg(bins: list[calibration.Bin], colour: str) -> str:
    def point(value: float) -> float:
        return round(10 + value * _PLOT, 1)

    points = [(point(b.predicted), point(1 - b.right), b) for b in bins]
    line = " ".join(f"{x},{y}" for x, y, _ in points)
    dots = "".join(
        f'<circle cx="{x}" cy="{y}" r="{min(9.0, 2.5 + b.count ** 0.5):.1f}" fill="{colour}" fill-opacity="0.8">'
        f"<title>{b.count} tiles, mean {b.predicted:.2f}, right {b.right:.0%}</title></circle>"
        for x, y, b in points
    )
    return f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>{dots}'


def _reliability_html(tiles: list[StoredTile]) -> str:
    """The reliability diagram of the reviewed tiles: the share right per bin of the model's confidence and of
    p_right (each reviewed tile's p_right fitted without it: cross-validated), with the calibration errors."""
    samples = _reviewed(tiles)
    if not samples:
        return ""
    right = [sample.right for sample in samples]
    raw = [sample.confidence for sample in samples]
    series = [("the model's confidence", _RAW_COLOUR, raw)]
    if len(samples) >= calibration.MIN_REVIEWS:
        series.append(("p_right (cross-validated)", _CALIBRATED_COLOUR, list(calibration.cross_validated(samples))))
    axes = (
        f'<rect x="10" y="10" width="{_PLOT}" height="{_PLOT}" fill="none" stroke="#ccc"/>'
        f'<line x1="10" y1="{10 + _PLOT}" x2="{10 + _PLOT}" y2="10" stroke="#555" stroke-dasharray="4 4"/>'
        + "".join(f'<line x1="{10 + k * _PLOT / 10}" y1="{10 + _PLOT}" x2="{10 + k * _PLOT / 10}" '
                  f'y2="{6 + _PLOT}" stroke="#999"/>' for k in range(11))
    )
    plots = "".join(_series_svg(calibration.reliability(values, right), colour) for _, colour, values in series)
    rows = "".join(
        f'<tr><td style="text-align: left"><i style="display: inline-block; width: .8em; height: .8em; '
        f'background: {colour}"></i> {html.escape(name)}</td>'
        f"<td>{calibration.calibration_error(values, right):.3f}</td></tr>"
        for name, colour, values in series
    )
    wrong = sum(not value for value in right)
    waiting = "" if len(series) > 1 else (
        f"<p>p_right is fitted once {calibration.MIN_REVIEWS} tiles are reviewed.</p>")
    return (
        "<h2>How far to trust the captions</h2>"
        f'<div class="reliability"><svg viewBox="0 0 {_PLOT + 20} {_PLOT + 20}" role="img">'
        f"<title>reliability diagram</title>{axes}{plots}</svg><div>"
        f"<p>{len(samples)} reviewed tiles: {len(samples) - wrong} accepted (right), {wrong} corrected (wrong).</p>"
        "<p>Each dot: the reviewed tiles in a tenth of the scale (0–0.1 … 0.9–1), at their mean value (across) and "
        "the share of them that was right (up); on the dashed diagonal a value is the probability of being right. "
        "The dot's size grows with its tiles.</p>"
        f"<table><tr><th style=\"text-align: left\">series</th><th>calibration error</th></tr>{rows}</table>"
        f"{waiting}</div></div>"
    )


def write_report(
    path: Path, tiles: Iterable[StoredTile], overview: Overview | None, facts: Mapping[str, str], note: str = ""
) -> Path:
    """Write the HTML report; ``facts`` are shown as "key: value" lines under the title, ``note`` in a box. A tile
    with several intervals (a series) gets one card with its dates in a row."""
    tiles = list(tiles)
    grouped: dict[str, list[StoredTile]] = {}
    for tile in sorted(tiles, key=lambda t: t.interval):
        grouped.setdefault(tile.tile_id, []).append(tile)
    cards = sorted((_TileCard(features) for features in grouped.values()), key=_card_order)
    counts = {kind: sum(1 for c in cards if c.kind == kind) for kind in _LABELS}
    legend = "".join(
        f'<span><i style="background: {_COLOURS[kind]}"></i>{_LABELS[kind]}: {counts[kind]}</span>' for kind in _LABELS
    )
    shown, hidden = cards[:MAX_CARDS], len(cards) - MAX_CARDS
    series = any(len(card.features) > 1 for card in cards)
    reading = ("Each tile: its dates from left to right, what changed between each two." if series else
               "Each tile: BEFORE on the left, AFTER on the right; changed tiles first.")
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>CCExpert region report</title>",
        f"<style>{_CSS}</style></head><body><h1>What changed in this region</h1>",
        *(f'<p class="meta">{html.escape(k)}: {html.escape(v)}</p>' for k, v in facts.items()),
        f'<div class="note">{html.escape(note)}</div>' if note else "",
        f'<p class="legend">{legend}</p>',
        _overview_html(cards, overview, {c.tile_id for c in shown}) if overview is not None and cards else "",
        _reliability_html(tiles),
        f'<p class="meta">{reading} Click a tile on the map to see its card.</p>',
        '<div class="cards">', *(_card_html(card) for card in shown), "</div>",
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
