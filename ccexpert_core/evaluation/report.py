"""One evaluation: check that predictions cover the references, score them once, report as JSON or a table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ccexpert_core.data.inputs import some
from ccexpert_core.errors import CCExpertError
from ccexpert_core.evaluation.scorers import METRICS, CaptionScorer, change_accuracy


def evaluate(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    *,
    allow_missing: bool = False,
    scorer: CaptionScorer | None = None,
    source: str = "predictions",
) -> dict[str, float]:
    """Score ``predictions`` against ``references`` (both keyed by pair id, one prediction per pair).

    Returns :data:`~ccexpert_core.evaluation.scorers.METRICS` (×100), ``pairs`` (how many were scored),
    ``change_accuracy`` (percent), ``missing`` (reference pairs without a prediction) and ``allow_missing``.
    Pairs without a prediction are an error unless ``allow_missing``: a partial score is never silent.
    ``scorer`` reuses an open :class:`CaptionScorer`; without one, a scorer (one JVM) is opened for this call.
    ``source`` names the predictions in error messages.
    """
    unknown = predictions.keys() - references.keys()
    if unknown:
        raise CCExpertError(f"{source}: {len(unknown)} predictions for pairs without references: {some(unknown)}")
    missing = references.keys() - predictions.keys()
    if missing and not allow_missing:
        raise CCExpertError(
            f"{source}: predictions missing for {len(missing)} of {len(references)} pairs: {some(missing)} "
            "(--allow-missing scores the others and reports the count)"
        )
    scored = {pair: references[pair] for pair in references if pair in predictions}
    if not scored:
        raise CCExpertError(f"{source}: no pair has a prediction")
    chosen = {pair: predictions[pair] for pair in scored}
    if scorer is None:
        with CaptionScorer() as own_scorer:
            scores = own_scorer.score(chosen, scored)
    else:
        scores = scorer.score(chosen, scored)
    return {
        **scores,
        "pairs": len(scored),
        "change_accuracy": change_accuracy(chosen, scored),
        "missing": len(missing),
        "allow_missing": allow_missing,
    }


def format_table(result: Mapping[str, float]) -> str:
    """The result of :func:`evaluate` as a two-column text table (scores to 2 decimals)."""
    rows = [(name, f"{result[name]:.2f}") for name in (*METRICS, "change_accuracy")]
    rows += [
        ("pairs", str(result["pairs"])),
        ("missing", str(result["missing"])),
        ("allow_missing", "yes" if result["allow_missing"] else "no"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value:>8}" for name, value in [("metric", "value"), *rows])
