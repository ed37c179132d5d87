"""How far to trust a caption nobody reviewed: ``p_right``, the probability that a caption is right, fitted on the
analyst's own reviews of the same layer (accepted: right; corrected: wrong).

The model's ``confidence`` (the geometric mean of its tokens' probabilities) ranks captions but is no probability of
being right. From a layer's reviewed tiles a monotone map is fitted per interval of the date series (trust differs
by season and place):

    logit p_right = intercept + slope × logit(confidence) + changed_shift × changed,   slope ≥ 0

(Platt scaling with the change flag), by maximum a posteriori with a Gaussian prior: the layer's fit starts from
"p_right = confidence" (:data:`PRIOR`), so that a handful of reviews moves it only so far, and each interval's fit
starts from the layer's, so an interval with few reviews keeps close to the layer's map. ``p_right`` is written
once the layer has :data:`MIN_REVIEWS` reviewed tiles, and is empty before.

Both tools write the fit with the same SQL (built here): the ``caption-region`` side with sqlite3
(``geo/calibrate.py``), the plugin with OGR. In SQL the map is a piecewise-linear interpolation over
:data:`KNOTS` confidences (SQLite need not have ``exp`` or ``ln``), and :meth:`Calibration.p_right` interpolates the
same knots, so Python and the file agree; the interpolation of a monotone map is monotone.

Standard library and numpy only, no import beyond the bundled modules: the QGIS plugin bundles this file.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from . import schema

#: The layer's reviewed tiles (captioned, with a confidence) that ``p_right`` waits for.
MIN_REVIEWS = 10
#: Confidences are kept this far from 0 and 1 before their logit is taken.
_EDGE = 1 / (1 + math.exp(10))
#: Where the map is tabulated: evenly in logit(confidence) from -10 to 10 (dense near 0 and 1, where a confident
#: model's values crowd).
KNOTS: tuple[float, ...] = tuple(1 / (1 + math.exp(-step / 4)) for step in range(-40, 41))


@dataclass(frozen=True)
class Platt:
    """One map: ``logit p = intercept + slope × logit(confidence) + changed_shift × changed``."""

    intercept: float
    slope: float
    changed_shift: float

    def vector(self) -> np.ndarray:
        return np.array([self.intercept, self.slope, self.changed_shift], dtype=np.float64)

    def probability(self, confidence: np.ndarray | float, changed: np.ndarray | bool) -> np.ndarray:
        """The map's value (exact, not interpolated)."""
        return _sigmoid(self.intercept + self.slope * _logit(confidence) + self.changed_shift * np.asarray(changed))


#: Before any review: p_right = confidence.
PRIOR = Platt(0.0, 1.0, 0.0)
#: How far from the prior a parameter may go easily (standard deviations of the Gaussian prior). The prior weighs
#: about as much as two reviews at a changed tile of confidence 0.9 (one correction there takes p_right from 0.90 to
#: 0.39, ten to 0.11); what keeps a handful of reviews from swinging p_right is :data:`MIN_REVIEWS`, the prior keeps
#: the slope and the changed shift sensible while few reviews pin them. Chosen on held-out synthetic pairs of another
#: seed than bench/calibration.py reports on: a prior three times as strong left the demo model's overconfidence
#: (ECE 0.30) at 0.18 after 50 reviews, this one brings it to about 0.09 (bench/RESULTS.md).
PRIOR_SD = (1.0, 1.0, 1.0)
#: An interval's fit keeps closer to the layer's: its prior is the layer's fit with these deviations × 0.5.
INTERVAL_PRIOR_SCALE = 0.5
METHOD = (
    f"Platt scaling on logit(confidence) and the change flag, slope >= 0 (monotone); maximum a posteriori with a "
    f"Gaussian prior: p_right = confidence before any review (sd {PRIOR_SD[0]:g}, {PRIOR_SD[1]:g}, {PRIOR_SD[2]:g}), "
    f"each interval shrunk toward the layer's fit (sd x {INTERVAL_PRIOR_SCALE:g}); written from {MIN_REVIEWS} reviews"
)


def _logit(confidence: np.ndarray | Sequence[float] | float) -> np.ndarray:
    clipped = np.clip(np.asarray(confidence, dtype=np.float64), _EDGE, 1 - _EDGE)
    return np.log(clipped) - np.log1p(-clipped)


def _sigmoid(value: np.ndarray | float) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * np.asarray(value, dtype=np.float64)))  # never overflows


@dataclass(frozen=True)
class Sample:
    """One reviewed tile: what the model said of it, and whether the analyst found it right."""

    confidence: float
    changed: bool
    interval: int
    right: bool


