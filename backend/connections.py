"""Connections under abuse: deadlines on a request's headers and body, a cap on open connections, a quiet log.

uvicorn 0.54 arms its keep-alive timer only after a response, and checks ``limit_concurrency`` once a request's
headers are complete, so a client that connects and never finishes its request line holds a file descriptor for
ever. A thousand of them exhaust the usual open-file limit (1,024); then asyncio's accept loop logs a traceback per
failed ``accept()`` (hundreds of thousands a minute) and no one else gets in. :func:`serve` runs uvicorn with:

- a protocol (uvicorn's own, with :class:`GuardedProtocol` mixed in) that closes a connection whose request headers
  do not arrive within ``header_timeout_s`` (408 if it sent part of them), or whose body stops arriving for
  ``body_timeout_s``;
- a cap on open connections below the open-file limit: at the cap, a new connection pushes out the one that has
  waited longest for its next request (half-open or idle keep-alive), else it is answered 503 and closed;
- the soft open-file limit raised to the hard limit at start, where the system allows;
- accept errors and closed connections logged as one line per few seconds with a count, never one per event.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import resource
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from ccexpert_core import protocol

log = logging.getLogger("backend.connections")

#: More connections than a model server needs, and few enough that half-open ones cannot eat its memory.
DEFAULT_MAX_CONNECTIONS = 2048
#: A repeated event (a failed accept, a connection closed for a timeout) is logged at most this often, with a count.
LOG_INTERVAL_S = 10.0
_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections may be open at once, and how long a client may take to send a request."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: From the connection (or the previous response) to the end of the request's headers, slow senders included.
    header_timeout_s: float = protocol.DEFAULT_HEADER_TIMEOUT_S
    #: Silence allowed while a request body is coming in (a deadline on silence: big uploads on slow links pass).
    body_timeout_s: float = protocol.DEFAULT_BODY_TIMEOUT_S


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit where the system allows it; the soft limit afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # e.g. a container whose kernel caps the count lower than its hard limit
            pass
    return soft


def open_descriptors() -> int:
    """How many file descriptors this process has open now."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return 64  # a process with a loaded model and its log, where the system does not list them


