"""bench/gpu_check.py works before a GPU sees it: its --smoke run on the CPU, and its meta-device build."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ccexpert_core.model import CCExpertForConditionalGeneration

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
STAGES = {"preprocessing_s", "device_preparation_s", "vision_tower_s", "dim_s", "projector_and_prefill_s", "decoding_s",
          "other_s", "finishing_s"}


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_reports_every_stage_per_batch_and_the_series(gpu_check, tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    results = gpu_check.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text()) == results
    assert results["vocabulary"] == gpu_check.REAL_VOCABULARY == 151_937
    assert results["prompt_tokens"] > 2 * 144  # the real prompt: two images of 144 tokens (demo shape) and its text
    assert set(results["batches"]) == {"1", "2"}
    for batch in results["batches"].values():
        assert set(batch["split_s_per_batch"]) == STAGES
        assert all(seconds >= 0 for seconds in batch["split_s_per_batch"].values())
        assert batch["pairs_per_s"] > 0 and batch["peak_gpu_memory_gib"] is None  # no GPU here
    assert results["series"]["tower_images_per_tile"] == {"series": 4, "pairs": 6}


def test_meta_build_initialises_weights_and_buffers_like_a_normal_build(gpu_check) -> None:
    captioner = gpu_check.build("demo", torch.device("cpu"), torch.float32, vocabulary=500, answer_tokens=2)
    normal = CCExpertForConditionalGeneration(captioner.model.config)
    built = dict(captioner.model.named_buffers())
    for name, buffer in normal.named_buffers():
        assert torch.equal(built[name], buffer), name  # to_empty leaves buffers as garbage: they must be rebuilt
    assert all(torch.isfinite(p).all() for p in captioner.model.parameters())
    assert captioner.model.config.text_config.vocab_size == 500
