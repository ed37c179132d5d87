"""A series in QGIS with the demo model: the demo town at 2016, 2018 and 2021 (``write_demo_series``, dated in its
metadata), captioned by a real ``ccexpert serve`` that the plugin started on this machine, through the dialog as an
analyst drives it. Features per interval with their dates, rasters and kind of change; the history layer with its
timeline; the changes layer from the model's change maps; the model named in words; the layer in time (Temporal
Controller, a filter by time, the rasters too); the run's layers in a group of their own at the top of the layer
tree, the history below the captions; either tool resumes the other's series; repeated runs get distinct names; and
the README's screenshots.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCategorizedSymbolRenderer,
    QgsDateTimeRange,
    QgsLayerTreeGroup,
    QgsLayerTreeLayer,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
    QgsVectorLayerCache,
    QgsVectorLayerTemporalContext,
)
from qgis.gui import (
    QgsAttributeTableFilterModel,
    QgsAttributeTableModel,
    QgsAttributeTableView,
    QgsTemporalControllerWidget,
)
from qgis.PyQt.QtCore import QCoreApplication, QDate, QDateTime, QSize, Qt, QTime
from qgis.PyQt.QtGui import QColor, QImage, QPainter

from qgis_plugin import classFactory
from qgis_plugin.job import Job, RasterInput, run_job
from qgis_plugin.local_backend import LocalBackendSettings
from qgis_plugin.params import CaptionParams
from qgis_plugin.plugin import CCExpertPlugin
from qgis_plugin.shared_modules import schema

from conftest import CCEXPERT, SCREENSHOTS, VENV_PYTHON, Feedback, add_raster, require_project_venv, wait_until

DATES = ("2016", "2018", "2021")
#: What the rasters' metadata says (TIFFTAG_DATETIME): the dialog's dates, and the command's.
LABELS = ("2016-06-15", "2018-06-15", "2021-06-15")
TILES = [f"r{r}_c{c}" for r in range(3) for c in range(3)]


def at(day: str) -> QDateTime:
    year, month, date = map(int, day.split("-"))
    return QDateTime(QDate(year, month, date), QTime(0, 0))


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The demo town at three dates (written by the project's .venv: rasterio)."""
    require_project_venv()
    folder = tmp_path_factory.mktemp("town")
    subprocess.run(
        [str(VENV_PYTHON), "-c", "import sys; from pathlib import Path; "
         "from ccexpert_core.geo.synthetic import write_demo_series; "
         f"write_demo_series(Path(sys.argv[1]), {DATES!r})", str(folder)],
        check=True, capture_output=True,
    )
    return [folder / f"town_{date}.tif" for date in DATES]


@pytest.fixture(scope="module")
def plugin(qgis_iface, auth_ready) -> Iterator[CCExpertPlugin]:
    """The plugin, started as QGIS starts it; unloading it stops the backend it started."""
    started = classFactory(qgis_iface)
    started.initGui()
    yield started
    started.unload()


@pytest.fixture(scope="module")
def demo(plugin: CCExpertPlugin) -> str:
    """The demo model served by ``ccexpert serve``, started by the plugin on a free port; its URL."""
    url = plugin.local_backend.start(LocalBackendSettings(f"{CCEXPERT} serve --no-ui"))
    wait_until(lambda: plugin.local_backend.is_ready or not plugin.local_backend.running, "the demo backend")
    assert plugin.local_backend.is_ready, plugin.local_backend.log.read_text()[-2000:]
    return url


@pytest.fixture(scope="module")
def controller(qgis_iface) -> Iterator[QgsTemporalControllerWidget]:
    """QGIS's Temporal Controller panel, its navigation the map canvas's (as in QGIS's main window), on a project
    without a time range yet (earlier modules' dated runs gave it one)."""
    settings = QgsProject.instance().timeSettings()
    settings.setTemporalRange(QgsDateTimeRange(QDateTime(), QDateTime()))
    widget = QgsTemporalControllerWidget()
    canvas = qgis_iface.mapCanvas()
    before = canvas.temporalController()
    canvas.setTemporalController(widget.temporalController())
    yield widget
    canvas.setTemporalController(before)  # the canvas must not keep the controller deleted next
    widget.deleteLater()


