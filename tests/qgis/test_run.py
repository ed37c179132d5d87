"""Full runs through the plugin's own path (params → preflight → QgsTask → GeoPackage → styled layer), against a
real backend: expected tiles and captions, resume after cancel, a backend that stops, a wrong token, Processing."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import Qgis, QgsApplication, QgsProject, QgsRuleBasedRenderer, QgsVectorLayer

from qgis_plugin import classFactory
from qgis_plugin.backend_client import pairs_body
from qgis_plugin.params import CaptionParams
from qgis_plugin.plugin import CCExpertPlugin
from qgis_plugin.task import CaptionTask

from conftest import (
    CCEXPERT,
    MASTER_PASSWORD,
    TOKEN,
    Backend,
    add_raster,
    build_plugin_zip,
    wait_until,
)
from layer_style import style_facts
from rasters import ORIGIN, write_pair
from standin import start_standin

SIZE, TILE = 256, 128  # 2 × 2 tiles
TILE_IDS = ["r0_c0", "r0_c1", "r1_c0", "r1_c1"]


@pytest.fixture(scope="module")
def plugin(qgis_iface, auth_ready) -> Iterator[CCExpertPlugin]:
    """The plugin from the repository, started as QGIS starts it (once: its Processing provider id is unique)."""
    started = classFactory(qgis_iface)
    started.initGui()
    yield started
    started.unload()


@pytest.fixture(autouse=True)
def fresh_messages(qgis_iface) -> None:
    """Each test reads only its own messages."""
    qgis_iface.messageBar().clear_messages()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A before/after GeoTIFF pair, 256 px on the same 1 m grid."""
    return write_pair(tmp_path_factory.mktemp("scene"), SIZE)


def make_params(
    project: QgsProject, scene: tuple[Path, Path], backend_url: str, output: Path, token_id: str, **changes
) -> CaptionParams:
    """Parameters as the dialog would collect them, the token's authentication configuration included."""
    before = add_raster(project, scene[0], "before")
    after = add_raster(project, scene[1], "after")
    params = CaptionParams(
        layer_ids=(before.id(), after.id()), dates=("2019", "2021"),
        tile_size=TILE, backend_url=backend_url, auth_config_id=token_id, output=str(output), batch_size=2,
    )
    return replace(params, **changes)


def run_to_end(plugin: CCExpertPlugin, params: CaptionParams) -> CaptionTask:
    """Start a run as the dialog's Run button does and wait until its result is shown."""
    task = plugin.start(params)
    assert task is not None, plugin.iface.messageBar().get_messages(Qgis.Critical)
    wait_until(lambda: task not in plugin.tasks, "the captioning task")
    return task


def rows(output: Path, layer: str = "captions") -> list[tuple]:
    """(tile_id, status, caption, change_detected, confidence, before_source, after_source, model_id) by tile."""
    with sqlite3.connect(output) as connection:
        return connection.execute(
            f'SELECT tile_id, status, caption, change_detected, confidence, before_source, after_source, model_id '
            f'FROM "{layer}" ORDER BY "row", "col"'
        ).fetchall()


def same_rows(first: list[tuple], second: list[tuple]) -> bool:
    """Rows equal but for confidences within 1e-4: with batches in flight the backend may group the same pairs into
    other model batches, and a left-padded row's log-probabilities differ in the last float digits."""
    return len(first) == len(second) and all(
        a[:4] == b[:4] and a[5:] == b[5:] and a[4] == pytest.approx(b[4], abs=1e-4) for a, b in zip(first, second)
    )


