"""The review panel on GeoPackages that ``ccexpert caption-region`` wrote (the demo model, in the project's .venv):
its images are the pixels the command captioned, its keys and buttons write the review fields and nothing else,
runs keep the review, the style shows reviewed tiles (and what the analyst said of them), change polygons are drawn,
what is missing is said, the map outlines the current tile without selecting it, and the dock opens wide enough,
with the keys working, where the analyst stopped.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import (
    QgsExpression,
    QgsExpressionContext,
    QgsExpressionContextUtils,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsProject,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize, Qt
from qgis.PyQt.QtGui import QColor, QImage
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import QApplication

from ccexpert_core.captions import is_no_change
from qgis_plugin import classFactory
from qgis_plugin.captions_gpkg import CaptionsGeoPackage
from qgis_plugin.review_panel import CHANGE_COLOUR, ReviewPanel, pixels_of
from qgis_plugin.review_store import NO_CHANGE_CAPTION, Order
from qgis_plugin.shared_modules import grid as tiling
from qgis_plugin.shared_modules import run_contract, schema
from qgis_plugin.tile_reader import RasterSeriesReader

from conftest import CCEXPERT, SCREENSHOTS, VENV_PYTHON, add_raster, require_project_venv
from rasters import write_geotiff

#: The demo's rasters (the synthetic town the demo model knows), written by the project's own code.
WRITE_TOWN = """
import sys
from pathlib import Path
from ccexpert_core.geo.synthetic import write_demo_rasters, write_demo_series
folder = Path(sys.argv[1])
write_demo_rasters(folder / "town")
write_demo_series(folder / "series", ("2016", "2018", "2021"), scenes=2)
"""
#: The tiles caption-region reads (its RasterSeries, rasterio), every date of every tile of the grid: npz entries
#: ``{tile_id}/{date index}``.
COMMAND_TILES = """
import json, sys
from pathlib import Path
import numpy as np
from ccexpert_core.geo.grid import TileGrid
from ccexpert_core.geo.raster import RasterSeries
paths, out, options = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
roles = [f"date {k + 1}" for k in range(len(paths))]
with RasterSeries([Path(p) for p in paths], roles, options.get("bands"), options.get("resolution"), log=print) as dates:
    grid = TileGrid(dates.grid.width, dates.grid.height, dates.grid.gdal_transform, options["tile_size"], 0)
    tiles = grid.tiles()
    dates.fit_stretch(tiles, None)
    arrays = {f"{tile.tile_id}/{k}": rgb for tile in tiles for k, (rgb, _) in enumerate(dates.read_dates(tile))}
np.savez(out, **arrays)
"""


def caption_region(out: Path, *args: str) -> str:
    """``ccexpert caption-region --out OUT ARGS`` with the default (demo) model; its stderr."""
    require_project_venv()
    done = subprocess.run([str(CCEXPERT), "caption-region", "--out", str(out), *args], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stderr


def command_tiles(paths: list[Path], out: Path, options: dict) -> np.lib.npyio.NpzFile:
    """What caption-region's reader gives for every tile and date (run in the project's .venv)."""
    subprocess.run([str(VENV_PYTHON), "-c", COMMAND_TILES, json.dumps([str(p) for p in paths]), str(out),
                    json.dumps(options)], check=True, capture_output=True)
    return np.load(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo town captioned (two dates, 3 × 3 tiles, a changes layer), the town at three dates (2 × 2 tiles,
    two intervals) and 16-bit rasters captioned with bands 3,2,1 resampled to 2 m (a stretch, a rebuilt grid)."""
    require_project_venv()
    folder = tmp_path_factory.mktemp("review")
    subprocess.run([str(VENV_PYTHON), "-c", WRITE_TOWN, str(folder)], check=True, capture_output=True)
    town, series = folder / "town", folder / "series"
    caption_region(folder / "town.gpkg", "--before", str(town / "before.tif"), "--after", str(town / "after.tif"))
    caption_region(folder / "series.gpkg", *(f"--date={date}={series / f'town_{date}.tif'}"
                                             for date in ("2016", "2018", "2021")))
    rng = np.random.default_rng(7)
    deep = folder / "deep"
    deep.mkdir()
    for name, transform in (("b16.tif", None), ("a16.tif", (431003.3, 1.3, 0, 4829002.1, 0, -1.3))):
        write_geotiff(deep / name, rng.integers(200, 4000, (4, 200, 220)).astype(np.uint16), transform=transform)
    caption_region(folder / "deep.gpkg", "--before", str(deep / "b16.tif"), "--after", str(deep / "a16.tif"),
                   "--bands", "3,2,1", "--resolution", "2", "--tile-size", "64")
    return {"folder": folder, "town": folder / "town.gpkg", "series": folder / "series.gpkg",
            "deep": folder / "deep.gpkg"}


