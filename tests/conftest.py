"""Shared fixtures: paths to ../shared data, a tiny model built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LEVIRCC = SHARED / "data" / "levircc"


def require_shared(path: Path) -> Path:
    """``path`` under ../shared, or skip the test saying what is missing."""
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (the project's ../shared folder is absent)")
    return path


@pytest.fixture(scope="session")
def levircc_pair() -> tuple[Path, Path]:
    """The real LEVIR-CC pair (256×256 RGB PNG): before, after."""
    images = require_shared(LEVIRCC / "images")
    return images / "A" / "train_000016.png", images / "B" / "train_000016.png"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny CCExpert (random weights, seed 0) with its tokenizer."""
    from ccexpert_core.model import build_tiny_model, save_model

    model, processor = build_tiny_model(seed=0)
    return save_model(model, processor, tmp_path_factory.mktemp("tiny-model"))