@pytest.fixture(scope="module")
def run(plugin: CCExpertPlugin, demo: str, town: list[Path], controller, tmp_path_factory) -> Iterator[dict]:
    """The series captioned through the dialog: Run (checked, counted, timed), then Start."""
    project = QgsProject.instance()
    plugin.iface.messageBar().clear_messages()
    layers = [add_raster(project, path, path.stem) for path in reversed(town)]  # newest on top, as often
    output = tmp_path_factory.mktemp("series") / "town.gpkg"
    dialog = plugin.show_dialog()
    dialog.add_date_row()
    dialog.backend_url.setText(demo)
    dialog.token.clear()
    dialog.tile_size.setValue(384)
    dialog.overlap.setText("0")
    dialog.batch_size.setValue(8)
    dialog.in_flight.setValue(0)
    dialog.bands.clear()
    dialog.fixed_range.setChecked(False)
    dialog.resample.setChecked(False)
    dialog.layer_name.setText("captions")
    dialog.area_radios[CaptionParams().area_mode].setChecked(True)
    dialog.output.setFilePath(str(output))
    chosen = [(row.combo.currentLayer(), row.date.text()) for row in dialog.date_rows]
    logged: list[str] = []
    log = QgsApplication.messageLog()

    def keep(message: str, tag: str, level) -> None:
        if tag == "CCExpert":
            logged.append(message)

    log.messageReceived.connect(keep)
    dialog.request_run()
    status = dialog.status_label.text()
    connection = dialog.connection_label.text()
    QCoreApplication.processEvents()  # the added row is shown by the next turn of the event loop
    dialog.resize(dialog.sizeHint().width() + 80, dialog.sizeHint().height())
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert dialog.grab().save(str(SCREENSHOTS / "plugin-dialog.png"))
    dialog.request_run()  # Start
    wait_until(lambda: not plugin.tasks, "the series run")
    log.messageReceived.disconnect(keep)
    yield {
        "output": output, "layers": list(reversed(layers)), "chosen": chosen, "status": status,
        "connection": connection, "messages": plugin.iface.messageBar().get_messages(Qgis.MessageLevel.Success),
        "url": plugin.local_backend.url, "logged": logged,
        # The backend's access log so far: the requests of this run (Run's timed one, then Start's).
        "requests": [line for line in plugin.local_backend.log.read_text().splitlines() if '"POST /v1/' in line],
    }
    project.removeAllMapLayers()


