"""Bearer-token auth: tokens come from a file, are compared in constant time, and never appear in a log.

Clients send ``Authorization: Bearer <token>`` (``gradio_client``: ``Client(url, headers={...})``). HTTP Basic auth
with the token as password works too, which is what a browser's login prompt sends for the UI.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from pathlib import Path

from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.errors import error_response
from ccexpert_core import protocol
from ccexpert_core.errors import CCExpertError


def read_tokens(path: str | Path) -> tuple[bytes, ...]:
    """The tokens of a token file: one per line, surrounding spaces stripped, blank and ``#`` lines ignored."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CCExpertError(f"cannot read the token file {path}: {error}") from None
    tokens = tuple(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))
    if any(not (token.isascii() and token.isprintable()) or " " in token for token in tokens):
        raise CCExpertError(
            f"the token file {path} holds a token with spaces or non-ASCII characters: tokens travel in an HTTP "
            "header, use letters, digits and punctuation only"
        )
    if not tokens:
        raise CCExpertError(f"the token file {path} holds no token (one per line; blank and # lines are ignored)")
    return tuple(token.encode("ascii") for token in tokens)


class TokenChecker:
    """Knows the accepted tokens; ``None`` tokens means auth is off (a loopback-only or explicitly insecure server)."""

    def __init__(self, tokens: tuple[bytes, ...] | None) -> None:
        self._tokens = tokens

    @property
    def enabled(self) -> bool:
        """Whether requests must carry a token."""
        return self._tokens is not None

    def _known(self, token: str) -> bool:
        # Every known token is compared (no early exit), so the time taken says nothing about which one matched.
        assert self._tokens is not None
        # Headers arrive latin-1 decoded (ASGI); re-encoding gives back the bytes the client sent.
        given = token.encode("latin-1", errors="replace")
        matches = [hmac.compare_digest(given, known) for known in self._tokens]
        return any(matches)

    def accepts_header(self, authorization: str | None) -> bool:
        """Check an ``Authorization`` header: ``Bearer <token>``, or ``Basic`` with the token as password.

        Always true when auth is off.
        """
        if self._tokens is None:
            return True
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() == protocol.AUTH_SCHEME.lower():
            return self._known(value.strip())
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("latin-1")
            except (binascii.Error, ValueError):
                return False
            return self._known(decoded.partition(":")[2])
        return False


#: Declares the bearer scheme in OpenAPI (the "Authorize" button at /docs); :class:`TokenGuard` does the checking.
bearer_scheme = HTTPBearer(auto_error=False, description="A token from the backend's --token-file")

#: Where the documentation pages' scripts and styles are served from (they ship with the backend: no CDN).
DOCS_ASSETS_PATH = "/docs/assets"
#: What stays open without a token: the health probe and the API's documentation.
OPEN_PATHS = frozenset({protocol.HEALTH_PATH, "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def is_open(path: str) -> bool:
    """Whether ``path`` is served without a token (:data:`OPEN_PATHS` and the documentation's assets)."""
    return path in OPEN_PATHS or path.startswith(DOCS_ASSETS_PATH + "/")


class TokenGuard:
    """Every path but :data:`OPEN_PATHS` wants a token, checked before any request body is read.

    Deny by default, so a route added later is protected without anyone remembering to. Under the UI's mount the
    401 offers Basic auth first, so a browser shows its login prompt (user name: anything, password: the token).
    """

    def __init__(self, app: ASGIApp, checker: TokenChecker) -> None:
        self.app = app
        self.checker = checker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or not self.checker.enabled or is_open(path):
            await self.app(scope, receive, send)
            return
        given = [value for name, value in scope.get("headers", []) if name == b"authorization"]
        authorization = given[0].decode("latin-1") if len(given) == 1 else ""
        # Two headers are refused rather than one picked: which one counts would depend on who reads them (this
        # server, a proxy in front of it).
        if len(given) <= 1 and self.checker.accepts_header(authorization):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
            return
        if len(given) > 1:
            detail = f"the request has {len(given)} {protocol.AUTH_HEADER} headers: send exactly one"
            response = error_response(400, protocol.ERROR_INVALID_REQUEST, detail)
            await response(scope, receive, send)
            return
        in_ui = path == protocol.UI_PATH or path.startswith(protocol.UI_PATH + "/")
        if in_ui:
            challenge = f'Basic realm="CCExpert", charset="UTF-8", {protocol.AUTH_SCHEME}'
            detail = "the UI needs a token: a Bearer header, or the token as password of the login prompt"
        else:
            challenge = protocol.AUTH_SCHEME
            detail = (
                "the token was not accepted"
                if authorization
                else f"this backend needs a token: send '{protocol.AUTH_HEADER}: {protocol.AUTH_SCHEME} <token>'"
            )
        response = error_response(401, protocol.ERROR_UNAUTHORIZED, detail, headers={"WWW-Authenticate": challenge})
        await response(scope, receive, send)
