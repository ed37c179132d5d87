"""The dialog as an analyst uses it: two different rasters by default (undated ones in the order they were added),
dates that follow their rasters, the same raster refused, a layout that never moves and status lines that cut
nothing, a status that goes when what it spoke of changes, Run that checks the backend (a server that is not a
CCExpert backend is refused before any task) and shows the tile count and an estimate before Start, numbers kept
exactly, help inside QGIS, the choices remembered once they worked, the token checked before it is kept (in the
auth database, asked first, or for this session only) and the Processing algorithm starting from the choices."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsProject,
    QgsRectangle,
    QgsSettings,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QObject, QPoint, QUrl, pyqtSlot
from qgis.PyQt.QtGui import QDesktopServices

from qgis_plugin.auth import is_session_token, load_token
from qgis_plugin.dialog import TYPED_DATES_KEY, CaptionDialog, KeepToken
from qgis_plugin.errors import CaptionRunError
from qgis_plugin.local_backend import LocalBackendSettings, how_to_start
from qgis_plugin.params import SETTINGS_GROUP, AreaMode, CaptionParams, job_from_params
from qgis_plugin.processing_algorithm import CaptionChangesAlgorithm

from conftest import MASTER_PASSWORD, TOKEN, Backend, add_raster
from rasters import write_geotiff, write_pair
from standin import start_standin

UTM = QgsCoordinateReferenceSystem("EPSG:32631")


@pytest.fixture
def layers(project: QgsProject, tmp_path: Path) -> dict[str, object]:
    """Two rasters (added newest first, as analysts often do) and a polygon layer in WGS 84 with two squares (the
    second selected)."""
    before, after = write_pair(tmp_path, 256)
    polygons = QgsVectorLayer("Polygon?crs=EPSG:4326", "parcels", "memory")
    features = []
    for box in ((2.1452, 43.6100, 2.1460, 43.6105), (2.1465, 43.6092, 2.1472, 43.6096)):
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(*box)))
        features.append(feature)
    polygons.dataProvider().addFeatures(features)
    project.addMapLayer(polygons)
    polygons.selectByIds([sorted(polygons.allFeatureIds())[1]])  # allFeatureIds() is a set: no order
    after_layer = add_raster(project, after, "ortho 2021")
    return {"after": after_layer, "before": add_raster(project, before, "ortho 2019"), "parcels": polygons}


@pytest.fixture(autouse=True)
def forget_choices(qgis_app) -> Iterator[None]:
    """Each test starts from no remembered choices, typed dates or local backend command."""
    settings = QgsSettings()
    CaptionParams().save()
    settings.remove(TYPED_DATES_KEY)
    LocalBackendSettings().save()
    yield
    CaptionParams().save()
    settings.remove(TYPED_DATES_KEY)


@pytest.fixture
def dialog(qgis_iface, auth_ready, layers) -> Iterator[CaptionDialog]:
    """A dialog on the default parameters."""
    shown = CaptionDialog(qgis_iface, CaptionParams())
    yield shown
    shown.deleteLater()


def auth_configs() -> set[str]:
    """The ids of the authentication configurations QGIS holds."""
    return set(QgsApplication.authManager().configIds())


def fill(dialog: CaptionDialog, layers: dict, backend_url: str, output: Path, token: str = TOKEN) -> None:
    """Fill the dialog as an analyst would."""
    first, second = dialog.date_rows
    first.combo.setLayer(layers["before"])
    second.combo.setLayer(layers["after"])
    first.date.setText("2019-05")
    second.date.setText("2021-07")
    dialog.area_radios[AreaMode.LAYER].setChecked(True)
    dialog.area_layer_combo.setLayer(layers["parcels"])
    dialog.selected_only.setChecked(True)
    dialog.overlap.setText("10%")
    dialog.bands.setText("3,2,1")
    dialog.batch_size.setValue(4)
    dialog.backend_url.setText(backend_url)
    dialog.token.setText(token)
    dialog.output.setFilePath(str(output))


def test_raster_combos_list_raster_layers_only(dialog: CaptionDialog, layers: dict) -> None:
    for row in dialog.date_rows:  # the two rasters and an empty choice (a row never repeats another's raster)
        assert row.combo.count() == 3 and layers["parcels"] not in [row.combo.layer(k) for k in range(3)]
    assert dialog.area_layer_combo.count() == 1


def test_before_and_after_default_to_two_different_layers_in_date_order_with_their_dates(
    dialog: CaptionDialog, layers: dict
) -> None:
    first, second = dialog.date_rows
    assert first.combo.currentLayer() is layers["before"] and second.combo.currentLayer() is layers["after"]
    assert (first.date.text(), second.date.text()) == ("2019", "2021")  # from the layers' names
    assert [row.label.text() for row in dialog.date_rows] == ["Before", "After"]


def test_a_date_from_the_rasters_metadata_comes_before_one_in_its_name(
    qgis_iface, auth_ready, project: QgsProject, tmp_path: Path
) -> None:
    before, after = write_pair(tmp_path, 64)
    from osgeo import gdal

    dataset = gdal.Open(str(after), gdal.GA_Update)
    dataset.SetMetadataItem("TIFFTAG_DATETIME", "2021:07:14 10:00:00")
    dataset = None
    add_raster(project, before, "scene 2019")
    add_raster(project, after, "scene 2020")  # the name says 2020, the camera 2021-07-14
    shown = CaptionDialog(qgis_iface, CaptionParams())
    try:
        assert [row.date.text() for row in shown.date_rows] == ["2019", "2021-07-14"]
    finally:
        shown.deleteLater()


def test_a_rows_date_follows_its_raster_and_a_typed_date_stays_with_the_raster_it_was_typed_for(
    dialog: CaptionDialog, layers: dict, project: QgsProject, tmp_path: Path
) -> None:
    third = add_raster(project, write_geotiff(tmp_path / "ortho_2023.tif", np.zeros((3, 256, 256), np.uint8)),
                       "ortho 2023")
    second = dialog.date_rows[1]
    assert (second.combo.currentLayer(), second.date.text()) == (layers["after"], "2021")
    second.date.setText("2021-07")  # the analyst knows better than the layer's name
    second.combo.setLayer(third)  # another raster: its own date, not the other raster's
    assert second.date.text() == "2023"
    second.combo.setLayer(layers["after"])  # back: the date typed for it
    assert second.date.text() == "2021-07"


def test_dates_typed_for_rasters_are_remembered_once_run_worked(
    qgis_iface, dialog: CaptionDialog, layers: dict, tmp_path: Path, request
) -> None:
    standin = start_standin(request, "--batch-s", "0.01", python=sys.executable)
    fill(dialog, layers, standin.url, tmp_path / "out", token="")
    dialog.date_rows[1].date.setText("2021-08")
    dialog.backend_url.setText("http://127.0.0.1:9")  # nothing there: Run fails, nothing is remembered
    dialog.request_run()
    assert dialog.run_button.text() == "Run" and CaptionParams.load() == CaptionParams()
    assert not QgsSettings().value(TYPED_DATES_KEY)
    dialog.backend_url.setText(standin.url)
    dialog.request_run()
    assert dialog.run_button.text() == "Start" and CaptionParams.load().backend_url == standin.url
    # A later session: new layer ids for the same files, no remembered layers.
    QgsProject.instance().removeMapLayer(layers["after"].id())
    again = add_raster(QgsProject.instance(), Path(layers["before"].source()).with_name("after.tif"), "ortho 2021")
    reopened = CaptionDialog(qgis_iface, CaptionParams())
    try:
        assert [(row.combo.currentLayer(), row.date.text()) for row in reopened.date_rows] == [
            (layers["before"], "2019-05"), (again, "2021-08")]
    finally:
        reopened.deleteLater()


def test_undated_rasters_start_in_the_order_a_name_or_their_adding_says(
    qgis_iface, auth_ready, project: QgsProject, tmp_path: Path
) -> None:
    before, after = write_pair(tmp_path, 64)
    add_raster(project, after, "town after")  # added first, but its name says it comes last
    add_raster(project, before, "town before")
    shown = CaptionDialog(qgis_iface, CaptionParams())
    try:
        assert [row.combo.currentLayer().name() for row in shown.date_rows] == ["town before", "town after"]
        assert [row.date.text() for row in shown.date_rows] == ["", ""]
    finally:
        shown.deleteLater()
    project.removeAllMapLayers()
    add_raster(project, before, "survey b")  # nothing in the names: the one added first comes first
    add_raster(project, after, "survey a")
    shown = CaptionDialog(qgis_iface, CaptionParams())
    try:
        assert [row.combo.currentLayer().name() for row in shown.date_rows] == ["survey b", "survey a"]
    finally:
        shown.deleteLater()


def test_a_new_date_row_never_repeats_another_rows_raster(dialog: CaptionDialog, layers: dict) -> None:
    row = dialog.add_date_row()  # the project has two rasters, both taken
    assert row.combo.currentLayer() is None and row.date.text() == ""
    dialog.request_run()
    assert "choose the date 3 raster layer" in dialog.status_label.text()


def test_the_resolution_and_value_range_keep_what_was_typed_through_save_and_restore(
    dialog: CaptionDialog, layers: dict, tmp_path: Path
) -> None:
    fill(dialog, layers, "http://127.0.0.1:9", tmp_path / "out.gpkg")
    dialog.resample.setChecked(True)
    dialog.resolution.setValue(0.125)
    dialog.fixed_range.setChecked(True)
    dialog.range_min.setValue(0.0625)
    dialog.range_max.setValue(4095.5)
    assert dialog.resolution.text() == "0.125 m/px"
    params = dialog.params()
    assert params.resolution == 0.125 and params.value_range == (0.0625, 4095.5)
    params.save()
    dialog.set_params(CaptionParams.load())
    again = dialog.params()
    assert again.resolution == 0.125 and again.value_range == (0.0625, 4095.5)


def test_the_same_layer_for_two_dates_is_refused(dialog: CaptionDialog, layers: dict, tmp_path: Path) -> None:
    fill(dialog, layers, "http://127.0.0.1:9", tmp_path / "out.gpkg")
    dialog.date_rows[1].combo.setLayer(layers["before"])
    emitted: list[CaptionParams] = []
    dialog.run_requested.connect(emitted.append)
    dialog.request_run()
    assert not emitted
    assert "BEFORE and AFTER are the same layer ('ortho 2019')" in dialog.status_label.text()


def test_dates_out_of_order_are_refused(dialog: CaptionDialog, layers: dict, tmp_path: Path) -> None:
    fill(dialog, layers, "http://127.0.0.1:9", tmp_path / "out.gpkg")
    dialog.date_rows[1].date.setText("2018")
    dialog.request_run()
    assert "the dates must be in time order" in dialog.status_label.text()


@pytest.mark.parametrize(("widget", "value", "message"), [
    ("overlap", "400", "overlap must be at least 0 and less than the tile size"),
    ("bands", "1,2", "give one or three band numbers"),
])
def test_bad_values_are_explained_in_the_dialog(
    dialog: CaptionDialog, layers: dict, tmp_path: Path, widget: str, value: str, message: str
) -> None:
    fill(dialog, layers, "http://127.0.0.1:9", tmp_path / "out.gpkg")
    getattr(dialog, widget).setText(value)
    emitted: list[CaptionParams] = []
    dialog.run_requested.connect(emitted.append)
    dialog.request_run()
    assert not emitted and message in dialog.status_label.text()


def test_the_layout_stays_put_whatever_the_status_lines_say(dialog: CaptionDialog, layers: dict) -> None:
    dialog.show()
    dialog.adjustSize()
    where = {name: getattr(dialog, name).mapTo(dialog, QPoint(0, 0)) for name in ("token", "backend_url",
                                                                                 "run_button", "in_flight")}
    size = dialog.size()
    long = "✗ " + "nothing at http://example.org answers as a CCExpert backend " * 12
    for label in (dialog.connection_label, dialog.status_label):
        label.setText(long)
        dialog.layout().activate()
        assert {name: getattr(dialog, name).mapTo(dialog, QPoint(0, 0)) for name in where} == where
        assert dialog.size() == size
        label.setText("")
    dialog.hide()


def test_the_local_backend_help_is_said_whole(dialog: CaptionDialog) -> None:
    dialog.show()
    dialog.local_command.clear()
    dialog.start_local_backend()
    line = dialog.connection_label
    assert line.text() == f"✗ {how_to_start()}"  # whole, however long: the line scrolls
    assert line.height() == line.fontMetrics().lineSpacing() * 3 + 8  # and keeps its height
    assert line.document().size().height() > line.viewport().height() or line.verticalScrollBar().maximum() == 0
    dialog.hide()


def test_the_connection_status_goes_when_the_url_changes_and_on_reopening(
    dialog: CaptionDialog, layers: dict, request
) -> None:
    standin = start_standin(request, "--batch-s", "0.01", python=sys.executable)
    dialog.backend_url.setText(standin.url)
    dialog.test_button.click()
    assert dialog.connection_label.text().startswith("✓")
    dialog.backend_url.setText(standin.url + "0")
    assert dialog.connection_label.text() == ""
    dialog.backend_url.setText(standin.url)
    dialog.test_button.click()
    dialog.set_params(CaptionParams(backend_url=standin.url))  # what show_dialog does on reopening
    assert dialog.connection_label.text() == "" and dialog.status_label.text() == ""


class _NotABackend(ThreadingHTTPServer):
    """Another server: 404 pages in HTML for what it does not have."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _NotFound)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        page = b"<html><body>File not found</body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args: object) -> None:
        """Quiet."""


