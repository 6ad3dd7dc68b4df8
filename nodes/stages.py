"""Stage nodes: audio prepare, V-AID decouple, EDI reference, Di-CTE expand, ETHD sampler.

Each node converts ComfyUI types, brings the models it needs onto the GPU (comfy_bridge.use),
calls one core stage, and hands core results on (outputs ComfyUI shows or reuses go to
ComfyUI's intermediate device).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from . import _widgets as widgets
from . import comfy_bridge as bridge
from ._core import core_module, pipeline
from ._core import settings as settings_lib  # "settings" is a node's GenerationSettings
from ._types import (
    AUDIO_EXP,
    AUDIO_PREPARED,
    CATEGORY,
    EMOTION,
    EXPRESSION,
    LIP,
    MODEL,
    REFERENCE,
    VAID,
    EmotionInput,
    PreparedSpeech,
    SpeechFeatures,
    checked_images,
    checked_number,
)

log = logging.getLogger(__name__)


# --- audio -----------------------------------------------------------------------------------

def comfy_audio(waveform: np.ndarray, sample_rate: int) -> dict:
    """A mono waveform as ComfyUI's AUDIO: ``{"waveform": [1, 1, T] float32, "sample_rate"}``."""
    return {"waveform": torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))[None, None],
            "sample_rate": int(sample_rate)}


def prepare_speech(audio: dict, fps: float, av_offset: int, node: str = "EmotiveTalk Audio Prepare") -> PreparedSpeech:
    """The speech at 16 kHz with its frame count; a bad AUDIO is refused naming ``node``'s input."""
    where = f"{node}, input 'audio'"
    waveform = comfy_waveform(audio, where)
    if waveform.shape[0] > 1:
        log.warning("the AUDIO holds a batch of %d clips; EmotiveTalk uses the first", waveform.shape[0])
    try:
        prepared = pipeline.prepare_audio(waveform[0], int(audio["sample_rate"]), fps)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error
    return PreparedSpeech(**vars(prepared), av_offset=int(av_offset))


def comfy_waveform(audio, where: str) -> torch.Tensor:
    """The ``[B, C, T]`` waveform of a ComfyUI AUDIO, or an error naming what is wrong with it."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError(f"{where}: expected ComfyUI AUDIO (a dict with 'waveform' and 'sample_rate'), got {type(audio).__name__}")
    waveform = audio["waveform"]
    if not isinstance(waveform, torch.Tensor) or waveform.ndim != 3:
        shape = tuple(waveform.shape) if hasattr(waveform, "shape") else type(waveform).__name__
        raise ValueError(f"{where}: the waveform must be [batch, channels, samples], got {shape}; "
                         f"load it with Load Audio or a node that makes ComfyUI AUDIO")
    if 0 in waveform.shape[:2]:
        raise ValueError(f"{where}: the waveform {tuple(waveform.shape)} has no clip or no channel")
    return waveform


class EmotiveTalkAudioPrepare:
    DESCRIPTION = ("Speech -> 16 kHz mono, the number of video frames it drives at fps, padded with silence to exactly "
                   "frames / fps (pass the padded AUDIO to the video saver so audio and video end together).")
    CATEGORY = f"{CATEGORY}/audio"
    RETURN_TYPES = (AUDIO_PREPARED, "AUDIO", "INT", "FLOAT")
    RETURN_NAMES = ("speech", "padded_audio", "frame_count", "fps")
    FUNCTION = "prepare"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "audio": ("AUDIO", {"tooltip": "The speech to animate (e.g. from Load Audio); stereo is mixed down."}),
            "fps": widgets.fps(),
            "av_offset": ("INT", {"default": widgets.DEFAULTS.av_offset, "min": -50, "max": 50,
                                  "tooltip": "Lip-sync shift in frames: above 0 moves the mouth later than the audio, below 0 earlier."}),
        }}

    def prepare(self, audio, fps, av_offset):
        speech = prepare_speech(audio, fps, av_offset)
        return speech, comfy_audio(speech.waveform, speech.sample_rate), speech.num_frames, speech.fps


# --- V-AID -----------------------------------------------------------------------------------

class EmotiveTalkVAIDDecouple:
    DESCRIPTION = "V-AID: splits the speech into a lip stream (for ETHD) and speech features for the expression stream (Di-CTE)."
    CATEGORY = f"{CATEGORY}/audio"
    RETURN_TYPES = (LIP, AUDIO_EXP)
    RETURN_NAMES = ("lip", "audio_exp")
    FUNCTION = "decouple"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vaid": (VAID, {"tooltip": "From EmotiveTalk V-AID Loader."}),
            "speech": (AUDIO_PREPARED, {"tooltip": "From EmotiveTalk Audio Prepare (carries fps and A/V offset)."}),
        }}

    def decouple(self, vaid, speech):
        bridge.use(vaid, "vaid")
        features = pipeline.encode_speech(vaid, speech, speech.av_offset)
        lip = pipeline.lip_stream(vaid, features)
        return lip, SpeechFeatures(features.float().cpu(), speech.fps)


# --- reference (EDI's portrait inputs) -------------------------------------------------------

def image_to_nchw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, C]`` -> ``[B, 3, H, W]`` float on the CPU (alpha dropped)."""
    return image[..., :3].permute(0, 3, 1, 2).float().cpu()


