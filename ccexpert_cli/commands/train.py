"""``ccexpert train``: one stage from its YAML, or a whole recipe (the demo model; a fine-tune on reviewed tiles)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ccexpert_core.errors import CCExpertError
from ccexpert_core.options import float_in

#: Options that only the fine-tune recipe takes.
_FINETUNE_ONLY = ("model", "data", "replay", "replay_share", "merge")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return ["--" + name.replace("_", "-") for name in names if getattr(args, name) is not None]


def _finetune(args: argparse.Namespace) -> Path:
    if args.merge is not None:
        extra = _given(args, ("data", "replay", "replay_share", "config")) + (["KEY=VALUE"] if args.overrides else [])
        if extra or args.out is None:
            raise CCExpertError(
                "--merge ADAPTER takes --out MODEL (and --model BASE where the adapter does not record its base), "
                f"nothing else{': not ' + ', '.join(extra) if extra else ''}"
            )
        from ccexpert_core.training.finetune import merge_into

        return merge_into(args.merge, args.out, args.model)
    if args.data is None or args.out is None:
        raise CCExpertError("--recipe finetune needs --data (an export's CC JSON) and --out (a new model folder)")
    if args.replay_share is not None and args.replay is None:
        raise CCExpertError("--replay-share needs --replay (the dataset to mix in)")
    from ccexpert_core.training.finetune import run_finetune

    return run_finetune(
        args.data, args.out, args.model, args.replay, args.replay_share, args.config, args.overrides
    )


def _demo(args: argparse.Namespace) -> Path:
    if args.config:
        raise CCExpertError("--recipe demo takes no --config (its stages ship with ccexpert: training/configs/demo/)")
    from ccexpert_core.training.recipes import DEFAULT_DEMO_WORK, run_demo_recipe

    return run_demo_recipe(args.out or DEFAULT_DEMO_WORK, args.overrides, args.smoke)


def _train(args: argparse.Namespace) -> int:
    if args.smoke and args.recipe != "demo":
        raise CCExpertError("--smoke: only for --recipe demo")
    if args.recipe == "finetune":
        print(_finetune(args))
        return 0
    stray = _given(args, _FINETUNE_ONLY)
    if stray:
        raise CCExpertError(f"{', '.join(stray)}: only for --recipe finetune")
    if args.recipe == "demo":
        print(_demo(args))
        return 0
    if args.out is not None:
        raise CCExpertError("--out: only for a recipe (a stage config names its output_dir)")
    if not args.config:
        raise CCExpertError("give --config STAGE.yaml or --recipe demo|finetune")
    from ccexpert_core.training import load_stage_config, run_stage

    print(run_stage(load_stage_config(args.config, args.overrides)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``."""
    train = subparsers.add_parser(
        "train",
        help="train one stage (--config STAGE.yaml) or a recipe (--recipe demo | finetune)",
        description=(
            "Train one stage from its YAML (relative paths read from its folder), or a recipe, whose settings ship "
            "with ccexpert: demo makes the shipped demo model in a work folder; finetune teaches a model an "
            "analyst's reviewed tiles (ccexpert export-dataset) with LoRA on the language model, the DIM and the "
            "projector trained fully, and writes a new model folder with a model card."
        ),
    )
    train.add_argument("--config", type=Path, help="stage YAML (see training/configs/); with --recipe finetune: "
                       "fine-tune settings (default: the shipped training/configs/finetune/<the model's shape>.yaml)")
    train.add_argument("--recipe", choices=["demo", "finetune"],
                       help="demo = the shipped demo model; finetune = learn from reviewed tiles")
    train.add_argument("--out", type=Path,
                       help="--recipe demo: its work folder, for the data, the stages and the model (default: "
                       "./demo-recipe); --recipe finetune: the new model folder (must not exist, or be empty)")
    train.add_argument("--smoke", action="store_true",
                       help="--recipe demo: check that it runs here, in a minute or two (a few pairs, one step per "
                       "stage; the model is not trained)")
    tune = train.add_argument_group("--recipe finetune")
    tune.add_argument("--model", help="the model to fine-tune, a folder (default: the shipped demo model)")
    tune.add_argument("--data", type=Path, help="the analyst's tiles: the CC JSON ccexpert export-dataset wrote")
    tune.add_argument("--replay", type=Path,
                      help="a CC JSON or mixture of what the model learned from, mixed in so that it keeps it")
    tune.add_argument("--replay-share", type=float_in(0, 1, low_open=True), metavar="S",
                      help="share of each epoch's samples from --replay, below 1 (default: the settings', 0.5)")
    tune.add_argument("--merge", type=Path, metavar="ADAPTER",
                      help="no training: merge an adapter folder (a fine-tune with merge_lora=false) into --out")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, e.g. max_steps=100")
    train.set_defaults(handler=_train)
