"""Where a module runs: the device and dtype of its weights, so that its inputs can follow them."""

from __future__ import annotations

import torch


def placement(module: torch.nn.Module) -> dict:
    """``{"device", "dtype"}`` for ``tensor.to(**placement(module))``: the device of the module's
    first parameter (else buffer; else the CPU) and the dtype of its first floating-point
    parameter (else float32: integer buffers say nothing about what the module computes in)."""
    weights = [*module.parameters(), *module.buffers()]
    device = weights[0].device if weights else torch.device("cpu")
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    return {"device": device, "dtype": dtype}