EDI_REFERENCE = "EmotiveTalk EDI Reference"


class EmotiveTalkEDIReference:
    DESCRIPTION = ("Reads the portrait for EDI and ETHD: its VAE latent, image embedding, own expression, identity and "
                   "face mask, at the output size.")
    CATEGORY = f"{CATEGORY}/generation"
    RETURN_TYPES = (REFERENCE, "MASK")
    RETURN_NAMES = ("reference", "face_mask")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        portrait, mask = widgets.portrait_inputs()
        return {
            "required": {
                "model": (MODEL, {"tooltip": "From EmotiveTalk Model Loader."}),
                "vaid": (VAID, {"tooltip": "From EmotiveTalk V-AID Loader (its encoders read the portrait)."}),
                **portrait,
            },
            "optional": mask,
        }

    def encode(self, model, vaid, portrait, width, height, noise_aug, seed, mask=None):
        portrait, noise_aug = checked_reference_inputs(model, portrait, width, height, noise_aug, EDI_REFERENCE)
        bridge.use(model, "vae", "image_encoder")
        return encoded_reference(model, vaid, portrait, width, height, noise_aug, seed, mask)


def checked_reference_inputs(model, portrait, width, height, noise_aug, node: str) -> tuple[torch.Tensor, float]:
    """A reference node's portrait and noise_aug, checked; a size the model cannot make is named
    before any model moves to the GPU. ``model``: what ``pipeline.encode_reference`` reads."""
    portrait = checked_images(portrait, f"{node}, input 'portrait'")
    noise_aug = checked_number(noise_aug, f"{node}, input 'noise_aug'")
    if portrait.shape[0] > 1:
        log.warning("the portrait IMAGE holds %d images; EmotiveTalk uses the first", portrait.shape[0])
    try:
        settings_lib.output_size(model, width, height)
    except settings_lib.SettingError as error:
        raise ValueError(f"{node}, input '{error.setting}': {error}") from error
    return portrait, noise_aug


def encoded_reference(model, vaid, portrait, width, height, noise_aug, seed, mask=None) -> tuple:
    """``(REFERENCE, face MASK)`` of a checked portrait, with ``model``'s VAE and image encoder."""
    bridge.use(vaid, "vaid")
    reference = pipeline.encode_reference(
        model, vaid, image_to_nchw(portrait[:1]), width, height,
        mask=None if mask is None else mask[:1].float().cpu(),
        noise_aug=None if noise_aug < 0 else noise_aug, seed=seed,
    )
    height, width = reference.image.shape[-2:]
    log.info("EmotiveTalk reference %dx%d, face mask from the %s", width, height, reference.mask_source)
    return reference, reference.face_mask[:, 0].to(bridge.intermediate_device())


# --- Di-CTE ----------------------------------------------------------------------------------

def emotion_resolver(vaid, emotion: EmotionInput):
    """The library's resolver, with the emotion images and videos that arrive as ComfyUI IMAGEs
    (kept under the key their EmotionSource carries)."""
    return pipeline.VAIDEmotionResolver(
        vaid, images={key: image_to_nchw(images) for key, images in emotion.images.items()},
        videos={key: (image_to_nchw(frames), fps) for key, (frames, fps) in emotion.videos.items()},
        texts=emotion.texts)


class EmotiveTalkDiCTEExpand:
    DESCRIPTION = ("Di-CTE: expands the emotion (timeline) over the speech into a per-frame, speech-aligned expression "
                   "sequence for the portrait.")
    CATEGORY = f"{CATEGORY}/generation"
    RETURN_TYPES = (EXPRESSION,)
    RETURN_NAMES = ("expression",)
    FUNCTION = "expand"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vaid": (VAID, {"tooltip": "From EmotiveTalk V-AID Loader."}),
            "audio_exp": (AUDIO_EXP, {"tooltip": "Speech features from EmotiveTalk V-AID Decouple."}),
            "reference": (REFERENCE, {"tooltip": "From EmotiveTalk EDI Reference (Di-CTE reads the portrait's identity and expression)."}),
            "emotion": (EMOTION, {"tooltip": "An emotion source or an emotion timeline."}),
            "seed": widgets.seed(),
            "steps": widgets.dicte_steps("Di-CTE sampling steps (capped at the model's training steps)."),
        }}

    def expand(self, vaid, audio_exp, reference, emotion, seed, steps):
        bridge.use(vaid, "vaid")
        expression = pipeline.expand_expression(vaid, audio_exp.features, reference, emotion.timeline, audio_exp.fps,
                                                seed, steps, resolver=emotion_resolver(vaid, emotion))
        return (expression,)


# --- ETHD ------------------------------------------------------------------------------------

