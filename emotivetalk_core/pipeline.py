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

Long audio: the speech encoder and Di-CTE run in overlapping windows of Di-CTE's training
window (fused as ETHD's are), the lip projector in overlapping chunks (:mod:`.chunking`), ETHD
one window at a time, the VAE one chunk at a time; the latent state stays on the host (about
94 MiB per minute of video at 512 px, 25 fps, float32).

The settings of a generation (defaults, ranges, what they resolve to) are :mod:`.settings`'s.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from .chunking import over_chunks
from .media import audio as audio_lib
from .media.image import load_image
from .networks.edi import binary_face_mask, face_region, resolve_face_mask
from .placement import placement
from .sampling import default_overlap, fusion_weights, window_spans
from .settings import GenerationSettings, output_size

log = logging.getLogger(__name__)


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

    def sample_of(self, frame: int) -> int:
        """The first sample of video frame ``frame`` (the end of the audio for ``num_frames``)."""
        return len(self.waveform) if frame >= self.num_frames else round(frame * self.sample_rate / self.fps)


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
    """Speech features at every video frame centre, ``[N, L, D]``, shifted by ``av_offset`` frames.

    The speech is encoded in overlapping windows of Di-CTE's training window, each window alone
    (its own input normalisation, attention over that window), fused as ETHD's windows are: V-AID
    trained on features of exactly that much audio, so inference gives it the same context.
    """
    encoder, window = vaid.speech_encoder, vaid.dicte.window
    device = placement(encoder)["device"]
    overlap = default_overlap(window)
    features = None
    for (start, stop), weight in zip(window_spans(audio.num_frames, window, overlap),
                                     fusion_weights(audio.num_frames, window, overlap), strict=True):
        samples = slice(audio.sample_of(start), audio.sample_of(stop))
        part = encoder.encode(torch.from_numpy(audio.waveform[samples]).to(device), stop - start, audio.fps).float().cpu()
        if features is None:
            features = part.new_zeros((audio.num_frames, *part.shape[1:]))
        features[start:stop] += weight.to(part).view(-1, *([1] * (part.dim() - 1))) * part
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
        face_mask, source = _user_face_mask(mask, width, height), "user mask"
        if face_mask is None:
            source = "face processor"
            face_mask = _face_region(_run_on(vaid.face_processor, portrait), source)
    return Reference(portrait, latent, embeds, codes[0][0], codes[1][0], face_mask, float(noise_aug), source)


def with_face_mask(reference: Reference, mask: torch.Tensor) -> Reference:
    """``reference`` with a user mask (any form :func:`encode_reference` takes) in place of its
    face mask, fitted to the reference's size as the portrait was. An all-zero mask means "no mask
    given" (``resolve_face_mask``) and keeps the reference's own."""
    height, width = reference.image.shape[-2:]
    face_mask = _user_face_mask(mask, width, height)
    return reference if face_mask is None else replace(reference, face_mask=face_mask, mask_source="user mask")


def _user_face_mask(mask: torch.Tensor | None, width: int, height: int) -> torch.Tensor | None:
    user_mask = resolve_face_mask(mask)
    return None if user_mask is None else _face_region(fit_portrait(user_mask, width, height), "user mask")


def _face_region(mask: torch.Tensor, source: str) -> torch.Tensor:
    """The binary mask ETHD trained on (``networks.edi.face_region``), warning when it is empty."""
    if not torch.any(binary_face_mask(mask)):
        log.warning("the face mask from the %s has no pixel above 0.5; the adapters act on the whole frame", source)
    return face_region(mask)


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

    def __init__(self, vaid, images: dict | None = None, videos: dict | None = None, texts: dict | None = None,
                 text_encoder=None):
        self.vaid = vaid
        self.images = dict(images or {})
        self.videos = dict(videos or {})
        # For a Mapping trained on a pretrained text encoder: prompt -> networks.text.TextEmbedding
        # made already (a ComfyUI CLIP), else the embedder to make them with (a transformers folder).
        self.texts = dict(texts or {})
        self.text_encoder = text_encoder

    def label(self, name: str) -> torch.Tensor:
        with torch.no_grad():
            return self.vaid.mapping.from_label([name])[0].float().cpu()

    def text(self, prompt: str) -> torch.Tensor:
        from .networks.text import check_text_encoder, embed_prompt

        mapping = self.vaid.mapping
        with torch.no_grad():
            if mapping.text_record is None or (prompt not in self.texts and self.text_encoder is None):
                return mapping.from_text([prompt])[0].float().cpu()  # the byte encoder, or its refusal
            embedded = self.texts.get(prompt) or embed_prompt(self.text_encoder, prompt)
            check_text_encoder(mapping.text_record, embedded.probes, "the text encoder given")
            return mapping.from_text_embedding(embedded.vector[None])[0].float().cpu()

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
    codes = dicte.sample(  # in Di-CTE's training windows, fused at every step
        speech[None].to(**on), reference.identity[None].to(**on),
        condition=expression_plan.condition[None].to(**on),
        uncond_condition=expression_plan.baseline[None].to(**on),
        guidance=expression_plan.intensity[None].to(**on),
        steps=min(steps, dicte.train_steps), generator=seed,
    )
    return expression_plan.combine(codes[0].float().cpu())


# --- ETHD ----------------------------------------------------------------------------------

def conditioning(model, reference: Reference, lip: torch.Tensor, driven: torch.Tensor,
                 settings: GenerationSettings):
    """ETHD's :class:`~emotivetalk_core.sampling.Conditioning` on the model's device and dtype."""
    return stream_conditioning(reference, lip, driven, model.settings, model.ethd.lip_context, settings,
                               **placement(model.ethd))


def stream_conditioning(reference: Reference, lip: torch.Tensor, driven: torch.Tensor, model_settings: dict,
                        model_lip_context: int, settings: GenerationSettings, device="cpu",
                        dtype: torch.dtype = torch.float32):
    """:func:`conditioning` from what a model file records (its ``settings`` and the adapters'
    ``lip_context``) rather than a loaded model: ComfyUI's own SVD carries no ETHD bundle. The
    native Conditioning node keeps it on the CPU in float32; its UNet wrapper moves each window."""
    from .networks.ethd import lip_windows
    from .svd.conditioning import added_time_ids
    from .sampling import Conditioning

    context = model_lip_context if settings.lip_context is None else settings.lip_context
    if not 0 <= context <= model_lip_context:
        raise ValueError(f"lip_context must be between 0 and the model's {model_lip_context}, got {context}")
    # A smaller context repeats the nearest frame inside ±context into the outer token slots.
    windows = lip_windows(lip[None], context)
    if context < model_lip_context:
        slots = torch.arange(-model_lip_context, model_lip_context + 1).clamp(-context, context) + context
        windows = windows[:, :, slots]
    motion = model_settings["motion_bucket"] if settings.motion is None else settings.motion
    on = {"device": device, "dtype": dtype}
    return Conditioning(
        reference_latent=reference.latent.to(**on),
        image_embeds=reference.image_embeds.to(**on),
        added_time_ids=added_time_ids(model_settings["fps_id"], motion, reference.noise_aug, **on),
        lip_windows=windows.to(**on),
        driven_exp=driven[None].to(**on),
        reference_exp=reference.expression[None].to(**on),
        face_mask=reference.face_mask.to(**on),
    )


def _samplers() -> dict:
    from .sampling import sample_dpmpp_2m, sample_euler, sample_heun

    return {"euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m}


def _warn_off_distillation(info: dict, settings: GenerationSettings) -> None:
    """A distilled student (train/distill_stage.py) samples as it was trained to unless a user sets
    otherwise (settings left None follow it); other settings waste passes, or drift."""
    from .settings import SAMPLING_SETTINGS, model_sampling

    if not info.get("distilled"):
        return
    sampler = info["distilled"]["sampler"]
    own, asked = (tuple(values[name] for name in SAMPLING_SETTINGS)
                  for values in (model_sampling(info), vars(settings)))
    if asked != own or settings.sampler != sampler:
        log.warning("this model was distilled for %d %s steps at guidance strengths %s (one UNet pass per step); "
                    "these settings ask for %d %s steps at %s", own[0], sampler, list(own[1:]),
                    asked[0], settings.sampler, list(asked[1:]))


def sample_latents(model, reference: Reference, lip: torch.Tensor, driven: torch.Tensor,
                   settings: GenerationSettings, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """ETHD reverse process over the whole video: latents ``[N, 4, h, w]`` on the host, in the
    VAE's own space (ComfyUI's LATENT convention, what :func:`decode_frames` takes).

    ``progress(done, total)`` counts window x step UNet evaluations (per sampler model call).
    """
    from .sampling import GuidedDenoiser, WindowedDenoiser, initial_noise, karras_sigmas, start_latents
    from .svd.vae_decode import to_vae_space

    settings.validate()
    settings = settings.sampling_for(model)
    num_frames = driven.shape[0]
    if lip.shape[0] != num_frames:
        raise ValueError(f"lip stream has {lip.shape[0]} frames, the expression stream {num_frames}")
    plan = settings.sampling_plan(model, num_frames)
    _warn_off_distillation(model.info, settings)
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
    return to_vae_space(model.vae, _samplers()[settings.sampler](windowed, x, sigmas)[0])


# --- frames --------------------------------------------------------------------------------

def decode_frames(model, latents: torch.Tensor, chunk: int | None = None) -> Iterator[torch.Tensor]:
    """Frames ``[n, H, W, 3]`` in 0..1, block by block, of latents in the VAE's own space: the VAE
    decodes overlapping chunks of ``chunk`` frames (default: the model's training clip length)."""
    from .svd.vae_decode import decode_latents

    chunk = chunk or model.settings["clip_frames"]
    return decode_latents(model.vae, latents, chunk=chunk, overlap=min(default_overlap(chunk), chunk - 1))


# --- the whole job -------------------------------------------------------------------------

@dataclass
class GenerationResult:
    path: object
    num_frames: int
    fps: float
    seconds: float
    metadata: dict = field(default_factory=dict)


class EmotiveTalkPipeline:
    """Both model bundles on one device, and the stages chained: what the command line runs."""

    def __init__(self, model, vaid, device: str | torch.device = "cpu", files: dict | None = None,
                 dtype: torch.dtype | None = None, text_encoder=None):
        """``dtype``: every network's weights and compute (None: as loaded, float32). bfloat16 and
        float16 run on GPUs and, bfloat16 at least, on CPUs; the log-mel speech features stay
        float32 (``networks.speech.logmel``) and so do the sampler's noise levels and latents
        between steps (``sampling``). ``text_encoder``: the embedder of emotion prompts for a
        Mapping trained on a pretrained text encoder (``networks.text``)."""
        from .bundles import to_device

        self.device = torch.device(device)
        self.model = to_device(model, self.device, dtype)
        self.vaid = to_device(vaid, self.device, dtype)
        self.files = dict(files or {})
        self.text_encoder = text_encoder

    @classmethod
    def from_files(cls, checkpoint="default", base=None, speech_source=None, device="cpu",
                   dtype: torch.dtype | None = None, text_encoder=None) -> "EmotiveTalkPipeline":
        """``text_encoder``: a local transformers text-model folder, for a model trained with one."""
        from .bundles import file_digest, load_emotivetalk_model, load_vaid_model, resolve_model_file

        check_device(device)
        path = resolve_model_file(checkpoint)
        model = load_emotivetalk_model(path, base=base)
        vaid = load_vaid_model(path, speech_source=speech_source)
        files = {"checkpoint": file_digest(path)}
        for name, source in (("base", base), ("speech_encoder", speech_source)):
            if source is not None:
                files[name] = file_digest(source)
        embedder = None
        if text_encoder is not None:
            from .networks.text import TransformersTextEncoder

            embedder = TransformersTextEncoder(text_encoder, device)
        return cls(model, vaid, device, files, dtype, embedder)

    @property
    def trained(self) -> bool:
        return bool(self.model.info.get("trained")) and bool(self.vaid.info.get("trained"))

    def latents(self, image: torch.Tensor, audio: PreparedAudio, settings: GenerationSettings, timeline,
                mask: torch.Tensor | None = None, progress=None, resolver=None):
        """Every stage up to ETHD: ``(latents [N, 4, h, w], reference)``; ``resolver`` as in
        :func:`expand_expression`."""
        settings.validate()
        settings = settings.for_model(self.model)
        speech = encode_speech(self.vaid, audio, settings.av_offset)
        lip = lip_stream(self.vaid, speech)
        reference = encode_reference(self.model, self.vaid, image, settings.width, settings.height, mask,
                                     settings.noise_aug, settings.seed)
        driven = expand_expression(self.vaid, speech, reference, timeline, audio.fps, settings.seed, settings.dicte_steps,
                                   resolver or VAIDEmotionResolver(self.vaid, text_encoder=self.text_encoder))
        return sample_latents(self.model, reference, lip, driven, settings, progress), reference

    def generate_to_file(self, image: torch.Tensor, audio, out_path, settings: GenerationSettings, timeline,
                         mask: torch.Tensor | None = None, progress=None) -> GenerationResult:
        """Write the mp4 (H.264 + AAC, the speech padded to N / fps); frames stream from the decoder."""
        from .emotion import to_json
        from .media.video_writer import VideoWriter

        prepared = audio if isinstance(audio, PreparedAudio) else load_prepared_audio(audio, settings.fps)
        settings = settings.for_model(self.model)
        latents, _ = self.latents(image, prepared, settings, timeline, mask, progress)
        metadata = {
            "comment": video_comment(self.trained),
            "emotivetalk_settings": json.dumps(settings.as_dict(), sort_keys=True),
            "emotivetalk_timeline": to_json(timeline),
            "emotivetalk_models": json.dumps(self.files, sort_keys=True),
        }
        with VideoWriter(out_path, prepared.fps, settings.width, settings.height, audio=prepared.waveform,
                         sample_rate=prepared.sample_rate, metadata=metadata) as writer:
            for block in decode_frames(self.model, latents, settings.decode_chunk_for(self.model)):
                writer.write(block)
        return GenerationResult(out_path, prepared.num_frames, prepared.fps, prepared.num_frames / prepared.fps, metadata)


def video_comment(trained: bool) -> str:
    """The comment every video the pack writes carries (it says so when the model was never trained)."""
    return "made with EmotiveTalk (ComfyUI-EmotiveTalk)" + ("" if trained else "; UNTRAINED model")


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
