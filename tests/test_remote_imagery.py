"""Imagery where analysts have it: ``caption-region`` and ``export-dataset`` read COGs over HTTP (served on
127.0.0.1 by bench/range_server.py, which answers range requests and counts them) and STAC items pointing at them,
exactly as they read the same files on disk.

What is shown: the same pixels, captions and GeoPackage as a run on the local files, in at most two requests per
tile and date for a COG tiled at the run's tile size; a STAC item pair (file or URL) dated by its items; a server
that drops the connections of part of a file marks those tiles failed and the run goes on, and a rerun completes
it; credentials (a signed query string, a header GDAL takes from the environment) are used and never written; a
URL that does not answer at the start is one line, exit 2, nothing written; outputs are never URLs, and a local
input among remote ones is still never overwritten. The captioning engine is the region tests' FakeEngine (no
model), whose captions follow the pixels it is given.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from range_files import RangeFiles, serve

import ccexpert_cli as cli

from geo_fixtures import FakeEngine, write_pair

TILE = 64
#: Tiles of the served pair: 256 px a side, 4 × 4 tiles of 64 px.
TILES = 16
SECRET = "s3cr3t-signature"
TOKEN = "Bearer t0ken-from-the-environment"


def write_cog(source: Path, target: Path, block: int) -> Path:
    """``source`` as a cloud-optimised GeoTIFF with ``block`` px internal tiles (and overviews), uncompressed: where
    each block lies in the file then follows from its size alone."""
    rasterio.shutil.copy(source, target, driver="COG", blocksize=block, compress="NONE")
    return target


def block_offset(path: Path, row: int, col: int = 0) -> int:
    """Where in the file the full-resolution block at (``row``, ``col``) starts."""
    with rasterio.open(path) as dataset:
        return int(dataset.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))


@pytest.fixture(scope="module")
def cogs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A before/after pair as COGs tiled at the run's tile size, and STAC items for them (one per date: a
    'visual' asset beside a thumbnail, relative hrefs)."""
    folder = tmp_path_factory.mktemp("cogs")
    before, after = write_pair(tmp_path_factory.mktemp("plain"), size=256)
    write_cog(before, folder / "before.tif", TILE)
    write_cog(after, folder / "after.tif", TILE)
    for name, day in (("before", "2016-05-12"), ("after", "2018-06-01")):
        item = stac_item(f"town_{name}", f"{day}T10:30:00Z", {
            "visual": {"href": f"./{name}.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                       "roles": ["visual"]},
            "thumbnail": {"href": f"./{name}.jpg", "type": "image/jpeg", "roles": ["thumbnail"]},
        })
        (folder / f"{name}.json").write_text(json.dumps(item))
    (folder / "notes.tif").write_text("a text file named .tif\n" * 100)
    return folder


def stac_item(item_id: str, when: str | None, assets: dict, **properties: object) -> dict:
    """A STAC 1.0 Item over the test area (longitude/latitude of the UTM 31N pair)."""
    ring = [[2.14, 43.6], [2.15, 43.6], [2.15, 43.61], [2.14, 43.61], [2.14, 43.6]]
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id,
        "geometry": {"type": "Polygon", "coordinates": [ring]}, "bbox": [2.14, 43.6, 2.15, 43.61],
        "properties": {"datetime": when, **properties}, "links": [], "assets": assets,
    }


@pytest.fixture()
def engines(monkeypatch: pytest.MonkeyPatch) -> list[FakeEngine]:
    """Each run's engine (a FakeEngine), in the order the runs load them."""
    made: list[FakeEngine] = []

    def load(*args: object) -> FakeEngine:
        made.append(FakeEngine())
        return made[-1]

    monkeypatch.setattr("ccexpert_core.geo.engine.load_model_engine", load)
    return made


@pytest.fixture()
def server(request: pytest.FixtureRequest, cogs: Path) -> RangeFiles:
    return serve(request, cogs)


