"""A stand-in for a GPU backend: speaks API v1 like ``ccexpert serve`` but runs no model — it sleeps a fixed time
per model batch of up to N pairs, as a GPU takes about the same time for a batch whatever its size, and spends
almost no CPU (it does not decode the images). Against it, a client's tiles/s as a share of the stand-in's capacity
(N / seconds per batch) says whether the client could keep a GPU busy.

Standard library only, so that the main suite, the QGIS suite (Debian's Python) and the benchmarks all run it::

    python bench/standin_backend.py --port 8123 --batch-s 0.5 --max-batch 16 [--die-after-requests K]
                                    [--hold-after-requests K]

It records what it saw (``GET /standin/stats``): requests and pairs, the most requests open at once, batch sizes,
requests held. With ``--hold-after-requests K`` it answers K requests and holds every later one, unanswered, until
``POST /standin/release`` (then it answers them and every request after): a test stops a run at that moment, with
requests in flight, whatever the machine's load.
Captions are a function of the tile id, so two runs through any mix of stand-ins give the same GeoPackage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API = "/v1"
_TILE_ID = re.compile(rb'name="tile_ids"\r\n\r\n([^\r]*)\r\n')


@dataclass
class _Job:
    """A request's pairs still to run on the fake GPU, and the event its handler waits on."""

    pairs: int
    done: threading.Event = field(default_factory=threading.Event)


class FakeGpu:
    """One worker that takes up to ``max_batch`` waiting pairs (from any requests), sleeps ``batch_s``, answers."""

    def __init__(self, batch_s: float, max_batch: int, max_wait_s: float) -> None:
        self.batch_s, self.max_batch, self.max_wait_s = batch_s, max_batch, max_wait_s
        self._waiting: deque[_Job] = deque()
        self._arrived = threading.Condition()
        self.batches: list[int] = []
        threading.Thread(target=self._run, daemon=True).start()

    def caption(self, pairs: int) -> None:
        """Block until ``pairs`` pairs went through the fake model."""
        job = _Job(pairs)
        with self._arrived:
            self._waiting.append(job)
            self._arrived.notify()
        job.done.wait()

    def _run(self) -> None:
        while True:
            with self._arrived:
                while not self._waiting:
                    self._arrived.wait()
                deadline = time.monotonic() + self.max_wait_s
                while sum(job.pairs for job in self._waiting) < self.max_batch and time.monotonic() < deadline:
                    self._arrived.wait(max(0.0, deadline - time.monotonic()))
                taken, finished = 0, []
                while self._waiting and taken < self.max_batch:
                    job = self._waiting[0]
                    step = min(job.pairs, self.max_batch - taken)
                    job.pairs -= step
                    taken += step
                    if job.pairs == 0:
                        finished.append(self._waiting.popleft())
            time.sleep(self.batch_s)
            self.batches.append(taken)
            for job in finished:
                job.done.set()


class StandIn:
    """What the handler needs: the fake GPU, counters, and when to die."""

    def __init__(
        self, gpu: FakeGpu, model_id: str, die_after_requests: int | None, hold_after_requests: int | None = None,
    ) -> None:
        self.gpu, self.model_id, self.die_after_requests = gpu, model_id, die_after_requests
        self.hold_after_requests = hold_after_requests
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.requests = self.pairs = self.open = self.max_open = self.held = 0

    def hold(self, number: int) -> None:
        """Hold request ``number`` until released, where it comes after the ones to answer."""
        if self.hold_after_requests is None or number <= self.hold_after_requests:
            return
        with self.lock:
            self.held += 1
        self.released.wait()
        with self.lock:
            self.held -= 1

    def release(self) -> dict:
        """Answer the held requests and every later one."""
        self.released.set()
        return {"released": True}

    def info(self) -> dict:
        """An API v1 info body."""
        return {
            "api_version": "1", "version": "standin", "model_id": self.model_id, "model_name": "stand-in (no model)",
            "model_note": "a stand-in that sleeps instead of captioning", "tile_size": 384, "prompt": "",
            "device": "none", "dtype": "none",
            "limits": {"max_pairs_per_request": 64, "max_image_bytes": 16 * 2**20, "max_image_pixels": 4096**2,
                       "request_timeout_s": 120.0, "max_queued_pairs": 4096},
            "batching": {"max_batch": self.gpu.max_batch, "max_wait_ms": self.gpu.max_wait_s * 1000, "batches": 0,
                         "pairs": 0, "mean_batch_size": 0.0, "max_batch_size": 0, "queued_pairs": 0},
            "internal_errors": 0,
        }

    def stats(self) -> dict:
        """What the stand-in saw so far."""
        batches = list(self.gpu.batches)
        return {"requests": self.requests, "pairs": self.pairs, "max_open_requests": self.max_open,
                "batches": len(batches), "mean_batch_size": sum(batches) / len(batches) if batches else 0.0,
                "held": self.held}


