"""Find and trust in QGIS: the bundled ranking gives what ``ccexpert search`` gives (the project's .venv) on the same
GeoPackage; the locator bar's filter returns hits and zooms to the chosen tile in the review dock; the dock's search
field; p_right appears after enough reviews made in the dock, monotone in confidence, refitted when a review changes,
the same as ``ccexpert calibrate`` writes; nothing is written for a layer without reviews."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from osgeo import osr
from qgis.core import QgsLocator, QgsLocatorContext, QgsLocatorResult, QgsProject, QgsRectangle, QgsVectorLayer
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import QApplication

from qgis_plugin import classFactory
from qgis_plugin.calibration_gpkg import refit
from qgis_plugin.captions_gpkg import CaptionsGeoPackage
from qgis_plugin.locator import PREFIX, CaptionsLocatorFilter
from qgis_plugin.review_panel import ReviewPanel
from qgis_plugin.review_store import CaptionsFile, Order, read_items, search_entry
from qgis_plugin.shared_modules import calibration, run_contract, schema, search
from qgis_plugin.shared_modules import grid as tiling

from conftest import CCEXPERT, require_project_venv

SIDE = 6
CAPTIONS = ("two buildings have been built at the top left", "a road has been built at the bottom",
            "the trees at the left have been cleared", "the house at the center has been demolished",
            "some villas appear at the right", "the road at the right has been widened")
KINDS = ("buildings", "roads", "vegetation", "demolition", "buildings", "roads")
NO_CHANGE = "there is no difference"
QUERIES = ("houses", "demolished houses", "new roads 2021", "streets 2016..2018", "widening", "demol", "unchanged",
           "trees 2018..", "villas ..2018", "changed 2021", "buildings corrected", "unreviewed roads", "2017")


def utm_wkt() -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32631)
    return srs.ExportToWkt()


def write_series(path: Path) -> Path:
    """A captions layer written by the plugin's writer: SIDE × SIDE tiles over two intervals (2016→2018,
    2018→2021), confidences spread over 0.3–0.99, every fifth tile unchanged, the last one skipped."""
    records = []
    for interval, (before, after) in enumerate((("2016", "2018"), ("2018", "2021"))):
        for k in range(SIDE * SIDE):
            tile = tiling.Tile(k // SIDE, k % SIDE, (k % SIDE) * 8, (k // SIDE) * 8, 8, 8)
            x, y = 431000.0 + tile.x, 4829000.0 - tile.y
            ring = [(x, y), (x + 8, y), (x + 8, y - 8), (x, y - 8), (x, y)]
            if k == SIDE * SIDE - 1:
                records.append(run_contract.TileRecord(tile, ring, schema.SKIPPED_NODATA, interval=interval, date_before=before,
                                          date_after=after))
                continue
            changed = k % 5 != 4
            which = (k + interval) % len(CAPTIONS)
            records.append(run_contract.TileRecord(
                tile, ring, schema.CAPTIONED, CAPTIONS[which] if changed else NO_CHANGE, changed,
                0.3 + 0.69 * ((k * 7 + interval) % 36) / 35, interval, before, after,
                KINDS[which] if changed else None,
            ))
    with CaptionsGeoPackage(str(path), "captions", utm_wkt(), {"tile_size": "8"}, "b.tif", "a.tif", "m") as writer:
        writer.write(records)
    return path


def review_in_file(path: Path, verdicts: dict[int, str | None]) -> None:
    """Reviews written straight into the file (fid → the analyst's caption, None: accepted), through QGIS's GDAL."""
    from osgeo import gdal

    dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR | gdal.OF_UPDATE)
    for fid, caption in verdicts.items():
        status = schema.ACCEPTED if caption is None else schema.CORRECTED
        text = "NULL" if caption is None else "'" + caption.replace("'", "''") + "'"
        dataset.ExecuteSQL(f"UPDATE captions SET review_status = '{status}', reviewed_caption = {text}, "
                           f"reviewed_at = '2024-05-01T10:00:00.000Z' WHERE fid = {fid}")
    dataset = None


def open_layer(project: QgsProject, path: Path, name: str = "town captions") -> QgsVectorLayer:
    layer = QgsVectorLayer(f"{path}|layername=captions", name, "ogr")
    assert layer.isValid()
    project.addMapLayer(layer)
    return layer


def rows(path: Path) -> dict[int, tuple]:
    """fid → (interval, status, change_detected, confidence, review_status, p_right), read only."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        return {row[0]: row[1:] for row in connection.execute(
            'SELECT fid, "interval", status, change_detected, confidence, review_status, p_right FROM captions')}


