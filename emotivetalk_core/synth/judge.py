"""SynthTalk's judge: a small frozen CNN that reads a SynthTalk face's parameters from a frame.

Generated videos have no parameters to compare with the world's truth; the judge estimates them
from the pixels (any frame: a render, a decoded mp4, a model's output), so lip sync and
expression can be measured in world units. It reads frames at the world's size
(:data:`world.SIZE`, 32 px); frames of any other size are resized to it. It is trained on renders
of random identities and parameters by ``scripts/make_synth_judge.py``, which stores its accuracy
in the file's metadata.

What a frame cannot tell (the renders, not the judge, set these limits):

- ``eye_open`` and ``blink`` scale the same eye height (``eye_height * (1 + 0.6 eye_open) *
  (1 - blink)``): in a blinking frame only their product is seen, and the judge reads eye_open
  as the openness of an unblinking eye. Brows lowered below about -0.5 cover the upper lids.
- People's own eye heights and mouth widths vary as much as ``eye_open`` +-0.2 and
  ``mouth_width`` +-0.45 change them, so one frame reads those two only up to the person.
- At 32 px an eye is about 2 px tall and one unit of ``eye_open`` moves its edges by about a
  pixel, partly as a sub-pixel strip of white around the iris: away from rest, eye_open is read
  to about 0.2-0.3 (error std), twice what people's own eye heights alone would cost.

The judged emotion of a clip compares its mean expression with the emotion presets of
:data:`world.EMOTIONS` (:func:`judged_emotion`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .world import EMOTIONS, SIZE

JUDGED = ("mouth_open", "mouth_width", "smile", "brow_raise", "brow_tilt", "eye_open", "blink", "blush")
DEFAULT_JUDGE_PATH = Path(__file__).resolve().parent / "judge.safetensors"
MAKER_SCRIPT = "scripts/make_synth_judge.py"
CONFIG_KEY = "synthtalk.judge.config"
INFO_KEY = "synthtalk.judge.info"
# Frames per forward pass: memory stays small for any clip length.
BATCH = 64

# The clip expression the emotions are told apart by; blink is left out (it is life, not emotion).
EXPRESSION = ("smile", "brow_raise", "brow_tilt", "eye_open", "blush")
PRESETS = {label: np.array([spec["face"].get(name, 0.0) for name in EXPRESSION], dtype=np.float64)
           for label, spec in EMOTIONS.items() if spec["face"]}
# Least squares alone never picks neutral: k = 0 is allowed, so every emotion's residual is at most
# |v|, neutral's. An emotion is called only when it explains at least this intensity; below it the
# face is neutral. Just under half the weakest intensity the world trains with (0.5): on 25-frame
# speaking clips of held-out people, 200 neutral ones fit at most 0.225 (drift, speech-lifted brows
# and the judge's error) and 200 of each emotion at intensity 0.5 at least 0.248 (surprised, whose
# eye_open is read least well), so the gap is narrow at 32 px (the script measures both ends).
NEUTRAL_BELOW = 0.24


class Judge(nn.Module):
    """Frames ``[N, 3, H, W]`` (floats in 0..1) -> parameters ``[N, len(JUDGED)]`` in world units.

    Stride-2 conv stages (GroupNorm, SiLU; ``repeats`` extra stride-1 convs per stage) from
    :data:`SIZE` to a 4x4 map, which is flattened rather than pooled: where a brow sits relative to
    the eyes is the reading, and a global pool would throw position away. The first conv reads
    the full-resolution frame (its 3x3 kernel overlaps at stride 2), so one-pixel lids and brows
    reach it.
    """

    def __init__(self, widths=(48, 96, 128), repeats=(1, 1, 0), reduce: int = 32, hidden: int = 128):
        super().__init__()
        self.config = {"widths": list(widths), "repeats": list(repeats), "reduce": reduce, "hidden": hidden,
                       "judged": list(JUDGED), "size": SIZE}
        layers, channels = [], 3
        for width, repeat in zip(widths, repeats):
            layers += _conv(channels, width, stride=2)
            for _ in range(repeat):
                layers += _conv(width, width, stride=1)
            channels = width
        layers += [nn.Conv2d(channels, reduce, 1), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        cells = (SIZE // 2 ** len(widths)) ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(reduce * cells, hidden), nn.SiLU(), nn.Linear(hidden, len(JUDGED)))
        # Targets are learnt standardised; these give them back in world units.
        self.register_buffer("mean", torch.zeros(len(JUDGED)))
        self.register_buffer("std", torch.ones(len(JUDGED)))

    @classmethod
    def from_config(cls, config: dict) -> "Judge":
        return cls(config["widths"], config["repeats"], config["reduce"], config["hidden"])

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.standardised(frames) * self.std + self.mean

    def standardised(self, frames: torch.Tensor) -> torch.Tensor:
        """The raw output: parameters standardised by the training distribution's mean and std."""
        if frames.shape[-2:] != (SIZE, SIZE):
            frames = F.interpolate(frames, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
        return self.head(self.features(frames * 2.0 - 1.0))


def _conv(inputs: int, outputs: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(inputs, outputs, 3, stride, 1), nn.GroupNorm(8, outputs), nn.SiLU()]


def save_judge(judge: Judge, path: str | Path, info: dict) -> Path:
    """Write the judge as float16 weights (float32 standardisation) with its config and ``info``
    (training facts, accuracy) as JSON metadata."""
    from safetensors.torch import save_file

    from ..checkpoints import readable_by_all

    tensors = {name: (value.half() if name not in ("mean", "std") else value.float()).contiguous()
               for name, value in judge.state_dict().items()}
    path = Path(path)
    save_file(tensors, str(path), metadata={CONFIG_KEY: json.dumps(judge.config), INFO_KEY: json.dumps(info, sort_keys=True)})
    readable_by_all(path)
    return path


def load_judge(path: str | Path = DEFAULT_JUDGE_PATH) -> Judge:
    """The judge of ``path`` (safetensors), float32, in eval mode, gradients off."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SynthTalk judge not found: {path}; make it with `python {MAKER_SCRIPT}`")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        state = {key: handle.get_tensor(key).float() for key in handle.keys()}
    if CONFIG_KEY not in metadata:
        raise ValueError(f"{path} is not a SynthTalk judge (no '{CONFIG_KEY}' metadata); make one with `python {MAKER_SCRIPT}`")
    config = json.loads(metadata[CONFIG_KEY])
    if tuple(config["judged"]) != JUDGED:
        raise ValueError(f"{path} judges {config['judged']}, this code expects {list(JUDGED)}; remake it with `python {MAKER_SCRIPT}`")
    if config["size"] != SIZE:
        raise ValueError(f"{path} reads {config['size']} px frames, the SynthTalk world renders {SIZE} px; "
                         f"remake it with `python {MAKER_SCRIPT}`")
    judge = Judge.from_config(config)
    judge.load_state_dict(state)
    return judge.eval().requires_grad_(False)


def judge_frames(judge: Judge, frames) -> dict[str, np.ndarray]:
    """Per-frame parameters ``{name: [F] float32}`` of frames ``[F, H, W, 3]`` (uint8, or floats in 0..1)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape [F, H, W, 3], got {list(frames.shape)}")
    outputs = [_judge_batch(judge, frames[start:start + BATCH]) for start in range(0, len(frames), BATCH)]
    values = np.concatenate(outputs) if outputs else np.zeros((0, len(JUDGED)), np.float32)
    return {name: values[:, index] for index, name in enumerate(JUDGED)}


def _judge_batch(judge: Judge, frames: np.ndarray) -> np.ndarray:
    scale = 255.0 if frames.dtype == np.uint8 else 1.0
    tensor = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).permute(0, 3, 1, 2) / scale
    device = judge.mean.device
    with torch.inference_mode():
        return judge(tensor.to(device)).float().cpu().numpy()


