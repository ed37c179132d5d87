"""BackendClient: against a real loopback backend, and against a scripted stub for retries and error messages."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ccexpert_core import protocol
from ccexpert_core.client import BackendClient, encode_image, read_token_file
from ccexpert_core.errors import CCExpertError

from backend_server import Server, encode, open_server, random_image, shared_server
from serve_process import free_port

INFO_BODY = {"api_version": protocol.API_VERSION, "model_id": "stub", "limits": protocol.Limits().to_dict()}


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Server:
    return open_server(request, tiny_model_dir)


class Stub:
    """A loopback HTTP server answering from a script of (status, JSON body), and counting requests."""

    def __init__(self, script: list[tuple[int, object]]) -> None:
        self.script = list(script)
        self.requests: list[tuple[str, str, str | None]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                stub.requests.append((self.command, self.path, self.headers.get("Authorization")))
                status, body = stub.script.pop(0) if len(stub.script) > 1 else stub.script[0]
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub() -> Iterator[type[Stub]]:
    made: list[Stub] = []

    def make(script: list[tuple[int, object]]) -> Stub:
        made.append(Stub(script))
        return made[-1]

    yield make
    for one in made:
        one.close()


def test_health_info_and_model_id(server: Server, tiny_model_dir: Path) -> None:
    with BackendClient(server.url) as client:
        assert client.health()["model_loaded"] is True
        assert client.info()["tile_size"] == 384
        assert client.model_id.startswith(tiny_model_dir.name + "@")  # the folder's name and fingerprint, no path
        assert client.limits == protocol.Limits()


def test_caption_accepts_every_image_kind_and_matches_the_captioner(
    server: Server, tiny_model_dir: Path, tmp_path: Path
):
    from ccexpert_core.inference import Captioner

    arrays = [random_image(300 + i, (48, 40)) for i in range(4)]
    path = tmp_path / "after.png"
    path.write_bytes(encode(arrays[3]))
    pairs = [(encode(arrays[0]), Image.fromarray(arrays[1])), (arrays[2], path)]
    with BackendClient(server.url) as client:
        results = client.caption(pairs, tile_ids=["a", "b"])
    expected = Captioner.load(tiny_model_dir, device="cpu").caption([(arrays[0], arrays[1]), (arrays[2], arrays[3])])
    assert [r.caption for r in results] == [e.caption for e in expected]
    assert [r.change_detected for r in results] == [e.change_detected for e in expected]
    assert [r.confidence for r in results] == pytest.approx([e.confidence for e in expected], rel=1e-4)
    assert all(r.change_map is None for r in results)  # this model has no change-map head


def test_change_maps_come_over_the_wire_from_a_model_with_a_change_map_head(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from ccexpert_core.inference import Captioner
    from ccexpert_core.model import build_tiny_model, save_model

    model, processor = build_tiny_model(seed=0, change_head=True)
    model_dir = save_model(model, processor, tmp_path_factory.mktemp("change-map-model"))
    server = shared_server(request, "change-map", ["--model", str(model_dir), "--no-ui"])
    pairs = [(random_image(400 + 2 * i), random_image(401 + 2 * i)) for i in range(2)]
    with BackendClient(server.url) as client:
        results = client.caption(pairs)
    expected = Captioner.load(model_dir, device="cpu").caption(pairs)
    for result, local in zip(results, expected):
        assert result.caption == local.caption and len(result.change_map) == len(local.change_map) == 27  # 27 × 27
        assert np.allclose(result.change_map, local.change_map, atol=1e-4)


def test_backend_errors_come_back_as_messages(server: Server) -> None:
    with BackendClient(server.url) as client, pytest.raises(CCExpertError) as caught:
        client.caption([(b"not an image", encode(random_image(1, (8, 8))))])
    assert f"the backend at {server.url} rejected the request (422): before[0] is not a PNG" in str(caught.value)


def test_dead_backend_is_reported_after_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CCExpertError, match=rf"cannot reach the backend at {url}: .*Is `ccexpert serve` running"):
        BackendClient(url, retries=2, backoff_s=0.01).health()


def test_retries_busy_answers_with_backoff(stub) -> None:
    busy = (503, {"error": protocol.ERROR_BUSY, "detail": "busy"})
    server = stub([busy, (502, {}), (200, {"status": "ok", "model_loaded": True, "api_version": "1"})])
    assert BackendClient(server.url, retries=3, backoff_s=0.01).health()["status"] == "ok"
    assert len(server.requests) == 3


def test_gives_up_after_the_last_retry(stub) -> None:
    server = stub([(503, {"error": protocol.ERROR_BUSY, "detail": "the backend is busy"})])
    with pytest.raises(CCExpertError, match=r"failed \(503\): the backend is busy"):
        BackendClient(server.url, retries=2, backoff_s=0.01).health()
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(stub) -> None:
    server = stub([(422, {"error": protocol.ERROR_INVALID_REQUEST, "detail": "after: Field required"})])
    with pytest.raises(CCExpertError, match=r"rejected the request \(422\): after: Field required"):
        BackendClient(server.url, retries=3, backoff_s=0.01).info()
    assert len(server.requests) == 1


def test_token_is_sent_and_a_refusal_explained(stub) -> None:
    server = stub([(401, {"error": protocol.ERROR_UNAUTHORIZED, "detail": "the token was not accepted"})])
    with pytest.raises(CCExpertError, match="refused the token"):
        BackendClient(server.url, token="s3cret").info()
    assert server.requests[0][2] == "Bearer s3cret"
    with pytest.raises(CCExpertError, match="needs a token"):
        BackendClient(server.url).info()


def test_long_lists_are_split_within_the_backend_limit(stub) -> None:
    limits = protocol.Limits(max_pairs_per_request=2).to_dict()
    item = {"caption": "there is no difference", "change_detected": False, "confidence": 0.5}
    server = stub([(200, {**INFO_BODY, "limits": limits}), (200, {"model_id": "stub", "results": [item, item]})])
    tiny = encode(random_image(0, (8, 8)))
    with pytest.raises(CCExpertError, match="returned 2 results for 1 pairs"):
        # 3 pairs → requests of 2 and 1; the stub's second answer (2 results for 1 pair) is caught.
        BackendClient(server.url).caption([(tiny, tiny)] * 3)
    assert [path for _, path, _ in server.requests] == [protocol.INFO_PATH] + [protocol.CAPTIONS_PATH] * 2


def test_newer_api_is_refused(stub) -> None:
    server = stub([(200, {**INFO_BODY, "api_version": "2"})])
    with pytest.raises(CCExpertError, match="speaks API v2"):
        BackendClient(server.url).info()


def test_local_input_errors() -> None:
    client = BackendClient("http://127.0.0.1:9")  # never contacted
    with pytest.raises(CCExpertError, match="1 tile ids for 2 pairs"):
        client.caption([(b"a", b"b"), (b"c", b"d")], tile_ids=["x"])
    with pytest.raises(CCExpertError, match="must be uint8"):
        encode_image(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(CCExpertError, match="cannot read image"):
        encode_image(Path("/nonexistent/before.png"))


def test_token_file_gives_its_first_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# CCExpert tokens\n\n  first-token  \nsecond-token\n", encoding="utf-8")
    assert read_token_file(tokens) == "first-token"
    tokens.write_text("# nothing but a comment\n\n", encoding="utf-8")
    with pytest.raises(CCExpertError, match="holds no token"):
        read_token_file(tokens)
    with pytest.raises(CCExpertError, match="cannot read the token file"):
        read_token_file(tmp_path / "missing.txt")
