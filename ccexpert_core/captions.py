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


#: The kinds of change an analyst filters by (the ``change_kind`` field).
CHANGE_KINDS = ("buildings", "demolition", "roads", "vegetation", "water", "bare land")

# Words that name each kind's subject, and the verbs that make a building's change a demolition. Matched on whole
# words of the normalised caption, first by where they stand (the caption's subject comes first), so that "a road
# has been built beside the houses" is roads. Search (geo/search.py) reads them as each kind's synonyms.
SUBJECT_WORDS = {
    # LEVIR-CC's annotators often wrote "vitals" for villas.
    "buildings": (
        "building", "buildings", "house", "houses", "villa", "villas", "vital", "vitals", "residence", "residences",
        "residential", "structure", "structures", "warehouse", "warehouses", "factory", "factories", "stadium",
        "mansion", "mansions", "longhouse", "longhouses", "dock", "docks", "construction", "constructions", "block",
        "blocks", "facilities", "venues", "playground", "hub"),
    "roads": ("road", "roads", "street", "streets", "lane", "lanes", "path", "paths", "footpath", "highway",
              "parking", "roadside", "crossroads", "track", "tracks", "viaduct", "viaducts"),
    "vegetation": ("tree", "trees", "forest", "forests", "woods", "jungle", "plant", "plants", "vegetation",
                   "grass", "grassland", "meadow", "bushes", "green", "greenery", "lawn", "lawns"),
    "water": ("water", "river", "rivers", "pond", "ponds", "lake", "lakes", "pool", "pools", "reservoir"),
    "bare land": ("bareland", "bare", "soil", "dirt", "desert", "sand", "ground"),
}
DEMOLITION_WORDS = ("demolished", "removed", "disappeared", "torn", "destroyed", "gone", "razed", "vanished")
_WORD_KIND = {word: kind for kind, words in SUBJECT_WORDS.items() for word in words}
#: The demo model's own kinds (its change-summary head, ``change_types``) in the analysts' words.
MODEL_KINDS = {
    "buildings_built": "buildings", "buildings_demolished": "demolition", "road_built": "roads",
    "road_widened": "roads", "trees_cleared": "vegetation", "bare_land_developed": "buildings",
}


def change_kind(caption: str) -> str | None:
    """The kind of change a caption speaks of (one of :data:`CHANGE_KINDS`), read from its words, for any model;
    None for a no-change sentence or a caption that names no known subject.

    The first subject named decides; a building that was demolished, removed or is gone is ``demolition``.
    """
    if is_no_change(caption):
        return None
    words = caption_tokens(caption)
    for word in words:
        kind = _WORD_KIND.get(word)
        if kind is None:
            continue
        if kind == "buildings" and any(verb in words for verb in DEMOLITION_WORDS):
            return "demolition"
        return kind
    return None


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
    #: The kind of change (one of :data:`CHANGE_KINDS`): the model's own where it tells kinds, else the caption's
    #: words (:func:`change_kind`); None for no change or no known subject.
    change_kind: str | None = None

    @classmethod
    def from_caption(
        cls, caption: str, confidence: float, change_map: tuple[tuple[float, ...], ...] | None = None,
        model_kind: str | None = None,
    ) -> "CaptionResult":
        """Build a result, deciding ``change_detected`` from the caption text and the kind from the model's own
        ``model_kind`` (a :data:`MODEL_KINDS` key or one of :data:`CHANGE_KINDS`) or else the caption's words."""
        changed = not is_no_change(caption)
        kind = MODEL_KINDS.get(model_kind or "", model_kind) if changed and model_kind else change_kind(caption)
        return cls(caption, changed, float(confidence), change_map, kind)
