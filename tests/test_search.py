"""Search in words (geo/search.py): synonyms and variants from the change-kind vocabulary, kinds, dates and ranges,
changed/unchanged and review filters, the analyst's caption, the order, and queries it refuses."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ccexpert_core.geo import schema, search
from ccexpert_core.geo.search import Entry, SearchIndex, parse_query


def entry(fid: int, caption: str, kind: str | None, before: str = "2018", after: str = "2021", **fields) -> Entry:
    values = {"fid": fid, "tile_id": f"r0_c{fid}", "row": 0, "col": fid, "interval": 0,
              "status": schema.CAPTIONED, "caption": caption, "change_detected": kind is not None or "no " not in
              caption, "change_kind": kind, "confidence": 0.5, "date_before": before, "date_after": after}
    return Entry(**{**values, **fields})


TOWN = [
    entry(0, "two buildings have been built at the top left", "buildings"),
    entry(1, "the house at the center has been demolished", "demolition"),
    entry(2, "a road has been built at the bottom", "roads", "2016", "2018"),
    entry(3, "there is no difference", None, change_detected=False),
    entry(4, "some villas appear at the top", "buildings", "2021", "2024"),
    entry(5, "the trees at the left have been cleared", "vegetation", "2016", "2018"),
    entry(6, "many structures were removed", None),  # the kind from its words
    entry(7, "the road at the right has been widened", "roads", confidence=0.9),
    entry(8, "a pond appears", "water", None, None),
    entry(9, "", None, status=schema.SKIPPED_NODATA, change_detected=None, confidence=None),
]


def found(query: str, entries: list[Entry] = TOWN) -> list[int]:
    return [hit.entry.fid for hit in SearchIndex(entries).search(query)]


def test_the_module_imports_only_the_standard_library_and_its_bundled_neighbours() -> None:
    tree = ast.parse(Path(search.__file__).read_text(encoding="utf-8"))
    absolute = {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.level == 0 and node.module}
    relative = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level
                for alias in node.names}
    assert absolute <= {"__future__", "re", "collections", "dataclasses", "datetime", "typing"}
    assert relative == {"captions", "dates", "schema"}  # bundled side by side in the plugin


@pytest.mark.parametrize(("query", "fids"), [
    ("houses", [1, 0, 4, 6]),  # buildings and demolition: the word's variant (house) first, then by kind
    ("villa", [4, 0, 1, 6]),  # the word itself first, then the other tiles of its kinds
    ("buildings", [0, 1, 4, 6]),
    ("demolished houses", [1, 6]),  # both words must match: "removed" is a demolition verb
    ("demolition", [1, 6]),
    ("roads", [7, 2]),  # equal words: the more confident first
    ("streets", [7, 2]),  # a synonym the vocabulary knows
    ("widening", [7]),  # a variant: widen, widened, widening
    ("vegetation", [5]),
    ("forest", [5]),
    ("water", [8]),
    ("demol", [1]),  # the word's beginning, as the locator bar sees it typed
])
def test_words_find_their_variants_synonyms_and_kinds(query: str, fids: list[int]) -> None:
    assert sorted(found(query)) == sorted(fids)
    assert found(query)[0] == fids[0]


def test_dates_and_ranges_keep_the_intervals_that_overlap_them() -> None:
    assert sorted(found("2017")) == [2, 5]
    assert sorted(found("2018")) == [0, 1, 2, 3, 5, 6, 7]  # the intervals that end or start in 2018
    assert sorted(found("roads 2018..2019")) == [2, 7]
    assert found("roads 2021-06") == [7]
    assert sorted(found("2022..")) == [4]
    assert sorted(found("..2017")) == [2, 5]
    assert found("water 2021") == []  # a tile without dates is never found by date


def test_changed_unchanged_and_review_filters() -> None:
    assert found("unchanged") == [3] and found("no change") == [3] and found("nothing has changed") == [3]
    assert 3 not in found("changed") and len(found("changed")) == 8
    reviewed = [*TOWN[:2], entry(10, "a road has been built", "roads", review_status=schema.ACCEPTED),
                entry(11, "a house appears", "buildings", review_status=schema.CORRECTED,
                      reviewed_caption="a road has been built at the top")]
    assert found("roads", reviewed) == [10, 11]  # the analyst's caption is what is searched
    assert found("houses", reviewed) == [1, 0]
    assert found("corrected", reviewed) == [11] and found("accepted roads", reviewed) == [10]
    assert found("unreviewed", reviewed) == [0, 1]


def test_hits_come_best_first_then_changed_then_most_trusted() -> None:
    hits = SearchIndex(TOWN).search("demolished houses")
    assert [(hit.entry.fid, hit.score) for hit in hits] == [(1, 2.0), (6, 1.8)]  # its own words, then synonyms
    trusted = [entry(0, "a road has been built", "roads", confidence=0.9, p_right=0.2),
               entry(1, "a road has been built", "roads", confidence=0.3, p_right=0.8),
               entry(2, "a road has been built", "roads", confidence=0.7)]
    assert found("roads", trusted) == [1, 2, 0]  # p_right where there is one, else the confidence
    words = [entry(0, "a road at the top", "roads"), entry(1, "a road at the top left", "roads")]
    assert found("roads top left", words) == [1, 0]  # words beyond the vocabulary add to the score
    assert found("houses") == [1, 0, 4, 6]  # 0, 4 and 6 tie: row then column order
    assert len(SearchIndex(TOWN).search("changed", limit=3)) == 3


@pytest.mark.parametrize(("query", "says"), [
    ("", "nothing to search for"),
    ("the of", "nothing to search for"),
    ("2021-13", "'2021-13' is not a date"),
    ("2021..2018", "ends before it starts"),
    ("..", "a range without dates"),
    ("changed unchanged", "not both"),
    ("accepted corrected", "not accepted and corrected"),
])
def test_queries_it_refuses_say_why(query: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_query(query)


def test_parsing_keeps_what_the_query_asks() -> None:
    parsed = parse_query("New roads in 2021, not changed")
    assert [term.word for term in parsed.terms] == ["new", "roads"] and parsed.changed is False
    assert parsed.terms[1].kinds == {"roads"} and parsed.terms[0].kinds == frozenset()
    assert search.kinds_of("houses") == {"buildings", "demolition"}
    assert search.kinds_of("houses", in_query=False) == {"buildings"}
    assert search.kinds_of("razed") == {"demolition"} and search.kinds_of("soil") == {"bare land"}
