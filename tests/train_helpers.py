"""Shared pieces of the training tests: synthetic shards and tiny configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emotivetalk_core.train.shards import write_shard

SIZE = 32
FPS = 25
SAMPLE_RATE = 16000
LIP_DIM, EXP_DIM = 3, 4


def _learnable_clip(rng: np.random.Generator, frames: int, size: int) -> dict:
    """Faces whose targets are a fixed function of the pixels: the mouth patch's colour is the
    lip target, the brow patch's colour (and one contrast) the expression target, the disc the mask."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    images, masks, lips, exps = [], [], [], []
    for _ in range(frames):
        image = 0.2 + 0.1 * rng.random((size, size, 3))
        radius = rng.uniform(0.3, 0.45)
        disc = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < radius ** 2
        image[disc] = np.array([0.75, 0.55, 0.45]) + 0.05 * rng.standard_normal(3)
        mouth, brow = rng.random(3), rng.random(3)
        image[round(0.62 * size):round(0.82 * size), round(0.38 * size):round(0.62 * size)] = mouth
        image[round(0.28 * size):round(0.42 * size), round(0.3 * size):round(0.7 * size)] = brow
        images.append(image)
        masks.append(disc)
        lips.append(mouth * 2 - 1)
        exps.append(np.append(brow * 2 - 1, brow[0] - brow[1]))
    return {
        "frames": (np.clip(np.stack(images), 0, 1) * 255).round().astype(np.uint8),
        "mask": np.stack(masks).astype(np.uint8) * 255,
        "lip_target": np.stack(lips).astype(np.float32),
        "exp_target": np.stack(exps).astype(np.float32),
    }


def _random_clip(rng: np.random.Generator, frames: int, size: int) -> dict:
    return {
        "frames": rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8),
        "mask": (rng.random((frames, size, size)) > 0.5).astype(np.uint8) * 255,
        "lip_target": rng.standard_normal((frames, LIP_DIM)).astype(np.float32),
        "exp_target": rng.standard_normal((frames, EXP_DIM)).astype(np.float32),
    }


def write_synthetic_shards(root: Path, videos: int = 2, clips: int = 2, frames: int = 8, learnable: bool = False,
                           seed: int = 0, size: int = SIZE, emotion: str | None = "happy",
                           clip_labels: list[dict] | None = None) -> Path:
    """``videos`` shards of ``clips`` clips each under ``root``; returns ``root``. ``emotion`` is
    every shard's label; ``clip_labels[k]`` (e.g. ``{"emotion": "sad", "intensity": 2}``) is
    written into clip ``k`` of every shard (a clip's own labels)."""
    rng = np.random.default_rng(seed)
    make = _learnable_clip if learnable else _random_clip
    per_frame = SAMPLE_RATE // FPS
    for video in range(videos):
        items = []
        for _ in range(clips):
            clip = make(rng, frames, size)
            clip["audio"] = (0.1 * rng.standard_normal(frames * per_frame)).astype(np.float32)
            clip["box"] = np.tile(np.array([0, 0, size, size], np.float32), (frames, 1))
            if clip_labels:
                clip.update(clip_labels[len(items)])
            items.append(clip)
        info = {"source": f"video{video}.mp4", "identity": f"person{video}", "emotion": emotion, "level": None,
                "fps": FPS, "sample_rate": SAMPLE_RATE, "size": size,
                "targets": {"tool": "synthetic", "lip_dim": LIP_DIM, "exp_dim": EXP_DIM}}
        write_shard(Path(root) / f"video{video}.safetensors", items, info)
    return Path(root)


def encoders_config(shards: Path, output: Path, **train) -> dict:
    """A raw (unresolved) tiny encoders config."""
    settings = {"seed": 3, "steps": 4, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 2, "log_every": 1,
                "ema_decay": 0.9, **train}
    return {"stage": "encoders", "model": "tiny", "data": {"shards": str(shards), "window": 2},
            "train": settings, "output": str(output)}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config, indent=1))
    return path