def fit(samples: Sequence[Sample], prior: Platt = PRIOR, scale: float = 1.0) -> Platt:
    """The map of highest posterior for ``samples`` under a Gaussian prior centred on ``prior`` (deviations
    :data:`PRIOR_SD` × ``scale``), with a slope of at least 0. With no samples, the prior itself."""
    if not samples:
        return prior
    design = np.column_stack([
        np.ones(len(samples)), _logit([s.confidence for s in samples]), [float(s.changed) for s in samples],
    ])
    right = np.array([float(s.right) for s in samples])
    centre = prior.vector()
    precision = 1 / (np.array(PRIOR_SD) * scale) ** 2
    theta = _newton(design, right, centre, precision, np.ones(3, dtype=bool))
    if theta[1] < 0:
        # The log posterior is concave: its maximum over slope >= 0 lies on slope = 0 when the free one is below.
        theta = _newton(design, right, np.array([centre[0], 0.0, centre[2]]), precision,
                        np.array([True, False, True]))
    return Platt(*(float(value) for value in theta))


def _newton(design: np.ndarray, right: np.ndarray, centre: np.ndarray, precision: np.ndarray,
            free: np.ndarray) -> np.ndarray:
    """Maximise the log posterior over the ``free`` parameters (the others stay at ``centre``): Newton's steps,
    halved while one would lower it (a full step can overshoot where confidences sit near 0 or 1)."""

    def log_posterior(theta: np.ndarray) -> float:
        z = design @ theta
        # log p = -log(1 + e^-z), log(1 - p) = -log(1 + e^z), both without overflow.
        likelihood = -(right * np.logaddexp(0, -z) + (1 - right) * np.logaddexp(0, z)).sum()
        return float(likelihood - 0.5 * (precision * (theta - centre) ** 2).sum())

    theta = centre.copy()
    columns = design[:, free]
    value = log_posterior(theta)
    for _ in range(100):
        p = _sigmoid(design @ theta)
        gradient = columns.T @ (right - p) - precision[free] * (theta[free] - centre[free])
        hessian = (columns * (p * (1 - p))[:, None]).T @ columns + np.diag(precision[free])
        step = np.linalg.solve(hessian, gradient)
        for _ in range(30):
            candidate = theta.copy()
            candidate[free] += step
            found = log_posterior(candidate)
            if found >= value - 1e-12:
                break
            step = step / 2
        theta, value = candidate, found
        if np.max(np.abs(step)) < 1e-10:
            break
    return theta


@dataclass(frozen=True)
class IntervalMap:
    """The map of one interval: its fit, the reviews it saw, and its dates (for the calibration table)."""

    interval: int
    platt: Platt
    reviews: int
    wrong: int
    date_before: str | None = None
    date_after: str | None = None

    def knots(self, changed: bool) -> np.ndarray:
        """``p_right`` at each of :data:`KNOTS`."""
        return self._knots[changed]

    @cached_property
    def _knots(self) -> dict[bool, np.ndarray]:
        # Worked out once: the dock and the locator ask a map for thousands of tiles.
        return {changed: self.platt.probability(np.array(KNOTS), changed) for changed in (False, True)}

    def p_right(self, confidence: np.ndarray | float, changed: np.ndarray | bool) -> np.ndarray:
        """``p_right`` as the file holds it: the knots, interpolated linearly (clamped outside them)."""
        confidence = np.asarray(confidence, dtype=np.float64)
        changed = np.broadcast_to(np.asarray(changed, dtype=bool), confidence.shape)
        return np.where(changed, np.interp(confidence, KNOTS, self.knots(True)),
                        np.interp(confidence, KNOTS, self.knots(False)))


@dataclass(frozen=True)
class Calibration:
    """A layer's fit: the whole layer's map and each interval's."""

    layer: Platt
    reviews: int
    wrong: int
    intervals: Mapping[int, IntervalMap]

    def p_right(self, confidence: float | None, changed: bool | None, interval: int) -> float | None:
        """A tile's ``p_right`` (None where it has no confidence, or its interval no map)."""
        found = self.intervals.get(interval)
        if found is None or confidence is None:
            return None
        return float(found.p_right(confidence, bool(changed)))


