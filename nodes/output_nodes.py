"""Output nodes: LATENT -> IMAGE frames, and LATENT + AUDIO -> an mp4 decoded straight to disk."""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from . import _widgets as widgets
from . import comfy_bridge as bridge
from ._core import core_module, pipeline
from ._types import CATEGORY, MODEL
from .stages import model_tag

log = logging.getLogger(__name__)

_CHUNK = ("INT", {"default": 0, "min": 0, "max": 256,
                  "tooltip": "Frames the VAE decodes at once (neighbouring chunks overlap and crossfade); 0 = the model's window. Lower it if memory runs out."})


def checked_latents(model, latent: dict, node: str) -> torch.Tensor:
    """The latents of a LATENT in ComfyUI's convention (the VAE's own space, frames in the batch:
    ours or core VAE Encode's), checked against the model's VAE."""
    samples = latent["samples"]
    channels = model.vae.config.latent_channels
    if samples.dim() != 4 or samples.shape[1] != channels or 0 in samples.shape:
        raise ValueError(f"{node}, input 'latent': expected an SVD-layout LATENT [frames, {channels}, h, w] with at least one "
                         f"frame, got {list(samples.shape)}")
    made_by, expected = latent.get("emotivetalk_model"), model_tag(model)
    if made_by is not None and made_by != expected:
        log.warning("this LATENT was made by model %s but is decoded with %s; the frames may be garbage", made_by, expected)
    return samples


def decoded_blocks(model, latent: dict, chunk: int, node: str):
    """Frame blocks ``[n, H, W, 3]`` in 0..1, Cancel checked and progress shown between blocks
    (``node`` names the node in errors)."""
    samples = checked_latents(model, latent, node)
    bridge.use(model, "vae")
    progress = bridge.Progress(samples.shape[0])
    done = 0
    for block in pipeline.decode_frames(model, samples, chunk or None):
        done += block.shape[0]
        progress(done, samples.shape[0])
        yield block


class EmotiveTalkDecode:
    DESCRIPTION = "Decodes an EmotiveTalk LATENT to frames with the model's VAE, in overlapping chunks (no seams)."
    CATEGORY = f"{CATEGORY}/output"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The EmotiveTalk model that made the LATENT (its VAE decodes it)."}),
            "latent": ("LATENT", {"tooltip": "From EmotiveTalk ETHD Sampler, or any SVD-layout LATENT of this model's VAE (e.g. core VAE Encode)."}),
            "chunk": _CHUNK,
        }}

    def decode(self, model, latent, chunk):
        device = bridge.intermediate_device()
        frames = torch.cat([block.to(device) for block in decoded_blocks(model, latent, chunk, "EmotiveTalk Decode")])
        return (frames,)


def mono(audio: dict) -> tuple[np.ndarray, int]:
    """ComfyUI AUDIO -> (mono float32 waveform, sample rate) at its own rate (no resampling)."""
    waveform = audio["waveform"][0].float().cpu().mean(0)
    return waveform.numpy(), int(audio["sample_rate"])


def video_metadata(model, prompt, extra_pnginfo) -> dict[str, str]:
    # Like core SaveVideo: the workflow rides along, so dropping the mp4 on ComfyUI reloads it.
    metadata = {"comment": pipeline.video_comment(bool(model.info.get("trained", False)))}
    if prompt is not None:
        metadata["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        metadata[key] = json.dumps(value)
    return metadata


class EmotiveTalkSaveVideo:
    DESCRIPTION = ("Decodes the LATENT chunk by chunk straight into an H.264 + AAC mp4 in ComfyUI's output folder "
                   "(frames never pile up in memory, so any length fits).")
    CATEGORY = f"{CATEGORY}/output"
    RETURN_TYPES = ("VIDEO",)
    RETURN_NAMES = ("video",)
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The EmotiveTalk model that made the LATENT (its VAE decodes it)."}),
                "latent": ("LATENT", {"tooltip": "From EmotiveTalk ETHD Sampler, or any SVD-layout LATENT of this model's VAE (e.g. core VAE Encode)."}),
                "audio": ("AUDIO", {"tooltip": "The padded speech from EmotiveTalk Audio Prepare, so audio and video end together."}),
                "fps": widgets.fps("Frame rate: the fps given to EmotiveTalk Audio Prepare."),
                "filename_prefix": ("STRING", {"default": "EmotiveTalk/video",
                                               "tooltip": "File name prefix inside ComfyUI's output folder (may contain a subfolder)."}),
                "chunk": _CHUNK,
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save(self, model, latent, audio, fps, filename_prefix, chunk, prompt=None, extra_pnginfo=None):
        video_writer = core_module("media.video_writer")
        path, filename, subfolder = bridge.output_path(filename_prefix, "mp4")
        waveform, sample_rate = mono(audio)
        blocks = decoded_blocks(model, latent, chunk, "EmotiveTalk Save Video")
        first = next(blocks)
        height, width = first.shape[1:3]
        with video_writer.VideoWriter(path, fps, width, height, audio=waveform, sample_rate=sample_rate,
                                      metadata=video_metadata(model, prompt, extra_pnginfo)) as writer:
            writer.write(first)
            for block in blocks:
                writer.write(block)
        log.info("EmotiveTalk video saved: %s (%d frames)", path, writer.frames_written)
        preview = {"filename": filename, "subfolder": subfolder, "type": "output"}
        return {"ui": {"images": [preview], "animated": (True,)}, "result": (bridge.video_output(path),)}


NODE_CLASS_MAPPINGS = {
    "EmotiveTalkDecode": EmotiveTalkDecode,
    "EmotiveTalkSaveVideo": EmotiveTalkSaveVideo,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EmotiveTalkDecode": "EmotiveTalk Decode",
    "EmotiveTalkSaveVideo": "EmotiveTalk Save Video (streaming)",
}
