"""The CCExpert backend: a FastAPI app over one Captioner (API v1, dynamic batching, token auth, limits, Gradio UI).

Its face: :func:`backend.server.serve` with :class:`backend.server.ServeOptions` starts one (``ccexpert serve`` is
that call), :func:`backend.app.create_app` builds the app in code (tests, Ray Serve replicas). The wire format is
:mod:`ccexpert_core.protocol`.
"""
