"""Exponential moving average of the trainable parameters: what the exports ship.

The shadow is float32 whatever the training dtype, so a bf16/fp16 run still averages in full
precision. With warmup the decay at update ``n`` (1-based) is ``min(decay, (1 + n) / (10 + n))``
(the schedule of diffusers' EMAModel), so early exports are not dominated by the random init.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """``shadow = d * shadow + (1 - d) * param`` for every named trainable parameter."""

    def __init__(self, parameters: dict[str, nn.Parameter], decay: float, warmup: bool = True):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.parameters = dict(parameters)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in self.parameters.items()}

    def current_decay(self) -> float:
        """The decay the next update uses."""
        n = self.updates + 1
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        for name, param in self.parameters.items():
            # lerp_: shadow + (1 - d) * (param - shadow), one fused op per tensor.
            self.shadow[name].lerp_(param.detach().float(), 1.0 - decay)
        self.updates += 1

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """The EMA weights inside the parameters for the duration; the training weights are put
        back bitwise afterwards."""
        backup = {name: p.detach().clone() for name, p in self.parameters.items()}
        try:
            for name, param in self.parameters.items():
                param.copy_(self.shadow[name])
            yield
        finally:
            for name, param in self.parameters.items():
                param.copy_(backup[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, shadow: dict[str, torch.Tensor], updates: int) -> None:
        missing = sorted(set(self.shadow) - set(shadow))
        unexpected = sorted(set(shadow) - set(self.shadow))
        if missing or unexpected:
            raise ValueError(f"EMA state does not match the trainable parameters: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, value in shadow.items():
            if value.shape != self.shadow[name].shape:
                raise ValueError(f"EMA state '{name}' has shape {tuple(value.shape)}, the parameter {tuple(self.shadow[name].shape)}")
            self.shadow[name].copy_(value)
        self.updates = int(updates)
