"""The HTML report: one self-contained page, captions escaped, tiles ordered and capped."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ccexpert_core.geo.captions_layer import CAPTIONED, FAILED, SKIPPED_NODATA, StoredTile
from ccexpert_core.geo.report import MAX_CARDS, Overview, thumbnail, write_report


def stored(index: int, status: str = CAPTIONED, caption: str | None = "a house appears", change: bool = True,
           confidence: float = 0.5) -> StoredTile:
    png = thumbnail(np.full((64, 64, 3), index % 255, np.uint8))
    x = float(index * 10)
    return StoredTile(f"r0_c{index}", 0, index, caption, change, confidence, status, (x, 0.0, x + 10, 10.0), png, png)


def test_report_is_self_contained_and_escapes_captions(tmp_path: Path) -> None:
    tiles = [
        stored(0, caption="<script>alert(1)</script>"),
        stored(1, caption="there is no difference", change=False),
        stored(2, SKIPPED_NODATA, None, None, None),
        stored(3, FAILED, None, None, None),
    ]
    overview = Overview(np.zeros((20, 80, 3), np.uint8), (0.0, 0.0, 40.0, 10.0))
    page = write_report(tmp_path / "r.html", tiles, overview, {"model": "m & co"}, note="untrained").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "m &amp; co" in page
    assert not re.search(r'(src|href)="(?!data:|#)', page) and "url(" not in page
    assert page.count("<rect ") == 4 and "change: 1" in page and "skipped (nodata): 1" in page
    assert 'class="note">untrained' in page
    # Changed tiles first, then no change, failed, skipped.
    order = [page.index(f"r0_c{i} ·") for i in (0, 1, 3, 2)]
    assert order == sorted(order)


def test_report_caps_the_cards_but_draws_every_tile(tmp_path: Path) -> None:
    tiles = [stored(i) for i in range(MAX_CARDS + 5)]
    overview = Overview(np.zeros((10, 10, 3), np.uint8), (0.0, 0.0, 10.0 * len(tiles), 10.0))
    page = write_report(tmp_path / "r.html", tiles, overview, {}).read_text()
    assert page.count('class="card"') == MAX_CARDS and "5 more tiles are in the GeoPackage" in page
    assert page.count("<rect ") == len(tiles)


def test_overview_tiles_link_to_their_cards_and_thumbnails_stay_light(tmp_path: Path) -> None:
    from ccexpert_core.geo.synthetic import synthetic_pair

    before, after = synthetic_pair(384, seed=3)
    tiles = [StoredTile(f"r0_c{i}", 0, i, "a house appears", True, 0.5, CAPTIONED, (i * 10.0, 0.0, i * 10 + 10.0, 10.0),
                        thumbnail(before), thumbnail(after)) for i in range(20)]
    overview = Overview(np.zeros((10, 200, 3), np.uint8), (0.0, 0.0, 200.0, 10.0))
    page = write_report(tmp_path / "r.html", tiles, overview, {}).read_text()
    assert all(f'href="#tile-r0_c{i}"' in page and f'id="tile-r0_c{i}"' in page for i in range(20))
    card = page[page.index('id="tile-r0_c0"'):page.index('id="tile-r0_c1"')]
    assert len(card.encode()) <= 20_000


def test_a_series_tile_shows_its_dates_in_a_row_with_the_captions_between(tmp_path: Path) -> None:
    pictures = [thumbnail(np.full((64, 64, 3), value, np.uint8)) for value in (10, 120, 240)]
    dates = ("2016", "2018", "2021")
    features = [
        StoredTile("r0_c0", 0, 0, caption, changed, 0.5, CAPTIONED, (0.0, 0.0, 10.0, 10.0), pictures[k],
                   pictures[k + 1], interval=k, date_before=dates[k], date_after=dates[k + 1])
        for k, (caption, changed) in enumerate((("two houses built", True), ("there is no difference", False)))
    ]
    page = write_report(tmp_path / "r.html", features, None, {}).read_text()
    assert page.count('class="card"') == 1 and page.count("<img ") == 3
    row = page[page.index('class="series"'):]
    order = [row.index(text) for text in ("2016→2018", "two houses built", "2018→2021", "there is no difference")]
    assert order == sorted(order) and "1 of 2 intervals changed" in page
