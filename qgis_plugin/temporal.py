"""The captions layer in time: QGIS's Temporal Controller shows what changed when.

Dates are labels as precise as they were given (``2016``, ``2016-05``, ``2016-05-12``): a label covers its days,
from its first to its last. A feature of the interval 2016→2018 says what changed after the 2016 image and by the
2018 one, so it is shown from the end of its first date's days to the end of its second date's (the day after each
label's last day, the end excluded): 2016→2018 from 2017-01-01 until 2018 is over, 2018→2021 from 2019-01-01. The
intervals of a series follow one another without overlapping. The layer computes both from its ``date_before`` and
``date_after`` fields (expressions, so the file needs no date columns of its own); the changes layer, which has
no dates, from its ``interval`` and the run's dates. Each date's raster shows from its date until the next date
begins, so that the imagery under the captions changes with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

from qgis.core import (
    Qgis,
    QgsDateTimeRange,
    QgsInterval,
    QgsProject,
    QgsRasterLayer,
    QgsRasterLayerTemporalProperties,
    QgsTemporalNavigationObject,
    QgsVectorLayer,
    QgsVectorLayerTemporalProperties,
)
from qgis.PyQt.QtCore import QDate, QDateTime, QTime

from .shared_modules import dates


def _year(field: str) -> str:
    return f"to_int(left({field}, 4))"


def _month(field: str) -> str:
    return f"to_int(substr({field}, 6, 2))"


def label_end(field: str) -> str:
    """A QGIS expression: the day after the last day of the date label in ``field`` (calendar arithmetic, not
    QGIS's 365.25-day years and 30-day months), NULL where the field is."""
    quoted = f'"{field}"'
    year, month = _year(quoted), _month(quoted)
    return (
        f"CASE WHEN length({quoted}) = 4 THEN make_date({year} + 1, 1, 1) "
        f"WHEN length({quoted}) = 7 THEN CASE WHEN {month} = 12 THEN make_date({year} + 1, 1, 1) "
        f"ELSE make_date({year}, {month} + 1, 1) END "
        f"ELSE to_date(to_date({quoted}) + to_interval('1 day')) END"
    )


def _start_of(day: date) -> QDateTime:
    return QDateTime(QDate(day.year, day.month, day.day), QTime(0, 0))


def series_range(labels: Sequence[dates.DateLabel]) -> QgsDateTimeRange:
    """From the first day of the first date to the end of the last date's days (excluded)."""
    return QgsDateTimeRange(_start_of(labels[0].first), _start_of(labels[-1].last + timedelta(days=1)), True, False)


def _frame(labels: Sequence[dates.DateLabel]) -> QgsInterval:
    """Frames a year long where the dates are years apart (a month, a day where they are closer), so that playing
    the animation steps through the series at a pace that shows each interval."""
    gap = min((later.first - earlier.first).days for earlier, later in zip(labels, labels[1:]))
    if gap >= 365:
        return QgsInterval(1, 0, 0, 0, 0, 0, 0)
    if gap >= 28:
        return QgsInterval(0, 1, 0, 0, 0, 0, 0)
    return QgsInterval(0, 0, 0, 1, 0, 0, 0)


def _make_date(day: date) -> str:
    return f"make_date({day.year}, {day.month}, {day.day})"


def set_temporal(layer: QgsVectorLayer) -> None:
    """Let the layer's features come and go with the Temporal Controller, from their dates."""
    properties = layer.temporalProperties()
    assert isinstance(properties, QgsVectorLayerTemporalProperties), "a vector layer's temporal properties"
    properties.setMode(Qgis.VectorTemporalMode.FeatureDateTimeStartAndEndFromExpressions)
    properties.setStartExpression(label_end("date_before"))
    properties.setEndExpression(label_end("date_after"))
    properties.setLimitMode(Qgis.VectorTemporalLimitMode.IncludeBeginExcludeEnd)
    properties.setIsActive(True)


def set_interval_temporal(layer: QgsVectorLayer, labels: Sequence[dates.DateLabel]) -> None:
    """The same for a layer keyed by interval without dates of its own (``changes``): each interval's span, from
    the run's dates."""
    def by_interval(ends: Sequence[dates.DateLabel]) -> str:
        cases = " ".join(f'WHEN "interval" = {k} THEN {_make_date(label.last + timedelta(days=1))}'
                         for k, label in enumerate(ends))
        return f"CASE {cases} END"

    properties = layer.temporalProperties()
    assert isinstance(properties, QgsVectorLayerTemporalProperties), "a vector layer's temporal properties"
    properties.setMode(Qgis.VectorTemporalMode.FeatureDateTimeStartAndEndFromExpressions)
    properties.setStartExpression(by_interval(labels[:-1]))
    properties.setEndExpression(by_interval(labels[1:]))
    properties.setLimitMode(Qgis.VectorTemporalLimitMode.IncludeBeginExcludeEnd)
    properties.setIsActive(True)


def set_raster_temporal(layers: Sequence[QgsRasterLayer], labels: Sequence[dates.DateLabel]) -> None:
    """Each date's raster shows from the first day of its date until the next date's first day (the last one until
    its date is over); a raster the analyst gave a time already keeps it."""
    for index, (layer, label) in enumerate(zip(layers, labels)):
        properties = layer.temporalProperties()
        if not isinstance(properties, QgsRasterLayerTemporalProperties) or properties.isActive():
            continue
        end = labels[index + 1].first if index + 1 < len(labels) else label.last + timedelta(days=1)
        properties.setMode(Qgis.RasterTemporalMode.FixedTemporalRange)
        properties.setFixedTemporalRange(QgsDateTimeRange(_start_of(label.first), _start_of(end), True, False))
        properties.setIsActive(True)


def cover_dates(project: QgsProject, controller: object, labels: Sequence[dates.DateLabel]) -> None:
    """Make the project's time range, and the Temporal Controller's when there is one, cover the dates (an
    existing range only grows), its frames as long as the finest date."""
    wanted = series_range(labels)
    settings = project.timeSettings()
    if settings is not None:
        settings.setTemporalRange(_union(settings.temporalRange(), wanted))
    if isinstance(controller, QgsTemporalNavigationObject):
        controller.setTemporalExtents(_union(controller.temporalExtents(), wanted))
        controller.setFrameDuration(_frame(labels))


def _union(current: QgsDateTimeRange, wanted: QgsDateTimeRange) -> QgsDateTimeRange:
    if current.isInfinite() or not current.begin().isValid() or not current.end().isValid():
        return wanted
    earlier = current.begin().toMSecsSinceEpoch() < wanted.begin().toMSecsSinceEpoch()
    later = current.end().toMSecsSinceEpoch() > wanted.end().toMSecsSinceEpoch()
    begin, end = current.begin() if earlier else wanted.begin(), current.end() if later else wanted.end()
    return QgsDateTimeRange(begin, end, True, False)