def calibration_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        names = [f.name for f in schema.CALIBRATION_FIELDS if f.name != "fitted_at"]
        return connection.execute(f"SELECT {', '.join(schema.quote(n) for n in names)} FROM ccexpert_calibration "
                                  'ORDER BY "interval"').fetchall()


def ccexpert(*args: str) -> subprocess.CompletedProcess:
    require_project_venv()
    return subprocess.run([str(CCEXPERT), *args], capture_output=True, text=True, check=False)


@pytest.fixture
def panel(qgis_iface, project: QgsProject) -> Iterator[ReviewPanel]:
    made = ReviewPanel(qgis_iface)
    made.resize(900, 900)
    made.show()
    QApplication.setActiveWindow(made)
    made.widget().setFocus()
    yield made
    made.unload()
    made.close()
    made.deleteLater()
    QApplication.processEvents()


def test_the_ranking_in_qgis_is_the_commands(project: QgsProject, tmp_path: Path) -> None:
    path = write_series(tmp_path / "town.gpkg")
    review_in_file(path, {3: None, 4: CAPTIONS[1], 8: None, 40: CAPTIONS[0]})
    layer = open_layer(project, path)
    index = search.SearchIndex([search_entry(item) for item in read_items(layer)])
    for query in QUERIES:
        done = ccexpert("search", str(path), query, "--format", "json", "--limit", "0")
        assert done.returncode == 0, done.stderr
        command = [(hit["tile_id"], hit["interval"], hit["score"]) for hit in json.loads(done.stdout)["hits"]]
        plugin = [(hit.entry.tile_id, hit.entry.interval, round(hit.score, 3)) for hit in index.search(query)]
        assert plugin == command and plugin, query


def test_the_locator_filter_finds_tiles_zooms_to_one_and_opens_it_in_the_review_dock(
    qgis_iface, project: QgsProject, tmp_path: Path
) -> None:
    path = write_series(tmp_path / "town.gpkg")
    layer = open_layer(project, path)
    plugin = classFactory(qgis_iface)
    plugin.initGui()
    try:
        qgis_iface.registerLocatorFilter.assert_called_with(plugin.locator_filter)
        canvas = qgis_iface.mapCanvas()
        canvas.setDestinationCrs(layer.crs())
        canvas.setExtent(QgsRectangle(0, 0, 10, 10))
        locator = QgsLocator()
        locator_filter = CaptionsLocatorFilter(qgis_iface, plugin.open_tile)  # the locator owns (and deletes) it
        locator.registerFilter(locator_filter)
        found: list[QgsLocatorResult] = []
        locator.foundResult.connect(lambda result: found.append(QgsLocatorResult(result)))  # a copy: Qt reuses it
        locator.fetchResults(f"{PREFIX} demolished houses 2019..2021", QgsLocatorContext())
        QApplication.processEvents()
        assert found and all("demolished" in result.displayString for result in found)
        assert all(result.description.startswith("town captions · r") and "2018→2021 · demolition · confidence"
                   in result.description for result in found)
        assert len(found) == sum(1 for item in read_items(layer) if item.change_kind == "demolition"
                                 and item.interval == 1)
        chosen = found[1]
        fid = int(str(chosen.userData).split("\t")[1])
        locator_filter.triggerResult(chosen)
        extent = next(layer.getFeatures(f"fid = {fid}")).geometry().boundingBox()
        shown = canvas.extent()  # the tile, a margin around it, widened to the canvas's shape
        assert shown.contains(extent) and min(shown.width(), shown.height()) <= 1.5 * extent.width() + 1e-6
        assert shown.center().distance(extent.center()) < 1e-6
        panel = plugin.review.panel
        assert panel is not None and not panel.isHidden() and panel.current().fid == fid
        assert panel.highlighted().boundingBox() == extent and not layer.selectedFeatureIds()

        found.clear()
        locator.fetchResults(f"{PREFIX} roads 2021-13", QgsLocatorContext())
        QApplication.processEvents()
        assert [result.displayString for result in found] == ["'2021-13' is not a date: month must be in 1..12"]
        locator_filter.triggerResult(found[0])  # says why, does nothing
        assert panel.current().fid == fid
        locator.deregisterFilter(locator_filter)
    finally:
        plugin.unload()
    qgis_iface.deregisterLocatorFilter.assert_called()
    assert plugin.locator_filter is None


