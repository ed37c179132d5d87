"""Reading the files users hand us (JSON, JSON Lines, YAML), with errors that name the file and the place.

Shared by :mod:`ccexpert_core.data` and :mod:`ccexpert_core.evaluation`.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypeVar, overload

from ccexpert_core.errors import CCExpertError

T = TypeVar("T")
U = TypeVar("U")


def read_text(path: Path) -> str:
    """The file's UTF-8 text; a missing or unreadable file is a :class:`CCExpertError` naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CCExpertError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CCExpertError(f"{path}: is a folder, expected a file") from None
    except UnicodeDecodeError:
        raise CCExpertError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise CCExpertError(f"{path}: cannot read ({error.strerror})") from None


def read_json(path: Path) -> Any:
    """The parsed JSON document; malformed JSON is a :class:`CCExpertError` with line and column."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}"
        raise CCExpertError(f"{path}: not valid JSON ({where}: {error.msg})") from None


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """``(line number, parsed object)`` for every non-blank line of a JSON Lines file."""
    records = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            raise CCExpertError(f"{path}: line {number} is not valid JSON ({error.msg})") from None
    return records


def read_yaml(path: Path) -> Any:
    """The parsed YAML document; malformed YAML is a :class:`CCExpertError` naming the file."""
    import yaml  # only mixtures need it

    try:
        return yaml.safe_load(read_text(path))
    except yaml.YAMLError as error:
        raise CCExpertError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None


def some(items: Collection[str], limit: int = 3) -> str:
    """A few of ``items`` for an error message, e.g. ``"a, b, c and 12 more"`` (sorted, so messages are stable)."""
    shown = sorted(items)[:limit]
    rest = len(items) - len(shown)
    return ", ".join(shown) + (f" and {rest} more" if rest else "")


_JSON_NAMES = {
    dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number", bool: "true/false"
}


def json_type(value: object) -> str:
    """How JSON calls the type of ``value`` (for messages)."""
    return "null" if value is None else _JSON_NAMES.get(type(value), type(value).__name__)


@overload
def require_field(record: object, name: str, kinds: type[T], where: str) -> T: ...
@overload
def require_field(record: object, name: str, kinds: tuple[type[T], type[U]], where: str) -> T | U: ...
def require_field(record: object, name: str, kinds: type | tuple[type, ...], where: str) -> object:
    """``record[name]`` checked to be one of ``kinds``; otherwise a :class:`CCExpertError` starting with ``where``."""
    if not isinstance(record, dict):
        raise CCExpertError(f"{where}: expected a JSON object, got {json_type(record)}")
    if name not in record:
        raise CCExpertError(f"{where}: '{name}' is missing")
    value = record[name]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    # JSON true/false are Python ints too: an id or a count must not accept them.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(_JSON_NAMES[kind] for kind in kinds)
        raise CCExpertError(f"{where}: '{name}' should be {expected}, got {json_type(value)}")
    return value


def require_captions(value: object, where: str) -> tuple[str, ...]:
    """A non-empty list of non-empty strings, as a tuple; otherwise a :class:`CCExpertError` starting with ``where``."""
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c.strip() for c in value):
        raise CCExpertError(f"{where}: expected a non-empty list of non-empty caption strings")
    return tuple(value)
