"""VAE Decoder box: SVD's temporal decoder over latents of any length, in overlapping chunks.

SVD's decoder has 3D (temporal) convolutions, so decoding independent chunks would leave a seam
at every chunk boundary. Chunks overlap, and the overlapping frames are crossfaded linearly from
the earlier chunk to the later one. Frames are yielded as soon as no later chunk can change
them, so a caller streaming into a video file never holds more than one chunk of decoded frames.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def chunk_starts(num_frames: int, chunk: int, overlap: int) -> list[int]:
    """Start frames of overlapping chunks covering ``num_frames``; the last chunk ends at the end."""
    if chunk < 1 or not 0 <= overlap < chunk:
        raise ValueError(f"need chunk >= 1 and 0 <= overlap < chunk, got chunk={chunk}, overlap={overlap}")
    if num_frames <= chunk:
        return [0]
    stride = chunk - overlap
    starts = list(range(0, num_frames - chunk, stride))
    return starts + [num_frames - chunk]


def decode_latents(vae, latents: torch.Tensor, chunk: int = 14, overlap: int = 4) -> Iterator[torch.Tensor]:
    """Decode raw SVD latents ``[N, 4, h, w]`` (not yet divided by the scaling factor).

    Yields frame blocks ``[n, H, W, 3]`` in 0..1 on the host, in order, N frames in all.
    """
    num_frames = latents.shape[0]
    starts = chunk_starts(num_frames, chunk, overlap)
    pending = None  # the previous chunk's frames that the current chunk decodes again
    for index, start in enumerate(starts):
        frames = _decode(vae, latents[start:start + chunk])
        if pending is not None:
            ramp = torch.linspace(0, 1, len(pending) + 2, dtype=frames.dtype)[1:-1].view(-1, 1, 1, 1)
            frames[: len(pending)] = (1 - ramp) * pending + ramp * frames[: len(pending)]
        if index + 1 == len(starts):
            yield frames
            return
        # Everything before the next chunk's start is final; the rest waits for the crossfade.
        final = starts[index + 1] - start
        yield frames[:final]
        pending = frames[final:]


def _decode(vae, latents: torch.Tensor) -> torch.Tensor:
    param = next(vae.parameters())
    scaled = latents.to(device=param.device, dtype=param.dtype) / vae.config.scaling_factor
    with torch.no_grad():
        images = vae.decode(scaled, num_frames=scaled.shape[0]).sample
    return ((images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu()