def test_the_docks_search_field_steps_through_the_hits(panel: ReviewPanel, project: QgsProject, tmp_path: Path):
    layer = open_layer(project, write_series(tmp_path / "town.gpkg"))
    panel.set_layer(layer)
    panel.search("villas 2018..2021")
    expected = [(hit.entry.tile_id, hit.entry.interval) for hit in search.SearchIndex(
        [search_entry(item) for item in read_items(layer)]).search("villas 2018..2021")]
    assert [(item.tile_id, item.interval) for item in panel.items()] == expected and expected
    assert panel.current().caption == "some villas appear at the right"
    assert f"{len(expected)} tiles match “villas 2018..2021”" in panel.message.text()
    panel.search("2021..2016")
    assert panel.items() == [] and "ends before it starts" in panel.message.text()
    panel.search("")
    assert len(panel.items()) == 2 * SIDE * SIDE


def test_the_random_order_is_a_fixed_shuffle_of_every_tile(panel: ReviewPanel, project: QgsProject, tmp_path: Path):
    panel.set_layer(open_layer(project, write_series(tmp_path / "town.gpkg")))
    panel.set_order(Order.RANDOM)
    shuffled = [(item.tile_id, item.interval) for item in panel.items()]
    panel.set_order(Order.TILE_ID)
    by_id = [(item.tile_id, item.interval) for item in panel.items()]
    panel.set_order(Order.RANDOM)
    assert [(item.tile_id, item.interval) for item in panel.items()] == shuffled  # the same every time
    assert sorted(shuffled) == sorted(by_id) and shuffled != by_id
    changed = [item.changed for item in panel.items()[:20]]
    assert 0 < sum(changed) < 20  # a mix, not the changed tiles first


