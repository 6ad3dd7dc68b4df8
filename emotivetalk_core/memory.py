"""Running out of memory: what counts as it, and giving cached memory back before a retry.

Sampling (a smaller UNet batch) and decoding (shorter VAE chunks) both retry smaller rather
than lose minutes of work; they share this one definition so an allocation failure that one
of them survives, the other survives too.
"""

from __future__ import annotations

import torch


def is_out_of_memory(error: BaseException) -> bool:
    """A device or host allocation failure: CUDA and MPS raise ``torch.OutOfMemoryError``, the
    CPU allocator a ``RuntimeError`` ("can't allocate memory")."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in message or "out of memory" in message)


def release_cached_memory() -> None:
    """Hand the caching allocator's free blocks back, so a smaller retry can use them."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()