@pytest.fixture
def panel(qgis_iface, project: QgsProject) -> Iterator[ReviewPanel]:
    """The dock, shown and focused (its shortcuts need an active window)."""
    made = ReviewPanel(qgis_iface)
    made.resize(900, 1000)
    made.show()
    QApplication.setActiveWindow(made)
    made.widget().setFocus()
    yield made
    made.unload()
    made.close()
    made.deleteLater()
    QApplication.processEvents()


def open_run(project: QgsProject, runs: dict[str, Path], name: str, folder: Path, rasters: list[Path],
             layer_name: str = "captions") -> tuple[Path, QgsVectorLayer]:
    """A fresh copy of a run's GeoPackage with its captions layer and ``rasters`` in the project."""
    copy = folder / f"{name}.gpkg"
    shutil.copy(runs[name], copy)
    for path in rasters:
        add_raster(project, path, path.stem)
    layer = QgsVectorLayer(f"{copy}|layername={layer_name}", f"{name} captions", "ogr")
    assert layer.isValid()
    project.addMapLayer(layer)
    return copy, layer


def town_rasters(runs: dict[str, Path]) -> list[Path]:
    return [runs["folder"] / "town" / "before.tif", runs["folder"] / "town" / "after.tif"]


def review_rows(path: Path) -> dict[str, tuple]:
    """tile_id → (caption, review_status, reviewed_caption, reviewed_at), read only."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        return {row[0]: row[1:] for row in connection.execute(
            "SELECT tile_id, caption, review_status, reviewed_caption, reviewed_at FROM captions"
        )}


def shown(panel: ReviewPanel) -> tuple[np.ndarray, np.ndarray]:
    """The two images as the panel shows them."""
    images = [view.image() for view in (panel.before_view, panel.after_view)]
    assert all(image is not None for image in images), panel.message.text()
    return pixels_of(images[0]), pixels_of(images[1])  # type: ignore[arg-type]


def key(panel: ReviewPanel, which: Qt.Key) -> None:
    QTest.keyClick(panel.widget(), which)


def test_every_tile_shows_the_pixels_caption_region_read(panel: ReviewPanel, project: QgsProject, runs, tmp_path):
    rasters = town_rasters(runs)
    _, layer = open_run(project, runs, "town", tmp_path, rasters)
    panel.set_layer(layer)
    expected = command_tiles(rasters, tmp_path / "command.npz", {"tile_size": 384})
    items = panel.items()
    assert len(items) == 9 and panel.message.styleSheet() != "color: #b00020"
    with RasterSeriesReader([str(p) for p in rasters], ["BEFORE", "AFTER"]) as reader:
        grid = tiling.TileGrid(reader.grid.width, reader.grid.height, reader.grid.transform, 384)
        tiles = {tile.tile_id: tile for tile in grid.tiles()}
        reader.fit_stretch(list(tiles.values()), None)
        for position, item in enumerate(items):
            assert panel.current() == item
            before, after = shown(panel)
            assert before.shape == after.shape == (384, 384, 3)  # full resolution
            plugin = [rgb for rgb, _ in reader.read_dates(tiles[item.tile_id])]
            for image, date in ((before, 0), (after, 1)):
                np.testing.assert_array_equal(image, plugin[date], err_msg=item.tile_id)
                np.testing.assert_array_equal(image, expected[f"{item.tile_id}/{date}"], err_msg=item.tile_id)
            assert panel.header.text().startswith(f"Tile {item.tile_id}") and f"{position + 1} of 9" in (
                panel.header.text())
            assert panel.caption.text() == item.caption and f"confidence {item.confidence:.2f}" in panel.facts.text()
            key(panel, Qt.Key.Key_Right)


def test_sixteen_bit_resampled_bands_are_rebuilt_from_the_stored_options(
    panel: ReviewPanel, project: QgsProject, runs, tmp_path
):
    rasters = [runs["folder"] / "deep" / "b16.tif", runs["folder"] / "deep" / "a16.tif"]
    _, layer = open_run(project, runs, "deep", tmp_path, rasters)
    panel.set_layer(layer)
    expected = command_tiles(rasters, tmp_path / "command.npz", {"tile_size": 64, "bands": [3, 2, 1],
                                                                  "resolution": 2.0})
    assert len(panel.items()) == len(expected.files) // 2 == 4
    for item in panel.items():
        before, after = shown(panel)
        assert before.shape == (64, 64, 3)
        np.testing.assert_array_equal(before, expected[f"{item.tile_id}/0"], err_msg=item.tile_id)
        np.testing.assert_array_equal(after, expected[f"{item.tile_id}/1"], err_msg=item.tile_id)
        panel.skip()


def test_a_series_interval_shows_its_dates_and_their_rasters(panel: ReviewPanel, project: QgsProject, runs, tmp_path):
    dates = ("2016", "2018", "2021")
    rasters = [runs["folder"] / "series" / f"town_{date}.tif" for date in dates]
    _, layer = open_run(project, runs, "series", tmp_path, rasters)
    panel.set_layer(layer)
    panel.set_order(Order.TILE_ID)
    assert [panel.rasters_form.itemAt(k, panel.rasters_form.ItemRole.LabelRole).widget().text()
            for k in range(3)] == [f"{date} (town_{date}.tif)" for date in dates]
    expected = command_tiles(rasters, tmp_path / "command.npz", {"tile_size": 384})
    items = panel.items()
    assert [(item.tile_id, item.interval) for item in items[:2]] == [("r0_c0", 0), ("r0_c0", 1)]
    panel.skip()
    item = panel.current()
    assert item is not None and (item.date_before, item.date_after) == ("2018", "2021")
    assert "2018 → 2021" in panel.header.text()
    assert panel.before_title.text() == "2018 — town_2018.tif" and panel.after_title.text() == "2021 — town_2021.tif"
    before, after = shown(panel)
    np.testing.assert_array_equal(before, expected["r0_c0/1"])
    np.testing.assert_array_equal(after, expected["r0_c0/2"])


def test_keys_step_accept_edit_mark_no_change_and_skip_into_the_geopackage(
    panel: ReviewPanel, project: QgsProject, runs, tmp_path
):
    path, layer = open_run(project, runs, "town", tmp_path, town_rasters(runs))
    panel.set_layer(layer)
    panel.set_order(Order.CHANGED_FIRST)
    before = review_rows(path)
    started = datetime.now(UTC) - timedelta(seconds=1)
    first, second, third, fourth = (item.tile_id for item in panel.items()[:4])
    assert all(item.changed for item in panel.items()[:4])

    key(panel, Qt.Key.Key_A)  # accept: the model's caption stands
    assert panel.current().tile_id == second
    key(panel, Qt.Key.Key_S)  # skip: nothing written
    key(panel, Qt.Key.Key_Left)  # back to the skipped one
    assert panel.current().tile_id == second
    key(panel, Qt.Key.Key_E)
    assert panel.edit_line.hasFocus() and panel.edit_line.text() == before[second][0]
    QTest.keyClick(panel.edit_line, Qt.Key.Key_Escape)  # cancelled: nothing written, the keys are the panel's again
    assert not panel.edit_row.isVisible() and panel.current().tile_id == second
    key(panel, Qt.Key.Key_E)
    panel.edit_line.clear()
    QTest.keyClicks(panel.edit_line, "two buildings have been constructed at the left")  # letters go in the box
    QTest.keyClick(panel.edit_line, Qt.Key.Key_Return)
    assert panel.current().tile_id == third
    key(panel, Qt.Key.Key_N)  # the model saw a change that is not there
    assert panel.current().tile_id == fourth
    key(panel, Qt.Key.Key_Right)
    assert panel.current().tile_id not in (first, second, third, fourth)
    panel.set_order(Order.TILE_ID)
    unchanged = next(item for item in panel.items() if not item.changed)
    while panel.current() != unchanged:
        panel.skip()
    QTest.mouseClick(panel.no_change_button, Qt.MouseButton.LeftButton)  # "no change" where the model said so too

    after = review_rows(path)
    assert {tile: row[:3] for tile, row in after.items() if row[1]} == {
        first: (before[first][0], "accepted", None),
        second: (before[second][0], "corrected", "two buildings have been constructed at the left"),
        third: (before[third][0], "corrected", NO_CHANGE_CAPTION),
        unchanged.tile_id: (before[unchanged.tile_id][0], "accepted", None),
    }
    assert is_no_change(NO_CHANGE_CAPTION)  # export-dataset will call it a no-change pair
    assert all(row[0] == before[tile][0] for tile, row in after.items())  # the model's captions as they were
    for tile in (first, second, third, unchanged.tile_id):
        stamp = datetime.fromisoformat(after[tile][3].replace("Z", "+00:00"))
        assert started <= stamp <= datetime.now(UTC)
    assert "4 of 9 tiles reviewed" == panel.progress.text()
    reviewed = {feature["tile_id"]: feature["review_status"] for feature in layer.getFeatures()}
    assert reviewed[first] == "accepted" and reviewed[second] == "corrected"  # the layer on the map sees them


def test_the_orders_and_the_unreviewed_filter(panel: ReviewPanel, project: QgsProject, runs, tmp_path):
    _, layer = open_run(project, runs, "town", tmp_path, town_rasters(runs))
    panel.set_layer(layer)
    panel.set_order(Order.LOWEST_CONFIDENCE)
    confidences = [item.confidence for item in panel.items()]
    assert confidences == sorted(confidences)
    panel.set_order(Order.CHANGED_FIRST)
    flags = [item.changed for item in panel.items()]
    assert flags == sorted(flags, reverse=True) and any(flags) and not all(flags)
    panel.set_order(Order.TILE_ID)
    assert [item.tile_id for item in panel.items()] == [f"r{r}_c{c}" for r in range(3) for c in range(3)]
    panel.accept()
    panel.set_order(Order.TILE_ID, unreviewed_only=True)
    assert [item.tile_id for item in panel.items()][:1] == ["r0_c1"] and len(panel.items()) == 8


def test_the_map_follows_the_current_tile(panel: ReviewPanel, project: QgsProject, runs, tmp_path, qgis_iface):
    _, layer = open_run(project, runs, "town", tmp_path, town_rasters(runs))
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(layer.crs())
    panel.set_layer(layer)
    for _ in range(3):
        item = panel.current()
        extent = canvas.extent()
        # Zoomed to the tile with a margin (the canvas widens the extent to its own shape), centred on it.
        assert extent.contains(item.extent) and min(extent.width(), extent.height()) < 2 * item.extent.width()
        assert (extent.center().x(), extent.center().y()) == pytest.approx(
            (item.extent.center().x(), item.extent.center().y()))
        outline = panel.highlighted()  # an outline on the map, not a selection painted over the tile
        assert outline is not None and outline.boundingBox() == item.extent and not layer.selectedFeatureIds()
        panel.skip()
    panel.close()
    assert panel.highlighted() is None


def test_runs_again_keep_the_review(panel: ReviewPanel, project: QgsProject, runs, tmp_path):
    path, layer = open_run(project, runs, "town", tmp_path, town_rasters(runs))
    panel.set_layer(layer)
    panel.set_order(Order.TILE_ID)
    panel.accept()  # r0_c0
    panel.start_edit()
    panel.edit_line.setText("a road has been built")
    panel.save_edit()  # r0_c1
    reviewed = {tile: row[1:] for tile, row in review_rows(path).items() if row[1]}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        options = dict(connection.execute("SELECT key, value FROM ccexpert_run_options"))
    # The plugin's writer, as a rerun writes tiles again: the run's fields change, the review stays.
    grid = tiling.TileGrid(1152, 1152, (431000.0, 0.5, 0.0, 4829000.0, 0.0, -0.5), 384)
    tiles = {tile.tile_id: tile for tile in grid.tiles()}
    with CaptionsGeoPackage(str(path), "captions", layer.crs().toWkt(), options, "before.tif", "after.tif",
                            options["model_id"]) as writer:
        writer.write([run_contract.TileRecord(tiles[tile], grid.footprint(tiles[tile]), schema.CAPTIONED, "two new houses", True,
                                 0.9) for tile in ("r0_c0", "r0_c1")])
    rows = review_rows(path)
    assert {tile: rows[tile][0] for tile in ("r0_c0", "r0_c1")} == {"r0_c0": "two new houses",
                                                                     "r0_c1": "two new houses"}
    assert {tile: rows[tile][1:] for tile in reviewed} == reviewed
    # The command, resuming (nothing to do) and redoing a failed tile: the review stays too.
    dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR | gdal.OF_UPDATE)
    dataset.ExecuteSQL("UPDATE captions SET status = 'failed', caption = NULL WHERE tile_id = 'r0_c1'")
    dataset = None  # GDAL 3.6 datasets close when released
    town = runs["folder"] / "town"
    stderr = caption_region(path, "--before", str(town / "before.tif"), "--after", str(town / "after.tif"))
    assert "1 to do" in stderr
    rows = review_rows(path)
    assert rows["r0_c1"][0] and rows["r0_c1"][0] != "two new houses"
    assert {tile: rows[tile][1:] for tile in reviewed} == reviewed


def outline_pixels(layer: QgsVectorLayer, item_extent, colour: str) -> int:
    """How many pixels of ``colour`` the layer's style draws along the top edge of a tile (1 px per metre)."""
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    extent = layer.extent().buffered(20)
    settings.setExtent(extent)
    settings.setOutputSize(QSize(round(extent.width()), round(extent.height())))
    settings.setBackgroundColor(QColor("white"))
    render = QgsMapRendererSequentialJob(settings)
    render.start()
    render.waitForFinished()
    image = pixels_of(render.renderedImage().convertToFormat(QImage.Format.Format_RGB888)).astype(int)
    left = round(item_extent.xMinimum() - extent.xMinimum()) + 20
    right = round(item_extent.xMaximum() - extent.xMinimum()) - 20
    top = round(extent.yMaximum() - item_extent.yMaximum())
    strip = image[top - 8 : top + 8, left:right]
    target = np.array([int(colour[k : k + 2], 16) for k in (1, 3, 5)])
    return int((np.abs(strip - target).sum(axis=2) < 60).sum())


