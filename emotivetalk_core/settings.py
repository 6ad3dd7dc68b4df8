"""Every setting of a generation in one place: its default, its allowed range, what it resolves to.

:class:`GenerationSettings` owns every knob (the nodes' widgets and the command line's flags take
their defaults from it and their ranges from :data:`LIMITS`). It refuses values no generation can
use, naming the setting (:class:`SettingError`), and resolves the sampling windows, guidance and
UNet calls (:class:`SamplingPlan`) and the decode chunk for a model; :func:`output_size` resolves
the size to make and refuses one the model cannot make; :func:`model_sampling` the steps and
guidance strengths a model samples with when they are left unset (a distilled student's own).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from fractions import Fraction

import numpy as np

from .media import audio as audio_lib
from .sampling import Guidance, default_overlap, window_spans

# Allowed ranges (inclusive) of GenerationSettings' numbers. Upper bounds keep a typo from asking
# for memory no machine has (65536 px, fps 1e-6 = 60 GB of frames) or hours of sampling.
LIMITS = {
    "fps": (1, 120),
    "width": (0, 4096), "height": (0, 4096),  # 0 = the model's native size
    "steps": (1, 500), "dicte_steps": (1, 1000),
    "seed": (0, 2**63 - 1),
    "window": (2, 1000), "overlap": (1, 999), "lip_context": (0, 100), "motion": (0, 1023),
    "decode_chunk": (1, 1000), "max_batch": (1, 1000),
    "av_offset": (-250, 250),
    "reference_strength": (0.0, 30.0), "lip_strength": (0.0, 30.0), "expression_strength": (0.0, 30.0),
    "noise_aug": (0.0, 10.0), "guidance_sigma_min": (0.0, 1000.0),
}


# Steps and guidance strengths of a model left to its own sampling (those settings None). Lip 4 /
# expression 2 (docs/ARCHITECTURE.md, "Guidance"): on held-out SynthTalk clips lip strength 4
# doubles lip sync over 1, and expression 2 gives back the emotion strength the stronger lip pass
# takes (BENCHMARKS.md, "Lip guidance"). Costs a fourth UNet pass per step.
GUIDED_SAMPLING = {"steps": 25, "reference_strength": 2.0, "lip_strength": 4.0, "expression_strength": 2.0}
SAMPLING_SETTINGS = tuple(GUIDED_SAMPLING)


def model_sampling(info: dict) -> dict:
    """The steps and strengths ``info``'s model samples with unless set: a distilled student's own
    (it learned its teacher's guided result in those steps at one UNet pass each, and spends
    passes for nothing, or drifts, at others), else :data:`GUIDED_SAMPLING`."""
    distilled = info.get("distilled")
    if not distilled:
        return dict(GUIDED_SAMPLING)
    reference, lip, expression = distilled["guidance"]
    return {"steps": distilled["steps"], "reference_strength": reference, "lip_strength": lip,
            "expression_strength": expression}


# Steps of a quick look (the demo, the held-out evaluation) at a model that was not distilled: on
# held-out SynthTalk clips within 0.007 of 25 steps at half the passes (BENCHMARKS.md,
# "synth_quality_per_call").
PREVIEW_STEPS = 12


def preview_steps(info: dict) -> int:
    """Steps of a quick look at ``info``'s model: a distilled student's own, else :data:`PREVIEW_STEPS`."""
    return model_sampling(info)["steps"] if info.get("distilled") else PREVIEW_STEPS


def default_guidance() -> Guidance:
    """The guidance a model that was not distilled samples with (training previews show it)."""
    return Guidance(*(GUIDED_SAMPLING[f"{name}_strength"] for name in ("reference", "lip", "expression")))


class SettingError(ValueError):
    """A generation setting out of its allowed range; ``setting`` names it (the command line
    turns it into its flag, ``--`` + the name with dashes)."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting


def _in_range(name: str, value, low, high) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, Fraction)) or not math.isfinite(value):
        raise SettingError(name, f"{name} must be a number in {low}..{high}, got {value!r}")
    if not low <= value <= high:
        raise SettingError(name, f"{name} must be in {low}..{high}, got {float(value):g}")