def caption_for(tile_id: str) -> tuple[str, bool]:
    """The stand-in's caption of a tile: fixed by its id."""
    changed = sum(map(ord, tile_id)) % 3 == 0
    return (f"a stand-in change at {tile_id}" if changed else "there is no difference"), changed


class Handler(BaseHTTPRequestHandler):
    """API v1's three routes, and ``/standin/stats``."""

    server_version = "standin/1"
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn: clients reuse their connections
    standin: StandIn

    def log_message(self, *args: object) -> None:  # quiet: the benchmark measures, it does not read logs
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client stopped waiting (a cancelled run): fine
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        routes = {f"{API}/health": lambda: {"status": "ok", "model_loaded": True, "api_version": "1"},
                  f"{API}/info": self.standin.info, "/standin/stats": self.standin.stats}
        if self.path in routes:
            self._send(200, routes[self.path]())
        else:
            self._send(404, {"error": "not_found", "detail": self.path})

    def do_POST(self) -> None:  # noqa: N802
        standin = self.standin
        if self.path == "/standin/release":
            self._send(200, standin.release())
            return
        with standin.lock:
            standin.requests += 1
            number = standin.requests
            standin.open += 1
            standin.max_open = max(standin.max_open, standin.open)
        try:
            if standin.die_after_requests is not None and number > standin.die_after_requests:
                os._exit(1)  # as a crashed backend: connections drop, nothing is answered
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            standin.hold(number)
            pairs = body.count(b'name="before"')
            # Tile ids follow the images: look for them only from the first one on (a scan of megabytes costs).
            first = body.find(b'name="tile_ids"')
            found = _TILE_ID.findall(body, max(0, first - 1)) if first >= 0 else []
            ids = [match.decode() for match in found] or [str(i) for i in range(pairs)]
            standin.gpu.caption(pairs)
            with standin.lock:
                standin.pairs += pairs
            results = []
            for tile_id in ids:
                caption, changed = caption_for(tile_id)
                results.append({"caption": caption, "change_detected": changed, "confidence": 0.5,
                                "tile_id": tile_id})
            self._send(200, {"model_id": standin.model_id, "results": results})
        finally:
            with standin.lock:
                standin.open -= 1


def main(argv: list[str] | None = None) -> None:
    """Serve until killed; prints ``ready PORT`` once listening."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--batch-s", type=float, default=0.5, help="seconds per model batch")
    parser.add_argument("--max-batch", type=int, default=16, help="pairs per model batch")
    parser.add_argument("--max-wait-ms", type=float, default=20.0, help="wait for a batch to fill")
    parser.add_argument("--model-id", default="standin")
    parser.add_argument("--die-after-requests", type=int, help="exit without answering the request after this many")
    parser.add_argument("--hold-after-requests", type=int,
                        help="answer this many requests, then hold the others until POST /standin/release")
    args = parser.parse_args(argv)
    gpu = FakeGpu(args.batch_s, args.max_batch, args.max_wait_ms / 1000)
    Handler.standin = StandIn(gpu, args.model_id, args.die_after_requests, args.hold_after_requests)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
