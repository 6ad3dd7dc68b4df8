"""ETHD: Emotional Talking Head Diffusion, SVD's UNet with EDI adapters in every attention block.

Backbone: diffusers ``UNetSpatioTemporalConditionModel`` (the portrait's VAE latent concatenated
to the noisy latents: SVD's 8 input channels). In **every** ``TransformerSpatioTemporalModel``:

- after each spatial ``BasicTransformerBlock`` (before the spatial/temporal blend): lip
  cross-attention, then EDI (:class:`~emotivetalk_core.networks.edi.SpatialAdapter`);
- after the ``time_mixer`` blend: masked driven-expression cross-attention
  (:class:`~emotivetalk_core.networks.edi.ExpressionAdapter`).

diffusers' SVD forward has no ``cross_attention_kwargs``, so the per-frame tokens and the face mask
reach the adapters through one explicit mechanism: :meth:`ETHD.forward` binds them to a
:class:`ConditionContext` for the duration of one UNet call, and forward hooks on the diffusers
blocks read it. Hooks leave the diffusers modules and their state-dict names untouched (base SVD
weights load as they are) and are stateless per block (the level is found from the token count).
Gradient checkpointing recomputes blocks during backward, after :meth:`ETHD.forward` has
returned and cleared the context: :meth:`ETHD.enable_gradient_checkpointing` makes each
recomputation re-enter the context of the forward it recomputes. Calling ``ethd.unet``
directly, outside :meth:`ETHD.forward`, is plain SVD.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ..svd.build import build_unet
from .edi import ExpressionAdapter, SpatialAdapter, level_mask


class ConditionContext:
    """Tokens and face mask of the UNet call in progress, as the adapter hooks see them."""

    def __init__(self):
        self.active = False
        self._reset()

    def _reset(self):
        self.lip = self.driven = self.reference = self.changed = self.face_mask = None
        self.latent_hw = (0, 0)
        self._masks: dict[int, torch.Tensor] = {}

    def snapshot(self) -> contextlib.AbstractContextManager:
        """A context manager that re-binds what is bound now (nothing, outside a UNet call)."""
        if not self.active:
            return contextlib.nullcontext()
        bound = (self.lip, self.driven, self.reference, self.changed, self.face_mask, self.latent_hw)
        return self.bound(*bound)

    @contextlib.contextmanager
    def bound(self, lip, driven, reference, changed, face_mask, latent_hw):
        if self.active:
            raise RuntimeError("ETHD forward is not re-entrant (the same model is already running)")
        self.lip, self.driven, self.reference, self.changed, self.face_mask = lip, driven, reference, changed, face_mask
        self.latent_hw = latent_hw
        self.active = True
        try:
            yield
        finally:
            # Cleared even when a run is cancelled mid-call, so the model stays usable.
            self.active = False
            self._reset()

    def mask_for(self, num_tokens: int, dtype: torch.dtype) -> torch.Tensor:
        """The face mask at the UNet level that has ``num_tokens`` spatial tokens: ``[N, h*w, 1]``."""
        if num_tokens not in self._masks:
            height, width = _level_size(self.latent_hw, num_tokens)
            self._masks[num_tokens] = level_mask(self.face_mask, height, width)
        return self._masks[num_tokens].to(dtype)


def _level_size(latent_hw: tuple[int, int], num_tokens: int) -> tuple[int, int]:
    # SVD downsamples with stride-2 convs (padding 1): each level is ceil(previous / 2).
    height, width = latent_hw
    while height * width > num_tokens and (height > 1 or width > 1):
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    if height * width != num_tokens:
        raise RuntimeError(f"no UNet level of a {latent_hw} latent has {num_tokens} tokens")
    return height, width


class _AfterSpatialBlock:
    """Forward hook: lip cross-attention + EDI on a spatial transformer block's output."""

    def __init__(self, adapter: SpatialAdapter, context: ConditionContext):
        self.adapter, self.context = adapter, context

    def __call__(self, module, args, output):
        ctx = self.context
        if not ctx.active:
            return output
        mask = ctx.mask_for(output.shape[1], output.dtype)
        return self.adapter(output, ctx.lip, ctx.driven, ctx.reference, mask, ctx.changed)


class _AfterBlend:
    """Forward hook: masked driven-expression cross-attention on the time_mixer's output."""

    def __init__(self, adapter: ExpressionAdapter, context: ConditionContext):
        self.adapter, self.context = adapter, context

    def __call__(self, module, args, output):
        ctx = self.context
        if not ctx.active:
            return output
        return self.adapter(output, ctx.driven, ctx.mask_for(output.shape[1], output.dtype))


