"""Train SynthTalk's judge and write emotivetalk_core/synth/judge.safetensors.

The judge (``emotivetalk_core/synth/judge.py``) learns to read a face's parameters from renders
made on the fly at the world's size (``world.SIZE``, 32 px): random identities, random per-frame
parameters covering a little more than the world's ranges, and degraded inputs (pixel noise,
blur, brightness/contrast, 4:2:0 chroma) so that reading generated frames is limited by the
frames, not by the judge. Training identities have even seeds, every evaluation identity an odd
one. Afterwards it measures (and stores in the file's metadata) its accuracy on held-out renders,
clean and degraded, and how well it tells the emotions apart on portraits and on short speaking
clips.

    python scripts/make_synth_judge.py [--steps N] [--seed S] [--out PATH]

Deterministic for a seed up to CPU thread nondeterminism; runs single-threaded, about 15 minutes
of training and 1 of evaluation on a busy 2-core machine. eye_open was still improving at the
end (held-out r 0.873 at step 3000, 0.886 at 4500), so more steps would read it a little better.
The speaking clips need eSpeak NG (``espeakng-loader``, a development requirement).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotivetalk_core.synth import world  # noqa: E402
from emotivetalk_core.synth.judge import (  # noqa: E402
    DEFAULT_JUDGE_PATH, JUDGED, Judge, emotion_strength, judge_frames, judged_emotion, save_judge,
)
from emotivetalk_core.synth.render import render  # noqa: E402

SEED = 20250704
STEPS = 4500
BATCH = 64
LEARNING_RATE = 2e-3
# Renders are kept in a pool and each is seen a few times under different degradations: rendering
# (about 0.6 ms a frame at 32 px) would otherwise cost a third of the training time.
POOL = 8192
FRESH_PER_STEP = 32
FRAMES_PER_IDENTITY = 8
# Share of frames without a blink (the world blinks for 5 frames every 2-4.5 s) and share of each
# expression parameter at rest (see random_params).
NO_BLINK = 0.9
AT_REST = 0.4
# Held-out renders whose accuracy is printed during training.
WATCHED = 256
# Evaluation sizes.
HELD_OUT_RENDERS = 2000
PORTRAITS_PER_EMOTION = 100
CLIPS_PER_CELL = 40   # clips per (emotion, intensity)
CLIP_FRAMES = 25
CLIP_INTENSITIES = (0.5, 1.0, 1.5)
# The "noisy" evaluation condition; blur in pixels at world.SIZE (half the 64 px judge's 1.0: the
# same blur on the face).
EVAL_NOISE, EVAL_BLUR = 0.1, 0.5
# Training blur sigmas reach this (pixels at world.SIZE), a little beyond EVAL_BLUR.
MAX_BLUR = 0.6


def training_identity(rng: np.random.Generator) -> world.Identity:
    return world.identity(2 * int(rng.integers(2**30)))


def held_out_identity(rng: np.random.Generator) -> world.Identity:
    return world.identity(2 * int(rng.integers(2**30)) + 1)


def random_params(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """Per-frame parameters, independent of each other (so the judge cannot lean on the emotions'
    correlations), each spread a little beyond the world's range but, like the world's, often at
    rest: a frame the renders leave ambiguous (eyes under lowered brows) is then read near rest,
    not at the middle of the wide range. Blinks are rare, as in the world, and head motion is the
    world's."""
    def spread(low, high, rest_share, rest_std):
        return np.where(rng.random(count) < rest_share, rest_std * rng.standard_normal(count), rng.uniform(low, high, count))

    params = {
        "mouth_open": np.abs(spread(0.0, 1.2, AT_REST, 0.03)), "mouth_width": spread(-1.0, 1.0, AT_REST, 0.1),
        **{name: spread(-1.6, 1.6, AT_REST, 0.12) for name in ("smile", "brow_raise", "brow_tilt", "eye_open")},
        "blink": spread(0.0, 1.0, NO_BLINK, 0.0), "blush": spread(0.0, 1.6, 0.5, 0.0),
        "head_x": rng.uniform(-0.05, 0.05, count), "head_y": rng.uniform(-0.04, 0.04, count),
        "head_tilt": rng.uniform(-0.08, 0.08, count),
    }
    return {name: values.astype(np.float32) for name, values in params.items()}


def render_random(rng: np.random.Generator, count: int, identity_of) -> tuple[np.ndarray, np.ndarray]:
    """``(frames uint8 [count, S, S, 3], targets [count, len(JUDGED)])`` at ``world.SIZE``, FRAMES_PER_IDENTITY per person."""
    frames, targets = [], []
    for start in range(0, count, FRAMES_PER_IDENTITY):
        params = random_params(rng, min(FRAMES_PER_IDENTITY, count - start))
        frames.append(render(identity_of(rng), params, world.SIZE).rgb)
        targets.append(np.stack([params[name] for name in JUDGED], axis=1))
    return np.concatenate(frames), np.concatenate(targets)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


def blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with a per-image ``sigma`` (pixels; 0 leaves the image as it is)."""
    radius = 4
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    safe = sigma.clamp(min=1e-3)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / safe) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    count, channels, height, width = images.shape
    kernel = kernel.repeat_interleave(channels, dim=0)  # one kernel per (image, channel)
    flat = images.reshape(1, count * channels, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=count * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=count * channels)
    return flat.reshape(count, channels, height, width)


def degrade(images: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur, then Gaussian pixel noise of std ``noise`` (per image), clipped to 0..1 like a frame."""
    images = blur(images, sigma)
    noisy = images + noise[:, None, None, None] * torch.randn(images.shape, generator=generator)
    return noisy.clamp(0.0, 1.0)


def chroma_420(images: torch.Tensor) -> torch.Tensor:
    """H.264's 4:2:0: colour (BT.709 chroma) at half resolution, brightness at full."""
    r, g, b = images.unbind(1)
    luma = 0.2126 * r + 0.7152 * g + 0.0722 * b
    chroma = torch.stack([b - luma, r - luma], dim=1)
    chroma = F.interpolate(F.avg_pool2d(chroma, 2), scale_factor=2, mode="bilinear", align_corners=False)
    blue, red = chroma[:, 0] + luma, chroma[:, 1] + luma
    green = (luma - 0.2126 * red - 0.0722 * blue) / 0.7152
    return torch.stack([red, green, blue], dim=1).clamp(0.0, 1.0)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Training degradations, each image its own: contrast/brightness/colour gain; 4:2:0 chroma
    (half the images); blur sigma 0..MAX_BLUR and noise std 0..0.15 (each absent for 30%, so clean
    frames stay well represented)."""
    count = images.shape[0]

    def draw(*shape):
        return torch.rand(*shape, generator=generator)

    contrast = 0.85 + 0.3 * draw(count, 1, 1, 1)
    brightness = 0.12 * draw(count, 1, 1, 1) - 0.06
    gain = 0.94 + 0.12 * draw(count, 3, 1, 1)
    images = ((images - 0.5) * contrast + 0.5 + brightness) * gain
    subsample = draw(count, 1, 1, 1) < 0.5
    images = torch.where(subsample, chroma_420(images.clamp(0.0, 1.0)), images)
    sigma = torch.where(draw(count) < 0.3, 0.0, MAX_BLUR * draw(count))
    noise = torch.where(draw(count) < 0.3, 0.0, 0.15 * draw(count))
    return degrade(images.clamp(0.0, 1.0), noise, sigma, generator)


def train(steps: int, seed: int) -> tuple[Judge, dict]:
    rng = np.random.default_rng([seed, 0x7A])
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    started = time.time()
    pool_frames, pool_targets = (torch.from_numpy(array) for array in render_random(rng, POOL, training_identity))
    watch_frames, watch_targets = render_random(np.random.default_rng([seed, 0x3A]), WATCHED, held_out_identity)
    print(f"rendered the initial pool of {POOL} frames in {time.time() - started:.0f} s", flush=True)
    judge = Judge()
    judge.mean.copy_(pool_targets.mean(dim=0))
    judge.std.copy_(pool_targets.std(dim=0))
    optimizer = torch.optim.AdamW(judge.parameters(), lr=LEARNING_RATE, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=steps, pct_start=0.05)
    running = None
    for step in range(1, steps + 1):
        slots = torch.arange((step - 1) * FRESH_PER_STEP, step * FRESH_PER_STEP) % POOL
        frames, targets = render_random(rng, FRESH_PER_STEP, training_identity)
        pool_frames[slots], pool_targets[slots] = torch.from_numpy(frames), torch.from_numpy(targets)
        pick = torch.randint(POOL, (BATCH,), generator=generator)
        loss = judge_loss(judge, augment(to_tensor(pool_frames[pick].numpy()), generator), pool_targets[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 200 == 0 or step == steps:
            judge.eval()
            r = parameter_accuracy(judge, watch_frames, watch_targets)
            judge.train()
            print(f"step {step}/{steps}  loss {running:.4f}  held-out r " + " ".join(f"{name} {r[name]['r']:.3f}" for name in JUDGED)
                  + f"  ({time.time() - started:.0f} s)", flush=True)
    facts = {"seed": seed, "steps": steps, "batch": BATCH, "learning_rate": LEARNING_RATE, "pool": POOL,
             "fresh_renders_per_step": FRESH_PER_STEP, "distinct_training_renders": POOL + steps * FRESH_PER_STEP,
             "training_seconds": round(time.time() - started, 1), "threads": torch.get_num_threads()}
    return judge.eval().requires_grad_(False), facts


def judge_loss(judge: Judge, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the standardised parameters, eye_open counted only without a blink:
    a blink scales the same eye height, so in a blinking frame eye_open is not seen; learnt there,
    it would be guessed upward in every open-eyed frame too (a blink might be hiding a wider eye)."""
    error = (judge.standardised(images) - (targets - judge.mean) / judge.std) ** 2
    seen = torch.ones_like(error)
    seen[:, JUDGED.index("eye_open")] = (targets[:, JUDGED.index("blink")] == 0).float()
    return (error * seen).mean()