def caption(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(["caption-region", "--tile-size", str(TILE), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def pair_args(before: str, after: str, out: Path, *more: str) -> list[str]:
    return ["--before", before, "--after", after, "--out", str(out), *more]


def written(out: Path) -> dict[str, list[tuple]]:
    """What a run's GeoPackage holds, its write times left out: the features, the stored options, the thumbnails."""
    with sqlite3.connect(f"file:{out}?mode=ro", uri=True) as connection:
        def rows(table: str, order: str) -> list[tuple]:
            columns = [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')]
            kept = ", ".join(f'"{c}"' for c in columns if c not in ("fid", "created_at"))
            return connection.execute(f'SELECT {kept} FROM "{table}" ORDER BY {order}').fetchall()

        return {
            "captions": rows("captions", 'tile_id, "interval"'),
            "options": rows("ccexpert_run_options", "key"),
            "thumbnails": rows("ccexpert_thumbnails", 'tile_id, "interval"'),
        }


def seen_pixels(engine: FakeEngine) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The pixels the engine was given, by tile."""
    return dict(zip(engine.captioned_ids, engine.pairs))


def same_pixels(first: FakeEngine, second: FakeEngine) -> bool:
    one, two = seen_pixels(first), seen_pixels(second)
    return one.keys() == two.keys() and all(
        np.array_equal(one[k][0], two[k][0]) and np.array_equal(one[k][1], two[k][1]) for k in one
    )


def test_cogs_over_http_are_captioned_as_the_same_files_on_disk(
    cogs: Path, server: RangeFiles, engines: list[FakeEngine], tmp_path: Path, capsys,
) -> None:
    local, remote = tmp_path / "local.gpkg", tmp_path / "remote.gpkg"
    assert caption(capsys, *pair_args(str(cogs / "before.tif"), str(cogs / "after.tif"), local))[0] == 0
    code, stdout, stderr = caption(
        capsys, *pair_args(f"{server.url}/before.tif", f"/vsicurl/{server.url}/after.tif", remote))
    assert code == 0, stderr
    assert f"{TILES} captioned" in stdout
    assert same_pixels(engines[0], engines[1])
    assert written(remote) == written(local)  # the names recorded are the files' names, as for local files
    for name in ("before.tif", "after.tif"):
        # Opening (the file's size and header) and one range for each row of tiles read together: a COG tiled at
        # the run's tile size costs at most two requests per tile and date, here far fewer.
        assert 0 < server.requests(name) <= 2 * TILES, server.stats()


def test_a_stac_item_pair_is_captioned_with_the_items_dates(
    cogs: Path, server: RangeFiles, engines: list[FakeEngine], tmp_path: Path, capsys,
) -> None:
    local, from_items = tmp_path / "local.gpkg", tmp_path / "items.gpkg"
    dated = ["--date", f"2016-05-12={cogs / 'before.tif'}", "--date", f"2018-06-01={cogs / 'after.tif'}"]
    assert caption(capsys, *dated, "--out", str(local))[0] == 0
    # The items as URLs (their assets' relative hrefs then are URLs too), without dates: the items give them.
    code, _, stderr = caption(
        capsys, "--date", f"{server.url}/before.json", "--date", f"{server.url}/after.json", "--out", str(from_items))
    assert code == 0, stderr
    assert f"the STAC item town_before's asset 'visual': {server.url}/before.tif, dated 2016-05-12" in stderr
    assert written(from_items) == written(local)
    assert same_pixels(engines[0], engines[1])
    # A date given with an item must be the item's (or hold it): 2016 holds 2016-05-12, 2017 does not.
    code, _, stderr = caption(capsys, "--date", f"2016={server.url}/before.json", "--date",
                              f"2017={server.url}/after.json", "--out", str(tmp_path / "wrong.gpkg"))
    assert code == 2 and stderr.splitlines()[-1] == (
        "ccexpert caption-region: error: --date 2017: the STAC item town_after is dated 2018-06-01, not 2017: give its "
        "date, or leave the date out to take the item's")
    assert not (tmp_path / "wrong.gpkg").exists()


def test_a_local_stac_item_reads_the_asset_asked_for_over_http(cogs: Path, server: RangeFiles, engines,
                                                               tmp_path: Path, capsys) -> None:
    """An item saved from a catalogue, its assets on the server: no visual asset, two rasters (bands)."""
    items = []
    for name, day in (("before", "2016-05-12"), ("after", "2018-06-01")):
        assets = {key: {"href": f"{server.url}/{name}.tif", "type": "image/tiff", "roles": ["data"]}
                  for key in ("B04", "B03")}
        item = tmp_path / f"{name}_item.json"
        item.write_text(json.dumps(stac_item(name, None, assets, start_datetime=f"{day}T00:00:00Z",
                                             end_datetime=f"{day[:7]}-28T00:00:00Z")))
        items.append(str(item))
    out = tmp_path / "out.gpkg"
    code, _, stderr = caption(capsys, *pair_args(*items, out))
    assert code == 2 and stderr.count("\n") == 1
    assert "has no visual asset and 2 raster assets: choose one with --stac-asset NAME" in stderr
    assert "B04 (data), B03 (data)" in stderr and not out.exists()
    code, _, stderr = caption(capsys, *pair_args(*items, out, "--stac-asset", "B04"))
    assert code == 0, stderr
    # Dated by what each item's span has in common (its month); the asset's file name is what the layer records.
    assert [row[:2] for row in written(out)["options"] if row[0] == "dates"] == [
        ("dates", "2016-05=before.tif;2018-06=after.tif")]


def test_a_server_that_drops_connections_fails_those_tiles_and_a_rerun_completes(
    cogs: Path, server: RangeFiles, engines: list[FakeEngine], tmp_path: Path, capsys,
) -> None:
    local, remote = tmp_path / "local.gpkg", tmp_path / "remote.gpkg"
    assert caption(capsys, *pair_args(str(cogs / "before.tif"), str(cogs / "after.tif"), local))[0] == 0
    # Every request for the part of after.tif that holds its third row of tiles is dropped, however often it is
    # retried: the tiles read with it fail, the others are captioned.
    server.fail("after.tif", offset=block_offset(cogs / "after.tif", row=2))
    args = pair_args(f"{server.url}/before.tif?sig={SECRET}", f"{server.url}/after.tif?sig={SECRET}", remote)
    code, stdout, stderr = caption(capsys, *args)
    assert code == 3, stderr
    assert SECRET not in stderr  # GDAL names the file it failed to read with its query string: not said
    statuses = [status for (status,) in sqlite3.connect(remote).execute("SELECT status FROM captions")]
    assert len(statuses) == TILES and 0 < statuses.count("failed") < TILES
    assert server.stats()["dropped"] > 0
    assert "could not be read: AFTER (" in stderr and f"failed (kept as 'failed' in {remote})" in stderr
    server.heal()
    code, stdout, stderr = caption(capsys, *args)
    assert code == 0, stderr
    assert f"({TILES - statuses.count('failed')} done before" in stdout
    assert written(remote) == written(local)


def test_credentials_are_used_to_read_and_never_written(cogs: Path, request: pytest.FixtureRequest, engines,
                                                        tmp_path: Path, capsys, monkeypatch) -> None:
    """A server that wants a signed query string and a header (which GDAL takes from the environment)."""
    private = serve(request, cogs, "--require-query", f"sig={SECRET}", "--require-header", f"Authorization: {TOKEN}")
    out, report = tmp_path / "out.gpkg", tmp_path / "report.html"
    def args(attempt: int) -> list[str]:  # GDAL remembers what a URL answered: each attempt asks its own
        return pair_args(f"{private.url}/before.tif?sig={SECRET}&attempt={attempt}",
                         f"{private.url}/after.tif?sig={SECRET}&attempt={attempt}", out, "--report", str(report))

    code, _, stderr = caption(capsys, *args(1))
    assert code == 2 and stderr.splitlines()[-1].startswith("ccexpert caption-region: error: BEFORE raster")
    assert "HTTP response code: 403" in stderr and "credentials in the environment" in stderr
    assert SECRET not in stderr and not out.exists()
    monkeypatch.setenv("GDAL_HTTP_HEADERS", f"Authorization: {TOKEN}")
    code, stdout, stderr = caption(capsys, *args(2))
    assert code == 0, stderr
    assert f"BEFORE is read from {private.url}/before.tif; what its address holds beyond the path" in stderr
    for text in (out.read_bytes(), report.read_bytes(), stdout.encode(), stderr.encode()):
        assert SECRET.encode() not in text and TOKEN.encode() not in text
    assert f"{private.url}/before.tif".encode() in report.read_bytes()  # the report says where, less the secret


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("case", ["nothing_answers", "not_found", "not_a_raster", "stac_item_not_found"])
def test_a_url_that_does_not_answer_at_the_start_is_one_line_and_exit_2(
    cogs: Path, server: RangeFiles, engines, tmp_path: Path, capsys, case: str,
) -> None:
    before, after = f"{server.url}/before.tif", f"{server.url}/after.tif"
    message = {
        "nothing_answers": "Could not connect to server", "not_found": "HTTP response code: 404",
        "not_a_raster": "the server answered, but not with a raster GDAL knows",
        "stac_item_not_found": "the STAC item http://127.0.0.1:",
    }[case]
    if case == "nothing_answers":
        after = f"http://127.0.0.1:{_closed_port()}/after.tif"
    elif case == "not_found":
        after = f"{server.url}/missing.tif"
    elif case == "not_a_raster":
        after = f"/vsicurl/{server.url}/notes.tif"
    else:
        after = f"{server.url}/gone.json"
    out = tmp_path / "out.gpkg"
    code, _, stderr = caption(capsys, *pair_args(before, after, out))
    assert code == 2, stderr
    assert stderr.startswith("ccexpert caption-region: error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr
    assert not out.exists() and not engines


def test_outputs_are_never_urls_and_a_local_input_among_remote_ones_is_never_overwritten(
    cogs: Path, server: RangeFiles, engines, tmp_path: Path, capsys,
) -> None:
    local_before = tmp_path / "before.tif"
    local_before.write_bytes((cogs / "before.tif").read_bytes())
    kept = local_before.read_bytes()
    remote_after = f"{server.url}/after.tif"
    refusals = {
        "--out": ["--out", f"{server.url}/out.gpkg"],
        "--report": ["--out", str(tmp_path / "o.gpkg"), "--report", "/vsis3/bucket/report.html"],
        "BEFORE": ["--out", str(local_before)],
    }
    for name, outputs in refusals.items():
        code, _, stderr = caption(capsys, "--before", str(local_before), "--after", remote_after, *outputs)
        assert code == 2 and stderr.count("\n") == 1 and name in stderr, stderr
    assert local_before.read_bytes() == kept and not engines
    # A local file that merely has the remote raster's name is no input: writing it is fine.
    code, _, stderr = caption(capsys, "--before", str(local_before), "--after", remote_after,
                              "--out", str(tmp_path / "o.gpkg"), "--report", str(tmp_path / "after.tif"))
    assert code == 0, stderr


def test_export_dataset_reads_the_runs_rasters_again_by_their_urls(
    cogs: Path, server: RangeFiles, engines, tmp_path: Path, capsys,
) -> None:
    out = tmp_path / "remote.gpkg"
    urls = (f"{server.url}/before.tif", f"{server.url}/after.tif")
    assert caption(capsys, *pair_args(*urls, out))[0] == 0
    exported = {}
    for how, rasters in (("local", [str(cogs / "before.tif"), str(cogs / "after.tif")]), ("remote", urls)):
        folder = tmp_path / how
        code = cli.main(["export-dataset", "--captions", str(out), "--before", rasters[0], "--after", rasters[1],
                         "--out", str(folder), "--include-unreviewed"])
        assert code == 0, capsys.readouterr().err
        exported[how] = {path.relative_to(folder): path.read_bytes() for path in sorted(folder.glob("[AB]/*.png"))}
    assert len(exported["remote"]) == 2 * TILES and exported["remote"] == exported["local"]
