"""Emotion timeline: keyframed emotion sources -> the expression stage's per-frame inputs.

Beyond the paper (docs/ARCHITECTURE.md, "Emotion control beyond the paper"): a timeline of keyframes
(time in seconds, source, intensity, blend seconds), where a source is an emotion label, a text
prompt, an image file or an emotion video file. :func:`plan` turns it, for N frames at fps, into
an :class:`ExpressionPlan`. This module holds no model code: sources become vectors through an
:class:`EmotionResolver` the caller passes in (the pipeline's uses the Mapping and Exp Encoder).

Intensity has one meaning, "how far from the baseline toward the source": 0 = the baseline
(the portrait's own expression, or Mapping("neutral") with ``neutralise_portrait``), 1 = as
requested, > 1 exaggerated. For label/text/image sources it is Di-CTE's guidance between its
unconditional (baseline) and conditional predictions; a video source bypasses Di-CTE and gives
``e = baseline + intensity * (e_video - baseline)`` per frame.

Policies (the paper is silent on all of them):

- **Frame times**: frame k is at k / fps, its presentation time (what an editor shows).
- **Blend window** ``[t, t + blend]``: a keyframe's time is when its change *starts*, so nothing
  moves before the time a user set (e.g. a word onset) and no window reaches below 0 s. With
  blend 0 the change is a cut at the first frame at or after t.
- **Overlapping blends**: each keyframe crossfades from whatever mix is showing, i.e. keyframe k's
  weight is ``ramp_k * prod_{j > k} (1 - ramp_j)``: weights stay in [0, 1], sum to 1, and change
  continuously whenever every blend is > 0.
- **Before the first keyframe**: the baseline at intensity 0 (an implicit starting state), so a
  first keyframe at 3 s with blend 1 fades in from the portrait's own expression over 3..4 s.
- **Mixing**: every keyframe k contributes the offset ``w_k * intensity_k * (x_k - baseline)``,
  x_k its condition (label/text/image) or its per-frame video code. Summed, the driven expression
  (in the linear picture of the condition space) is ``baseline + sum_k w_k I_k (x_k - baseline)``:
  a linear crossfade between keyframes whatever their kinds. For the Di-CTE side this is one
  (condition, intensity) per frame: intensity = the weighted mean of intensities, condition = the
  *intensity*-weighted mean of conditions. A plain mean of both would ease in quadratically
  whenever intensities differ (a fade from intensity 0 would follow r^2, not r).
- **Video <-> label crossfades**: the final codes are mixed after both sides exist.
  :meth:`ExpressionPlan.combine` lerps Di-CTE's codes toward ``video_codes`` by ``video_weight``
  (the video keyframes' share of the frame). Where labels have no share the Di-CTE inputs are
  the baseline at intensity 0 (their output is not used there).
- **Video length**: the clip starts at the first frame at or after its keyframe's time and is
  played forward then backward (ping-pong) while the keyframe is in effect: no jump back to the
  first frame that a forward loop would show. A clip longer than that span is trimmed.

Typical use (the pipeline)::

    expression_plan = plan(timeline, num_frames, fps, resolver, reference_expression)
    codes = dicte.sample(..., condition=expression_plan.condition[None],
                         uncond_condition=expression_plan.baseline[None],
                         guidance=expression_plan.intensity[None]) if expression_plan.uses_dicte else None
    driven = expression_plan.combine(codes)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from .configs import EMOTION_LABELS

SOURCE_KINDS = ("label", "text", "image", "video")
_FILE_KINDS = ("image", "video")
_NEUTRAL = "neutral"

# 1 = the emotion as requested (0 = the baseline, above 1 exaggerated: see the module docstring).
DEFAULT_INTENSITY = 1.0
COMPACT_SYNTAX = 'TIME:LABEL[@INTENSITY][~BLEND], comma-separated, e.g. "0:neutral,3.5:happy@0.8~0.5,8:sad"'
JSON_SYNTAX = (
    '{"keyframes": [{"time": 0, "label": "happy", "intensity": 0.8, "blend": 0.5}, '
    '{"time": 3, "text": "speak seriously"}, {"time": 6, "image": "angry.png"}, '
    '{"time": 9, "video": "clip.mp4"}], "neutralise_portrait": false}'
)
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_COMPACT_ENTRY = re.compile(
    rf"(?P<time>{_NUMBER})\s*:\s*(?P<label>[A-Za-z_]+)\s*(?:@\s*(?P<intensity>{_NUMBER}))?\s*(?:~\s*(?P<blend>{_NUMBER}))?"
)
_JSON_TOP_KEYS = ("keyframes", "neutralise_portrait")
_JSON_KEYFRAME_KEYS = ("time", *SOURCE_KINDS, "intensity", "blend")


# --- the timeline ---------------------------------------------------------------------------

@dataclass(frozen=True)
class EmotionSource:
    """Where an emotion comes from: ``kind`` is one of :data:`SOURCE_KINDS`; ``value`` is the
    label, the prompt, or the image / video file path."""

    kind: str
    value: str

    def __post_init__(self):
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"unknown emotion source kind {self.kind!r}; choose one of {', '.join(SOURCE_KINDS)}")
        if not isinstance(self.value, str) or not self.value.strip():
            raise ValueError(f"an emotion {self.kind} must be a non-empty string, got {self.value!r}")
        if self.kind == "label":
            label = self.value.strip().lower()
            if label not in EMOTION_LABELS:
                raise ValueError(f"unknown emotion label {self.value!r}; valid labels: {', '.join(EMOTION_LABELS)}")
            # The Mapping ignores case; one spelling per label keeps one cache entry per emotion.
            object.__setattr__(self, "value", label)

    def describe(self) -> str:
        return f"{self.kind} {self.value!r}"


@dataclass(frozen=True)
class Keyframe:
    """From ``time`` seconds on, ``source`` at ``intensity``, reached over ``blend`` seconds."""

    time: float
    source: EmotionSource
    intensity: float = DEFAULT_INTENSITY
    blend: float = 0.0

    def __post_init__(self):
        if not isinstance(self.source, EmotionSource):
            raise TypeError(f"a keyframe's source must be an EmotionSource, got {type(self.source).__name__}")
        where = f"emotion keyframe at {self.time!r} s ({self.source.describe()})"
        for name in ("time", "intensity", "blend"):
            object.__setattr__(self, name, _finite_non_negative(getattr(self, name), name, where))


def _finite_non_negative(value, name: str, where: str) -> float:
    # bool is an int subclass: a JSON `true` must not become intensity 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


@dataclass
class EmotionTimeline:
    """Keyframes (sorted by time on construction; one keyframe per time) and whether the
    baseline is the portrait's own expression (default) or Mapping("neutral")."""

    keyframes: tuple[Keyframe, ...]
    neutralise_portrait: bool = False

    def __post_init__(self):
        keyframes = tuple(self.keyframes)
        if not keyframes:
            raise ValueError(f"an emotion timeline needs at least one keyframe; expected {COMPACT_SYNTAX}")
        for keyframe in keyframes:
            if not isinstance(keyframe, Keyframe):
                raise TypeError(f"emotion timeline keyframes must be Keyframe objects, got {type(keyframe).__name__}")
        if not isinstance(self.neutralise_portrait, bool):
            raise ValueError(f"neutralise_portrait must be true or false, got {self.neutralise_portrait!r}")
        keyframes = tuple(sorted(keyframes, key=lambda keyframe: keyframe.time))
        for earlier, later in zip(keyframes, keyframes[1:]):
            if earlier.time == later.time:
                raise ValueError(
                    f"two emotion keyframes at {later.time} s ({earlier.source.describe()} and "
                    f"{later.source.describe()}); give each keyframe its own time"
                )
        self.keyframes = keyframes