def as_shipped(judge: Judge) -> Judge:
    """The judge with its weights rounded through float16, as the file stores them."""
    state = {name: (value.half().float() if name not in ("mean", "std") else value) for name, value in judge.state_dict().items()}
    shipped = Judge.from_config(judge.config)
    shipped.load_state_dict(state)
    return shipped.eval().requires_grad_(False)


def noisy(frames: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """Frames with noise std EVAL_NOISE after blur sigma EVAL_BLUR, as floats ``[F, H, W, 3]``."""
    images = to_tensor(frames)
    count = images.shape[0]
    out = degrade(images, torch.full((count,), EVAL_NOISE), torch.full((count,), EVAL_BLUR), generator)
    return out.permute(0, 2, 3, 1).numpy()


def parameter_accuracy(judge: Judge, frames, targets: np.ndarray) -> dict:
    read = judge_frames(judge, frames)
    return {name: _agreement(targets[:, index], read[name]) for index, name in enumerate(JUDGED)}


def eyes_open_accuracy(judge: Judge, frames: np.ndarray, targets: np.ndarray) -> dict:
    """eye_open on the frames without a blink (in a blinking frame only eye height is seen)."""
    unblinking = targets[:, JUDGED.index("blink")] == 0
    read = judge_frames(judge, frames[unblinking])
    return {"frames": int(unblinking.sum()), **_agreement(targets[unblinking, JUDGED.index("eye_open")], read["eye_open"])}


def _agreement(truth: np.ndarray, estimate: np.ndarray) -> dict:
    return {"r": round(float(np.corrcoef(truth, estimate)[0, 1]), 4), "mae": round(float(np.mean(np.abs(truth - estimate))), 4)}


def portrait_accuracy(judge: Judge, rng: np.random.Generator, generator: torch.Generator) -> dict:
    """Judged-emotion accuracy on still portraits at intensity 1 (one frame each), clean and noisy."""
    labels, frames = [], []
    for label in world.EMOTION_NAMES:
        for _ in range(PORTRAITS_PER_EMOTION):
            who = held_out_identity(rng)
            frames.append(render(who, world.still(who, world.Emotion(label, 1.0)).params, world.SIZE).rgb[0])
            labels.append(label)
    frames = np.stack(frames)
    result = {}
    for condition, images in (("clean", frames), ("noisy", noisy(frames, generator))):
        read = judge_frames(judge, images)
        called = [judged_emotion({name: values[i:i + 1] for name, values in read.items()})[0] for i in range(len(labels))]
        result[condition] = _accuracy(labels, called)
    return result


def speaking_clip(who: world.Identity, emotion: world.Emotion, rng: np.random.Generator):
    """A CLIP_FRAMES-frame performance with life, the person speaking a sentence from 0.2 s on."""
    from emotivetalk_core.synth.dataset import speak
    from emotivetalk_core.synth.texts import sentence

    seed = int(rng.integers(2**31))
    _, phonemes = speak(who, emotion, sentence(rng, who.voice.language), seed, lead=0.2, tail=0.2)
    return world.perform(phonemes, CLIP_FRAMES, who, emotion, seed)


def clip_accuracy(judge: Judge, rng: np.random.Generator, generator: torch.Generator) -> dict:
    """Judged-emotion accuracy and mean fitted strength of speaking clips with life (blinks, drift,
    head motion), per intensity, clean and noisy."""
    result = {}
    for intensity in CLIP_INTENSITIES:
        labels, reads = [], {"clean": [], "noisy": []}
        strengths = {label: [] for label in world.EMOTION_NAMES}
        for label in world.EMOTION_NAMES:
            for _ in range(CLIPS_PER_CELL):
                who = held_out_identity(rng)
                frames = render(who, speaking_clip(who, world.Emotion(label, intensity), rng).params, world.SIZE).rgb
                labels.append(label)
                reads["clean"].append(judge_frames(judge, frames))
                reads["noisy"].append(judge_frames(judge, noisy(frames, generator)))
                strengths[label].append(_called_strength(reads["clean"][-1], label))
        result[str(intensity)] = {condition: _accuracy(labels, [judged_emotion(read)[0] for read in condition_reads])
                                  for condition, condition_reads in reads.items()}
        neutral = strengths.pop("neutral")
        result[str(intensity)]["mean_strength"] = {label: round(float(np.mean(values)), 3) for label, values in strengths.items()}
        # The margin of the neutral decision (judge.NEUTRAL_BELOW lies between these two).
        result[str(intensity)]["largest_strength_of_neutral_clips"] = round(float(np.max(neutral)), 3)
        result[str(intensity)]["smallest_strength_of_emotion_clips"] = round(float(min(map(min, strengths.values()))), 3)
    return result


def _called_strength(read: dict, label: str) -> float:
    """A clip's fitted strength of its own emotion; for neutral, the largest of any emotion (what
    would be called were it above judge.NEUTRAL_BELOW)."""
    if label != "neutral":
        return emotion_strength(read, label)
    return max(emotion_strength(read, other) for other in world.EMOTION_NAMES if other != "neutral")


def _accuracy(labels: list[str], called: list[str]) -> dict:
    """Overall accuracy, per-emotion accuracy, and the confusions (true -> called: count)."""
    labels, called = np.array(labels), np.array(called)
    confusions: dict[str, int] = {}
    for truth, guess in zip(labels[labels != called], called[labels != called]):
        confusions[f"{truth}->{guess}"] = confusions.get(f"{truth}->{guess}", 0) + 1
    return {"accuracy": round(float(np.mean(labels == called)), 4),
            "per_emotion": {label: round(float(np.mean(called[labels == label] == label)), 4) for label in world.EMOTION_NAMES},
            "confusions": confusions}


def evaluate(judge: Judge, seed: int) -> dict:
    rng = np.random.default_rng([seed, 0xE7])
    generator = torch.Generator().manual_seed(seed + 1)
    frames, targets = render_random(rng, HELD_OUT_RENDERS, held_out_identity)
    return {
        "held_out_renders": HELD_OUT_RENDERS,
        "noisy_condition": {"noise_std": EVAL_NOISE, "blur_sigma": EVAL_BLUR},
        "renders_clean": parameter_accuracy(judge, frames, targets),
        "renders_clean_eyes_open": eyes_open_accuracy(judge, frames, targets),
        "renders_noisy": parameter_accuracy(judge, noisy(frames, generator), targets),
        "portraits_intensity_1": portrait_accuracy(judge, rng, generator),
        "clips": clip_accuracy(judge, rng, generator),
        "clip_frames": CLIP_FRAMES,
        "clips_per_emotion_and_intensity": CLIPS_PER_CELL,
    }


def report(accuracy: dict) -> None:
    for condition in ("renders_clean", "renders_noisy"):
        print(f"{condition} ({accuracy['held_out_renders']} held-out renders):")
        for name, figures in accuracy[condition].items():
            print(f"  {name:12s} r {figures['r']:.4f}  MAE {figures['mae']:.4f}")
    figures = accuracy["renders_clean_eyes_open"]
    print(f"  eye_open on the {figures['frames']} frames without a blink: r {figures['r']:.4f}  MAE {figures['mae']:.4f}")
    for condition, figures in accuracy["portraits_intensity_1"].items():
        print(f"portraits, intensity 1, {condition}: accuracy {figures['accuracy']:.4f}  {figures['confusions']}")
    for intensity, figures in accuracy["clips"].items():
        for condition in ("clean", "noisy"):
            print(f"clips, intensity {intensity}, {condition}: accuracy {figures[condition]['accuracy']:.4f}  "
                  f"{figures[condition]['confusions']}")
        print(f"clips, intensity {intensity}, mean fitted strength: {figures['mean_strength']}; largest of a neutral "
              f"clip {figures['largest_strength_of_neutral_clips']}, smallest of an emotion clip "
              f"{figures['smallest_strength_of_emotion_clips']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=DEFAULT_JUDGE_PATH)
    args = parser.parse_args()
    torch.set_num_threads(1)  # modest on a shared machine, and fewer sources of nondeterminism
    judge, facts = train(args.steps, args.seed)
    judge = as_shipped(judge)
    started = time.time()
    accuracy = evaluate(judge, args.seed)
    print(f"evaluated in {time.time() - started:.0f} s")
    report(accuracy)
    info = {**facts, "script": "scripts/make_synth_judge.py", "identities": "training seeds even, evaluation seeds odd",
            "accuracy": accuracy}
    path = save_judge(judge, args.out, info)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