def test_run_refuses_a_server_that_is_not_a_ccexpert_backend_before_any_task(
    dialog: CaptionDialog, layers: dict, tmp_path: Path
) -> None:
    server = _NotABackend()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fill(dialog, layers, server.url, tmp_path / "out.gpkg", token="")
        emitted: list[CaptionParams] = []
        dialog.run_requested.connect(emitted.append)
        dialog.show()
        dialog.request_run()
        assert not emitted and dialog.isVisible()  # still open, saying why
        assert (f"nothing at {server.url} answers as a CCExpert backend (it answered 404 Not Found to /v1/info)"
                in dialog.status_label.text())
        assert dialog.run_button.text() == "Run" and not (tmp_path / "out.gpkg").exists()
        assert CaptionParams.load() == CaptionParams()  # a failed choice is not remembered (Processing's defaults)
    finally:
        dialog.hide()
        server.shutdown()
        server.server_close()


def test_run_shows_the_tile_count_and_an_estimate_then_start_runs_what_was_checked(
    dialog: CaptionDialog, layers: dict, tmp_path: Path, request
) -> None:
    standin = start_standin(request, "--batch-s", "0.05", python=sys.executable)
    fill(dialog, layers, standin.url, tmp_path / "out", token="")
    dialog.area_radios[AreaMode.OVERLAP].setChecked(True)
    dialog.tile_size.setValue(64)
    dialog.overlap.setText("0")
    emitted: list[CaptionParams] = []
    dialog.run_requested.connect(emitted.append)
    dialog.show()
    dialog.request_run()
    assert not emitted and dialog.isVisible() and dialog.run_button.text() == "Start"
    status = dialog.status_label.text()
    assert status.startswith("16 tiles: 16 pairs to caption, about ") and "two requests of 4 pairs took" in status
    assert "stand-in (no model) (a stand-in that sleeps instead of captioning)" in dialog.connection_label.text()
    timed = standin.stats()["pairs"]
    assert timed == 3 * 4  # one request of the batch size to warm the backend up, two timed
    dialog.tile_size.setValue(128)  # changed after the check: checked again, not started
    dialog.request_run()
    assert not emitted and dialog.status_label.text().startswith("4 tiles: 4 pairs to caption")
    dialog.request_run()  # Start
    assert len(emitted) == 1 and emitted[0].tile_size == 128 and not dialog.isVisible()


