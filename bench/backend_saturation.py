"""Saturation of the real backend: does ``ccexpert serve`` keep its model busy?

The backend runs its own code in full (HTTP, multipart, decoding, the processor, the batcher, post-processing);
only the model's compute is replaced by a GPU-like wait: ``--wait-s`` seconds per model call whatever its size (up
to ``--max-batch`` pairs), costing no CPU, as a GPU would. ``caption-region --backend`` with default options drives
it over a synthetic town of ``--tiles`` tiles. Reported: the share of the run's time the model was busy (calls ×
wait / time), pairs/s against the model's capacity (max-batch / wait), and the backend's CPU time per pair outside
the model, split by stage where the backend reports its stages (``/v1/info`` ``batching.stages``).

    .venv/bin/python bench/backend_saturation.py [--tiles 400] [--wait-s 0.25] [--max-batch 16] [--repeats 3]
    .venv/bin/python bench/backend_saturation.py --code /tmp/before   # a "before" (git worktree of an older commit)

The backend process is this file with ``--serve``: it loads the demo model, replaces its model stage by the wait,
and runs ``ccexpert serve``. Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: What the stand-in model "generates" for every pair (a LEVIR-CC sentence, so post-processing does its usual work).
CAPTION = "many buildings have been built along the road"


def _gpu_like(wait_s: float) -> None:
    """Replace the Captioner's model stage by a wait of ``wait_s`` per call (in the backend process, for the rest of
    its life: the patches are never stopped)."""
    import torch

    from ccexpert_core.captions import CaptionResult
    from ccexpert_core.inference import captioner as module

    cls = module.Captioner
    if hasattr(cls, "generate"):  # the model stage of the three-stage Captioner (prepare → generate → finish)
        def generate(self, prepared):  # noqa: ANN001, ANN202 — signature of the code under test
            time.sleep(wait_s)
            pairs = prepared.pairs
            tokens = self.processor.tokenizer(CAPTION, add_special_tokens=False)["input_ids"]
            row = torch.tensor(tokens + [self.processor.end_of_turn_id])
            return module.Generated(
                sequences=row.expand(pairs, -1), log_probs=torch.full((pairs, len(row)), -0.1),
                change_maps=None, change_kinds=None, per_tile=prepared.per_tile,
            )
        mock.patch.object(cls, "generate", generate).start()
    else:  # the older Captioner: its _generate did the model's call and the decoding
        def _generate(self, input_ids, attention_mask, change_maps, **image_inputs):  # noqa: ANN001, ANN202
            time.sleep(wait_s)
            return [CaptionResult.from_caption(CAPTION, 0.9) for _ in range(input_ids.shape[0])]
        mock.patch.object(cls, "_generate", _generate).start()


def serve(wait_s: float, serve_args: list[str]) -> int:
    """The backend process: the real ``ccexpert serve`` over the demo model with a GPU-like model stage."""
    _gpu_like(wait_s)
    from ccexpert_cli.main import main as cli

    return cli(["serve", *serve_args])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _info(url: str) -> dict:
    import requests

    return requests.get(url + "/v1/info", timeout=30).json()


def start_backend(code: Path, wait_s: float, max_batch: int, log: Path) -> tuple[subprocess.Popen, str]:
    """This file with ``--serve`` on a free loopback port, once /v1/health answers."""
    import socket

    import requests

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, __file__, "--serve", "--wait-s", str(wait_s), "--", "--no-ui", "--host", "127.0.0.1",
               "--port", str(port), "--max-batch", str(max_batch), "--log-level", "warning"]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=code)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(url + "/v1/health", timeout=2).ok:
                return process, url
        except requests.ConnectionError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the backend did not start:\n{log.read_text()[-2000:]}")


def run_region(code: Path, before: Path, after: Path, out: Path, url: str) -> float:
    """Seconds ``caption-region --backend`` takes with default options (it must succeed)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    args = ["--before", str(before), "--after", str(after), "--out", str(out), "--backend", url]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ccexpert_cli", "caption-region", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=code)
    return time.perf_counter() - start


def measure(code: Path, before: Path, after: Path, folder: Path, url: str, pid: int, index: int,
            wait_s: float, max_batch: int) -> dict:
    """One captioning of the town through the backend: model busy share, pairs/s, CPU per pair by stage."""
    out = folder / f"out-{index}.gpkg"
    first, cpu = _info(url)["batching"], _cpu_seconds(pid)
    full = run_region(code, before, after, out, url)
    second, cpu = _info(url)["batching"], _cpu_seconds(pid) - cpu
    fixed = run_region(code, before, after, out, url)  # a resume with nothing to do: start-up and checks only
    out.unlink()
    busy_s = full - fixed
    calls, pairs = second["batches"] - first["batches"], second["pairs"] - first["pairs"]
    entry = {
        "seconds": round(busy_s, 2), "model_calls": calls, "pairs": pairs,
        "mean_batch": round(pairs / max(1, calls), 1),
        "model_busy_share": round(calls * wait_s / busy_s, 3),
        "pairs_per_s": round(pairs / busy_s, 1),
        "share_of_capacity": round(pairs / busy_s / (max_batch / wait_s), 3),
        "backend_cpu_ms_per_pair": round(1000 * cpu / max(1, pairs), 2),
    }
    if "stages" in second:
        stages = {name: (second["stages"][name]["cpu_s"] - first["stages"][name]["cpu_s"])
                  for name in second["stages"]}
        split = {name: round(1000 * seconds / max(1, pairs), 2) for name, seconds in stages.items()}
        split["receive + respond (the rest)"] = round(entry["backend_cpu_ms_per_pair"] - sum(split.values()), 2)
        entry["cpu_ms_per_pair_by_stage"] = split
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=400)
    parser.add_argument("--wait-s", type=float, default=0.25, help="the model's time per call (default 0.25)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose backend and command are measured")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("serve_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        raise SystemExit(serve(args.wait_s, args.serve_args))

    sys.path.insert(0, str(HERE))
    from region_saturation import write_region

    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "machine": f"{os.cpu_count()}-core {platform.machine()}", "code": str(args.code),
                    "model": f"GPU-like: {args.wait_s} s per call of up to {args.max_batch} pairs "
                             f"({args.max_batch / args.wait_s:g} pairs/s)"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        before, after = write_region(folder, args.tiles)
        report["tiles"] = math.ceil(math.sqrt(args.tiles)) ** 2
        process, url = start_backend(args.code, args.wait_s, args.max_batch, folder / "serve.log")
        try:
            runs = [measure(args.code, before, after, folder, url, process.pid, index, args.wait_s, args.max_batch)
                    for index in range(args.repeats)]
        finally:
            process.terminate()
            process.wait(timeout=30)
    report["runs"] = runs
    report["median"] = {key: statistics.median(run[key] for run in runs)
                        for key in ("model_busy_share", "pairs_per_s", "backend_cpu_ms_per_pair")}
    report["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
