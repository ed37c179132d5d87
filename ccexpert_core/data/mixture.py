"""YAML mixtures of CC JSON datasets, in the LLaVA / CC-Foundation form::

    datasets:
      - json_path: levircc_train.json      # relative to the YAML file's folder
        sampling_strategy: all             # all | first:N | end:N | random:N, N a count or a percentage ("10%")
      - json_path: dubai_cc.json
        sampling_strategy: random:50%

A bare list of such entries is accepted too. An entry listed k times contributes k times (up-sampling).
Percentages round up; a count larger than the dataset takes all of it. ``random`` draws without replacement from
one generator seeded once per mixture, so repeated random entries draw different subsets, the same ones every run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ccexpert_core.data.cc_json import read_cc_json
from ccexpert_core.data.inputs import read_yaml, require_field
from ccexpert_core.data.samples import PairSample
from ccexpert_core.errors import CCExpertError

_KINDS = ("first", "end", "random")


@dataclass(frozen=True)
class SamplingStrategy:
    """How many pairs of a dataset a mixture takes, and which: ``all`` or ``first|end|random:N`` / ``:P%``."""

    kind: str
    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str) -> "SamplingStrategy":
        """Parse ``all``, ``first:100``, ``end:10%``, ``random:2.5%``…; a ValueError says what is accepted."""
        kind, sep, amount = text.strip().partition(":")
        try:
            if kind == "all" and not sep:
                return cls("all")
            if kind in _KINDS and amount.endswith("%"):
                percent = float(amount[:-1])
                if 0 <= percent <= 100:
                    return cls(kind, percent=percent)
            elif kind in _KINDS and int(amount) >= 0:
                return cls(kind, count=int(amount))
        except ValueError:
            pass
        raise ValueError(
            f"sampling_strategy {text!r} is not one of all, first:N, end:N, random:N "
            "(N a count or a percentage from 0% to 100%, e.g. random:10%)"
        )

    def __str__(self) -> str:
        """The strategy as a mixture file writes it."""
        if self.kind == "all":
            return "all"
        return f"{self.kind}:{self.percent:g}%" if self.percent is not None else f"{self.kind}:{self.count}"

    def size(self, available: int) -> int:
        """How many of ``available`` pairs this strategy takes."""
        if self.kind == "all":
            return available
        if self.percent is not None:
            # round() first: 1.1% of 7000 is 77.00000000000001 in floating point, which must not round up to 78.
            wanted = math.ceil(round(self.percent * available / 100, 6))
        else:
            assert self.count is not None  # parse gives every kind but "all" a count or a percent
            wanted = self.count
        return min(wanted, available)

    def apply(self, pairs: Sequence[PairSample], rng: random.Random) -> list[PairSample]:
        """The pairs this strategy selects; ``random`` keeps the drawn order."""
        n = self.size(len(pairs))
        if self.kind == "random":
            return rng.sample(list(pairs), n)
        # "end" slices from len - n: pairs[-0:] would take everything.
        return list(pairs[:n] if self.kind == "first" else pairs[len(pairs) - n :])


@dataclass(frozen=True)
class MixtureSource:
    """One entry of a mixture: a CC JSON file and how to sample it."""

    json_path: Path
    strategy: SamplingStrategy


def read_mixture(path: Path) -> list[MixtureSource]:
    """The entries of a mixture YAML file, paths resolved against its folder, strategies checked."""
    path = Path(path)
    data = read_yaml(path)
    entries = data.get("datasets") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise CCExpertError(
            f"{path}: expected a non-empty list under 'datasets' (each with json_path, sampling_strategy)"
        )
    sources = []
    for i, entry in enumerate(entries):
        where = f"{path}: datasets[{i}]"
        json_path = require_field(entry, "json_path", str, where)
        try:
            strategy = SamplingStrategy.parse(str(entry.get("sampling_strategy", "all")))
        except ValueError as error:
            raise CCExpertError(f"{where}: {error}") from None
        sources.append(MixtureSource(path.resolve().parent / json_path, strategy))
    return sources


def load_mixture_parts(
    path: Path, seed: int = 0, check_images: bool = True
) -> list[tuple[MixtureSource, list[PairSample]]]:
    """Each entry of the mixture with the pairs it contributes, in YAML order."""
    rng = random.Random(seed)
    # An entry repeated for up-sampling is read once.
    loaded: dict[Path, list[PairSample]] = {}
    parts = []
    for source in read_mixture(path):
        if source.json_path not in loaded:
            loaded[source.json_path] = read_cc_json(source.json_path, check_images)
        parts.append((source, source.strategy.apply(loaded[source.json_path], rng)))
    return parts


def load_mixture(path: Path, seed: int = 0, check_images: bool = True) -> list[PairSample]:
    """All pairs of a mixture, entry after entry; an empty result is a :class:`CCExpertError`."""
    pairs = [pair for _, part in load_mixture_parts(path, seed, check_images) for pair in part]
    if not pairs:
        raise CCExpertError(f"{path}: the mixture selects no pairs")
    return pairs
