"""Build the QGIS plugin zip: qgis_plugin/ + metadata.txt + the shared pure modules, as "Install from ZIP" wants it.

The zip holds one folder, ``ccexpert_qgis/``, with the plugin's modules, ``metadata.txt``, ``icon.png``, ``LICENSE``
and ``bundled/`` — copies of ``ccexpert_core/geo/grid.py``, ``ccexpert_core/geo/pixels.py``,
``ccexpert_core/geo/schema.py``, ``ccexpert_core/protocol.py``, ``ccexpert_core/inflight.py``,
``ccexpert_core/geo/run_files.py``, ``ccexpert_core/geo/dates.py``, ``ccexpert_core/geo/sources.py``,
``ccexpert_core/captions.py``, ``ccexpert_core/geo/search.py`` and ``ccexpert_core/geo/calibration.py``, which the
plugin imports from there (one tiler, one set of pixel rules, one captions layer schema and style, one wire format,
one scheduler of batches in flight, one set of checks on a run's files, one reading of dates, one reading of where a
raster is, one change kind from a caption's words, one ranking of tiles for a query, one calibration of p_right;
nothing to install in QGIS's Python). They sit side by side in bundled/, so a module may import another bundled one
relatively (``from . import schema``). The README's plugin section goes in as ``help.md`` with the screenshots it
shows (``docs/``), for the dialog's Help to show offline.

Usage: python3 scripts/build_plugin.py [--out DIR]   → DIR/ccexpert_qgis-VERSION.zip (default DIR: dist)
"""

from __future__ import annotations

import argparse
import configparser
import re
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the plugin's help module (stdlib only) finds the README's section
from qgis_plugin.help import HELP_FILE, README, images, plugin_section  # noqa: E402

PLUGIN_FOLDER = "ccexpert_qgis"
SOURCE = REPO / "qgis_plugin"
#: What goes from qgis_plugin/ into the zip besides LICENSE: the modules and the icon.
PLUGIN_SUFFIXES = {".py", ".png"}
METADATA = REPO / "metadata.txt"
#: The shared modules, by their name in bundled/.
BUNDLED = {
    "grid.py": REPO / "ccexpert_core" / "geo" / "grid.py",
    "pixels.py": REPO / "ccexpert_core" / "geo" / "pixels.py",
    "schema.py": REPO / "ccexpert_core" / "geo" / "schema.py",
    "protocol.py": REPO / "ccexpert_core" / "protocol.py",
    "inflight.py": REPO / "ccexpert_core" / "inflight.py",
    "run_files.py": REPO / "ccexpert_core" / "geo" / "run_files.py",
    "dates.py": REPO / "ccexpert_core" / "geo" / "dates.py",
    "run_contract.py": REPO / "ccexpert_core" / "geo" / "run_contract.py",
    "sources.py": REPO / "ccexpert_core" / "geo" / "sources.py",
    "captions.py": REPO / "ccexpert_core" / "captions.py",
    "search.py": REPO / "ccexpert_core" / "geo" / "search.py",
    "calibration.py": REPO / "ccexpert_core" / "geo" / "calibration.py",
}
BUNDLED_INIT = '"""Copies of the project\'s pure modules (ccexpert_core), made by `make plugin`: do not edit here."""\n'
REQUIRED_METADATA = (
    "name", "qgisMinimumVersion", "qgisMaximumVersion", "description", "version", "author", "email", "about",
    "tracker", "repository", "homepage", "tags", "category", "icon", "experimental", "hasProcessingProvider",
)


class _CaseSensitiveParser(configparser.ConfigParser):
    """Keys kept as written (qgisMinimumVersion), where ConfigParser lowercases them."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def read_metadata() -> configparser.SectionProxy:
    """metadata.txt's [general] section, checked for the fields the QGIS plugin repository requires."""
    parser = _CaseSensitiveParser(interpolation=None)
    parser.read(METADATA, encoding="utf-8")
    general = parser["general"]
    missing = [key for key in REQUIRED_METADATA if not general.get(key, "").strip()]
    if missing:
        sys.exit(f"metadata.txt lacks {', '.join(missing)}")
    return general


def check_bundled(name: str, text: str) -> None:
    """A bundled module must stand alone: an import of the project would fail inside QGIS, and so would a relative
    import of a module that is not bundled beside it."""
    if re.search(r"^\s*(from|import)\s+(ccexpert_core|backend)\b", text, re.MULTILINE):
        sys.exit(f"{BUNDLED[name]} imports from the project: it cannot be bundled into the plugin as it is")
    modules = re.findall(r"^\s*from \.(\w+) import ", text, re.MULTILINE)
    for imported in re.findall(r"^\s*from \. import ([\w, ]+)$", text, re.MULTILINE):
        modules += [part.split(" as ")[0].strip() for part in imported.split(",")]
    missing = [module for module in modules if f"{module}.py" not in BUNDLED]
    if missing:
        sys.exit(f"{BUNDLED[name]} imports {', '.join(missing)}, which the plugin does not bundle")


def build(out_dir: Path) -> Path:
    """Write the zip and return its path."""
    metadata = read_metadata()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PLUGIN_FOLDER}-{metadata['version']}.zip"
    sources = sorted(p for p in SOURCE.iterdir() if p.suffix in PLUGIN_SUFFIXES or p.name == "LICENSE")
    if metadata["icon"] not in {p.name for p in sources}:
        sys.exit(f"metadata.txt names the icon {metadata['icon']}, which qgis_plugin/ lacks")
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sources:
            archive.write(path, f"{PLUGIN_FOLDER}/{path.name}")
        archive.write(METADATA, f"{PLUGIN_FOLDER}/metadata.txt")
        archive.writestr(f"{PLUGIN_FOLDER}/bundled/__init__.py", BUNDLED_INIT)
        for name, path in BUNDLED.items():
            text = path.read_text(encoding="utf-8")
            check_bundled(name, text)
            archive.writestr(f"{PLUGIN_FOLDER}/bundled/{name}", text)
        section = plugin_section(README.read_text(encoding="utf-8"))
        archive.writestr(f"{PLUGIN_FOLDER}/{HELP_FILE.name}", section)
        for image in images(section):
            archive.write(REPO / image, f"{PLUGIN_FOLDER}/{image}")
    return target


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="folder for the zip (default: dist)")
    print(build(parser.parse_args().out))
