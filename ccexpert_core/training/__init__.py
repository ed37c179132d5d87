"""CCExpert's three-stage training: stage configs, trainable sets, data, the Trainer glue, and recipes."""

from ccexpert_core.training.config import MODULE_GROUPS, STAGES, StageConfig, build_stage_config, load_stage_config
from ccexpert_core.training.run import run_stage
from ccexpert_core.training.trainable import apply_trainable, module_groups, parameter_groups

__all__ = [
    "MODULE_GROUPS",
    "STAGES",
    "StageConfig",
    "apply_trainable",
    "build_stage_config",
    "load_stage_config",
    "module_groups",
    "parameter_groups",
    "run_stage",
]
