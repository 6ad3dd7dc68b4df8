"""Training shards: what preprocessing writes and every training stage reads.

One safetensors file per source video (a *shard*), holding that video's clips. Tensor names are
``<clip>.<field>``, where ``<clip>`` is ``clip0000``, ``clip0001``, ...:

- ``frames``     uint8   ``[F, S, S, 3]``  face-centred square crops, RGB, at ``fps``
- ``audio``      float32 ``[F * sample_rate / fps]``  mono speech, sample 0 = start of frame 0
- ``mask``       uint8   ``[F, S, S]``     face mask, 255 = face
- ``box``        float32 ``[F, 4]``        crop box in source pixels ``(x0, y0, x1, y1)``
- ``lip_target`` float32 ``[F, L]``        what the Lip Encoder is distilled toward
- ``exp_target`` float32 ``[F, E]``        what the Exp Encoder is distilled toward

The metadata key ``emotivetalk.shard`` holds JSON: ``format``, ``source`` (the video, relative
to the input folder), ``identity``, ``emotion`` (a label or null), ``level`` (int or null),
``fps``, ``sample_rate``, ``size``, ``targets`` (``{"tool", "lip_dim", "exp_dim"}``) and
``clips`` (``[{"name", "start_frame", "frames"}]``). A clip entry may carry its own ``emotion``
and ``intensity`` (a video whose person changes emotion between clips, as SynthTalk's do); a
clip's own label wins over the shard's.

Readers open shards lazily (``safe_open`` + ``get_slice``), so a window of a long clip reads
only its own frames.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import readable_by_all
from .config import REFERENCES

FORMAT_VERSION = "1"
METADATA_KEY = "emotivetalk.shard"
FIELDS = ("frames", "audio", "mask", "box", "lip_target", "exp_target")
CLIP_LABELS = ("emotion", "intensity")


class ShardError(ValueError):
    """A shard is malformed or a shard folder holds nothing usable."""


def samples_per_frame(fps, sample_rate: int) -> int:
    value = Fraction(sample_rate) / Fraction(fps)
    if value.denominator != 1:
        raise ShardError(f"{sample_rate} Hz audio does not split into whole samples per frame at {fps} fps")
    return int(value)


def clip_name(index: int) -> str:
    return f"clip{index:04d}"


def write_shard(path: str | Path, clips: list[dict[str, np.ndarray]], info: dict) -> Path:
    """Write one video's clips (each a dict of :data:`FIELDS` arrays) and its info to ``path``.

    ``info`` holds every metadata entry of the module docstring except ``format`` and ``clips``;
    each clip dict may carry ``start_frame`` (its first frame in the source) and the
    :data:`CLIP_LABELS` of that clip. The file is written
    to a temporary name and renamed, so an interrupted run never leaves a half shard behind.
    """
    from safetensors.numpy import save_file

    per_frame = samples_per_frame(info["fps"], info["sample_rate"])
    tensors, entries = {}, []
    for index, clip in enumerate(clips):
        name = clip_name(index)
        frames = clip["frames"].shape[0]
        _check_clip(name, clip, frames, per_frame, info)
        for key in FIELDS:
            tensors[f"{name}.{key}"] = np.ascontiguousarray(clip[key])
        labels = {key: clip[key] for key in CLIP_LABELS if key in clip}
        entries.append({"name": name, "start_frame": int(clip.get("start_frame", 0)), "frames": int(frames), **labels})
    metadata = {METADATA_KEY: json.dumps({**info, "format": FORMAT_VERSION, "clips": entries}, sort_keys=True)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    readable_by_all(partial)
    partial.replace(path)
    return path


def _check_clip(name: str, clip: dict, frames: int, per_frame: int, info: dict) -> None:
    size = info["size"]
    expected = {
        "frames": ((frames, size, size, 3), np.uint8),
        "audio": ((frames * per_frame,), np.float32),
        "mask": ((frames, size, size), np.uint8),
        "box": ((frames, 4), np.float32),
        "lip_target": ((frames, info["targets"]["lip_dim"]), np.float32),
        "exp_target": ((frames, info["targets"]["exp_dim"]), np.float32),
    }
    for key, (shape, dtype) in expected.items():
        if key not in clip:
            raise ShardError(f"{name}: missing '{key}'")
        array = clip[key]
        if tuple(array.shape) != shape or array.dtype != dtype:
            raise ShardError(f"{name}.{key}: expected {np.dtype(dtype).name} {shape}, got {array.dtype} {tuple(array.shape)}")


def read_shard_info(path: str | Path) -> dict:
    """The metadata of one shard, without reading any tensor."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        metadata = handle.metadata() or {}
    if METADATA_KEY not in metadata:
        raise ShardError(f"{path} is not an EmotiveTalk training shard (no '{METADATA_KEY}' metadata)")
    return json.loads(metadata[METADATA_KEY])


def shard_paths(root: str | Path) -> list[Path]:
    """Every shard under ``root`` (searched recursively), in a fixed order."""
    root = Path(root)
    paths = sorted(root.rglob("*.safetensors"))
    if not paths:
        raise ShardError(f"no training shards (*.safetensors) under {root}: run 'python -m emotivetalk_core.train preprocess' first")
    return paths


