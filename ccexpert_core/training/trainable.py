"""Which parameters a stage trains, and the optimiser's parameter groups (the vision tower has its own rate)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ccexpert_core.model import CCExpertForConditionalGeneration


def module_groups(model: CCExpertForConditionalGeneration) -> dict[str, list[nn.Module]]:
    """The model's parts by group name. The change-map head belongs to ``dim`` (it reads the DIM's features);
    ``language`` includes the output head (tied to the embeddings in small models)."""
    inner = model.model
    return {
        "vision": [inner.vision_tower],
        "dim": [m for m in (inner.dim, inner.change_head) if m is not None],
        "projector": [inner.multi_modal_projector],
        "language": [inner.language_model, model.lm_head],
    }


def _parameters(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for parameter in module.parameters():
            seen.setdefault(id(parameter), parameter)
    return list(seen.values())


def apply_trainable(model: CCExpertForConditionalGeneration, groups: Iterable[str]) -> dict[str, int]:
    """Freeze everything, then unfreeze the named groups; returns trainable parameter counts per group."""
    groups = set(groups)
    parts = module_groups(model)
    model.requires_grad_(False)
    counts = {}
    for name, modules in parts.items():
        parameters = _parameters(modules)
        for parameter in parameters:
            parameter.requires_grad_(name in groups)
        counts[name] = sum(p.numel() for p in parameters) if name in groups else 0
    return counts


def parameter_groups(
    model: CCExpertForConditionalGeneration, learning_rate: float, vision_learning_rate: float, weight_decay: float,
    adapter_learning_rate: float | None = None,
) -> list[dict]:
    """Optimiser groups of the trainable parameters: the vision tower at its own absolute rate, LoRA adapters at
    theirs (``adapter_learning_rate``, default the base rate), the rest at the base rate (the DIM included)."""
    vision = {id(p) for p in _parameters(module_groups(model)["vision"])}
    adapters = {id(p) for name, p in model.named_parameters() if "lora_" in name}
    trainable = [p for p in _parameters([model]) if p.requires_grad]
    rates = {"vision": vision_learning_rate, "adapters": adapter_learning_rate or learning_rate, "rest": learning_rate}

    def group(p: nn.Parameter) -> str:
        return "vision" if id(p) in vision else "adapters" if id(p) in adapters else "rest"

    groups = [
        {"params": [p for p in trainable if group(p) == name], "lr": rate, "name": name} for name, rate in rates.items()
    ]
    return [dict(group, weight_decay=weight_decay) for group in groups if group["params"]]
