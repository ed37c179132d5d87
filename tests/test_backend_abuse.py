"""The backend under abuse: a real ``ccexpert serve`` (demo model, token, small limits) whose open-file limit is 1,024.

Half-open connections, stalled requests, bodies over the limit, ambiguous auth, 50 clients past the request timeout
and a flood of UI uploads: the backend keeps answering, refuses with the JSON error body, computes nothing for
nobody, gives its memory back and leaves no file behind. Tests run in file order against one server; the last one
stops it.
"""

from __future__ import annotations

import collections
import io
import json
import resource
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from ccexpert_core import protocol
from ccexpert_core.defaults import DEMO_MODEL_DIR
from ccexpert_core.model_card import DEMO_NOTE

from backend_server import (
    TEST_LIMITS,
    TOKEN,
    Server,
    auth_server,
    bearer,
    encode,
    multipart,
    random_image,
    start_server,
)

AUTH = bearer(TOKEN)
#: The common default soft and hard limit on open files; the server gets exactly this.
OPEN_FILE_LIMIT = 1024
HALF_OPEN = 1100
HEADER_TIMEOUT_S = 4
BODY_TIMEOUT_S = 4
REQUEST_TIMEOUT_S = 5
LOAD_CLIENTS = 50
LOAD_SECONDS = 10
MAX_BATCH = 16


