"""The dialog collects one CaptionParams, remembers it (the token in the auth database only), tests the backend,
and the area choices become polygons in the BEFORE raster's CRS."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import SCREENSHOTS, TOKEN, Backend, add_raster
from qgis.core import (
    QgsCoordinateReferenceSystem, QgsFeature, QgsGeometry, QgsProject, QgsRectangle, QgsSettings, QgsVectorLayer,
)
from rasters import write_pair

from qgis_plugin.auth import load_token
from qgis_plugin.dialog import CaptionDialog
from qgis_plugin.errors import CaptionRunError
from qgis_plugin.params import SETTINGS_GROUP, AreaMode, CaptionParams, job_from_params

UTM = QgsCoordinateReferenceSystem("EPSG:32631")


@pytest.fixture
def layers(project: QgsProject, tmp_path: Path) -> dict[str, object]:
    """Two rasters and a polygon layer in WGS 84 with two squares (the second selected)."""
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
    return {"before": add_raster(project, before, "ortho 2019"), "after": add_raster(project, after, "ortho 2021"),
            "parcels": polygons}


@pytest.fixture
def dialog(qgis_iface, auth_ready, layers) -> Iterator[CaptionDialog]:
    """A dialog on the default parameters."""
    shown = CaptionDialog(qgis_iface, CaptionParams())
    yield shown
    shown.deleteLater()


def fill(dialog: CaptionDialog, layers: dict, backend_url: str, output: Path) -> None:
    """Fill the dialog as an analyst would."""
    dialog.before_combo.setLayer(layers["before"])
    dialog.after_combo.setLayer(layers["after"])
    dialog.before_date.setText("2019-05")
    dialog.after_date.setText("2021-07")
    dialog.area_radios[AreaMode.LAYER].setChecked(True)
    dialog.area_layer_combo.setLayer(layers["parcels"])
    dialog.selected_only.setChecked(True)
    dialog.overlap.setText("10%")
    dialog.bands.setText("3,2,1")
    dialog.batch_size.setValue(4)
    dialog.backend_url.setText(backend_url)
    dialog.token.setText(TOKEN)
    dialog.output.setFilePath(str(output))


def test_raster_combos_list_raster_layers_only(dialog: CaptionDialog, layers: dict) -> None:
    for combo in (dialog.before_combo, dialog.after_combo):
        assert combo.count() == 2 and layers["parcels"] not in (combo.layer(0), combo.layer(1))
    assert dialog.area_layer_combo.count() == 1


def test_run_collects_remembers_and_keeps_the_token_in_the_auth_database(
    dialog: CaptionDialog, layers: dict, tmp_path: Path
) -> None:
    fill(dialog, layers, "http://127.0.0.1:8000", tmp_path / "out")
    emitted: list[CaptionParams] = []
    dialog.run_requested.connect(emitted.append)
    dialog.request_run()
    assert len(emitted) == 1
    params = emitted[0]
    assert params == CaptionParams(
        before_layer_id=layers["before"].id(), after_layer_id=layers["after"].id(), before_date="2019-05",
        after_date="2021-07", area_mode=AreaMode.LAYER, area_layer_id=layers["parcels"].id(), selected_only=True,
        overlap="10%", bands=(3, 2, 1), batch_size=4, backend_url="http://127.0.0.1:8000",
        auth_config_id=params.auth_config_id, output=str(tmp_path / "out.gpkg"),
    )
    assert load_token(params.auth_config_id) == TOKEN
    assert CaptionParams.load() == params
    settings = QgsSettings()
    keys = [key for key in settings.allKeys() if key.startswith(SETTINGS_GROUP)]
    stored = [str(settings.value(key)) for key in keys]
    assert stored and not any(TOKEN in value for value in stored)


@pytest.mark.parametrize(("widget", "value", "message"), [
    ("overlap", "400", "overlap must be at least 0 and less than the tile size"),
    ("bands", "1,2", "give one or three band numbers"),
])
def test_bad_values_are_explained_in_the_dialog(
    dialog: CaptionDialog, layers: dict, tmp_path: Path, widget: str, value: str, message: str
) -> None:
    fill(dialog, layers, "http://127.0.0.1:8000", tmp_path / "out.gpkg")
    getattr(dialog, widget).setText(value)
    emitted: list[CaptionParams] = []
    dialog.run_requested.connect(emitted.append)
    dialog.request_run()
    assert not emitted and message in dialog.error_label.text()


def test_a_rectangle_drawn_on_the_map_becomes_the_area(dialog: CaptionDialog, layers: dict, qgis_iface) -> None:
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(UTM)
    dialog.start_drawing()
    assert canvas.mapTool() is dialog._extent_tool and not dialog.isVisible()
    dialog._extent_tool.extentChanged.emit(QgsRectangle(431010, 4828800, 431150, 4828990))
    assert dialog.area_radios[AreaMode.RECTANGLE].isChecked() and canvas.mapTool() is not dialog._extent_tool
    dialog.output.setFilePath("/tmp/x.gpkg")
    params = dialog.params()
    assert params.rectangle == (431010, 4828800, 431150, 4828990)
    assert QgsCoordinateReferenceSystem.fromWkt(params.rectangle_crs) == UTM


def test_area_choices_become_polygons_in_the_before_crs(layers: dict, project: QgsProject) -> None:
    base = CaptionParams(before_layer_id=layers["before"].id(), after_layer_id=layers["after"].id(),
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


def test_test_connection_shows_the_backends_info_or_why_not(dialog: CaptionDialog, backend: Backend) -> None:
    dialog.backend_url.setText(backend.url)
    dialog.token.setText(TOKEN)
    dialog.test_button.click()
    answer = dialog.connection_label.text()
    assert answer.startswith("✓") and backend.info()["model_id"] in answer
    dialog.token.setText("wrong")
    dialog.test_button.click()
    assert dialog.connection_label.text().startswith("✗") and "refused the token" in dialog.connection_label.text()


def test_screenshot_of_the_dialog(dialog: CaptionDialog, layers: dict, backend: Backend, tmp_path: Path) -> None:
    fill(dialog, layers, backend.url, Path.home() / "changes" / "site_2019_2021.gpkg")
    dialog.test_button.click()
    dialog.resize(dialog.sizeHint().width() + 120, dialog.sizeHint().height())
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / "plugin-dialog.png"
    image = dialog.grab()
    assert image.width() > 400 and image.height() > 400
    assert image.save(str(path)) and path.stat().st_size > 10_000
