"""The Difference-aware Integration Module against its specification (shared/reference/ccexpert.md)."""

from __future__ import annotations

import math

import pytest
import torch

from ccexpert_core.model.dim import ChangeMapHead, DifferenceAwareIntegration, sine_position_encoding

WIDTH, HEADS, LEVELS, BATCH, GRID = 32, 4, 4, 3, 5
TOKENS = GRID * GRID


@pytest.fixture()
def dim() -> DifferenceAwareIntegration:
    torch.manual_seed(0)
    module = DifferenceAwareIntegration(WIDTH, HEADS, depth=2, mlp_ratio=4)
    for layer in module.layers:  # torch.empty by default: give the type embeddings values, as the model's init does
        for p in (layer.type_image_a, layer.type_image_b, layer.type_change):
            torch.nn.init.normal_(p)
    return module.eval()


def levels(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (LEVELS, BATCH, TOKENS, WIDTH)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def reference_sine_encoding(grid: int, width: int) -> torch.Tensor:
    """The reference's normalised DETR encoding written out loop by loop, token by token."""
    n = width // 2
    out = torch.empty(grid * grid, width)
    for row in range(grid):
        for col in range(grid):
            y = (row + 1 - 0.5) / (grid + 1e-6) * 2 * math.pi
            x = (col + 1 - 0.5) / (grid + 1e-6) * 2 * math.pi
            for i in range(n):
                divisor = 10000 ** (2 * (i // 2) / n)
                trig = math.sin if i % 2 == 0 else math.cos
                out[row * grid + col, i] = trig(y / divisor)
                out[row * grid + col, n + i] = trig(x / divisor)
    return out


def test_sine_position_encoding_matches_the_reference_formula() -> None:
    torch.testing.assert_close(sine_position_encoding(GRID, WIDTH), reference_sine_encoding(GRID, WIDTH))
    assert sine_position_encoding(27, 1152).shape == (729, 1152)


def test_output_shapes(dim: DifferenceAwareIntegration) -> None:
    a, b = levels()
    out = dim(a, b)
    assert out.image_a.shape == out.image_b.shape == (BATCH, TOKENS, WIDTH)
    assert out.change.shape == (LEVELS, BATCH, TOKENS, WIDTH)
    assert out.level_weights.shape == (LEVELS, BATCH)


def test_adaptive_weights_of_each_sample_sum_to_one(dim: DifferenceAwareIntegration) -> None:
    out = dim(*levels())
    torch.testing.assert_close(out.level_weights.sum(dim=0), torch.ones(BATCH), atol=1e-5, rtol=0)
    assert (out.level_weights > 0).all()


def test_output_is_weighted_refined_levels_plus_raw_last_level(dim: DifferenceAwareIntegration) -> None:
    """Residual structure: capture the refined levels entering the adaptive adjustment and rebuild the output."""
    a, b = levels()
    seen = {}
    dim.adjust.register_forward_hook(lambda _m, inputs, output: seen.update(inputs=inputs, weights=output))
    out = dim(a, b)
    refined_a, refined_b, _ = seen["inputs"]
    w = seen["weights"][:, :, None, None]
    torch.testing.assert_close(out.image_a, (w * refined_a).sum(0) + a[-1])
    torch.testing.assert_close(out.image_b, (w * refined_b).sum(0) + b[-1])


def test_one_set_of_weights_serves_every_level(dim: DifferenceAwareIntegration) -> None:
    """Levels are a batch: refining each level on its own with the same module gives the same refined features,
    and the parameter count does not depend on the number of levels."""
    a, b = levels()
    refined = {}
    dim.adjust.register_forward_hook(lambda _m, inputs, _o: refined.setdefault("all", inputs[0]))
    dim(a, b)
    for level in range(LEVELS):
        refined.pop("one", None)
        handle = dim.adjust.register_forward_hook(lambda _m, inputs, _o: refined.__setitem__("one", inputs[0]))
        dim(a[level : level + 1], b[level : level + 1])
        handle.remove()
        torch.testing.assert_close(refined["one"][0], refined["all"][level], atol=1e-5, rtol=1e-5)
    w = WIDTH
    change_init = (2 * w * w + w) + (3 * w * w + w)
    layer = 4 * 3 * (w * w + w) + 3 * 2 * w + (4 * w * w + 4 * w) + (4 * w * w + w) + 3 * w
    adjust = (3 * w * w + w) + (w + 1)
    assert sum(p.numel() for p in dim.parameters()) == change_init + 2 * layer + adjust


def test_gradients_reach_every_dim_parameter(dim: DifferenceAwareIntegration) -> None:
    out = dim(*levels())
    (out.image_a.square().mean() + out.image_b.square().mean()).backward()
    for name, parameter in dim.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_dim_changes_features_from_the_first_step(dim: DifferenceAwareIntegration) -> None:
    """Nothing is zero-initialised: the output differs from the raw residual."""
    a, b = levels()
    assert not torch.allclose(dim(a, b).image_a, a[-1])


def test_change_features_depend_on_the_difference(dim: DifferenceAwareIntegration) -> None:
    a, b = levels()
    same = dim(a, a.clone())
    different = dim(a, b)
    assert not torch.allclose(same.change, different.change)


def test_non_square_token_grid_is_refused(dim: DifferenceAwareIntegration) -> None:
    a = torch.randn(LEVELS, 1, 24, WIDTH)
    with pytest.raises(ValueError, match="square"):
        dim(a, a)


def test_a_dim_without_layers_is_refused_when_built() -> None:
    # Its change features are the layers' output: with none, the first forward pass had nothing to return.
    with pytest.raises(ValueError, match="at least one Change Aware Transformer layer"):
        DifferenceAwareIntegration(WIDTH, HEADS, depth=0)


def test_change_summary_is_off_by_default_and_adds_one_vector_to_every_token() -> None:
    assert DifferenceAwareIntegration(WIDTH, HEADS).summary is None  # the paper's DIM
    torch.manual_seed(0)
    with_summary = DifferenceAwareIntegration(WIDTH, HEADS, change_summary=True).eval()
    for layer in with_summary.layers:
        for p in (layer.type_image_a, layer.type_image_b, layer.type_change):
            torch.nn.init.normal_(p)
    a, b = levels()
    out = with_summary(a, b)
    with_summary.summary = None
    plain = with_summary(a, b)
    added_a, added_b = out.image_a - plain.image_a, out.image_b - plain.image_b
    torch.testing.assert_close(added_a, added_b)
    torch.testing.assert_close(added_a, added_a[:, :1].expand_as(added_a))  # the same vector on every token
    # ... and a pair-level change score read from it (trained with the change-map loss).
    assert out.change_score.shape == (a.shape[1],) and plain.change_score is None


def test_change_types_add_a_kind_per_pair_to_the_summary_and_per_token_to_the_change_map_head() -> None:
    a, b = levels()
    out = DifferenceAwareIntegration(WIDTH, HEADS, change_summary=True, num_change_types=6)(a, b)
    assert out.change_type_score.shape == (a.shape[1], 7)  # no change, or one of the six kinds
    logits, kinds = ChangeMapHead(WIDTH, num_types=6)(out.change)
    assert logits.shape == a.shape[1:3] and kinds.shape == (*a.shape[1:3], 6)
    assert ChangeMapHead(WIDTH)(out.change)[1] is None  # a plain change map: no kinds
    assert DifferenceAwareIntegration(WIDTH, HEADS, change_summary=True)(a, b).change_type_score is None
