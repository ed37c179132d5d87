"""The CCExpert backend: a FastAPI app over one Captioner (API v1, dynamic batching, token auth, limits, Gradio UI).

Start it with ``ccexpert serve``; build it in code with :func:`backend.app.create_app`.
The wire format is :mod:`ccexpert_core.protocol`.
"""