class TransformerAdapter(nn.Module):
    """The adapters of one ``TransformerSpatioTemporalModel``: per spatial block, and after the blend."""

    def __init__(self, dim: int, num_blocks: int, token_dim: int, head_dim: int):
        super().__init__()
        self.spatial = nn.ModuleList(SpatialAdapter(dim, token_dim, head_dim) for _ in range(num_blocks))
        self.expression = ExpressionAdapter(dim, token_dim, head_dim)

    def attach(self, transformer: nn.Module, context: ConditionContext) -> list[torch.utils.hooks.RemovableHandle]:
        """Hooks on ``transformer``'s spatial blocks and ``time_mixer`` (diffusers' and ComfyUI's
        video transformers use these names); returns their handles."""
        handles = [block.register_forward_hook(_AfterSpatialBlock(adapter, context))
                   for block, adapter in zip(transformer.transformer_blocks, self.spatial, strict=True)]
        handles.append(transformer.time_mixer.register_forward_hook(_AfterBlend(self.expression, context)))
        return handles


def transformer_shapes(transformer: nn.Module) -> tuple[int, int]:
    """``(width, spatial blocks)`` of a video transformer: what its :class:`TransformerAdapter` is built for."""
    return transformer.proj_in.out_features, len(transformer.transformer_blocks)


class AdapterSet(nn.Module):
    """Everything of ETHD that is not base SVD: the token projections and one
    :class:`TransformerAdapter` per video transformer, plus the :class:`ConditionContext` their
    hooks read. Built from ``{adapter name: (width, spatial blocks)}`` alone, so a UNet other
    than diffusers' (ComfyUI's own SVD) can carry the same adapters through :meth:`hooked`."""

    def __init__(self, adapter_config: dict, shapes: dict[str, tuple[int, int]]):
        super().__init__()
        self._build(adapter_config, shapes)

    def _build(self, adapter_config: dict, shapes: dict[str, tuple[int, int]]) -> None:
        cfg = adapter_config
        self.adapter_config = dict(cfg)
        token_dim = cfg["token_dim"]
        self.lip_context = cfg["lip_context"]
        self.exp_tokens = cfg["exp_tokens"]
        # Lip tokens: the lip embeddings of frames k-c..k+c, each a token, with a learned position.
        self.lip_proj = nn.Linear(cfg["lip_dim"], token_dim)
        self.lip_position = nn.Parameter(torch.randn(2 * self.lip_context + 1, token_dim) * 0.02)
        # Expression tokens: one per-frame code spread over a few tokens, so attention can pick
        # different facets of it at different places (with one token attention is a constant).
        self.exp_proj = nn.Linear(cfg["exp_dim"], self.exp_tokens * token_dim)
        self.adapters = nn.ModuleDict(
            {name: TransformerAdapter(dim, blocks, token_dim, cfg["head_dim"]) for name, (dim, blocks) in shapes.items()})
        self._context = ConditionContext()

    # --- conditions ----------------------------------------------------------------------
    def lip_tokens(self, lip_windows: torch.Tensor) -> torch.Tensor:
        """``[B, F, 2c+1, lip_dim]`` -> ``[B*F, 2c+1, token_dim]``."""
        return (self.lip_proj(lip_windows) + self.lip_position).flatten(0, 1)

    def expression_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """``[..., exp_dim]`` -> ``[..., exp_tokens, token_dim]``."""
        return self.exp_proj(codes).unflatten(-1, (self.exp_tokens, -1))

    def bind(self, lip_windows: torch.Tensor, driven_exp: torch.Tensor, reference_exp: torch.Tensor,
             face_mask: torch.Tensor | None, latent_hw: tuple[int, int],
             dtype: torch.dtype) -> contextlib.AbstractContextManager:
        """Binds the tokens and face mask of one UNet call over ``[B, F, ...]`` latents for as long
        as the returned context is entered: lip_windows ``[B, F, 2c+1, lip_dim]``, driven_exp
        ``[B, F, exp_dim]``, reference_exp ``[B, exp_dim]``, face_mask ``[B, 1, H, W]`` at any
        resolution (``None`` = everywhere), computed in ``dtype``."""
        batch, frames = driven_exp.shape[:2]
        driven_exp, reference_exp = driven_exp.to(dtype), reference_exp.to(dtype)
        driven = self.expression_tokens(driven_exp).flatten(0, 1)
        # One reference token set per clip, shared by its frames (EDI folds it once, not per frame).
        reference = self.expression_tokens(reference_exp)
        # EDI is exactly zero on a frame whose driven code is the reference's: a zero mask says so
        # (the two attentions, over token sets of different batch shapes, need not round alike).
        changed = (driven_exp != reference_exp[:, None]).any(dim=-1).flatten().to(dtype)[:, None, None]
        if face_mask is None:
            face_mask = driven.new_ones(batch, 1, *latent_hw)
        mask = face_mask.to(dtype).repeat_interleave(frames, dim=0)
        return self._context.bound(self.lip_tokens(lip_windows.to(dtype)), driven, reference, changed, mask, latent_hw)

    @contextlib.contextmanager
    def hooked(self, root: nn.Module, paths: dict[str, str]):
        """The adapters hooked onto the video transformers of another UNet (``root``), found at
        ``paths`` (adapter name -> submodule path), for as long as the context is entered."""
        handles = []
        try:
            for name, path in paths.items():
                handles += self.adapters[name].attach(root.get_submodule(path), self._context)
            yield
        finally:
            for handle in handles:
                handle.remove()


