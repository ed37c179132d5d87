"""A static file server on 127.0.0.1 with HTTP range requests, as object storage serves COGs, that counts what it
serves and can be told to fail: for the remote-imagery tests and bench/remote_imagery.py.

Run: python bench/range_server.py ROOT [--latency-ms 50] [--require-header 'Authorization: Bearer X']
[--require-query sig=X] → prints ``ready PORT`` and serves ROOT's files until killed. Standard library only.

- ``GET``/``HEAD`` of a file, whole or one byte range (``Range: bytes=a-b``; several ranges get the whole file, as
  HTTP allows), over keep-alive HTTP/1.1 connections.
- ``--latency-ms``: each request waits that long before it is answered (a distant bucket), on its own thread.
- ``--require-header``/``--require-query``: requests without that header or query parameter get 403 (credentials).
- ``GET /_control/stats``: ``{"requests", "bytes", "by_path": {path: {"requests", "bytes"}}, "dropped", "refused"}``;
  ``/_control/reset`` zeroes the counts.
- ``/_control/fail?path=/a.tif&offset=K``: every range request for ``path`` whose range holds byte K is dropped (the
  connection closed without an answer) until ``/_control/heal``; ``&from=N`` instead drops every request for
  ``path`` from its N-th on (counting from 1). Counted, never timed: a test decides what fails, not a clock.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Fault:
    """Which requests for one path are dropped: those holding byte ``offset``, or all from the ``first``-th."""

    def __init__(self, offset: int | None, first: int | None) -> None:
        self.offset, self.first, self.seen = offset, first, 0

    def drops(self, ranged: bool, start: int, end: int) -> bool:
        self.seen += 1
        if self.first is not None:
            return self.seen >= self.first
        return ranged and self.offset is not None and start <= self.offset <= end


class RangeServer(ThreadingHTTPServer):
    """The server: files under ``root``, counts, faults and required credentials."""

    daemon_threads = True

    def __init__(self, root: Path, latency_s: float = 0.0, header: tuple[str, str] | None = None,
                 query: tuple[str, str] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.latency_s, self.header, self.query = Path(root).resolve(), latency_s, header, query
        self.lock = threading.Lock()
        self.faults: dict[str, _Fault] = {}
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.stats: dict = {"requests": 0, "bytes": 0, "by_path": {}, "dropped": 0, "refused": 0}

    def count(self, path: str, sent: int) -> None:
        with self.lock:
            self.stats["requests"] += 1
            self.stats["bytes"] += sent
            entry = self.stats["by_path"].setdefault(path, {"requests": 0, "bytes": 0})
            entry["requests"] += 1
            entry["bytes"] += sent


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RangeServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's names)
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/_control/"):
            self._control()
        else:
            self._serve(body=True)

    def _answer(self, status: int, body: bytes = b"", kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _control(self) -> None:
        url = urlsplit(self.path)
        params = {key: values[0] for key, values in parse_qs(url.query).items()}
        action = url.path.removeprefix("/_control/")
        with self.server.lock:
            if action == "stats":
                body = json.dumps(self.server.stats).encode()
            elif action == "fail":
                offset, first = params.get("offset"), params.get("from")
                self.server.faults[params["path"]] = _Fault(
                    None if offset is None else int(offset), None if first is None else int(first))
                body = b"ok"
            elif action == "heal":
                self.server.faults.clear()
                body = b"ok"
            elif action != "reset":
                self._answer(404, b"no such control")
                return
            else:
                body = b"ok"
        if action == "reset":
            self.server.reset()
        self._answer(200, body, "application/json")

    def _refused(self) -> bool:
        server = self.server
        if server.header is not None and self.headers.get(server.header[0]) != server.header[1]:
            return True
        if server.query is not None:
            given = parse_qs(urlsplit(self.path).query).get(server.query[0], [])
            return server.query[1] not in given
        return False

    def _serve(self, body: bool) -> None:
        if self.server.latency_s:
            time.sleep(self.server.latency_s)
        path = urlsplit(self.path).path
        if self._refused():
            with self.server.lock:
                self.server.stats["refused"] += 1
            self._answer(403, b"forbidden")
            return
        file = (self.server.root / path.lstrip("/")).resolve()
        if self.server.root not in file.parents or not file.is_file():
            self.server.count(path, 0)
            self._answer(404, b"not found")
            return
        size = file.stat().st_size
        start, end, status = 0, size - 1, 200
        match = _RANGE.match(self.headers.get("Range", "").strip())
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                start, end = int(match.group(1)), min(size - 1, int(match.group(2) or size - 1))
            else:  # the last N bytes
                start = max(0, size - int(match.group(2)))
            if start >= size:
                self._answer(416, b"range not satisfiable")
                return
            status = 206
        with self.server.lock:
            fault = self.server.faults.get(path)
            dropped = fault is not None and fault.drops(status == 206, start, end)
            if dropped:
                self.server.stats["dropped"] += 1
        if dropped:
            self.close_connection = True  # no answer at all: the connection just ends
            return
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Content-Type", "application/json" if file.suffix == ".json" else "image/tiff")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        sent = 0
        if body:
            with open(file, "rb") as handle:
                handle.seek(start)
                data = handle.read(end - start + 1)
            self.wfile.write(data)
            sent = len(data)
        self.server.count(path, sent)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--require-header", metavar="'NAME: VALUE'")
    parser.add_argument("--require-query", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    header = None if args.require_header is None else tuple(p.strip() for p in args.require_header.split(":", 1))
    query = None if args.require_query is None else tuple(args.require_query.split("=", 1))
    server = RangeServer(args.root, args.latency_ms / 1000, header, query)
    print(f"ready {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
