"""Backend pieces without a server: the model's public description, the multipart scanner, the connection cap."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import requests

from backend.connections import connection_cap, open_descriptors
from backend.limits import BodyRule, MultipartScanner
from ccexpert_core.defaults import DEMO_MODEL_DIR
from ccexpert_core.model_card import DEMO_NOTE, PRESET_NOTE, describe_model


def _model_folder(tmp_path: Path, name: str = "ckpt", config: dict | None = None, weights: bytes = b"w" * 300_000):
    folder = tmp_path / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config or {}), encoding="utf-8")
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_a_model_card_title_names_the_model(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, config={"_name_or_path": "owner/base-model"})
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n# not a title\n---\n\n# Harbour model v2\n\ntext\n")
    card = describe_model(str(folder))
    assert (card.name, card.note) == ("Harbour model v2", None)
    assert card.model_id.startswith("ckpt@") and str(tmp_path) not in card.model_id


def test_without_a_card_a_hub_name_and_never_a_path(tmp_path: Path) -> None:
    assert describe_model(str(_model_folder(tmp_path / "a", config={"_name_or_path": "owner/base"}))).name == (
        "owner/base"
    )
    for index, path_like in enumerate(("/home/someone/checkpoints/run3", "../run3", "C:/models/run3", "~/run3")):
        folder = _model_folder(tmp_path / str(index), name="served", config={"_name_or_path": path_like})
        assert describe_model(str(folder)).name == "served"  # the folder's own name, not the path in its config


def test_the_id_follows_the_weights_not_the_place(tmp_path: Path) -> None:
    first = _model_folder(tmp_path / "one", weights=b"a" * 300_000)
    copy = tmp_path / "elsewhere" / "ckpt"
    shutil.copytree(first, copy)
    (copy / "README.md").write_text("# edited card\n")  # the card is not the model
    retrained = _model_folder(tmp_path / "two", weights=b"a" * 299_999 + b"b")  # differs in its last byte only
    assert describe_model(str(first)).model_id == describe_model(str(copy)).model_id
    assert describe_model(str(first)).model_id != describe_model(str(retrained)).model_id


def test_the_demo_model_and_presets_say_what_their_captions_are_worth() -> None:
    if (DEMO_MODEL_DIR / "config.json").is_file():
        demo = describe_model(str(DEMO_MODEL_DIR))
        assert (demo.name, demo.note) == ("CCExpert demo model", DEMO_NOTE)
    preset = describe_model("preset:tiny")
    assert (preset.model_id, preset.note) == ("preset:tiny", PRESET_NOTE)


def _multipart(files: int, size: int) -> tuple[bytes, str]:
    prepared = requests.Request(
        "POST", "http://x/", files=[("before", (f"{i}.png", bytes([i % 251]) * size)) for i in range(files)]
    ).prepare()
    return prepared.body, prepared.headers["Content-Type"]


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000, 1 << 20])
def test_the_scanner_counts_parts_and_measures_files_whatever_the_chunks(chunk: int) -> None:
    rule = BodyRule(max_bytes=1 << 30, max_file_bytes=5_000, max_parts=3)

    def scan(body: bytes, content_type: str) -> str | None:
        scanner = MultipartScanner.for_content_type(content_type, rule)
        assert scanner is not None
        refusals = [scanner.feed(body[start : start + chunk]) for start in range(0, len(body), chunk)]
        return next((refusal for refusal in refusals if refusal), None)

    assert scan(*_multipart(3, 4_000)) is None
    assert "more than 3 parts" in scan(*_multipart(4, 10))
    assert "over the limit of 5000 bytes" in scan(*_multipart(1, 30_000))
    assert MultipartScanner.for_content_type("application/json", rule) is None


def test_the_connection_cap_leaves_room_for_files() -> None:
    in_use = open_descriptors()
    assert connection_cap(1024) == (1024 - in_use) // 2
    assert connection_cap(1 << 20) == 2048  # the default ceiling
    assert connection_cap(1 << 20, 100) == 100
    assert connection_cap(1024, 5000) == (1024 - in_use) // 2  # asked for more than the file limit allows