class ETHD(AdapterSet):
    """SVD UNet + EmotiveTalk adapters. ``forward`` predicts SVD's v-target for ``[B, F, 8, h, w]``."""

    def __init__(self, unet: nn.Module, adapter_config: dict):
        nn.Module.__init__(self)
        # The UNet is registered first: state-dict and parameter order stay what they always were.
        self.unet = unet
        transformers = self._video_transformers()
        self._build(adapter_config, {name.replace(".", "_"): transformer_shapes(module)
                                     for name, module in transformers.items()})
        for name, module in transformers.items():
            adapter = self.adapters[name.replace(".", "_")]
            base, new = module.proj_in.weight, adapter.expression.exp_attn.to_out.weight
            if (new.device, new.dtype) != (base.device, base.dtype):  # e.g. a UNet already in fp16 on a GPU
                adapter.to(device=base.device, dtype=base.dtype)
            adapter.attach(module, self._context)

    def _video_transformers(self) -> dict[str, nn.Module]:
        from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

        found = {name: module for name, module in self.unet.named_modules()
                 if isinstance(module, TransformerSpatioTemporalModel)}
        if not found:
            raise ValueError("the UNet has no TransformerSpatioTemporalModel: not an SVD UNet")
        return found

    @classmethod
    def from_config(cls, config: dict) -> "ETHD":
        """Random base UNet + adapters from a full config (``configs.get_config``)."""
        return cls(build_unet(config["unet"]), config["adapter"])

    # --- weights -------------------------------------------------------------------------
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything that is not base SVD: the EmotiveTalk adapter file's content."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("unet.")}

    def load_adapter_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        expected = set(self.adapter_state_dict())
        given = set(state_dict)
        if expected != given:
            raise ValueError(
                "adapter weights do not match this ETHD: "
                f"missing {sorted(expected - given)[:5]}, unexpected {sorted(given - expected)[:5]}"
            )
        self.load_state_dict(state_dict, strict=False)

    def adapter_parameter_count(self) -> int:
        return sum(p.numel() for name, p in self.named_parameters() if not name.startswith("unet."))

    def enable_gradient_checkpointing(self) -> None:
        """diffusers' gradient checkpointing of the UNet, non-reentrant, with every recomputation
        run under the condition context of the forward it recomputes."""
        context = self._context

        def checkpointed(module, *args):
            rebind = context.snapshot()  # taken during the forward, entered during backward
            return torch.utils.checkpoint.checkpoint(
                module.__call__, *args, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), rebind))

        self.unet.enable_gradient_checkpointing(checkpointed)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        image_embeds: torch.Tensor,
        added_time_ids: torch.Tensor,
        lip_windows: torch.Tensor,
        driven_exp: torch.Tensor,
        reference_exp: torch.Tensor,
        face_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One UNet call.

        sample ``[B, F, 8, h, w]`` (noisy latents ++ reference latent), image_embeds ``[B, 1, C]``,
        added_time_ids ``[B, 3]`` (fps id, motion bucket, noise augmentation), lip_windows
        ``[B, F, 2c+1, lip_dim]`` (see :func:`lip_windows`), driven_exp ``[B, F, exp_dim]``,
        reference_exp ``[B, exp_dim]``, face_mask ``[B, 1, H, W]`` at any resolution (1 = face;
        ``None`` = everywhere). Returns ``[B, F, 4, h, w]``.
        """
        with self.bind(lip_windows, driven_exp, reference_exp, face_mask, sample.shape[-2:], sample.dtype):
            return self.unet(sample, timestep, image_embeds, added_time_ids=added_time_ids, return_dict=False)[0]


def lip_windows(lip: torch.Tensor, context: int) -> torch.Tensor:
    """Per-frame lip embeddings ``[B, N, D]`` -> windows of frames k-c..k+c: ``[B, N, 2c+1, D]``.

    Computed once over the whole sequence so a sampling window's edge frames see their real
    neighbours; at the ends of the sequence the first/last frame repeats.
    """
    index = torch.arange(lip.shape[1], device=lip.device)[:, None] + torch.arange(-context, context + 1, device=lip.device)
    return lip[:, index.clamp(0, lip.shape[1] - 1)]
