"""Dates of a series: ISO labels (``2016``, ``2016-05``, ``2016-05-12``), checked to be in time order, read from
``LABEL=PATH`` arguments, raster metadata or file and layer names.

Standard library only, so that the QGIS plugin bundles it (its date fields are prefilled and checked with it).
Errors are ``ValueError`` with a message meant for a user.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

_LABEL = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
# Dates inside names: 2016-05-12, 2016_05_12, 20160512, 2016-05, 2016 (a year from 1900 to 2099, not inside a
# longer number).
_IN_NAME = re.compile(r"(?<!\d)((?:19|20)\d{2})(?:[-_.]?(0[1-9]|1[0-2])(?:[-_.]?(0[1-9]|[12]\d|3[01]))?)?(?!\d)")
# TIFFTAG_DATETIME is "YYYY:MM:DD HH:MM:SS"; other drivers write ISO 8601.
_METADATA = re.compile(r"^\s*(\d{4})[:-](\d{2})[:-](\d{2})")
#: Metadata items that say when an image was taken, in the order they are believed.
METADATA_KEYS = ("ACQUISITIONDATETIME", "ACQUISITION_DATE", "DATE_ACQUIRED", "TIFFTAG_DATETIME")


@dataclass(frozen=True, order=True)
class DateLabel:
    """A date as precise as it was given: the span of days it covers, and its text."""

    first: date
    last: date
    text: str

    @classmethod
    def parse(cls, text: str) -> "DateLabel":
        """``2016``, ``2016-05`` or ``2016-05-12``; anything else is a ``ValueError``."""
        match = _LABEL.match(text.strip())
        if not match:
            raise ValueError(f"'{text}' is not a date: write a year (2016), a month (2016-05) or a day (2016-05-12)")
        year_text, month_text, day_text = match.groups()
        year = int(year_text)  # the pattern's one group that is always there
        month, day = (int(part) if part else None for part in (month_text, day_text))
        try:
            if month is None:
                return cls(date(year, 1, 1), date(year, 12, 31), match.group(0))
            if day is None:
                return cls(date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1]),
                           match.group(0))
            day_date = date(year, month, day)
        except ValueError as error:
            raise ValueError(f"'{text}' is not a date: {error}") from None
        return cls(day_date, day_date, match.group(0))

    def __str__(self) -> str:
        return self.text


def check_order(labels: Sequence[DateLabel], names: Sequence[str] | None = None) -> None:
    """Refuse dates that are repeated, out of time order, or that overlap (2016 and 2016-05): each must end before
    the next begins. ``names`` say which input each date is, for the message."""
    names = names or [str(label) for label in labels]
    for index in range(1, len(labels)):
        earlier, later = labels[index - 1], labels[index]
        if later.first <= earlier.last:
            what = "repeats" if later.text == earlier.text else (
                "comes before" if later.last < earlier.first else "overlaps")
            raise ValueError(
                f"the dates must be in time order, each after the one before: {later} ({names[index]}) {what} "
                f"{earlier} ({names[index - 1]})"
            )


def parse_date_argument(text: str) -> tuple[DateLabel, str]:
    """``LABEL=PATH`` → (label, path)."""
    label, sep, path = text.partition("=")
    if not sep or not path.strip():
        raise ValueError(f"expected LABEL=PATH (e.g. 2016=city_2016.tif), not '{text}'")
    return DateLabel.parse(label), path.strip()


def date_from_metadata(tags: Mapping[str, str]) -> DateLabel | None:
    """The acquisition day a raster's metadata gives (e.g. ``TIFFTAG_DATETIME``), if any."""
    for key in METADATA_KEYS:
        match = _METADATA.match(tags.get(key, "") or "")
        if match:
            try:
                return DateLabel.parse("-".join(match.groups()))
            except ValueError:
                continue
    return None


def date_from_name(name: str) -> DateLabel | None:
    """A date written in a file or layer name (``city_2018.tif``, ``ortho-2016-05``, ``S2_20160512``), if one."""
    found = _IN_NAME.findall(name)
    if len(found) != 1:  # none, or several (a range, a version number): not for us to guess
        return None
    year, month, day = found[0]
    try:
        return DateLabel.parse("-".join(part for part in (year, month, day) if part))
    except ValueError:
        return None
