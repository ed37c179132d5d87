"""ccexpert search and ccexpert calibrate on GeoPackages the command's writer made: hits as a table and as JSON,
p_right written once enough tiles are reviewed (monotone in confidence, refit when a review changes, cleared when
too few are left, kept by a resumed run), nothing written without reviews, an older file migrated, the report's
reliability diagram, and bad input one line, exit 2."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from rasterio.crs import CRS as RasterioCRS

import ccexpert_cli as cli
from ccexpert_core.captions import CaptionResult
from ccexpert_core.geo import schema
from ccexpert_core.geo.calibration import MIN_REVIEWS
from ccexpert_core.geo.captions_layer import CaptionsLayer, TileRecord
from ccexpert_core.geo.gpkg import GeoPackage, SpatialRef
from ccexpert_core.geo.grid import Tile

CAPTIONS = ("two buildings have been built at the top left", "a road has been built at the bottom",
            "the trees at the left have been cleared", "the house at the center has been demolished")
NO_CHANGE = "there is no difference"
SIDE = 6  # tiles a side: 36 tiles a layer


def write_layer(path: Path, intervals: tuple[tuple[str, str], ...] = (("2018", "2021"),)) -> Path:
    """A captions layer of SIDE × SIDE tiles per interval: confidences spread over 0.3–0.99, most tiles changed
    (one caption of CAPTIONS each), every sixth unchanged, the last tile skipped (no data)."""
    srs = SpatialRef("WGS 84 / UTM zone 31N", 32631, "EPSG", 32631, RasterioCRS.from_epsg(32631).to_wkt())
    records = []
    for interval, (before, after) in enumerate(intervals):
        for k in range(SIDE * SIDE):
            tile = Tile(k // SIDE, k % SIDE, (k % SIDE) * 8, (k // SIDE) * 8, 8, 8)
            x, y = tile.x, -tile.y
            ring = [(x, y), (x + 8, y), (x + 8, y - 8), (x, y - 8), (x, y)]
            if k == SIDE * SIDE - 1:
                records.append(TileRecord(tile, ring, schema.SKIPPED_NODATA, interval=interval, date_before=before,
                                          date_after=after))
                continue
            caption = NO_CHANGE if k % 6 == 5 else CAPTIONS[k % 4]
            result = CaptionResult.from_caption(caption, 0.3 + 0.69 * ((k * 7) % 36) / 35)
            records.append(TileRecord(tile, ring, schema.CAPTIONED, result.caption, result.change_detected,
                                      result.confidence, interval=interval, date_before=before, date_after=after,
                                      change_kind=result.change_kind))
    with CaptionsLayer(path, srs, {"tile_size": "8"}, "b.tif", "a.tif", "test-model") as writer:
        writer.write(records)
    return path


def review(path: Path, count: int, wrong_below: float = 0.6, interval: int = 0) -> None:
    """The analyst's verdicts on the first ``count`` captioned tiles of ``interval`` by row and column: corrected
    where the confidence is below ``wrong_below``, accepted otherwise (as the review dock writes them)."""
    package = GeoPackage(path)
    with package.connection as connection:
        rows = connection.execute('SELECT fid, confidence FROM captions WHERE status = ? AND "interval" = ? '
                                  'ORDER BY "row", "col" LIMIT ?', (schema.CAPTIONED, interval, count)).fetchall()
        for fid, confidence in rows:
            wrong = confidence < wrong_below
            connection.execute("UPDATE captions SET review_status = ?, reviewed_caption = ?, reviewed_at = "
                               "CURRENT_TIMESTAMP WHERE fid = ?",
                               (schema.CORRECTED if wrong else schema.ACCEPTED, NO_CHANGE if wrong else None, fid))
    package.close()


def update(path: Path, statement: str, *values: object) -> None:
    """One statement on the file through a connection with the spatial functions the layer's R-tree triggers call
    (GDAL's and QGIS's have them)."""
    package = GeoPackage(path)
    with package.connection as connection:
        connection.execute(statement, values)
    package.close()


def p_rights(path: Path) -> dict[int, tuple]:
    """fid → (interval, status, change_detected, confidence, p_right)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        return {row[0]: row[1:] for row in connection.execute(
            'SELECT fid, "interval", status, change_detected, confidence, p_right FROM captions')}


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_search_prints_hits_as_a_table_and_as_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_layer(tmp_path / "c.gpkg")
    code, out, err = run(capsys, "search", path, "demolished houses")
    assert code == 0 and not err
    lines = out.splitlines()
    assert lines[0].split() == ["#", "tile", "dates", "kind", "conf", "p_right", "review", "caption"]
    demolished = [k for k in range(SIDE * SIDE - 1) if k % 4 == 3 and k % 6 != 5]
    assert len(lines) == 1 + len(demolished) and all("demolished" in line and "2018→2021" in line
                                                     for line in lines[1:])
    code, out, _ = run(capsys, "search", path, "houses 2021", "--format", "json", "--limit", "0")
    found = json.loads(out)
    assert code == 0 and found["query"] == "houses 2021" and found["layer"] == "captions"
    houses = [k for k in range(SIDE * SIDE - 1) if k % 4 in (0, 3) and k % 6 != 5]
    assert {hit["change_kind"] for hit in found["hits"]} == {"buildings", "demolition"}
    assert len(found["hits"]) == len(houses)
    assert set(found["hits"][0]) == {"tile_id", "interval", "date_before", "date_after", "caption", "changed",
                                     "change_kind", "confidence", "p_right", "review_status", "score"}
    code, out, _ = run(capsys, "search", path, "roads 2016")
    assert code == 0 and out.strip() == f"no tile of {path} matches 'roads 2016'"
    code, out, _ = run(capsys, "search", path, "unchanged", "--format", "json", "--limit", "3")
    assert [hit["caption"] for hit in json.loads(out)["hits"]] == [NO_CHANGE] * 3


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_layer(tmp_path / "c.gpkg")
    text = tmp_path / "notes.gpkg"
    text.write_text("not a database at all, but long enough to look like one " * 20)
    cases = [
        (("search", tmp_path / "missing.gpkg", "houses"), "does not exist"),
        (("search", text, "houses"), "is not a GeoPackage"),
        (("search", path, "houses", "--layer", "roads"), "has no layer 'roads' (its captions layers: captions)"),
        (("search", path, "houses", "--layer", schema.OPTIONS_TABLE), "is not a CCExpert captions layer"),
        (("search", path, "2021-13"), "'2021-13' is not a date"),
        (("search", path, "2021..2016"), "ends before it starts"),
        (("search", path, "the"), "nothing to search for"),
        (("search", path, "houses", "--limit", "-1"), "--limit must be 0 (all) or more"),
        (("search", path, "houses", "--format", "xml"), "invalid choice"),
        (("calibrate", tmp_path / "missing.gpkg"), "does not exist"),
        (("calibrate", path, "--layer", "roads"), "has no layer 'roads'"),
        (("calibrate", path, "--layer", "other", "--report", tmp_path / "r.html"), "--report reads the 'captions'"),
        (("calibrate", path, "--report", path), "is the GeoPackage itself"),
    ]
    before = path.read_bytes()
    for args, says in cases:
        code, out, err = run(capsys, *args)
        assert code == 2 and not out and says in err and err.count("\n") == 1, (args, err)
        assert "Traceback" not in err
    assert path.read_bytes() == before


