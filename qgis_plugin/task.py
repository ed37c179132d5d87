"""The background run: a QgsTask around :func:`~.job.run_job`, with progress and a signal per batch written."""

from __future__ import annotations

import traceback
from collections.abc import Callable

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .job import Job, JobSummary, run_job
from .result_layer import LOG_TAG


class _TaskFeedback:
    """The task seen as the job's feedback (progress bar in QGIS's task manager, messages in the log panel)."""

    def __init__(self, task: QgsTask) -> None:
        self._task = task

    def isCanceled(self) -> bool:  # noqa: N802
        return self._task.isCanceled()

    def setProgress(self, percent: float) -> None:  # noqa: N802
        self._task.setProgress(percent)

    def pushInfo(self, text: str) -> None:  # noqa: N802
        QgsMessageLog.logMessage(text, LOG_TAG, Qgis.MessageLevel.Info)


class CaptionTask(QgsTask):
    """Runs a job off the main thread; ``on_done`` gets its summary on the main thread (add layers there).

    ``batch_written`` carries a :class:`~.job.RunProgress` after each batch; emitted from the task's thread, it
    reaches slots of the main thread through Qt's event queue, so they may touch layers.
    """

    batch_written = pyqtSignal(object)

    def __init__(self, job: Job, on_done: Callable[[JobSummary], None]) -> None:
        super().__init__(f"CCExpert: captions {job.before.name} → {job.after.name}", QgsTask.Flag.CanCancel)
        self.job, self.on_done = job, on_done
        self.summary: JobSummary | None = None

    def run(self) -> bool:
        """In the task's thread: the whole job. An unexpected error is logged, never raised into QGIS.

        A cancel is a success here (what was asked, done): QGIS reports a task whose run() returns False as
        "Task failed", and the message bar says what the canceled run kept.
        """
        try:
            self.summary = run_job(self.job, _TaskFeedback(self), self.batch_written.emit)
        except Exception:  # a bug, not the analyst's problem: keep its traceback for the report
            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.MessageLevel.Critical)
            return False
        return self.summary.error is None or self.summary.canceled

    def finished(self, result: bool) -> None:
        """On the main thread, once run() has returned (or the task was canceled before it started)."""
        summary = self.summary or JobSummary(self.job.output, self.job.layer_name, canceled=self.isCanceled())
        if self.summary is None and not self.isCanceled():
            summary.error = "the run stopped on an unexpected error (details in the CCExpert log panel)"
        self.on_done(summary)
