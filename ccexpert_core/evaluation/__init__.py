"""Evaluation exactly as the published LEVIR-CC numbers: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, S*m (pycocoevalcap,
METEOR on Java), plus change/no-change accuracy.

Typical use::

    data = read_ccexpert_predictions(Path("predictions.jsonl"))
    result = evaluate(data.predictions, data.references)   # one METEOR JVM for the whole set
"""

from ccexpert_core.evaluation.inputs import EvaluationSet, read_ccexpert_predictions, read_keyed_predictions
from ccexpert_core.evaluation.report import evaluate, format_table
from ccexpert_core.evaluation.scorers import METRICS, CaptionScorer, change_accuracy

__all__ = [
    "METRICS",
    "CaptionScorer",
    "EvaluationSet",
    "change_accuracy",
    "evaluate",
    "format_table",
    "read_ccexpert_predictions",
    "read_keyed_predictions",
]