def test_nothing_is_written_without_enough_reviews(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_layer(tmp_path / "c.gpkg")
    before = path.read_bytes()
    code, out, _ = run(capsys, "calibrate", path)
    assert code == 0 and out.strip() == f"0 reviewed tiles (0 corrected): p_right needs {MIN_REVIEWS}; nothing written"
    assert path.read_bytes() == before
    review(path, MIN_REVIEWS - 1)
    reviewed = path.read_bytes()
    code, out, _ = run(capsys, "calibrate", path)
    assert code == 0 and out.startswith(f"{MIN_REVIEWS - 1} reviewed tiles") and "nothing written" in out
    assert path.read_bytes() == reviewed
    assert all(row[-1] is None for row in p_rights(path).values())


def test_p_right_appears_with_enough_reviews_monotone_and_refit_when_a_review_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = write_layer(tmp_path / "c.gpkg")
    review(path, MIN_REVIEWS)
    code, out, _ = run(capsys, "calibrate", path)
    assert code == 0 and out.startswith(f"p_right written for {SIDE * SIDE - 1} tiles from {MIN_REVIEWS} reviewed")
    assert "interval 0 2018→2021" in out and "likely wrong" in out
    first = p_rights(path)
    for _, status, _, _, p_right in first.values():
        assert (p_right is None) == (status != schema.CAPTIONED)
    for flag in (0, 1):
        values = sorted((row[3], row[4]) for row in first.values() if row[1] == schema.CAPTIONED and row[2] == flag)
        assert all(b[1] >= a[1] - 1e-12 for a, b in zip(values, values[1:]))  # monotone in confidence
        assert values[-1][1] > values[0][1]
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT \"interval\", date_before, date_after, reviews, wrong, layer_reviews, slope "
                                  "FROM ccexpert_calibration").fetchall()
        registered = connection.execute("SELECT data_type FROM gpkg_contents WHERE table_name = ?",
                                        (schema.CALIBRATION_TABLE,)).fetchone()
    assert registered == ("attributes",) and rows[0][:4] == (0, "2018", "2021", MIN_REVIEWS)
    assert rows[0][5] == MIN_REVIEWS and rows[0][6] >= 0

    # A review changes (the analyst corrects a tile accepted before): the fit follows.
    update(path, "UPDATE captions SET review_status = ? WHERE fid = (SELECT min(fid) FROM captions WHERE "
           "review_status = ?)", schema.CORRECTED, schema.ACCEPTED)
    run(capsys, "calibrate", path)
    second = p_rights(path)
    assert any(abs(second[k][4] - first[k][4]) > 1e-3 for k in first if first[k][4] is not None)

    # A resumed run writes a tile again: its review and p_right stay.
    srs = SpatialRef("WGS 84 / UTM zone 31N", 32631, "EPSG", 32631, RasterioCRS.from_epsg(32631).to_wkt())
    tile = Tile(0, 0, 0, 0, 8, 8)
    with CaptionsLayer(path, srs, {"tile_size": "8"}, "b.tif", "a.tif", "test-model") as writer:
        result = CaptionResult.from_caption(CAPTIONS[0], 0.5)
        writer.write([TileRecord(tile, [(0, 0), (8, 0), (8, -8), (0, -8), (0, 0)], schema.CAPTIONED, result.caption,
                                 result.change_detected, result.confidence, date_before="2018", date_after="2021")])
    assert p_rights(path) == {k: v if k != 1 else (*v[:3], 0.5, v[4]) for k, v in second.items()}

    # Too few reviews left: the fit is cleared, the table emptied.
    update(path, "UPDATE captions SET review_status = NULL WHERE fid IN (SELECT fid FROM captions WHERE "
           "review_status IS NOT NULL LIMIT 2)")
    code, out, _ = run(capsys, "calibrate", path)
    assert code == 0 and "the earlier p_right is cleared" in out
    assert all(row[-1] is None for row in p_rights(path).values())
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM ccexpert_calibration").fetchone() == (0,)