def test_start_hands_over_the_choices_remembers_them_and_keeps_the_token_in_the_auth_database(
    dialog: CaptionDialog, layers: dict, tmp_path: Path, backend: Backend,
) -> None:
    fill(dialog, layers, backend.url, tmp_path / "out", token="not-the-token")
    emitted: list[CaptionParams] = []
    dialog.run_requested.connect(emitted.append)
    configs = auth_configs()
    dialog.request_run()  # checked before it is kept: refused, and nothing stored
    assert "refused the token (401)" in dialog.status_label.text()
    assert auth_configs() == configs and dialog.auth_config_id == "" and CaptionParams.load() == CaptionParams()
    dialog.token.setText(TOKEN)
    dialog.request_run()
    assert dialog.run_button.text() == "Start" and len(auth_configs()) == len(configs) + 1
    dialog.request_run()
    assert len(emitted) == 1
    params = emitted[0]
    assert params == CaptionParams(
        layer_ids=(layers["before"].id(), layers["after"].id()), dates=("2019-05", "2021-07"),
        area_mode=AreaMode.LAYER, area_layer_id=layers["parcels"].id(), selected_only=True, overlap="10%",
        bands=(3, 2, 1), batch_size=4, backend_url=backend.url, auth_config_id=params.auth_config_id,
        output=str(tmp_path / "out.gpkg"),
    )
    assert load_token(params.auth_config_id) == TOKEN
    assert CaptionParams.load() == params
    settings = QgsSettings()
    keys = [key for key in settings.allKeys() if key.startswith(SETTINGS_GROUP)]
    stored = [str(settings.value(key)) for key in keys]
    assert stored and not any(TOKEN in value for value in stored)
    reopened = CaptionDialog(dialog.iface, CaptionParams.load())  # the token is not read on opening
    assert reopened.token.text() == "" and "authentication database" in reopened.token.placeholderText()
    reopened.deleteLater()
    QgsApplication.authManager().removeAuthenticationConfig(params.auth_config_id)


