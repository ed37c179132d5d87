"""Every error leaves the backend as JSON (:class:`ccexpert_core.protocol.ErrorBody`), never as a bare 500."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ccexpert_core import protocol

log = logging.getLogger("backend")

#: Error code of an HTTPException raised by FastAPI/Starlette themselves (routing, body parsing, body limit).
_CODE_OF_STATUS = {
    401: protocol.ERROR_UNAUTHORIZED,
    404: protocol.ERROR_NOT_FOUND,
    413: protocol.ERROR_TOO_LARGE,
    503: protocol.ERROR_BUSY,
}


class ApiError(Exception):
    """A problem with the request that the client can fix (4xx) or wait out (503)."""

    def __init__(
        self, status: int, code: str, detail: str, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.field, self.headers = status, code, detail, field, headers


def error_response(
    status: int, code: str, detail: str, field: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The JSON error body every failure uses."""
    body: protocol.ErrorBody = {"error": code, "detail": detail}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


def _field_name(location: tuple[object, ...]) -> str:
    # FastAPI locations look like ("body", "before", 0): the part after "body"/"query" names the form field.
    parts = [str(part) for part in location[1:]] or [str(part) for part in location]
    return ".".join(parts)


def install_error_handlers(app: FastAPI, on_internal_error: Callable[[], None]) -> None:
    """Map every exception class to its JSON response; ``on_internal_error`` counts the 500s (see /v1/info)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.code, error.detail, error.field, error.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = _CODE_OF_STATUS.get(error.status_code, protocol.ERROR_INVALID_REQUEST)
        return error_response(error.status_code, code, str(error.detail), headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {"loc": ("body",), "msg": "invalid request"}
        field = _field_name(tuple(first.get("loc", ("body",))))
        detail = "; ".join(f"{_field_name(tuple(p.get('loc', ())))}: {p.get('msg', 'invalid')}" for p in problems)
        return error_response(422, protocol.ERROR_INVALID_REQUEST, detail or "invalid request", field)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # Last resort only: the bad-input classes all have their own 4xx above, and tests check they never land here.
        on_internal_error()
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, protocol.ERROR_INTERNAL, "internal error in the backend; see its log")
