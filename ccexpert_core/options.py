"""Command-line values checked in words: finite numbers in their ranges, device names, before any work starts.

Each ``*_value`` function (and what ``int_in``, ``float_in`` and ``numbers`` return) is an ``argparse`` type: it
returns the parsed value or raises ``argparse.ArgumentTypeError`` with a message that says what was wrong and what
to give instead (argparse puts the option's name in front).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from ccexpert_core import protocol
from ccexpert_core.errors import CCExpertError

if TYPE_CHECKING:
    from ccexpert_core.geo.dates import DateLabel
    from ccexpert_core.geo.sources import RasterLocation

_OVERLAP = re.compile(r"^\s*(\d+|\d+(\.\d+)?%)\s*$")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text.strip())
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {what}, not '{text}'") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not '{text}'")
    return value


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An integer from ``low`` to ``high``."""

    def parse(text: str) -> int:
        value = int(_number(text, int))
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:,} to {high:,}, not {value:,}")
        return value

    return parse


def float_in(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""

    def parse(text: str) -> float:
        value = float(_number(text, float))
        if value < low or value > high or (low_open and value == low):
            bracket = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"must be in {bracket}{low:g}, {high:g}], not {value:g}")
        return value

    return parse


def numbers(count: int | None, kind: type, increasing: bool = False) -> Callable[[str], tuple]:
    """Comma-separated finite numbers (``count`` of them, if given); ``increasing``: each below the next."""

    def parse(text: str) -> tuple:
        values = tuple(_number(part, kind) for part in text.split(","))
        if count is not None and len(values) != count:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers, not {len(values)}")
        if increasing and any(a >= b for a, b in zip(values, values[1:])):
            raise argparse.ArgumentTypeError(f"MIN must be less than MAX, not {text}")
        return values

    return parse


def bounds_value(text: str) -> tuple[float, float, float, float]:
    """``XMIN,YMIN,XMAX,YMAX``: four finite numbers with XMIN < XMAX and YMIN < YMAX."""
    xmin, ymin, xmax, ymax = numbers(4, float)(text)
    if not (xmin < xmax and ymin < ymax):
        raise argparse.ArgumentTypeError(f"must be XMIN,YMIN,XMAX,YMAX with XMIN < XMAX and YMIN < YMAX, not {text}")
    return xmin, ymin, xmax, ymax


def overlap_value(text: str) -> str:
    """Pixels (``32``) or a share of the tile (``10%``); its range is checked against the tile size later."""
    if not _OVERLAP.match(text):
        raise argparse.ArgumentTypeError(f"must be pixels (e.g. 32) or a percentage (e.g. 10%), not '{text}'")
    return text.strip()


def backend_url_value(text: str) -> str:
    """An http(s) URL with a host (see :func:`ccexpert_core.protocol.check_backend_url`)."""
    try:
        return protocol.check_backend_url(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def device_value(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether this machine has it is :func:`check_device`'s part)."""
    name = text.strip().lower()
    if not _DEVICE.match(name):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, not '{text}'")
    return name


def check_device(name: str) -> None:
    """Refuse a CUDA device this machine does not have, in words, before a model is built for it (imports torch)."""
    if not name.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise CCExpertError(
            f"--device {name}: no CUDA GPU is visible to this process (is the NVIDIA driver loaded and a CUDA build "
            "of torch installed?): use --device cpu or --device auto"
        )
    index = int(name.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise CCExpertError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0"
        )


def date_label_value(text: str) -> "DateLabel":
    """A date label: ``2016``, ``2016-05`` or ``2016-05-12``."""
    from ccexpert_core.geo.dates import DateLabel

    try:
        return DateLabel.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def raster_value(text: str) -> "RasterLocation":
    """A raster GDAL opens: a local path, an ``http(s)://``, ``s3://``, ``gs://`` or ``az://`` URL or a GDAL path
    (``/vsicurl/…``, ``/vsis3/…``), or a STAC item's JSON; a URL is never read as a local path."""
    from ccexpert_core.geo.sources import RasterLocation

    if not text.strip():
        raise argparse.ArgumentTypeError("must be a raster's path or URL, not empty")
    return RasterLocation.of(text)


def dated_path_value(text: str) -> "tuple[DateLabel | None, RasterLocation]":
    """``LABEL=RASTER``: a date label and the raster of that date (as :func:`raster_value` reads it); a STAC item
    may come without its label (``--date item.json``), which the item's date then gives."""
    from ccexpert_core.geo.dates import parse_date_argument

    try:
        label, raster = parse_date_argument(text)
    except ValueError as error:
        from ccexpert_core.geo.stac import is_item

        if is_item(raster_value(text)):
            return None, raster_value(text)
        raise argparse.ArgumentTypeError(str(error)) from None
    return label, raster_value(raster)