def single(source: EmotionSource, intensity: float = DEFAULT_INTENSITY, neutralise_portrait: bool = False) -> EmotionTimeline:
    """One source for the whole video."""
    return EmotionTimeline((Keyframe(0.0, source, intensity),), neutralise_portrait)


# --- text forms -----------------------------------------------------------------------------

def parse_timeline(spec: str, base_dir: str | Path | None = None) -> EmotionTimeline:
    """A timeline from the compact form (labels only), JSON text, or a ``.json`` file path.

    Compact: :data:`COMPACT_SYNTAX`. JSON: :data:`JSON_SYNTAX` (one of label/text/image/video
    per keyframe). Relative image/video paths resolve against the JSON file's folder, or, for
    JSON text, ``base_dir`` (default: the working directory); the files must exist.
    """
    text = spec.strip()
    if not text:
        raise ValueError(f"the emotion timeline is empty; expected {COMPACT_SYNTAX}, or a JSON file")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if text.startswith("{"):
        return _from_json(text, base, "emotion timeline JSON")
    if text.lower().endswith(".json"):
        path = base / text  # an absolute `text` replaces `base`
        if not path.is_file():
            raise ValueError(f"emotion timeline file {str(path)!r} does not exist")
        return _from_json(path.read_text(encoding="utf-8"), path.absolute().parent, f"emotion timeline {str(path)!r}")
    return _from_compact(text)


