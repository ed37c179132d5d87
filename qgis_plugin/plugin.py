"""The plugin's face in QGIS: a toolbar button and a Raster menu entry that open the dialog, the runs it starts
(their live layer, their warnings while a backend does not answer, their summary as the message bar's last word),
the backend it may start on this machine, the Processing provider, the review dock and the locator bar's search
of captions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qgis.core import Qgis, QgsProject, QgsRasterLayer, QgsTask, QgsVectorLayer
from qgis.gui import QgsMessageBarItem
from qgis.PyQt.QtCore import QDateTime
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .auth import load_token
from .dialog import CaptionDialog
from .errors import CaptionRunError
from .job import BackendNote, RunProgress, preflight
from .local_backend import LocalBackend
from .locator import CaptionsLocatorFilter
from .params import CaptionParams, distinct_name, job_from_params, result_title
from .processing_provider import CCExpertProvider
from .qgis_compat import processing_registry, project, task_manager
from .result_layer import add_captions_layer, open_captions_layer, show_result, shown_layer
from .review_panel import ReviewEntry
from .task import CaptionTask, QuietWindow

MENU = "&CCExpert"
ICON = Path(__file__).with_name("icon.png")


class LiveLayer:
    """A run's captions layer on the map from its first batch: added once in the run's group (or the one already
    shown, for a resumed run), reloaded in the run's quiet windows as batches land, its name saying how far the run
    is and what it found; the plain title again once the run ends."""

    def __init__(self, project: QgsProject, output: str, layer_name: str, title: str) -> None:
        self.project, self.title = project, title
        self.output, self.layer_name = output, layer_name
        self._layer_id = ""

    def layer(self) -> QgsVectorLayer | None:
        """The layer in the project, if it is there (the analyst may have removed it)."""
        layer = self.project.mapLayer(self._layer_id) if self._layer_id else None
        if isinstance(layer, QgsVectorLayer):
            return layer
        return shown_layer(self.project, self.output, self.layer_name)

    def update(self, progress: RunProgress, window: QuietWindow | None) -> None:
        """Show the batches written so far (on the main thread); the file is reopened only in a quiet window,
        while the run's writer waits."""
        layer = self.layer()
        if window is not None:
            with window as quiet:
                if quiet:
                    layer = self._show(layer)
                window.shown = layer is not None
        if layer is None:
            return
        self._layer_id = layer.id()
        layer.setName(f"{self.title} — running: {progress.done} of {progress.total} tiles, {progress.describe()}")

    def _show(self, layer: QgsVectorLayer | None) -> QgsVectorLayer | None:
        if layer is None:
            layer = open_captions_layer(self.output, self.layer_name, self.title)
            if layer is not None:  # None: nothing written yet (the writer creates the table with its first batch)
                add_captions_layer(self.project, layer, self.title)
            return layer
        # The task's writer commits each batch through its own connection: reopen to see them.
        layer.reload()
        layer.updateExtents()
        layer.triggerRepaint()
        return layer

    def finish(self) -> None:
        """The run ended: the plain title again (the message bar gives the counts)."""
        layer = self.layer()
        if layer is not None:
            layer.setName(self.title)


def retry_words(note: BackendNote, now: QDateTime) -> str:
    """The failover's note about a backend that does not answer, saying when the run will give up (``now`` is
    when the note came: the retry budget starts then)."""
    if note.retry_s is None:  # several backends: its batches go to the others
        text = str(note)
        return text[0].upper() + text[1:]
    until = now.addMSecs(int(note.retry_s * 1000)).toString("HH:mm:ss")
    what = note.text.rstrip(". ")
    return (f"{what[0].upper()}{what[1:]}. Trying again until {until} ({note.retry_s:g} s); then the run stops, "
            "keeping what it wrote.")


class RetryNotice:
    """A run's backend that stopped answering, said at once: a warning on the message bar and in the task's
    description (QGIS's task manager), taken back as soon as a batch lands again or the run ends."""

    def __init__(self, bar, task: CaptionTask) -> None:
        self.bar, self.task = bar, task
        self.item: QgsMessageBarItem | None = None

    def warn(self, note: BackendNote) -> None:
        """Say ``note`` (a warning of the run's failover) on the bar and in the task's description."""
        text = retry_words(note, QDateTime.currentDateTime())
        self.clear()
        self.item = QgsMessageBarItem(self.task.title, text, Qgis.MessageLevel.Warning, 0)
        self.bar.pushItem(self.item)
        self.task.setDescription(f"CCExpert: {self.task.title} — {text}")

    def clear(self) -> None:
        """The backend answers again (or the run ended): the warning goes, the description is the run's again."""
        if self.item is not None:
            self.bar.popWidget(self.item)
            self.item = None
            self.task.setDescription(f"CCExpert: {self.task.title}")


