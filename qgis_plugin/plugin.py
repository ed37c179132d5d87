"""The plugin's face in QGIS: a toolbar button and a Raster menu entry that open the dialog, the runs it starts,
and the Processing provider."""

from __future__ import annotations

from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsProject
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .auth import load_token
from .dialog import CaptionDialog
from .errors import CaptionRunError
from .job import JobSummary, preflight
from .params import CaptionParams, job_from_params, result_title
from .processing_provider import CCExpertProvider
from .result_layer import show_result
from .task import CaptionTask

MENU = "&CCExpert"
ICON = Path(__file__).with_name("icon.png")


class CCExpertPlugin:
    """Created by QGIS through ``classFactory``; ``initGui``/``unload`` add and remove everything it shows."""

    def __init__(self, iface) -> None:
        self.iface = iface
        self.action: QAction | None = None
        self.provider: CCExpertProvider | None = None
        self.dialog: CaptionDialog | None = None
        self.tasks: list[CaptionTask] = []

    def initProcessing(self) -> None:  # noqa: N802 (called by QGIS, qgis_process included)
        """Register the Processing provider (QGIS calls this alone where there is no interface)."""
        if self.provider is None:
            self.provider = CCExpertProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        """The toolbar button, the menu entry and the Processing provider."""
        self.initProcessing()
        self.action = QAction(QIcon(str(ICON)), "Caption changes between two rasters…", self.iface.mainWindow())
        self.action.setToolTip("CCExpert: describe what changed between two rasters, tile by tile, into a GeoPackage")
        self.action.triggered.connect(self.show_dialog)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToRasterMenu(MENU, self.action)

    def unload(self) -> None:
        """Remove everything initGui added; runs still going are canceled (their finished batches are kept)."""
        for task in list(self.tasks):
            task.cancel()
        if self.dialog is not None:
            self.dialog.close()
            self.dialog.deleteLater()
            self.dialog = None
        if self.action is not None:
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    def show_dialog(self) -> CaptionDialog:
        """Open the dialog with the choices remembered from last time."""
        if self.dialog is None:
            self.dialog = CaptionDialog(self.iface, CaptionParams.load(), self.iface.mainWindow())
            self.dialog.run_requested.connect(self.start)
        else:
            self.dialog.set_params(CaptionParams.load())
        self.dialog.show()
        self.dialog.raise_()
        self.dialog.activateWindow()
        return self.dialog

    def start(self, params: CaptionParams) -> CaptionTask | None:
        """Check the inputs now (clear messages before anything runs), then caption in a background task."""
        bar = self.iface.messageBar()
        canvas = self.iface.mapCanvas()
        try:
            job = job_from_params(
                params, QgsProject.instance(), canvas.extent(), canvas.mapSettings().destinationCrs(),
                load_token(params.auth_config_id),
            )
            notices = preflight(job)
        except CaptionRunError as error:
            bar.pushMessage("CCExpert", str(error), Qgis.Critical, 0)
            return None
        for notice in notices:
            bar.pushMessage("CCExpert", notice, Qgis.Info, 10)
        title = result_title(params)

        def done(summary: JobSummary) -> None:
            self.tasks.remove(task)
            show_result(summary, QgsProject.instance(), bar, title)

        task = CaptionTask(job, done)
        self.tasks.append(task)  # QGIS keeps no Python reference: the task must outlive this call
        QgsApplication.taskManager().addTask(task)
        return task
