"""The demo's side-by-side video: the portrait, then the same speech with every emotion the model knows.

One row of tiles per frame: the portrait as given (still), then one column per emotion label of
the model's Mapping, each generated from the same portrait, speech and seed, so only the emotion
differs between columns. Tiles are scaled up by an integer factor (nearest neighbour) to at least
``min_tile`` pixels: the demo model is 32 px, too small to see in a player.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .emotion import EmotionSource, single


def tile_scale(size: int, min_tile: int) -> int:
    """The integer upscaling that makes a ``size`` tile at least ``min_tile`` pixels."""
    return max(1, math.ceil(min_tile / size))


def side_by_side(pipeline, image: torch.Tensor, audio, settings, out_path: str | Path, labels: list[str] | None = None,
                 min_tile: int = 128, progress=None) -> dict:
    """Write the side-by-side mp4; returns ``{"path", "labels", "frames", "tile"}``.

    ``image`` ``[1, 3, H, W]`` in 0..1, ``audio`` a :class:`pipeline.PreparedAudio`, ``settings``
    the :class:`settings.GenerationSettings` of every column.
    """
    from .media.video_writer import VideoWriter
    from .pipeline import decode_frames, fit_portrait

    settings = settings.for_model(pipeline.model)
    labels = list(labels or pipeline.vaid.mapping.labels)
    columns = []
    for index, label in enumerate(labels):
        latents, _ = pipeline.latents(image, audio, settings, single(EmotionSource("label", label)),
                                      progress=None if progress is None else _column_progress(progress, index, len(labels)))
        columns.append(torch.cat(list(decode_frames(pipeline.model, latents, settings.decode_chunk_for(pipeline.model)))))
    portrait = fit_portrait(image, settings.width, settings.height)[0].permute(1, 2, 0)
    scale = tile_scale(max(settings.width, settings.height), min_tile)
    width, height = settings.width * scale * (len(labels) + 1), settings.height * scale
    with VideoWriter(out_path, audio.fps, width, height, audio=audio.waveform, sample_rate=audio.sample_rate,
                     metadata={"comment": "EmotiveTalk demo: portrait, then " + ", ".join(labels)}) as writer:
        for frame in range(audio.num_frames):
            row = torch.cat([portrait] + [column[frame] for column in columns], dim=1)
            writer.write(_upscale(row, scale)[None])
    return {"path": Path(out_path), "labels": labels, "frames": audio.num_frames, "tile": settings.width * scale}


def _upscale(image: torch.Tensor, scale: int) -> np.ndarray:
    """``[H, W, 3]`` in 0..1 -> uint8 ``[H * scale, W * scale, 3]``, nearest neighbour (crisp pixels)."""
    pixels = image.permute(2, 0, 1)[None].float()
    big = F.interpolate(pixels, scale_factor=scale, mode="nearest")[0].permute(1, 2, 0)
    return (big.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _column_progress(progress, index: int, columns: int):
    def update(done: int, total: int) -> None:
        progress(index * total + done, columns * total)

    return update