def test_the_master_password_is_asked_for_only_to_keep_a_token_after_saying_why_and_this_session_is_offered(
    dialog: CaptionDialog, layers: dict, tmp_path: Path, backend: Backend, request,
) -> None:
    manager = QgsApplication.authManager()
    asked: list[str] = []

    def answer(parent) -> KeepToken:  # what the analyst clicks in the question ask_where_to_keep shows
        asked.append("where to keep")
        return KeepToken.SESSION

    dialog.ask_where_to_keep = answer
    manager.clearMasterPassword()  # a new QGIS session: the authentication database is locked
    request.addfinalizer(lambda: manager.setMasterPassword(MASTER_PASSWORD, True))
    standin = start_standin(request, "--batch-s", "0.01", python=sys.executable)
    dialog.auth_config_id = "notstored"  # a configuration remembered from before: never read for a backend
    fill(dialog, layers, standin.url, tmp_path / "out", token="")  # without tokens
    dialog.request_run()
    assert dialog.run_button.text() == "Start" and not asked and not manager.masterPasswordIsSet()
    configs = auth_configs()
    fill(dialog, layers, backend.url, tmp_path / "out")  # with a token: kept once it works, asked where first
    dialog.request_run()
    assert dialog.run_button.text() == "Start", dialog.status_label.text()
    assert asked == ["where to keep"] and not manager.masterPasswordIsSet() and auth_configs() == configs
    assert is_session_token(dialog.auth_config_id) and load_token(dialog.auth_config_id) == TOKEN
    assert CaptionParams.load().auth_config_id == dialog.auth_config_id