def connection_cap(open_file_limit: int, requested: int | None = None) -> int:
    """The connection cap for this process: ``requested`` (default :data:`DEFAULT_MAX_CONNECTIONS`), at most half
    of the descriptors still free, since requests open files too (uploads spooled to disk, model files, logs)."""
    allowed = max(8, (open_file_limit - open_descriptors()) // 2)
    wanted = DEFAULT_MAX_CONNECTIONS if requested is None else requested
    if wanted > allowed and requested is not None:
        log.warning(
            "--max-connections %d is more than the open-file limit (%d) leaves room for: using %d",
            wanted,
            open_file_limit,
            allowed,
        )
    return min(wanted, allowed)


def raw_error(status: int, code: str, detail: str, extra_headers: str = "") -> bytes:
    """A complete HTTP/1.1 error response with the API's JSON body, for answers written below the ASGI app."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    reason = {400: "Bad Request", 408: "Request Timeout", 503: "Service Unavailable"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\n{extra_headers}\r\n"
    )
    return head.encode("ascii") + body


class _Tally:
    """Counts an event: the first is logged at once, the rest as one line per interval with their count."""

    def __init__(self, message: str) -> None:
        self.message = message
        self._count = 0
        self._flush: asyncio.TimerHandle | None = None

    def add(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count one event (called on the event loop)."""
        if self._flush is None:
            log.warning("%s: 1", self.message)
            self._flush = loop.call_later(LOG_INTERVAL_S, self._log, loop)
        else:
            self._count += 1

    def _log(self, loop: asyncio.AbstractEventLoop) -> None:
        count, self._count = self._count, 0
        # A quiet interval ends the window; under a steady stream one line per interval sums it up.
        self._flush = loop.call_later(LOG_INTERVAL_S, self._log, loop) if count else None
        if count:
            log.warning("%s: %d more in the last %g s", self.message, count, LOG_INTERVAL_S)


class ConnectionGuard:
    """The shared state of one server's connections: those waiting for a request, oldest first, and the tallies."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._waiting: dict[GuardedProtocol, None] = {}  # insertion order: the oldest waiter comes first
        cap = limits.max_connections
        self.header_timeouts = _Tally("connections closed because their request headers did not arrive in time")
        self.body_timeouts = _Tally("connections closed because their request body stopped arriving")
        self.evictions = _Tally(f"idle connections closed to make room (at the cap of {cap} open connections)")
        self.refusals = _Tally(f"connections refused with 503: all {cap} open connections are busy with requests")
        self.accept_errors = _Tally("connections that could not be accepted (out of file descriptors or memory)")

    def waiting(self, connection: GuardedProtocol) -> None:
        """``connection`` now waits for a request (it moves to the back of the line)."""
        self._waiting.pop(connection, None)
        self._waiting[connection] = None

    def forget(self, connection: GuardedProtocol) -> None:
        """``connection`` is in a request, or gone."""
        self._waiting.pop(connection, None)

    def admit(self, connection: GuardedProtocol, open_connections: int) -> None:
        """Keep the open connections at the cap: push out the longest waiter, or refuse the newcomer."""
        if open_connections <= self.limits.max_connections:
            return
        victim = next((other for other in self._waiting if other is not connection), None)
        if victim is not None:
            self.forget(victim)
            victim.transport.close()
            self.evictions.add(connection.loop)
            return
        self.forget(connection)
        connection.transport.write(
            raw_error(
                503, protocol.ERROR_BUSY, "the backend has too many open connections; retry later", "retry-after: 1\r\n"
            )
        )
        connection.transport.close()
        self.refusals.add(connection.loop)


class GuardedProtocol:
    """Mixed in before uvicorn's HTTP protocol (httptools or h11): deadlines per connection, the cap at connect.

    Uses what both of uvicorn's implementations share: ``transport``, ``loop``, ``flow``, ``connections``, ``cycle``
    (``response_complete``, ``more_body``) and the ``on_response_complete`` callback.
    """

    guard: ClassVar[ConnectionGuard]
    _deadline: asyncio.TimerHandle | None = None
    _partial = False  # bytes of the next request arrived, its headers not yet complete

    # Attributes of uvicorn's protocols, declared for the type checker.
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    flow: Any
    cycle: Any
    connections: set[Any]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._wait_for_request()
        self.guard.admit(self, len(self.connections))

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.guard.forget(self)
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self._partial = True  # still before the end of the next request's headers: that deadline stands
            return
        self.guard.forget(self)
        if cycle.more_body:
            self._arm(self.guard.limits.body_timeout_s, self._body_timed_out)  # re-armed by every chunk
        else:
            self._disarm()  # the whole request is in: the app's own request timeout applies from here

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return  # closing, or a pipelined request has started
        self._wait_for_request()

    def handle_websocket_upgrade(self, *args: Any) -> None:
        # The connection becomes a WebSocket protocol's, with its own ping timeouts: no deadline of ours applies.
        self._disarm()
        self.guard.forget(self)
        super().handle_websocket_upgrade(*args)  # type: ignore[misc]

    def send_400_response(self, msg: str) -> None:
        # uvicorn's own answer to bytes that are not HTTP is plain text; every error of the API is JSON.
        self.transport.write(
            raw_error(400, protocol.ERROR_INVALID_REQUEST, f"{msg} Send a well-formed HTTP/1.1 request.")
        )
        self.transport.close()

    def _wait_for_request(self) -> None:
        self._partial = False
        self._arm(self.guard.limits.header_timeout_s, self._header_timed_out)
        self.guard.waiting(self)

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _header_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._partial:  # a slow or stuck client gets told; an idle keep-alive connection is simply closed
            limit = self.guard.limits.header_timeout_s
            self.transport.write(
                raw_error(408, protocol.ERROR_TIMEOUT, f"the request headers did not arrive within {limit:g} s")
            )
            self.guard.header_timeouts.add(self.loop)
        self.guard.forget(self)
        self.transport.close()

    def _body_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # the app has not taken what arrived yet: the client is not the one stalling
            self._arm(self.guard.limits.body_timeout_s, self._body_timed_out)
            return
        limit = self.guard.limits.body_timeout_s
        self.transport.write(
            raw_error(408, protocol.ERROR_TIMEOUT, f"the request body stopped arriving for {limit:g} s")
        )
        self.guard.body_timeouts.add(self.loop)
        self.transport.close()


def guarded_protocol_class(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools where installed, else h11) with :class:`GuardedProtocol` mixed in."""
    return type("GuardedHTTPProtocol", (GuardedProtocol, AutoHTTPProtocol), {"guard": ConnectionGuard(limits)})


class _AcceptErrors:
    """A loop exception handler: accept failures (no descriptors, no memory) are tallied, the rest goes on."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, OSError) and error.errno in _ACCEPT_ERRNOS:
            self.guard.accept_errors.add(loop)
            return
        loop.default_exception_handler(context)


class _GuardedServer(uvicorn.Server):
    """uvicorn's server with :class:`_AcceptErrors` on its event loop."""

    def __init__(self, config: uvicorn.Config, guard: ConnectionGuard) -> None:
        super().__init__(config)
        self._guard = guard

    async def startup(self, sockets: Any = None) -> None:
        asyncio.get_running_loop().set_exception_handler(_AcceptErrors(self._guard))
        await super().startup(sockets=sockets)


def serve(app: ASGIApp, host: str, port: int, log_level: str, limits: ConnectionLimits) -> None:
    """Run ``app`` with uvicorn on ``host:port`` until interrupted, with the guards of this module."""
    http = guarded_protocol_class(limits)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=http,
        # The standard event loop on every install (uvloop is optional and fails differently at the file limit),
        # and a backlog well below the cap: asyncio accepts up to `backlog` connections per wake-up before any of
        # them reaches the cap check, so this bounds how far past the cap descriptors can go.
        loop="asyncio",
        backlog=max(16, min(2048, limits.max_connections // 4)),
    )
    _GuardedServer(config, http.guard).run()  # type: ignore[attr-defined]
