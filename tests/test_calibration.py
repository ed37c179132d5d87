"""The calibration of p_right on reviews (geo/calibration.py): a monotone map with a prior, per interval, the same in
SQL as in Python, and the reliability measures."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from ccexpert_core.geo import calibration, schema
from ccexpert_core.geo.calibration import MIN_REVIEWS, Platt, Sample


def drawn(count: int, truth: Platt, seed: int = 0, interval: int = 0) -> list[Sample]:
    """Reviews whose rightness follows ``truth`` exactly."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.3, 0.999, count)
    changed = rng.random(count) < 0.5
    right = rng.random(count) < truth.probability(confidence, changed)
    return [Sample(float(c), bool(f), interval, bool(r)) for c, f, r in zip(confidence, changed, right)]


def test_the_module_imports_only_numpy_the_standard_library_and_its_bundled_neighbours() -> None:
    tree = ast.parse(Path(calibration.__file__).read_text(encoding="utf-8"))
    imported = {
        (node.module or "." if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names
    }
    assert imported <= {"__future__", "math", "collections", "dataclasses", "functools", "typing", "numpy", ""}


def test_no_review_is_the_prior_and_p_right_waits_for_enough_reviews() -> None:
    assert calibration.fit([]) == calibration.PRIOR
    assert float(calibration.PRIOR.probability(0.8, True)) == pytest.approx(0.8)
    samples = drawn(MIN_REVIEWS, Platt(0, 1, 0))
    assert calibration.calibrate(samples[:-1], {0: ("2019", "2023")}) is None
    fitted = calibration.calibrate(samples, {0: ("2019", "2023")})
    assert fitted is not None and fitted.reviews == MIN_REVIEWS and set(fitted.intervals) == {0}
    assert fitted.intervals[0].date_before == "2019" and fitted.p_right(None, True, 0) is None
    assert fitted.p_right(0.5, True, 7) is None  # an interval the layer does not have


def test_a_handful_of_reviews_moves_the_map_less_than_many_and_many_find_the_truth() -> None:
    wrong, right = [Sample(0.9, True, 0, False)], [Sample(0.9, True, 0, True)]
    one, few, many = (float(calibration.fit(wrong * n).probability(0.9, True)) for n in (1, 3, 30))
    assert 0.9 > one > few > many and one > 0.3 and many < 0.1
    assert float(calibration.fit(wrong * 10 + right * 10).probability(0.9, True)) == pytest.approx(0.5, abs=0.05)
    truth = Platt(-1.0, 2.0, -1.5)
    learned = calibration.fit(drawn(4000, truth, seed=1))
    assert learned.vector() == pytest.approx(truth.vector(), abs=0.25)


@pytest.mark.parametrize("truth", [Platt(0.5, 1.5, -1.0), Platt(1.0, -2.0, 0.5)])
def test_p_right_never_falls_as_confidence_rises(truth: Platt) -> None:
    # The second truth is anti-correlated with confidence: the monotone map holds its slope at 0 instead.
    fitted = calibration.calibrate(drawn(300, truth, seed=2), {0: (None, None)})
    assert fitted is not None and fitted.intervals[0].platt.slope >= 0
    grid = np.linspace(0, 1, 2001)
    for changed in (False, True):
        values = fitted.intervals[0].p_right(grid, changed)
        assert np.all(np.diff(values) >= -1e-12) and np.all((values >= 0) & (values <= 1))
    if truth.slope < 0:
        assert fitted.intervals[0].platt.slope == 0


def test_each_interval_gets_its_own_map_leaning_on_the_layers() -> None:
    trusted = drawn(60, Platt(3.0, 1.0, 0.0), seed=3, interval=0)
    doubtful = drawn(60, Platt(-2.0, 1.0, 0.0), seed=4, interval=1)
    fitted = calibration.calibrate(trusted + doubtful, {0: ("2016", "2018"), 1: ("2018", "2021"), 2: ("2021", "2024")})
    assert fitted is not None
    p = {interval: fitted.p_right(0.8, True, interval) for interval in (0, 1, 2)}
    assert p[0] > p[2] > p[1]  # the interval nobody reviewed gets the layer's map
    assert fitted.intervals[2].platt == fitted.layer and fitted.intervals[2].reviews == 0
    assert (fitted.intervals[1].reviews, fitted.intervals[1].wrong) == (60, sum(not s.right for s in doubtful))
    single = calibration.calibrate(trusted, {0: (None, None)})
    assert single is not None and single.intervals[0].platt == single.layer  # one interval: the layer's fit


def layer_table(rows: list[tuple]) -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:")
    connection.execute('CREATE TABLE captions (fid INTEGER PRIMARY KEY, "interval" INTEGER, status TEXT, '
                       "change_detected BOOLEAN, confidence REAL, review_status TEXT, date_before TEXT, "
                       "date_after TEXT, p_right REAL)")
    connection.executemany('INSERT INTO captions ("interval", status, change_detected, confidence, review_status, '
                           "date_before, date_after) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    return connection


def test_the_sql_writes_what_python_computes_and_reads_what_the_fit_needs() -> None:
    rng = np.random.default_rng(5)
    rows = [(int(k % 2), schema.CAPTIONED, int(rng.random() < 0.5), float(rng.uniform(0, 1)),
             [None, schema.ACCEPTED, schema.CORRECTED][k % 3], "2018" if k % 2 else "2016", "2021" if k % 2 else "2018")
            for k in range(300)]
    rows += [(0, schema.CAPTIONED, 1, 0.0, None, "2016", "2018"), (0, schema.CAPTIONED, 1, 1.0, None, "2016", "2018"),
             (0, schema.SKIPPED_NODATA, None, None, None, "2016", "2018"), (1, schema.FAILED, None, None, None, "2018",
                                                                            "2021")]
    connection = layer_table(rows)
    columns = {row[1] for row in connection.execute("PRAGMA table_info(captions)")}
    samples = [calibration.sample_of(row) for row in connection.execute(calibration.samples_sql("captions", columns))]
    assert len(samples) == 200 and {s.interval for s in samples} == {0, 1}
    intervals = calibration.interval_dates(connection.execute(calibration.intervals_sql("captions", columns)))
    assert intervals == {0: ("2016", "2018"), 1: ("2018", "2021")}
    fitted = calibration.calibrate(samples, intervals)
    connection.execute(calibration.p_right_sql("captions", fitted))
    for interval, status, changed, confidence, p_right in connection.execute(
        'SELECT "interval", status, change_detected, confidence, p_right FROM captions'
    ):
        if status != schema.CAPTIONED:
            assert p_right is None
        else:
            assert p_right == pytest.approx(fitted.p_right(confidence, bool(changed), interval), abs=1e-12)
            exact = fitted.intervals[interval].platt.probability(confidence, bool(changed))
            assert p_right == pytest.approx(float(exact), abs=0.003)  # the knots follow the map closely
    assert connection.execute(calibration.stored_sql("captions", columns)).fetchone() == (1,)
    connection.execute(calibration.p_right_sql("captions", None))
    assert connection.execute("SELECT count(*) FROM captions WHERE p_right IS NOT NULL").fetchone() == (0,)
    # An older layer: no review fields, no interval, no p_right.
    assert calibration.samples_sql("captions", {"tile_id", "status"}).endswith("WHERE 0")
    assert calibration.stored_sql("captions", {"tile_id"}).endswith("WHERE 0")


def test_the_calibration_table_rows_are_the_schemas_fields() -> None:
    fitted = calibration.calibrate(drawn(20, Platt(1, 1, 0)), {0: ("2019", "2023")})
    connection = sqlite3.connect(":memory:")
    table = schema.calibration_table("captions")
    assert table == "ccexpert_calibration" and schema.calibration_table("roads") == "ccexpert_calibration_roads"
    connection.execute(f"CREATE TABLE {table} (fid INTEGER PRIMARY KEY, "
                       + ", ".join(f"{schema.quote(f.name)} {f.sql()}" for f in schema.CALIBRATION_FIELDS) + ")")
    for statement in calibration.table_sql("captions", fitted, "2024-05-01T10:00:00.000Z"):
        connection.execute(statement)
    row = connection.execute(f"SELECT * FROM {table}").fetchone()
    names = ["fid", *(f.name for f in schema.CALIBRATION_FIELDS)]
    stored = dict(zip(names, row))
    platt = fitted.intervals[0].platt
    assert (stored["interval"], stored["date_before"], stored["date_after"], stored["reviews"]) == (0, "2019", "2023",
                                                                                                    20)
    assert (stored["intercept"], stored["slope"], stored["changed_shift"]) == (platt.intercept, platt.slope,
                                                                               platt.changed_shift)
    assert stored["method"] == calibration.METHOD and str(MIN_REVIEWS) in stored["method"]
    for statement in calibration.table_sql("captions", None, "2024-05-01T10:00:00.000Z"):
        connection.execute(statement)
    assert connection.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


def test_reliability_bins_calibration_error_and_the_expected_wrong() -> None:
    predicted = [0.05, 0.15, 0.15, 0.95, 0.95, 1.0]
    right = [False, False, True, True, True, False]
    bins = calibration.reliability(predicted, right)
    assert [(b.low, b.count) for b in bins] == [(0.0, 1), (0.1, 2), (0.9, 3)]
    assert bins[1].predicted == pytest.approx(0.15) and bins[1].right == 0.5 and bins[2].right == pytest.approx(2 / 3)
    expected = (1 * 0.05 + 2 * 0.35 + 3 * abs(2.9 / 3 - 2 / 3)) / 6
    assert calibration.calibration_error(predicted, right) == pytest.approx(expected)
    assert calibration.expected_wrong([0.9, 0.6, 0.5]) == pytest.approx(1.0)


def test_cross_validated_p_right_is_each_reviews_own_held_out_guess() -> None:
    samples = drawn(40, Platt(0.0, 1.0, -1.0), seed=6)
    held_out = calibration.cross_validated(samples)
    fitted = calibration.fit_layer(samples, {})
    in_sample = np.array([fitted.p_right(s.confidence, s.changed, s.interval) for s in samples])
    assert held_out.shape == (40,) and np.all((held_out > 0) & (held_out < 1))
    assert not np.allclose(held_out, in_sample)
    first_fold = calibration.fit_layer([s for k, s in enumerate(samples) if k % 5], {})
    assert held_out[0] == pytest.approx(first_fold.p_right(samples[0].confidence, samples[0].changed, 0))


def test_the_fit_reaches_the_posteriors_maximum_with_confidences_near_0_and_1() -> None:
    # Full Newton steps overshoot here (logits of ±10) and ran away to a slope of 150; halved steps do not.
    rng = np.random.default_rng(5)
    samples = [Sample(float(c), bool(f), 0, bool(r))
               for c, f, r in zip(rng.uniform(0, 1, 200), rng.random(200) < 0.5, rng.random(200) < 0.5)]
    fitted = calibration.fit(samples)
    logit = np.log(np.clip([s.confidence for s in samples], 1e-6, 1 - 1e-6) / (1 - np.clip(
        [s.confidence for s in samples], 1e-6, 1 - 1e-6)))
    design = np.column_stack([np.ones(200), np.clip(logit, -10, 10), [s.changed for s in samples]])
    right = np.array([s.right for s in samples], dtype=float)
    p = 1 / (1 + np.exp(-design @ fitted.vector()))
    gradient = design.T @ (right - p) - (fitted.vector() - calibration.PRIOR.vector()) / np.array(
        calibration.PRIOR_SD) ** 2
    assert np.abs(gradient).max() < 1e-6 and abs(fitted.slope) < 1