def fit_layer(samples: Sequence[Sample], intervals: Mapping[int, tuple[str | None, str | None]]) -> Calibration:
    """Fit the layer's map and one per interval (``intervals``: each interval's dates), whatever the number of
    reviews (:func:`calibrate` holds back below :data:`MIN_REVIEWS`)."""
    layer = fit(samples)
    maps = {}
    for interval in sorted(set(intervals) | {s.interval for s in samples}):
        own = [s for s in samples if s.interval == interval]
        # One interval's reviews are the layer's: fitting them again on the layer's fit would count them twice.
        platt = layer if len(own) == len(samples) else fit(own, layer, INTERVAL_PRIOR_SCALE)
        before, after = intervals.get(interval, (None, None))
        maps[interval] = IntervalMap(interval, platt, len(own), sum(not s.right for s in own), before, after)
    return Calibration(layer, len(samples), sum(not s.right for s in samples), maps)


def calibrate(samples: Sequence[Sample], intervals: Mapping[int, tuple[str | None, str | None]],
              min_reviews: int = MIN_REVIEWS) -> Calibration | None:
    """The layer's calibration, or None while it has fewer than ``min_reviews`` reviewed tiles."""
    return fit_layer(samples, intervals) if len(samples) >= min_reviews else None


def cross_validated(samples: Sequence[Sample], folds: int = 5) -> np.ndarray:
    """Each sample's ``p_right`` from a fit on the other folds' samples (every ``folds``-th sample in a fold):
    what the reliability diagram shows, since a map judged on its own reviews looks better than it is."""
    predicted = np.empty(len(samples))
    for fold in range(folds):
        held = [index for index in range(len(samples)) if index % folds == fold]
        if not held:
            continue
        rest = [sample for index, sample in enumerate(samples) if index % folds != fold]
        fitted = fit_layer(rest, {})
        for index in held:
            sample = samples[index]
            found = fitted.intervals.get(sample.interval) or IntervalMap(sample.interval, fitted.layer, 0, 0)
            predicted[index] = float(found.p_right(sample.confidence, sample.changed))
    return predicted


def expected_wrong(p_right: Iterable[float]) -> float:
    """How many of these captions are wrong, expected from their ``p_right``."""
    return float(sum(1 - p for p in p_right))


# -- reliability -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bin:
    """One bin of a reliability diagram: predictions in [low, high), how many, their mean, the share right."""

    low: float
    high: float
    count: int
    predicted: float
    right: float


def reliability(
    predicted: Sequence[float] | np.ndarray, right: Sequence[bool] | np.ndarray, bins: int = 10
) -> list[Bin]:
    """Equal-width bins of ``predicted`` over [0, 1] (the last one closed), the empty ones left out."""
    values, truth = np.asarray(predicted, dtype=np.float64), np.asarray(right, dtype=np.float64)
    index = np.minimum((values * bins).astype(int), bins - 1)
    found = []
    for b in range(bins):
        inside = index == b
        if inside.any():
            found.append(Bin(b / bins, (b + 1) / bins, int(inside.sum()), float(values[inside].mean()),
                             float(truth[inside].mean())))
    return found


def calibration_error(
    predicted: Sequence[float] | np.ndarray, right: Sequence[bool] | np.ndarray, bins: int = 10
) -> float:
    """Expected calibration error: the count-weighted mean gap between the mean prediction and the share right,
    over :func:`reliability`'s bins."""
    found = reliability(predicted, right, bins)
    total = sum(b.count for b in found)
    return sum(b.count * abs(b.predicted - b.right) for b in found) / total if total else 0.0


# -- the layer's SQL, run by both tools --------------------------------------------------------------------------


def _column(name: str, present: Collection[str], missing: str) -> str:
    return schema.quote(name) if name in present else missing


# Bandit's B608 (SQL built from strings) is marked where it fires: table and column names are the schema's, quoted,
# and values go through _literal or are numbers; nothing a user typed reaches these statements.
def samples_sql(layer_name: str, present: Collection[str]) -> str:
    """The reviewed tiles a fit learns from: ``interval, change_detected, confidence, review_status`` of each
    captioned tile with a confidence and a review (``present``: the layer's columns; older files lack some)."""
    if "review_status" not in present:
        return f"SELECT 0, 0, 0.0, NULL FROM {schema.quote(layer_name)} WHERE 0"  # nosec B608
    statuses = ", ".join(_literal(status) for status in schema.REVIEW_STATUSES)
    return (
        f"SELECT {_column('interval', present, '0')}, change_detected, confidence, review_status "  # nosec B608
        f"FROM {schema.quote(layer_name)} WHERE status = {_literal(schema.CAPTIONED)} AND confidence IS NOT NULL "
        f"AND review_status IN ({statuses}) ORDER BY {_column('interval', present, '0')}, fid"
    )