def test_processing_starts_from_the_dialogs_remembered_choices(layers: dict, qgis_app) -> None:
    chosen = CaptionParams(
        layer_ids=(layers["before"].id(), layers["after"].id()), dates=("2019", "2021"), area_mode=AreaMode.LAYER,
        area_layer_id=layers["parcels"].id(), tile_size=256, overlap="12", resolution=0.5, bands=(3, 2, 1),
        value_range=(10.0, 900.0), backend_url="http://gpu1:8000, http://gpu2:8000", in_flight=5,
        retry_budget_s=30.0, auth_config_id="abc1234", output="/data/changes.gpkg", layer_name="site", batch_size=12,
        first_to_last=True, max_tiles=5000,
    )
    chosen.save()
    algorithm = CaptionChangesAlgorithm().create()
    defaults = {definition.name(): definition.defaultValue() for definition in algorithm.parameterDefinitions()}
    assert defaults == {
        "LAYERS": [layers["before"].id(), layers["after"].id()], "DATES": "2019, 2021", "EXTENT": None,
        "AREA": layers["parcels"].id(), "TILE_SIZE": 256, "OVERLAP": "12", "RESOLUTION": 0.5, "BANDS": "3,2,1",
        "VALUE_MIN": 10.0, "VALUE_MAX": 900.0, "BATCH_SIZE": 12, "BACKEND_URL": "http://gpu1:8000, http://gpu2:8000",
        "IN_FLIGHT": 5, "RETRY_BUDGET": 30.0, "AUTH_CONFIG": "abc1234", "LAYER_NAME": "site",
        "FIRST_TO_LAST": True, "MAX_TILES": 5000,
        "OUTPUT": "/data/changes.gpkg",
    }
    CaptionParams().save()


