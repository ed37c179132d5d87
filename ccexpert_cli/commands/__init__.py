"""Subcommands of ``ccexpert``: one module each, exposing ``register(subparsers)`` and setting ``handler``."""
