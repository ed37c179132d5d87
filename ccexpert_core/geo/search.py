"""Search a captions layer in words: rank its tiles for a query such as ``demolished houses``, ``new roads 2021``,
``vegetation 2018..2021`` or ``unchanged 2016``.

What a query holds (case does not matter):

- words, matched against the caption shown (the analyst's where corrected, else the model's) in their variants
  (``house``/``houses``, ``demolish``/``demolished``, ``widen``/``widening``), and a word's first letters as it is
  typed (``demol``);
- words of the change-kind vocabulary (``captions.SUBJECT_WORDS``: houses, villas, streets, trees, ponds…; the
  demolition verbs; the kind names), which also find the tiles of that kind under any of its words: ``houses`` finds
  "two buildings have been built" and the tiles whose ``change_kind`` is buildings or demolition; ``demolished``
  finds demolition. Every such word must match: ``demolished houses`` is demolition;
- dates and ranges, ``2021``, ``2021-05``, ``2018..2021``, ``2018..``, ``..2020``: a tile matches when its interval
  (``date_before`` to ``date_after``) overlaps every one of them;
- ``changed`` / ``unchanged`` (``no change``), and ``reviewed`` / ``unreviewed`` / ``accepted`` / ``corrected``.

Tiles are ordered by how well they match, then changed first, then the most likely right (``p_right``, else the
confidence) first. The same ranking serves ``ccexpert search``, QGIS's locator bar and the review dock: the plugin
bundles this module beside ``captions.py``, ``dates.py`` and ``schema.py``. Errors are ``ValueError`` with a
message meant for a user.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

from . import dates, schema

if TYPE_CHECKING or __package__ == "ccexpert_core.geo":
    from .. import captions
else:  # the plugin's bundled/ folder holds the shared modules side by side
    from . import captions

#: Words a query may hold that say nothing of what to find.
STOP_WORDS = frozenset(
    "a an the in at of on and or to from with by for is are was were has have had been be there this that which "
    "tiles tile where what show find any all between".split()
)
CHANGED_WORDS = frozenset(("changed", "change", "changes"))
UNCHANGED_WORDS = frozenset(("unchanged", "nochange"))
#: Words that turn a following change word into "unchanged" (``no change``, ``not changed``).
NEGATIONS = frozenset(("no", "not", "without", "nothing"))
REVIEW_WORDS = frozenset(("reviewed", "unreviewed", "accepted", "corrected"))
#: A date (2016, 2016-05, 2016-05-12), or a range of two with either end open (2016..2018, 2016.., ..2018).
_DATE = r"\d{4}(?:-\d{1,2}){0,2}"
_DATE_TERM = re.compile(rf"^(?:(?P<single>{_DATE})|(?P<first>{_DATE})?\.\.(?P<last>{_DATE})?)$")
_WORD = re.compile(r"[a-z0-9]+")
#: Scores of one query word on one tile: the same word (or its variant) in the caption, the kind it names the
#: tile's, a synonym of the vocabulary in the caption, the word's beginning typed so far.
SAME_WORD, SAME_KIND, SYNONYM, PREFIX = 1.0, 0.9, 0.8, 0.5
PREFIX_MIN_LETTERS = 3


def roots(word: str) -> frozenset[str]:
    """The forms a word may be a variant of (plural, past, -ing): two words match when their roots meet."""
    found = {word}
    for suffix, replacement in (("ies", "y"), ("es", ""), ("s", ""), ("ed", ""), ("ed", "e"), ("ing", ""),
                                ("ing", "e")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            found.add(word[: len(word) - len(suffix)] + replacement)
    return frozenset(found)


def _vocabulary(widen: bool) -> dict[str, frozenset[str]]:
    """Each root of the vocabulary → the kinds of change it names; ``widen``: as a query word, where a building's
    word names its demolition too ("houses" finds the houses built and the houses demolished)."""
    named: dict[str, set[str]] = {}

    def add(word: str, kinds: Iterable[str]) -> None:
        for root in roots(word):
            named.setdefault(root, set()).update(kinds)

    for kind, words in captions.SUBJECT_WORDS.items():
        for word in words:
            add(word, (kind, "demolition") if widen and kind == "buildings" else (kind,))
    for word in (*captions.DEMOLITION_WORDS, "demolition", "demolish"):
        add(word, ("demolition",))
    for kind in captions.CHANGE_KINDS:
        for word in kind.split():
            add(word, (kind,))
    return {root: frozenset(kinds) for root, kinds in named.items()}


_QUERY_KINDS, _CAPTION_KINDS = _vocabulary(widen=True), _vocabulary(widen=False)


def kinds_of(word: str, in_query: bool = True) -> frozenset[str]:
    """The kinds of change a word names, in a query or in a caption (empty for a word outside the vocabulary)."""
    vocabulary = _QUERY_KINDS if in_query else _CAPTION_KINDS
    return frozenset().union(*(vocabulary.get(root, frozenset()) for root in roots(word)))


@dataclass(frozen=True)
class Entry:
    """One feature of a captions layer as search reads it."""

    fid: int
    tile_id: str
    row: int
    col: int
    interval: int
    status: str
    caption: str | None
    change_detected: bool | None
    change_kind: str | None
    confidence: float | None
    date_before: str | None = None
    date_after: str | None = None
    review_status: str | None = None
    reviewed_caption: str | None = None
    p_right: float | None = None

    @property
    def shown_caption(self) -> str | None:
        """The analyst's caption where there is one, else the model's."""
        return self.reviewed_caption or self.caption

    @property
    def changed(self) -> bool:
        """Whether the caption shown says something changed."""
        if self.reviewed_caption:
            return not captions.is_no_change(self.reviewed_caption)
        return self.status == schema.CAPTIONED and bool(self.change_detected)

    @property
    def kind(self) -> str | None:
        """The kind of change of the caption shown."""
        if self.reviewed_caption:
            return captions.change_kind(self.reviewed_caption)
        return self.change_kind or (captions.change_kind(self.caption) if self.caption else None)

    @property
    def dates(self) -> str:
        """``2018→2021``; empty where the dates are unknown."""
        if not (self.date_before or self.date_after):
            return ""
        return f"{self.date_before or '?'}→{self.date_after or '?'}"


@dataclass(frozen=True)
class Term:
    """A word of the query: its roots, and the kinds it names (required to match when it names any)."""

    word: str
    roots: frozenset[str]
    kinds: frozenset[str]


@dataclass(frozen=True)
class Query:
    """A parsed query (see :func:`parse_query`)."""

    text: str
    terms: tuple[Term, ...] = ()
    #: Each (first day, last day) the tile's interval must overlap.
    periods: tuple[tuple[date, date], ...] = ()
    changed: bool | None = None
    #: reviewed, unreviewed, accepted or corrected.
    review: str | None = None


def _period(text: str) -> tuple[date, date]:
    match = _DATE_TERM.match(text)
    assert match is not None
    if match.group("single"):
        label = dates.DateLabel.parse(match.group("single"))
        return label.first, label.last
    first = dates.DateLabel.parse(match.group("first")).first if match.group("first") else date.min
    last = dates.DateLabel.parse(match.group("last")).last if match.group("last") else date.max
    if first == date.min and last == date.max:
        raise ValueError("'..' is a range without dates: write 2018..2021, 2018.. or ..2021")
    if last < first:
        raise ValueError(f"the range {text} ends before it starts: write the earlier date first")
    return first, last


def parse_query(text: str) -> Query:
    """Read a query; a ``ValueError`` says what is wrong with it (an empty query, a bad date, a range backwards,
    changed and unchanged at once)."""
    words: list[str] = []
    periods = []
    for chunk in text.lower().replace(",", " ").split():
        if _DATE_TERM.match(chunk):
            periods.append(_period(chunk))
        else:
            words.extend(_WORD.findall(chunk))
    states: set[bool] = set()
    reviews: set[str] = set()
    terms: list[Term] = []
    negated = False  # the last word that says something was a negation ("nothing has changed")
    for word in words:
        if word in CHANGED_WORDS | UNCHANGED_WORDS:
            states.add(word in CHANGED_WORDS and not negated)
        elif word in REVIEW_WORDS:
            reviews.add(word)
        elif word not in STOP_WORDS and word not in NEGATIONS:
            terms.append(Term(word, roots(word), kinds_of(word)))
        if word not in STOP_WORDS:
            negated = word in NEGATIONS
    if not (terms or periods or states or reviews):
        raise ValueError(
            f"'{text.strip()}' has nothing to search for: type words (houses, demolished, new roads), dates (2021, "
            "2018..2021) or changed / unchanged"
        )
    if len(states) > 1:
        raise ValueError("ask for changed or for unchanged tiles, not both")
    if len(reviews) > 1:
        raise ValueError(f"ask for one of {', '.join(sorted(REVIEW_WORDS))}, not {' and '.join(sorted(reviews))}")
    return Query(text.strip(), tuple(terms), tuple(periods), next(iter(states), None), next(iter(reviews), None))


@dataclass(frozen=True)
class Hit:
    """A tile that matches, and how well (higher is better)."""

    entry: Entry
    score: float


@dataclass(frozen=True)
class _Indexed:
    """What matching needs of an entry, worked out once."""

    entry: Entry
    tokens: tuple[str, ...]
    roots: frozenset[str]
    #: Kinds named by the caption's words, and the entry's own kind.
    word_kinds: frozenset[str]
    kind: str | None
    changed: bool
    span: tuple[date, date] | None


def _span(entry: Entry) -> tuple[date, date] | None:
    """The days the entry's interval covers (one date where only one is known); None where none is."""
    labels = []
    for text in (entry.date_before, entry.date_after):
        try:
            labels.append(dates.DateLabel.parse(text) if text else None)
        except ValueError:  # a date some other tool wrote: the tile is not found by date
            labels.append(None)
    known = [label for label in labels if label is not None]
    if not known:
        return None
    return known[0].first, known[-1].last