def model_tag(model) -> str:
    """Which VAE space a LATENT is in (our LATENT records the model that made it: docs/ARCHITECTURE.md, "LATENTs")."""
    vae = model.vae
    return f"{model.info.get('config', 'custom')}:{type(vae).__name__}:{vae.config.scaling_factor:g}"


def log_estimate(model, settings: settings_lib.GenerationSettings, num_frames: int, latent_shape) -> int:
    """Log what the sampler is about to cost; returns the number of UNet calls."""
    plan = settings.sampling_plan(model, num_frames)
    state = num_frames * math.prod(latent_shape) * 4
    weights = sum(p.numel() * p.element_size() for p in model.ethd.parameters())
    rate = bridge.notes(model).get("seconds_per_call")
    timing = f", about {plan.unet_calls * rate:.0f} s at the last run's speed" if rate else ""
    log.info("EmotiveTalk ETHD: %d frames, %d windows of %d x %d steps = %d UNet calls of batch %d%s; "
             "ETHD weights %.0f MiB on the device; host latent state %.1f MiB (x2 while stepping)",
             num_frames, plan.windows, plan.window, plan.calls_per_window, plan.unet_calls, plan.passes * plan.window,
             timing, weights / 2**20, state / 2**20)
    return plan.unet_calls


class EmotiveTalkETHDSampler:
    DESCRIPTION = ("ETHD: the video diffusion reverse process over the whole speech in overlapping windows, driven by the "
                   "lip stream and the expression sequence.")
    CATEGORY = f"{CATEGORY}/generation"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "From EmotiveTalk Model Loader."}),
            "reference": (REFERENCE, {"tooltip": "From EmotiveTalk EDI Reference (sets the output size)."}),
            "lip": (LIP, {"tooltip": "Lip stream from EmotiveTalk V-AID Decouple."}),
            "expression": (EXPRESSION, {"tooltip": "Expression sequence from EmotiveTalk Di-CTE Expand."}),
            "steps": widgets.steps("Denoising steps."),
            "sampler": (list(settings_lib.SAMPLERS), {"default": widgets.DEFAULTS.sampler, "tooltip": "euler: one UNet call per step; heun: second order, about twice the calls; dpmpp_2m: second order at one call per step (DPM-Solver++ 2M)."}),
            "seed": widgets.seed(),
            **widgets.guidance_strengths(),
            "motion": ("INT", {"default": -1, "min": -1, "max": 255, "tooltip": "SVD motion bucket (more = more head motion); -1 = the model's training value."}),
            **widgets.windows(),
            "lip_context": ("INT", {"default": -1, "min": -1, "max": 16, "tooltip": "Lip frames either side each frame sees; -1 = the model's value (the maximum)."}),
        }}

    def sample(self, model, reference, lip, expression, steps, sampler, seed, reference_strength, lip_strength,
               expression_strength, motion, window, overlap, lip_context):
        settings = settings_lib.GenerationSettings(
            steps=widgets.own_steps(steps), sampler=sampler, seed=seed,
            reference_strength=widgets.own_strength(reference_strength), lip_strength=widgets.own_strength(lip_strength),
            expression_strength=widgets.own_strength(expression_strength),
            motion=None if motion < 0 else motion, window=window or None, overlap=overlap or None,
            lip_context=None if lip_context < 0 else lip_context,
        )
        widgets.validated(settings, "EmotiveTalk ETHD Sampler")  # a bad window/overlap is named, not found mid-sampling
        latents = run_sampler(model, reference, lip, expression, settings)
        return ({"samples": latents.to(bridge.intermediate_device()), "emotivetalk_model": model_tag(model)},)


def run_sampler(model, reference, lip, expression, settings) -> torch.Tensor:
    """sample_latents with ComfyUI's progress bar and Cancel; remembers the speed for the next estimate."""
    calls = log_estimate(model, settings, expression.shape[0], reference.latent.shape[1:])
    bridge.check_interrupt()
    bridge.use(model, "ethd")
    progress = bridge.Progress(calls)
    start = time.perf_counter()
    latents = pipeline.sample_latents(model, reference, lip, expression, settings, progress)
    bridge.notes(model)["seconds_per_call"] = (time.perf_counter() - start) / calls
    return latents


NODE_CLASS_MAPPINGS = {
    "EmotiveTalkAudioPrepare": EmotiveTalkAudioPrepare,
    "EmotiveTalkVAIDDecouple": EmotiveTalkVAIDDecouple,
    "EmotiveTalkEDIReference": EmotiveTalkEDIReference,
    "EmotiveTalkDiCTEExpand": EmotiveTalkDiCTEExpand,
    "EmotiveTalkETHDSampler": EmotiveTalkETHDSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EmotiveTalkAudioPrepare": "EmotiveTalk Audio Prepare",
    "EmotiveTalkVAIDDecouple": "EmotiveTalk V-AID Decouple",
    "EmotiveTalkEDIReference": EDI_REFERENCE,
    "EmotiveTalkDiCTEExpand": "EmotiveTalk Di-CTE Expand",
    "EmotiveTalkETHDSampler": "EmotiveTalk ETHD Sampler",
}
