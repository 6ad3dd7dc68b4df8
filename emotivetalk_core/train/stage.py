"""What a training stage is: the contract between the training loop and each stage.

The loop (accelerate, EMA, checkpoints, logging) is the same for every stage; a stage says
which modules exist, which of them train, what the loss of a batch is, and what the export
writes. Stages: ``base`` (SVD's VAE and image encoder from scratch, for a base nobody ships),
``encoders`` (Lip/Exp Encoders and Face Processor distilled from the
preprocessing targets), ``vaid`` (Audio-lip Projector, Di-CTE + Identity Encoder, Mapping),
``ethd`` (ETHD adapters, optionally the whole UNet), ``distill`` (a few-step, one-pass student
of a trained model).

What the loop does around a stage (so a stage need not):

- builds the modules on the CPU with the global torch seed set to ``train.seed`` (every process
  builds the same random init), then moves them to the device;
- gives the optimizer and the EMA exactly the parameters of the ``trainable`` modules that
  require grad (a stage may freeze parts of a trainable module, e.g. ETHD's base UNet);
  every other module is frozen (``requires_grad_(False)``, ``eval()``), kept out of DDP/FSDP
  (:class:`StageModel`, the one module the wrappers see, holds them unregistered), and cast to
  the mixed-precision dtype when there is one;
- runs ``loss`` under autocast and scales it for gradient accumulation;
- adds ``batch["reference"]`` ``[B, 3, S, S]`` to every batch: a frame of the same clip from
  outside the item's window (``ClipDataset.outside_frame``; the clip's first frame when the
  window is the whole clip), drawn per sample and step from the seeded stream
  ``"data.reference"``: the portrait x_ref of ETHD and of Di-CTE's Identity/Exp Encoders.

What a stage must do:

- draw every random number of ``loss`` from ``noise`` (keyed by ``batch["index"]``), never from
  global random state (``nn.Dropout`` included): then a sample's draws do not depend on the
  process split or on a resume;
- return losses that are means of per-sample terms, so the gradient of a global batch does
  not depend on how it is split across processes (batch-wide terms such as InfoNCE negatives
  are allowed, but then the split changes the result and the stage says so);
- enable gradient checkpointing on its modules when ``config["train"]["gradient_checkpointing"]``;
- live in ``emotivetalk_core/train/<name>_stage.py`` as the class named in :data:`STAGE_CLASSES`,
  constructed without arguments.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from .noise import SampleNoise

STAGE_CLASSES = {"base": "BaseStage", "encoders": "EncodersStage", "vaid": "VAIDStage", "ethd": "ETHDStage",
                 "distill": "DistillStage"}


def get_stage(name: str) -> Stage:
    """A fresh instance of the named stage (its module is imported only now)."""
    if name not in STAGE_CLASSES:
        raise ValueError(f"unknown training stage {name!r}; choose one of {sorted(STAGE_CLASSES)}")
    module = import_module(f".{name}_stage", __package__)
    return getattr(module, STAGE_CLASSES[name])()


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
        (``bundles.vaid_info``) or ETHD's clip length, fps id and motion bucket. JSON-serialisable;
        called with the EMA weights in ``modules``."""

    def sample(self, modules: nn.ModuleDict, batch: dict, folder: Path, step: int) -> list[Path]:
        """Write a short generated sample of ``batch`` (a fixed collated batch on the device)
        into ``folder`` (which exists) and return the files written; ``[]`` for a stage with
        nothing to show. Called on the main process only, under ``torch.no_grad()``, with the
        EMA weights in ``modules``; it must not draw from global random state (use a seeded
        ``torch.Generator``), so sampling never changes the training run."""


class StageModel(nn.Module):
    """The trainable modules as one ``nn.Module`` (what DDP/FSDP/DeepSpeed wrap); frozen modules
    are held but not registered, so they stay out of the wrapper, its state and its checkpoints.
    ``forward`` is the stage's loss, so the wrapper's forward hooks run around the whole step."""

    def __init__(self, stage: Stage, modules: nn.ModuleDict, trainable: list[str]):
        super().__init__()
        self.stage = stage
        self.trainable = nn.ModuleDict({name: modules[name] for name in trainable})
        self.__dict__["frozen"] = {name: module for name, module in modules.items() if name not in trainable}

    def modules_view(self) -> nn.ModuleDict:
        """Every module under its stage name (children as currently wrapped, if a wrapper did so)."""
        return nn.ModuleDict({**self.frozen, **dict(self.trainable.items())})

    def forward(self, batch: dict, noise: SampleNoise) -> dict[str, torch.Tensor]:
        return self.stage.loss(self.modules_view(), batch, noise)
