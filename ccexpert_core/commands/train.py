"""``ccexpert train``: one stage from its YAML, or a whole recipe."""

from __future__ import annotations

import argparse


def _train(args: argparse.Namespace) -> int:
    if args.recipe:
        from ccexpert_core.training.recipes import run_recipe

        print(run_recipe(args.recipe, args.overrides))
        return 0
    from ccexpert_core.training import load_stage_config, run_stage

    print(run_stage(load_stage_config(args.config, args.overrides)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``."""
    train = subparsers.add_parser("train", help="train one stage (--config STAGE.yaml) or a recipe (--recipe demo)")
    what = train.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="stage YAML (see training/configs/)")
    what.add_argument("--recipe", choices=["demo"], help="a whole recipe: demo = the shipped demo model")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, e.g. max_steps=100")
    train.set_defaults(handler=_train)
