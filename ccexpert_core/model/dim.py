"""The Difference-aware Integration Module (DIM) of CCExpert.

Shapes: L levels (vision layers), B pairs, N tokens per image (a square g×g grid), C the vision width.
The four levels share one set of weights: they are processed as one batch of L·B pairs.
See ``shared/reference/ccexpert.md`` ("DIM, exactly") for the specification this follows line by line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def sine_position_encoding(grid: int, width: int) -> torch.Tensor:
    """Fixed 2-D sine encoding of a ``grid``×``grid`` token grid, shape (grid², width), in fp32.

    Row and column indices run 1..g and become p = (i − 0.5) / (g + 1e-6) · 2π; channel k of each half is
    sin (even k) or cos (odd k) of p / 10000^(2·⌊k/2⌋/n), n = width/2; the halves are [rows, columns] and the
    tokens row-major. The published weights were trained with exactly this (a normalised DETR encoding).
    """
    if width % 2:
        raise ValueError(f"the sine position encoding needs an even width, got {width}")
    half = width // 2
    index = torch.arange(1, grid + 1, dtype=torch.float32)
    position = (index - 0.5) / (grid + 1e-6) * (2 * math.pi)
    channel = torch.arange(half, dtype=torch.float32)
    divisor = 10000.0 ** (2 * torch.div(channel, 2, rounding_mode="floor") / half)
    angles = position[:, None] / divisor  # (g, n)
    encoding = torch.empty_like(angles)
    encoding[:, 0::2] = angles[:, 0::2].sin()
    encoding[:, 1::2] = angles[:, 1::2].cos()
    rows = encoding[:, None, :].expand(grid, grid, half)
    cols = encoding[None, :, :].expand(grid, grid, half)
    return torch.cat((rows, cols), dim=-1).reshape(grid * grid, width)


class DimLinear(nn.Linear):
    """A Linear layer of the DIM; its own class so the model initialises it as the reference does."""


class DimAttention(nn.Module):
    """Multi-head attention with biased q/k/v/out projections C→C (scaled dot product, no dropout)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = DimLinear(width, width)
        self.k_proj = DimLinear(width, width)
        self.v_proj = DimLinear(width, width)
        self.out_proj = DimLinear(width, width)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        return x.view(batch, tokens, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """query (b, n, C), key and value (b, m, C) → (b, n, C)."""
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        )
        batch, _, tokens, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class ChangeFeatureInit(nn.Module):
    """Δ = L3([A·s1, B·s2, A·s1 − B·s2]) with s1 = σ(L2[A, B]), s2 = σ(L2[B, A]) and one shared L2."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gate = DimLinear(2 * width, width)
        self.proj = DimLinear(3 * width, width)

    def forward(self, image_a: torch.Tensor, image_b: torch.Tensor) -> torch.Tensor:
        """(b, N, C) twice → Δ (b, N, C)."""
        gated_a = image_a * torch.sigmoid(self.gate(torch.cat((image_a, image_b), dim=-1)))
        gated_b = image_b * torch.sigmoid(self.gate(torch.cat((image_b, image_a), dim=-1)))
        return self.proj(torch.cat((gated_a, gated_b, gated_a - gated_b), dim=-1))


class ChangeAwareLayer(nn.Module):
    """One Change Aware Transformer layer (post-norm): change self-attention, change→images cross-attention,
    MLP, then images→change cross-attention that refines each image."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.change_self_attn = DimAttention(width, num_heads)
        self.norm1 = nn.LayerNorm(width)
        self.change_to_images_attn = DimAttention(width, num_heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(DimLinear(width, mlp_ratio * width), nn.GELU(), DimLinear(mlp_ratio * width, width))
        self.norm3 = nn.LayerNorm(width)
        self.images_to_change_attn = DimAttention(width, num_heads)
        # Learned "type" embeddings telling image A, image B and change tokens apart in the attention keys.
        self.type_image_a = nn.Parameter(torch.empty(1, width))
        self.type_image_b = nn.Parameter(torch.empty(1, width))
        self.type_change = nn.Parameter(torch.empty(1, width))

    def forward(
        self,
        queries: torch.Tensor | None,
        delta: torch.Tensor,
        image_a: torch.Tensor,
        image_b: torch.Tensor,
        pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Refine (queries, A, B); ``queries`` is None in the first layer, where the change queries are Δ itself.

        All tensors (b, N, C); ``pe`` (N, C) broadcasts. Returns (new A, new B, change queries).
        """
        queries = delta if queries is None else queries + delta
        q_pe = queries + pe
        queries = self.norm1(queries + self.change_self_attn(q_pe, q_pe, queries))

        keyed_a = image_a + pe + self.type_image_a
        keyed_b = image_b + pe + self.type_image_b
        keyed_q = queries + pe + self.type_change
        attn = self.change_to_images_attn(
            keyed_q, torch.cat((keyed_a, keyed_b, keyed_q), dim=1), torch.cat((image_a, image_b, queries), dim=1)
        )
        queries = self.norm2(queries + attn)
        queries = self.norm3(queries + self.mlp(queries))

        # One attention module refines A and B (batched); the position and type embeddings stay in the
        # residual, as in the published weights' training code.
        keyed_q = queries + pe + self.type_change
        images = torch.cat((keyed_a, keyed_b), dim=0)
        keys = torch.cat((torch.cat((keyed_a, keyed_q), dim=1), torch.cat((keyed_b, keyed_q), dim=1)), dim=0)
        values = torch.cat((torch.cat((image_a, queries), dim=1), torch.cat((image_b, queries), dim=1)), dim=0)
        images = images + self.images_to_change_attn(images, keys, values)
        new_a, new_b = images.chunk(2, dim=0)
        return new_a, new_b, queries


class AdaptiveAdjustment(nn.Module):
    """Per level l, g_l = σ(MLP(mean over tokens of [A_l, B_l, Q_l])); weights w_l = g_l / (Σ g + 1e-6)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(DimLinear(3 * width, width), nn.GELU(), DimLinear(width, 1))

    def forward(self, image_a: torch.Tensor, image_b: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        """(L, B, N, C) three times → weights (L, B), summing to 1 over the levels (within 1e-6)."""
        pooled = torch.cat((image_a, image_b, change), dim=-1).mean(dim=2)
        scores = torch.sigmoid(self.gate(pooled)).squeeze(-1)
        return scores / (scores.sum(dim=0, keepdim=True) + 1e-6)


@dataclass
class DimOutput:
    """What the DIM gives: the refined features of both images and what it saw of the change."""

    #: (B, N, C) each: Σ_l w_l · refined level l + the raw features of the last level.
    image_a: torch.Tensor
    image_b: torch.Tensor
    #: (L, B, N, C): the change queries of every level after the last layer (not sent to the language model).
    change: torch.Tensor
    #: (L, B): the adaptive level weights.
    level_weights: torch.Tensor
    #: (B,): "is anything changed" logits from the change summary; None without one.
    change_score: torch.Tensor | None = None
    #: (B, 1 + K): "no change, or which of the K kinds" logits from the change summary (index 0: no change), for
    #: models that tell K kinds apart.
    change_type_score: torch.Tensor | None = None


class ChangeSummary(nn.Module):
    """Not in the paper: the strongest change signal of the pair (max over tokens of the change features, averaged
    over the levels) through a small MLP, added to every image token of both images. Small models trained briefly
    on CPUs collapse onto the caption prior without it (shared/reference/demo-model-feasibility.md).

    ``score`` reads "is anything changed in this pair" from the summary. Trained with the change-map loss, it makes
    the summary carry the change from the first steps: otherwise the summary only learns once the language model
    asks for it, and a language model that has already learned the caption prior no longer asks. With
    ``num_types`` kinds of change, ``kind`` reads "no change, or which kind" from it in the same way, so the
    summary also carries what changed (built or demolished look alike to a difference magnitude), and a subtle
    kind (a road widened) is told apart from no change by more than the one score."""

    def __init__(self, width: int, num_types: int = 0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(width), DimLinear(width, width), nn.GELU(), DimLinear(width, width))
        self.score = DimLinear(width, 1)
        self.kind = DimLinear(width, 1 + num_types) if num_types else None

    def forward(self, change: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """change (L, B, N, C) → the (B, 1, C) vector to add to each image's (B, N, C) features, the (B,)
        change-score logits and the (B, 1 + K) change-type logits, index 0 no change (None without kinds)."""
        summary = self.mlp(change.amax(dim=2).mean(dim=0))
        kind = self.kind(summary) if self.kind is not None else None
        return summary[:, None, :], self.score(summary).squeeze(-1), kind


class DifferenceAwareIntegration(nn.Module):
    """Injects multi-scale differences between the two images into each image's features."""

    def __init__(
        self, width: int, num_heads: int, depth: int = 2, mlp_ratio: int = 4, change_summary: bool = False,
        num_change_types: int = 0,
    ) -> None:
        super().__init__()
        if depth < 1:  # the change features are the layers' output: without one there are none
            raise ValueError(f"the DIM needs at least one Change Aware Transformer layer, got depth={depth}")
        self.width = width
        self.change_init = ChangeFeatureInit(width)
        self.layers = nn.ModuleList(ChangeAwareLayer(width, num_heads, mlp_ratio) for _ in range(depth))
        self.adjust = AdaptiveAdjustment(width)
        self.summary = ChangeSummary(width, num_change_types) if change_summary else None
        self._pe_cache: dict[int, torch.Tensor] = {}

    def position_encoding(self, tokens: int, like: torch.Tensor) -> torch.Tensor:
        """The (tokens, C) sine encoding, computed once per grid in fp32, cast to ``like``'s dtype and device."""
        grid = math.isqrt(tokens)
        if grid * grid != tokens:
            raise ValueError(f"the DIM needs a square token grid, got {tokens} tokens")
        if grid not in self._pe_cache:
            self._pe_cache[grid] = sine_position_encoding(grid, self.width)
        return self._pe_cache[grid].to(device=like.device, dtype=like.dtype)

    def forward(self, levels_a: torch.Tensor, levels_b: torch.Tensor) -> DimOutput:
        """levels_a, levels_b: (L, B, N, C) vision features of the before and after images at L layers."""
        n_levels, batch, tokens, width = levels_a.shape
        pe = self.position_encoding(tokens, levels_a)
        image_a = levels_a.reshape(n_levels * batch, tokens, width)
        image_b = levels_b.reshape(n_levels * batch, tokens, width)
        queries: torch.Tensor | None = None
        for layer in self.layers:
            # Δ is recomputed from the current A and B at the start of every layer (one shared module).
            delta = self.change_init(image_a, image_b)
            image_a, image_b, queries = layer(queries, delta, image_a, image_b, pe)
        assert queries is not None  # depth >= 1 (checked when built)
        shape = (n_levels, batch, tokens, width)
        image_a, image_b, change = image_a.view(shape), image_b.view(shape), queries.view(shape)
        weights = self.adjust(image_a, image_b, change)
        w = weights[:, :, None, None].to(image_a.dtype)
        out_a = (w * image_a).sum(dim=0) + levels_a[-1]
        out_b = (w * image_b).sum(dim=0) + levels_b[-1]
        score = kind = None
        if self.summary is not None:
            summary, score, kind = self.summary(change)
            out_a, out_b = out_a + summary, out_b + summary
        return DimOutput(
            image_a=out_a, image_b=out_b, change=change, level_weights=weights, change_score=score,
            change_type_score=kind,
        )


class ChangeMapHead(nn.Module):
    """One "is this place changed" logit per token from the DIM's change features (averaged over the levels), and
    with ``num_types`` kinds of change, one logit per kind and token."""

    def __init__(self, width: int, num_types: int = 0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(DimLinear(width, width), nn.GELU(), DimLinear(width, 1))
        self.kind = DimLinear(width, num_types) if num_types else None

    def forward(self, change: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """change (L, B, N, C) → change logits (B, N) and change-type logits (B, N, K) (None without kinds)."""
        hidden = self.mlp[:2](self.norm(change.mean(dim=0)))
        kind = self.kind(hidden) if self.kind is not None else None
        return self.mlp[2](hidden).squeeze(-1), kind
