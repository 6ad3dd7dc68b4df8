"""EDI: the Expression Decouple Injector and the cross-attentions of an ETHD attention block.

Figure panel (c), one attention block ``H_i -> H_{i+1}``::

    CA(lip)  ->  EDI  ->  reshape  ->  temporal SA  ->  CA(driven expression) * face_mask (+ residual)

EDI = ``h + m * (CA(h, driven) - CA(h, reference))`` with **one** cross-attention module applied to
both token sets: EDI removes the expression the portrait already shows and adds the requested one,
inside the face. A driven expression equal to the portrait's own contributes exactly zero: the
frames where it is equal come with a zero EDI mask (``AdapterSet.bind``), so the zero does not rest
on two attentions rounding alike (the reference's tokens are one set per clip, the driven ones one
per frame).

Every branch here returns a residual multiplied by the level's face mask, so wherever the mask is
0 the branch changes nothing, bit for bit. The figure draws no mask on the lip cross-attention;
we mask it too, because speech should move the face and never the background or clothes (the
mouth is inside the face mask), and because it makes "outside the face equals base SVD" a
property a test can check.

Output projections start at zero, so untrained adapters leave SVD's output unchanged.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class TokenCrossAttention(nn.Module):
    """Cross-attention from video tokens ``[N, L, dim]`` to a few condition tokens ``[N, T, token_dim]``.

    The weights are a standard multi-head cross-attention's (``to_q``, ``to_k``, ``to_v``,
    ``to_out``), but with only T = 5-8 condition tokens the two ``dim x dim`` projections of
    every video token (query in, output out) cost far more than the attention itself. They are
    folded into the tokens instead, exactly (up to float rounding): per head h,
    ``q_h . k_h = n . (W_q,h^T k_h)`` and ``W_out,h (p_h v_h) = p_h (W_out,h v_h)``. So each token
    becomes a key and a value of width ``dim`` per head (:meth:`keys`, :meth:`values`: T x dim^2
    per frame, once) and a video token costs ``2 dim (heads T)`` multiply-adds instead of
    ``2 dim^2``: at svd-xt's head_dim 64 that is T/64 of the projections.

    :meth:`attend` takes the normalised video tokens, so EDI normalises once for its driven and
    reference passes, and tokens for every item or one set for each group of consecutive items
    (EDI's reference: one per clip for all its frames, folded once instead of once per frame).
    """

    def __init__(self, dim: int, token_dim: int, head_dim: int, out_bias: bool = True):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"adapter width {dim} is not a multiple of head_dim {head_dim}")
        self.heads = dim // head_dim
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(token_dim, dim, bias=False)
        self.to_v = nn.Linear(token_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=out_bias)
        nn.init.zeros_(self.to_out.weight)
        if out_bias:
            nn.init.zeros_(self.to_out.bias)

    def keys(self, tokens: torch.Tensor) -> torch.Tensor:
        """Query projection folded into the keys: ``[N, heads * T, dim]``, softmax scale included."""
        keys = self._split(self.to_k(tokens))  # [N, heads, T, head_dim]
        keys = keys * keys.shape[-1] ** -0.5  # the softmax scale, on keys heads times smaller than the folded ones
        w_q = self.to_q.weight.unflatten(0, (self.heads, -1))  # [heads, head_dim, dim]
        return torch.einsum("nhtd,hdc->nhtc", keys, w_q).flatten(1, 2)

    def values(self, tokens: torch.Tensor) -> torch.Tensor:
        """Output projection folded into the values: ``[N, heads * T, dim]`` (no bias)."""
        values = self._split(self.to_v(tokens))  # [N, heads, T, head_dim]
        w_out = self.to_out.weight.unflatten(1, (self.heads, -1))  # [dim, heads, head_dim]
        return torch.einsum("nhtd,chd->nhtc", values, w_out).flatten(1, 2)

    def attend(self, normed: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Projected attention output of the normalised video tokens ``[N, L, dim]``, without the
        output bias: ``[N, L, dim]``. ``tokens [M, T, token_dim]``: one set per item (M = N) or
        one shared by each run of N / M consecutive items (the frames of a clip)."""
        items, length, dim = normed.shape
        if items % tokens.shape[0]:
            raise ValueError(f"{tokens.shape[0]} token sets cannot be shared by {items} video items")
        tokens = tokens.to(normed.dtype)
        grouped = normed.reshape(tokens.shape[0], -1, dim)  # [M, (N / M) L, dim]
        # Logits token-major, [M, heads * T, (N / M) L]: the softmax then runs over T with the
        # video tokens innermost, which CPUs vectorise; over an innermost T of 5-8, torch's CPU
        # softmax is 10-20x slower.
        logits = torch.bmm(self.keys(tokens), grouped.transpose(1, 2))
        weights = logits.unflatten(1, (self.heads, -1)).softmax(dim=2).flatten(1, 2)
        return torch.bmm(weights.transpose(1, 2), self.values(tokens)).reshape(items, length, dim)

    def forward(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        out = self.attend(self.norm(hidden), tokens)
        return out if self.to_out.bias is None else out + self.to_out.bias

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)


class ExpressionDecoupleInjector(nn.Module):
    """EDI: ``m * (CA(h, driven) - CA(h, reference))`` with shared weights (returned as a residual).

    Driven tokens per frame ``[N, T, token_dim]``, the reference's per clip ``[B, T, token_dim]``;
    ``mask [N, L, 1]`` is the face mask, zero on frames whose driven expression is the reference's.
    """

    def __init__(self, dim: int, token_dim: int, head_dim: int):
        super().__init__()
        # No output bias: it would cancel in the difference (and, never used, stall DDP training).
        self.attn = TokenCrossAttention(dim, token_dim, head_dim, out_bias=False)

    def forward(self, hidden, driven_tokens, reference_tokens, mask) -> torch.Tensor:
        normed = self.attn.norm(hidden)
        return mask * (self.attn.attend(normed, driven_tokens) - self.attn.attend(normed, reference_tokens))


class SpatialAdapter(nn.Module):
    """Lip cross-attention then EDI, run right after one spatial transformer block. ``mask`` is
    the face mask ``[N, L, 1]``, ``changed [N, 1, 1]`` 1 on frames whose driven expression
    differs from the reference's and 0 where it is the same (EDI's exact zero)."""

    def __init__(self, dim: int, token_dim: int, head_dim: int):
        super().__init__()
        self.lip_attn = TokenCrossAttention(dim, token_dim, head_dim)
        self.edi = ExpressionDecoupleInjector(dim, token_dim, head_dim)

    def forward(self, hidden, lip_tokens, driven_tokens, reference_tokens, mask, changed) -> torch.Tensor:
        hidden = hidden + mask * self.lip_attn(hidden, lip_tokens)
        return hidden + self.edi(hidden, driven_tokens, reference_tokens, mask * changed)


class ExpressionAdapter(nn.Module):
    """Masked driven-expression cross-attention, run after the spatial/temporal blend.

    After the blend rather than inside the temporal branch: there its output would be scaled
    down by the learned blend factor.
    """

    def __init__(self, dim: int, token_dim: int, head_dim: int):
        super().__init__()
        self.exp_attn = TokenCrossAttention(dim, token_dim, head_dim)

    def forward(self, hidden, driven_tokens, mask) -> torch.Tensor:
        return hidden + mask * self.exp_attn(hidden, driven_tokens)


def level_mask(face_mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Face mask ``[N, 1, H, W]`` resized to one UNet level and flattened to ``[N, h*w, 1]``.

    Area interpolation: a level token is 0 exactly when every pixel under it is 0, so "no
    change outside the face" holds at every level.
    """
    if face_mask.shape[-2:] != (height, width):
        face_mask = F.interpolate(face_mask, size=(height, width), mode="area")
    return face_mask.flatten(2).transpose(1, 2)


def binary_face_mask(mask: torch.Tensor) -> torch.Tensor:
    """1 where ``mask`` > 0.5 (the face), exactly 0 elsewhere: the one form of face mask ETHD
    trains and infers with. The Face Processor's sigmoid is never exactly 0, so its raw output
    would let every adapter leak into the background; shard masks have anti-aliased rims, so
    training sees the same thresholded form as inference."""
    return (mask > 0.5).to(mask.dtype)


def face_region(masks: torch.Tensor) -> torch.Tensor:
    """Where the adapters act, ``[B, ...]`` masks -> binary float masks (``binary_face_mask``); an
    item with no face pixel gets ones: an empty mask means "no mask given", in training and at
    inference alike, rather than switching the adapters off."""
    region = binary_face_mask(masks.float())
    empty = region.flatten(1).amax(dim=1) == 0
    return torch.where(empty.view(-1, *[1] * (region.dim() - 1)), torch.ones_like(region), region)


def resolve_face_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A user's face mask as ``[B, 1, H, W]`` in 0..1 (1 = face), or ``None`` for "everywhere".

    Accepts ``[H, W]``, ``[B, H, W]`` (ComfyUI's MASK) or ``[B, 1, H, W]``. An all-zero mask is
    what ComfyUI's LoadImage gives for an image without alpha, so it means "no mask given", not
    "no face": it is dropped with a warning rather than silently switching the adapters off.
    """
    if mask is None:
        return None
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"face mask must be [H, W], [B, H, W] or [B, 1, H, W], got {tuple(mask.shape)}")
    if not torch.any(mask):
        log.warning("the face mask is all zero (an image without alpha?); treating it as 'no mask given'")
        return None
    return mask.float().clamp(0, 1)
