"""``POST /v1/series``: tiles of several dates, each image through the vision tower once, each interval captioned
as the pairs route would; a bad series refused with 422 naming the field; and ``caption-region --date`` through a
real backend writes what a local series run writes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import ccexpert_cli as cli
from backend.app import create_app
from backend.state import ServerSettings
from ccexpert_core import protocol
from ccexpert_core.defaults import DEMO_MODEL_DIR

from backend_server import encode, multipart, random_image, shared_server


@pytest.fixture(scope="module")
def demo_captioner():
    from ccexpert_core.inference import Captioner

    if not (DEMO_MODEL_DIR / "config.json").is_file():
        pytest.skip("the demo model is not shipped in this checkout")
    return Captioner.load(DEMO_MODEL_DIR, device="cpu")


@pytest.fixture(scope="module")
def client(demo_captioner):
    with TestClient(create_app(demo_captioner, ServerSettings(ui=False))) as client:
        yield client


def series_request(tiles: list[list[bytes]], intervals: str | None = None, ids: list[str] | None = None) -> dict:
    files = [(protocol.FIELD_IMAGE, (f"i{n}.png", data, "image/png"))
             for n, data in enumerate(image for images in tiles for image in images)]
    data: dict[str, object] = {protocol.FIELD_DATES: str(len(tiles[0]))}
    if intervals:
        data[protocol.FIELD_INTERVALS] = intervals
    if ids:
        data[protocol.FIELD_TILE_IDS] = ids
    return {"files": files, "data": data}


def test_a_series_is_captioned_as_its_pairs_with_each_image_encoded_once(client, demo_captioner) -> None:
    tiles = [[encode(random_image(10 * t + d, (96, 96))) for d in range(4)] for t in range(2)]
    seen: list[int] = []
    tower = demo_captioner.model.model.vision_tower
    handle = tower.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    try:
        response = client.post(protocol.SERIES_PATH, **series_request(tiles, "0-1,1-2,2-3,0-3", ["a", "b"]))
    finally:
        handle.remove()
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["tile_id"] for item in body["results"]] == ["a", "b"]
    assert sum(seen) == 2 * 4  # tiles × dates, not tiles × 4 intervals × 2 images
    pairs = [(images[i], images[j]) for images in tiles for i, j in ((0, 1), (1, 2), (2, 3), (0, 3))]
    as_pairs = client.post(protocol.CAPTIONS_PATH, **multipart(pairs)).json()["results"]
    in_series = [answer for item in body["results"] for answer in item["intervals"]]
    assert [a["caption"] for a in in_series] == [a["caption"] for a in as_pairs]
    assert [a["confidence"] for a in in_series] == pytest.approx([a["confidence"] for a in as_pairs], abs=1e-4)
    info = client.get(protocol.INFO_PATH).json()
    assert info["series"] is True


@pytest.mark.parametrize(
    "count, dates, intervals, field",
    [
        (6, "1", None, protocol.FIELD_DATES),
        (5, "3", None, protocol.FIELD_IMAGE),
        (6, "3", "0-3", protocol.FIELD_INTERVALS),
        (6, "3", "2-1", protocol.FIELD_INTERVALS),
        (6, "3", "zero-one", protocol.FIELD_INTERVALS),
        (6, "2.0", None, protocol.FIELD_DATES),
        (6, " 3", None, protocol.FIELD_DATES),
        (6, "3", "0-1,0-1", protocol.FIELD_INTERVALS),
        (6, "3", "²-³", protocol.FIELD_INTERVALS),
    ],
)
def test_a_bad_series_is_refused_naming_its_field(client, count, dates, intervals, field) -> None:
    image = encode(random_image(1, (32, 32)))
    request = series_request([[image] * count], intervals)
    request["data"][protocol.FIELD_DATES] = dates
    response = client.post(protocol.SERIES_PATH, **request)
    assert response.status_code == 422
    assert response.json()["field"] == field


def test_tiles_asking_for_some_intervals_of_their_dates_are_captioned_as_those_pairs(client) -> None:
    # What caption-region sends for a tile whose last date is missing or already done: 3 dates, interval 0-1 only.
    tiles = [[encode(random_image(20 * t + d, (64, 64))) for d in range(3)] for t in range(2)]
    response = client.post(protocol.SERIES_PATH, **series_request(tiles, "0-1"))
    assert response.status_code == 200, response.text
    in_series = [item["intervals"] for item in response.json()["results"]]
    as_pairs = client.post(protocol.CAPTIONS_PATH, **multipart([(t[0], t[1]) for t in tiles])).json()["results"]
    assert [len(items) for items in in_series] == [1, 1]
    assert [items[0]["caption"] for items in in_series] == [item["caption"] for item in as_pairs]


def test_a_request_repeating_an_interval_is_refused_before_any_image_is_read(client) -> None:
    image = encode(random_image(2, (64, 64)))
    decoded = client.get(protocol.INFO_PATH).json()["batching"]["stages"]["decode"]["calls"]
    response = client.post(protocol.SERIES_PATH, **series_request([[image, image]], ",".join(["0-1"] * 1500)))
    assert response.status_code == 422 and response.json()["field"] == protocol.FIELD_INTERVALS
    assert "repeated" in response.json()["detail"]
    assert client.get(protocol.INFO_PATH).json()["batching"]["stages"]["decode"]["calls"] == decoded


def test_more_pairs_than_a_request_may_hold_are_refused_naming_the_count(client) -> None:
    limit = client.get(protocol.INFO_PATH).json()["limits"]["max_pairs_per_request"]
    image = encode(random_image(3, (32, 32)))
    every = ",".join(f"{i}-{j}" for i in range(9) for j in range(i + 1, 9))  # 36 intervals of 9 dates
    response = client.post(protocol.SERIES_PATH, **series_request([[image] * 9], every))
    assert 36 > limit and response.status_code == 422
    assert response.json()["error"] == protocol.ERROR_TOO_MANY_PAIRS and "36 pairs" in response.json()["detail"]


def test_a_partial_series_among_concurrent_pair_requests_fails_no_one(request) -> None:
    # Used to fail its whole model batch (71 of 100 concurrent pair requests got a 500): every request succeeds now.
    from concurrent.futures import ThreadPoolExecutor

    import requests

    if not (DEMO_MODEL_DIR / "config.json").is_file():
        pytest.skip("the demo model is not shipped in this checkout")
    server = shared_server(request, "open-demo", ["--no-ui"])
    pair = multipart([(encode(random_image(7, (64, 64))), encode(random_image(8, (64, 64))))])
    tile = [encode(random_image(30 + d, (64, 64))) for d in range(3)]

    def send(index: int) -> int:
        if index == 10:
            return requests.post(server.url + protocol.SERIES_PATH, **series_request([tile], "0-1"), timeout=300).status_code
        return requests.post(server.url + protocol.CAPTIONS_PATH, **pair, timeout=300).status_code

    before = requests.get(server.url + protocol.INFO_PATH, timeout=30).json()["internal_errors"]
    with ThreadPoolExecutor(21) as pool:
        statuses = list(pool.map(send, range(21)))
    assert statuses == [200] * 21
    assert requests.get(server.url + protocol.INFO_PATH, timeout=30).json()["internal_errors"] == before


def _half_width_copy(source: Path, target: Path) -> Path:
    """``source``'s left half as a GeoTIFF of its own: a date that covers half the area."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(source) as dataset:
        window = Window(0, 0, dataset.width // 2, dataset.height)
        profile = {**dataset.profile, "width": window.width, "transform": dataset.window_transform(window)}
        with rasterio.open(target, "w", **profile) as out:
            out.write(dataset.read(window=window))
            out.update_tags(**dataset.tags())
    return target


@pytest.mark.parametrize("last_date", ["whole", "half"])
def test_caption_region_series_through_a_backend_writes_what_a_local_run_writes(
    tmp_path: Path, request, capsys, last_date: str
) -> None:
    from ccexpert_core.geo.synthetic import write_demo_series

    if not (DEMO_MODEL_DIR / "config.json").is_file():
        pytest.skip("the demo model is not shipped in this checkout")
    server = shared_server(request, "open-demo", ["--no-ui"])
    paths = write_demo_series(tmp_path / "series", ("2016", "2018", "2021"), scenes=2, seed=5)
    if last_date == "half":
        # The tiles beyond the last date need interval 0-1 only: sent as 3-date series asking for 0-1 (that request
        # used to fail its whole model batch with a 500, and the run said "0 captioned").
        paths[2] = _half_width_copy(paths[2], tmp_path / "series" / "half_2021.tif")
    dates = [f"--date={label}={path}" for label, path in zip(("2016", "2018", "2021"), paths)]

    def rows(out: Path) -> list[tuple]:
        with sqlite3.connect(out) as connection:
            return connection.execute(
                'SELECT tile_id, "interval", status, caption, round(confidence, 4), date_before, date_after, '
                "change_kind, model_id FROM captions ORDER BY tile_id, \"interval\"").fetchall()

    assert cli.main(["caption-region", *dates, "--out", str(tmp_path / "local.gpkg")]) == 0
    assert cli.main(["caption-region", *dates, "--out", str(tmp_path / "remote.gpkg"), "--backend", server.url]) == 0
    capsys.readouterr()
    local = rows(tmp_path / "local.gpkg")
    assert rows(tmp_path / "remote.gpkg") == local
    assert len(local) == 4 * 2
    captioned = sum(row[2] == "captioned" for row in local)
    assert captioned == (8 if last_date == "whole" else 6)  # the right column's 1-2 interval has no last date
    with sqlite3.connect(tmp_path / "remote.gpkg") as connection:
        assert connection.execute("SELECT count(*) FROM history").fetchone()[0] == 4