def test_each_interval_of_a_series_has_its_map(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_layer(tmp_path / "s.gpkg", (("2016", "2018"), ("2018", "2021")))
    review(path, 12, wrong_below=0.2, interval=0)  # the first interval's captions are right
    review(path, 12, wrong_below=0.95, interval=1)  # the second's nearly all wrong
    code, out, _ = run(capsys, "calibrate", path)
    assert code == 0 and "interval 0 2016→2018: 12 reviews" in out and "interval 1 2018→2021: 12 reviews" in out
    rows = p_rights(path)
    first = {row[3]: row[4] for row in rows.values() if row[0] == 0 and row[2] == 1 and row[4] is not None}
    second = {row[3]: row[4] for row in rows.values() if row[0] == 1 and row[2] == 1 and row[4] is not None}
    assert all(first[c] > second[c] for c in first)
    code, out, _ = run(capsys, "search", path, "roads", "--format", "json")
    hits = json.loads(out)["hits"]
    assert all(hit["p_right"] is not None for hit in hits)
    assert [hit["p_right"] for hit in hits] == sorted((hit["p_right"] for hit in hits), reverse=True)


def test_a_file_written_before_p_right_gets_the_field(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_layer(tmp_path / "old.gpkg")
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE captions DROP COLUMN p_right")
    code, out, _ = run(capsys, "search", path, "roads", "--format", "json")
    assert code == 0 and all(hit["p_right"] is None for hit in json.loads(out)["hits"])
    review(path, MIN_REVIEWS)
    code, out, _ = run(capsys, "calibrate", path)
    assert code == 0 and out.startswith("p_right written")
    with sqlite3.connect(path) as connection:
        assert [row[1] for row in connection.execute("PRAGMA table_info(captions)")][-1] == "p_right"


def test_the_report_draws_the_reliability_diagram(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_layer(tmp_path / "c.gpkg")
    code, _, _ = run(capsys, "calibrate", path, "--report", tmp_path / "none.html")
    assert code == 0 and "How far to trust" not in (tmp_path / "none.html").read_text()
    review(path, 4)
    run(capsys, "calibrate", path, "--report", tmp_path / "few.html")
    few = (tmp_path / "few.html").read_text()
    assert "4 reviewed tiles" in few and few.count("<polyline") == 1 and "once 10 tiles are reviewed" in few
    review(path, 30)
    code, out, _ = run(capsys, "calibrate", path, "--report", tmp_path / "trust.html")
    page = (tmp_path / "trust.html").read_text()
    assert code == 0 and f"report: {tmp_path / 'trust.html'}" in out
    assert "30 reviewed tiles" in page and page.count("<polyline") == 2 and "p_right (cross-validated)" in page
    errors = [float(value) for value in re.findall(r"<td>(\d\.\d{3})</td></tr>", page)]
    assert len(errors) == 2 and all(0 <= value <= 1 for value in errors)


def test_search_reads_the_plugins_layer_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_layer(tmp_path / "c.gpkg")
    renamed = tmp_path / "renamed.gpkg"
    shutil.copy(path, renamed)
    with sqlite3.connect(renamed) as connection:
        connection.execute("ALTER TABLE captions RENAME TO town")
        connection.execute("UPDATE gpkg_contents SET table_name = 'town', identifier = 'town' "
                           "WHERE table_name = 'captions'")
    code, out, err = run(capsys, "search", renamed, "trees", "--layer", "town", "--format", "json")
    assert code == 0, err
    assert {hit["change_kind"] for hit in json.loads(out)["hits"]} == {"vegetation"}
