"""The backend under abuse: half-open connections at a 1,024 open-file limit, then 50 clients past the timeout.

Starts ``ccexpert serve`` (the default model, a token, UI on) on 127.0.0.1 with RLIMIT_NOFILE set to 1,024 (soft and
hard), then:

1. holds ``--half-open`` connections that never finish their request line, and meanwhile sends health and
   authenticated ``/v1/info`` requests for ``--hold`` seconds; counts answers, failures, the server's descriptors
   and what its log grew by; then closes them and asks again;
2. runs ``--clients`` client threads for ``--seconds`` each (one pair of 256×256 PNGs per ``POST /v1/captions``)
   with ``--request-timeout`` on the server; counts statuses, 5xx, internal errors, pairs computed against
   results delivered, and the server's RSS before (after a warm-up request), at peak and after (idle ``--settle``);
   with ``--poison``, one of the clients sends instead a series request that once failed every request batched
   with it (tiles of 3 dates asking for interval 0-1 only: what caption-region sends for a partial last date);
3. with ``--repeats N``, sends one series request naming interval 0-1 N times (two 64-px images) while a one-pair
   request waits behind it: their statuses and seconds.

Prints a Markdown table for bench/RESULTS.md. Traffic goes to the loopback address only, and every loop is bounded.

    .venv/bin/python bench/backend_abuse.py
    .venv/bin/python bench/backend_abuse.py --request-timeout 120 --seconds 30
"""

from __future__ import annotations

import argparse
import collections
import io
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NotRequired, TypedDict, Unpack

import numpy as np
import requests
from PIL import Image

from ccexpert_core import protocol

#: A multipart form's images, as requests takes them: (field, (file name, bytes)).
Files = list[tuple[str, tuple[str, bytes]]]


class Form(TypedDict):
    """A request's multipart body, as requests.post takes it."""

    files: Files
    data: NotRequired[dict[str, str]]


class HalfOpen(TypedDict):
    """What :func:`half_open` saw."""

    held: int
    probes: dict[str, int]
    after: str
    descriptors: int
    log_bytes: int
    emfile_lines: int


class Load(TypedDict):
    """What :func:`load` saw: outcomes by kind, the backend's counters and its memory (MB before, peak, after)."""

    outcomes: dict[str, int]
    internal_errors: int
    computed: int
    withdrawn: int
    rss: tuple[float, float, float]

OPEN_FILE_LIMIT = 1024
TOKEN = "bench-token"
AUTH = {protocol.AUTH_HEADER: f"{protocol.AUTH_SCHEME} {TOKEN}"}


def _limit_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILE_LIMIT, OPEN_FILE_LIMIT))


def start(folder: Path, request_timeout: float) -> tuple[subprocess.Popen, str, Path]:
    """``ccexpert serve`` on a free loopback port with 1,024 open files at most, once /v1/health answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (folder / "tokens.txt").write_text(TOKEN + "\n")
    log = folder / "server.log"
    command = [str(Path(sys.executable).with_name("ccexpert")), "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--token-file", str(folder / "tokens.txt"), "--request-timeout", str(request_timeout)]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=_limit_open_files)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(url + protocol.HEALTH_PATH, timeout=2).ok:
                return process, url, log
        except requests.ConnectionError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the backend did not start: {' '.join(command)}\n{log.read_text()[-2000:]}")


def rss_mb(pid: int) -> float:
    """The process's resident memory."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def descriptors(pid: int) -> int:
    """The process's open file descriptors."""
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def probe(url: str) -> str:
    """One health and one authenticated info request: "ok", "5xx" or the failure's name."""
    try:
        answers = [
            requests.get(url + protocol.HEALTH_PATH, timeout=5),
            requests.get(url + protocol.INFO_PATH, headers=AUTH, timeout=5),
        ]
    except requests.RequestException as error:
        return type(error).__name__
    if any(answer.status_code >= 500 for answer in answers):
        return "5xx"
    return "ok" if all(answer.status_code == 200 for answer in answers) else "other"


