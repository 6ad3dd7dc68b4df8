"""VAE Decoder box: SVD's temporal decoder over latents of any length, in overlapping chunks.

SVD's decoder has 3D (temporal) convolutions, so decoding independent chunks would leave a seam
at every chunk boundary. Chunks overlap, and the overlapping frames are crossfaded linearly from
the earlier chunk to the later one. Frames are yielded as soon as no later chunk can change
them, so a caller streaming into a video file never holds more than one chunk of decoded frames.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from ..memory import is_out_of_memory, release_cached_memory
from ..placement import placement

log = logging.getLogger(__name__)


def chunk_starts(num_frames: int, chunk: int, overlap: int) -> list[int]:
    """Start frames of overlapping chunks covering ``num_frames``; the last chunk ends at the end."""
    if chunk < 1 or not 0 <= overlap < chunk:
        raise ValueError(f"need chunk >= 1 and 0 <= overlap < chunk, got chunk={chunk}, overlap={overlap}")
    if num_frames <= chunk:
        return [0]
    stride = chunk - overlap
    starts = list(range(0, num_frames - chunk, stride))
    return starts + [num_frames - chunk]


def to_vae_space(vae, latents: torch.Tensor) -> torch.Tensor:
    """The sampler's latents (the VAE's latent times its ``scaling_factor``, the space ETHD trains
    and samples in) -> the VAE's own latent space: ComfyUI's LATENT convention, which every
    latent outside the sampler follows (core VAE Decode decodes it as it is; core's model
    wrappers apply the factor on the way into the UNet)."""
    return latents / vae.config.scaling_factor


def decode_latents(vae, latents: torch.Tensor, chunk: int = 14, overlap: int = 4) -> Iterator[torch.Tensor]:
    """Decode latents ``[N, 4, h, w]`` in the VAE's own space (ComfyUI's LATENT convention).

    Yields frame blocks ``[n, H, W, 3]`` in 0..1 on the host, in order, N frames in all. When a
    chunk runs out of memory, the rest is decoded in chunks half as long (down to 2 frames)
    rather than losing latents that took minutes to sample; each retry is logged.
    """
    num_frames = latents.shape[0]
    chunk_starts(num_frames, chunk, overlap)  # refuses a bad chunk or overlap up front
    offset, pending = 0, None  # pending: decoded frames from ``offset`` on that await a crossfade
    while True:
        starts = [offset + start for start in chunk_starts(num_frames - offset, chunk, overlap)]
        for index, start in enumerate(starts):
            try:
                frames = _decode(vae, latents[start:start + chunk])
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                chunk, overlap = _smaller_chunk(chunk, overlap, error)
                break
            if pending is not None:
                ramp = torch.linspace(0, 1, len(pending) + 2, dtype=frames.dtype)[1:-1].view(-1, 1, 1, 1)
                frames[: len(pending)] = (1 - ramp) * pending + ramp * frames[: len(pending)]
            if index + 1 == len(starts):
                yield frames
                return
            # Everything before the next chunk's start is final; the rest waits for the crossfade.
            final = starts[index + 1] - start
            yield frames[:final]
            offset, pending = starts[index + 1], frames[final:]
        if pending is not None and len(pending) > overlap:
            # The shorter chunks cannot cover every frame waiting for its crossfade: the earlier
            # ones are final as the previous chunk decoded them.
            cut = len(pending) - overlap
            yield pending[:cut]
            offset, pending = offset + cut, (pending[cut:] if overlap else None)


def _smaller_chunk(chunk: int, overlap: int, error: BaseException) -> tuple[int, int]:
    if chunk <= 2:
        raise MemoryError(f"out of memory decoding even {chunk} frames at a time ({error}); free memory on the "
                          "device (close other models or workflows) or decode at a smaller size") from error
    smaller = max(2, chunk // 2)
    log.warning("out of memory decoding %d frames at a time; retrying in chunks of %d", chunk, smaller)
    release_cached_memory()
    return smaller, min(overlap, smaller - 1)


def _decode(vae, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        images = vae.decode(latents.to(**placement(vae)), num_frames=latents.shape[0]).sample
    return ((images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu()