@dataclass(frozen=True)
class Window:
    """One training example: ``frames`` consecutive frames of one clip."""

    shard: int
    clip: str
    start: int
    clip_frames: int
    emotion: str | None = None


def clip_emotion(clip: dict, info: dict) -> str | None:
    """A clip's emotion label: its own, else its video's (``None`` when neither is known)."""
    return clip.get("emotion", info.get("emotion"))


class ClipDataset(torch.utils.data.Dataset):
    """Fixed-length windows over every clip of every shard, as float tensors.

    An item is a dict: ``frames`` ``[T, 3, S, S]`` and ``mask`` ``[T, 1, S, S]`` in 0..1,
    ``audio`` ``[T * samples_per_frame]``, ``box`` ``[T, 4]``, ``lip_target`` ``[T, L]``,
    ``exp_target`` ``[T, E]``, ``emotion`` (the label's index in ``labels``, -1 when unknown)
    and ``index`` (the item's own index, for seeded per-sample noise); with ``audio_context``
    frames, also the audio around the window (:meth:`_speech_audio`). Windows tile each clip
    without overlap; a clip shorter than ``window`` gives none. :meth:`item` reads an index's
    clip from another first frame (training draws it at random, so windows do not always start
    at multiples of their length); the tiling only sets how often each clip is visited.

    ``reference`` says where :meth:`outside_frame` draws the portrait from: ``"clip"``, the
    item's own clip (the same expression as the window, for real videos of one emotion), or
    ``"video"``, any clip of the same shard (the same person, often with another expression:
    what teaches ETHD to change the portrait's expression into the driven one).
    """

    def __init__(self, root: str | Path, window: int, labels: tuple[str, ...] | list[str] = (), reference: str = "clip",
                 audio_context: int = 0):
        if window < 1:
            raise ValueError(f"window must be at least 1 frame, got {window}")
        if audio_context < 0:
            raise ValueError(f"audio_context must be 0 or more frames, got {audio_context}")
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
        self.paths = shard_paths(root)
        self.infos = [read_shard_info(path) for path in self.paths]
        self.window = window
        self.labels = list(labels)
        self.reference = reference
        self.audio_context = audio_context
        self.windows = [
            Window(shard, clip["name"], start, clip["frames"], clip_emotion(clip, info))
            for shard, info in enumerate(self.infos)
            for clip in info["clips"]
            for start in range(0, clip["frames"] - window + 1, window)
        ]
        if not self.windows:
            raise ShardError(f"no clip under {root} is at least {window} frames long")
        self.by_emotion: dict[str, list[tuple[int, str, int]]] = {}  # label -> (shard, clip, frames)
        for shard, info in enumerate(self.infos):
            for clip in info["clips"]:
                label = clip_emotion(clip, info)
                if label is not None:
                    self.by_emotion.setdefault(label, []).append((shard, clip["name"], clip["frames"]))
        self.samples_per_frame = samples_per_frame(self.infos[0]["fps"], self.infos[0]["sample_rate"])

    def __len__(self) -> int:
        return len(self.windows)

    def spread(self, count: int) -> list[int]:
        """Up to ``count`` indices spread evenly over the windows (a fixed sample for statistics)."""
        return torch.linspace(0, len(self) - 1, min(count, len(self))).round().long().unique().tolist()

    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def starts(self, index: int) -> int:
        """How many first frames a window of index ``index``'s clip can have."""
        return self.windows[index].clip_frames - self.window + 1

    def item(self, index: int, start: int | None = None) -> dict:
        """Index ``index``'s window of its clip, from frame ``start`` (default: its tile's)."""
        where = self._placed(index, start)
        stop = where.start + self.window
        arrays = self._read(where.shard, where.clip, where.start, stop)
        emotion = where.emotion
        return {
            "frames": _channels_first(arrays["frames"]),
            "mask": torch.from_numpy(arrays["mask"]).unsqueeze(1).float() / 255.0,
            "audio": torch.from_numpy(arrays["audio"]),
            "box": torch.from_numpy(arrays["box"]),
            "lip_target": torch.from_numpy(arrays["lip_target"]),
            "exp_target": torch.from_numpy(arrays["exp_target"]),
            "emotion": torch.tensor(self.labels.index(emotion) if emotion in self.labels else -1),
            "index": torch.tensor(index),
            **(self._speech_audio(where) if self.audio_context else {}),
        }

    def _speech_audio(self, where: Window) -> dict:
        """The window's audio with ``audio_context`` frames on both sides, as far as the clip has
        them: ``speech_audio`` ``[(window + 2 * context) * samples_per_frame]`` (zero outside the
        clip) and ``speech_span`` ``[first, count]``, the span's frames that lie inside the clip.
        The speech encoder and V-AID then see the context they see at inference."""
        context, per_frame = self.audio_context, self.samples_per_frame
        lo, hi = max(0, where.start - context), min(where.clip_frames, where.start + self.window + context)
        first = lo - (where.start - context)
        audio = np.zeros((self.window + 2 * context) * per_frame, dtype=np.float32)
        audio[first * per_frame : (first + hi - lo) * per_frame] = self._read(where.shard, where.clip, lo, hi, keys=("audio",))["audio"]
        return {"speech_audio": torch.from_numpy(audio), "speech_span": torch.tensor([first, hi - lo])}

    def outside_frame(self, index: int, generator: torch.Generator, start: int | None = None) -> torch.Tensor:
        """A frame ``[3, S, S]`` outside the item's window (the portrait x_ref; ``start`` as in
        :meth:`item`), uniformly from the item's clip or, with ``reference="video"``, from every
        clip of its shard; when nothing lies outside the window, the window's first frame."""
        return self._frame_outside(self._placed(index, start), generator, whole_video=self.reference == "video")

    def _frame_outside(self, where: Window, generator: torch.Generator, whole_video: bool) -> torch.Tensor:
        clips = self.infos[where.shard]["clips"] if whole_video else [{"name": where.clip, "frames": where.clip_frames}]
        outside = [(clip["name"], f) for clip in clips for f in range(clip["frames"])
                   if not (clip["name"] == where.clip and where.start <= f < where.start + self.window)]
        name, frame = outside[int(torch.randint(len(outside), (1,), generator=generator))] if outside else (where.clip, where.start)
        return self._frame(where.shard, name, frame)

    def emotion_frame(self, index: int, generator: torch.Generator, start: int | None = None) -> torch.Tensor:
        """An emotion image for the item ``[3, S, S]``: a frame of another clip with the item's
        emotion label, of another person where the data has one (what a user's emotion image is:
        someone else showing the emotion), else of the same person; for an unlabelled item, or a
        label no other clip carries, a frame of its own clip outside the window (``start`` as in
        :meth:`item`). Never a frame of the window itself, whose expression would just be copied."""
        where = self._placed(index, start)
        identity = self.infos[where.shard].get("identity")
        others = [entry for entry in self.by_emotion.get(where.emotion, []) if entry[:2] != (where.shard, where.clip)]
        strangers = [entry for entry in others  # another shard, and not the same person under another name
                     if entry[0] != where.shard and (identity is None or self.infos[entry[0]].get("identity") != identity)]
        candidates = strangers or others
        if not candidates:
            return self._frame_outside(where, generator, whole_video=False)
        shard, clip, frames = candidates[int(torch.randint(len(candidates), (1,), generator=generator))]
        return self._frame(shard, clip, int(torch.randint(frames, (1,), generator=generator)))

    def _frame(self, shard: int, clip: str, frame: int) -> torch.Tensor:
        return _channels_first(self._read(shard, clip, frame, frame + 1, keys=("frames",))["frames"])[0]

    def _placed(self, index: int, start: int | None) -> Window:
        where = self.windows[index]
        if start is None:
            return where
        if not 0 <= start < self.starts(index):
            raise IndexError(f"window start {start} is outside clip {where.clip} ({where.clip_frames} frames, window {self.window})")
        return replace(where, start=int(start))

    def _read(self, shard: int, clip: str, start: int, stop: int, keys=FIELDS) -> dict[str, np.ndarray]:
        from safetensors import safe_open

        per_frame = self.samples_per_frame
        result = {}
        with safe_open(str(self.paths[shard]), framework="np") as handle:
            for key in keys:
                tensor = handle.get_slice(f"{clip}.{key}")
                result[key] = tensor[start * per_frame : stop * per_frame] if key == "audio" else tensor[start:stop]
        return result


