"""Training options of the SynthTalk commit: per-clip emotion labels, portraits from any clip of
the video (data.reference), the learning-rate schedule, the 'base' stage in configs, ETHD's
change-weighted loss and V-AID's unconditional source."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from train_helpers import FPS, encoders_config, write_config, write_synthetic_shards

from emotivetalk_core.configs import get_config
from emotivetalk_core.train import vaid_stage
from emotivetalk_core.train.config import STAGES, ConfigError, apply_overrides, load_config, resolve_config
from emotivetalk_core.train.ethd_stage import ETHDStage, change_weights, encode_latents
from emotivetalk_core.train.loop import SteppedClips, learning_rate, train
from emotivetalk_core.train.noise import SampleNoise
from emotivetalk_core.train.shards import ClipDataset, read_shard_info
from emotivetalk_core.train.vaid_stage import VAIDStage

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

LABELS = list(get_config("tiny")["mapping"]["labels"])


# --- shards: a clip's own labels -------------------------------------------------------------

def test_a_clips_own_emotion_wins_over_its_videos(tmp_path):
    shards = write_synthetic_shards(tmp_path / "a", videos=1, clips=2, frames=4,
                                    clip_labels=[{"emotion": "sad", "intensity": 2}, {}])
    info = read_shard_info(shards / "video0.safetensors")
    assert info["emotion"] == "happy"
    assert [(clip.get("emotion"), clip.get("intensity")) for clip in info["clips"]] == [("sad", 2), (None, None)]
    data = ClipDataset(shards, 2, LABELS)  # two windows per clip
    sad, happy = LABELS.index("sad"), LABELS.index("happy")
    assert [int(data[i]["emotion"]) for i in range(len(data))] == [sad, sad, happy, happy]

    # a video with no label whose first clip has one
    shards = write_synthetic_shards(tmp_path / "b", videos=1, clips=2, frames=4, emotion=None,
                                    clip_labels=[{"emotion": "angry"}, {}])
    data = ClipDataset(shards, 2, LABELS)
    assert [int(data[i]["emotion"]) for i in range(len(data))] == [LABELS.index("angry")] * 2 + [-1] * 2


# --- shards: where the portrait comes from ---------------------------------------------------

def _frame_positions(path) -> dict[bytes, tuple[str, int]]:
    """Every frame of a shard by its bytes -> (clip, frame)."""
    tensors = load_file(str(path))
    return {frames[f].tobytes(): (name.split(".")[0], f)
            for name, frames in tensors.items() if name.endswith(".frames") for f in range(len(frames))}


def _drawn(data: ClipDataset, index: int, positions: dict, draws: int = 300) -> set[tuple[str, int]]:
    seen = set()
    for seed in range(draws):
        frame = data.outside_frame(index, torch.Generator().manual_seed(seed))
        pixels = (frame * 255).round().byte().permute(1, 2, 0).numpy()
        seen.add(positions[np.ascontiguousarray(pixels).tobytes()])  # KeyError: not a frame of the item's video
    return seen


def test_reference_video_draws_portraits_from_every_clip_of_the_video_outside_the_window(tmp_path):
    shards = write_synthetic_shards(tmp_path, videos=2, clips=3, frames=8)
    positions = _frame_positions(shards / "video0.safetensors")
    assert len(positions) == 24  # random frames: every frame is its own
    index = 3  # video0, clip0001, frames 4..7 (windows of 4 tile each clip)
    window = {("clip0001", f) for f in range(4, 8)}

    video = ClipDataset(shards, 4, reference="video")
    assert video.windows[index].clip == "clip0001" and video.windows[index].start == 4
    seen = _drawn(video, index, positions)
    assert not seen & window  # never a frame of the item's own window
    assert seen == set(positions.values()) - window  # every other frame of the video, other clips included

    clip = ClipDataset(shards, 4)  # the default: the item's own clip
    assert clip.reference == "clip"
    assert _drawn(clip, index, positions) == {("clip0001", f) for f in range(4)}

    with pytest.raises(ValueError, match="reference must be one of"):
        ClipDataset(shards, 4, reference="person")


def test_training_windows_start_anywhere_in_the_clip_and_carry_their_own_speech(tmp_path):
    shards = write_synthetic_shards(tmp_path, videos=1, clips=2, frames=10)
    tensors = load_file(str(shards / "video0.safetensors"))
    data = ClipDataset(shards, 4, reference="video")  # tiles start at 0 and 4 of each 10-frame clip
    stepped = SteppedClips(data, seed=5)
    per_frame = len(tensors["clip0000.audio"]) // 10
    starts = set()
    for step in range(60):
        item = stepped[(0, step)]
        frames = (item["frames"] * 255).round().byte().permute(0, 2, 3, 1).numpy()
        start = next(s for s in range(7) if np.array_equal(tensors["clip0000.frames"][s:s + 4], frames))
        starts.add(start)
        assert np.array_equal(item["audio"].numpy(), tensors["clip0000.audio"][start * per_frame:(start + 4) * per_frame])
        assert np.array_equal(item["lip_target"].numpy(), tensors["clip0000.lip_target"][start:start + 4])
        portrait = (item["reference"] * 255).round().byte().permute(1, 2, 0).numpy()
        inside = [np.array_equal(portrait, f) for f in tensors["clip0000.frames"][start:start + 4]]
        assert not any(inside)  # the portrait is never a frame of the window actually drawn
    assert starts == set(range(7))  # every first frame of the clip, not only the tiles' 0 and 4
    assert stepped[(0, 3)]["frames"].equal(stepped[(0, 3)]["frames"])  # seeded by (seed, step, index)
    with pytest.raises(IndexError, match="window start 7 is outside clip clip0000"):
        data.item(0, 7)


def _emotion_frames_drawn(data: ClipDataset, index: int, positions: dict, draws: int = 200) -> set:
    seen = set()
    for seed in range(draws):
        frame = data.emotion_frame(index, torch.Generator().manual_seed(seed))
        seen.add(positions[np.ascontiguousarray((frame * 255).round().byte().permute(1, 2, 0).numpy()).tobytes()])
    return seen


def test_the_emotion_image_is_another_persons_frame_with_the_same_label(tmp_path):
    """The image route must not learn to copy the target window: its emotion image comes from
    another clip with the clip's label, another person's where there is one."""
    labels = [{"emotion": "sad"}, {"emotion": "angry"}, {"emotion": "sad"}]
    two = write_synthetic_shards(tmp_path / "two", videos=2, clips=3, frames=8, clip_labels=labels)
    positions = {key: ("video0",) + where for key, where in _frame_positions(two / "video0.safetensors").items()}
    positions.update({key: ("video1",) + where for key, where in _frame_positions(two / "video1.safetensors").items()})
    data = ClipDataset(two, 4)
    assert (data.windows[0].shard, data.windows[0].clip, data.windows[0].emotion) == (0, "clip0000", "sad")
    # the other person's two sad clips, every frame of them; never the person's own
    assert _emotion_frames_drawn(data, 0, positions) == {("video1", clip, f) for clip in ("clip0000", "clip0002") for f in range(8)}

    one = write_synthetic_shards(tmp_path / "one", videos=1, clips=3, frames=8, clip_labels=labels)
    positions = _frame_positions(one / "video0.safetensors")
    # nobody else is sad: the same person's other sad clip
    assert _emotion_frames_drawn(ClipDataset(one, 4), 0, positions) == {("clip0002", f) for f in range(8)}
    # angry only once in the data: a frame of the clip itself, outside the window (frames 0..3)
    assert _emotion_frames_drawn(ClipDataset(one, 4), 2, positions) == {("clip0001", f) for f in range(4, 8)}

    unlabelled = write_synthetic_shards(tmp_path / "none", videos=2, clips=2, frames=8, emotion=None)
    positions = _frame_positions(unlabelled / "video0.safetensors")
    assert _emotion_frames_drawn(ClipDataset(unlabelled, 4), 1, positions) == {("clip0000", f) for f in range(4)}


def test_the_image_route_reads_the_augmented_emotion_image(small_shards):
    stage = VAIDStage()
    modules = stage.build(_stage_config(small_shards, "vaid", 8))
    batch = _batch(small_shards, 8, [0, 1, 2, 3])
    data = ClipDataset(small_shards, 8, LABELS)
    raw = torch.stack([data.emotion_frame(i, SampleNoise(0, 0).generator("data.emotion_image", i)) for i in range(4)])
    assert not torch.equal(batch["emotion_image"], raw)  # augmented: mirrored and/or brightness-scaled
    shown = []
    original = modules["mapping"].from_image
    modules["mapping"].from_image = lambda codes: shown.append(codes) or original(codes)
    with torch.no_grad():
        stage.loss(modules, batch, SampleNoise(0, 0))
    torch.testing.assert_close(shown[0], modules["exp_encoder"](batch["emotion_image"]).float())
    del batch["emotion_image"]
    with pytest.raises(KeyError, match="the batch has no 'emotion_image'"):
        stage.loss(modules, batch, SampleNoise(0, 0))


def test_dicte_learns_exp_codes_in_units_of_the_datas_spread_and_the_file_keeps_them(small_shards, tmp_path):
    from emotivetalk_core.bundles import load_vaid_model
    from emotivetalk_core.checkpoints import save_model_file

    stage = VAIDStage()
    config = _stage_config(small_shards, "vaid", 8)
    modules = stage.build(config)
    data = ClipDataset(small_shards, 8, LABELS)
    with torch.no_grad():
        codes = torch.cat([modules["exp_encoder"](data[i]["frames"]) for i in range(len(data))]).double()
    dicte = modules["dicte"]
    torch.testing.assert_close(dicte.code_mean, codes.mean(dim=0).float())
    torch.testing.assert_close(dicte.code_std, codes.std(dim=0, correction=0).float())
    assert float(codes.std(dim=0).mean()) < 0.2  # what normalising is for: codes far narrower than the unit noise

    path = save_model_file(tmp_path / "vaid.safetensors", stage.export(modules, config), {"trained": True, **stage.export_info(modules, config)})
    loaded = load_vaid_model(path).dicte
    torch.testing.assert_close(loaded.code_mean, dicte.code_mean)
    torch.testing.assert_close(loaded.code_std, dicte.code_std)
    resumed = VAIDStage().build({**config, "init": {**config["init"], "vaid": str(path)}})["dicte"]  # init.vaid keeps the file's
    torch.testing.assert_close(resumed.code_std, dicte.code_std)


# --- config ----------------------------------------------------------------------------------

def _raw(tmp_path, **train) -> dict:
    return encoders_config(tmp_path / "shards", tmp_path / "run", **train)


def test_data_reference_defaults_to_clip_and_refuses_other_values(tmp_path):
    raw = _raw(tmp_path)
    assert resolve_config(raw)["data"]["reference"] == "clip"
    raw["data"]["reference"] = "video"
    assert resolve_config(raw)["data"]["reference"] == "video"
    raw["data"]["reference"] = "frame"
    with pytest.raises(ConfigError, match=r"data.reference must be one of \['clip', 'video'\], got 'frame'"):
        resolve_config(raw)


def test_lr_schedule_and_lr_min_are_validated(tmp_path):
    train_cfg = resolve_config(_raw(tmp_path))["train"]
    assert (train_cfg["lr_schedule"], train_cfg["lr_min"]) == ("constant", 0.0)
    cosine = resolve_config(_raw(tmp_path, lr_schedule="cosine", lr_min=1e-5))["train"]
    assert (cosine["lr_schedule"], cosine["lr_min"]) == ("cosine", 1e-5)
    for train_settings, message in [({"lr_schedule": "linear"}, "train.lr_schedule must be one of ['constant', 'cosine']"),
                                    ({"lr_min": -1e-4}, "train.lr_min must be a non-negative number"),
                                    ({"lr_min": "0"}, "train.lr_min must be a non-negative number"),
                                    ({"lr_min": True}, "train.lr_min must be a non-negative number")]:
        with pytest.raises(ConfigError) as error:
            resolve_config(_raw(tmp_path, **train_settings))
        assert message in str(error.value)
    config = resolve_config(_raw(tmp_path))
    config["train"]["lr_schedule"] = "step"
    with pytest.raises(ConfigError, match="train.lr_schedule"):
        apply_overrides(config, steps=2)  # the command line's overrides re-validate


def test_a_base_stage_in_a_multi_stage_file_feeds_ethds_init_base(tmp_path):
    from emotivetalk_core.train.cli import build_parser

    assert STAGES == ("base", "encoders", "vaid", "ethd", "distill")
    assert build_parser().parse_args(["base", "--config", "all.json"]).command == "base"
    raw = {"model": "tiny", "data": {"shards": "shards", "window": 8}, "output": "runs",
           "train": {"steps": 10, "batch_size": 2, "lr": 1e-3},
           "stages": {"base": {"data": {"window": 2, "reference": "video"}}, "encoders": {}, "vaid": {},
                      "ethd": {"ethd": {"train_unet": True}}}}
    path = write_config(tmp_path / "all.json", raw)
    base = load_config(path, stage="base")
    assert base["stage"] == "base" and base["output"] == str(tmp_path / "runs" / "base")
    assert base["data"]["window"] == 2 and base["data"]["reference"] == "video" and base["init"]["base"] is None
    ethd = load_config(path, stage="ethd")
    assert ethd["init"]["base"] == str(tmp_path / "runs" / "base" / "export" / "base.safetensors")
    assert ethd["init"]["encoders"] == str(tmp_path / "runs" / "encoders" / "export" / "encoders.safetensors")
    assert load_config(path, stage="vaid")["init"]["base"] is None  # only ETHD uses the base
    raw["stages"]["ethd"]["init"] = {"base": "mine.safetensors"}
    explicit = load_config(write_config(tmp_path / "explicit.json", raw), stage="ethd")
    assert explicit["init"]["base"] == str(tmp_path / "mine.safetensors")
    del raw["stages"]["base"], raw["stages"]["ethd"]["init"]
    assert load_config(write_config(tmp_path / "no_base.json", raw), stage="ethd")["init"]["base"] is None


# --- learning-rate schedule ------------------------------------------------------------------

def _schedule(**changes) -> dict:
    return {"lr": 1e-3, "lr_warmup": 4, "lr_schedule": "constant", "lr_min": 1e-4, "steps": 20, **changes}


def test_constant_schedule_is_linear_warmup_then_constant():
    train_cfg = _schedule()
    old = [1e-3 * min(1.0, (step + 1) / 4) for step in range(30)]  # the loop's formula before the schedules
    assert [learning_rate(train_cfg, step) for step in range(30)] == pytest.approx(old, rel=1e-12)
    assert [learning_rate(train_cfg, step) for step in (0, 1, 3, 4, 19, 25)] == pytest.approx(
        [2.5e-4, 5e-4, 1e-3, 1e-3, 1e-3, 1e-3], rel=1e-12)  # lr_min plays no part
    assert {learning_rate(_schedule(lr_warmup=0), step) for step in range(25)} == {1e-3}


def test_cosine_schedule_warms_up_then_falls_from_lr_to_lr_min_at_steps():
    train_cfg = _schedule(lr_schedule="cosine")
    expected = {0: 2.5e-4, 3: 1e-3, 4: 1e-3, 8: 1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi / 4)),
                12: 5.5e-4, 16: 1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(3 * math.pi / 4)), 20: 1e-4, 30: 1e-4}
    for step, value in expected.items():
        assert learning_rate(train_cfg, step) == pytest.approx(value, rel=1e-12), step
    after_warmup = [learning_rate(train_cfg, step) for step in range(4, 21)]
    assert all(a > b for a, b in zip(after_warmup, after_warmup[1:], strict=False))
    no_warmup = _schedule(lr_schedule="cosine", lr_warmup=0, lr_min=0.0, steps=10)
    assert learning_rate(no_warmup, 0) == pytest.approx(1e-3) and learning_rate(no_warmup, 5) == pytest.approx(5e-4)
    assert learning_rate(no_warmup, 10) == pytest.approx(0.0, abs=1e-15)


def test_a_run_trains_with_the_scheduled_learning_rate(tmp_path):
    shards = write_synthetic_shards(tmp_path / "shards", videos=1, clips=2, frames=4)
    config = resolve_config(encoders_config(shards, tmp_path / "run", steps=6, lr_warmup=2, lr_schedule="cosine",
                                            lr_min=1e-4, checkpoint_every=6))
    run = train(config)
    logged = [json.loads(line) for line in (run / "logs" / "losses.jsonl").read_text().splitlines()]
    # the rate logged at step s is the one its optimizer step used (step s - 1 counted from 0)
    assert [entry["lr"] for entry in logged] == pytest.approx([learning_rate(config["train"], s) for s in range(6)])
    assert [entry["lr"] for entry in logged][:2] == pytest.approx([5e-4, 1e-3])
    assert logged[-1]["lr"] < 0.3e-3


# --- ETHD: the change-weighted loss ----------------------------------------------------------

def test_change_weights_have_mean_one_per_clip_and_grow_with_the_change_from_the_portrait():
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(3, 1, 4, 5, 5, generator=g)
    x0 = reference.expand(-1, 6, -1, -1, -1).clone()
    mouth = torch.randn(3, 6, 4, 2, 2, generator=g).abs() + 0.5  # a moving "mouth"
    mouth[1] *= 3  # a clip that changes more
    x0[:, :, :, 1:3, 1:3] += mouth
    weight = change_weights(x0, reference, 8.0)
    assert weight.shape == (3, 6, 1, 5, 5)
    torch.testing.assert_close(weight.mean(dim=(1, 2, 3, 4)), torch.ones(3))
    changed = torch.zeros(5, 5, dtype=torch.bool)
    changed[1:3, 1:3] = True
    for clip in range(3):
        inside, outside = weight[clip, :, 0][:, changed], weight[clip, :, 0][:, ~changed]
        assert inside.min() > 2 * outside.max()
        torch.testing.assert_close(outside, torch.full_like(outside, float(outside[0, 0])))  # unchanged: all alike
    # where the change is larger, so is the weight (mean over channels of |x0 - portrait|)
    change = (x0 - reference).abs().mean(dim=2, keepdim=True)
    order = change[0].flatten().argsort()
    assert torch.all(weight[0].flatten()[order].diff() >= -1e-6)
    torch.testing.assert_close(change_weights(x0, reference, 0.0), torch.ones_like(weight))


def test_motion_weights_mark_the_moving_mouth_in_frames_that_match_the_portrait_too():
    g = torch.Generator().manual_seed(1)
    reference = torch.randn(2, 1, 4, 5, 5, generator=g)
    x0 = reference.expand(-1, 6, -1, -1, -1).clone()
    x0[:, 1::2, :, 1:3, 1:3] += 1.5  # the mouth opens in odd frames and closes (as in the portrait) in even ones
    closed, mouth = slice(0, None, 2), (slice(1, 3), slice(1, 3))
    change_only = change_weights(x0, reference, 8.0)
    with_motion = change_weights(x0, reference, 8.0, motion=8.0)
    torch.testing.assert_close(with_motion.mean(dim=(1, 2, 3, 4)), torch.ones(2))
    # change from the portrait alone: a closed mouth weighs what the background weighs
    torch.testing.assert_close(change_only[:, closed, 0, mouth[0], mouth[1]].amax(), change_only[:, closed, 0, 0, 0].amax())
    # with the motion term the closed mouth weighs more than twice the background, in every frame
    assert with_motion[:, closed, 0, mouth[0], mouth[1]].amin() > 2 * with_motion[:, :, 0, 0, 0].amax()
    still = reference.expand(-1, 6, -1, -1, -1)  # nothing moves: the motion term adds nothing
    torch.testing.assert_close(change_weights(still, reference, 0.0, motion=8.0), torch.ones(2, 6, 1, 5, 5))


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    """32 px random faces: 2 videos x 2 clips x 16 frames (so an 8-frame window has a portrait outside it)."""
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"), videos=2, clips=2, frames=16)


def _stage_config(shards, stage: str, window: int, options: dict | None = None) -> dict:
    return {"stage": stage, "model": get_config("tiny"), "data": {"shards": str(shards), "window": window, "labels": LABELS},
            "init": {"encoders": None, "vaid": None, "base_svd": None, "speech_encoder": None},
            "train": {}, stage: dict(options or {})}


def _batch(shards, window: int, indices: list[int], step: int = 0) -> dict:
    data = SteppedClips(ClipDataset(shards, window, LABELS), seed=0)
    return torch.utils.data.default_collate([data[(index, step)] for index in indices])


def test_ethd_loss_weights_the_error_by_the_change_from_the_portrait(small_shards):
    torch.manual_seed(0)
    stage = ETHDStage()
    modules = stage.build(_stage_config(small_shards, "ethd", 8))
    batch, noise = _batch(small_shards, 8, [0, 3]), SampleNoise(0, 2)
    assert not any(torch.equal(batch["reference"][i], batch["frames"][i, 0]) for i in range(2))
    ethd, outputs = modules["ethd"], []
    original = ethd.forward

    def record(*args):
        outputs.append(original(*args))
        return outputs[-1]

    ethd.forward = record
    losses = {}
    try:
        with torch.no_grad():
            for strength, motion in ((0.0, 0.0), (8.0, 0.0), (8.0, 8.0)):
                stage.options["change_weight"], stage.options["motion_weight"] = strength, motion
                losses[strength, motion] = stage.loss(modules, batch, noise)["loss"]
    finally:
        del ethd.forward
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)  # the weight changes the loss, not the network
    torch.testing.assert_close(outputs[0], outputs[2], rtol=0, atol=0)
    # The v-prediction error by hand (EDM, SVD's noise-level distribution; see test_train_stages).
    index = batch["index"]
    with torch.no_grad():
        x0 = encode_latents(modules["vae"], batch["frames"])
        portrait = encode_latents(modules["vae"], batch["reference"][:, None])
    sigma = (0.7 + 1.6 * noise.normal("ethd.sigma", index)).exp().view(-1, 1, 1, 1, 1)
    epsilon = noise.normal("ethd.noise", index, tuple(x0.shape[1:]))
    error = (outputs[0].float() - (epsilon - sigma * x0) / (sigma**2 + 1).sqrt()).square()
    torch.testing.assert_close(losses[0.0, 0.0], error.mean(), rtol=1e-5, atol=0)  # no weights: the plain mean
    for strength, motion in ((8.0, 0.0), (8.0, 8.0)):
        weighted = (change_weights(x0, portrait, strength, motion) * error).mean(dim=(1, 2, 3, 4)).mean()
        torch.testing.assert_close(losses[strength, motion], weighted, rtol=1e-5, atol=0)
    assert abs(float(losses[8.0, 0.0] / losses[0.0, 0.0]) - 1) > 1e-3
    assert abs(float(losses[8.0, 8.0] / losses[8.0, 0.0]) - 1) > 1e-4
    with pytest.raises(ValueError, match="ethd.change_weight must be >= 0"):
        ETHDStage().build(_stage_config(small_shards, "ethd", 8, {"change_weight": -1.0}))
    with pytest.raises(ValueError, match="ethd.motion_weight must be >= 0"):
        ETHDStage().build(_stage_config(small_shards, "ethd", 8, {"motion_weight": -1.0}))


def test_ethd_conditions_on_the_datas_fps_and_each_clips_own_motion(small_shards):
    """SVD's fps id is the data's fps - 1 whatever the preset says (svd-xt's says 6), and the motion
    bucket follows each clip's motion (127 at the data's median) instead of 127 for every clip."""
    config = _stage_config(small_shards, "ethd", 8)
    config["model"]["ethd"]["fps_id"] = 6
    stage = ETHDStage()
    modules = stage.build(config)
    data = ClipDataset(small_shards, 8, LABELS)
    motions = [float((data[i]["frames"][1:] - data[i]["frames"][:-1]).abs().mean()) for i in range(len(data))]
    assert stage.settings["fps_id"] == FPS - 1 == 24
    assert stage.settings["motion_reference"] == pytest.approx(float(np.median(motions)), rel=1e-6)

    batch = _batch(small_shards, 8, [0, 1, 2])
    batch["frames"][0] = batch["frames"][0, :1]  # a still clip
    batch["frames"][2, 1::2] = batch["frames"][2, 0::2]  # frames in pairs: half the changes
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    ids = stage.conditioning(modules, batch, generators).added_time_ids
    clip_motion = (batch["frames"][:, 1:] - batch["frames"][:, :-1]).abs().mean(dim=(1, 2, 3, 4))
    expected = (127 * clip_motion / stage.settings["motion_reference"]).round().clamp(0, 255)
    assert ids[:, 0].tolist() == [24.0] * 3
    assert ids[:, 1].tolist() == expected.tolist()
    assert ids[0, 1] == 0 and 100 < ids[1, 1] < 160 and ids[2, 1] < ids[1, 1]


# --- V-AID: the unconditional condition's source ---------------------------------------------

def _dicte_unconds(stage, modules, batch, noise, monkeypatch) -> torch.Tensor:
    """The unconditional condition the stage hands to Di-CTE's loss."""
    seen = []
    original = vaid_stage.dicte_loss

    def record(dicte, e_v, speech, identity, condition, uncond, *rest):
        seen.append(uncond)
        return original(dicte, e_v, speech, identity, condition, uncond, *rest)

    monkeypatch.setattr(vaid_stage, "dicte_loss", record)
    with torch.no_grad():
        stage.loss(modules, batch, noise)
    monkeypatch.setattr(vaid_stage, "dicte_loss", original)
    return seen[0]


