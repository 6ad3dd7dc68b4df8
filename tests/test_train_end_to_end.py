"""Videos made from a real photo -> preprocess -> encoders -> vaid -> ethd -> export -> the
inference pipeline loads the file and writes an mp4 as long as the speech. All through the
training command line (in process), tiny models, a handful of steps per stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_helpers import write_config
from video_fixtures import make_talking_video, mead_path

from emotivetalk_core.checkpoints import read_metadata
from emotivetalk_core.emotion import EmotionSource, single
from emotivetalk_core.media.video_reader import probe
from emotivetalk_core.pipeline import (
    EmotiveTalkPipeline,
    prepare_audio,
)
from emotivetalk_core.settings import GenerationSettings
from emotivetalk_core.train.cli import main
from emotivetalk_core.train.shards import ClipDataset

SIZE = 64
STEPS = 3
pytestmark = pytest.mark.usefixtures("one_thread")




def _config(shards, runs) -> dict:
    train = {"seed": 1, "steps": STEPS, "batch_size": 2, "lr": 1e-3, "checkpoint_every": STEPS, "log_every": 1,
             "sample_every": STEPS}
    return {
        "model": "tiny",
        "data": {"shards": str(shards)},
        "output": str(runs),
        "train": train,
        "stages": {
            "encoders": {"data": {"window": 4}},
            "vaid": {"data": {"window": 16}, "vaid": {"sample_steps": 2}},
            "ethd": {"ethd": {"sample_steps": 2}},
        },
    }


def test_videos_to_a_generated_talking_head(tmp_path):
    videos, data, runs = tmp_path / "videos", tmp_path / "data", tmp_path / "runs"
    make_talking_video(mead_path(videos, "M003", "happy", 1, 1), seconds=2.0, seed=0)
    make_talking_video(mead_path(videos, "M004", "angry", 2, 1), seconds=2.0, seed=1, face_offset=(-0.1, 0.0))
    assert main(["preprocess", "--videos", str(videos), "--out", str(data), "--size", str(SIZE),
                 "--min-clip-seconds", "0.8", "--targets", "fallback"]) == 0
    assert len(list((data / "shards").glob("*.safetensors"))) == 2

    config = write_config(tmp_path / "tiny.json", _config(data, runs))
    for stage in ("encoders", "vaid", "ethd"):
        assert main([stage, "--config", str(config)]) == 0, stage
        configs, info = read_metadata(runs / stage / "export" / f"{stage}.safetensors")
        assert info["trained"] is True and info["steps"] == STEPS
        assert any((runs / stage / "samples" / f"step-{STEPS:06d}").iterdir()), f"{stage} wrote no sample"
        losses = [json.loads(line)["loss"] for line in (runs / stage / "logs" / "losses.jsonl").read_text().splitlines()]
        assert len(losses) == STEPS and all(np.isfinite(losses))

    model = tmp_path / "model.safetensors"
    assert main(["export", "--runs", *(str(runs / stage) for stage in ("encoders", "vaid", "ethd")),
                 "--out", str(model)]) == 0
    configs, info = read_metadata(model)
    assert {"unet", "adapter", "vae", "image_encoder", "lip_projector", "dicte", "lip_encoder", "exp_encoder",
            "identity_encoder", "face_processor", "mapping"} <= set(configs)
    assert info["trained"] is True and info["self_contained"] is True
    assert str(data) in info["note"] and f"ethd {STEPS} steps" in info["note"]
    assert configs["adapter"]["ethd"]["clip_frames"] == 8  # the training window is the inference window

    pipeline = EmotiveTalkPipeline.from_files(checkpoint=model)
    assert pipeline.trained
    portrait = ClipDataset(data / "shards", 1)[0]["frames"]  # [1, 3, S, S]: a face crop of the real photo
    seconds = 1.3
    rate = 16000
    time = np.arange(int(seconds * rate)) / rate
    speech = (0.3 * np.sin(2 * np.pi * 180 * time) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * time))).astype(np.float32)
    audio = prepare_audio(torch.from_numpy(speech), rate, 25)
    settings = GenerationSettings(width=SIZE, height=SIZE, steps=2, dicte_steps=2, seed=5)
    result = pipeline.generate_to_file(portrait, audio, tmp_path / "talking.mp4", settings,
                                       single(EmotionSource("label", "happy"), 1.0))
    video = probe(tmp_path / "talking.mp4")
    assert video["frames"] == audio.num_frames == result.num_frames == 33  # ceil(1.3 s x 25 fps)
    assert abs(video["duration"] - seconds) <= 1 / 25 and abs(video["audio_duration"] - video["duration"]) <= 1 / 25
    assert "UNTRAINED" not in result.metadata["comment"]