class _Opened(QObject):
    """Takes the https URLs QDesktopServices would hand to the browser."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    @pyqtSlot(QUrl)
    def open(self, url: QUrl) -> None:
        self.urls.append(url.toString())


def test_help_shows_the_readmes_plugin_section_inside_qgis(dialog: CaptionDialog) -> None:
    opened = _Opened()
    QDesktopServices.setUrlHandler("https", opened, "open")
    try:
        dialog.help_button.click()
    finally:
        QDesktopServices.unsetUrlHandler("https")
    assert not opened.urls  # no browser, no network
    shown = dialog.help_dialog
    assert shown is not None and shown.isVisible()
    text = shown.browser.toPlainText()
    assert text.startswith("QGIS plugin") and "Install from ZIP" in text and "Review captions" in text
    assert shown.browser.document().resource(1, QUrl("docs/review-panel.png")) is not None  # its screenshots
    shown.close()


def test_a_rectangle_drawn_on_the_map_becomes_the_area(dialog: CaptionDialog, layers: dict, qgis_iface) -> None:
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(UTM)
    dialog.start_drawing()
    assert canvas.mapTool() is dialog._extent_tool and not dialog.isVisible()
    dialog._extent_tool.extentChanged.emit(QgsRectangle(431010, 4828800, 431150, 4828990))
    assert dialog.area_radios[AreaMode.RECTANGLE].isChecked() and canvas.mapTool() is not dialog._extent_tool
    assert dialog.rectangle_label.text() == "140 × 190 m from (431010, 4828800)"
    dialog.output.setFilePath("/tmp/x.gpkg")
    params = dialog.params()
    assert params.rectangle == (431010, 4828800, 431150, 4828990)
    assert QgsCoordinateReferenceSystem.fromWkt(params.rectangle_crs) == UTM
    dialog.hide()


def test_area_choices_become_polygons_in_the_before_crs(layers: dict, project: QgsProject) -> None:
    base = CaptionParams(layer_ids=(layers["before"].id(), layers["after"].id()),
                         area_layer_id=layers["parcels"].id(), output="/tmp/x.gpkg")
    canvas_extent = QgsRectangle(431000, 4828900, 431100, 4829000)

    def area(**changes) -> tuple:
        return job_from_params(replace(base, **changes), project, canvas_extent, UTM, "").area

    assert area() is None  # the overlap, found by the run
    (canvas,) = area(area_mode=AreaMode.CANVAS)
    xs, ys = zip(*canvas[0])
    assert (min(xs), min(ys), max(xs), max(ys)) == (431000, 4828900, 431100, 4829000)
    everything, selected = area(area_mode=AreaMode.LAYER), area(area_mode=AreaMode.LAYER, selected_only=True)
    assert len(everything) == 2 and selected == everything[1:]
    x, y = selected[0][0][0]
    assert 431000 < x < 431256 and 4828744 < y < 4829000  # degrees became the raster's metres
    with pytest.raises(CaptionRunError, match="draw a rectangle"):
        area(area_mode=AreaMode.RECTANGLE)


def test_a_third_date_makes_a_series_and_rows_can_be_removed(
    dialog: CaptionDialog, layers: dict, project: QgsProject, tmp_path: Path
) -> None:
    third = add_raster(project, write_geotiff(tmp_path / "ortho_2023.tif", np.zeros((3, 256, 256), np.uint8)),
                       "ortho 2023")
    row = dialog.add_date_row()
    assert row.combo.currentLayer() is third and row.date.text() == "2023"  # the next layer in date order
    assert [r.label.text() for r in dialog.date_rows] == ["Date 1", "Date 2", "Date 3"]
    dialog.remove_date_row(row)
    assert [r.label.text() for r in dialog.date_rows] == ["Before", "After"]
    dialog.remove_date_row(dialog.date_rows[0])  # two stay
    assert len(dialog.date_rows) == 2


def test_first_to_last_is_offered_for_a_series_and_kept_with_the_tile_limit(
    dialog: CaptionDialog, layers: dict, project: QgsProject, tmp_path: Path
) -> None:
    assert not dialog.first_to_last.isEnabled()  # two dates: their one interval is first to last already
    (tmp_path / "third").mkdir()
    third = add_raster(project, write_pair(tmp_path / "third", 256, seed=3)[1], "ortho 2023")
    dialog.add_date_row(third)
    assert dialog.first_to_last.isEnabled()
    dialog.date_rows[0].combo.setLayer(layers["before"])
    dialog.date_rows[1].combo.setLayer(layers["after"])
    dialog.first_to_last.setChecked(True)
    dialog.max_tiles.setValue(12)
    dialog.output.setFilePath(str(tmp_path / "series.gpkg"))
    params = dialog.params()
    assert (params.first_to_last, params.max_tiles) == (True, 12)
    job = job_from_params(params, project, QgsRectangle(), UTM, "")
    assert job.intervals == ((0, 1), (1, 2), (0, 2)) and job.max_tiles == 12
    dialog.tile_size.setValue(16)  # below the run's smallest tile
    assert dialog.tile_size.value() == 32


def test_run_refuses_an_output_made_with_other_options_before_start(
    dialog: CaptionDialog, layers: dict, project: QgsProject, tmp_path: Path, request
) -> None:
    from qgis_plugin.job import run_job

    from conftest import Feedback

    standin = start_standin(request, "--batch-s", "0", python=sys.executable)
    output = tmp_path / "made.gpkg"
    fill(dialog, layers, standin.url, output, token="")
    dialog.area_radios[AreaMode.OVERLAP].setChecked(True)
    dialog.tile_size.setValue(128)
    first = job_from_params(dialog.params(), project, QgsRectangle(), UTM, "")
    assert run_job(first, Feedback()).error is None  # the output holds 128-px tiles
    kept = output.read_bytes()
    before = set(project.mapLayers())
    dialog.tile_size.setValue(64)  # another grid: the command refuses to resume this output, and so must Run
    emitted: list[CaptionParams] = []
    dialog.run_requested.connect(emitted.append)
    dialog.show()
    dialog.request_run()
    status = dialog.status_label.text()
    assert "holds tiles made with other options (tile_size: 128 there, 64 now)" in status, status
    assert not emitted and dialog.run_button.text() == "Run"  # no Start offered
    assert output.read_bytes() == kept and set(project.mapLayers()) == before  # nothing written, nothing added
    dialog.hide()
