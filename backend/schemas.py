"""Pydantic models for OpenAPI, derived from the TypedDicts of :mod:`ccexpert_core.protocol` (the one definition).

The protocol stays standard-library only (clients and the QGIS plugin bundle it); here each TypedDict becomes a
pydantic model with the same fields, so /docs and response validation follow the protocol automatically.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, create_model

from ccexpert_core import protocol


def _translate(hint: Any) -> Any:
    if typing.is_typeddict(hint):
        return model_of(hint)
    if typing.get_origin(hint) is list:
        return list[_translate(typing.get_args(hint)[0])]
    return hint


def model_of(typed_dict: type) -> type[BaseModel]:
    """A pydantic model with the TypedDict's fields; keys that are not required become optional."""
    fields: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(typed_dict).items():
        hint = _translate(hint)
        fields[name] = (hint, ...) if name in typed_dict.__required_keys__ else (hint | None, None)
    return create_model(typed_dict.__name__, __doc__=typed_dict.__doc__, **fields)


Health = model_of(protocol.HealthBody)
Info = model_of(protocol.InfoBody)
Captions = model_of(protocol.CaptionsBody)
Error = model_of(protocol.ErrorBody)

#: The error responses a protected route documents (FastAPI's ``responses=``).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Error, "description": description}
    for status, description in {
        400: "The request could not be parsed",
        401: "No token, or a token the backend does not accept",
        413: "An image or the whole request is over a size limit",
        422: "A field is missing, an image is unreadable, or the counts do not match",
        503: "The backend is busy or the request timed out; retry later",
    }.items()
}
