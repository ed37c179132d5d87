"""The plugin's area on QgsGeometry (GEOS): the same tiles as the core's shapely area on the shared cases of
tests/area_cases.json (holes, touching edges, a multipolygon, a bow-tie repaired, refusals), and clear messages for
an invalid polygon or a layer without CRS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)

from qgis_plugin.area import polygons_in_crs, tile_area
from qgis_plugin.errors import CaptionRunError
from qgis_plugin.job import run_job
from qgis_plugin.params import AreaMode, CaptionParams, job_from_params
from qgis_plugin.shared_modules import grid as tiling

from conftest import REPO, Feedback
from rasters import ORIGIN, write_pair

CASES = json.loads((REPO / "tests" / "area_cases.json").read_text(encoding="utf-8"))
UTM = QgsCoordinateReferenceSystem("EPSG:32631")


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda case: case["name"].split(":")[0])
def test_the_plugin_selects_the_tiles_the_core_selects(case: dict, qgis_app) -> None:
    spec = CASES["grid"]
    grid = tiling.TileGrid(spec["width"], spec["height"], tuple(spec["transform"]), spec["tile_size"],
                           spec["overlap"])
    polygons = tuple(tuple(tuple(map(tuple, ring)) for ring in polygon) for polygon in case["polygons"])
    notes: list[str] = []
    if "refused" in case:
        with pytest.raises(CaptionRunError, match=case["refused"]) as refused:
            tile_area(polygons, notes.append)
        assert str(refused.value).startswith("polygon 1 of the area is not a valid polygon")
        return
    ids = {tile.tile_id for tile in grid.tiles(tile_area(polygons, notes.append))}
    assert ids == set(case["tiles"])
    repaired = case.get("repaired")
    assert notes == ([] if repaired is None else [
        f"warning: polygon 1 of the area is not a valid polygon ({repaired['reason']}); it was repaired (makeValid) "
        f"into {repaired['polygons']} polygon{'s' * (repaired['polygons'] != 1)}"
    ])


def test_runs_of_footprints_are_answered_as_each_footprint_would_be(qgis_app) -> None:
    """The predicate answers runs of tiles at once where their box is inside or outside the area: on a disc with
    a hole over 4,900 tiles, that gives what testing each tile on its own gives."""
    grid = tiling.TileGrid(7000, 7000, (0.0, 1.0, 0.0, 7000.0, 0.0, -1.0), 100)
    centre = QgsGeometry.fromPointXY(QgsPointXY(3500, 3500))
    disc = centre.buffer(3000, 32).difference(centre.buffer(1000, 32))
    area = tile_area((tuple(tuple((p.x(), p.y()) for p in ring) for ring in disc.asPolygon()),), [].append)
    one_by_one = set()
    for tile in grid.tiles():
        x0, y0, x1, y1 = grid.bounds(tile)
        if disc.intersects(QgsGeometry.fromRect(QgsRectangle(x0 + 1e-6, y0 + 1e-6, x1 - 1e-6, y1 - 1e-6))):
            one_by_one.add(tile.tile_id)
    selected = {tile.tile_id for tile in grid.tiles(area)}
    assert selected == one_by_one and 0 < len(selected) < len(grid.tiles())


def _layer(wkts: list[str], crs: str) -> QgsVectorLayer:
    layer = QgsVectorLayer(f"Polygon?crs={crs}", "parcels", "memory")
    features = []
    for wkt in wkts:
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromWkt(wkt))
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    return layer


def test_a_layer_without_crs_is_refused_clearly(qgis_app) -> None:
    layer = _layer(["POLYGON((0 0, 1 0, 1 1, 0 1, 0 0))"], "EPSG:4326")
    layer.setCrs(QgsCoordinateReferenceSystem())
    with pytest.raises(CaptionRunError, match="the layer 'parcels' has no CRS"):
        polygons_in_crs((f.geometry() for f in layer.getFeatures()), layer.crs(), UTM,
                        QgsProject.instance().transformContext(), "the layer 'parcels'")


def _run(tmp_path: Path, project: QgsProject, layer: QgsVectorLayer) -> tuple[str, list[str]]:
    """A run over the layer's polygons, to the point where it would first ask the backend (there is none)."""
    tmp_path.mkdir()
    before, after = write_pair(tmp_path, size=256)
    rasters = [QgsRasterLayer(str(path), path.stem, "gdal") for path in (before, after)]
    for added in (*rasters, layer):
        project.addMapLayer(added)
    params = CaptionParams(layer_ids=(rasters[0].id(), rasters[1].id()), area_mode=AreaMode.LAYER,
                           area_layer_id=layer.id(), output=str(tmp_path / "out.gpkg"),
                           backend_url="http://127.0.0.1:9")
    job = job_from_params(params, project, rasters[0].extent(), UTM, "")
    notes = Feedback(canceled=True)  # the client does not wait between retries for a backend that is not there
    summary = run_job(job, notes)
    assert not (tmp_path / "out.gpkg").exists()
    # The feedback is canceled from the start, so the message says "Canceled": the error says where it stopped.
    return summary.error or summary.message(), notes.messages


def test_an_invalid_polygon_in_the_area_layer_is_repaired_with_a_note_or_refused(
    tmp_path: Path, project: QgsProject
) -> None:
    x0, y0 = ORIGIN
    bow_tie = f"POLYGON(({x0} {y0 - 200}, {x0 + 200} {y0}, {x0 + 200} {y0 - 200}, {x0} {y0}, {x0} {y0 - 200}))"
    message, notes = _run(tmp_path / "bow-tie", project, _layer([bow_tie], "EPSG:32631"))
    assert any(n.startswith("warning: polygon 1 of the area is not a valid polygon (self-intersection at")
               and n.endswith("into 2 polygons") for n in notes), notes
    assert "backend" in message  # the run went on past the area, to the (missing) backend
    project.removeAllMapLayers()
    outside_hole = (f"POLYGON(({x0} {y0 - 50}, {x0 + 50} {y0 - 50}, {x0 + 50} {y0}, {x0} {y0}, {x0} {y0 - 50}),"
                    f"({x0 + 100} {y0 - 200}, {x0 + 150} {y0 - 200}, {x0 + 150} {y0 - 150}, {x0 + 100} {y0 - 150},"
                    f"{x0 + 100} {y0 - 200}))")
    message, _ = _run(tmp_path / "hole", project, _layer([outside_hole], "EPSG:32631"))
    assert message.startswith("polygon 1 of the area is not a valid polygon (hole lies outside shell at")
    assert "would change what it covers" in message and "\n" not in message