def test_the_layers_style_outlines_reviewed_tiles_with_a_legend_entry_of_their_own(
    panel: ReviewPanel, project: QgsProject, runs, tmp_path
):
    _, layer = open_run(project, runs, "town", tmp_path, town_rasters(runs))
    panel.set_layer(layer)
    panel.set_order(Order.TILE_ID)
    item = panel.current()
    assert item is not None and not item.changed  # r0_c0: the top row is unchanged
    before = outline_pixels(layer, item.extent, schema.REVIEWED_COLOUR)
    panel.accept()
    after = outline_pixels(layer, item.extent, schema.REVIEWED_COLOUR)  # the project's layer, as the panel left it
    assert before == 0 and after > 0
    legend = [entry.label() for entry in layer.renderer().legendSymbolItems()]
    assert legend == ["changed", "unchanged", "skipped (no data)", "failed (run again)", "reviewed"]


def test_a_changed_tile_marked_no_change_is_drawn_unchanged(panel: ReviewPanel, project: QgsProject, runs, tmp_path):
    _, layer = open_run(project, runs, "town", tmp_path, town_rasters(runs))
    panel.set_layer(layer)
    panel.set_order(Order.CHANGED_FIRST)
    item = panel.current()
    assert item is not None and item.changed
    red = next(c.colour for c in schema.CATEGORIES if c.value == schema.CHANGED)
    assert category_on_map(layer, item.fid) == schema.CHANGED and outline_pixels(layer, item.extent, red) > 0
    panel.no_change()
    assert category_on_map(layer, item.fid) == schema.UNCHANGED  # the analyst's word, not the model's flag
    assert outline_pixels(layer, item.extent, red) == 0


