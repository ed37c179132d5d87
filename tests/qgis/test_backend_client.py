"""The QGIS-network client's retries and messages, against a scripted HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qgis_plugin.backend_client import BackendClient
from qgis_plugin.errors import CaptionRunError, NotABackend
from qgis_plugin.shared_modules import protocol

INFO = {"api_version": protocol.API_VERSION, "model_id": "m", "limits": protocol.Limits().to_dict()}


class ScriptedServer(ThreadingHTTPServer):
    """Answers each request with the next (status, body) of its script; remembers the requests' headers."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        #: (status, JSON body, or raw bytes such as an HTML page)
        self.script: list[tuple[int, dict | bytes]] = []
        self.seen: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append(dict(self.headers))
        status, body = self.server.script.pop(0)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html" if isinstance(body, bytes) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def server(qgis_app) -> Iterator[ScriptedServer]:
    running = ScriptedServer()
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running
    running.shutdown()
    running.server_close()


def test_busy_answers_are_retried_with_backoff_and_the_token_is_sent_as_bearer(server: ScriptedServer) -> None:
    server.script = [(503, {"detail": "busy"}), (502, {}), (200, INFO)]
    assert BackendClient(server.url, "secret", backoff_s=0.01).info()["model_id"] == "m"
    assert len(server.seen) == 3 and {h["Authorization"] for h in server.seen} == {"Bearer secret"}


def test_a_rejected_request_is_not_retried_and_says_why(server: ScriptedServer) -> None:
    server.script = [(422, {"error": "invalid_request", "detail": "3 tile ids for 2 pairs"})]
    with pytest.raises(CaptionRunError, match=r"rejected the request \(422\): 3 tile ids for 2 pairs"):
        BackendClient(server.url, backoff_s=0.01).info()
    assert len(server.seen) == 1


@pytest.mark.parametrize(("token", "message"), [("", "needs a token"), ("wrong", "refused the token")])
def test_401_says_whether_a_token_is_missing_or_wrong(server: ScriptedServer, token: str, message: str) -> None:
    server.script = [(401, {"error": "unauthorized"})]
    with pytest.raises(CaptionRunError, match=message):
        BackendClient(server.url, token).info()
    assert ("Authorization" in server.seen[0]) == bool(token)


def test_another_api_version_is_refused(server: ScriptedServer) -> None:
    server.script = [(200, {**INFO, "api_version": "2"})]
    with pytest.raises(CaptionRunError, match="speaks API v2"):
        BackendClient(server.url).info()


def test_nobody_listening_is_retried_then_explained(server: ScriptedServer) -> None:
    url = server.url
    server.shutdown()
    server.server_close()
    with pytest.raises(CaptionRunError, match=r"cannot reach the backend at .* \(tried 3 times\).*ccexpert serve"):
        BackendClient(url, retries=2, backoff_s=0.01).info()


@pytest.mark.parametrize(("path", "answer", "why"), [
    ("", (404, b"<html>File not found</html>"), "it answered 404 Not Found to /v1/info"),
    ("", (200, b"<html>a web page</html>"), "it answered something other than JSON to /v1/info"),
    ("", (200, {"status": "ok"}), "its /v1/info has no api_version"),
    ("", (400, b"<html>Bad request</html>"), "it answered 400 to /v1/info"),
    ("/ui", (404, {"detail": "Not Found"}), "it answered 404 Not Found to /v1/info"),
])
def test_a_server_that_is_not_a_ccexpert_backend_is_named_so(
    server: ScriptedServer, path: str, answer: tuple[int, dict | bytes], why: str
) -> None:
    server.script = [answer]
    url = server.url + path
    with pytest.raises(NotABackend) as raised:
        BackendClient(url).info()
    assert str(raised.value).startswith(f"nothing at {url} answers as a CCExpert backend ({why})")
    if path:  # the web UI's address: the message gives the API's
        assert str(raised.value).endswith(f"is the backend's web UI: its URL is {server.url}")
