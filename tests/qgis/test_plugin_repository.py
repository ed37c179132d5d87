"""Ready for the QGIS plugin repository and for QGIS 4: the zip that `make plugin` builds, held to the repository's
upload rules (one top folder with a plain name, __init__.py, metadata.txt with the fields it requires and well-formed
web addresses, LICENSE, nothing compiled or hidden, no path tricks, a sound archive under 25 MB), to QGIS 4
(``qgisMaximumVersion`` 4.99, enums spelled as Qt 6 and QGIS 4 want them) and to Bandit (no finding in the zip's
code)."""

from __future__ import annotations

import ast
import configparser
import json
import re
import subprocess
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import qgis.core
import qgis.gui
from qgis.PyQt import QtCore, QtGui, QtNetwork, QtWidgets, QtXml

from conftest import REPO, build_plugin_zip, require_project_venv

#: The repository's limit on an upload.
MAX_BYTES = 25_000_000
#: What the repository refuses an upload without (its validator), and what QGIS reads besides.
REQUIRED = ("name", "description", "version", "qgisMinimumVersion", "author", "email", "about", "tracker",
            "repository")
#: Placeholders the repository refuses for the web addresses.
PLACEHOLDERS = {"tracker": "http://bugs", "repository": "http://repo", "homepage": "http://homepage"}
BANDIT = REPO / ".venv" / "bin" / "bandit"
#: Modules whose classes the plugin's enums come from.
SCOPES = {"qgis.core": qgis.core, "qgis.gui": qgis.gui, "qgis.PyQt.QtCore": QtCore, "qgis.PyQt.QtGui": QtGui,
          "qgis.PyQt.QtWidgets": QtWidgets, "qgis.PyQt.QtNetwork": QtNetwork, "qgis.PyQt.QtXml": QtXml}


@pytest.fixture(scope="module")
def zipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_plugin_zip(tmp_path_factory.mktemp("zip"))


def metadata_of(archive: zipfile.ZipFile) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read_string(archive.read("ccexpert_qgis/metadata.txt").decode("utf-8"))
    return parser["general"]


def test_the_zip_passes_the_repositorys_upload_rules(zipped: Path) -> None:
    assert zipped.stat().st_size <= MAX_BYTES
    with zipfile.ZipFile(zipped) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert {name.split("/")[0] for name in names} == {"ccexpert_qgis"}
        assert re.match(r"^[A-Za-z][A-Za-z0-9-_]+$", "ccexpert_qgis")
        assert {"ccexpert_qgis/__init__.py", "ccexpert_qgis/metadata.txt", "ccexpert_qgis/LICENSE"} <= set(names)
        for name in names:
            parts = name.split("/")
            assert ".." not in name and not name.startswith("/"), name
            assert not name.endswith((".pyc", ".pyo", ".so", ".dll", ".exe")), name  # nothing compiled
            assert not {"__pycache__", "__MACOSX", ".git"} & set(parts), name
            assert not any(part.startswith(".") for part in parts), name  # nothing hidden
        metadata = metadata_of(archive)
        assert archive.read(f"ccexpert_qgis/{metadata['icon']}")[:4] == b"\x89PNG"
        assert "Apache License" in archive.read("ccexpert_qgis/LICENSE").decode("utf-8")
    assert all(metadata.get(key, "").strip() for key in REQUIRED)
    assert "/" not in metadata["author"] and re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", metadata["email"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", metadata["version"])
    for key, placeholder in PLACEHOLDERS.items():
        address = urlsplit(metadata[key])
        assert metadata[key] != placeholder and address.scheme == "https" and "." in address.netloc, key
        assert address.netloc not in ("example.com", "example.org", "localhost"), key
    assert metadata["experimental"] in ("True", "False") and metadata["deprecated"] in ("True", "False")


def test_the_zip_says_it_runs_on_qgis_3_22_to_4(zipped: Path) -> None:
    with zipfile.ZipFile(zipped) as archive:
        metadata = metadata_of(archive)
    # The repository lists a plugin for QGIS 4 by its qgisMaximumVersion (QGIS dropped supportsQt6).
    assert (metadata["qgisMinimumVersion"], metadata["qgisMaximumVersion"]) == ("3.22", "4.99")
    assert "supportsQt6" not in metadata


def test_bandit_finds_nothing_in_the_zips_code(zipped: Path, tmp_path: Path) -> None:
    require_project_venv()
    with zipfile.ZipFile(zipped) as archive:
        archive.extractall(tmp_path)
    # All severities, as the repository's scan can be set to; but assert_used (B101): the plugin's asserts state
    # what the type checker cannot know (QGIS's singletons exist) and QGIS never runs Python with -O.
    scanned = subprocess.run([str(BANDIT), "-r", str(tmp_path / "ccexpert_qgis"), "-f", "json", "--skip", "B101"],
                             capture_output=True, text=True, check=False)
    report = json.loads(scanned.stdout)
    assert report["results"] == [], [(r["filename"], r["line_number"], r["test_id"]) for r in report["results"]]
    assert not report["errors"] and scanned.returncode == 0


def _unscoped_enums(path: Path) -> list[str]:
    """``Class.Member`` where the member belongs to an enum of the class (``Qt.AlignLeft`` for
    ``Qt.AlignmentFlag.AlignLeft``): Qt 6 (PyQt6, QGIS 4) knows only the scoped spelling."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    classes = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in SCOPES:
            for alias in node.names:
                found = getattr(SCOPES[node.module], alias.name, None)
                if isinstance(found, type):
                    classes[alias.asname or alias.name] = found
    unscoped = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in classes:
            owner = classes[node.value.id]
            value = getattr(owner, node.attr, None)
            kind = type(value)
            if kind in (int, bool, float, str) or isinstance(value, type) or callable(value) or value is None:
                continue
            if getattr(owner, kind.__name__, None) is kind and node.attr != kind.__name__:
                unscoped.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr} → "
                                f"{node.value.id}.{kind.__name__}.{node.attr}")
    return unscoped


def test_the_plugin_spells_every_enum_as_qt6_and_qgis_4_want_it() -> None:
    found = [line for path in sorted((REPO / "qgis_plugin").glob("*.py")) for line in _unscoped_enums(path)]
    assert not found, "\n".join(found)
    # The check sees what it looks for.
    probe = REPO / "build" / "unscoped_probe.py"
    probe.parent.mkdir(exist_ok=True)
    probe.write_text("from qgis.PyQt.QtCore import Qt\nfrom qgis.core import QgsTask\nQt.AlignLeft\n"
                     "QgsTask.CanCancel\nQt.AlignmentFlag.AlignLeft\n", encoding="utf-8")
    try:
        assert [line.split(": ", 1)[1] for line in _unscoped_enums(probe)] == [
            "Qt.AlignLeft → Qt.AlignmentFlag.AlignLeft", "QgsTask.CanCancel → QgsTask.Flag.CanCancel"]
    finally:
        probe.unlink()
