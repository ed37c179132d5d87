"""Load on the backend: requests/s and p50/p99 latency at several client counts, dynamic batching on vs off.

Starts ``ccexpert serve --no-ui`` on 127.0.0.1 once per mode (``--max-batch 16`` and ``--max-batch 1``), sends
``--requests`` captions requests (one pair each) per client count from that many threads, and prints a Markdown
table for bench/RESULTS.md. Traffic goes to the loopback address only, and every loop is bounded.

    .venv/bin/python bench/backend_load.py                  # tiny model, 1/4/16 clients, 32 requests per level
    .venv/bin/python bench/backend_load.py --model DIR --clients 1 8 --requests 64
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from ccexpert_core import protocol

MODES = {"batching on (max-batch 16)": 16, "batching off (max-batch 1)": 1}


def png(seed: int, size: int = 64) -> bytes:
    """A reproducible noise image as PNG bytes."""
    array = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def start(model: str, max_batch: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    """A backend on a free loopback port, once /v1/health answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = {"--model": model, "--port": port, "--max-batch": max_batch, "--max-wait-ms": max_wait_ms}
    command = [str(Path(sys.executable).with_name("ccexpert")), "serve", "--no-ui", "--host", "127.0.0.1"]
    command += [str(part) for option in options.items() for part in option] + ["--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(url + protocol.HEALTH_PATH, timeout=2).ok:
                return process, url
        except requests.ConnectionError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the backend did not start: {' '.join(command)}")


def load(url: str, clients: int, total: int, images: list[bytes]) -> dict[str, float]:
    """``total`` one-pair requests spread over ``clients`` threads: throughput and latency percentiles."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]

    def client(index: int) -> None:
        with requests.Session() as session:
            for n in range(per_client[index]):
                before, after = images[(index + n) % len(images)], images[(index + n + 1) % len(images)]
                files = [(protocol.FIELD_BEFORE, ("b.png", before)), (protocol.FIELD_AFTER, ("a.png", after))]
                began = time.perf_counter()
                response = session.post(url + protocol.CAPTIONS_PATH, files=files, timeout=600)
                elapsed = time.perf_counter() - began
                response.raise_for_status()
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "rps": len(ordered) / wall,
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))],
    }


def batching_stats(url: str) -> protocol.BatchingStats:
    """The backend's batching counters (from /v1/info)."""
    return requests.get(url + protocol.INFO_PATH, timeout=30).json()["batching"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="preset:tiny")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=32, help="requests per client count (one pair each)")
    parser.add_argument("--max-wait-ms", type=float, default=protocol.DEFAULT_MAX_WAIT_MS)
    args = parser.parse_args()
    images = [png(seed) for seed in range(8)]
    rows = []
    for mode, max_batch in MODES.items():
        process, url = start(args.model, max_batch, args.max_wait_ms)
        try:
            load(url, 1, 1, images)  # warm-up: first-call allocations are not what we measure
            for clients in args.clients:
                before = batching_stats(url)
                result = load(url, clients, max(args.requests, clients), images)
                after = batching_stats(url)
                mean_batch = (after["pairs"] - before["pairs"]) / max(1, after["batches"] - before["batches"])
                rows.append((mode, clients, result, mean_batch))
                print(f"{mode}, {clients} clients: {result}", file=sys.stderr, flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    print("| mode | clients | requests | requests/s | p50 latency (s) | p99 latency (s) | mean batch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode, clients, result, mean_batch in rows:
        print(
            f"| {mode} | {clients} | {result['requests']} | {result['rps']:.2f} | {result['p50']:.2f} | "
            f"{result['p99']:.2f} | {mean_batch:.1f} |"
        )


if __name__ == "__main__":
    main()