def backend_captions(backend: Backend, scene: tuple[Path, Path], batches: list[list[str]]) -> dict[str, str]:
    """What the backend says for each tile's raw pixels (read from the files, encoded by GDAL), batch by batch."""
    before, after = (gdal.Open(str(path)).ReadAsArray() for path in scene)
    captions = {}
    for batch in batches:
        pairs = []
        for tile_id in batch:
            row, col = (int(part[1:]) for part in tile_id.split("_"))
            window = np.s_[:, row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE]
            pairs.append((_png(before[window]), _png(after[window])))
        built = pairs_body(pairs, batch)
        request = urllib.request.Request(
            backend.url + built.path, built.body, {"Content-Type": built.content_type, "Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=120) as answer:
            captions.update({item["tile_id"]: item["caption"] for item in json.loads(answer.read())["results"]})
    return captions


def _png(bands: np.ndarray) -> bytes:
    name = f"/vsimem/{uuid.uuid4().hex}.png"
    memory = gdal.GetDriverByName("MEM").Create("", bands.shape[2], bands.shape[1], 3, gdal.GDT_Byte)
    for index in range(3):
        memory.GetRasterBand(index + 1).WriteArray(bands[index])
    gdal.GetDriverByName("PNG").CreateCopy(name, memory)
    handle = gdal.VSIFOpenL(name, "rb")
    data = gdal.VSIFReadL(1, gdal.VSIStatL(name).size, handle)
    gdal.VSIFCloseL(handle)
    gdal.Unlink(name)
    return data


@pytest.fixture(scope="module")
def full_run(
    plugin: CCExpertPlugin, backend: Backend, scene: tuple[Path, Path], token_id: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, list[str]]]:
    """One complete run into a fresh GeoPackage: (output, message bar successes); its layer stays in the project
    until the module ends (the tests reading it come first)."""
    project = QgsProject.instance()
    plugin.iface.messageBar().clear_messages()
    output = tmp_path_factory.mktemp("full") / "changes.gpkg"
    run_to_end(plugin, make_params(project, scene, backend.url, output, token_id))
    yield output, list(plugin.iface.messageBar().get_messages(Qgis.Success))
    project.removeAllMapLayers()


def test_full_run_writes_every_tile_with_the_backends_caption(
    full_run, backend: Backend, scene: tuple[Path, Path]
) -> None:
    output, successes = full_run
    written = rows(output)
    assert [r[0] for r in written] == TILE_IDS
    assert {r[1] for r in written} == {"captioned"}
    # The first batch sent again, from the files' own pixels: the backend says the same of it.
    expected = backend_captions(backend, scene, [TILE_IDS[:2]])
    assert {r[0]: r[2] for r in written[:2]} == expected
    assert all(0.0 <= r[4] <= 1.0 and r[3] in (0, 1) for r in written)
    assert {r[5:] for r in written} == {("before.tif", "after.tif", backend.info()["model_id"])}
    assert len(successes) == 1  # one line: what the run did, where, by which model ("Show more" has the rest)
    assert successes[0].startswith("CCExpert 2019→2021:4 captioned in changes.gpkg, by ")  # the bar: "title: text"


def test_full_run_adds_the_styled_layer_with_footprints_on_the_raster_grid(full_run) -> None:
    output, _ = full_run
    layers = QgsProject.instance().mapLayersByName("CCExpert 2019→2021")
    assert len(layers) == 1
    layer = layers[0]
    assert isinstance(layer, QgsVectorLayer) and layer.featureCount() == 4
    assert isinstance(layer.renderer(), QgsRuleBasedRenderer)
    assert [rule.label() for rule in layer.renderer().rootRule().children()] == [
        "changed", "unchanged", "skipped (no data)", "failed (run again)", "reviewed"]
    assert layer.labelsEnabled() and layer.displayExpression() == '"caption"'
    assert layer.crs().authid() == "EPSG:32631"
    extent = layer.extent()
    assert (extent.xMinimum(), extent.yMaximum(), extent.width(), extent.height()) == (431000, 4829000, SIZE, SIZE)
    first = next(layer.getFeatures('"tile_id" = \'r0_c1\''))
    assert first.geometry().boundingBox().toRectF().getRect() == (431000 + TILE, 4829000 - TILE, TILE, TILE)
    with sqlite3.connect(output) as connection:  # the style travels with the file
        assert connection.execute("SELECT useAsDefault FROM layer_styles").fetchone() == (1,)


def caption_region(scene: tuple[Path, Path], output: Path, backend: Backend, folder: Path) -> str:
    """Run ``ccexpert caption-region`` on the scene into ``output`` through the test backend; its stderr."""
    token_file = folder / "token.txt"
    token_file.write_text(TOKEN, encoding="utf-8")
    result = subprocess.run(
        [str(CCEXPERT), "caption-region", "--before", str(scene[0]), "--after", str(scene[1]), "--out", str(output),
         "--backend", backend.url, "--token-file", str(token_file), "--tile-size", str(TILE)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_caption_regions_geopackage_opens_in_qgis_with_the_plugins_style(
    full_run, backend: Backend, scene: tuple[Path, Path], tmp_path: Path
) -> None:
    output = tmp_path / "command.gpkg"
    caption_region(scene, output, backend, tmp_path)
    opened = QgsVectorLayer(f"{output}|layername=captions", "command", "ogr")  # styled by the file alone
    (shown,) = QgsProject.instance().mapLayersByName("CCExpert 2019→2021")
    assert opened.isValid() and opened.featureCount() == 4
    assert isinstance(opened.renderer(), QgsRuleBasedRenderer) and style_facts(opened) == style_facts(shown)


def test_caption_region_resumes_the_plugins_geopackage_with_nothing_left_to_do(
    full_run, backend: Backend, scene: tuple[Path, Path], tmp_path: Path
) -> None:
    output, _ = full_run
    stderr = caption_region(scene, output, backend, tmp_path)
    assert "4 already in" in stderr and "0 to do" in stderr
    assert len(rows(output)) == 4


def test_caption_region_rewrites_a_failed_tile_of_the_plugins_geopackage_and_keeps_its_spatial_index(
    full_run, backend: Backend, scene: tuple[Path, Path], tmp_path: Path
) -> None:
    output = tmp_path / "changes.gpkg"
    shutil.copy(full_run[0], output)
    dataset = gdal.OpenEx(str(output), gdal.OF_VECTOR | gdal.OF_UPDATE)
    dataset.ExecuteSQL("UPDATE captions SET status = 'failed', caption = NULL WHERE tile_id = 'r0_c0'")
    dataset = None  # GDAL 3.6 datasets close when released
    with sqlite3.connect(output) as connection:  # the plugin's GDAL made the R-tree and its triggers
        made = connection.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'rtree_captions_geom%'")
        assert made.fetchone()[0] > 1
    stderr = caption_region(scene, output, backend, tmp_path)
    assert "3 already in" in stderr and "1 to do" in stderr
    assert [row[:2] for row in rows(output)] == [(tile, "captioned") for tile in TILE_IDS]
    dataset = gdal.OpenEx(str(output), gdal.OF_VECTOR)
    indexed = dataset.ExecuteSQL("SELECT HasSpatialIndex('captions', 'geom')")
    assert indexed.GetNextFeature().GetField(0) == 1
    dataset.ReleaseResultSet(indexed)
    layer = dataset.GetLayerByName("captions")
    x, y = ORIGIN
    layer.SetSpatialFilterRect(x + 1, y - 2, x + 2, y - 1)  # inside tile r0_c0 only
    assert [feature["tile_id"] for feature in layer] == ["r0_c0"]
    dataset = None
    with sqlite3.connect(output) as connection:
        assert connection.execute("SELECT count(*) FROM rtree_captions_geom").fetchone()[0] == 4

def test_cancel_keeps_finished_tiles_and_a_second_run_completes_without_duplicates(
    plugin: CCExpertPlugin, project: QgsProject, scene: tuple[Path, Path], token_id: str, tmp_path: Path, request,
) -> None:
    # A stand-in that answers one request and holds the next: the cancel lands between batches, whatever the load.
    standin = start_standin(request, "--batch-s", "0", "--hold-after-requests", "1", python=sys.executable)
    output = tmp_path / "resumed.gpkg"
    # One request at a time (test_run_in_flight.py cancels with many open).
    params = make_params(project, scene, standin.url, output, token_id, batch_size=1, in_flight=1)
    task = plugin.start(params)
    wait_until(lambda: task.progress() > 0 and standin.stats()["held"] >= 1, "the first batch, the next held")
    task.cancel()
    wait_until(lambda: task not in plugin.tasks, "the canceled task to end")
    assert task.summary.canceled and task.summary.error is None
    kept = rows(output)
    assert 1 <= len(kept) < 4 and {r[1] for r in kept} == {"captioned"}
    assert any("Canceled" in m for m in plugin.iface.messageBar().get_messages(Qgis.Warning))

    standin.release()
    second = run_to_end(plugin, params)
    assert second.summary.already_done == len(kept) and second.summary.counts["captioned"] == 4 - len(kept)
    assert [r[0] for r in rows(output)] == TILE_IDS  # unique tile ids, all of them
    assert [r[:3] for r in rows(output)][: len(kept)] == [r[:3] for r in kept]  # finished tiles untouched
    shown = [layer for layer in project.mapLayers().values() if layer.source().startswith(str(output))]
    assert len(shown) == 1 and shown[0].featureCount() == 4  # refreshed, not added twice


def test_a_backend_that_stops_mid_run_ends_with_a_clear_message_and_keeps_finished_tiles(
    plugin: CCExpertPlugin, project: QgsProject, scene: tuple[Path, Path], token_id: str, tmp_path: Path, request,
) -> None:
    # It answers one request and holds the next until it is killed: it stops mid-run, whatever the load.
    doomed = start_standin(request, "--batch-s", "0", "--hold-after-requests", "1", python=sys.executable)
    output = tmp_path / "interrupted.gpkg"
    # One request at a time and a short retry budget (it stays down).
    params = make_params(project, scene, doomed.url, output, token_id, batch_size=1, in_flight=1,
                         retry_budget_s=2.0)
    task = plugin.start(params)
    wait_until(lambda: task.progress() > 0 and doomed.stats()["held"] >= 1, "the first batch, the next held")
    doomed.stop()
    wait_until(lambda: task not in plugin.tasks, "the task to give up")
    bar = plugin.iface.messageBar()
    said = bar.get_messages(Qgis.Warning) + bar.get_messages(Qgis.Critical)
    statuses = [r[1] for r in rows(output)]
    # The command's failure policy: a batch the backends failed is written as failed (a rerun retries it) and the run
    # goes on, stopping after three failed batches in a row; either way the analyst is told what failed.
    assert len(statuses) == 4 and statuses.count("captioned") >= 1 and statuses.count("failed") >= 1
    assert any("failed" in message and "run again" in message for message in said), said
    shown = [layer for layer in project.mapLayers().values() if layer.source().startswith(str(output))]
    assert len(shown) == 1 and shown[0].featureCount() == len(statuses)


def test_a_wrong_token_is_refused_with_a_clear_message(
    plugin: CCExpertPlugin, project: QgsProject, backend: Backend, scene: tuple[Path, Path], wrong_token_id: str,
    tmp_path: Path,
) -> None:
    output = tmp_path / "refused.gpkg"
    params = make_params(project, scene, backend.url, output, wrong_token_id)
    task = run_to_end(plugin, params)
    assert task.summary.written == 0
    errors = plugin.iface.messageBar().get_messages(Qgis.Critical)
    assert len(errors) == 1 and "refused the token (401)" in errors[0]
    assert not output.exists()


def test_rasters_that_do_not_overlap_are_refused_before_any_task(
    plugin: CCExpertPlugin, project: QgsProject, backend: Backend, scene: tuple[Path, Path], token_id: str,
    tmp_path: Path,
) -> None:
    far = tmp_path / "far.tif"
    gdal.Translate(str(far), str(scene[1]), outputBounds=[500000, 4100000, 500256, 4099744])
    params = make_params(project, (scene[0], far), backend.url, tmp_path / "none.gpkg", token_id)
    assert plugin.start(params) is None and not plugin.tasks
    errors = plugin.iface.messageBar().get_messages(Qgis.Critical)
    assert len(errors) == 1 and "do not overlap" in errors[0]


def test_an_after_raster_on_another_grid_is_aligned_with_a_notice(
    plugin: CCExpertPlugin, project: QgsProject, backend: Backend, scene: tuple[Path, Path], token_id: str,
    tmp_path: Path,
) -> None:
    degrees = tmp_path / "after_4326.tif"
    gdal.Warp(str(degrees), str(scene[1]), dstSRS="EPSG:4326")
    task = plugin.start(make_params(project, (scene[0], degrees), backend.url, tmp_path / "aligned.gpkg", token_id))
    task.cancel()  # the notice comes before the run: no need to caption
    wait_until(lambda: task not in plugin.tasks, "the canceled task to end")
    notices = plugin.iface.messageBar().get_messages(Qgis.Info)
    assert any("AFTER is aligned onto BEFORE's grid with bilinear resampling: CRS EPSG:4326 → EPSG:32631" in n
               for n in notices)


def test_the_processing_algorithm_gives_the_same_output(
    full_run, qgis_processing, backend: Backend, scene: tuple[Path, Path], token_id: str, tmp_path: Path
) -> None:
    import processing

    output, _ = full_run
    processed = tmp_path / "processed.gpkg"
    # The dialog remembers a series: its dates belong to its layers, not to the LAYERS given here.
    CaptionParams(dates=("2016", "2018", "2021")).save()
    result = processing.run("ccexpert:captionchanges", {
        "LAYERS": [str(scene[0]), str(scene[1])], "TILE_SIZE": TILE, "BATCH_SIZE": 2,
        "BACKEND_URL": backend.url, "AUTH_CONFIG": token_id, "OUTPUT": str(processed),
    })
    assert result["OUTPUT"] == str(processed) and result["CAPTIONED"] == 4 and result["FAILED"] == 0
    assert same_rows(rows(processed), rows(output)), (rows(processed), rows(output))
    with sqlite3.connect(processed) as connection:
        assert connection.execute("SELECT DISTINCT date_before, date_after FROM captions").fetchall() == [(None, None)]
    CaptionParams().save()
    with sqlite3.connect(output) as a, sqlite3.connect(processed) as b:
        geometries = 'SELECT geom FROM captions ORDER BY "row", "col"'
        assert a.execute(geometries).fetchall() == b.execute(geometries).fetchall()


def test_processing_names_its_layers_as_the_dialog_does(
    full_run, qgis_processing, backend: Backend, scene: tuple[Path, Path], token_id: str, tmp_path: Path
) -> None:
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    algorithm = QgsApplication.processingRegistry().createAlgorithmById("ccexpert:captionchanges")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    output = tmp_path / "named.gpkg"
    results, ok = algorithm.run({
        "LAYERS": [str(scene[0]), str(scene[1])], "DATES": "2019, 2021", "TILE_SIZE": TILE, "BATCH_SIZE": 2,
        "BACKEND_URL": backend.url, "AUTH_CONFIG": token_id, "OUTPUT": str(output),
    }, context, QgsProcessingFeedback())
    assert ok and results["CAPTIONED"] == 4
    loaded = {uri: details.name for uri, details in context.layersToLoadOnCompletion().items()}
    assert loaded == {f"{output}|layername=captions": "CCExpert 2019→2021"}  # not "captions"


def test_qgis_process_runs_the_algorithm_of_the_installed_zip(
    full_run, backend: Backend, scene: tuple[Path, Path], token_id: str, tmp_path: Path
) -> None:
    # Debian's /usr/bin/qgis_process wrapper passes --noversioncheck, which 3.22's binary refuses: call the binary.
    executable = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
    profile = tmp_path / "qgis-profile"
    with zipfile.ZipFile(build_plugin_zip(tmp_path)) as zipped:
        zipped.extractall(profile / "profiles" / "default" / "python" / "plugins")
    password = tmp_path / "master-password"
    password.write_text(MASTER_PASSWORD, encoding="utf-8")
    env = {
        **os.environ, "QGIS_CUSTOM_CONFIG_PATH": str(profile), "QGIS_AUTH_PASSWORD_FILE": str(password),
        # This session's authentication database, where the token's configuration is.
        "QGIS_AUTH_DB_DIR_PATH": str(Path(QgsApplication.qgisAuthDatabaseFilePath()).parent),
    }
    subprocess.run([executable, "plugins", "enable", "ccexpert_qgis"], env=env, check=True, capture_output=True)
    output, processed = full_run[0], tmp_path / "qgis_process.gpkg"
    ran = subprocess.run(
        [executable, "--json", "run", "ccexpert:captionchanges", "--", f"LAYERS={scene[0]}", f"LAYERS={scene[1]}",
         f"TILE_SIZE={TILE}", "BATCH_SIZE=2", f"BACKEND_URL={backend.url}", f"AUTH_CONFIG={token_id}",
         f"OUTPUT={processed}"],
        env=env, capture_output=True, text=True, check=False,
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert json.loads(ran.stdout)["results"]["CAPTIONED"] == 4
    assert same_rows(rows(processed), rows(output)), (rows(processed), rows(output))
