"""The plugin's help, read inside QGIS without a browser or a network: the README's "QGIS plugin" section with its
screenshots, which ``make plugin`` copies into the zip (``help.md`` and ``docs/``); in the repository it is read from
README.md itself. Stdlib only: the build script uses :func:`plugin_section` too."""

from __future__ import annotations

import re
from pathlib import Path

#: The section's heading in README.md.
HEADING = "## QGIS plugin"
#: The help as the zip carries it, beside this module.
HELP_FILE = Path(__file__).with_name("help.md")
README = Path(__file__).resolve().parents[1] / "README.md"


def plugin_section(readme: str) -> str:
    """The README's plugin section: from its heading to the next heading of its level."""
    start = readme.index(HEADING)
    following = re.search(r"^## ", readme[start + len(HEADING):], re.MULTILINE)
    end = len(readme) if following is None else start + len(HEADING) + following.start()
    return readme[start:end].rstrip() + "\n"


def images(section: str) -> list[str]:
    """The relative paths of the images the section shows (``docs/….png``)."""
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", section)


def help_text() -> tuple[str, Path]:
    """The help in Markdown, and the folder its image paths are relative to."""
    if HELP_FILE.is_file():
        return HELP_FILE.read_text(encoding="utf-8"), HELP_FILE.parent
    return plugin_section(README.read_text(encoding="utf-8")), README.parent
