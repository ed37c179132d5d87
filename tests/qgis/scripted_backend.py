"""A scripted backend for the plugin's tests: API v1's info, and pairs requests answered by a function of their tile
ids (or failed with a 500), on 127.0.0.1 in a thread of the test's process. Standard library only."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from qgis_plugin.shared_modules import protocol

#: The results for a request's tile ids, in order; None: the request fails (500, "the model failed").
Answer = Callable[[list[str]], list[dict[str, Any]] | None]


class ScriptedBackend(ThreadingHTTPServer):
    """Serves until :meth:`shutdown`; ``answer`` says what each captions request gets."""

    def __init__(self, answer: Answer, model_id: str = "scripted") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer, self.model_id = answer, model_id
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedBackend

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._send({"api_version": protocol.API_VERSION, "model_id": self.server.model_id,
                    "limits": protocol.Limits().to_dict()})

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        results = self.server.answer([i.decode() for i in re.findall(rb'name="tile_ids"\r\n\r\n([^\r]*)\r\n', body)])
        if results is None:
            self.send_error(500, "the model failed")
            return
        self._send({"model_id": self.server.model_id, "results": results})

    def log_message(self, *args: object) -> None:
        """Quiet."""