def category_on_map(layer: QgsVectorLayer, fid: int) -> str:
    """The category the layer's style gives a feature."""
    context = QgsExpressionContext(QgsExpressionContextUtils.globalProjectLayerScopes(layer))
    context.setFeature(next(layer.getFeatures(f"fid = {fid}")))
    return QgsExpression(schema.CATEGORY_EXPRESSION).evaluate(context)


def test_what_was_saved_is_said_apart_from_the_tile_shown(panel: ReviewPanel, project: QgsProject, runs, tmp_path):
    _, layer = open_run(project, runs, "town", tmp_path, town_rasters(runs))
    panel.set_layer(layer)
    panel.set_order(Order.TILE_ID)
    first = panel.current().tile_id
    panel.accept()
    assert panel.saved.text() == f"Saved: {first} accepted." and "Saved" not in panel.message.text()
    assert panel.current().tile_id != first


def test_the_dock_opens_wide_enough_for_two_tiles_with_the_keys_working_where_the_analyst_stopped(
    qgis_iface, project: QgsProject, runs, tmp_path
):
    path, layer = open_run(project, runs, "town", tmp_path, town_rasters(runs))
    window = qgis_iface.mainWindow()
    window.show()
    QApplication.setActiveWindow(window)
    qgis_iface.setActiveLayer(layer)
    plugin = classFactory(qgis_iface)
    plugin.initGui()
    try:
        panel = plugin.review.show_panel()
        QApplication.processEvents()
        scroll = panel.images_scroll
        assert panel.before_view.width() == panel.after_view.width() == 384
        assert scroll.horizontalScrollBar().maximum() == 0  # both tiles whole, side by side
        assert scroll.viewport().width() >= 2 * 384
        focused = QApplication.focusWidget()
        assert focused is not None and (focused is panel.widget() or panel.widget().isAncestorOf(focused))
        panel.set_order(Order.TILE_ID)
        key(panel, Qt.Key.Key_S)
        key(panel, Qt.Key.Key_A)
        stopped = panel.current().tile_id  # the third tile: one skipped, one accepted
        panel.close()
        assert plugin.review.show_panel().current().tile_id == stopped  # reopened
    finally:
        plugin.unload()
        window.hide()
    again = classFactory(qgis_iface)  # another session: a new dock
    again.initGui()
    try:
        assert again.review.show_panel().current().tile_id == stopped
    finally:
        again.unload()


