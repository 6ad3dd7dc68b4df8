"""Frame-wise sequence models over long sequences: overlapping chunks, crossfaded.

The V-AID lip projector runs over the whole speech; :func:`over_chunks` runs it in chunks with
context on both sides and crossfades neighbouring chunks, so memory does not grow with the length
and there is no step between chunks. (Di-CTE and the speech encoder run in their training
windows instead: ``DiCTE.sample``, ``pipeline.encode_speech``.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Long sequences through the lip projector: chunk length and the context kept on each side
# (the projector's receptive field, 9 frames, is far below it).
SEQUENCE_CHUNK = 250
SEQUENCE_CONTEXT = 50


def over_chunks(fn: Callable[[slice], torch.Tensor], total: int,
                chunk: int = SEQUENCE_CHUNK, context: int = SEQUENCE_CONTEXT) -> torch.Tensor:
    """Run a frame-sequence model over ``total`` frames in overlapping chunks.

    ``fn(frames)`` returns the outputs ``[n, ...]`` of the frames in the slice. Each chunk sees
    ``context`` extra frames on both sides, and neighbouring chunks are crossfaded linearly
    over their shared frames, so there is no step between chunks. A sequence no longer than
    ``chunk + 2 * context`` is one call.
    """
    if total <= chunk + 2 * context:
        with torch.no_grad():
            return fn(slice(0, total))
    output = weight_sum = None
    for start in range(0, total, chunk):
        lo, hi = max(0, start - context), min(total, start + chunk + context)
        with torch.no_grad():
            part = fn(slice(lo, hi))
        weight = _crossfade_weights(lo, hi, total, context).to(part.dtype)
        if output is None:
            output = part.new_zeros((total, *part.shape[1:]))
            weight_sum = part.new_zeros(total)
        output[lo:hi] += weight.view(-1, *([1] * (part.dim() - 1))) * part
        weight_sum[lo:hi] += weight
    return output / weight_sum.view(-1, *([1] * (output.dim() - 1)))


def _crossfade_weights(lo: int, hi: int, total: int, context: int) -> torch.Tensor:
    # Ramps up over the leading 2*context frames (unless at the sequence start) and down over
    # the trailing ones (unless at the end); strictly positive so every frame has weight.
    k = torch.arange(hi - lo, dtype=torch.float64)
    ramp = 2 * context
    up = torch.ones_like(k) if lo == 0 else ((k + 0.5) / ramp).clamp(max=1)
    down = torch.ones_like(k) if hi == total else ((hi - lo - k - 0.5) / ramp).clamp(max=1)
    return (up * down).float()
