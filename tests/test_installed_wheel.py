"""The recipes from an installed wheel: the project built as a wheel and installed into a fresh virtual environment
(this .venv's installed dependencies reused, nothing downloaded), then ``ccexpert train --recipe finetune`` and
``--recipe demo --smoke`` run from a folder outside the checkout. Their settings come from the installed package,
and they write where they are told, never into site-packages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from test_finetune import needs_demo_model, write_export

REPO = Path(__file__).resolve().parents[1]
#: What the wheel is built from: pyproject's packages and the files its metadata names.
SOURCES = ("pyproject.toml", "README.md", "ccexpert_core", "ccexpert_cli", "backend")


def run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(HF_HUB_OFFLINE="1", TORCH_EXTENSIONS_DIR=str(REPO / ".torch_extensions"))
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def files_in(folder: Path) -> set[str]:
    """Every file under ``folder`` but compiled bytecode (which Python may write beside any module it imports)."""
    return {str(path.relative_to(folder)) for path in folder.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts}


class Installed:
    """A fresh virtual environment with the project's wheel installed."""

    def __init__(self, root: Path) -> None:
        self.venv = root / "venv"
        self.bin = self.venv / "bin"
        self.site = Path(sysconfig.get_path("purelib", vars={"base": str(self.venv), "platbase": str(self.venv)}))
        self.files: set[str] = set()

    def ccexpert(self, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
        return run([str(self.bin / "ccexpert"), *map(str, args)], cwd)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy, so that setuptools' build/ and egg-info never land in the checkout.
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         str(source), "-w", str(root / "dist")])
    wheel, = (root / "dist").glob("ccexpert-*.whl")
    installed = Installed(root)
    run([sys.executable, "-m", "venv", "--without-pip", str(installed.venv)])
    # This .venv's dependencies through a .pth. Its own editable ccexpert is a finder installed by a .pth of its
    # site folder, which a path added this way does not run: the wheel's copy is the only ccexpert here.
    (installed.site / "project_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run([sys.executable, "-m", "pip", "--python", str(installed.bin / "python"), "install", "--quiet", "--no-deps",
         "--no-index", str(wheel)])
    installed.files = files_in(installed.site)
    return installed


def test_the_wheel_carries_the_recipes_settings_and_is_the_package_imported(installed: Installed,
                                                                              tmp_path: Path) -> None:
    shown = run([str(installed.bin / "python"), "-c", "import json, ccexpert_cli\n"
                 "from ccexpert_core.training import shipped\n"
                 "print(json.dumps([ccexpert_cli.__file__, str(shipped.CONFIGS), shipped.deepspeed_names(),"
                 " sorted(p.name for p in shipped.CONFIGS.glob('*/*.yaml'))]))"], tmp_path)
    cli, configs, deepspeed, settings = json.loads(shown.stdout)
    assert Path(cli).is_relative_to(installed.site) and Path(configs).is_relative_to(installed.site)
    assert deepspeed == ["zero2", "zero3"]
    assert settings == sorted(["stage1.yaml", "stage2.yaml", "stage3.yaml", "0.5b.yaml", "7b.yaml", "demo.yaml"])


@needs_demo_model
def test_a_fine_tune_from_the_installed_wheel_writes_only_its_out_folder(installed: Installed,
                                                                         tmp_path: Path) -> None:
    export = write_export(tmp_path / "export")
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert not work.is_relative_to(REPO)
    result = installed.ccexpert("train", "--recipe", "finetune", "--data", export, "--out", "tuned",
                                "max_steps=1", "per_device_batch_size=4", cwd=work)
    model = work / "tuned"
    assert work / result.stdout.strip().splitlines()[-1] == model
    record = json.loads((model / "finetune.json").read_text())
    # The shipped demo model and its shape's shipped settings, both from the installed package.
    assert Path(record["base_model"]).is_relative_to(installed.site) and record["steps"] == 1
    assert record["lora"]["rank"] == 16 and record["corrected_repeats"] == 8  # training/configs/finetune/demo.yaml
    installed.ccexpert("model-info", "--model", model, cwd=work)
    assert sorted(path.name for path in work.iterdir()) == ["tuned"]
    assert files_in(installed.site) == installed.files


@pytest.mark.slow
def test_a_demo_recipe_smoke_run_from_the_installed_wheel_works_in_the_current_folder(installed: Installed,
                                                                                    tmp_path: Path) -> None:
    result = installed.ccexpert("train", "--recipe", "demo", "--smoke", cwd=tmp_path)
    work = tmp_path / "demo-recipe"
    assert result.stdout.strip().splitlines()[-1] == str(work / "model")
    assert sorted(path.name for path in work.iterdir()) == ["data", "model", "stage1", "stage2", "stage3"]
    # Every path of the shipped stages read from the work folder: each stage starts from the previous one's final.
    summaries = [json.loads((work / stage / "final" / "training_summary.json").read_text())
                 for stage in ("stage1", "stage2", "stage3")]
    assert [summary["init"] for summary in summaries] == [
        "preset:demo", str(work / "stage1" / "final"), str(work / "stage2" / "final")]
    assert {summary["data"] for summary in summaries} == {str(work / "data" / "train" / "pairs.json")}
    assert [summary["global_step"] for summary in summaries] == [1, 1, 1]
    assert (work / "stage2" / "checkpoint-1" / "global_step1").is_dir()  # DeepSpeed's: the shipped ZeRO-2 config
    assert "smoke run" in (work / "model" / "README.md").read_text()
    assert json.loads((work / "model" / "held_out_scores.json").read_text())["pairs"] == 8
    assert files_in(installed.site) == installed.files
