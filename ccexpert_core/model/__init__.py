"""CCExpert on transformers: config, Difference-aware Integration Module, model classes, pair processor, presets.

Importing this package registers CCExpert with transformers' Auto classes and checkpoint key renaming.
"""

from ccexpert_core.model.configuration_ccexpert import CCExpertConfig
from ccexpert_core.model.dim import DifferenceAwareIntegration, DimOutput, sine_position_encoding
from ccexpert_core.model.loading import (
    build_preset_model,
    build_tiny_model,
    count_parameters,
    load_model,
    preset_on_meta,
    save_model,
)
from ccexpert_core.model.modeling_ccexpert import CCExpertForConditionalGeneration, CCExpertModel
from ccexpert_core.model.presets import PRESETS, preset_config
from ccexpert_core.model.processing_ccexpert import PairProcessor, load_rgb

__all__ = [
    "CCExpertConfig",
    "CCExpertForConditionalGeneration",
    "CCExpertModel",
    "DifferenceAwareIntegration",
    "DimOutput",
    "PRESETS",
    "PairProcessor",
    "build_preset_model",
    "build_tiny_model",
    "count_parameters",
    "load_model",
    "load_rgb",
    "preset_config",
    "preset_on_meta",
    "save_model",
    "sine_position_encoding",
]
