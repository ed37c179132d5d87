"""Pydantic models for OpenAPI, derived from the TypedDicts of :mod:`ccexpert_core.protocol` (the one definition).

The protocol stays standard-library only (clients and the QGIS plugin bundle it); here each TypedDict becomes a
pydantic model with the same fields, so /docs and response validation follow the protocol automatically.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Protocol, cast

from fastapi import FastAPI
from pydantic import BaseModel, create_model

from ccexpert_core import protocol


class _TypedDictClass(Protocol):
    """A TypedDict class's keys that must be present."""

    __required_keys__: frozenset[str]


def _translate(hint: Any) -> Any:
    # The generic aliases are built at run time (list[...] of a value): types.GenericAlias is what list[...] makes.
    if typing.is_typeddict(hint):
        return model_of(hint)
    if typing.get_origin(hint) is list:
        return types.GenericAlias(list, (_translate(typing.get_args(hint)[0]),))
    if typing.get_origin(hint) is dict:
        key, value = typing.get_args(hint)
        return types.GenericAlias(dict, (key, _translate(value)))
    return hint


def model_of(typed_dict: type) -> type[BaseModel]:
    """A pydantic model with the TypedDict's fields; keys that are not required become optional."""
    # Only TypedDict classes come here (typing.is_typeddict), which a plain ``type`` does not say.
    required = cast(_TypedDictClass, typed_dict).__required_keys__
    fields: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(typed_dict).items():
        hint = _translate(hint)
        fields[name] = (hint, ...) if name in required else (hint | None, None)
    return create_model(typed_dict.__name__, __doc__=typed_dict.__doc__, **fields)


Health = model_of(protocol.HealthBody)
Info = model_of(protocol.InfoBody)
Captions = model_of(protocol.CaptionsBody)
Series = model_of(protocol.SeriesBody)
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

#: The encoded formats the captions route decodes (a multipart part's declared content type is not checked).
IMAGE_MEDIA_TYPES = "image/png, image/jpeg, image/tiff"


def document_limits(app: FastAPI, limits: protocol.Limits) -> None:
    """Write this backend's limits into the captions operation of its OpenAPI schema.

    FastAPI derives the schema from the route's signature, which cannot know the limits a backend was started with:
    pairs per request, no empty file (and, in words, bytes per image). Declared, they make every schema-valid request
    one the backend accepts, but for what a schema cannot say: that both lists have the same length (and
    ``tile_ids`` too), and that each file really is an image within its byte and pixel limits.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        series = _document_images(schema, protocol.SERIES_PATH, (protocol.FIELD_IMAGE,),
                                   limits.max_images_per_request, limits)
        series["properties"][protocol.FIELD_DATES]["maximum"] = limits.max_dates_per_tile
        schema["paths"][protocol.SERIES_PATH]["post"]["description"] += _series_limits_text(limits)
        operation = schema["paths"][protocol.CAPTIONS_PATH]["post"]
        content = operation["requestBody"]["content"]["multipart/form-data"]
        body = schema["components"]["schemas"][content["schema"]["$ref"].rsplit("/", 1)[1]]
        for name in (protocol.FIELD_BEFORE, protocol.FIELD_AFTER):
            images = body["properties"][name]
            images["maxItems"] = limits.max_pairs_per_request
            # The byte limit is said in words, not as maxLength: schemathesis (4.32) cannot negate a binary's
            # maxLength (it sends a small sample file instead) and would report the backend's 200 as a failure.
            images["items"].update(
                format="binary",
                minLength=1,
                description=f"a PNG, JPEG or TIFF file of 1 to {limits.max_image_bytes} bytes",
            )
        # A form has no null: the field is either absent or repeated strings. Said so (rather than FastAPI's
        # "array or null"), a value of another type is one that a form turns into strings, which tools recognise.
        tile_ids = body["properties"][protocol.FIELD_TILE_IDS]
        array = next(choice for choice in tile_ids.pop("anyOf", [tile_ids]) if choice.get("type") == "array")
        tile_ids.update(array, maxItems=limits.max_pairs_per_request)
        content["encoding"] = {
            protocol.FIELD_BEFORE: {"contentType": IMAGE_MEDIA_TYPES},
            protocol.FIELD_AFTER: {"contentType": IMAGE_MEDIA_TYPES},
        }
        operation["description"] = operation.get("description", "") + _limits_text(limits)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_images(
    schema: dict[str, Any], path: str, fields: tuple[str, ...], most: int, limits: protocol.Limits
) -> dict[str, Any]:
    """Declare the image fields of ``path``'s multipart body: at most ``most`` non-empty binary files each, and the
    optional ``tile_ids`` as repeated strings; returns the body's schema."""
    operation = schema["paths"][path]["post"]
    content = operation["requestBody"]["content"]["multipart/form-data"]
    body = schema["components"]["schemas"][content["schema"]["$ref"].rsplit("/", 1)[1]]
    for name in fields:
        images = body["properties"][name]
        images["maxItems"] = most
        images["items"].update(format="binary", minLength=1,
                               description=f"a PNG, JPEG or TIFF file of 1 to {limits.max_image_bytes} bytes")
    tile_ids = body["properties"][protocol.FIELD_TILE_IDS]
    array = next(choice for choice in tile_ids.pop("anyOf", [tile_ids]) if choice.get("type") == "array")
    tile_ids.update(array, maxItems=most)
    content["encoding"] = {name: {"contentType": IMAGE_MEDIA_TYPES} for name in fields}
    return body


def _series_limits_text(limits: protocol.Limits) -> str:
    return f"""

**Limits of this backend.** At most {limits.max_images_per_request} images and {limits.max_dates_per_tile} dates per
tile; `intervals` names each interval of a tile's dates at most once (results come in the order named), and tiles ×
intervals is at most {limits.max_pairs_per_request} pairs. Over a count: 422 `too_many_pairs`, before any image is
read. Images, timeouts and the queue as for `POST /v1/captions`."""


def _limits_text(limits: protocol.Limits) -> str:
    return f"""

**Limits of this backend.** At most {limits.max_pairs_per_request} pairs per request; `before`, `after` and
`tile_ids` (if given) have the same length. Each image: a PNG, JPEG or TIFF file of 1 to {limits.max_image_bytes}
bytes and at most {limits.max_image_pixels} pixels (width × height, read from its header before decoding). A
multi-page TIFF counts as its first page (GeoTIFF overviews and masks are ignored); its byte limit counts the whole
file. Over a limit: 413 `too_large` (a body announced or streaming over the limit is refused before it is read);
a bad image or mismatched counts: 422. A result takes at most {limits.request_timeout_s:g} s, else 503 `timeout`;
pairs that could not be done in time are not computed. A full queue: 503 `busy`."""