def half_open(process: subprocess.Popen, url: str, log: Path, count: int, hold_s: float) -> HalfOpen:
    """Hold ``count`` connections that never finish their request line; probe meanwhile and after."""
    host, port = url.removeprefix("http://").split(":")
    log_before = log.stat().st_size
    sockets = []
    probes: collections.Counter[str] = collections.Counter()
    most_descriptors = 0
    try:
        for _ in range(count):
            sock = socket.create_connection((host, int(port)), timeout=30)
            sock.sendall(b"GET /v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sockets.append(sock)
        end = time.monotonic() + hold_s
        while time.monotonic() < end:
            probes[probe(url)] += 1
            most_descriptors = max(most_descriptors, descriptors(process.pid))
            time.sleep(0.2)
    finally:
        for sock in sockets:
            sock.close()
    time.sleep(1)
    grown = log.read_bytes()[log_before:].decode("utf-8", "replace")
    return {
        "held": len(sockets),
        "probes": dict(probes),
        "after": probe(url),
        "descriptors": most_descriptors,
        "log_bytes": len(grown.encode()),
        "emfile_lines": grown.count("Too many open files"),
    }


def png(seed: int, size: int = 256) -> bytes:
    """A reproducible noise image as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def partial_series(images: list[bytes], index: int) -> Form:
    """A request of 2 tiles of 3 dates asking for interval 0-1 only."""
    files = [(protocol.FIELD_IMAGE, (f"i{k}.png", images[(index + k) % 8])) for k in range(6)]
    return {"files": files, "data": {protocol.FIELD_DATES: "3", protocol.FIELD_INTERVALS: "0-1"}}


def load(process: subprocess.Popen, url: str, clients: int, seconds: float, settle_s: float,
         poison: bool = False) -> Load:
    """``clients`` threads sending one-pair requests for ``seconds`` (with ``poison``, client 0 sends partial series
    requests); statuses, work and memory."""
    images = [png(seed) for seed in range(8)]
    files = [(protocol.FIELD_BEFORE, ("b.png", images[0])), (protocol.FIELD_AFTER, ("a.png", images[1]))]
    requests.post(url + protocol.CAPTIONS_PATH, headers=AUTH, files=files, timeout=300).raise_for_status()
    time.sleep(3)
    start_mb = rss_mb(process.pid)
    before = requests.get(url + protocol.INFO_PATH, headers=AUTH, timeout=30).json()
    outcomes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        with requests.Session() as session:
            sent = 0
            while time.monotonic() < stop:
                pair = [
                    (protocol.FIELD_BEFORE, ("b.png", images[(index + sent) % 8])),
                    (protocol.FIELD_AFTER, ("a.png", images[(index + sent + 1) % 8])),
                ]
                sent += 1
                try:
                    if poison and index == 0:
                        response = session.post(url + protocol.SERIES_PATH, headers=AUTH, timeout=300,
                                                **partial_series(images, sent))
                    else:
                        response = session.post(url + protocol.CAPTIONS_PATH, headers=AUTH, files=pair, timeout=300)
                    outcome = ("series " if poison and index == 0 else "") + str(response.status_code)
                    if response.status_code != 200:
                        outcome += " " + response.json().get("error", "")
                except requests.ConnectionError:
                    outcome = "dropped connection"
                except requests.RequestException as error:
                    outcome = type(error).__name__
                with lock:
                    outcomes[outcome] += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    peak_mb = start_mb
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        peak_mb = max(peak_mb, rss_mb(process.pid))
        time.sleep(0.2)
    time.sleep(settle_s)
    after = requests.get(url + protocol.INFO_PATH, headers=AUTH, timeout=30).json()
    return {
        "outcomes": dict(outcomes),
        "internal_errors": after["internal_errors"],
        "computed": after["batching"]["pairs"] - before["batching"]["pairs"],
        # Backends before withdrawn_pairs existed do not report it.
        "withdrawn": after["batching"].get("withdrawn_pairs", 0) - before["batching"].get("withdrawn_pairs", 0),
        "rss": (start_mb, peak_mb, rss_mb(process.pid)),
    }


def repeated_interval(url: str, repeats: int) -> dict[str, tuple[int, float]]:
    """One series request naming interval 0-1 ``repeats`` times, and a one-pair request sent just after it."""
    small = [png(seed, 64) for seed in range(2)]
    files = [(protocol.FIELD_IMAGE, (f"i{k}.png", small[k])) for k in range(2)]
    data = {protocol.FIELD_DATES: "2", protocol.FIELD_INTERVALS: ",".join(["0-1"] * repeats)}
    answers: dict[str, tuple[int, float]] = {}

    def send(name: str, path: str, **body: Unpack[Form]) -> None:
        began = time.perf_counter()
        try:
            status = requests.post(url + path, headers=AUTH, timeout=600, **body).status_code
        except requests.RequestException:
            status = 0
        answers[name] = (status, round(time.perf_counter() - began, 3))

    heavy = threading.Thread(target=send, args=("repeated", protocol.SERIES_PATH), kwargs={"files": files, "data": data})
    heavy.start()
    time.sleep(0.05)
    pair = [(protocol.FIELD_BEFORE, ("b.png", small[0])), (protocol.FIELD_AFTER, ("a.png", small[1]))]
    send("one pair meanwhile", protocol.CAPTIONS_PATH, files=pair)
    heavy.join()
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--half-open", type=int, default=1100)
    parser.add_argument("--hold", type=float, default=8.0, help="seconds the half-open connections are held")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--request-timeout", type=float, default=2.0)
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before RSS is read after the load")
    parser.add_argument("--poison", action="store_true", help="client 0 sends partial series requests")
    parser.add_argument("--repeats", type=int, default=0, help="also send interval 0-1 named this many times")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds the half-open connections
    with tempfile.TemporaryDirectory() as folder:
        process, url, log = start(Path(folder), args.request_timeout)
        try:
            held = half_open(process, url, log, args.half_open, args.hold)
            print(f"half-open: {held}", file=sys.stderr, flush=True)
            loaded = load(process, url, args.clients, args.seconds, args.settle, args.poison)
            print(f"load: {loaded}", file=sys.stderr, flush=True)
            repeated = repeated_interval(url, args.repeats) if args.repeats else None
        finally:
            process.terminate()
            process.wait(timeout=60)
    probes = held["probes"]
    print("| scenario | connections held | requests | 5xx | other failures | memory MB (before / peak / after) |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    failures = sum(n for outcome, n in probes.items() if outcome not in ("ok", "5xx"))
    print(
        f"| {args.half_open} half-open connections for {args.hold:g} s, {OPEN_FILE_LIMIT} open files; meanwhile "
        f"probes (health, then authenticated info) | {held['held']} | {sum(probes.values())} probes | "
        f"{probes.get('5xx', 0)} | "
        f"{failures} (after they close: {held['after']}) | – |"
    )
    outcomes = loaded["outcomes"]
    status = {outcome: outcome.removeprefix("series ") for outcome in outcomes}  # the poisoning client's too
    served = sum(n for outcome, n in outcomes.items() if status[outcome][:1] in "2345")
    fivexx = sum(n for outcome, n in outcomes.items() if status[outcome].startswith("5"))
    start_mb, peak_mb, after_mb = loaded["rss"]
    print(
        f"| {args.clients} clients × {args.seconds:g} s, --request-timeout {args.request_timeout:g} | "
        f"{args.clients} | {served} | {fivexx} ({', '.join(f'{n} {o}' for o, n in sorted(outcomes.items()))}) | "
        f"{sum(outcomes.values()) - served} | {start_mb:.0f} / {peak_mb:.0f} / {after_mb:.0f} |"
    )
    if repeated:
        print(f"\nInterval 0-1 named {args.repeats} times: " + "; ".join(
            f"{name}: status {status} after {seconds:g} s" for name, (status, seconds) in repeated.items()))
    print(
        f"\nServer descriptors at most {held['descriptors']}; log grew by {held['log_bytes']} bytes "
        f"({held['emfile_lines']} 'Too many open files'). Pairs computed {loaded['computed']}, results delivered "
        f"{outcomes.get('200', 0)}, pairs withdrawn before the model {loaded['withdrawn']}, internal errors "
        f"{loaded['internal_errors']}."
    )


if __name__ == "__main__":
    main()
