"""The model commands of ``ccexpert``: output, counts, and clear refusals (one line, exit 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ccexpert_cli.main import main

CCEXPERT = Path(sys.executable).parent / "ccexpert"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CCEXPERT), *args], capture_output=True, text=True, timeout=300)


def test_caption_pair_prints_the_caption(tiny_model_dir: Path, levircc_pair, capsys: pytest.CaptureFixture) -> None:
    before, after = levircc_pair
    assert main(["caption-pair", "--model", str(tiny_model_dir), "--json", str(before), str(after)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"caption", "change_detected", "confidence"} and 0 < result["confidence"] <= 1


def test_model_info_of_the_0_5b_preset_matches_the_reference_sizes(capsys: pytest.CaptureFixture) -> None:
    """Reference notes: LLaVA-OneVision-0.5B ≈ 894M (vision 398M, language 494M, projector 1.8M), DIM ≈ 64M."""
    assert main(["model-info", "--preset", "0.5b"]) == 0
    counts = json.loads(capsys.readouterr().out)["parameters"]
    assert counts["vision"] == pytest.approx(398e6, rel=0.01)
    assert counts["language"] == pytest.approx(494e6, rel=0.01)
    assert counts["projector"] == pytest.approx(1.8e6, rel=0.03)
    assert counts["dim"] == pytest.approx(64e6, rel=0.01)
    assert counts["total"] - counts["dim"] == pytest.approx(894e6, rel=0.01)


def test_model_info_of_the_7b_preset(capsys: pytest.CaptureFixture) -> None:
    assert main(["model-info", "--preset", "7b"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"]["total"] == pytest.approx(8.09e9, rel=0.01)
    assert info["dim_vision_layers"] == [17, 20, 23, 26] and info["tokens_per_image"] == 729


def test_create_model_writes_a_loadable_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["create-model", str(tmp_path / "m"), "--no-dim"]) == 0
    assert main(["model-info", "--model", str(tmp_path / "m")]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["dim_enabled"] is False


@pytest.mark.parametrize(
    "case, message",
    [
        ("unreadable_image", "cannot read image"),
        ("not_a_model", "is not a model folder"),
        ("missing_folder", "model folder not found"),
        ("other_model_type", "not a CCExpert or LLaVA-OneVision"),
    ],
)
def test_bad_inputs_get_one_clear_line_and_exit_code_2(
    case: str, message: str, tmp_path: Path, tiny_model_dir: Path, levircc_pair
) -> None:
    before, after = map(str, levircc_pair)
    model = str(tiny_model_dir)
    if case == "unreadable_image":
        before = str(tmp_path / "corrupt.png")
        Path(before).write_bytes(b"not an image at all")
    elif case == "not_a_model":
        model = str(tmp_path)
    elif case == "missing_folder":
        model = str(tmp_path / "nowhere")
    else:
        (tmp_path / "bert").mkdir()
        (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
        model = str(tmp_path / "bert")
    result = run("caption-pair", "--model", model, before, after)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0]
