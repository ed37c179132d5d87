"""The training configs that ship inside the package, so that the recipes run from an installed wheel: the recipes'
stage settings (``configs/demo``, ``configs/finetune``) and the DeepSpeed configs (``deepspeed/``). The repository's
``training/configs/demo``, ``training/configs/finetune`` and ``training/deepspeed`` are links to these folders.

A shipped config's relative paths are read from the recipe's work folder, never from the config's own folder (that
is the installed package).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _shipped(name: str) -> Path:
    # The package is installed as files (its demo model is loaded from its folder too), so a resource is a path.
    return Path(str(resources.files(__package__).joinpath(name))).resolve()


#: The recipes' stage settings, one folder per recipe.
CONFIGS = _shipped("configs")
#: DeepSpeed JSON configs, named in a stage config by their stem (``deepspeed: zero2``).
DEEPSPEED = _shipped("deepspeed")


def recipe_config(recipe: str, name: str) -> Path:
    """The shipped settings ``name`` (e.g. ``stage1``, ``0.5b``) of ``recipe`` (``demo``, ``finetune``)."""
    return CONFIGS / recipe / f"{name}.yaml"


def is_shipped(path: str | Path) -> bool:
    """Whether ``path`` is one of the recipes' shipped settings (through a link in ``training/`` too)."""
    return Path(path).resolve().is_relative_to(CONFIGS)


def deepspeed_names() -> list[str]:
    """The names of the shipped DeepSpeed configs (``zero2``, ``zero3``)."""
    return sorted(path.stem for path in DEEPSPEED.glob("*.json"))