def test_vaid_uncond_source_clip_takes_a_frame_of_the_window_reference_the_portrait(small_shards, monkeypatch):
    window = 4
    batch = _batch(small_shards, window, list(range(8)))  # every window of the data
    for source in ("reference", "clip"):
        torch.manual_seed(0)
        stage = VAIDStage()
        modules = stage.build(_stage_config(small_shards, "vaid", window, {"uncond_source": source}))
        with torch.no_grad():
            portrait = modules["exp_encoder"](batch["reference"]).float()
            frames = modules["exp_encoder"](batch["frames"].flatten(0, 1)).float().unflatten(0, (8, window))
        picks = []
        for step in range(3):
            uncond = _dicte_unconds(stage, modules, batch, SampleNoise(0, step), monkeypatch)
            if source == "reference":
                torch.testing.assert_close(uncond, portrait, rtol=0, atol=1e-6)
                continue
            distance = (uncond[:, None] - frames).abs().amax(dim=-1)  # [B, T]
            assert distance.min(dim=1).values.max() < 1e-6  # each clip's is the code of a frame of its window
            assert ((uncond - portrait).abs().amax(dim=-1) > 1e-4).all()  # not the portrait's
            picks.extend(distance.argmin(dim=1).tolist())
        if source == "clip":
            assert len(set(picks)) == window  # a random frame, not always the same one
    with pytest.raises(ValueError, match="vaid.uncond_source must be one of"):
        VAIDStage().build(_stage_config(small_shards, "vaid", window, {"uncond_source": "video"}))
