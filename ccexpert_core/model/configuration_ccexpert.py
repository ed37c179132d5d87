"""CCExpert's configuration: LLaVA-OneVision's, plus the settings of the Difference-aware Integration Module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from huggingface_hub.dataclasses import strict
from transformers import LlavaOnevisionConfig, PreTrainedConfig

#: The base model type a CCExpert can be built from (its config is adopted, the DIM added).
BASE_MODEL_TYPE = "llava_onevision"



def default_dim_layers(vision_layers: int) -> list[int]:
    """The levels the DIM reads from a tower of ``vision_layers`` layers, as indices into its hidden states.

    The paper's: every third layer up to the last, [17, 20, 23, 26] for the 26-layer -hf SigLIP tower (the
    reference's -11, -8, -5, -2 of its 27 layers). Shallow towers (small models) use their last four layers.
    """
    n = vision_layers
    return [n - 9, n - 6, n - 3, n] if n >= 10 else list(range(max(1, n - 3), n + 1))


@strict
class CCExpertConfig(LlavaOnevisionConfig):
    r"""LLaVA-OneVision configuration with the Difference-aware Integration Module (DIM).

    dim_enabled (`bool`, defaults to `True`):
        With `False` the model is plain LLaVA-OneVision (the paper's baseline) in the same class: no DIM weights,
        each image's features are the vision tower's last layer through the projector.
    dim_vision_layers (`list[int]`, *optional*):
        Indices into the vision tower's hidden states (0 = embeddings) of the levels the DIM refines; by default
        [17, 20, 23, 26] for the 26-layer tower (see `default_dim_layers`). The last level's raw features are the
        residual base of the DIM's output.
    dim_depth (`int`, defaults to 2):
        Number of Change Aware Transformer layers.
    dim_num_heads (`int`, *optional*):
        Attention heads of the DIM; by default the vision width / 128 (9 for SigLIP-so400m).
    dim_mlp_ratio (`int`, defaults to 4):
        Width of the DIM's MLP as a multiple of the vision width.
    dim_change_summary (`bool`, defaults to `False`):
        Not in the paper: add a summary of the pair's strongest change features to every image token (see
        `ChangeSummary`), with a pair-level change score trained alongside the change map. Off in the paper's
        configurations; on in the small demo model.
    change_head (`bool`, defaults to `False`):
        An optional head on the DIM's change features giving one "is this place changed" logit per token (a
        coarse change map). Off in the paper's configurations and absent from published checkpoints.
    change_types (`list[str]`, *optional*):
        Not in the paper: names of the kinds of change the change-map head (per token) and the change summary (per
        pair) also tell apart, trained from the data's `change_type` where it has one. Needs `change_head`.
    """

    model_type = "ccexpert"

    dim_enabled: bool = True
    dim_vision_layers: list[int] | None = None
    dim_depth: int = 2
    dim_num_heads: int | None = None
    dim_mlp_ratio: int = 4
    dim_change_summary: bool = False
    change_head: bool = False
    change_types: list[str] | None = None

    if TYPE_CHECKING:
        # The base's __post_init__ makes both sub-configs configs (from a dict or its defaults): after construction
        # they are never a dict or None. Declared for the type checker only: the dataclass's fields stay the base's.
        vision_config: PreTrainedConfig
        text_config: PreTrainedConfig

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.dim_vision_layers is None:
            self.dim_vision_layers = default_dim_layers(self.vision_config.num_hidden_layers)
        self.dim_vision_layers = [int(i) for i in self.dim_vision_layers]
        width = self.vision_config.hidden_size
        if self.dim_num_heads is None:
            self.dim_num_heads = max(1, width // 128)
        if width % self.dim_num_heads:
            raise ValueError(f"dim_num_heads={self.dim_num_heads} does not divide the vision width {width}")
        if self.change_head and not self.dim_enabled:
            raise ValueError("the change-map head reads the DIM's change features: it needs dim_enabled=True")
        if self.change_types:
            self.change_types = [str(name) for name in self.change_types]
            if not self.change_head:
                raise ValueError("change_types are told apart by the change-map head: they need change_head=True")
            if len(set(self.change_types)) != len(self.change_types):
                raise ValueError(f"change_types must be distinct names, got {self.change_types}")
        n_hidden = self.vision_config.num_hidden_layers + 1
        bad = [i for i in self.dim_vision_layers if not -n_hidden <= i < n_hidden]
        if bad or not self.dim_vision_layers:
            raise ValueError(
                f"dim_vision_layers {self.dim_vision_layers} must index the vision tower's {n_hidden} hidden states"
            )

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> tuple[dict, dict]:
        """Read a config; a LLaVA-OneVision base config is adopted as a CCExpert one with the DIM's defaults."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == BASE_MODEL_TYPE:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    @property
    def tokens_per_image(self) -> int:
        """Visual tokens per image: (image size / patch size)² — 729 at 384 px with patch 14."""
        grid = self.vision_config.image_size // self.vision_config.patch_size
        return grid * grid