def intervals_sql(layer_name: str, present: Collection[str]) -> str:
    """Each interval the layer has captioned tiles in, with its dates: ``interval, date_before, date_after``."""
    interval = _column("interval", present, "0")
    return (
        f"SELECT {interval}, MAX({_column('date_before', present, 'NULL')}), "  # nosec B608
        f"MAX({_column('date_after', present, 'NULL')}) FROM {schema.quote(layer_name)} "
        f"WHERE status = {_literal(schema.CAPTIONED)} GROUP BY {interval} ORDER BY {interval}"
    )


def stored_sql(layer_name: str, present: Collection[str]) -> str:
    """One row where the layer holds a ``p_right``, none otherwise (a fit to clear away)."""
    if "p_right" not in present:
        return f"SELECT 1 FROM {schema.quote(layer_name)} WHERE 0"  # nosec B608
    return f"SELECT 1 FROM {schema.quote(layer_name)} WHERE p_right IS NOT NULL LIMIT 1"  # nosec B608


def sample_of(row: Sequence[Any]) -> Sample:
    """A row of :func:`samples_sql` as a sample."""
    interval, changed, confidence, status = row
    return Sample(float(confidence), bool(changed), int(interval or 0), status == schema.ACCEPTED)


def interval_dates(rows: Iterable[Sequence[Any]]) -> dict[int, tuple[str | None, str | None]]:
    """Rows of :func:`intervals_sql` as interval → dates."""
    return {int(interval or 0): (_text(before), _text(after)) for interval, before, after in rows}


def _text(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (int, float)):
        return repr(float(value)) if isinstance(value, float) else str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _piecewise(confidence: str, values: np.ndarray) -> str:
    """SQL for the linear interpolation of ``values`` over :data:`KNOTS` at ``confidence`` (clamped)."""
    parts = [f"CASE WHEN {confidence} <= {KNOTS[0]!r} THEN {float(values[0])!r}"]
    for k in range(1, len(KNOTS)):
        low, high = KNOTS[k - 1], KNOTS[k]
        slope = (float(values[k]) - float(values[k - 1])) / (high - low)
        parts.append(f"WHEN {confidence} <= {high!r} THEN {float(values[k - 1])!r} + ({confidence} - {low!r}) * "
                     f"{slope!r}")
    parts.append(f"ELSE {float(values[-1])!r} END")
    return " ".join(parts)


def p_right_sql(layer_name: str, calibration: Calibration | None) -> str:
    """The one statement that writes every tile's ``p_right`` (all empty for None): the map of its interval for
    captioned tiles with a confidence, empty for the others. The layer has every field of the schema by then (the
    writer adds what an older file lacks)."""
    table = schema.quote(layer_name)
    if calibration is None or not calibration.intervals:
        return f"UPDATE {table} SET p_right = NULL WHERE p_right IS NOT NULL"  # nosec B608
    cases = []
    for interval, found in sorted(calibration.intervals.items()):
        changed = _piecewise("confidence", found.knots(True))
        unchanged = _piecewise("confidence", found.knots(False))
        cases.append(f"WHEN {int(interval)} THEN CASE WHEN change_detected THEN {changed} ELSE {unchanged} END")
    return (
        f"UPDATE {table} SET p_right = CASE WHEN status = {_literal(schema.CAPTIONED)} AND confidence IS NOT NULL "  # nosec B608
        f"THEN CASE \"interval\" {' '.join(cases)} ELSE NULL END ELSE NULL END"
    )


def table_sql(layer_name: str, calibration: Calibration | None, fitted_at: str) -> list[str]:
    """The statements that replace the calibration table's rows with ``calibration``'s (none for None)."""
    table = schema.quote(schema.calibration_table(layer_name))
    statements = [f"DELETE FROM {table}"]  # nosec B608
    if calibration is None:
        return statements
    names = ", ".join(schema.quote(field.name) for field in schema.CALIBRATION_FIELDS)
    for found in sorted(calibration.intervals.values(), key=lambda entry: entry.interval):
        row = {
            "interval": found.interval, "date_before": found.date_before, "date_after": found.date_after,
            "reviews": found.reviews, "wrong": found.wrong, "layer_reviews": calibration.reviews,
            "intercept": found.platt.intercept, "slope": found.platt.slope,
            "changed_shift": found.platt.changed_shift, "method": METHOD, "fitted_at": fitted_at,
        }
        values = ", ".join(_literal(row[field.name]) for field in schema.CALIBRATION_FIELDS)
        statements.append(f"INSERT INTO {table} ({names}) VALUES ({values})")  # nosec B608
    return statements