class CCExpertPlugin:
    """Created by QGIS through ``classFactory``; ``initGui``/``unload`` add and remove everything it shows."""

    def __init__(self, iface) -> None:
        self.iface = iface
        self.action: QAction | None = None
        self.provider: CCExpertProvider | None = None
        self.dialog: CaptionDialog | None = None
        self.tasks: list[CaptionTask] = []
        #: What to do when the task manager says a run ended, by task id.
        self._ending: dict[int, Callable[[], None]] = {}
        self.review: ReviewEntry | None = None
        self.locator_filter: CaptionsLocatorFilter | None = None
        #: A backend started from the dialog on this machine, stopped when the plugin unloads.
        self.local_backend = LocalBackend()

    def initProcessing(self) -> None:  # noqa: N802 (called by QGIS, qgis_process included)
        """Register the Processing provider (QGIS calls this alone where there is no interface)."""
        if self.provider is None:
            self.provider = CCExpertProvider()
            processing_registry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        """The toolbar button, the menu entry and the Processing provider."""
        self.initProcessing()
        task_manager().statusChanged.connect(self._task_status)
        self.action = QAction(QIcon(str(ICON)), "Caption changes between dates…", self.iface.mainWindow())
        self.action.setToolTip("CCExpert: describe what changed between two or more rasters, tile by tile, into a "
                               "GeoPackage")
        self.action.triggered.connect(self.show_dialog)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToRasterMenu(MENU, self.action)
        self.review = ReviewEntry(self.iface, MENU)  # "Review captions…" and its dock
        self.locator_filter = CaptionsLocatorFilter(self.iface, self.open_tile)  # "cc …" in the locator bar
        self.iface.registerLocatorFilter(self.locator_filter)

    def unload(self) -> None:
        """Remove everything initGui added; runs still going are canceled (their finished batches are kept), and a
        backend started from the dialog is stopped."""
        for task in list(self.tasks):
            task.cancel()
        if self.action is not None:
            task_manager().statusChanged.disconnect(self._task_status)
        self.local_backend.stop()
        if self.dialog is not None:
            self.dialog.close()
            self.dialog.deleteLater()
            self.dialog = None
        if self.action is not None:
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        if self.locator_filter is not None:
            self.iface.deregisterLocatorFilter(self.locator_filter)  # QGIS deletes it
            self.locator_filter = None
        if self.review is not None:
            self.review.unload()
            self.review = None
        if self.provider is not None:
            processing_registry().removeProvider(self.provider)
            self.provider = None

    def open_tile(self, layer: QgsVectorLayer, fid: int) -> None:
        """Open a tile found in the locator bar in the review dock."""
        if self.review is not None:
            self.review.show_panel().show_tile(layer, fid)

    def show_dialog(self) -> CaptionDialog:
        """Open the dialog with the choices remembered from last time."""
        if self.dialog is None:
            self.dialog = CaptionDialog(self.iface, CaptionParams.load(), self.iface.mainWindow(), self.local_backend)
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
        current = project()
        try:
            job = job_from_params(
                params, current, canvas.extent(), canvas.mapSettings().destinationCrs(),
                load_token(params.auth_config_id),
            )
            notices = preflight(job)
        except CaptionRunError as error:
            bar.pushMessage("CCExpert", str(error), Qgis.MessageLevel.Critical, 0)
            return None
        for said in notices:
            bar.pushMessage("CCExpert", said, Qgis.MessageLevel.Info, 10)
        shown = shown_layer(current, job.output, job.layer_name)
        # A resumed output keeps its layer and name; a new one gets a name no other layer of the project has.
        title = shown.name() if shown is not None else distinct_name(
            result_title(params), {layer.name() for layer in current.mapLayers().values()})
        live = LiveLayer(current, job.output, job.layer_name, title)
        task = CaptionTask(job, title)
        notice = RetryNotice(bar, task)
        rasters = [layer for layer in (current.mapLayer(i) for i in params.layer_ids)
                   if isinstance(layer, QgsRasterLayer)]

        def done() -> None:
            self.tasks.remove(task)
            live.finish()
            notice.clear()
            assert task.summary is not None, "a finished task has its summary"
            show_result(task.summary, project(), bar, title, job.labels(), canvas.temporalController(), rasters)

        task.batch_written.connect(live.update)
        task.batch_written.connect(lambda *_: notice.clear())
        task.warned.connect(notice.warn)
        self.tasks.append(task)  # QGIS keeps no Python reference: the task must outlive this call
        self._ending[task_manager().addTask(task)] = done
        return task

    def _task_status(self, task_id: int, status: int) -> None:
        """A run ended: its summary goes on the message bar now, after QGIS's own "Task complete" notice (which
        listens to the same signal, connected before any plugin), so that the plugin's word is the last."""
        if status in (QgsTask.TaskStatus.Complete, QgsTask.TaskStatus.Terminated) and task_id in self._ending:
            self._ending.pop(task_id)()