def test_change_polygons_are_drawn_where_the_layer_has_them(panel: ReviewPanel, project: QgsProject, runs, tmp_path):
    path, layer = open_run(project, runs, "town", tmp_path, town_rasters(runs))
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        mapped = {row[0] for row in connection.execute("SELECT tile_id FROM changes")}
    assert mapped, "the demo model gives change maps"
    panel.set_layer(layer)
    panel.set_order(Order.TILE_ID)
    assert panel.polygons_check.isVisible()
    for item in panel.items():
        polygons = panel.after_view.polygons()
        assert bool(polygons) == (item.tile_id in mapped), item.tile_id
        drawn = pixels_of(panel.after_view.grab().toImage()).astype(int)
        yellow = (np.abs(drawn - np.array(CHANGE_COLOUR.getRgb()[:3])).sum(axis=2) < 30).sum()
        if polygons:
            for polygon in polygons:  # in the tile's pixels
                for point in polygon:
                    assert 0 <= point.x() <= 384 and 0 <= point.y() <= 384, item.tile_id
            assert yellow > 50
            panel.polygons_check.setChecked(False)
            assert panel.after_view.polygons() == []
            np.testing.assert_array_equal(pixels_of(panel.after_view.grab().toImage()), shown(panel)[1])
            panel.polygons_check.setChecked(True)
        else:
            np.testing.assert_array_equal(drawn, shown(panel)[1])
        panel.skip()


