"""The ``base`` training stage: SVD's VAE and image encoder from scratch, for a base nobody ships.

ETHD is Stable Video Diffusion with adapters; real models start from Stability's SVD weights.
A model of another shape (SynthTalk's 64 px demo model) has no pretrained base, so this stage
trains the two frozen parts ETHD needs besides its UNet, on the shards:

- **VAE** (``AutoencoderKLTemporalDecoder``, SVD's class): every frame of the window is encoded,
  a posterior sample decoded by the temporal decoder with the window as its frames; the loss is
  ``L1 + MSE`` on pixels in -1..1 plus ``kl_weight * KL``. The posterior's log-variance starts
  at ``initial_logvar`` (the bias of ``quant_conv``), not 0: with unit posterior noise the
  decoder sees almost no signal at first and a small VAE spends its first hundreds of steps
  only learning to shrink that noise.
- **image encoder** (``CLIPVisionModelWithProjection``, SVD's portrait embedding, the UNet's
  cross-attention context): trained to say *who*: the embedding of the portrait frame
  (``batch["reference"]``, from the same video) and of a frame of the window are a positive
  pair, the other clips of the batch negatives (symmetric InfoNCE on cosine similarity). With
  ``data.reference = "video"`` the pair often shows two expressions, so the embedding learns to
  ignore expression, as ETHD wants of an identity context. Two windows of one video in a batch
  are false negatives; with hundreds of videos that is rare. The InfoNCE term is batch-wide, so
  it changes with the per-process batch split (the stage contract allows it and says so).

Export: ``vae`` (its config with ``scaling_factor`` = 1 / the standard deviation of the
posterior means over the first windows of the data, so the latents the sampler works in have
unit variance, as SVD's EDM preconditioning assumes) and ``image_encoder``. ETHD's stage loads
them with ``init.base``.

The temporal decoder starts as a per-frame decoder (:func:`start_frame_by_frame`), so the data
window (``data.window``) can be short: a couple of frames of many clips per batch teach faster
than many frames of a few clips.

Options (``config["base"]``), defaults in :data:`BASE_DEFAULTS`: ``kl_weight`` 1e-6,
``identity_weight`` 0.1, ``identity_temperature`` 0.1, ``initial_logvar`` -8,
``initial_mix_logit`` -6, ``scale_windows`` 32 (windows measured for the scaling factor),
``sample_frames`` 4.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..placement import placement
from ..svd.build import build_image_encoder, build_vae
from ..svd.conditioning import image_embeds
from .noise import SampleNoise
from .vaid_stage import options, reference_frames

log = logging.getLogger(__name__)

BASE_DEFAULTS = {
    "kl_weight": 1e-6,
    "identity_weight": 0.1,
    "identity_temperature": 0.1,
    "initial_logvar": -8.0,
    "initial_mix_logit": -6.0,
    "scale_windows": 32,
    "sample_frames": 4,
}
EXPORTED = ("vae", "image_encoder")


def start_small_variance(vae: nn.Module, logvar: float) -> None:
    """Make the posterior's log-variance start at ``logvar`` everywhere (see the module docstring)."""
    latent = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[latent:].zero_()
        vae.quant_conv.bias[latent:].fill_(logvar)


def start_frame_by_frame(vae: nn.Module, mix_logit: float) -> None:
    """Start the temporal decoder as a per-frame decoder: every spatio-temporal block's blend
    almost all spatial (its learned ``mix_factor`` at ``mix_logit``; diffusers' temporal VAE blends
    ``1 - sigmoid(mix_factor)`` of the spatial branch) and ``time_conv_out`` the identity. At random
    init the temporal layers mix neighbouring frames and the window's edges (zero-padded in time)
    differently from its middle, so a decoder trained on short windows decodes longer ones
    wrongly; starting from per-frame decoding, the window length no longer matters and the
    temporal parts learn only what helps."""
    with torch.no_grad():
        for module in vae.decoder.modules():
            if hasattr(module, "mix_factor"):
                module.mix_factor.fill_(mix_logit)
        out = vae.decoder.time_conv_out
        out.weight.zero_()
        out.bias.zero_()
        centre = out.weight.shape[2] // 2
        for channel in range(out.weight.shape[0]):
            out.weight[channel, channel, centre, 0, 0] = 1.0


