"""Stage ``encoders``: Lip Encoder, Exp Encoder and Face Processor, distilled from preprocessing.

The paper freezes a Lip Encoder and an Exp Encoder and names neither; ours are small CNNs
(``networks/encoders.py``) taught to carry what the preprocessing tool measured per frame:

- each encoder's embedding goes through a linear *head* (trained with it, never exported) that
  predicts the shard's ``lip_target`` / ``exp_target``; the loss is the MSE in **standardised**
  units, so every target dimension counts alike whatever its scale. The per-dimension mean and
  std come from the whole dataset (read once at build), not from each batch: batch statistics
  would make a sample's loss depend on its batch-mates, so on the process split and the batch
  size, and would be noisy for small batches;
- the Face Processor learns the shard's mask: BCE plus soft Dice (the face/background balance
  varies with the crop; Dice keeps a small face from being ignored), per image and averaged,
  at the processor's working size ``image_size``;
- the Lip Encoder sees the whole face crop and cuts ``MOUTH_BOX`` itself, as at inference.

Augmentation: a per-sample brightness gain and offset (same for every frame of the window),
drawn from the seeded per-sample noise, so the encoders do not key on lighting.

Options (``config["encoders"]``) and defaults: :data:`DEFAULTS`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .noise import SampleNoise
from .shards import ShardError, read_shard_info, shard_paths, target_statistics

log = logging.getLogger(__name__)

DEFAULTS = {
    "lip_weight": 1.0,   # weight of the Lip Encoder's distillation loss
    "exp_weight": 1.0,   # weight of the Exp Encoder's distillation loss
    "mask_weight": 1.0,  # weight of the Face Processor's BCE + Dice
    "augment": 0.1,      # brightness gain in [1 - a, 1 + a] and offset in [-a, a]; 0 = off
    "sample_frames": 4,  # frames shown in a sample image
}
EXPORTED = ("lip_encoder", "exp_encoder", "face_processor")


class TargetHead(nn.Module):
    """Linear map from an embedding to standardised targets; holds the dataset's statistics."""

    def __init__(self, in_dim: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.linear = nn.Linear(in_dim, mean.numel())
        # A dimension that never varies carries nothing to learn: scale 1 keeps it at 0 exactly.
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", torch.where(std > 1e-6, std, torch.ones_like(std)))

    def standardise(self, target: torch.Tensor) -> torch.Tensor:
        return (target - self.mean) / self.std

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.linear(embedding)


def options(config: dict) -> dict:
    section = config.get("encoders", {})
    unknown = sorted(set(section) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown encoders option(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **section}


def targets_info(root: str | Path) -> dict:
    """The targets block every shard must share (tool and dimensions)."""
    infos = {path: read_shard_info(path)["targets"] for path in shard_paths(root)}
    first_path, first = next(iter(infos.items()))
    for path, targets in infos.items():
        if targets != first:
            raise ShardError(f"{path} has targets {targets}, {first_path} has {first}: preprocess all shards with one tool")
    return first


class EncodersStage:
    name = "encoders"

    def build(self, config: dict) -> nn.ModuleDict:
        from ..networks.encoders import ExpEncoder, FaceProcessor, LipEncoder

        self.options = options(config)
        encoders = config["model"]["encoders"]
        self.targets = targets_info(config["data"]["shards"])
        stats = target_statistics(config["data"]["shards"])
        modules = nn.ModuleDict({
            "lip_encoder": LipEncoder(encoders),
            "exp_encoder": ExpEncoder(encoders),
            "face_processor": FaceProcessor(encoders),
            "lip_head": TargetHead(encoders["lip_dim"], *stats["lip_target"]),
            "exp_head": TargetHead(encoders["exp_dim"], *stats["exp_target"]),
        })
        if config["init"]["encoders"]:
            _load_encoders(modules, config["init"]["encoders"])
        self.checkpointing = config["train"]["gradient_checkpointing"]
        return modules

    def trainable(self, modules: nn.ModuleDict) -> list[str]:
        return list(modules)

    def loss(self, modules: nn.ModuleDict, batch: dict, noise: SampleNoise) -> dict[str, torch.Tensor]:
        opts = self.options
        frames = _augment(batch["frames"], batch["index"], noise, opts["augment"])
        frames = frames.flatten(0, 1)  # [B*T, 3, S, S]; every frame is its own example
        lip = self._distil(modules["lip_encoder"], modules["lip_head"], frames, batch["lip_target"])
        exp = self._distil(modules["exp_encoder"], modules["exp_head"], frames, batch["exp_target"])
        mask = self._mask_loss(modules["face_processor"], frames, batch["mask"].flatten(0, 1))
        total = opts["lip_weight"] * lip + opts["exp_weight"] * exp + opts["mask_weight"] * mask
        return {"loss": total, "lip": lip.detach(), "exp": exp.detach(), "mask": mask.detach()}

    def _run(self, module: nn.Module, images: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(module, images, use_reentrant=False)
        return module(images)

    def _distil(self, encoder: nn.Module, head: TargetHead, frames: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prediction = head(self._run(encoder, frames)).float()
        return F.mse_loss(prediction, head.standardise(target.flatten(0, 1).float()))

    def _mask_loss(self, processor: nn.Module, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        size = (processor.image_size, processor.image_size)
        # The processor resizes to image_size internally in exactly this way; doing it first makes
        # its output (and the loss) live at image_size instead of the full crop size.
        small = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)
        target = F.interpolate(mask.float(), size=size, mode="area")
        probability = self._run(processor, small).float()
        # binary_cross_entropy is unsafe under fp16 autocast; the inputs are float32 already.
        with torch.autocast(device_type=probability.device.type, enabled=False):
            bce = F.binary_cross_entropy(probability, target)
            overlap = (probability * target).sum(dim=(1, 2, 3))
            dice = 1 - (2 * overlap + 1) / (probability.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
        return bce + dice.mean()

    def export(self, modules: nn.ModuleDict, config: dict) -> dict[str, tuple[dict, dict]]:
        encoders = config["model"]["encoders"]
        return {name: (modules[name].state_dict(), encoders) for name in EXPORTED}

    def export_info(self, modules: nn.ModuleDict, config: dict) -> dict:
        return {"targets": self.targets}

    def sample(self, modules: nn.ModuleDict, batch: dict, folder: Path, step: int) -> list[Path]:
        """One PNG: rows of (frame, predicted mask over the frame, target mask), for the first
        frames of the first window."""
        frames = batch["frames"][0, : self.options["sample_frames"]]
        predicted = modules["face_processor"](frames)
        rows = [torch.cat([frame, frame * (0.35 + 0.65 * guess), target.expand(3, -1, -1)], dim=2)
                for frame, guess, target in zip(frames, predicted, batch["mask"][0], strict=False)]
        path = folder / f"encoders-step-{step:06d}.png"
        _save_png(torch.cat(rows, dim=1), path)
        return [path]


def _augment(frames: torch.Tensor, index: torch.Tensor, noise: SampleNoise, strength: float) -> torch.Tensor:
    """Per-sample brightness gain and offset, ``frames`` ``[B, T, 3, S, S]`` in 0..1."""
    if strength <= 0:
        return frames
    draws = noise.uniform("encoders.augment", index, (2,), device=frames.device, dtype=frames.dtype) * 2 - 1
    gain = (1 + strength * draws[:, 0]).view(-1, 1, 1, 1, 1)
    offset = (strength * draws[:, 1]).view(-1, 1, 1, 1, 1)
    return (frames * gain + offset).clamp(0, 1)


def _load_encoders(modules: nn.ModuleDict, path: str) -> None:
    from ..checkpoints import load_model_file

    states, _, _ = load_model_file(path, list(EXPORTED))
    for name in EXPORTED:
        modules[name].load_state_dict(states[name])
    log.info("encoders initialised from %s", path)


def _save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(array).save(path)