def test_a_layer_without_run_options_says_so_and_can_still_be_reviewed(
    panel: ReviewPanel, project: QgsProject, runs, tmp_path
):
    copy = tmp_path / "bare.gpkg"
    shutil.copy(runs["town"], copy)
    with sqlite3.connect(copy) as connection:
        connection.execute("DROP TABLE ccexpert_run_options")
        connection.execute("DELETE FROM gpkg_contents WHERE table_name = 'ccexpert_run_options'")
    for path in town_rasters(runs):
        add_raster(project, path, path.stem)
    layer = QgsVectorLayer(f"{copy}|layername=captions", "bare", "ogr")
    project.addMapLayer(layer)
    panel.set_layer(layer)
    assert "does not record its run's options (crs is missing from ccexpert_run_options)" in panel.message.text()
    assert panel.before_view.image() is None and panel.caption.text()
    tile = panel.current().tile_id
    key(panel, Qt.Key.Key_A)
    assert review_rows(copy)[tile][1] == "accepted"


def test_missing_or_other_rasters_are_said_and_can_be_picked(panel: ReviewPanel, project: QgsProject, runs, tmp_path):
    path, layer = open_run(project, runs, "town", tmp_path, [])
    panel.set_layer(layer)
    assert ("The run read before.tif (BEFORE): there is no raster layer of that name in the project"
            in panel.message.text())
    assert panel.before_view.image() is None
    # A crop of BEFORE under another name: another grid, refused with what differs.
    cropped = tmp_path / "crop.tif"
    gdal.Translate(str(cropped), str(town_rasters(runs)[0]), srcWin=[0, 0, 800, 800])
    crop = add_raster(project, cropped, "crop")
    panel.pick_raster(0, crop)
    assert ("crop.tif does not match the layer's run: its size is 800x800, the run's was 1152x1152"
            in panel.message.text())
    before_path, after_path = town_rasters(runs)
    panel.pick_raster(0, add_raster(project, before_path, "before"))  # the crop stays picked until changed
    assert panel.before_view.image() is None and "The run read after.tif (AFTER)" in panel.message.text()
    add_raster(project, after_path, "after")  # added to the project: found by its name
    assert shown(panel)[0].shape == (384, 384, 3) and "does not" not in panel.message.text()
    renamed = tmp_path / "renamed.tif"
    shutil.copy(town_rasters(runs)[1], renamed)
    panel.pick_raster(1, add_raster(project, renamed, "renamed"))
    assert "AFTER is renamed.tif, picked by you: the run read after.tif." in panel.message.text()


def test_the_plugin_opens_the_panel_from_its_action_and_removes_both_on_unload(qgis_iface, project: QgsProject):
    plugin = classFactory(qgis_iface)
    plugin.initGui()
    try:
        assert plugin.review.action.text() == "Review captions…"
        plugin.review.action.trigger()
        assert isinstance(plugin.review.panel, ReviewPanel) and not plugin.review.panel.isHidden()  # in the window
    finally:
        plugin.unload()
    assert plugin.review is None


def test_screenshot_of_the_panel_on_the_demo_town(panel: ReviewPanel, project: QgsProject, runs, tmp_path):
    path, layer = open_run(project, runs, "town", tmp_path, town_rasters(runs))
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        mapped = {row[0] for row in connection.execute("SELECT tile_id FROM changes")}
    panel.set_layer(layer)
    panel.set_order(Order.CHANGED_FIRST)
    while panel.current().tile_id not in mapped:
        panel.skip()
    panel.resize(870, 860)  # both tiles whole, as a floating dock shows them
    QApplication.processEvents()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / "review-panel.png"
    assert panel.grab().save(str(target)) and target.stat().st_size > 100_000
