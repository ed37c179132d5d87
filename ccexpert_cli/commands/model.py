"""Model commands: ``caption-pair``, ``model-info``, ``create-model``, ``convert-reference``."""

from __future__ import annotations

import argparse
import json

from ccexpert_core.defaults import load_captioner
from ccexpert_core.options import device_value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device`` and ``--dtype``, shared by every command that runs the model in-process."""
    parser.add_argument(
        "--model", default=None, help="model folder, hub id or preset:tiny (default: the shipped demo model)"
    )
    parser.add_argument("--device", default="auto", type=device_value, help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on CUDA, else float32")


def _caption_pair(args: argparse.Namespace) -> int:
    captioner = load_captioner(args.model, args.device, args.dtype)
    result = captioner.caption([(args.before, args.after)])[0]
    if args.json:
        print(json.dumps({"caption": result.caption, "change_detected": result.change_detected,
                          "confidence": result.confidence}))
    else:
        print(result.caption)
    return 0


def _model_info(args: argparse.Namespace) -> int:
    from ccexpert_core.model import count_parameters, load_model, preset_on_meta

    if args.preset:
        model = preset_on_meta(args.preset)
        source = f"preset:{args.preset}"
    else:
        model, _ = load_model(args.model)
        source = args.model
    config = model.config
    info = {
        "model": source,
        "parameters": count_parameters(model),
        "dim_enabled": config.dim_enabled,
        "dim_vision_layers": config.dim_vision_layers if config.dim_enabled else [],
        "image_size": config.vision_config.image_size,
        "tokens_per_image": config.tokens_per_image,
        "vision_width": config.vision_config.hidden_size,
        "language_width": config.text_config.hidden_size,
    }
    print(json.dumps(info, indent=2))
    return 0


def _create_model(args: argparse.Namespace) -> int:
    from ccexpert_core.model import build_tiny_model, save_model

    model, processor = build_tiny_model(seed=args.seed, dim_enabled=not args.no_dim)
    print(save_model(model, processor, args.out))
    return 0


def _convert_reference(args: argparse.Namespace) -> int:
    from ccexpert_core.model.convert_reference import convert_reference_checkpoint

    print(convert_reference_checkpoint(args.src, args.dst, args.base))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the model commands."""
    pair = subparsers.add_parser("caption-pair", help="caption the change between two images")
    pair.add_argument("before", help="image of the first date (PNG, JPEG, TIFF)")
    pair.add_argument("after", help="image of the second date")
    add_model_arguments(pair)
    pair.add_argument("--json", action="store_true", help="print caption, change flag and confidence as JSON")
    pair.set_defaults(handler=_caption_pair)

    info = subparsers.add_parser("model-info", help="parameter counts and shapes of a model or preset")
    source = info.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model folder or hub id")
    source.add_argument("--preset", choices=["tiny", "0.5b", "7b"], help="count a preset without allocating it")
    info.set_defaults(handler=_model_info)

    create = subparsers.add_parser("create-model", help="write a tiny model with random weights (for tests, trials)")
    create.add_argument("out", help="folder to write")
    create.add_argument("--seed", type=int, default=0)
    create.add_argument("--no-dim", action="store_true", help="plain LLaVA-OneVision (the paper's baseline)")
    create.set_defaults(handler=_create_model)

    convert = subparsers.add_parser(
        "convert-reference", help="convert a checkpoint of the CCExpert reference implementation"
    )
    convert.add_argument("src", help="reference checkpoint folder (LLaVA-NeXT layout)")
    convert.add_argument("dst", help="folder to write the converted model to")
    convert.add_argument(
        "--base", required=True, help="the matching llava-hf LLaVA-OneVision folder (config and tokenizer)"
    )
    convert.set_defaults(handler=_convert_reference)