def test_p_right_comes_with_the_tenth_review_and_follows_the_reviews(
    panel: ReviewPanel, project: QgsProject, tmp_path: Path
) -> None:
    path = write_series(tmp_path / "town.gpkg")
    untouched = path.read_bytes()
    layer = open_layer(project, path)
    panel.set_layer(layer)
    panel.set_order(Order.TILE_ID)
    assert "comes once 10 tiles are reviewed: 0 so far" in panel.trust.text()
    assert refit(CaptionsFile(str(path), "captions")).written is False and path.read_bytes() == untouched

    def review(count: int) -> None:
        for _ in range(count):
            item = panel.current()
            assert item is not None
            if item.confidence is not None and item.confidence < 0.6:
                panel.start_edit()
                panel.edit_line.setText("a road has been built at the top")
                QTest.keyClick(panel.edit_line, Qt.Key.Key_Return)
            else:
                QTest.keyClick(panel.widget(), Qt.Key.Key_A)

    review(calibration.MIN_REVIEWS - 1)
    assert all(row[-1] is None for row in rows(path).values())
    assert "9 so far" in panel.trust.text() and "p_right" not in panel.facts.text()
    review(1)
    stored = rows(path)
    assert all((row[-1] is not None) == (row[1] == schema.CAPTIONED) for row in stored.values())
    for interval in (0, 1):
        for flag in (0, 1):
            values = sorted((row[3], row[-1]) for row in stored.values()
                            if row[0] == interval and row[1] == schema.CAPTIONED and row[2] == flag)
            assert all(b[1] >= a[1] - 1e-12 for a, b in zip(values, values[1:])), (interval, flag)
    assert "p_right fitted on 10 reviews" in panel.saved.text()
    assert "p_right" in layer.fields().names()  # QGIS reads the field the fit added
    shown = {item.fid: item.p_right for item in panel.items()}
    assert all(shown[fid] == pytest.approx(row[-1], abs=1e-12) for fid, row in stored.items() if row[-1] is not None)
    waiting = [row[-1] for row in stored.values() if row[2] and row[4] is None and row[-1] is not None]
    assert panel.trust.text() == (f"Of the {len(waiting)} unreviewed changed tiles, about "
                                  f"{round(calibration.expected_wrong(waiting))} are likely wrong (p_right from 10 "
                                  "reviews).")
    assert f"p_right {panel.current().p_right:.2f}" in panel.facts.text()

    # The analyst changes their mind on an accepted tile: the fit follows.
    accepted = next(index for index, item in enumerate(panel.items()) if item.review_status == schema.ACCEPTED)
    while panel.items().index(panel.current()) > accepted:
        panel.back()
    panel.start_edit()
    panel.edit_line.setText("two buildings have been built at the top right")
    QTest.keyClick(panel.edit_line, Qt.Key.Key_Return)
    changed = rows(path)
    assert any(abs(changed[fid][-1] - stored[fid][-1]) > 1e-3 for fid in stored if stored[fid][-1] is not None)

    # Most uncertain first: by p_right, lowest first, the tiles without one last.
    panel.set_order(Order.MOST_UNCERTAIN)
    values = [item.p_right for item in panel.items()]
    known = [value for value in values if value is not None]
    assert known == sorted(known) and values[len(known):] == [None] * (len(values) - len(known))

    # ccexpert calibrate on the same reviews writes the same p_right and the same map.
    copy = tmp_path / "copy.gpkg"
    shutil.copy(path, copy)
    with sqlite3.connect(copy) as connection:
        connection.execute("DROP TABLE ccexpert_calibration")
        connection.execute("DELETE FROM gpkg_contents WHERE table_name = 'ccexpert_calibration'")
    done = ccexpert("calibrate", str(copy))
    assert done.returncode == 0, done.stderr
    command = rows(copy)
    assert all(command[fid][-1] == pytest.approx(row[-1], abs=1e-12) if row[-1] is not None else
               command[fid][-1] is None for fid, row in rows(path).items())
    made = {"command": calibration_rows(copy), "plugin": calibration_rows(path)}
    assert len(made["plugin"]) == len(made["command"]) == 2
    for command_row, plugin_row in zip(made["command"], made["plugin"]):  # numpy 1.24 here: the last bit may differ
        assert list(command_row) == [
            pytest.approx(value, abs=1e-12) if isinstance(value, float) else value for value in plugin_row]


def test_a_file_written_before_p_right_gets_the_field_from_the_dock(
    panel: ReviewPanel, project: QgsProject, tmp_path: Path
) -> None:
    path = write_series(tmp_path / "old.gpkg")
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE captions DROP COLUMN p_right")
    review_in_file(path, {fid: None for fid in range(1, calibration.MIN_REVIEWS)})
    layer = open_layer(project, path)
    panel.set_layer(layer)
    assert "p_right" not in layer.fields().names() and "9 so far" in panel.trust.text()
    panel.set_order(Order.TILE_ID, unreviewed_only=True)
    QTest.keyClick(panel.widget(), Qt.Key.Key_A)
    assert "p_right" in layer.fields().names() and "p_right fitted on 10 reviews" in panel.saved.text()
    assert sum(1 for row in rows(path).values() if row[-1] is not None) == 2 * (SIDE * SIDE - 1)
