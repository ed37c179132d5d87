"""The Processing provider: the same run as the dialog's, for batch mode, the graphical modeler and qgis_process."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .processing_algorithm import CaptionChangesAlgorithm

ICON = Path(__file__).with_name("icon.png")


class CCExpertProvider(QgsProcessingProvider):
    """Provider ``ccexpert``: one algorithm, ``ccexpert:captionchanges``."""

    def loadAlgorithms(self) -> None:  # noqa: N802
        self.addAlgorithm(CaptionChangesAlgorithm())

    def id(self) -> str:
        return "ccexpert"

    def name(self) -> str:
        return "CCExpert"

    def icon(self) -> QIcon:
        return QIcon(str(ICON))
