"""Caption text conventions shared by inference, evaluation and data: normalisation and the no-change decision.

Pure standard library, so the backend's clients and the QGIS plugin can use it too.
"""

from __future__ import annotations

from dataclasses import dataclass

#: LEVIR-CC's five no-change sentences, normalised (every caption of a no-change pair is one of them).
NO_CHANGE_SENTENCES: tuple[str, ...] = (
    "there is no difference",
    "the two scenes seem identical",
    "the scene is the same as before",
    "no change has occurred",
    "almost nothing has changed",
)
_NO_CHANGE = frozenset(NO_CHANGE_SENTENCES)


def caption_tokens(caption: str) -> list[str]:
    """Tokens as the published evaluation sees them: lower case, "." removed, split on whitespace."""
    return caption.lower().replace(".", "").split()


def normalize_caption(caption: str) -> str:
    """The caption as one normalised string (see :func:`caption_tokens`)."""
    return " ".join(caption_tokens(caption))


def is_no_change(caption: str) -> bool:
    """True when the caption is one of LEVIR-CC's no-change sentences, after normalisation.

    This is the project's one no-change decision: the Captioner's ``change_detected``, the evaluation's
    change accuracy and the datasets' change flags all follow it.
    """
    return normalize_caption(caption) in _NO_CHANGE


@dataclass(frozen=True)
class CaptionResult:
    """What the model says about one pair of images."""

    caption: str
    #: False when the caption is a no-change sentence (see :func:`is_no_change`).
    change_detected: bool
    #: Geometric-mean probability of the generated tokens, 0..1: a ranking signal, not a calibrated probability.
    confidence: float
    #: Where the model has a change-map head: per token of the image grid (rows top to bottom), the probability
    #: that this place changed. None otherwise.
    change_map: tuple[tuple[float, ...], ...] | None = None

    @classmethod
    def from_caption(
        cls, caption: str, confidence: float, change_map: tuple[tuple[float, ...], ...] | None = None
    ) -> "CaptionResult":
        """Build a result, deciding ``change_detected`` from the caption text."""
        return cls(caption, not is_no_change(caption), float(confidence), change_map)
