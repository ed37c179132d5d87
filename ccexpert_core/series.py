"""A tile seen at several dates: which intervals of its dates are captioned, and the unit of work for a model.

A pair is a series of two dates with the one interval (0, 1). The rules for intervals live here once, for the
Captioner, the backend's routes and every client. Standard library only, so any Python (QGIS's too) can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

#: (i, j): the indices of two dates of a series, i < j (earlier first).
Interval = tuple[int, int]
#: The one interval of a pair.
PAIR_INTERVALS: tuple[Interval, ...] = ((0, 1),)

Image = TypeVar("Image")
Result = TypeVar("Result")


def consecutive_intervals(dates: int) -> tuple[Interval, ...]:
    """Each date against the next: (0, 1), (1, 2), …"""
    return tuple((k, k + 1) for k in range(dates - 1))


def first_to_last_intervals(dates: int) -> tuple[Interval, ...]:
    """The first date against each later one: (0, 1), (0, 2), …"""
    return tuple((0, k) for k in range(1, dates))


def max_intervals(dates: int) -> int:
    """The most intervals a tile of ``dates`` dates can ask for: every pair of its dates once."""
    return dates * (dates - 1) // 2


def check_intervals(intervals: Sequence[Sequence[int]], dates: int) -> tuple[Interval, ...]:
    """``intervals`` for a tile of ``dates`` dates as (i, j) tuples, in the order given (its results come in that
    order), or ``ValueError`` saying what is wrong: each must be two of its dates in time order (0 ≤ i < j < dates),
    and each at most once, so that a tile's cost is bounded by its dates (:func:`max_intervals`)."""
    if dates < 2:
        raise ValueError(f"a series needs two or more dates per tile, not {dates}")
    checked: list[Interval] = []
    for interval in intervals:
        i, j = (int(k) for k in interval)
        if not 0 <= i < j < dates:
            raise ValueError(f"the interval {i}-{j} is not two dates of {dates} in time order (0 ≤ i < j < {dates})")
        if (i, j) in checked:
            raise ValueError(f"the interval {i}-{j} is repeated: give each interval once")
        checked.append((i, j))
    if not checked:
        raise ValueError("no interval given: name at least one, e.g. 0-1")
    return tuple(checked)


@dataclass(frozen=True)
class TileWork(Generic[Image]):
    """One tile for a model: its images, one per date in time order (two for a pair), and the intervals to
    caption, checked against its dates (:func:`check_intervals`). Its results come per interval, in order."""

    images: tuple[Image, ...]
    intervals: tuple[Interval, ...] = PAIR_INTERVALS

    def __post_init__(self) -> None:
        object.__setattr__(self, "intervals", check_intervals(self.intervals, len(self.images)))

    @classmethod
    def pair(cls, before: Image, after: Image) -> TileWork[Image]:
        """A (before, after) pair: a series of two with its one interval."""
        return cls((before, after))

    @property
    def pairs(self) -> int:
        """How many pairs the model captions for this tile (its intervals)."""
        return len(self.intervals)

    def used_dates(self) -> tuple[int, ...]:
        """The dates its intervals compare, in order: the only images the model needs."""
        return tuple(sorted({date for interval in self.intervals for date in interval}))


def regroup(flat: Sequence[Result], per_tile: Sequence[int]) -> list[list[Result]]:
    """Results of consecutive pairs back into per tile, ``per_tile[k]`` for tile k (its intervals)."""
    if len(flat) != sum(per_tile):
        raise RuntimeError(f"{len(flat)} results for {sum(per_tile)} pairs")
    grouped, start = [], 0
    for count in per_tile:
        grouped.append(list(flat[start : start + count]))
        start += count
    return grouped
