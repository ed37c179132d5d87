"""The plugin loads and unloads in QGIS, from the repository and from the zip that `make plugin` builds."""

from __future__ import annotations

import configparser
import sys
import zipfile
from pathlib import Path

import qgis.utils
from qgis.core import QgsApplication

from qgis_plugin import classFactory

from conftest import REPO, build_plugin_zip

REQUIRED_METADATA = (
    "name", "qgisMinimumVersion", "version", "author", "email", "about", "tracker", "repository", "homepage", "tags",
    "category", "icon", "experimental", "hasProcessingProvider",
)


def registry_has_algorithm() -> bool:
    return QgsApplication.processingRegistry().algorithmById("ccexpert:captionchanges") is not None


def test_the_plugin_loads_opens_its_dialog_and_unloads(qgis_iface) -> None:
    plugin = classFactory(qgis_iface)
    plugin.initGui()
    assert plugin.action is not None and plugin.action.text().startswith("Caption changes")
    assert registry_has_algorithm()
    dialog = plugin.show_dialog()
    assert dialog.isVisible()
    plugin.unload()
    assert plugin.action is None and plugin.dialog is None and not registry_has_algorithm()


def test_the_zip_holds_what_the_plugin_repository_requires_and_installs_from_zip(tmp_path: Path, qgis_iface) -> None:
    with zipfile.ZipFile(build_plugin_zip(tmp_path)) as zipped:
        names = set(zipped.namelist())
        assert {f"ccexpert_qgis/{n}" for n in ("__init__.py", "metadata.txt", "icon.png", "LICENSE")} <= names
        assert all(name.startswith("ccexpert_qgis/") for name in names)
        for source in ("ccexpert_core/geo/grid.py", "ccexpert_core/geo/pixels.py", "ccexpert_core/geo/schema.py",
                       "ccexpert_core/protocol.py", "ccexpert_core/inflight.py", "ccexpert_core/geo/run_files.py",
                       "ccexpert_core/geo/dates.py", "ccexpert_core/captions.py", "ccexpert_core/geo/search.py",
                       "ccexpert_core/geo/calibration.py", "ccexpert_core/geo/sources.py"):
            assert zipped.read(f"ccexpert_qgis/bundled/{Path(source).name}") == (REPO / source).read_bytes()
        plugins = tmp_path / "plugins"
        zipped.extractall(plugins)  # what QGIS's "Install from ZIP" does, into the profile's plugins folder
    metadata = configparser.ConfigParser(interpolation=None)
    metadata.optionxform = str
    metadata.read(plugins / "ccexpert_qgis" / "metadata.txt")
    assert all(metadata["general"].get(key) for key in REQUIRED_METADATA)
    assert metadata["general"]["qgisMinimumVersion"] == "3.22" and metadata["general"]["hasProcessingProvider"] == "yes"
    assert metadata["general"]["qgisMaximumVersion"] == "4.99"  # QGIS 4 (test_plugin_repository.py has the rest)

    sys.path.insert(0, str(plugins))
    qgis.utils.plugin_paths.insert(0, str(plugins))
    try:
        qgis.utils.updateAvailablePlugins()
        assert "ccexpert_qgis" in qgis.utils.available_plugins
        assert qgis.utils.pluginMetadata("ccexpert_qgis", "name") == "CCExpert"
        assert qgis.utils.loadPlugin("ccexpert_qgis") and qgis.utils.startPlugin("ccexpert_qgis")
        shared = sys.modules["ccexpert_qgis.shared_modules"]
        for module in (shared.grid, shared.pixels, shared.protocol, shared.schema, shared.dates, shared.captions,
                       shared.search, shared.calibration):
            assert Path(module.__file__).parent == plugins / "ccexpert_qgis" / "bundled"
        # The bundled search reads the bundled vocabulary and dates (its neighbours), not the project's.
        assert shared.search.captions is shared.captions and shared.search.dates is shared.dates
        # Help reads the README's section from the zip, and finds its screenshots beside it.
        text, folder = sys.modules["ccexpert_qgis.help"].help_text()
        assert folder == plugins / "ccexpert_qgis" and text.startswith("## QGIS plugin")
        assert all((folder / image).is_file() for image in sys.modules["ccexpert_qgis.help"].images(text))
        assert registry_has_algorithm()
        assert qgis.utils.unloadPlugin("ccexpert_qgis")
        assert not registry_has_algorithm()
    finally:
        sys.path.remove(str(plugins))
        qgis.utils.plugin_paths.remove(str(plugins))
        qgis.utils.updateAvailablePlugins()
