"""The COCO caption scorers (pycocoevalcap) exactly as the published LEVIR-CC numbers use them.

Every caption is normalised first (lower case, "." removed, whitespace split: :func:`~ccexpert_core.captions.
normalize_caption`), then scored by pycocoevalcap's BLEU-1..4 ("closest" reference length), METEOR 1.5 (its jar,
run as ``java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm``), ROUGE-L and CIDEr-D (pycocoevalcap's ``Cider``
is the CIDEr-D variant; its IDF comes from the scored set, so only whole-set scores are comparable).
All scores are ×100; S*m is the mean of BLEU-4, METEOR, ROUGE-L and CIDEr-D.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from ccexpert_core.captions import is_no_change, normalize_caption
from ccexpert_core.data.samples import changed_from_captions
from ccexpert_core.errors import CCExpertError

if TYPE_CHECKING:
    from pycocoevalcap.meteor.meteor import Meteor

#: The score keys, in report order.
METRICS: tuple[str, ...] = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "S*m")


def _start_meteor() -> "Meteor":
    if shutil.which("java") is None:
        raise CCExpertError(
            "METEOR 1.5 runs on Java and no `java` command is on PATH: install a Java runtime "
            "(Debian: `scripts/ensure-system.sh java` installs default-jre-headless)"
        )
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def _stop_meteor(meteor: "Meteor") -> None:
    process = meteor.meteor_p
    # End of input ends METEOR's -stdio loop; pycocoevalcap itself only stops the JVM when garbage-collected.
    with contextlib.suppress(OSError):
        process.stdin.close()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _meteor_failure(meteor: "Meteor") -> CCExpertError:
    process = meteor.meteor_p
    process.kill()
    lines = process.stderr.read().decode(errors="replace").strip().splitlines()
    # compute_score fails while holding the scorer's lock, and pycocoevalcap's __del__ would wait on it forever.
    if meteor.lock.locked():
        meteor.lock.release()
    detail = lines[-1] if lines else f"exit code {process.wait()}"
    return CCExpertError(f"METEOR (Java) stopped without a score: {detail}")


class CaptionScorer:
    """The scorers with one METEOR JVM, started when the ``with`` block opens and stopped when it closes.

    Starting the JVM (loading METEOR's paraphrase table) costs seconds, scoring a whole test set about as much:
    keep one scorer open to score several sets (e.g. every epoch), never one per pair.
    """

    def __init__(self) -> None:
        self._meteor: Meteor | None = None

    def __enter__(self) -> "CaptionScorer":
        self._meteor = _start_meteor()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._meteor is not None:
            _stop_meteor(self._meteor)
            self._meteor = None

    def score(self, predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
        """The scores (×100, keys :data:`METRICS`) of one prediction per pair against that pair's references.

        Both mappings are keyed by pair id and must hold the same ids: each pair counts once.
        """
        if self._meteor is None:
            raise RuntimeError("CaptionScorer.score needs an open scorer: use `with CaptionScorer() as scorer:`")
        if predictions.keys() != references.keys() or not references:
            raise ValueError("predictions and references must hold the same, non-empty set of pair ids")
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        gts = {pair: [normalize_caption(caption) for caption in references[pair]] for pair in references}
        res = {pair: [normalize_caption(predictions[pair])] for pair in references}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        try:
            meteor, _ = self._meteor.compute_score(gts, res)
        except (ValueError, OSError):  # an empty answer or a broken pipe: the JVM has died
            raise _meteor_failure(self._meteor) from None
        rouge, _ = Rouge().compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
        scores = {f"BLEU-{n}": 100 * float(value) for n, value in enumerate(bleu, start=1)}
        scores.update({"METEOR": 100 * float(meteor), "ROUGE-L": 100 * float(rouge), "CIDEr-D": 100 * float(cider)})
        scores["S*m"] = sum(scores[key] for key in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")) / 4
        return scores


def change_accuracy(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> float:
    """Percentage of pairs whose prediction gets change vs no change right.

    A pair's truth is "no change" when all its references are no-change sentences; a prediction says "no change"
    when it is one (:func:`~ccexpert_core.captions.is_no_change`, the project's one decision).
    """
    if not references:
        raise ValueError("change accuracy of no pairs")
    hits = sum(
        changed_from_captions(references[pair]) != is_no_change(predictions[pair]) for pair in references
    )
    return 100 * hits / len(references)