def _whole_in_range(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SettingError(name, f"{name} must be a whole number in {low}..{high}, got {value!r}")
    if not low <= value <= high:
        raise SettingError(name, f"{name} must be in {low}..{high}, got {value}")


@dataclass
class GenerationSettings:
    """Every knob of a generation. ``None`` means "what the model was trained with" (for the steps
    and guidance strengths: :func:`model_sampling`, resolved by :meth:`for_model`)."""

    fps: float = 25.0
    width: int = 0  # 0 = the model's native size (see native_size)
    height: int = 0
    steps: int | None = None
    sampler: str = "euler"
    seed: int = 0
    motion: int | None = None  # SVD's motion bucket
    noise_aug: float | None = None
    reference_strength: float | None = None
    lip_strength: float | None = None
    expression_strength: float | None = None
    guidance_sigma_min: float = 0.0  # steps below this noise level run one unguided pass (sampling.Guidance)
    av_offset: int = 0  # frames; > 0 moves the mouth later than the audio
    lip_context: int | None = None  # lip frames either side seen by each frame (<= the model's)
    window: int | None = None  # ETHD window in frames (default: the training clip length)
    overlap: int | None = None  # default: 25 % of the window, rounded up
    dicte_steps: int = 25
    decode_chunk: int | None = None  # default: the window
    max_batch: int | None = None  # split guidance passes only under memory pressure

    def validate(self) -> None:
        """Refuse values no generation can use, naming the setting and its allowed range
        (:class:`SettingError`); sizes the model cannot make are refused by :meth:`for_model`."""
        try:
            fps = audio_lib.exact_rate(self.fps, "fps")
        except (TypeError, ValueError) as error:
            raise SettingError("fps", str(error)) from error
        _in_range("fps", fps, *LIMITS["fps"])
        for name in ("width", "height", "dicte_steps", "seed"):
            _whole_in_range(name, getattr(self, name), *LIMITS[name])
        for name in ("steps", "window", "overlap", "lip_context", "motion", "decode_chunk", "max_batch"):
            if getattr(self, name) is not None:
                _whole_in_range(name, getattr(self, name), *LIMITS[name])
        _whole_in_range("av_offset", self.av_offset, *LIMITS["av_offset"])
        for name in ("reference_strength", "lip_strength", "expression_strength", "noise_aug", "guidance_sigma_min"):
            if getattr(self, name) is not None:
                _in_range(name, getattr(self, name), *LIMITS[name])
        if self.window is not None and self.overlap is not None and self.overlap >= self.window:
            raise SettingError("overlap", f"overlap must be less than the window ({self.window} frames), got {self.overlap}")
        if self.sampler not in SAMPLERS:
            raise SettingError("sampler", f"unknown sampler {self.sampler!r}; choose one of {sorted(SAMPLERS)}")

    def as_dict(self) -> dict:
        return asdict(self)

    def for_model(self, model) -> "GenerationSettings":
        """A copy with the model's size (:func:`output_size`; refuses one it cannot make) and its
        own steps and strengths (:func:`model_sampling`) where they are None."""
        width, height = output_size(model, self.width, self.height)
        return replace(self.sampling_for(model), width=width, height=height)

    def sampling_for(self, model) -> "GenerationSettings":
        """A copy with the model's steps and guidance strengths where they are None."""
        return self.with_sampling(model_sampling(model.info))

    def with_sampling(self, own: dict) -> "GenerationSettings":
        """A copy with ``own`` steps and strengths (a :func:`model_sampling`) where they are None."""
        return replace(self, **{name: own[name] for name in SAMPLING_SETTINGS if getattr(self, name) is None})

    def guidance(self) -> Guidance:
        """The guidance of resolved settings (:meth:`sampling_for`)."""
        strengths = (self.reference_strength, self.lip_strength, self.expression_strength)
        if None in strengths:
            raise ValueError("guidance strengths left to the model: resolve them with sampling_for(model) first")
        return Guidance(*strengths, self.guidance_sigma_min)

    def windowing(self, model) -> tuple[int, int]:
        """``(window, overlap)`` in frames: the training clip length and a quarter of it unless set."""
        window = self.window or model.settings["clip_frames"]
        return window, self.overlap or default_overlap(window)

    def decode_chunk_for(self, model) -> int:
        """Frames the VAE decodes at once: ``decode_chunk``, else the sampling window."""
        return self.decode_chunk or self.windowing(model)[0]

    def sampling_plan(self, model, num_frames: int) -> "SamplingPlan":
        """What ETHD sampling of ``num_frames`` frames will do with these settings on ``model``."""
        resolved = self.sampling_for(model)
        window, overlap = self.windowing(model)
        # Heun's last step is Euler's: 2 * steps - 1 model calls per window.
        calls_per_window = 2 * resolved.steps - 1 if self.sampler == "heun" else resolved.steps
        return SamplingPlan(window, overlap, len(window_spans(num_frames, window, overlap)), calls_per_window,
                            resolved.guidance())


@dataclass(frozen=True)
class SamplingPlan:
    """ETHD sampling of one video: its windows, the sampler's model calls per window and the
    guidance (each call evaluates the UNet once per active guidance pass, batched)."""

    window: int
    overlap: int
    windows: int
    calls_per_window: int
    guidance: Guidance

    @property
    def unet_calls(self) -> int:
        """Batched UNet calls of the whole video (what progress bars count)."""
        return self.windows * self.calls_per_window

    @property
    def passes(self) -> int:
        return len(self.guidance.active_passes())


# Models exported before files recorded their training resolution are SVD-size: 512 x 512.
DEFAULT_RESOLUTION = (512, 512)


def native_size(model) -> tuple[int, int]:
    """``(width, height)`` the model was trained at, as its file records it."""
    width, height = model.settings.get("resolution", DEFAULT_RESOLUTION)
    return int(width), int(height)


def size_multiple(model) -> int:
    """Pixels a side must be a multiple of: the VAE's downsampling times the UNet's (64 for SVD)."""
    vae_levels = len(model.vae.config.block_out_channels)
    return 2 ** (vae_levels - 1) * 2 ** (model.unet_levels - 1)


def output_size(model, width: int, height: int) -> tuple[int, int]:
    """Width and height to generate at, 0 meaning the model's native size; refuses a size the
    model cannot generate (not a multiple of its VAE's and UNet's downsampling)."""
    native, multiple = native_size(model), size_multiple(model)
    size = (width or native[0], height or native[1])
    for name, value, default in zip(("width", "height"), size, native):
        if value % multiple:
            raise SettingError(name, f"{name} must be a multiple of {multiple} for this model (or 0 for its native "
                                     f"size {default}), got {value}")
    return size


SAMPLERS = ("euler", "heun", "dpmpp_2m")