def to_json(timeline: EmotionTimeline) -> str:
    """The timeline as JSON text that :func:`parse_timeline` reads back to an equal timeline
    (file paths are stored as they are; the files must still exist when it is read)."""
    keyframes = [
        {"time": k.time, k.source.kind: k.source.value, "intensity": k.intensity, "blend": k.blend}
        for k in timeline.keyframes
    ]
    return json.dumps({"keyframes": keyframes, "neutralise_portrait": timeline.neutralise_portrait})


def _from_compact(text: str) -> EmotionTimeline:
    keyframes = []
    for part in text.split(","):
        match = _COMPACT_ENTRY.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"cannot read emotion timeline entry {part.strip()!r}; expected {COMPACT_SYNTAX}")
        intensity, blend = match["intensity"], match["blend"]
        keyframes.append(Keyframe(
            float(match["time"]), EmotionSource("label", match["label"]),
            1.0 if intensity is None else float(intensity), 0.0 if blend is None else float(blend),
        ))
    return EmotionTimeline(tuple(keyframes))


def _from_json(text: str, folder: Path, where: str) -> EmotionTimeline:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where} is not valid JSON ({error}); expected {JSON_SYNTAX}") from error
    if not isinstance(data, dict) or not isinstance(data.get("keyframes"), list):
        raise ValueError(f"{where} must be an object with a \"keyframes\" list; expected {JSON_SYNTAX}")
    _check_keys(data, _JSON_TOP_KEYS, f"{where}: the top level")
    keyframes = tuple(_json_keyframe(entry, folder, where) for entry in data["keyframes"])
    return EmotionTimeline(keyframes, data.get("neutralise_portrait", False))


def _json_keyframe(entry, folder: Path, where: str) -> Keyframe:
    shown = json.dumps(entry)
    if not isinstance(entry, dict) or "time" not in entry:
        raise ValueError(f"{where}: keyframe {shown} must be an object with a \"time\"; expected {JSON_SYNTAX}")
    _check_keys(entry, _JSON_KEYFRAME_KEYS, f"{where}: keyframe {shown}")
    kinds = [kind for kind in SOURCE_KINDS if kind in entry]
    if len(kinds) != 1:
        raise ValueError(f"{where}: keyframe {shown} needs exactly one of {', '.join(SOURCE_KINDS)}")
    kind, value = kinds[0], entry[kinds[0]]
    if kind in _FILE_KINDS:
        value = _existing_file(value, folder, f"{where}: keyframe {shown}")
    return Keyframe(entry["time"], EmotionSource(kind, value), entry.get("intensity", 1.0), entry.get("blend", 0.0))


def _check_keys(mapping: dict, allowed: tuple[str, ...], where: str) -> None:
    # A misspelt key ("intesity") would otherwise silently fall back to its default.
    unknown = [key for key in mapping if key not in allowed]
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; allowed: {', '.join(allowed)}")


