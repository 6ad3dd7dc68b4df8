"""Building SVD's three networks from their configs: the UNet, the VAE and the CLIP image encoder.

ETHD wraps the UNet; model files and training build each from the config a file records.
diffusers and transformers are imported inside the builders, so importing this module is cheap.
"""

from __future__ import annotations

import torch
from torch import nn


def build_unet(config: dict) -> nn.Module:
    from diffusers import UNetSpatioTemporalConditionModel

    return UNetSpatioTemporalConditionModel(**config)


class ChannelAffine(nn.Module):
    """A GroupNorm's per-channel scale and shift without the normalisation (same parameter names)."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


def build_vae(config: dict) -> nn.Module:
    """SVD's VAE class. ``norm_num_groups`` (ours; diffusers fixes 32) regroups every GroupNorm, and
    0 keeps only their affine part: a VAE 32 channels wide, trained from scratch in minutes, learns
    colour several times faster without per-image normalisation, which erases the colour of flat
    regions (see configs.py). The parameter names and shapes are SVD's either way."""
    from diffusers import AutoencoderKLTemporalDecoder

    config = dict(config)
    groups = config.pop("norm_num_groups", None)
    vae = AutoencoderKLTemporalDecoder(**config)
    if groups is not None:
        for parent in list(vae.modules()):
            for name, module in list(parent.named_children()):
                if not isinstance(module, nn.GroupNorm):
                    continue
                if groups == 0:
                    setattr(parent, name, ChannelAffine(module))
                elif module.num_channels % groups:
                    raise ValueError(f"vae norm_num_groups {groups} does not divide a {module.num_channels}-channel GroupNorm")
                else:
                    module.num_groups = groups
    return vae


def build_image_encoder(config: dict) -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