def rows(output: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(output) as connection:
        return connection.execute(sql).fetchall()


def project_layer(name: str) -> QgsVectorLayer:
    (layer,) = QgsProject.instance().mapLayersByName(name)
    assert isinstance(layer, QgsVectorLayer)
    return layer


TITLE = f"CCExpert {LABELS[0]}→{LABELS[-1]}"


def test_the_dialog_orders_the_dates_prefills_them_and_shows_the_plan_before_start(run: dict) -> None:
    assert [(layer.name(), date) for layer, date in run["chosen"]] == list(zip(
        ("town_2016", "town_2018", "town_2021"), LABELS))  # in date order, dated by the rasters' metadata
    assert run["status"].startswith("9 tiles × 2 intervals: 18 pairs to caption, about ")
    assert "two requests of 8 pairs took" in run["status"] and run["status"].endswith("Press Start to run.")
    assert run["connection"].startswith(
        "✓ CCExpert demo model (trained on synthetic scenes only: not for real imagery) — id demo_model@")


def test_features_per_interval_carry_their_dates_rasters_and_kind_of_change(run: dict) -> None:
    features = rows(run["output"], 'SELECT tile_id, "interval", date_before, date_after, before_source, '
                                   "after_source, status, caption, change_detected, change_kind, model_id "
                                   'FROM captions ORDER BY tile_id, "interval"')
    assert [(f[0], f[1]) for f in features] == [(tile, k) for tile in sorted(TILES) for k in (0, 1)]
    names = [f"town_{date}.tif" for date in DATES]
    for feature in features:
        k = feature[1]
        assert feature[2:6] == (LABELS[k], LABELS[k + 1], names[k], names[k + 1])
        assert feature[6] == "captioned" and feature[10].startswith("demo_model@") and "/" not in feature[10]
    changed = [f for f in features if f[8]]
    assert changed and all(f[9] in schema.CHANGE_KINDS for f in changed)  # the demo model tells kinds
    assert all(f[9] is None for f in features if not f[8])


def test_the_history_layer_tells_each_tiles_timeline_and_is_styled_by_its_changes(run: dict) -> None:
    captions = {(f[0], f[1]): f[2:] for f in rows(run["output"],
                'SELECT tile_id, "interval", caption, change_detected FROM captions')}
    history = rows(run["output"], "SELECT tile_id, timeline, changes, first_change, intervals FROM history "
                                  "ORDER BY tile_id")
    assert [h[0] for h in history] == sorted(TILES)
    for tile_id, timeline, changes, first_change, intervals in history:
        (first, first_changed), (second, second_changed) = captions[tile_id, 0], captions[tile_id, 1]
        assert timeline == f"{LABELS[0]}→{LABELS[1]}: {first}; {LABELS[1]}→{LABELS[2]}: {second}"
        assert changes == first_changed + second_changed and intervals == 2
        assert first_change == (f"{LABELS[0]}→{LABELS[1]}" if first_changed else
                                f"{LABELS[1]}→{LABELS[2]}" if second_changed else None)
    layer = project_layer(f"{TITLE} — history")
    assert isinstance(layer.renderer(), QgsCategorizedSymbolRenderer)
    assert [c.label() for c in layer.renderer().categories()] == ["no change", "changed once",
                                                                  "changed twice or more"]
    assert layer.featureCount() == 9 and "timeline" in layer.mapTipTemplate()


def test_the_changes_layer_holds_the_demo_models_changed_places(run: dict) -> None:
    places = rows(run["output"], 'SELECT tile_id, "interval", model_id FROM changes')
    assert places and len(set((p[0], p[1]) for p in places)) == len(places)  # keyed by tile and interval
    changed = {(f[0], f[1]) for f in rows(run["output"], 'SELECT tile_id, "interval" FROM captions '
                                                         "WHERE change_detected")}
    assert {(p[0], p[1]) for p in places} <= {(t, k) for t in TILES for k in (0, 1)}
    assert {(p[0], p[1]) for p in places} & changed  # changed tiles have changed places
    indexes = rows(run["output"], "PRAGMA index_list(changes)")
    assert any(unique and name == "changes_key" for _, name, unique, *_ in indexes)
    layer = project_layer(f"{TITLE} — changes")
    assert layer.featureCount() == len(places)


def test_the_model_is_named_in_words_in_the_message_bar_and_the_layer_metadata(run: dict) -> None:
    note = "trained on synthetic scenes only: not for real imagery"
    (message,) = run["messages"]  # one line on the bar; its "Show more" and the log panel have the rest
    assert message == f"{TITLE}:18 captioned in town.gpkg, by CCExpert demo model."  # the bar shows "title: text"
    assert any(f"Captions by CCExpert demo model ({note})." in line for line in run["logged"])
    metadata = project_layer(TITLE).metadata()
    assert f"Model: CCExpert demo model ({note})." in metadata.abstract()
    assert "Model id: demo_model@" in metadata.abstract() and LABELS[0] in metadata.abstract()
    keywords = metadata.keywords()["CCExpert"]
    assert "CCExpert demo model" in keywords and any(word.startswith("demo_model@") for word in keywords)


def test_the_runs_layers_are_a_group_at_the_top_with_the_history_below_the_captions(run: dict) -> None:
    root = QgsProject.instance().layerTreeRoot()
    top = root.children()[0]
    assert isinstance(top, QgsLayerTreeGroup) and top.name() == TITLE
    names = [child.layer().name() for child in top.children() if isinstance(child, QgsLayerTreeLayer)]
    assert names == [f"{TITLE} — changes", TITLE, f"{TITLE} — history"]  # the untimed history cannot hide them
    assert root.findLayer(project_layer(TITLE).id()).parent() is not root


def test_the_rasters_follow_the_temporal_controller_too(run: dict) -> None:
    spans = []
    for layer in run["layers"]:
        properties = layer.temporalProperties()
        assert properties.isActive()
        span = properties.fixedTemporalRange()
        spans.append((span.begin(), span.end()))
    assert spans == [(at("2016-06-15"), at("2018-06-15")), (at("2018-06-15"), at("2021-06-15")),
                     (at("2021-06-15"), at("2021-06-16"))]


def test_the_layer_follows_the_temporal_controller_and_filters_by_time(
    run: dict, controller: QgsTemporalControllerWidget
) -> None:
    layer = project_layer(TITLE)
    properties = layer.temporalProperties()
    assert properties.isActive()
    assert properties.mode() == Qgis.VectorTemporalMode.FeatureDateTimeStartAndEndFromExpressions
    extents = controller.temporalController().temporalExtents()
    assert (extents.begin(), extents.end()) == (at("2016-06-15"), at("2021-06-16"))
    project_range = QgsProject.instance().timeSettings().temporalRange()
    assert (project_range.begin(), project_range.end()) == (at("2016-06-15"), at("2021-06-16"))

    def shown(begin: str, end: str) -> set[int]:
        context = QgsVectorLayerTemporalContext()
        context.setLayer(layer)
        expression = properties.createFilterString(context, QgsDateTimeRange(at(begin), at(end), True, False))
        return {feature["interval"] for feature in layer.getFeatures(expression)}

    assert shown("2016-01-01", "2016-06-15") == set()  # nothing known to have changed before the first image
    assert shown("2017-01-01", "2017-02-01") == {0}  # what changed between 2016 and 2018
    assert shown("2019-03-01", "2019-04-01") == {1}
    assert shown("2018-06-10", "2018-06-20") == {0, 1}  # the 2018 image's day ends one interval, the next begins
    assert len(list(layer.getFeatures(
        properties.createFilterString(QgsVectorLayerTemporalContext(), QgsDateTimeRange(at("2019-01-01"),
                                                                                        at("2019-02-01")))
    ))) == 9
    changes = project_layer(f"{TITLE} — changes")  # no dates of its own: its intervals' spans
    in_2019 = changes.temporalProperties().createFilterString(
        QgsVectorLayerTemporalContext(), QgsDateTimeRange(at("2019-01-01"), at("2019-02-01"), True, False))
    assert {feature["interval"] for feature in changes.getFeatures(in_2019)} == {1}


def test_each_tiles_dates_go_once_in_series_requests(run: dict) -> None:
    # 9 tiles of 3 dates, 4 tiles (8 pairs) a request: Run's estimate (one to warm the backend up, two timed), then
    # 3 for the run.
    assert len(run["requests"]) == 3 + 3, run["requests"]
    assert all('"POST /v1/series HTTP/1.1" 200' in line for line in run["requests"]), run["requests"]


def caption_region(town: list[Path], output: Path, url: str) -> str:
    """``ccexpert caption-region`` over the same series, with the dates the plugin used; its stderr."""
    dated = [argument for label, path in zip(LABELS, town) for argument in ("--date", f"{label}={path}")]
    result = subprocess.run([str(CCEXPERT), "caption-region", *dated, "--out", str(output), "--backend", url],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_the_command_resumes_the_plugins_series_output(run: dict, town: list[Path], tmp_path: Path) -> None:
    copy = tmp_path / "plugin.gpkg"
    shutil.copy(run["output"], copy)
    stderr = caption_region(town, copy, run["url"])
    assert "2 intervals of 3 dates; 9 already in" in stderr and "0 to do" in stderr


def test_the_plugin_resumes_the_commands_series_output_per_interval(
    run: dict, town: list[Path], tmp_path: Path
) -> None:
    output = tmp_path / "command.gpkg"
    caption_region(town, output, run["url"])
    captions = 'SELECT tile_id, "interval", caption, change_detected FROM captions ORDER BY 1, 2'
    assert rows(output, captions) == rows(run["output"], captions)  # the same series requests, the same model
    with sqlite3.connect(output) as connection:
        connection.execute("""DELETE FROM captions WHERE tile_id = 'r1_c1' AND "interval" = 1""")
    job = Job(rasters=tuple(RasterInput.from_source(str(path)) for path in town), dates=LABELS, output=str(output),
              backend_urls=(run["url"],))
    summary = run_job(job, Feedback())
    assert summary.error is None, summary.error
    assert summary.already_done == 8 and summary.written == 1  # only the missing interval of r1_c1
    (timeline,) = rows(output, "SELECT intervals FROM history WHERE tile_id = 'r1_c1'")
    assert timeline == (2,)


def test_repeated_runs_into_other_files_get_distinct_layer_names(
    plugin: CCExpertPlugin, run: dict, tmp_path: Path
) -> None:
    before, after = run["layers"][0], run["layers"][1]
    params = CaptionParams(layer_ids=(before.id(), after.id()), dates=LABELS[:2], backend_url=run["url"],
                           output=str(tmp_path / "again.gpkg"), area_mode=CaptionParams().area_mode)
    for output in ("again.gpkg", "and_again.gpkg"):
        task = plugin.start(replace(params, output=str(tmp_path / output)))
        wait_until(lambda task=task: task not in plugin.tasks, "a run")
    titles = {layer.name() for layer in QgsProject.instance().mapLayers().values()}
    assert {f"CCExpert {LABELS[0]}→{LABELS[1]}", f"CCExpert {LABELS[0]}→{LABELS[1]} (2)"} <= titles
    for layer in [shown for shown in QgsProject.instance().mapLayers().values() if "again" in shown.source()]:
        QgsProject.instance().removeMapLayer(layer.id())


def render(layers: list, extent: QgsRectangle, size: QSize, time_range: QgsDateTimeRange | None = None) -> QImage:
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(layers[0].crs())
    settings.setExtent(extent)
    settings.setOutputSize(size)
    settings.setBackgroundColor(QColor("white"))
    if time_range is not None:
        settings.setIsTemporal(True)
        settings.setTemporalRange(time_range)
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def test_screenshots_of_the_map_the_attribute_table_and_the_temporal_controller(
    run: dict, controller: QgsTemporalControllerWidget, qgis_canvas
) -> None:
    captions, changes = project_layer(TITLE), project_layer(f"{TITLE} — changes")
    rasters = list(reversed(run["layers"]))  # each shows in its own time: 2021's only on its day
    frame = QgsDateTimeRange(at("2021-06-15"), at("2021-06-16"), True, False)  # 2018→2021, over the 2021 image
    extent = captions.extent().buffered(8)
    image = render([changes, captions, *rasters], extent, QSize(900, 900), frame)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert image.save(str(SCREENSHOTS / "plugin-result-map.png"))

    cache = QgsVectorLayerCache(captions, 100)
    table = QgsAttributeTableModel(cache)
    table.loadLayer()
    ordered = QgsAttributeTableFilterModel(qgis_canvas, table)
    config = captions.attributeTableConfig()
    ordered.sort(config.sortExpression(), config.sortOrder())  # what the attribute table dialog does on opening
    view = QgsAttributeTableView()
    view.setModel(ordered)
    view.resize(1330, 420)
    widths = {"tile_id": 65, "interval": 75, "date_before": 110, "date_after": 110, "caption": 400,
              "change_detected": 140, "change_kind": 110, "confidence": 100, "status": 100}
    for index, field in enumerate(captions.fields()):
        if field.name() in widths:
            view.setColumnWidth(index, widths[field.name()])
        else:
            view.setColumnHidden(index, True)
    first = ordered.data(ordered.index(0, captions.fields().indexOf("change_detected")), Qt.ItemDataRole.DisplayRole)
    assert str(first).lower() in ("true", "1")  # changed tiles first
    assert view.grab().save(str(SCREENSHOTS / "plugin-attribute-table.png"))
    del view, ordered, table, cache

    navigation = controller.temporalController()
    navigation.setNavigationMode(type(navigation.navigationMode()).Animated)
    navigation.setCurrentFrameNumber(3)  # 2019-06-15 to 2020-06-15: years apart, one-year frames
    current = navigation.dateTimeRangeForFrameNumber(navigation.currentFrameNumber())
    assert (current.begin(), current.end()) == (at("2019-06-15"), at("2020-06-15"))
    controller.resize(1100, 110)
    panel = controller.grab().toImage()
    frame_image = render([changes, captions, *rasters], extent, QSize(1100, 1100), current)  # over 2018's image
    composite = QImage(1100, 1100 + panel.height(), QImage.Format.Format_RGB32)
    composite.fill(QColor("white"))
    painter = QPainter(composite)
    painter.drawImage(0, 0, frame_image)
    painter.drawImage(0, 1100, panel)
    painter.end()
    assert composite.save(str(SCREENSHOTS / "plugin-temporal.png"))