def _existing_file(value, folder: Path, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: a file path must be a non-empty string, got {value!r}")
    path = folder / value
    if not path.is_file():
        raise ValueError(f"{where}: file {str(path)!r} does not exist")
    return str(path)


# --- the per-frame plan ---------------------------------------------------------------------

class EmotionResolver(Protocol):
    """Sources -> codes in Di-CTE's condition space (= the Exp Encoder's code space), ``[D]``
    each; ``video`` gives the Exp Encoder code of each of the clip's frames at ``fps``, ``[M, D]``
    (at most ``num_frames`` are used, so it may stop decoding there)."""

    def label(self, name: str) -> torch.Tensor: ...

    def text(self, prompt: str) -> torch.Tensor: ...

    def image(self, path: str) -> torch.Tensor: ...

    def video(self, path: str, num_frames: int, fps: float) -> torch.Tensor: ...


@dataclass(frozen=True)
class ExpressionPlan:
    """Per-frame inputs of the expression stage for N frames (D = the code size).

    ``condition`` [N, D], ``intensity`` [N] and ``baseline`` [N, D] drive Di-CTE (condition,
    guidance, unconditional condition); ``video_codes`` [N, D] are the video side's final codes
    (intensity applied) and ``video_weight`` [N] in [0, 1] their share of each frame.
    """

    condition: torch.Tensor
    intensity: torch.Tensor
    baseline: torch.Tensor
    video_codes: torch.Tensor
    video_weight: torch.Tensor

    @property
    def from_video(self) -> torch.Tensor:
        """``[N]`` bool: frames a video source takes part in."""
        return self.video_weight > 0

    @property
    def uses_dicte(self) -> bool:
        """Whether any frame needs Di-CTE's output (False when videos cover every frame)."""
        return bool((self.video_weight < 1).any())

    def combine(self, dicte_codes: torch.Tensor | None = None) -> torch.Tensor:
        """The driven expression ``[..., N, D]``: Di-CTE's codes lerped toward ``video_codes``
        by ``video_weight``. ``dicte_codes`` may be None only when :attr:`uses_dicte` is False."""
        if dicte_codes is None:
            if self.uses_dicte:
                raise ValueError("this emotion plan has frames driven by Di-CTE; pass Di-CTE's codes to combine()")
            return self.video_codes
        if dicte_codes.shape[-2:] != self.video_codes.shape:
            raise ValueError(
                f"Di-CTE codes must end in [N, D] = {list(self.video_codes.shape)}, got {list(dicte_codes.shape)}"
            )
        video = self.video_codes.to(dicte_codes)
        return torch.lerp(dicte_codes, video, self.video_weight.to(dicte_codes)[:, None])


@dataclass
class _Side:
    """Running sums over one side's keyframes: weight sum_k w_k, mass sum_k w_k I_k and
    offset sum_k w_k I_k (x_k - baseline)."""

    weight: torch.Tensor
    mass: torch.Tensor
    offset: torch.Tensor

    def add(self, weight: torch.Tensor, intensity: float, code_offset: torch.Tensor) -> None:
        self.weight += weight
        self.mass += weight * intensity
        self.offset += (weight * intensity)[:, None] * code_offset


def plan(timeline: EmotionTimeline, num_frames: int, fps: float, resolver: EmotionResolver,
         reference_code: torch.Tensor) -> ExpressionPlan:
    """The :class:`ExpressionPlan` of ``timeline`` for ``num_frames`` frames at ``fps``.

    ``reference_code`` ``[D]`` is Exp Encoder(portrait). Each distinct source that shows in some
    frame is resolved once (keyframes past the last frame are not resolved at all).
    """
    _check_plan_inputs(num_frames, fps, reference_code)
    weights = _keyframe_weights(timeline.keyframes, num_frames, fps)
    used = [(keyframe, weights[:, column]) for column, keyframe in enumerate(timeline.keyframes, start=1)
            if bool(weights[:, column].any())]
    codes = _resolve_sources(timeline, used, fps, resolver, reference_code)
    like = {"device": reference_code.device, "dtype": torch.float64}
    baseline = codes[EmotionSource("label", _NEUTRAL)] if timeline.neutralise_portrait else reference_code.to(**like)

    def empty_side() -> _Side:
        return _Side(torch.zeros(num_frames, **like), torch.zeros(num_frames, **like),
                     torch.zeros(num_frames, baseline.shape[0], **like))

    labels, videos = empty_side(), empty_side()
    labels.weight += weights[:, 0].to(**like)  # the implicit start: the baseline at intensity 0
    for keyframe, weight in used:
        weight = weight.to(**like)
        if keyframe.source.kind == "video":
            frames = _video_per_frame(codes[keyframe.source], _first_frame(keyframe, fps), weight)
            videos.add(weight, keyframe.intensity, frames - baseline)
        else:
            labels.add(weight, keyframe.intensity, codes[keyframe.source] - baseline)
    return _expression_plan(labels, videos, baseline, reference_code.dtype)


def _check_plan_inputs(num_frames: int, fps: float, reference_code: torch.Tensor) -> None:
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not isinstance(reference_code, torch.Tensor) or reference_code.ndim != 1:
        shape = list(reference_code.shape) if isinstance(reference_code, torch.Tensor) else type(reference_code).__name__
        raise ValueError(f"reference_code must be the portrait's expression code [D], got {shape}")


def _in_frames(seconds: float, fps: float) -> float:
    # Rounding removes float noise such as 0.3 * 10 = 3.0000000000000004, which would move a
    # keyframe meant to land on a frame one frame later.
    return round(seconds * fps, 6)


def _first_frame(keyframe: Keyframe, fps: float) -> int:
    return math.ceil(_in_frames(keyframe.time, fps))


def _keyframe_weights(keyframes: tuple[Keyframe, ...], num_frames: int, fps: float) -> torch.Tensor:
    """``[N, 1 + K]`` float64 weights; column 0 is the implicit start, column 1 + k keyframe k.
    Rows sum to 1: each keyframe takes ``ramp`` of the frame from the mix showing before it."""
    frames = torch.arange(num_frames, dtype=torch.float64)
    weights = torch.zeros(num_frames, 1 + len(keyframes), dtype=torch.float64)
    weights[:, 0] = 1.0
    for column, keyframe in enumerate(keyframes, start=1):
        ramp = _ramp(frames, _in_frames(keyframe.time, fps), _in_frames(keyframe.blend, fps))
        weights *= (1 - ramp)[:, None]
        weights[:, column] = ramp
    return weights


def _ramp(frames: torch.Tensor, start: float, length: float) -> torch.Tensor:
    """0 before ``start``, 1 from ``start + length`` on, linear in between (a cut when length is 0)."""
    if length == 0:
        return (frames >= start).to(frames.dtype)
    return ((frames - start) / length).clamp(0, 1)


def _resolve_sources(timeline: EmotionTimeline, used: list[tuple[Keyframe, torch.Tensor]], fps: float,
                     resolver: EmotionResolver, reference_code: torch.Tensor) -> dict:
    """Each needed source -> its code ``[D]`` (video: ``[M, D]``), float64 on the reference's device."""
    vectors = dict.fromkeys(k.source for k, _ in used if k.source.kind != "video")
    if timeline.neutralise_portrait:
        vectors[EmotionSource("label", _NEUTRAL)] = None
    # A clip shared by several keyframes is decoded once, as long as its longest use.
    video_frames: dict[EmotionSource, int] = {}
    for keyframe, weight in used:
        if keyframe.source.kind == "video":
            span = int(weight.nonzero().max()) + 1 - _first_frame(keyframe, fps)
            video_frames[keyframe.source] = max(span, video_frames.get(keyframe.source, 0))
    size, like = reference_code.shape[0], {"device": reference_code.device, "dtype": torch.float64}
    codes = {source: _checked(_resolve_vector(resolver, source), (size,), source).to(**like) for source in vectors}
    for source, frames in video_frames.items():
        clip = _checked(resolver.video(source.value, frames, fps), (None, size), source)
        codes[source] = clip.to(**like)
    return codes


def _resolve_vector(resolver: EmotionResolver, source: EmotionSource) -> torch.Tensor:
    return getattr(resolver, source.kind)(source.value)


def _checked(codes, shape: tuple[int | None, ...], source: EmotionSource) -> torch.Tensor:
    """``codes`` if it is a tensor of ``shape`` (None = any size >= 1), else a ValueError."""
    got = list(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
    fits = isinstance(codes, torch.Tensor) and codes.ndim == len(shape) and all(
        size == want if want is not None else size >= 1 for size, want in zip(codes.shape, shape))
    if not fits:
        want = "[M >= 1, D]" if len(shape) == 2 else "[D]"
        raise ValueError(f"the emotion resolver gave {got} for {source.describe()}; expected {want} with D = {shape[-1]}")
    return codes


def _video_per_frame(clip: torch.Tensor, first: int, weight: torch.Tensor) -> torch.Tensor:
    """``[N, D]``: the clip's codes from frame ``first`` on, ping-ponged over the frames where
    ``weight`` > 0 (frames outside get zeros; their weight is 0)."""
    per_frame = torch.zeros(weight.shape[0], clip.shape[1], dtype=clip.dtype, device=clip.device)
    last = int(weight.nonzero().max())
    steps = torch.arange(last + 1 - first, device=clip.device)
    per_frame[first:last + 1] = clip[_ping_pong(steps, clip.shape[0])]
    return per_frame


def _ping_pong(steps: torch.Tensor, length: int) -> torch.Tensor:
    """Clip frame index for each step: 0, 1, .., length-1, length-2, .., 1, 0, 1, .."""
    if length == 1:
        return torch.zeros_like(steps)
    period = 2 * (length - 1)
    phase = steps % period
    return torch.where(phase < length, phase, period - phase)


def _expression_plan(labels: _Side, videos: _Side, baseline: torch.Tensor, dtype: torch.dtype) -> ExpressionPlan:
    """Divide the sums into means: Di-CTE gets intensity = weighted mean intensity and condition =
    intensity-weighted mean condition, so baseline + intensity * (condition - baseline) equals
    baseline + labels.offset / labels.weight exactly; the baseline at intensity 0 fills frames
    without a label share."""
    def mean(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
        safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
        shape = (-1,) + (1,) * (numerator.ndim - 1)
        return torch.where((denominator > 0).reshape(shape), numerator / safe.reshape(shape), torch.zeros_like(numerator))

    frames = labels.weight.shape[0]
    return ExpressionPlan(
        condition=(baseline + mean(labels.offset, labels.mass)).to(dtype),
        intensity=mean(labels.mass, labels.weight).to(dtype),
        baseline=baseline.expand(frames, -1).to(dtype, copy=True),
        video_codes=(baseline + mean(videos.offset, videos.weight)).to(dtype),
        video_weight=videos.weight.to(dtype),
    )