def pixels(frames: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Frames in 0..1 -> -1..1 in the module's dtype and device."""
    return (frames * 2 - 1).to(**placement(module))


class BaseStage:
    name = "base"

    def __init__(self):
        self.options = dict(BASE_DEFAULTS)

    def build(self, config: dict) -> nn.ModuleDict:
        self.options = opts = options(config, "base", BASE_DEFAULTS)
        model = config["model"]
        vae = build_vae(model["vae"])
        start_small_variance(vae, opts["initial_logvar"])
        start_frame_by_frame(vae, opts["initial_mix_logit"])
        if config["train"].get("gradient_checkpointing"):
            vae.enable_gradient_checkpointing()
        return nn.ModuleDict({"vae": vae, "image_encoder": build_image_encoder(model["image_encoder"])})

    def trainable(self, modules: nn.ModuleDict) -> list[str]:
        return list(EXPORTED)

    def loss(self, modules: nn.ModuleDict, batch: dict, noise: SampleNoise) -> dict[str, torch.Tensor]:
        opts = self.options
        reconstruction, kl = self.autoencode(modules["vae"], batch["frames"], batch["index"], noise)
        identity = self.identity_loss(modules["image_encoder"], batch)
        total = reconstruction.mean() + opts["kl_weight"] * kl.mean() + opts["identity_weight"] * identity
        return {"loss": total, "reconstruction": reconstruction.mean().detach(), "kl": kl.mean().detach(),
                "identity": identity.detach()}

    def autoencode(self, vae: nn.Module, frames: torch.Tensor, index: torch.Tensor, noise: SampleNoise):
        """Per-clip reconstruction loss and KL ``[B]`` of windows ``[B, T, 3, S, S]``; the
        posterior noise is drawn per clip from ``noise`` (stream ``base.posterior``)."""
        batch, count = frames.shape[:2]
        target = pixels(frames.flatten(0, 1), vae)
        posterior = vae.encode(target).latent_dist
        epsilon = noise.normal("base.posterior", index, (count, *posterior.mean.shape[1:]), device=target.device,
                               dtype=target.dtype).flatten(0, 1)
        decoded = vae.decode(posterior.mean + posterior.std * epsilon, num_frames=count).sample
        error = (decoded.float() - target.float()).unflatten(0, (batch, count))
        reconstruction = error.abs().mean(dim=(1, 2, 3, 4)) + error.square().mean(dim=(1, 2, 3, 4))
        kl = posterior.kl().float().unflatten(0, (batch, count)).mean(dim=1)
        return reconstruction, kl

    def identity_loss(self, image_encoder: nn.Module, batch: dict) -> torch.Tensor:
        """Symmetric InfoNCE between the portrait's and the window's first frame's embeddings."""
        portrait = F.normalize(image_embeds(image_encoder, reference_frames(batch))[:, 0].float(), dim=-1)
        frame = F.normalize(image_embeds(image_encoder, batch["frames"][:, 0])[:, 0].float(), dim=-1)
        logits = portrait @ frame.T / self.options["identity_temperature"]
        target = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    # --- export and sample -----------------------------------------------------------------
    def export(self, modules: nn.ModuleDict, config: dict) -> dict[str, tuple[dict, dict]]:
        vae_config = {**config["model"]["vae"], "scaling_factor": 1.0 / self.latent_std(modules["vae"], config)}
        return {"vae": (modules["vae"].state_dict(), vae_config),
                "image_encoder": (modules["image_encoder"].state_dict(), config["model"]["image_encoder"])}

    def export_info(self, modules: nn.ModuleDict, config: dict) -> dict:
        return {"latent_std": self.latent_std(modules["vae"], config)}

    def latent_std(self, vae: nn.Module, config: dict) -> float:
        """Standard deviation of the posterior means over the data's first ``scale_windows``
        windows (fixed, so the export does not depend on the run's last batch)."""
        from .shards import ClipDataset

        data = ClipDataset(config["data"]["shards"], config["data"]["window"])
        values = []
        with torch.no_grad():
            for index in range(min(len(data), self.options["scale_windows"])):
                values.append(vae.encode(pixels(data[index]["frames"], vae)).latent_dist.mean.float().flatten())
        return float(torch.cat(values).std())

    def sample(self, modules: nn.ModuleDict, batch: dict, folder: Path, step: int) -> list[Path]:
        """One PNG: the first window's first frames over their reconstructions."""
        vae = modules["vae"]
        frames = batch["frames"][0]
        latents = vae.encode(pixels(frames, vae)).latent_dist.mode()
        decoded = ((vae.decode(latents, num_frames=len(frames)).sample.float() + 1) / 2).clamp(0, 1)
        count = self.options["sample_frames"]
        strip = torch.cat([torch.cat(list(frames[:count].float()), dim=2), torch.cat(list(decoded[:count].cpu()), dim=2)], dim=1)
        path = folder / f"base_{step:08d}.png"
        from PIL import Image

        Image.fromarray((strip.permute(1, 2, 0) * 255).round().byte().numpy()).save(path)
        return [path]
