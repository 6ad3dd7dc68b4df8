"""Randomness of training that does not depend on how the batch is split across processes.

Every random draw of a training step (diffusion noise, noise levels, condition dropout, the
reference frame) comes from a generator seeded by ``(seed, step, stream, sample index)``. A
sample therefore gets the same noise whether it is trained on rank 0 of 2 or in a single
process with the same global batch, and a resumed run draws exactly what an uninterrupted one
would have drawn.
"""

from __future__ import annotations

import hashlib

import torch


def sample_seed(seed: int, step: int, stream: str, index: int) -> int:
    """A 63-bit seed for one sample's draws in one named stream at one step."""
    key = f"{seed}/{step}/{stream}/{index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)


class SampleNoise:
    """Per-sample draws for one training step.

    ``stream`` names what the draw is for (``"ethd.noise"``, ``"vaid.dropout"``, ...), so two
    different draws of the same sample never share numbers. ``index`` is the global dataset
    index of each sample of the batch (``batch["index"]``).
    """

    def __init__(self, seed: int, step: int):
        self.seed = int(seed)
        self.step = int(step)

    def generator(self, stream: str, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(sample_seed(self.seed, self.step, stream, index))

    def _draw(self, fn, stream: str, index: torch.Tensor, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
        # Drawn on the CPU in float32 and then moved: CPU and CUDA generators differ, and the
        # numbers must not depend on the device either.
        draws = [fn(shape, generator=self.generator(stream, int(i))) for i in index.reshape(-1).tolist()]
        return torch.stack(draws).to(device=device, dtype=dtype)

    def normal(self, stream: str, index: torch.Tensor, shape: tuple[int, ...] = (), device="cpu",
               dtype=torch.float32) -> torch.Tensor:
        """Standard normal, ``[len(index), *shape]``."""
        return self._draw(torch.randn, stream, index, tuple(shape), device, dtype)

    def uniform(self, stream: str, index: torch.Tensor, shape: tuple[int, ...] = (), device="cpu",
                dtype=torch.float32) -> torch.Tensor:
        """Uniform on [0, 1), ``[len(index), *shape]``."""
        return self._draw(torch.rand, stream, index, tuple(shape), device, dtype)
