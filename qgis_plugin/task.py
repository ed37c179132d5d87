"""The background run: a QgsTask around :func:`~.job.run_job`, with progress, a signal per batch written, and the
run's warnings (a backend that stopped answering) for the interface to show at once.

The run's GeoPackage is reopened by QGIS only while the run's writer is between batches: the task holds
:attr:`CaptionTask.writing` whenever the writer may write, and lets go of it only in a :class:`QuietWindow` after a
batch, while the interface reloads the layer. (A layer reloaded while the writer committed could not reopen its
file: "Cannot reopen datasource", in red, and its tiles vanished until the next reload.)
"""

from __future__ import annotations

import threading
import time
import traceback

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .job import Job, JobSummary, RunProgress, run_job
from .result_layer import LOG_TAG

#: The live layer is reloaded at most this often (batches can land many times a second).
REFRESH_S = 0.5
#: How long the run waits for the interface to use a quiet window (a busy interface must not stall the run: the
#: layer is reloaded at the next window then).
WINDOW_WAIT_S = 2.0
#: What the job's failover notes start with when it logs them (``job._caption_in_flight``).
WARNING_PREFIX = "warning: "


class QuietWindow:
    """A moment between two batches when the run's writer waits: the interface may reopen the file then."""

    def __init__(self, writing: threading.Lock) -> None:
        self._writing = writing
        self._used = threading.Event()
        #: Whether the layer is on the map after the interface used the window (the run asks for the next window
        #: at once until it is).
        self.shown = False

    def __enter__(self) -> bool:
        """Whether the file is quiet now (False: the run has gone on writing; skip the reload this time)."""
        self._entered = self._writing.acquire(blocking=False)
        return self._entered

    def __exit__(self, *exc: object) -> None:
        if self._entered:
            self._writing.release()
        self._used.set()

    def wait(self, is_canceled) -> None:
        """In the run's thread: give the interface its window, for :data:`WINDOW_WAIT_S` at most."""
        deadline = time.monotonic() + WINDOW_WAIT_S
        while not self._used.wait(0.05) and not is_canceled() and time.monotonic() < deadline:
            pass


class _TaskFeedback:
    """The task seen as the job's feedback (progress bar in QGIS's task manager, messages in the log panel, the
    failover's warnings to the interface at once)."""

    def __init__(self, task: CaptionTask) -> None:
        self._task = task

    def isCanceled(self) -> bool:  # noqa: N802
        return self._task.isCanceled()

    def setProgress(self, percent: float) -> None:  # noqa: N802
        self._task.setProgress(percent)

    def pushInfo(self, text: str) -> None:  # noqa: N802
        warning = text.startswith(WARNING_PREFIX)
        QgsMessageLog.logMessage(text, LOG_TAG, Qgis.MessageLevel.Warning if warning else Qgis.MessageLevel.Info)


class CaptionTask(QgsTask):
    """Runs a job off the main thread; its summary is :attr:`summary` once finished.

    ``batch_written`` carries a :class:`~.job.RunProgress` and a :class:`QuietWindow` (None: no reload due) after
    each batch; ``warned`` a warning of the run (a backend that does not answer). Both are emitted from the task's
    thread and reach slots of the main thread through Qt's event queue, so they may touch layers and widgets.
    """

    batch_written = pyqtSignal(object, object)
    warned = pyqtSignal(object)

    def __init__(self, job: Job, title: str) -> None:
        super().__init__(f"CCExpert: {title}", QgsTask.Flag.CanCancel)
        self.job, self.title = job, title
        self.summary: JobSummary | None = None
        #: Held by the run whenever its writer may write (see the module's docstring).
        self.writing = threading.Lock()
        self._reloaded = float("-inf")
        self._shown = False

    def run(self) -> bool:
        """In the task's thread: the whole job. An unexpected error is logged, never raised into QGIS.

        A cancel is a success here (what was asked, done): QGIS reports a task whose run() returns False as
        "Task failed", and the message bar says what the canceled run kept.
        """
        self.writing.acquire()
        try:
            self.summary = run_job(self.job, _TaskFeedback(self), self._batch_written, self.warned.emit)
        except Exception:  # a bug, not the analyst's problem: keep its traceback for the report
            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.MessageLevel.Critical)
            return False
        finally:
            self.writing.release()
        return self.summary.error is None or self.summary.canceled

    def _batch_written(self, progress: RunProgress) -> None:
        """After a batch is written (the task's thread): tell the interface, with a quiet window when the layer is
        to be added or reloaded."""
        if self._shown and time.monotonic() - self._reloaded < REFRESH_S:
            self.batch_written.emit(progress, None)
            return
        window = QuietWindow(self.writing)
        self.writing.release()
        try:
            self.batch_written.emit(progress, window)
            window.wait(self.isCanceled)
        finally:
            self.writing.acquire()  # waits while the interface still reloads
        self._reloaded, self._shown = time.monotonic(), window.shown

    def finished(self, result: bool) -> None:
        """On the main thread, once run() has returned (or the task was canceled before it started); the plugin
        shows the summary when the task manager has told everyone the task ended."""
        if self.summary is None:
            self.summary = JobSummary(self.job.output, self.job.layer_name, canceled=self.isCanceled())
            if not self.isCanceled():
                self.summary.error = "the run stopped on an unexpected error (details in the CCExpert log panel)"
