"""``ccexpert serve``: run the backend (REST API v1, dynamic batching, token auth, limits, Gradio UI) with uvicorn."""

from __future__ import annotations

import argparse

from ccexpert_cli.commands.model import add_model_arguments
from ccexpert_core import protocol
from ccexpert_core.errors import CCExpertError
from ccexpert_core.options import float_in, int_in

_LIMITS = protocol.Limits()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP for the QGIS plugin, scripts and a web UI",
        description=(
            "Serve one model over HTTP: API v1 under /v1 (OpenAPI docs at /docs), a web UI at /ui/. "
            "Concurrent requests are batched together. Without --token-file the backend listens on loopback only."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=protocol.DEFAULT_PORT, help="port (default: %(default)s)")
    parser.add_argument("--token-file", help="file of accepted bearer tokens, one per line (# comments allowed)")
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow listening on a non-loopback address without tokens (only on a network you trust)",
    )
    parser.add_argument("--max-batch", type=int, default=protocol.DEFAULT_MAX_BATCH, help="pairs per model batch")
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=protocol.DEFAULT_MAX_WAIT_MS,
        help="how long a pair may wait for others to fill its batch (default: %(default)s)",
    )
    parser.add_argument("--max-pairs", type=int, default=_LIMITS.max_pairs_per_request, help="pairs per request")
    parser.add_argument("--max-image-bytes", type=int, default=_LIMITS.max_image_bytes, help="bytes per image")
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=_LIMITS.max_image_pixels,
        help="decoded pixels (width × height) per image",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=_LIMITS.request_timeout_s,
        help="seconds a request may wait for results",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        help="open connections at most (default: 2048, or half the free open-file limit if that is less)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=protocol.DEFAULT_HEADER_TIMEOUT_S,
        help="seconds a client may take to send a request's headers (default: %(default)s)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=protocol.DEFAULT_BODY_TIMEOUT_S,
        help="seconds a request body may stop arriving before the connection is closed (default: %(default)s)",
    )
    parser.add_argument("--no-ui", action="store_true", help="serve the API only, without the Gradio UI")
    parser.add_argument(
        "--ray", metavar="ADDRESS",
        help="serve as replicas on a Ray cluster (Ray Serve, one URL on the head node): 'local' starts Ray on this "
             "machine, else the head's HOST:PORT or ray://HOST:PORT; --model must be readable from every node. "
             "Ray Serve's proxy then holds the connections (--max-connections, --header-timeout and --body-timeout "
             "do not apply)",
    )
    parser.add_argument(
        "--replicas", type=int_in(1, 1024), metavar="N",
        help="with --ray: copies of the backend, one model each (default: one per GPU, or one on the CPU); the UI "
             "has one more of its own",
    )
    parser.add_argument(
        "--ray-gpus-per-replica", type=float_in(0, 1), metavar="F",
        help="with --ray: GPUs each replica reserves, 0.5 for two small models a GPU, 0 for CPUs (default: 1)",
    )
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(handler=run)


def _check_positive(args: argparse.Namespace) -> None:
    for name in (
        "max_batch", "max_pairs", "max_image_bytes", "max_image_pixels", "request_timeout", "header_timeout",
        "body_timeout",
    ):
        if getattr(args, name) <= 0:
            raise CCExpertError(f"--{name.replace('_', '-')} must be positive, not {getattr(args, name)}")
    if args.max_connections is not None and args.max_connections <= 0:
        raise CCExpertError(f"--max-connections must be positive, not {args.max_connections}")
    if args.max_wait_ms < 0:
        raise CCExpertError(f"--max-wait-ms must be 0 or more, not {args.max_wait_ms}")
    _check_ray_options(args)


def _check_ray_options(args: argparse.Namespace) -> None:
    if args.ray is None:
        given = [name for name in ("replicas", "ray_gpus_per_replica") if getattr(args, name) is not None]
        if given:
            raise CCExpertError(f"--{given[0].replace('_', '-')} goes with --ray")
        return
    if args.device != "auto":
        raise CCExpertError("--device goes without --ray: Ray gives each replica its GPU (see --ray-gpus-per-replica)")
    if args.max_connections is not None:
        raise CCExpertError("--max-connections goes without --ray: Ray Serve's proxy holds the connections")


def run(args: argparse.Namespace) -> int:
    """Check the options and serve until interrupted (:func:`backend.server.serve`)."""
    _check_positive(args)
    from backend.server import ServeOptions, ServerSettings, serve

    limits = protocol.Limits(
        max_pairs_per_request=args.max_pairs,
        max_images_per_request=2 * args.max_pairs,
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
        request_timeout_s=args.request_timeout,
        # The queue must hold at least a couple of full requests, or big requests would always be refused.
        max_queued_pairs=max(_LIMITS.max_queued_pairs, 2 * args.max_pairs),
    )
    settings = ServerSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, limits=limits, ui=not args.no_ui)
    return serve(ServeOptions(
        model=args.model, device=args.device, dtype=args.dtype, host=args.host, port=args.port,
        token_file=args.token_file, insecure_no_auth=args.insecure_no_auth, settings=settings,
        max_connections=args.max_connections, header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
        log_level=args.log_level, ray=args.ray, replicas=args.replicas, gpus_per_replica=args.ray_gpus_per_replica,
    ))