def _channels_first(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, S, S, 3]`` -> float ``[T, 3, S, S]`` in 0..1, contiguous.

    Contiguous, not a permuted view: CPU convolutions take another code path (and round
    differently) for a channels-last layout, and collating in DataLoader workers makes batches
    contiguous while collating in the main process keeps the layout, so a view would make the
    results depend on ``num_workers``."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous().float() / 255.0


def target_statistics(root: str | Path, fields: tuple[str, ...] = ("lip_target", "exp_target")) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-dimension ``(mean, std)`` of target fields over every frame of every clip under ``root``.

    Read once from the data (targets are small: a few floats per frame), accumulated in float64,
    so the numbers do not depend on batching or on the process split.
    """
    from safetensors import safe_open

    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    count = 0
    for path in shard_paths(root):
        info = read_shard_info(path)
        with safe_open(str(path), framework="np") as handle:
            for clip in info["clips"]:
                for field in fields:
                    values = handle.get_tensor(f"{clip['name']}.{field}").astype(np.float64)
                    if field in sums and values.shape[1] != sums[field].shape[0]:
                        raise ShardError(f"{path}: {field} has {values.shape[1]} dimensions, other shards {sums[field].shape[0]}")
                    sums[field] = sums.get(field, 0) + values.sum(axis=0)
                    squares[field] = squares.get(field, 0) + (values ** 2).sum(axis=0)
                count += clip["frames"]
    result = {}
    for field in fields:
        mean = sums[field] / count
        std = np.sqrt(np.maximum(squares[field] / count - mean ** 2, 0.0))
        result[field] = (torch.from_numpy(mean).float(), torch.from_numpy(std).float())
    return result
