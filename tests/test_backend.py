"""The backend as a client sees it: a real ``ccexpert serve`` on 127.0.0.1 with a token file and small limits."""

from __future__ import annotations

import base64
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from ccexpert_core import protocol

from backend_server import (
    OTHER_TOKEN,
    TEST_LIMITS,
    TOKEN,
    Server,
    auth_server,
    bearer,
    encode,
    multipart,
    png_declaring,
    random_image,
    serve_command,
)
from serve_process import free_port, server_env

AUTH = bearer(TOKEN)
CONCURRENT_CLIENTS = 16


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Server:
    return auth_server(request, tiny_model_dir)


@pytest.fixture(scope="session")
def captioner(tiny_model_dir: Path):
    from ccexpert_core.inference import Captioner

    return Captioner.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def noise_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """One distinct pair per concurrent client."""
    return [(random_image(2 * i), random_image(2 * i + 1)) for i in range(CONCURRENT_CLIENTS)]


@pytest.fixture(scope="session")
def expected(captioner, noise_pairs):
    """The in-process Captioner's results for ``noise_pairs``: what the server must return."""
    return captioner.caption(noise_pairs, batch_size=CONCURRENT_CLIENTS)


def info(server: Server) -> protocol.InfoBody:
    response = requests.get(server.url + protocol.INFO_PATH, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def post_captions(server: Server, pairs: list[tuple[bytes, bytes]], tile_ids=None, headers=AUTH) -> requests.Response:
    return requests.post(
        server.url + protocol.CAPTIONS_PATH, headers=headers, timeout=300, **multipart(pairs, tile_ids)
    )


def assert_same(item: protocol.CaptionItem, result) -> None:
    assert item["caption"] == result.caption
    assert item["change_detected"] == result.change_detected
    # Batches of other sizes change float rounding a little; distinct pairs differ by far more than this.
    assert item["confidence"] == pytest.approx(result.confidence, rel=1e-4)


def test_health_needs_no_token(server: Server) -> None:
    response = requests.get(server.url + protocol.HEALTH_PATH, timeout=30)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model_loaded": True, "api_version": protocol.API_VERSION}


def test_info_describes_model_limits_and_batching(server: Server, captioner, tiny_model_dir: Path) -> None:
    body = info(server)
    # The folder's name and a fingerprint of its files: no path of the server (its name and note: test_backend_abuse).
    assert body["model_id"].startswith(tiny_model_dir.name + "@") and str(tiny_model_dir) not in body["model_id"]
    assert body["tile_size"] == captioner.tile_size == 384
    assert body["prompt"] == captioner.prompt
    assert (body["device"], body["dtype"]) == ("cpu", "float32")
    assert protocol.Limits.from_dict(body["limits"]) == TEST_LIMITS
    assert body["batching"]["max_batch"] == 16
    assert body["api_version"] == protocol.API_VERSION


def test_captions_equal_the_in_process_captioner(server: Server, captioner, tmp_path: Path) -> None:
    # Several formats, sizes and modes: the server must see the very pixels the in-process Captioner sees.
    gray = np.random.default_rng(7).integers(0, 256, (50, 70), dtype=np.uint8)
    ramp = np.broadcast_to(np.arange(384, dtype=np.uint8)[:, None, None] // 2, (384, 384, 3)).copy()  # compressible
    files = {
        "a.png": encode(random_image(100)),
        "b.jpg": encode(random_image(101, (100, 80)), "JPEG", quality=90),
        "c.png": encode(gray),
        "d.tif": encode(random_image(102, (80, 100)), "TIFF"),
        "e.png": encode(np.dstack([random_image(103), np.full((64, 64, 1), 200, np.uint8)])),
        "f.png": encode(ramp),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    names = [("a.png", "b.jpg"), ("c.png", "d.tif"), ("e.png", "f.png")]
    response = post_captions(server, [(files[b], files[a]) for b, a in names], tile_ids=["x", "y", "z"])
    assert response.status_code == 200, response.text
    body = response.json()
    local = captioner.caption([(tmp_path / b, tmp_path / a) for b, a in names])
    assert body["model_id"] == info(server)["model_id"]
    assert [item["tile_id"] for item in body["results"]] == ["x", "y", "z"]
    for item, result in zip(body["results"], local, strict=True):
        assert_same(item, result)


def test_concurrent_clients_share_batches_and_get_their_own_results(server: Server, noise_pairs, expected) -> None:
    before = info(server)["batching"]
    barrier = threading.Barrier(CONCURRENT_CLIENTS)
    responses: dict[int, requests.Response] = {}

    def client(index: int) -> None:
        pair = tuple(encode(image) for image in noise_pairs[index])
        barrier.wait()
        responses[index] = post_captions(server, [pair], tile_ids=[f"tile-{index}"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CONCURRENT_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in range(CONCURRENT_CLIENTS):
        assert responses[index].status_code == 200, responses[index].text
        [item] = responses[index].json()["results"]
        assert item["tile_id"] == f"tile-{index}"
        assert_same(item, expected[index])
    after = info(server)["batching"]
    assert after["pairs"] - before["pairs"] == CONCURRENT_CLIENTS
    # Fewer model batches than pairs: some batches held pairs of several requests.
    assert after["batches"] - before["batches"] < CONCURRENT_CLIENTS
    assert after["max_batch_size"] > 1


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        (bearer("wrong-token"), 401),
        ({"Authorization": "Basic Zm9vOmJhcg=="}, 401),
        (AUTH, 200),
        (bearer(OTHER_TOKEN), 200),
    ],
    ids=["none", "wrong", "other-scheme", "right", "second-token"],
)
def test_protected_routes_want_a_listed_token(server: Server, headers: dict[str, str], status: int) -> None:
    response = requests.get(server.url + protocol.INFO_PATH, headers=headers, timeout=30)
    assert response.status_code == status
    if status == 401:
        assert response.json()["error"] == protocol.ERROR_UNAUTHORIZED
        assert response.headers["WWW-Authenticate"] == protocol.AUTH_SCHEME
        # The captions route is guarded before any image is looked at.
        tiny = encode(random_image(0, (8, 8)))
        assert post_captions(server, [(tiny, tiny)], headers=headers).status_code == 401


def test_ui_wants_the_token_too(server: Server) -> None:
    page = server.url + protocol.UI_PATH + "/"
    refused = requests.get(page, timeout=30)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic")  # a browser shows its login prompt
    assert requests.get(page, headers=bearer("wrong"), timeout=30).status_code == 401
    assert requests.get(page, headers=AUTH, timeout=30).status_code == 200
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    assert requests.get(page, headers={"Authorization": f"Basic {basic}"}, timeout=30).status_code == 200


def _too_many_pairs() -> dict[str, object]:
    tiny = encode(random_image(0, (8, 8)))
    return multipart([(tiny, tiny)] * (TEST_LIMITS.max_pairs_per_request + 1))


def _endless_upload() -> Iterator[bytes]:
    """A well-formed multipart start whose one file part runs past the body limit (sent chunked)."""
    yield b'--xyz\r\nContent-Disposition: form-data; name="before"; filename="b.png"\r\n\r\n'
    for _ in range(TEST_LIMITS.max_body_bytes() // 1_000_000 + 2):
        yield b"x" * 1_000_000


def _good() -> bytes:
    return encode(random_image(1, (16, 16)))


# Each bad-input class, with the status and error code it must get (and never a 500).
BAD_REQUESTS = {
    "corrupt-image": (
        lambda: multipart([(b"\x89PNG\r\n\x1a\nnot really", _good())]),
        422,
        protocol.ERROR_INVALID_IMAGE,
    ),
    "truncated-png": (lambda: multipart([(_good(), encode(random_image(2))[:200])]), 422, protocol.ERROR_INVALID_IMAGE),
    "gif-not-accepted": (
        lambda: multipart([(encode(random_image(3, (16, 16)), "GIF"), _good())]),
        422,
        protocol.ERROR_INVALID_IMAGE,
    ),
    "empty-image": (lambda: multipart([(b"", _good())]), 422, protocol.ERROR_INVALID_IMAGE),
    "over-byte-limit": (
        # 400×400 noise PNG: ~480 kB, over 300 kB, though its 160,000 pixels are within the limit.
        lambda: multipart([(encode(random_image(4, (400, 400))), _good())]),
        413,
        protocol.ERROR_TOO_LARGE,
    ),
    "bomb-100000x100000": (
        lambda: multipart([(_good(), png_declaring(100_000, 100_000))]),
        413,
        protocol.ERROR_TOO_LARGE,
    ),
    "over-pixel-limit": (lambda: multipart([(png_declaring(1200, 1200), _good())]), 413, protocol.ERROR_TOO_LARGE),
    "too-many-pairs": (_too_many_pairs, 422, protocol.ERROR_TOO_MANY_PAIRS),
    "unequal-counts": (
        lambda: {"files": [("before", ("b", _good())), ("before", ("b", _good())), ("after", ("a", _good()))]},
        422,
        protocol.ERROR_INVALID_REQUEST,
    ),
    "tile-ids-mismatch": (lambda: multipart([(_good(), _good())], ["one", "two"]), 422, protocol.ERROR_INVALID_REQUEST),
    "no-after": (lambda: {"files": [("before", ("b", _good()))]}, 422, protocol.ERROR_INVALID_REQUEST),
    "empty-request": (lambda: {}, 422, protocol.ERROR_INVALID_REQUEST),
    "empty-multipart": (lambda: {"files": [("unrelated", ("x", b""))]}, 422, protocol.ERROR_INVALID_REQUEST),
    "json-instead-of-multipart": (lambda: {"json": {"before": [], "after": []}}, 422, protocol.ERROR_INVALID_REQUEST),
    "body-over-limit": (lambda: {"data": b"x" * (TEST_LIMITS.max_body_bytes() + 1)}, 413, protocol.ERROR_TOO_LARGE),
    "chunked-body-over-limit": (
        # No Content-Length: the limit is enforced while the body streams in.
        lambda: {"data": _endless_upload(), "headers": {**AUTH, "Content-Type": "multipart/form-data; boundary=xyz"}},
        413,
        protocol.ERROR_TOO_LARGE,
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_input_gets_its_4xx_with_a_json_reason(server: Server, case: str) -> None:
    make, status, code = BAD_REQUESTS[case]
    response = requests.post(server.url + protocol.CAPTIONS_PATH, **{"headers": AUTH, "timeout": 60, **make()})
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    assert body["detail"]
    # The last-resort handler (a logged 500) was never reached.
    assert info(server)["internal_errors"] == 0


def test_gradio_client_gets_the_same_caption(server: Server, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    before, after = tmp_path / "before.png", tmp_path / "after.png"
    before.write_bytes(encode(random_image(200)))
    after.write_bytes(encode(random_image(201)))
    client = Client(server.url + protocol.UI_PATH + "/", headers=AUTH, verbose=False, analytics_enabled=False)
    caption, changed, confidence = client.predict(
        handle_file(str(before)), handle_file(str(after)), api_name=protocol.UI_API_NAME
    )
    [item] = post_captions(server, [(before.read_bytes(), after.read_bytes())]).json()["results"]
    assert (caption, changed) == (item["caption"], item["change_detected"])
    assert confidence == pytest.approx(item["confidence"], rel=1e-4)


def test_openapi_documents_the_api(server: Server) -> None:
    schema = requests.get(server.url + "/openapi.json", timeout=30).json()
    assert {protocol.HEALTH_PATH, protocol.INFO_PATH, protocol.CAPTIONS_PATH} <= set(schema["paths"])
    post = schema["paths"][protocol.CAPTIONS_PATH]["post"]
    assert {"200", "401", "413", "422"} <= set(post["responses"])
    assert "multipart/form-data" in post["requestBody"]["content"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_documentation_pages_load_everything_from_the_backend_without_a_token(server: Server, page: str) -> None:
    html = requests.get(server.url + page, timeout=30).text
    sources = re.findall(r'(?:src|href)\s*=\s*"([^"]+)"', html) + re.findall(r"(?:src|href)\s*=\s*'([^']+)'", html)
    assets = [source for source in sources if source.endswith((".js", ".css"))]
    assert assets and all(source.startswith("/") for source in assets), sources  # nothing from a CDN
    for source in assets:
        response = requests.get(server.url + source, timeout=30)
        assert response.status_code == 200 and len(response.content) > 10_000, source


def test_refuses_to_listen_beyond_loopback_without_tokens(tiny_model_dir: Path) -> None:
    # Refused before the model loads or any socket opens: nothing ever listens on 0.0.0.0.
    result = subprocess.run(
        serve_command("--model", str(tiny_model_dir), "--host", "0.0.0.0", "--port", str(free_port())),
        capture_output=True,
        text=True,
        timeout=120,
        env=server_env(),
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in result.stderr
    assert "--token-file" in result.stderr and "--insecure-no-auth" in result.stderr


def test_server_survived_everything(server: Server) -> None:
    assert server.alive()
    assert info(server)["internal_errors"] == 0
