"""The Gradio UI at ``/ui``: two images in, caption, change flag and confidence out.

The same function is an API endpoint for ``gradio_client``::

    Client(url + "/ui/", headers={"Authorization": "Bearer T"}).predict(
        handle_file("before.png"), handle_file("after.png"), api_name="/caption")

It captions through the same decoding, limits and batcher as ``POST /v1/captions``.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from backend.captioning import caption_uploads
from backend.errors import ApiError
from backend.state import BackendState
from ccexpert_core import protocol

# Gradio would report usage to its makers on start; a backend on a closed network must not try to call out.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
import gradio as gr  # noqa: E402  (after the environment setting above)


def build_ui(state: BackendState) -> gr.Blocks:
    """The Blocks app; its ``/caption`` endpoint returns (caption, change_detected, confidence)."""

    async def caption(before: str | None, after: str | None) -> tuple[str, bool, float]:
        if not before or not after:
            raise gr.Error("Upload both images: the one before and the one after.")
        try:
            [result] = await caption_uploads(state, [(Path(before).read_bytes, Path(after).read_bytes)])
        except ApiError as error:
            raise gr.Error(error.detail) from None
        return result.caption, result.change_detected, result.confidence

    with gr.Blocks(title="CCExpert") as ui:
        gr.Markdown(
            f"## CCExpert: what changed?\nModel `{state.captioner.model_id}`. Upload the same place at two dates."
        )
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


def mount_ui(app: FastAPI, state: BackendState) -> None:
    """Mount the UI at :data:`ccexpert_core.protocol.UI_PATH` (auth is the app's :class:`UIAuthMiddleware`)."""
    gr.mount_gradio_app(
        app,
        build_ui(state),
        path=protocol.UI_PATH,
        max_file_size=state.settings.limits.max_image_bytes,
        ssr_mode=False,
        footer_links=["api"],
    )
