"""The whole method, stage by stage: portrait + speech (+ emotion) -> frames and padded audio.

Panel (a) of the figure, left to right. Each stage is a plain function the ComfyUI nodes call one
by one; :class:`EmotiveTalkPipeline` chains them for the command line.

    prepare_audio        audio -> 16 kHz mono, N = frame_count(...), padded to N / fps
    encode_speech        frozen Audio Encoder features at video frame centres   [N, L, D]
    lip_stream           V-AID Audio-lip Projector                               [N, lip_dim]
    encode_reference     portrait -> VAE latent, CLIP embedding, Exp/Identity codes, face mask
    expand_expression    Di-CTE (or an emotion video) over an emotion timeline   [N, exp_dim]
    sample_latents       ETHD reverse process, overlapping windows fused every step
    decode_frames        VAE decoder in overlapping chunks, streaming

Long audio: the speech encoder chunks internally, the lip projector and Di-CTE run in
overlapping chunks here, ETHD runs one window at a time, the VAE one chunk at a time; the latent
state stays on the host (about 94 MiB per minute of video at 512 px, 25 fps, float32).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from .media import audio as audio_lib
from .networks.edi import resolve_face_mask
from .placement import placement
from .sampling import Guidance, default_overlap, window_spans

log = logging.getLogger(__name__)

# Long sequences through the frame-wise V-AID models: chunk length and the context kept on
# each side (the projector's receptive field is far below it; Di-CTE's attention sees 2 s).
SEQUENCE_CHUNK = 250
SEQUENCE_CONTEXT = 50


# --- settings ------------------------------------------------------------------------------

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
    "noise_aug": (0.0, 10.0),
}


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
    """Every knob of a generation. ``None`` means "what the model was trained with"."""

    fps: float = 25.0
    width: int = 0  # 0 = the model's native size (see native_size)
    height: int = 0
    steps: int = 25
    sampler: str = "euler"
    seed: int = 0
    motion: int | None = None  # SVD's motion bucket
    noise_aug: float | None = None
    # Lip 4 / expression 2 (docs/ARCHITECTURE.md, "Guidance"): on held-out SynthTalk clips lip
    # strength 4 doubles lip sync over 1, and expression 2 gives back the emotion strength the
    # stronger lip pass takes (BENCHMARKS.md, "Lip guidance"). Costs a fourth UNet pass per step.
    reference_strength: float = 2.0
    lip_strength: float = 4.0
    expression_strength: float = 2.0
    av_offset: int = 0  # frames; > 0 moves the mouth later than the audio
    lip_context: int | None = None  # lip frames either side seen by each frame (<= the model's)
    window: int | None = None  # ETHD window in frames (default: the training clip length)
    overlap: int | None = None  # default: 25 % of the window, rounded up
    dicte_steps: int = 25
    decode_chunk: int | None = None  # default: the window
    max_batch: int | None = None  # split guidance passes only under memory pressure

    def validate(self) -> None:
        """Refuse values no generation can use, naming the setting and its allowed range
        (:class:`SettingError`); sizes the model cannot make are refused by :meth:`sized_for`."""
        try:
            fps = audio_lib.exact_rate(self.fps, "fps")
        except (TypeError, ValueError) as error:
            raise SettingError("fps", str(error)) from error
        _in_range("fps", fps, *LIMITS["fps"])
        for name in ("width", "height", "steps", "dicte_steps", "seed"):
            _whole_in_range(name, getattr(self, name), *LIMITS[name])
        for name in ("window", "overlap", "lip_context", "motion", "decode_chunk", "max_batch"):
            if getattr(self, name) is not None:
                _whole_in_range(name, getattr(self, name), *LIMITS[name])
        _whole_in_range("av_offset", self.av_offset, *LIMITS["av_offset"])
        for name in ("reference_strength", "lip_strength", "expression_strength", "noise_aug"):
            if getattr(self, name) is not None:
                _in_range(name, getattr(self, name), *LIMITS[name])
        if self.window is not None and self.overlap is not None and self.overlap >= self.window:
            raise SettingError("overlap", f"overlap must be less than the window ({self.window} frames), got {self.overlap}")
        if self.sampler not in SAMPLERS:
            raise SettingError("sampler", f"unknown sampler {self.sampler!r}; choose one of {sorted(SAMPLERS)}")

    def as_dict(self) -> dict:
        return asdict(self)

    def guidance(self) -> Guidance:
        return Guidance(self.reference_strength, self.lip_strength, self.expression_strength)

    def windowing(self, model) -> tuple[int, int]:
        """``(window, overlap)`` in frames: the training clip length and a quarter of it unless set."""
        window = self.window or model.settings["clip_frames"]
        return window, self.overlap or default_overlap(window)

    def decode_chunk_for(self, model) -> int:
        """Frames the VAE decodes at once: ``decode_chunk``, else the sampling window."""
        return self.decode_chunk or self.windowing(model)[0]

    def sampling_plan(self, model, num_frames: int) -> "SamplingPlan":
        """What ETHD sampling of ``num_frames`` frames will do with these settings."""
        window, overlap = self.windowing(model)
        # Heun's last step is Euler's: 2 * steps - 1 model calls per window.
        calls_per_window = 2 * self.steps - 1 if self.sampler == "heun" else self.steps
        return SamplingPlan(window, overlap, len(window_spans(num_frames, window, overlap)), calls_per_window,
                            self.guidance())

    def sized_for(self, model) -> "GenerationSettings":
        """A copy with the size :func:`output_size` resolves (0 = the model's native size)."""
        width, height = output_size(model, self.width, self.height)
        return replace(self, width=width, height=height)


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
    unet_levels = len(model.ethd.unet.config.block_out_channels)
    return 2 ** (vae_levels - 1) * 2 ** (unet_levels - 1)


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


def _samplers() -> dict:
    from .sampling import sample_euler, sample_heun

    return {"euler": sample_euler, "heun": sample_heun}


SAMPLERS = ("euler", "heun")


# --- audio ---------------------------------------------------------------------------------

@dataclass
class PreparedAudio:
    """Speech at 16 kHz mono, padded with silence to exactly ``num_frames / fps``."""

    waveform: np.ndarray
    num_frames: int
    fps: float
    sample_rate: int = audio_lib.SAMPLE_RATE
    source_samples: int = 0  # length before padding

    @property
    def seconds(self) -> float:
        return len(self.waveform) / self.sample_rate


def prepare_audio(waveform, sample_rate: int, fps: float) -> PreparedAudio:
    """Mono, 16 kHz, N = ceil(samples * fps / 16000) frames, silence-padded to N / fps.

    The frame count is taken at 16 kHz (the rate every stage reads). Nothing is cut.
    """
    mono = audio_lib.to_speech_rate(waveform, sample_rate)
    num_frames = audio_lib.frame_count(len(mono), fps)
    padded = audio_lib.pad_to_frames(mono, num_frames, fps)
    return PreparedAudio(padded, num_frames, float(fps), source_samples=len(mono))


def load_prepared_audio(path, fps: float) -> PreparedAudio:
    return prepare_audio(audio_lib.load_audio(path), audio_lib.SAMPLE_RATE, fps)


# --- V-AID ---------------------------------------------------------------------------------

def encode_speech(vaid, audio: PreparedAudio, av_offset: int = 0) -> torch.Tensor:
    """Speech features at every video frame centre, ``[N, L, D]``, shifted by ``av_offset`` frames."""
    device = placement(vaid.speech_encoder)["device"]
    waveform = torch.from_numpy(audio.waveform).to(device)
    features = vaid.speech_encoder.encode(waveform, audio.num_frames, audio.fps)
    return shift_frames(features, av_offset)


def shift_frames(sequence: torch.Tensor, offset: int) -> torch.Tensor:
    """Frame j takes frame j - offset (edge frames repeat): > 0 delays, < 0 advances."""
    if offset == 0:
        return sequence
    index = (torch.arange(sequence.shape[0], device=sequence.device) - offset).clamp(0, sequence.shape[0] - 1)
    return sequence[index]


def lip_stream(vaid, speech: torch.Tensor) -> torch.Tensor:
    """V-AID lip stream ``[N, lip_dim]`` from speech features ``[N, L, D]``."""
    projector, on = vaid.lip_projector, placement(vaid.lip_projector)
    return over_chunks(lambda part: projector(speech[part][None].to(**on))[0].float().cpu(), speech.shape[0])


def over_chunks(fn: Callable[[slice], torch.Tensor], total: int,
                chunk: int = SEQUENCE_CHUNK, context: int = SEQUENCE_CONTEXT) -> torch.Tensor:
    """Run a frame-sequence model over ``total`` frames in overlapping chunks.

    ``fn(frames)`` returns the outputs ``[n, ...]`` of the frames in the slice. Each chunk sees
    ``context`` extra frames on both sides, and neighbouring chunks are crossfaded linearly
    over their shared frames, so there is no step between chunks. A sequence no longer than
    ``chunk + 2 * context`` is one call.
    """
    if total <= chunk + 2 * context:
        with torch.no_grad():
            return fn(slice(0, total))
    output = weight_sum = None
    for start in range(0, total, chunk):
        lo, hi = max(0, start - context), min(total, start + chunk + context)
        with torch.no_grad():
            part = fn(slice(lo, hi))
        weight = _crossfade_weights(lo, hi, total, context).to(part.dtype)
        if output is None:
            output = part.new_zeros((total, *part.shape[1:]))
            weight_sum = part.new_zeros(total)
        output[lo:hi] += weight.view(-1, *([1] * (part.dim() - 1))) * part
        weight_sum[lo:hi] += weight
    return output / weight_sum.view(-1, *([1] * (output.dim() - 1)))


def _crossfade_weights(lo: int, hi: int, total: int, context: int) -> torch.Tensor:
    # Ramps up over the leading 2*context frames (unless at the sequence start) and down over
    # the trailing ones (unless at the end); strictly positive so every frame has weight.
    k = torch.arange(hi - lo, dtype=torch.float64)
    ramp = 2 * context
    up = torch.ones_like(k) if lo == 0 else ((k + 0.5) / ramp).clamp(max=1)
    down = torch.ones_like(k) if hi == total else ((hi - lo - k - 0.5) / ramp).clamp(max=1)
    return (up * down).float()


# --- reference (EDI's inputs from the portrait) ----------------------------------------------

@dataclass
class Reference:
    """Everything ETHD and Di-CTE need from the portrait (ComfyUI type EMOTIVETALK_REFERENCE)."""

    image: torch.Tensor  # [1, 3, H, W] in 0..1, resized to the output size
    latent: torch.Tensor  # [1, 4, H/8, W/8] SVD VAE latent (noise-augmented, unscaled)
    image_embeds: torch.Tensor  # [1, 1, C]
    expression: torch.Tensor  # [exp_dim]  Exp Encoder(x_ref)
    identity: torch.Tensor  # [id_dim]  Identity Encoder(x_ref)
    face_mask: torch.Tensor  # [1, 1, H, W] in 0..1, 1 = face
    noise_aug: float
    mask_source: str = "face processor"


def fit_portrait(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize ``[B, 3, H, W]`` to cover ``width x height`` keeping its aspect, then centre-crop.

    Nothing is stretched; for a portrait that is not a face-centred square, crop around the face
    first (the face crop / paste-back nodes do).
    """
    _, _, h, w = image.shape
    scale = max(width / w, height / h)
    size = (max(height, round(h * scale)), max(width, round(w * scale)))
    resized = F.interpolate(image.float(), size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return resized[:, :, top:top + height, left:left + width]


def encode_reference(model, vaid, image: torch.Tensor, width: int, height: int, mask: torch.Tensor | None = None,
                     noise_aug: float | None = None, seed: int = 0) -> Reference:
    """Portrait ``[1, 3, H, W]`` (0..1) -> :class:`Reference` at the output size (a 0 width or
    height = the model's native size).

    A user mask (``[H, W]``, ``[1, H, W]`` or ``[1, 1, H, W]``, 1 = face) wins over the Face
    Processor; it is fitted to the output exactly like the portrait.
    """
    from .svd.conditioning import image_embeds, reference_latent

    noise_aug = model.settings["noise_aug"] if noise_aug is None else noise_aug
    width, height = output_size(model, width, height)
    portrait = fit_portrait(image, width, height)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latent = reference_latent(model.vae, portrait, noise_aug, generator).float().cpu()
        embeds = image_embeds(model.image_encoder, portrait).float().cpu()
        codes = _run_on(vaid.exp_encoder, portrait), _run_on(vaid.identity_encoder, portrait)
        user_mask = resolve_face_mask(mask)
        if user_mask is not None:
            face_mask, source = fit_portrait(user_mask, width, height).clamp(0, 1), "user mask"
        else:
            face_mask, source = _run_on(vaid.face_processor, portrait), "face processor"
    return Reference(portrait, latent, embeds, codes[0][0], codes[1][0], face_mask, float(noise_aug), source)


def _run_on(module, images: torch.Tensor) -> torch.Tensor:
    return module(images.to(**placement(module))).float().cpu()


# --- Di-CTE: the expression stream ----------------------------------------------------------

# Emotion video frames go through the Exp Encoder this many at a time (bounded memory for long videos).
VIDEO_BLOCK = 64


class VAIDEmotionResolver:
    """Emotion sources -> vectors in Di-CTE's condition space, with the V-AID bundle's models.

    Labels and texts go through the Mapping; an image through the Exp Encoder then the Mapping;
    a video's frames through the Exp Encoder (a temporal source bypasses Di-CTE). Images and
    videos are files, or tensors held in memory under the value of their EmotionSource (what the
    ComfyUI nodes and the SynthTalk evaluation pass): ``images`` maps a key to ``[B, 3, H, W]``
    in 0..1 (several example faces: the mean of their expressions), ``videos`` to
    ``(frames [T, 3, H, W] in 0..1, their fps)``.
    """

    def __init__(self, vaid, images: dict | None = None, videos: dict | None = None):
        self.vaid = vaid
        self.images = dict(images or {})
        self.videos = dict(videos or {})

    def label(self, name: str) -> torch.Tensor:
        with torch.no_grad():
            return self.vaid.mapping.from_label([name])[0].float().cpu()

    def text(self, prompt: str) -> torch.Tensor:
        with torch.no_grad():
            return self.vaid.mapping.from_text([prompt])[0].float().cpu()

    def image(self, value) -> torch.Tensor:
        images = self.images[value] if value in self.images else load_image(value)
        code = self.expressions(images).mean(0, keepdim=True)
        with torch.no_grad():
            return self.vaid.mapping.from_image(code.to(placement(self.vaid.mapping)["device"]))[0].float().cpu()

    def video(self, value, num_frames: int, fps: float) -> torch.Tensor:
        """Exp codes of the video's first ``num_frames`` frames at ``fps``."""
        if value in self.videos:
            frames, source_fps = self.videos[value]
            from .media.video_reader import frames_at

            blocks = frames_at(frames, source_fps, fps, num_frames).split(VIDEO_BLOCK)
        else:
            blocks = _video_file_blocks(value, num_frames, fps)
        codes = [self.expressions(block) for block in blocks]
        if not codes:
            raise ValueError(f"emotion video {value} has no frames")
        return torch.cat(codes)

    def expressions(self, images: torch.Tensor) -> torch.Tensor:
        """Exp Encoder codes ``[B, exp_dim]`` of images ``[B, 3, H, W]`` (centre square, any size)."""
        side = min(images.shape[-2:])
        with torch.no_grad():
            return _run_on(self.vaid.exp_encoder, fit_portrait(images, side, side))


def _video_file_blocks(path, num_frames: int, fps: float) -> Iterator[torch.Tensor]:
    """The first ``num_frames`` frames of a video file at ``fps``, ``[n, 3, H, W]`` blocks, decoded as needed."""
    from itertools import islice

    from .media.video_reader import iter_video_frames

    frames, remaining = iter_video_frames(path, fps=fps), num_frames
    while remaining > 0 and (block := list(islice(frames, min(VIDEO_BLOCK, remaining)))):
        yield torch.from_numpy(np.stack(block)).permute(0, 3, 1, 2)
        remaining -= len(block)


def expand_expression(vaid, speech: torch.Tensor, reference: Reference, timeline, fps: float,
                      seed: int = 0, steps: int = 25, resolver=None) -> torch.Tensor:
    """Driven expression codes ``[N, exp_dim]`` for every video frame, following ``timeline``.

    Di-CTE expands label/text/image sources over the speech (intensity = its guidance between the
    portrait's own expression and the requested one); video-sourced frames take the video's codes.
    ``resolver`` turns sources into vectors (default: :class:`VAIDEmotionResolver`, file sources;
    the ComfyUI nodes pass one that reads image tensors).
    """
    from .emotion import plan

    num_frames = speech.shape[0]
    expression_plan = plan(timeline, num_frames, fps, resolver or VAIDEmotionResolver(vaid), reference.expression)
    if not expression_plan.uses_dicte:  # emotion videos drive every frame
        return expression_plan.combine()
    dicte, on = vaid.dicte, placement(vaid.dicte)
    identity = reference.identity[None].to(**on)

    def sample(frames: slice) -> torch.Tensor:
        return dicte.sample(
            speech[frames][None].to(**on), identity,
            condition=expression_plan.condition[frames][None].to(**on),
            uncond_condition=expression_plan.baseline[frames][None].to(**on),
            guidance=expression_plan.intensity[frames][None].to(**on),
            steps=min(steps, dicte.train_steps), generator=seed + frames.start,
        )[0].float().cpu()

    return expression_plan.combine(over_chunks(sample, num_frames))


# --- ETHD ----------------------------------------------------------------------------------

def conditioning(model, reference: Reference, lip: torch.Tensor, driven: torch.Tensor,
                 settings: GenerationSettings):
    """ETHD's :class:`~emotivetalk_core.sampling.Conditioning` on the model's device and dtype."""
    from .networks.ethd import lip_windows
    from .svd.conditioning import added_time_ids
    from .sampling import Conditioning

    ethd = model.ethd
    model_context = ethd.lip_context
    context = model_context if settings.lip_context is None else settings.lip_context
    if not 0 <= context <= model_context:
        raise ValueError(f"lip_context must be between 0 and the model's {model_context}, got {context}")
    # A smaller context repeats the nearest frame inside ±context into the outer token slots.
    windows = lip_windows(lip[None], context)
    if context < model_context:
        slots = torch.arange(-model_context, model_context + 1).clamp(-context, context) + context
        windows = windows[:, :, slots]
    motion = model.settings["motion_bucket"] if settings.motion is None else settings.motion
    on = placement(ethd)
    return Conditioning(
        reference_latent=reference.latent.to(**on),
        image_embeds=reference.image_embeds.to(**on),
        added_time_ids=added_time_ids(model.settings["fps_id"], motion, reference.noise_aug, **on),
        lip_windows=windows.to(**on),
        driven_exp=driven[None].to(**on),
        reference_exp=reference.expression[None].to(**on),
        face_mask=reference.face_mask.to(**on),
    )


def sample_latents(model, reference: Reference, lip: torch.Tensor, driven: torch.Tensor,
                   settings: GenerationSettings, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """ETHD reverse process over the whole video: raw SVD latents ``[N, 4, h, w]`` on the host.

    ``progress(done, total)`` counts window x step UNet evaluations (per sampler model call).
    """
    from .sampling import GuidedDenoiser, WindowedDenoiser, initial_noise, karras_sigmas, start_latents

    settings.validate()
    num_frames = driven.shape[0]
    if lip.shape[0] != num_frames:
        raise ValueError(f"lip stream has {lip.shape[0]} frames, the expression stream {num_frames}")
    plan = settings.sampling_plan(model, num_frames)
    denoiser = GuidedDenoiser(model.ethd, conditioning(model, reference, lip, driven, settings), plan.guidance,
                              settings.max_batch)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, plan.unet_calls)

    windowed = WindowedDenoiser(denoiser, plan.window, plan.overlap, on_window=tick)
    sigmas = karras_sigmas(settings.steps)
    height, width = reference.latent.shape[-2:]
    x = start_latents(initial_noise(settings.seed, num_frames, (4, height, width)), sigmas)
    return _samplers()[settings.sampler](windowed, x, sigmas)[0]


# --- frames --------------------------------------------------------------------------------

def decode_frames(model, latents: torch.Tensor, chunk: int | None = None) -> Iterator[torch.Tensor]:
    """Frames ``[n, H, W, 3]`` in 0..1, block by block: the VAE decodes overlapping chunks of
    ``chunk`` frames (default: the model's training clip length)."""
    from .svd.vae_decode import decode_latents

    chunk = chunk or model.settings["clip_frames"]
    return decode_latents(model.vae, latents, chunk=chunk, overlap=min(default_overlap(chunk), chunk - 1))


# --- the whole job -------------------------------------------------------------------------

def load_image(path) -> torch.Tensor:
    """An image file as ``[1, 3, H, W]`` float in 0..1 (RGB; alpha dropped), upright.

    Phone photos are turned as their EXIF orientation says; 16-bit and 32-bit integer images are
    scaled from their full range and float images read as 0..1 (PIL's RGB conversion would clip
    them to white or black).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = _rgb_array(ImageOps.exif_transpose(image))
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image this machine can read (try PNG or JPEG)") from None
    except Image.DecompressionBombError as error:
        raise ValueError(f"{path} is too large to read safely ({error}); resize it below 8000 x 8000 pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # PIL's words for truncated or damaged files
        raise ValueError(f"{path}: cannot read the image ({error}); the file is damaged or incomplete: export it again") from None
    if not np.isfinite(rgb).all():
        raise ValueError(f"{path}: the image has NaN or infinite pixels; export it again as an 8-bit PNG or JPEG")
    return torch.from_numpy(np.clip(rgb, 0.0, 1.0)).permute(2, 0, 1)[None]


def _rgb_array(image) -> np.ndarray:
    """``[H, W, 3]`` float32 in 0..1 of any PIL image."""
    if image.mode == "F":  # float images are 0..1
        grey = np.asarray(image, dtype=np.float32)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode == "I" or image.mode.startswith("I;16"):  # 16-bit (PNG) or 32-bit integer grey
        grey = np.asarray(image, dtype=np.float64)
        full = 65535.0 if grey.max(initial=0) <= 65535 else 2.0**31 - 1
        return np.repeat((grey / full).astype(np.float32)[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


@dataclass
class GenerationResult:
    path: object
    num_frames: int
    fps: float
    seconds: float
    metadata: dict = field(default_factory=dict)


class EmotiveTalkPipeline:
    """Both model bundles on one device, and the stages chained: what the command line runs."""

    def __init__(self, model, vaid, device: str | torch.device = "cpu", files: dict | None = None):
        from .bundles import to_device

        self.device = torch.device(device)
        self.model = to_device(model, self.device)
        self.vaid = to_device(vaid, self.device)
        self.files = dict(files or {})

    @classmethod
    def from_files(cls, checkpoint="default", base=None, speech_source=None, device="cpu") -> "EmotiveTalkPipeline":
        from .bundles import file_digest, load_emotivetalk_model, load_vaid_model, resolve_model_file

        check_device(device)
        path = resolve_model_file(checkpoint)
        model = load_emotivetalk_model(path, base=base)
        vaid = load_vaid_model(path, speech_source=speech_source)
        files = {"checkpoint": file_digest(path)}
        for name, source in (("base", base), ("speech_encoder", speech_source)):
            if source is not None:
                files[name] = file_digest(source)
        return cls(model, vaid, device, files)

    @property
    def trained(self) -> bool:
        return bool(self.model.info.get("trained")) and bool(self.vaid.info.get("trained"))

    def latents(self, image: torch.Tensor, audio: PreparedAudio, settings: GenerationSettings, timeline,
                mask: torch.Tensor | None = None, progress=None, resolver=None):
        """Every stage up to ETHD: ``(latents [N, 4, h, w], reference)``; ``resolver`` as in
        :func:`expand_expression`."""
        settings.validate()
        settings = settings.sized_for(self.model)
        speech = encode_speech(self.vaid, audio, settings.av_offset)
        lip = lip_stream(self.vaid, speech)
        reference = encode_reference(self.model, self.vaid, image, settings.width, settings.height, mask,
                                     settings.noise_aug, settings.seed)
        driven = expand_expression(self.vaid, speech, reference, timeline, audio.fps, settings.seed, settings.dicte_steps,
                                   resolver)
        return sample_latents(self.model, reference, lip, driven, settings, progress), reference

    def generate_to_file(self, image: torch.Tensor, audio, out_path, settings: GenerationSettings, timeline,
                         mask: torch.Tensor | None = None, progress=None) -> GenerationResult:
        """Write the mp4 (H.264 + AAC, the speech padded to N / fps); frames stream from the decoder."""
        from .emotion import to_json
        from .media.video_writer import VideoWriter

        prepared = audio if isinstance(audio, PreparedAudio) else load_prepared_audio(audio, settings.fps)
        settings = settings.sized_for(self.model)
        latents, _ = self.latents(image, prepared, settings, timeline, mask, progress)
        metadata = {
            "comment": "made with EmotiveTalk (ComfyUI-EmotiveTalk)" + ("" if self.trained else "; UNTRAINED model"),
            "emotivetalk_settings": json.dumps(settings.as_dict(), sort_keys=True),
            "emotivetalk_timeline": to_json(timeline),
            "emotivetalk_models": json.dumps(self.files, sort_keys=True),
        }
        with VideoWriter(out_path, prepared.fps, settings.width, settings.height, audio=prepared.waveform,
                         sample_rate=prepared.sample_rate, metadata=metadata) as writer:
            for block in decode_frames(self.model, latents, settings.decode_chunk_for(self.model)):
                writer.write(block)
        return GenerationResult(out_path, prepared.num_frames, prepared.fps, prepared.num_frames / prepared.fps, metadata)


def check_device(name) -> None:
    """Refuse a device torch does not know or this install cannot use, before any model loads."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{str(name)!r} is not a device name torch knows; use cpu, cuda, cuda:N or mps") from None
    usable = {"cpu": lambda: True, "cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if device.type not in usable:
        raise ValueError(f"{str(name)!r}: EmotiveTalk runs on cpu, cuda or mps")
    if not usable[device.type]():
        raise ValueError(f"{str(name)!r}: this torch install cannot use {device.type} here; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{str(name)!r}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 onwards")
