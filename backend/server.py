"""Starting a backend: :func:`serve` is the one way in, for ``ccexpert serve`` and for code that embeds a backend.

It reads the tokens, refuses to listen beyond this machine without them, loads the model (or starts replicas on a
Ray cluster), builds the app and serves it with the connection guard until interrupted.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from backend.state import ServerSettings
from ccexpert_core import protocol
from ccexpert_core.errors import CCExpertError


@dataclass(frozen=True)
class ServeOptions:
    """Everything about one backend: the model, where it listens, who may call it, and how it batches and guards.

    ``settings.tokens`` is filled from ``token_file``; ``ray`` (``local`` or a head's address) serves replicas of the
    same app on a Ray cluster instead of one process (``replicas``, ``gpus_per_replica``; the connection options then
    belong to Ray Serve's proxy).
    """

    model: str | None = None
    device: str = "auto"
    dtype: str | None = None
    host: str = "127.0.0.1"
    port: int = protocol.DEFAULT_PORT
    token_file: Path | None = None
    insecure_no_auth: bool = False
    settings: ServerSettings = field(default_factory=ServerSettings)
    max_connections: int | None = None
    header_timeout_s: float = protocol.DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = protocol.DEFAULT_BODY_TIMEOUT_S
    log_level: str = "info"
    ray: str | None = None
    replicas: int | None = None
    gpus_per_replica: float | None = None


def check_bind(host: str, has_tokens: bool, insecure_no_auth: bool) -> None:
    """Refuse to expose an unauthenticated backend beyond this machine unless the operator insists."""
    if not has_tokens and not insecure_no_auth and not protocol.is_loopback(host):
        raise CCExpertError(
            f"refusing to listen on {host} without authentication: give --token-file FILE (one token per line), "
            "listen on 127.0.0.1, or pass --insecure-no-auth on a network you trust"
        )


def serve(options: ServeOptions) -> int:
    """Serve until interrupted; :class:`~ccexpert_core.errors.CCExpertError` for options that cannot work."""
    from backend.memory import limit_malloc_arenas

    limit_malloc_arenas()  # before any thread starts: the model's, the decoders', the server's
    from backend.auth import read_tokens

    tokens = read_tokens(options.token_file) if options.token_file else None
    check_bind(options.host, tokens is not None, options.insecure_no_auth)
    settings = replace(options.settings, tokens=tokens)
    host = options.host.strip("[]")
    auth = f"tokens from {options.token_file}" if tokens else "none"
    if options.ray is not None:
        from ccexpert_core.ray_cluster import prepare_ray

        prepare_ray()  # before ray is imported
        from backend.ray_serve import serve_on_ray
        from ccexpert_core.defaults import default_model, print_model_note

        model = options.model or default_model()
        print_model_note(model)
        return serve_on_ray(options.ray, model, options.dtype, settings, host, options.port, options.replicas,
                            options.gpus_per_replica, auth)
    return _serve_here(options, settings, host, auth)


def _serve_here(options: ServeOptions, settings: ServerSettings, host: str, auth: str) -> int:
    from backend.app import create_app
    from backend.connections import ConnectionLimits, connection_cap, raise_open_file_limit
    from backend.connections import serve as serve_app
    from backend.limits import guard_pillow
    from ccexpert_core.defaults import load_captioner

    captioner = load_captioner(options.model, options.device, options.dtype)
    guard_pillow(settings.limits)
    app = create_app(captioner, settings)
    # Counted once the model and the app are loaded: what they hold open is not free for connections.
    open_files = raise_open_file_limit()
    connections = ConnectionLimits(
        max_connections=connection_cap(open_files, options.max_connections),
        header_timeout_s=options.header_timeout_s,
        body_timeout_s=options.body_timeout_s,
    )
    shown = f"[{host}]" if ":" in host else host
    print(
        f"CCExpert backend: http://{shown}:{options.port}  (API {protocol.API_PREFIX}, docs /docs"
        f"{', UI ' + protocol.UI_PATH + '/' if settings.ui else ''}; auth: {auth}; model {captioner.model_id} "
        f"on {captioner.device}; at most {connections.max_connections} connections, open-file limit {open_files})",
        file=sys.stderr,
    )
    serve_app(app, host=host, port=options.port, log_level=options.log_level, limits=connections)
    return 0


__all__ = ["ServeOptions", "ServerSettings", "check_bind", "serve"]