def _limit_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILE_LIMIT, OPEN_FILE_LIMIT))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The demo model (the default) behind a token, TEST_LIMITS, short client timeouts, 1,024 open files at most."""
    if not (DEMO_MODEL_DIR / "config.json").is_file():
        pytest.skip("no demo model in ccexpert_core/demo_model: these tests need the default model to be it")
    folder = tmp_path_factory.mktemp("abuse")
    (folder / "tmp").mkdir()
    (folder / "tokens.txt").write_text(f"{TOKEN}\n", encoding="utf-8")
    options = {
        "--token-file": folder / "tokens.txt",
        "--max-pairs": TEST_LIMITS.max_pairs_per_request,
        "--max-image-bytes": TEST_LIMITS.max_image_bytes,
        "--max-image-pixels": TEST_LIMITS.max_image_pixels,
        "--max-batch": MAX_BATCH,
        "--header-timeout": HEADER_TIMEOUT_S,
        "--body-timeout": BODY_TIMEOUT_S,
        "--request-timeout": REQUEST_TIMEOUT_S,
    }
    started = start_server(
        [str(part) for option in options.items() for part in option],
        folder / "server.log",
        env={"TMPDIR": str(folder / "tmp")},  # where the UI's upload folder goes
        preexec_fn=_limit_open_files,
    )
    yield started
    started.stop()


def _address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def _info(server: Server) -> protocol.InfoBody:
    response = requests.get(server.url + protocol.INFO_PATH, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _answers(server: Server) -> None:
    health = requests.get(server.url + protocol.HEALTH_PATH, timeout=10)
    assert health.status_code == 200 and health.json()["model_loaded"] is True
    assert requests.get(server.url + protocol.INFO_PATH, headers=AUTH, timeout=10).status_code == 200


def _rss_mb(server: Server) -> float:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/PID/status")


def _read_until_closed(sockets: list[socket.socket], timeout_s: float) -> dict[socket.socket, bytes]:
    """What each socket received until the server closed it; sockets still open at the deadline are left out."""
    received = {sock: b"" for sock in sockets}
    closed: dict[socket.socket, bytes] = {}
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while len(closed) < len(sockets) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if data:
                    received[sock] += data
                else:
                    selector.unregister(sock)
                    closed[sock] = received[sock]
    return closed


def _response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def test_info_names_the_demo_model_and_no_server_path(server: Server) -> None:
    body = _info(server)
    assert body["model_name"] == "CCExpert demo model"  # the first heading of its model card
    assert body["model_note"] == DEMO_NOTE
    assert body["model_id"].startswith("demo_model@")
    text = json.dumps(body)
    assert str(DEMO_MODEL_DIR) not in text and str(DEMO_MODEL_DIR.parent) not in text
    image = encode(random_image(1, (32, 32)))
    captions = requests.post(
        server.url + protocol.CAPTIONS_PATH, headers=AUTH, timeout=60, **multipart([(image, image)])
    )
    assert captions.status_code == 200 and captions.json()["model_id"] == body["model_id"]


def test_a_model_folder_is_named_without_its_path(request: pytest.FixtureRequest, tiny_model_dir: Path) -> None:
    folder_server = auth_server(request, tiny_model_dir)
    body = _info(folder_server)
    # No model card and no hub name in its config: the folder's own name, and nothing above it.
    assert body["model_name"] == tiny_model_dir.name
    assert body["model_id"].startswith(tiny_model_dir.name + "@")
    assert body["model_note"] is None
    assert str(tiny_model_dir.parent) not in json.dumps(body)


def test_health_and_requests_answer_while_1100_half_open_connections_are_held(server: Server) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < HALF_OPEN + 200:
        pytest.skip(f"this test process may open {hard} files, not the {HALF_OPEN + 200} the test holds")
    resource.setrlimit(resource.RLIMIT_NOFILE, (HALF_OPEN + 200 if hard == resource.RLIM_INFINITY else hard, hard))
    log_before = server.log.stat().st_size
    sockets: list[socket.socket] = []
    try:
        for _ in range(HALF_OPEN):
            sock = socket.create_connection(_address(server), timeout=30)
            sock.sendall(b"GET /v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the end of the headers
            sockets.append(sock)
        for _ in range(5):  # meanwhile
            _answers(server)
        descriptors = len(list(Path(f"/proc/{server.process.pid}/fd").iterdir()))
        assert descriptors < OPEN_FILE_LIMIT
        # Each half-open connection is closed by the server: pushed out for a newer one, or at its header deadline
        # with a 408 once it has sent part of a request.
        closed = _read_until_closed(sockets, HEADER_TIMEOUT_S + 30)
        assert len(closed) == HALF_OPEN
        answered = [_response(raw) for raw in closed.values() if raw]
        assert answered, "none reached its header deadline: all were pushed out"
        for status, headers, raw_body in answered:
            assert status == 408 and headers["connection"] == "close"
            assert json.loads(raw_body)["error"] == protocol.ERROR_TIMEOUT
    finally:
        for sock in sockets:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    _answers(server)  # and after
    assert server.alive()
    log = server.log.read_bytes()[log_before:].decode("utf-8", "replace")
    assert "Traceback" not in log and "Too many open files" not in log
    assert len(log) < 16_000, f"the log grew by {len(log)} bytes:\n{log[-2000:]}"


def test_stalled_headers_and_bodies_get_408_and_are_closed(server: Server) -> None:
    stalled_head = socket.create_connection(_address(server), timeout=30)
    stalled_head.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
    stalled_body = socket.create_connection(_address(server), timeout=30)
    stalled_body.sendall(
        f"POST {protocol.CAPTIONS_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n{protocol.AUTH_HEADER}: Bearer {TOKEN}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 100000\r\n\r\n--xyz\r\n".encode()
    )
    closed = _read_until_closed([stalled_head, stalled_body], HEADER_TIMEOUT_S + BODY_TIMEOUT_S + 30)
    for sock, kind in ((stalled_head, "headers"), (stalled_body, "body")):
        assert sock in closed, f"the stalled {kind} connection is still open"
        status, _, body = _response(closed[sock])
        assert status == 408 and json.loads(body)["error"] == protocol.ERROR_TIMEOUT
        assert kind in json.loads(body)["detail"]
        sock.close()
    assert _info(server)["internal_errors"] == 0


def test_a_body_announced_over_the_limit_gets_413_before_it_is_sent(server: Server) -> None:
    with socket.create_connection(_address(server), timeout=30) as sock:
        sock.sendall(
            f"POST {protocol.CAPTIONS_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n{protocol.AUTH_HEADER}: Bearer {TOKEN}\r\n"
            f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {2 * 1024**3}\r\n\r\n--xyz".encode()
        )
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            raw += sock.recv(65536)
    status, headers, body = _response(raw)
    assert status == 413 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == protocol.ERROR_TOO_LARGE
    assert str(2 * 1024**3) in json.loads(body)["detail"]


def _chunked_file(megabytes: int) -> Iterator[bytes]:
    """A multipart body (sent chunked, no Content-Length) whose one file runs on for ``megabytes``."""
    yield b'--xyz\r\nContent-Disposition: form-data; name="before"; filename="b.png"\r\n\r\n'
    for _ in range(megabytes):
        yield b"x" * 1024 * 1024


def test_a_chunked_body_over_the_limit_gets_413(server: Server) -> None:
    response = requests.post(
        server.url + protocol.CAPTIONS_PATH,
        data=_chunked_file(100),
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=xyz"},
        timeout=120,
    )
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["error"] == protocol.ERROR_TOO_LARGE and "an uploaded file is over the limit" in body["detail"]
    assert _info(server)["internal_errors"] == 0


def test_two_authorization_headers_are_refused(server: Server) -> None:
    for tokens in ((TOKEN, "wrong"), ("wrong", TOKEN), (TOKEN, TOKEN)):
        with socket.create_connection(_address(server), timeout=30) as sock:
            sock.sendall(
                f"GET {protocol.INFO_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {tokens[0]}\r\nAuthorization: Bearer {tokens[1]}\r\n\r\n".encode()
            )
            raw = b""
            while not raw.rstrip().endswith(b"}"):
                raw += sock.recv(65536)
        status, _, body = _response(raw)
        assert status == 400 and json.loads(body)["error"] == protocol.ERROR_INVALID_REQUEST
        assert "Authorization headers" in json.loads(body)["detail"]


def test_bytes_that_are_not_http_get_a_json_400(server: Server) -> None:
    with socket.create_connection(_address(server), timeout=30) as sock:
        sock.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        [raw] = _read_until_closed([sock], 30).values()
    status, headers, body = _response(raw)
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == protocol.ERROR_INVALID_REQUEST


def test_a_multi_page_tiff_is_its_first_page(server: Server) -> None:
    pages = [Image.fromarray(random_image(seed, (96, 96))) for seed in (10, 11, 12)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    after = encode(random_image(20, (96, 96)))
    first_page = encode(np.asarray(pages[0]))
    tiff, png = (
        requests.post(server.url + protocol.CAPTIONS_PATH, headers=AUTH, timeout=60, **multipart([(before, after)]))
        for before in (buffer.getvalue(), first_page)
    )
    assert tiff.status_code == png.status_code == 200, tiff.text
    [from_tiff], [from_png] = tiff.json()["results"], png.json()["results"]
    assert from_tiff["caption"] == from_png["caption"]
    assert from_tiff["confidence"] == pytest.approx(from_png["confidence"], rel=1e-4)


def test_openapi_declares_what_is_refused(server: Server) -> None:
    schema = requests.get(server.url + "/openapi.json", timeout=30).json()
    operation = schema["paths"][protocol.CAPTIONS_PATH]["post"]
    content = operation["requestBody"]["content"]["multipart/form-data"]
    body = schema["components"]["schemas"][content["schema"]["$ref"].rsplit("/", 1)[1]]
    for name in (protocol.FIELD_BEFORE, protocol.FIELD_AFTER):
        images = body["properties"][name]
        assert images["minItems"] == 1 and images["maxItems"] == TEST_LIMITS.max_pairs_per_request
        assert images["items"]["minLength"] == 1  # an empty file is refused, and the schema says so
        assert f"1 to {TEST_LIMITS.max_image_bytes} bytes" in images["items"]["description"]
        assert content["encoding"][name]["contentType"] == "image/png, image/jpeg, image/tiff"
    assert "multi-page TIFF counts as its first page" in operation["description"]
    assert f"{TEST_LIMITS.max_image_pixels} pixels" in operation["description"]


@pytest.mark.slow
def test_50_clients_get_200_or_503_and_the_backend_gives_its_memory_back(server: Server) -> None:
    images = [encode(random_image(seed, (256, 256))) for seed in range(8)]
    warm_up = requests.post(
        server.url + protocol.CAPTIONS_PATH, headers=AUTH, timeout=60, **multipart([(images[0], images[1])])
    )
    assert warm_up.status_code == 200
    time.sleep(2)  # past the batcher's idle release
    start_mb = _rss_mb(server)
    before = _info(server)["batching"]
    outcomes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    stop = time.monotonic() + LOAD_SECONDS

    def client(index: int) -> None:
        with requests.Session() as session:
            sent = 0
            while time.monotonic() < stop:
                pair = (images[(index + sent) % 8], images[(index + sent + 1) % 8])
                sent += 1
                response = session.post(
                    server.url + protocol.CAPTIONS_PATH, headers=AUTH, timeout=60, **multipart([pair])
                )
                outcome = "200" if response.status_code == 200 else f"{response.status_code} {response.json()['error']}"
                with lock:
                    outcomes[outcome] += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(LOAD_CLIENTS)]
    peak_mb = start_mb
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        peak_mb = max(peak_mb, _rss_mb(server))
        time.sleep(0.2)
    for thread in threads:
        thread.join()
    assert set(outcomes) <= {"200", f"503 {protocol.ERROR_BUSY}", f"503 {protocol.ERROR_TIMEOUT}"}, outcomes
    assert outcomes["200"] > 0
    info = _info(server)
    assert info["internal_errors"] == 0
    computed = info["batching"]["pairs"] - before["pairs"]
    withdrawn = info["batching"]["withdrawn_pairs"] - before["withdrawn_pairs"]
    if outcomes[f"503 {protocol.ERROR_TIMEOUT}"]:
        assert withdrawn > 0  # timed-out pairs left the queue instead of reaching the model
    # Pairs computed for a request that had already given up: at most a quarter (before: 260 computed, 11 delivered).
    assert computed - outcomes["200"] <= computed // 4, (computed, outcomes)
    deadline = time.monotonic() + 20
    while _rss_mb(server) > 1.10 * start_mb and time.monotonic() < deadline:
        time.sleep(0.5)
    after_mb = _rss_mb(server)
    assert after_mb <= 1.10 * start_mb, f"RSS {start_mb:.0f} MB before, {peak_mb:.0f} at peak, {after_mb:.0f} after"


def _upload(server: Server, files: list[tuple[str, bytes]]) -> requests.Response:
    return requests.post(
        server.url + protocol.UI_PATH + "/gradio_api/upload",
        headers=AUTH,
        files=[("files", (name, data)) for name, data in files],
        timeout=60,
    )


def _upload_folder(server: Server) -> Path:
    [folder] = (server.log.parent / "tmp").glob("ccexpert-ui-*")
    return folder


def test_ui_uploads_are_bounded_in_size_and_count(server: Server) -> None:
    small = encode(random_image(30, (16, 16)))
    accepted = _upload(server, [("a.png", small)])
    assert accepted.status_code == 200
    [stored] = accepted.json()
    assert Path(stored).is_relative_to(_upload_folder(server))  # the server's own folder, not /tmp/gradio
    too_many = _upload(server, [(f"{index}.png", small) for index in range(3)])
    assert too_many.status_code == 413 and too_many.json()["error"] == protocol.ERROR_TOO_LARGE
    too_big = _upload(server, [("big.png", b"x" * (TEST_LIMITS.max_image_bytes + 100_000))])
    assert too_big.status_code == 413 and too_big.json()["error"] == protocol.ERROR_TOO_LARGE
    # Distinct files until the folder is full: then 503, and the folder stays within its quota.
    quota = 16 * TEST_LIMITS.max_image_bytes
    statuses = []
    for seed in range(64):
        statuses.append(_upload(server, [(f"{seed}.bin", np.random.default_rng(seed).bytes(250_000))]).status_code)
        if statuses[-1] != 200:
            break
    assert statuses[-1] == 503 and set(statuses[:-1]) == {200}, statuses
    assert sum(path.stat().st_size for path in _upload_folder(server).rglob("*") if path.is_file()) <= quota
    refused = _upload(server, [("late.bin", np.random.default_rng(99).bytes(250_000))])
    assert refused.status_code == 503 and refused.json()["error"] == protocol.ERROR_BUSY
    assert "upload space is full" in refused.json()["detail"]
    assert _info(server)["internal_errors"] == 0


def test_ui_uploads_are_removed_when_the_server_stops(server: Server) -> None:
    assert _upload(server, [("last.png", encode(random_image(40, (16, 16))))]).status_code in (200, 503)
    folder = _upload_folder(server)
    assert any(path.is_file() for path in folder.rglob("*"))
    server.stop()  # SIGTERM: uvicorn shuts the app down (its lifespan ends), then exits by the same signal
    assert "Application shutdown complete" in server.log.read_text()
    assert not folder.exists()
    assert not list((server.log.parent / "tmp").glob("gradio*"))