def judge_video(path: str | Path, judge: Judge | None = None) -> dict[str, np.ndarray]:
    """Per-frame parameters of a video file (decoded by the repository's reader, resized to :data:`SIZE`)."""
    from ..media.video_reader import iter_video_frames

    judge = load_judge() if judge is None else judge
    outputs, chunk = [], []
    for frame in iter_video_frames(path, size=(SIZE, SIZE)):
        chunk.append(frame)
        if len(chunk) == BATCH:
            outputs.append(_judge_batch(judge, np.stack(chunk)))
            chunk = []
    if chunk:
        outputs.append(_judge_batch(judge, np.stack(chunk)))
    values = np.concatenate(outputs)
    return {name: values[:, index] for index, name in enumerate(JUDGED)}


def expression_vector(params: dict[str, np.ndarray]) -> np.ndarray:
    """The clip-mean expression (:data:`EXPRESSION`) of per-frame parameters."""
    return np.array([float(np.mean(params[name])) for name in EXPRESSION], dtype=np.float64)


def emotion_strength(params: dict[str, np.ndarray], label: str) -> float:
    """The intensity ``k >= 0`` for which ``k * preset(label)`` best fits the clip's mean expression
    (least squares); 0 for neutral, whose face has no preset."""
    if label not in EMOTIONS:
        raise ValueError(f"unknown SynthTalk emotion {label!r}; choose one of {', '.join(EMOTIONS)}")
    if label not in PRESETS:
        return 0.0
    return _fit(expression_vector(params), PRESETS[label])


def _fit(vector: np.ndarray, preset: np.ndarray) -> float:
    return max(0.0, float(vector @ preset / (preset @ preset)))


def judged_emotion(params: dict[str, np.ndarray]) -> tuple[str, float]:
    """``(label, strength)`` of a clip: the emotion whose least-squares fitted preset leaves the
    smallest residual of the clip-mean expression, or neutral (strength 0) when that emotion
    explains less than :data:`NEUTRAL_BELOW` intensity."""
    vector = expression_vector(params)
    fits = {label: _fit(vector, preset) for label, preset in PRESETS.items()}
    label = min(fits, key=lambda name: float(np.linalg.norm(vector - fits[name] * PRESETS[name])))
    if fits[label] < NEUTRAL_BELOW:
        return "neutral", 0.0
    return label, fits[label]
