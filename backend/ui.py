"""The Gradio UI at ``/ui``: two images in, caption, change flag and confidence out.

The same function is an API endpoint for ``gradio_client``::

    Client(url + "/ui/", headers={"Authorization": "Bearer T"}).predict(
        handle_file("before.png"), handle_file("after.png"), api_name="/caption")

It captions through the same decoding, limits and batcher as ``POST /v1/captions``.

Gradio stores every upload on disk before a function sees it. Here those files go to a folder of this process's
own, :data:`UPLOAD_FOLDER` (removed when the server stops); they expire after :data:`UPLOAD_MAX_AGE_S`; an upload
request holds at most two files within the image limit, and the folder at most :data:`UPLOAD_MAX_FILES` files and
:data:`UPLOAD_BYTES_PER_IMAGE_LIMIT` times the image limit in bytes (past that, uploads get 503 until files expire).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.captioning import caption_uploads
from backend.errors import ApiError, error_response
from backend.limits import PART_HEADER_BYTES, BodyRule
from backend.state import BackendState
from ccexpert_core import protocol

# Gradio would report usage to its makers on start; a backend on a closed network must not try to call out.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
#: Where Gradio puts every upload (and its other files): a folder of this process's own, set before Gradio is
#: imported, since some of its modules read GRADIO_TEMP_DIR at import. Removed when the app stops (see
#: :func:`mount_ui`), or at exit if it never started.
UPLOAD_FOLDER = Path(tempfile.mkdtemp(prefix="ccexpert-ui-"))
os.environ["GRADIO_TEMP_DIR"] = str(UPLOAD_FOLDER)
atexit.register(shutil.rmtree, UPLOAD_FOLDER, ignore_errors=True)
import gradio as gr  # noqa: E402  (after the environment settings above)

#: Gradio's upload route under the mount point: every file the UI receives arrives there first.
UPLOAD_PATH = protocol.UI_PATH + "/gradio_api/upload"
#: Files per upload request (the UI uploads each image on its own; a pair at most).
UPLOAD_MAX_FILES_PER_REQUEST = 2
#: Files the upload folder may hold at once, and its bytes as a multiple of the image limit.
UPLOAD_MAX_FILES = 64
UPLOAD_BYTES_PER_IMAGE_LIMIT = 16
#: Seconds an upload is kept (long enough to caption a pair a few times, short enough not to keep imagery).
UPLOAD_MAX_AGE_S = 600


def ui_body_rule(max_image_bytes: int) -> BodyRule:
    """What one request to the UI may hold: two images and their form framing."""
    return BodyRule(
        max_bytes=UPLOAD_MAX_FILES_PER_REQUEST * (max_image_bytes + PART_HEADER_BYTES) + PART_HEADER_BYTES,
        max_file_bytes=max_image_bytes,
        max_parts=UPLOAD_MAX_FILES_PER_REQUEST,
    )


def build_ui(state: BackendState) -> gr.Blocks:
    """The Blocks app; its ``/caption`` endpoint returns (caption, change_detected, confidence)."""

    async def caption(before: str | None, after: str | None) -> tuple[str, bool, float]:
        if not before or not after:
            raise gr.Error("Upload both images: the one before and the one after.")
        try:
            [result] = await caption_uploads(state, [(Path(before).read_bytes, Path(after).read_bytes)])
        except FileNotFoundError:
            raise gr.Error(
                f"The images have expired on the server (kept {UPLOAD_MAX_AGE_S // 60} min): upload them again."
            ) from None
        except ApiError as error:
            raise gr.Error(error.detail) from None
        return result.caption, result.change_detected, result.confidence

    note = f"  \n**Note:** {state.model.note}." if state.model.note else ""
    with gr.Blocks(title="CCExpert", delete_cache=(60, UPLOAD_MAX_AGE_S)) as ui:
        gr.Markdown(f"## CCExpert: what changed?\nModel: {state.model.name}. Upload the same place at two dates.{note}")
        with gr.Row():
            # filepath + image_mode=None hand over the uploaded file untouched, to be decoded with the API's limits.
            before = gr.Image(label="Before", type="filepath", image_mode=None, sources=["upload"], format="png")
            after = gr.Image(label="After", type="filepath", image_mode=None, sources=["upload"], format="png")
        button = gr.Button("Describe the change", variant="primary")
        text = gr.Textbox(label="Caption", interactive=False)
        changed = gr.Checkbox(label="Change detected", interactive=False)
        confidence = gr.Number(label="Confidence (0..1, a ranking signal)", interactive=False)
        # No concurrency limit here: the batcher is what groups and serialises model work.
        button.click(
            caption,
            [before, after],
            [text, changed, confidence],
            api_name=protocol.UI_API_NAME.lstrip("/"),
            concurrency_limit=None,
        )
    return ui


class UploadQuota:
    """Bounds what the UI's upload route may store: files and bytes in the upload folder, expired files swept first.

    Checked before an upload's body is read; uploads in progress count with what they may still add.
    """

    def __init__(self, app: ASGIApp, folder: Path, max_image_bytes: int) -> None:
        self.app = app
        self.folder = folder
        self.max_files = UPLOAD_MAX_FILES
        self.max_bytes = UPLOAD_BYTES_PER_IMAGE_LIMIT * max_image_bytes
        self._largest_upload = ui_body_rule(max_image_bytes).max_bytes
        self._reserved_files = 0
        self._reserved_bytes = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != UPLOAD_PATH:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        incoming = min(int(declared), self._largest_upload) if declared.isdigit() else self._largest_upload
        files, size = await asyncio.to_thread(sweep_uploads, self.folder, UPLOAD_MAX_AGE_S)
        files += self._reserved_files + UPLOAD_MAX_FILES_PER_REQUEST
        size += self._reserved_bytes + incoming
        if files > self.max_files or size > self.max_bytes:
            response = error_response(
                503,
                protocol.ERROR_BUSY,
                f"the UI's upload space is full (at most {self.max_files} files and {self.max_bytes} bytes; "
                f"uploads are removed after {UPLOAD_MAX_AGE_S // 60} min): retry later",
                headers={"Retry-After": "60"},
            )
            await response(scope, receive, send)
            return
        self._reserved_files += UPLOAD_MAX_FILES_PER_REQUEST
        self._reserved_bytes += incoming
        try:
            await self.app(scope, receive, send)
        finally:
            self._reserved_files -= UPLOAD_MAX_FILES_PER_REQUEST
            self._reserved_bytes -= incoming


def sweep_uploads(folder: Path, max_age_s: float) -> tuple[int, int]:
    """Delete files older than ``max_age_s`` under ``folder`` and empty folders; (files, bytes) that remain."""
    files = size = 0
    oldest = time.time() - max_age_s
    for root, directories, names in os.walk(folder, topdown=False):
        for name in names:
            path = Path(root, name)
            try:
                stat = path.stat()
                if stat.st_mtime < oldest:
                    path.unlink()
                    continue
            except OSError:  # removed meanwhile (by Gradio's own expiry, or a finished upload's rename)
                continue
            files += 1
            size += stat.st_size
        for directory in directories:
            try:
                Path(root, directory).rmdir()  # only succeeds when empty
            except OSError:
                pass
    return files, size


def mount_ui(app: FastAPI, state: BackendState) -> None:
    """Mount the UI at :data:`ccexpert_core.protocol.UI_PATH` with its quota on :data:`UPLOAD_FOLDER`.

    ``GRADIO_TEMP_DIR`` is a process-wide setting: one UI per process (``ccexpert serve`` owns its process). The
    folder is removed when the app stops.
    """
    folder = UPLOAD_FOLDER
    max_image_bytes = state.settings.limits.max_image_bytes
    gr.mount_gradio_app(
        app,
        build_ui(state),
        path=protocol.UI_PATH,
        max_file_size=max_image_bytes,
        ssr_mode=False,
        footer_links=["api"],
    )
    app.add_middleware(UploadQuota, folder=folder, max_image_bytes=max_image_bytes)
    gradio_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        try:
            async with gradio_lifespan(app) as lifespan_state:
                yield lifespan_state
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    app.router.lifespan_context = lifespan