def _index(entry: Entry) -> _Indexed:
    tokens = tuple(_WORD.findall((entry.shown_caption or "").lower()))
    word_roots = frozenset().union(*(roots(token) for token in tokens))
    word_kinds = frozenset().union(*(kinds_of(token, in_query=False) for token in tokens))
    return _Indexed(entry, tokens, word_roots, word_kinds, entry.kind, entry.changed, _span(entry))


@dataclass
class SearchIndex:
    """A layer's entries, ready to be searched many times (the locator bar searches at each key)."""

    entries: Sequence[Entry]
    _indexed: list[_Indexed] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._indexed = [_index(entry) for entry in self.entries if entry.shown_caption]

    def search(self, query: str | Query, limit: int | None = None) -> list[Hit]:
        """The entries that match ``query``, best first (at most ``limit``)."""
        parsed = parse_query(query) if isinstance(query, str) else query
        hits = []
        for item in self._indexed:
            if _passes(item, parsed):
                score = _score(item, parsed.terms)
                if score is not None:
                    hits.append(Hit(item.entry, score))
        hits.sort(key=_order)
        return hits if limit is None else hits[:limit]


def _passes(item: _Indexed, query: Query) -> bool:
    """The query's filters: dates, change state, review."""
    if query.changed is not None and item.changed != query.changed:
        return False
    status = item.entry.review_status
    if query.review is not None and {
        "reviewed": status is not None, "unreviewed": status is None, "accepted": status == schema.ACCEPTED,
        "corrected": status == schema.CORRECTED,
    }[query.review] is False:
        return False
    if query.periods:
        if item.span is None:
            return False
        first, last = item.span
        return all(start <= last and first <= end for start, end in query.periods)
    return True


def _word_score(item: _Indexed, term: Term) -> float:
    if term.roots & item.roots:
        return SAME_WORD
    if item.kind is not None and item.kind in term.kinds:
        return SAME_KIND
    if term.kinds & item.word_kinds:
        return SYNONYM
    if len(term.word) >= PREFIX_MIN_LETTERS and any(token.startswith(term.word) for token in item.tokens):
        return PREFIX
    return 0.0


def _score(item: _Indexed, terms: Sequence[Term]) -> float | None:
    """The entry's score; None where it does not match: a vocabulary word that misses, or no word at all that
    matches (words outside the vocabulary only add to the score)."""
    if not terms:
        return 0.0
    scores = [_word_score(item, term) for term in terms]
    if any(score == 0 and term.kinds for score, term in zip(scores, terms)) or not any(scores):
        return None
    return sum(scores)


def _order(hit: Hit) -> tuple[float, bool, float, int, int, int]:
    entry = hit.entry
    trust = entry.p_right if entry.p_right is not None else entry.confidence
    return -hit.score, not entry.changed, -(trust or 0.0), entry.row, entry.col, entry.interval
