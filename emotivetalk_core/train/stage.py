"""What a training stage is: the contract between the training loop and each stage.

The loop (accelerate, EMA, checkpoints, logging) is the same for every stage; a stage says
which modules exist, which of them train, what the loss of a batch is, and what the export
writes. Stages: ``encoders`` (Lip/Exp Encoders and Face Processor distilled from the
preprocessing targets), ``vaid`` (Audio-lip Projector, Di-CTE + Identity Encoder, Mapping),
``ethd`` (ETHD adapters, optionally the whole UNet).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from .noise import SampleNoise


class Stage(Protocol):
    name: str

    def build(self, config: dict) -> nn.ModuleDict:
        """Every module the stage uses, trainable and frozen, initialised as ``config`` says
        (from an earlier stage's export, base SVD weights, or at random)."""

    def trainable(self, modules: nn.ModuleDict) -> list[str]:
        """Names (keys of ``modules``) of the modules that train; EMA tracks exactly these."""

    def loss(self, modules: nn.ModuleDict, batch: dict, noise: SampleNoise) -> dict[str, torch.Tensor]:
        """Scalar losses of one batch (a collated ``ClipDataset`` batch on the device); ``"loss"``
        is the total that is back-propagated, the other entries are logged."""

    def export(self, modules: nn.ModuleDict, config: dict) -> dict[str, tuple[dict, dict]]:
        """``{component: (state_dict, config)}`` for ``checkpoints.save_model_file``; called with
        the EMA weights in ``modules``."""

    def export_info(self, modules: nn.ModuleDict, config: dict) -> dict:
        """Facts for the exported file's ``info`` besides what the loop records (``trained``,
        ``note``, ``stage``, ``steps``, ``config``): e.g. V-AID's speech encoder fingerprint
        (``models.vaid_info``) or ETHD's clip length, fps id and motion bucket. JSON-serialisable;
        called with the EMA weights in ``modules``."""

    def sample(self, modules: nn.ModuleDict, batch: dict, folder: Path, step: int) -> list[Path]:
        """Write a short generated sample of ``batch`` (a fixed collated batch on the device)
        into ``folder`` (which exists) and return the files written; ``[]`` for a stage with
        nothing to show. Called on the main process only, under ``torch.no_grad()``, with the
        EMA weights in ``modules``; it must not draw from global random state (use a seeded
        ``torch.Generator``), so sampling never changes the training run."""
