"""Areas on shapely: the shared cases of tests/area_cases.json (the QGIS suite holds the plugin to the same), repairs
noted or refused, GeoJSON read from any CRS, and every kind of bad GeoJSON as one clear line — through the command
too: exit 2, no traceback, nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from rasterio.crs import CRS
from rasterio.warp import transform

import ccexpert_cli as cli
from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo.area import area_from_polygons
from ccexpert_core.geo.area_file import read_area_file
from ccexpert_core.geo.grid import TileGrid, pixel_to_geo

from geo_fixtures import ORIGIN, FakeEngine, write_pair

CASES = json.loads((Path(__file__).parent / "area_cases.json").read_text(encoding="utf-8"))
SPEC = CASES["grid"]
GRID = TileGrid(SPEC["width"], SPEC["height"], tuple(SPEC["transform"]), SPEC["tile_size"], SPEC["overlap"])
#: The cases' coordinates are read as this CRS when they are written to GeoJSON files.
UTM = CRS.from_epsg(32631)


def named(polygons: list[list[list[list[float]]]]) -> list[tuple[str, shapely.Polygon]]:
    return [(f"polygon {i} of the area", shapely.Polygon(p[0], p[1:])) for i, p in enumerate(polygons, 1)]


def tile_ids(grid: TileGrid, area) -> set[str]:
    return {tile.tile_id for tile in grid.tiles(area)}


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda case: case["name"].split(":")[0])
def test_the_shared_cases(case: dict) -> None:
    notes: list[str] = []
    if "refused" in case:
        with pytest.raises(CCExpertError, match=case["refused"]) as refused:
            area_from_polygons(named(case["polygons"]), notes.append)
        assert str(refused.value).startswith("polygon 1 of the area is not a valid polygon")
        return
    assert tile_ids(GRID, area_from_polygons(named(case["polygons"]), notes.append)) == set(case["tiles"])
    repaired = case.get("repaired")
    assert notes == ([] if repaired is None else [
        f"warning: polygon 1 of the area is not a valid polygon ({repaired['reason']}); it was repaired (make_valid) "
        f"into {repaired['polygons']} polygon{'s' * (repaired['polygons'] != 1)}"
    ])


def test_a_triangle_takes_the_tiles_it_crosses_and_not_those_its_diagonal_touches() -> None:
    x0, y0 = GRID.transform[0], GRID.transform[3]
    triangle = [(x0, y0), (x0 + 400, y0), (x0, y0 - 400)]  # its diagonal runs through tile corners
    area = area_from_polygons([("the triangle", shapely.Polygon(triangle))], print)
    assert {(t.row, t.col) for t in GRID.tiles(area)} == {(r, c) for r in range(4) for c in range(4) if r + c <= 3}


def test_a_small_polygon_on_a_rotated_raster_selects_its_tile() -> None:
    angle = np.radians(30)
    gt = (1000.0, np.cos(angle), -np.sin(angle), 2000.0, np.sin(angle), np.cos(angle))
    grid = TileGrid(200, 200, gt, 100)
    tile = grid.tiles()[3]
    cx, cy = pixel_to_geo(gt, tile.x + 50, tile.y + 50)
    square = shapely.box(cx - 1, cy - 1, cx + 1, cy + 1)
    assert tile_ids(grid, area_from_polygons([("the square", square)], print)) == {tile.tile_id}


def test_repairs_that_keep_the_meaning_are_noted() -> None:
    x0, y0 = GRID.transform[0], GRID.transform[3]
    notes: list[str] = []
    # A square with a zero-width spike into the next tile: the spike is dropped (r0_c1 is not taken).
    spike = [(x0 + 10, y0 - 10), (x0 + 90, y0 - 10), (x0 + 90, y0 - 50), (x0 + 150, y0 - 50), (x0 + 90, y0 - 50),
             (x0 + 90, y0 - 90), (x0 + 10, y0 - 90)]
    # A hole that crosses itself: both of its lobes stay holes.
    outer = [(x0, y0 - 100), (x0 + 200, y0 - 100), (x0 + 200, y0 - 300), (x0, y0 - 300)]
    bow_tie_hole = [(x0 + 10, y0 - 110), (x0 + 190, y0 - 290), (x0 + 190, y0 - 110), (x0 + 10, y0 - 290)]
    area = area_from_polygons(
        [("the spike", shapely.Polygon(spike)), ("the ring", shapely.Polygon(outer, [bow_tie_hole]))], notes.append
    )
    assert tile_ids(GRID, area) == {"r0_c0", "r1_c0", "r1_c1", "r2_c0", "r2_c1"}
    assert notes[0].startswith("warning: the spike is not a valid polygon (") and notes[0].endswith("into 1 polygon")
    assert notes[1] == (
        f"warning: the ring is not a valid polygon (self-intersection at ({x0 + 100:g}, {y0 - 200:g})); it was "
        "repaired (make_valid) into 1 polygon"
    )


def test_holes_that_overlap_would_become_area_and_are_refused() -> None:
    outer = [(0, 0), (100, 0), (100, 100), (0, 100)]
    holes = [[(10, 10), (60, 10), (60, 60), (10, 60)], [(40, 40), (90, 40), (90, 90), (40, 90)]]
    with pytest.raises(CCExpertError, match=r"would change what it covers by \d+% of it"):
        area_from_polygons([("the parcel", shapely.Polygon(outer, holes))], print)


# --- GeoJSON files ---------------------------------------------------------------------------------------------

def feature(geometry: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": "Feature", "properties": {}, "geometry": geometry}


def collection(*geometries: dict[str, Any] | None, crs: Any = None) -> dict[str, Any]:
    document: dict[str, Any] = {"type": "FeatureCollection", "features": [feature(g) for g in geometries]}
    if crs is not None:
        document["crs"] = crs
    return document


def utm_member() -> dict[str, Any]:
    return {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32631"}}


def write(folder: Path, document: Any, name: str = "area.geojson") -> Path:
    path = folder / name
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return path


def to_lonlat(polygon: list[list[list[float]]]) -> list[list[list[float]]]:
    rings = []
    for ring in polygon:
        xs, ys = transform(UTM, "OGC:CRS84", [p[0] for p in ring], [p[1] for p in ring])
        rings.append([[x, y] for x, y in zip(xs, ys)])
    return rings


@pytest.mark.parametrize("in_lonlat", [False, True], ids=["crs member", "longitude-latitude"])
def test_geojson_files_select_the_shared_cases_tiles(tmp_path: Path, in_lonlat: bool) -> None:
    for n, case in enumerate(c for c in CASES["cases"] if "tiles" in c):
        polygons = [to_lonlat(p) for p in case["polygons"]] if in_lonlat else case["polygons"]
        geometry = ({"type": "Polygon", "coordinates": polygons[0]} if len(polygons) == 1
                    else {"type": "MultiPolygon", "coordinates": polygons})
        path = write(tmp_path, collection(geometry, crs=None if in_lonlat else utm_member()), f"case{n}.geojson")
        assert tile_ids(GRID, read_area_file(path, UTM, print)) == set(case["tiles"]), case["name"]


def test_geometries_without_area_are_left_out_with_a_note(tmp_path: Path) -> None:
    square = [[[1010, 1910], [1090, 1910], [1090, 1990], [1010, 1990], [1010, 1910]]]
    document = collection({"type": "Point", "coordinates": [1300, 1700]}, None,
                          {"type": "GeometryCollection", "geometries": [
                              {"type": "Polygon", "coordinates": square},
                              {"type": "LineString", "coordinates": [[1000, 1600], [1400, 2000]]}]},
                          crs=utm_member())
    notes: list[str] = []
    path = write(tmp_path, document)
    assert tile_ids(GRID, read_area_file(path, UTM, notes.append)) == {"r0_c0"}
    assert notes == [f"warning: the area file {path}: 1 LineString, 1 Point left out (an area is made of polygons)"]


def square_at(x: float, y: float, size: float = 0.001) -> list[list[list[float]]]:
    return [[[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]]


def polygon(coordinates: Any) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": coordinates}


RING = [[3.0, 45.0], [3.001, 45.0], [3.001, 45.001], [3.0, 45.001]]
#: Bad area files, and what their one line says (or the parts of it).
BAD_FILES: dict[str, tuple[Any, str | tuple[str, ...]]] = {
    "string coordinate": (collection(polygon([[[3.0, 45.0], ["3.001", 45.0], *RING[2:], RING[0]]])),
                          'feature 1, ring 1, position 2: coordinates must be finite numbers, not "3.001"'),
    "null coordinate": (collection(polygon([[RING[0], [3.001, None], *RING[2:], RING[0]]])),
                        "position 2: coordinates must be finite numbers, not null"),
    "NaN coordinate": ('{"type": "Polygon", "coordinates": [[[3.0, 45.0], [NaN, 45.0], [3.001, 45.001], [3.0, 45.0]]]}',
                       "ring 1, position 2: coordinates must be finite numbers, not NaN"),
    "infinite coordinate": (('{"type": "Polygon", "coordinates": [[[3.0, 45.0], [3.1, -Infinity], [3.1, 45.1], '
                             '[3.0, 45.0]]]}'), "coordinates must be finite numbers, not -Infinity"),
    "boolean coordinate": (collection(polygon([[RING[0], [True, 45.0], *RING[2:], RING[0]]])), "not true"),
    "position of one number": (collection(polygon([[RING[0], [3.0], *RING[2:], RING[0]]])),
                               "position 2: a position must be [x, y], not [3.0]"),
    "ring too small": (collection(polygon([[RING[0], RING[1], RING[0]]])),
                       "ring 1 has 3 positions: a ring needs at least 4 (three corners and the first again)"),
    "a hole too small": (collection(polygon([[*RING, RING[0]], []])), "ring 2 has 0 positions"),
    "rings not a list": (collection(polygon("abc")), 'a Polygon\'s coordinates must be a list of rings, not "abc"'),
    "multipolygon not a list": (collection({"type": "MultiPolygon", "coordinates": 4}),
                                "a MultiPolygon's coordinates must be a list of polygons, not 4"),
    "crs a string": ({**collection(polygon([[*RING, RING[0]]])), "crs": "EPSG:4326"},
                     ('the crs member must be like {"type": "name", "properties": {"name": "EPSG:32631"}}, as GDAL '
                      'and QGIS write it, not "EPSG:4326"')),
    "crs without properties": (collection(polygon([[*RING, RING[0]]]), crs={"type": "name"}),
                               ('the crs member must be like', 'not {"type": "name"}')),
    "crs without a name": (collection(polygon([[*RING, RING[0]]]), crs={"type": "name", "properties": {}}),
                           "the crs member must be like"),
    "crs of another form": (collection(polygon([[*RING, RING[0]]]), crs={"type": "EPSG", "properties": {"code": 4326}}),
                            "the crs member must be like"),
    "crs unknown": (collection(polygon([[*RING, RING[0]]]), crs={"type": "name", "properties": {"name": "EPSG:1"}}),
                    "names a CRS that is not known: EPSG:1"),
    "empty collection": (collection(), "has no Polygon or MultiPolygon: it holds no geometry"),
    "empty geometry collection": ({"type": "GeometryCollection", "geometries": []}, "it holds no geometry"),
    "only null geometries": (collection(None, None), "it holds no geometry"),
    "only empty polygons": (collection(polygon([]), {"type": "MultiPolygon", "coordinates": []}),
                            "its polygons are empty"),
    "only points": (collection({"type": "Point", "coordinates": [3, 45]}, {"type": "Point", "coordinates": [3, 46]}),
                    "it holds only geometries without area (2 Points)"),
    "unknown type": (collection({"type": "Polygn", "coordinates": []}),
                     'feature 1 has the type "Polygn", which GeoJSON does not know'),
    "features not a list": ({"type": "FeatureCollection", "features": {}}, "features must be a list, not {}"),
    "a feature that is not one": ({"type": "FeatureCollection", "features": [[1, 2]]},
                                  "feature 1 is not a GeoJSON Feature: [1, 2]"),
    "not an object": ([1, 2, 3], "is not a GeoJSON object: [1, 2, 3]"),
    "not JSON": ("{'type': 'Polygon'}", "is not readable GeoJSON"),
    "metres without a crs member": (collection(polygon(square_at(431000, 4829000, 10))),
                                    ("has coordinates such as (431000, 4829000), which are not longitude, latitude, "
                                     "yet its CRS is OGC:CRS84, GeoJSON's default (no crs member)")),
    "latitude beyond the pole": (collection(polygon(square_at(3, 95))), "which are not longitude, latitude"),
    "outside the projection's domain": (collection(polygon(square_at(93, 0))),
                                        "feature 1 lies outside where the rasters' CRS (EPSG:32631) is defined"),
    # Checked in the rasters' CRS, where tiles are cut (corners on a line in longitude, latitude are not in UTM).
    "corners on a line": (collection(polygon([[[431000, 4829000], [431010, 4829010], [431020, 4829020],
                                               [431000, 4829000]]]), crs=utm_member()),
                          ("is not a valid polygon (", ") and has no area left once repaired")),
    "a hole outside": (collection(polygon([[*RING, RING[0]], [[3.01, 45.01], [3.011, 45.01], [3.011, 45.011],
                                                              [3.01, 45.01]]])),
                       ("is not a valid polygon (hole lies outside shell at (", "would change what it covers")),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_geojson_is_one_clear_line(tmp_path: Path, case: str) -> None:
    document, message = BAD_FILES[case]
    path = write(tmp_path, document)
    with pytest.raises(CCExpertError) as error:
        read_area_file(path, UTM, print)
    said = str(error.value)
    assert all(part in said for part in ((message,) if isinstance(message, str) else message)), said
    assert "\n" not in said and str(path) in said


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(CCExpertError, match="area file not found"):
        read_area_file(tmp_path / "nope.geojson", UTM, print)


# --- through the command ---------------------------------------------------------------------------------------

def caption_region(capsys: pytest.CaptureFixture, tmp_path: Path, area: Path) -> tuple[int, str, Path]:
    before, after = write_pair(tmp_path, size=96)
    out = tmp_path / "out.gpkg"
    code = cli.main(["caption-region", "--before", str(before), "--after", str(after), "--out", str(out),
                     "--tile-size", "32", "--area", str(area)])
    return code, capsys.readouterr().err, out


@pytest.mark.parametrize("case", [
    "string coordinate", "null coordinate", "NaN coordinate", "crs a string", "crs without properties",
    "empty collection", "outside the projection's domain", "a hole outside", "not JSON",
])
def test_the_command_says_what_is_wrong_with_the_area_in_one_line(tmp_path: Path, capsys, monkeypatch,
                                                                  case: str) -> None:
    monkeypatch.setattr("ccexpert_core.geo.engine.load_model_engine", lambda *a: pytest.fail("model loaded"))
    document, message = BAD_FILES[case]
    code, stderr, out = caption_region(capsys, tmp_path, write(tmp_path, document))
    assert code == 2
    assert stderr.startswith("ccexpert caption-region: error: the area file ") and stderr.count("\n") == 1, stderr
    assert all(part in stderr for part in ((message,) if isinstance(message, str) else message))
    assert "Traceback" not in stderr
    assert not out.exists()


def test_the_command_refuses_an_area_far_from_the_rasters_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("ccexpert_core.geo.engine.load_model_engine", lambda *a: pytest.fail("model loaded"))
    # Longitude 60° is 57° from the rasters' UTM zone: PROJ places it, thousands of kilometres away.
    code, stderr, out = caption_region(capsys, tmp_path, write(tmp_path, collection(polygon(square_at(60, 45)))))
    assert code == 2 and stderr.count("\n") == 1 and "lies outside the rasters" in stderr
    assert not out.exists()


def test_the_command_repairs_a_bow_tie_and_says_so(tmp_path: Path, capsys, monkeypatch) -> None:
    engine = FakeEngine()
    monkeypatch.setattr("ccexpert_core.geo.engine.load_model_engine", lambda *a: engine)
    x0, y0 = ORIGIN  # the rasters: 96 m from here, tiles of 32 m
    bow_tie = [[x0, y0 - 96], [x0 + 96, y0], [x0 + 96, y0 - 96], [x0, y0], [x0, y0 - 96]]
    path = write(tmp_path, collection(polygon([bow_tie]), crs=utm_member()))
    code, stderr, _ = caption_region(capsys, tmp_path, path)
    assert code == 0, stderr
    assert (f"warning: the area file {path}, feature 1 is not a valid polygon (self-intersection at "
            f"({x0 + 48:.12g}, {y0 - 48:.12g})); it was repaired (make_valid) into 2 polygons") in stderr
    # The two triangles: all of the outer columns, the middle column only where they meet (the centre tile).
    assert sorted(i for call in engine.calls for i in call) == sorted(
        ["r0_c0", "r1_c0", "r2_c0", "r1_c1", "r0_c2", "r1_c2", "r2_c2"]
    )
