"""Helpers for the backend and client tests: real ``ccexpert serve`` processes on 127.0.0.1, test images.

A server is started once per test session (whichever test file asks first) and stopped when the session ends.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ccexpert_core import protocol

from serve_process import ServeProcess as Server
from serve_process import start_serve

TOKEN = "test-token-1"
OTHER_TOKEN = "second-token"
#: Small limits so every limit can be crossed with small test files.
TEST_LIMITS = protocol.Limits(max_pairs_per_request=8, max_images_per_request=16, max_image_bytes=300_000,
                              max_image_pixels=1_000_000)
START_TIMEOUT_S = 240.0


def serve_command(*args: str) -> list[str]:
    """``ccexpert serve ARGS`` from this test run's virtual environment."""
    return [str(Path(sys.executable).with_name("ccexpert")), "serve", *args]


def start_server(args: list[str], log: Path, **options: Any) -> Server:
    """Start ``ccexpert serve ARGS`` on a free 127.0.0.1 port and wait until /v1/health answers.

    ``options``: ``env`` and ``preexec_fn`` of :func:`serve_process.start_serve`.
    """
    return start_serve(Path(sys.executable).with_name("ccexpert"), args, log, START_TIMEOUT_S, **options)


_SERVERS: dict[str, Server] = {}


def shared_server(request: pytest.FixtureRequest, name: str, args: list[str]) -> Server:
    """The session's server called ``name`` (started on first use, stopped at the end of the session)."""
    if name not in _SERVERS:
        folder = request.getfixturevalue("tmp_path_factory").mktemp(f"server-{name}")
        server = start_server(args, folder / "server.log")
        request.config.add_cleanup(server.stop)
        _SERVERS[name] = server
    return _SERVERS[name]


def auth_server(request: pytest.FixtureRequest, model_dir: Path) -> Server:
    """A server with a token file (two tokens, a comment, a blank line), small limits and the UI."""
    folder = request.getfixturevalue("tmp_path_factory").mktemp("tokens")
    token_file = folder / "tokens.txt"
    token_file.write_text(f"# CCExpert test tokens\n\n{TOKEN}\n  {OTHER_TOKEN}  \n", encoding="utf-8")
    options = {
        "--model": model_dir,
        "--token-file": token_file,
        "--max-pairs": TEST_LIMITS.max_pairs_per_request,
        "--max-image-bytes": TEST_LIMITS.max_image_bytes,
        "--max-image-pixels": TEST_LIMITS.max_image_pixels,
        "--max-batch": 16,
        # A generous wait, so the concurrency test's requests surely meet in batches.
        "--max-wait-ms": 200,
    }
    return shared_server(request, "auth", [str(part) for option in options.items() for part in option])


def open_server(request: pytest.FixtureRequest, model_dir: Path) -> Server:
    """A loopback server without auth and without the UI (default limits)."""
    return shared_server(request, "open", ["--model", str(model_dir), "--no-ui"])


def random_image(seed: int, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """A reproducible H×W×3 uint8 noise image."""
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def encode(array: np.ndarray, format: str = "PNG", **options: object) -> bytes:
    """An array as image file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **options)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header declares ``width`` × ``height`` (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def multipart(pairs: list[tuple[bytes, bytes]], tile_ids: list[str] | None = None) -> dict[str, object]:
    """``requests`` keyword arguments for a captions request."""
    files = []
    for index, (before, after) in enumerate(pairs):
        files.append((protocol.FIELD_BEFORE, (f"b{index}.png", before, "image/png")))
        files.append((protocol.FIELD_AFTER, (f"a{index}.png", after, "image/png")))
    return {"files": files, "data": {protocol.FIELD_TILE_IDS: tile_ids} if tile_ids is not None else None}


def bearer(token: str) -> dict[str, str]:
    """The auth header for ``token``."""
    return {protocol.AUTH_HEADER: f"{protocol.AUTH_SCHEME} {token}"}
