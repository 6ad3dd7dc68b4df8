"""Loader nodes: model files from ComfyUI's model folders -> the two model bundles."""

from __future__ import annotations

import logging

from . import comfy_bridge as bridge
from ._core import bundles, core_module
from ._types import CATEGORY, MODEL, VAID

log = logging.getLogger(__name__)



def resolve_model(name: str):
    """A shipped model's name ("default", "fast") -> its file; anything else -> a file in models/emotivetalk."""
    if name in bundles.SHIPPED_MODELS:
        return bundles.resolve_model_file(name)
    return bridge.resolve_file(bridge.EMOTIVETALK_FOLDER, name)


def _optional(folder: str, name: str):
    return None if name == bridge.NO_FILE else bridge.resolve_file(folder, name)


def _report(kind: str, name: str, info: dict) -> None:
    line = bundles.describe(info)
    if info.get("trained", False):
        log.info("EmotiveTalk %s %s: %s", kind, name, line)
    else:
        log.warning("EmotiveTalk %s %s: %s", kind, name, line)


def manage_model(model):
    """ETHD, VAE and image encoder as three groups, each in the dtype ComfyUI picks for it."""
    parameters = sum(p.numel() for p in model.ethd.parameters())
    dtype = bridge.diffusion_dtype(parameters)
    return bridge.manage(model, {
        "ethd": (("ethd",), dtype),
        "image_encoder": (("image_encoder",), dtype),
        "vae": (("vae",), bridge.vae_dtype()),
    })


def manage_vaid(vaid):
    # float32: the library's speech encoders compute in float32 (the log-mel filterbank refuses
    # half inputs) and the Mapping is fed float32 codes; these models are small next to ETHD.
    import torch

    names = tuple(name for name, value in vars(vaid).items() if isinstance(value, torch.nn.Module))
    return bridge.manage(vaid, {"vaid": (names, torch.float32)})


def model_file_input(what: str) -> tuple:
    """The widget that picks an EmotiveTalk file from models/emotivetalk (or a shipped model)."""
    return (bridge.list_files(bridge.EMOTIVETALK_FOLDER, *bundles.SHIPPED_MODELS), {
        "default": bridge.DEFAULT_MODEL,
        "tooltip": f"{what}; 'default' is the pack's own 32 px demo model, trained on SynthTalk's procedural faces (not for "
                   f"real faces); 'fast' its distilled student: 6 steps of one UNet pass (leave steps and strengths at the "
                   f"model's).",
    })


class EmotiveTalkModelLoader:
    DESCRIPTION = "Loads the video side of EmotiveTalk: ETHD (SVD UNet + lip/expression adapters), SVD's VAE and image encoder."
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": model_file_input("EmotiveTalk model file from models/emotivetalk"),
            },
            "optional": {
                "base_svd": (bridge.list_files(bridge.BASE_FOLDER, bridge.NO_FILE), {
                    "default": bridge.NO_FILE,
                    "tooltip": "Base Stable Video Diffusion checkpoint (models/checkpoints, e.g. svd_xt.safetensors); needed only when the model file holds just the ETHD adapters.",
                }),
                "vae": ("VAE", {"tooltip": "Optional: SVD's VAE from Image Only Checkpoint Loader, reused so SVD is not loaded twice (must be the VAE of the SVD the adapters were trained on)."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "Optional: SVD's image encoder from Image Only Checkpoint Loader, reused so SVD is not loaded twice."}),
            },
        }

    def load(self, model_name, base_svd=bridge.NO_FILE, vae=None, clip_vision=None):
        path = resolve_model(model_name)
        model = bundles.load_emotivetalk_model(path, base=_optional(bridge.BASE_FOLDER, base_svd),
                                               **reused_svd_parts(bundles.base_config_of(path), vae, clip_vision))
        _report("model", model_name, model.info)
        return (manage_model(model),)


def reused_svd_parts(config, vae, clip_vision) -> dict:
    """ComfyUI's own VAE / CLIP_VISION objects as the library's modules of the SVD architecture
    ``config`` (what an ETHD file records as its base), sharing their weights."""
    svd_load = core_module("svd.load")
    parts = {}
    if vae is not None:
        parts["vae"] = _converted("VAE", lambda: svd_load.vae_from_stability_state(vae.get_sd(), config))
    if clip_vision is not None:
        parts["image_encoder"] = _converted(
            "CLIP_VISION", lambda: svd_load.image_encoder_from_transformers_state(clip_vision.get_sd(), config))
    return parts


def _converted(kind: str, convert):
    try:
        return convert()
    except ValueError as error:
        raise ValueError(f"the {kind} input is not Stable Video Diffusion's {kind} (connect the one Image Only "
                         f"Checkpoint Loader gives for svd/svd_xt): {error}") from error


class EmotiveTalkVAIDLoader:
    DESCRIPTION = "Loads the audio side of EmotiveTalk: speech encoder, V-AID lip projector, Di-CTE, visual encoders and emotion Mapping."
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = (VAID,)
    RETURN_NAMES = ("vaid",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vaid_name": model_file_input("EmotiveTalk file holding V-AID (models/emotivetalk)"),
            },
            "optional": {
                "speech_encoder": (bridge.list_files(bridge.SPEECH_FOLDER, bridge.NO_FILE), {
                    "default": bridge.NO_FILE,
                    "tooltip": "wav2vec2 file from models/audio_encoders, when the V-AID was trained on wav2vec2 ('none' for models with the built-in log-mel encoder, such as 'default').",
                }),
            },
        }

    def load(self, vaid_name, speech_encoder=bridge.NO_FILE):
        path = resolve_model(vaid_name)
        vaid = bundles.load_vaid_model(path, speech_source=_optional(bridge.SPEECH_FOLDER, speech_encoder))
        _report("V-AID", vaid_name, vaid.info)
        return (manage_vaid(vaid),)


NODE_CLASS_MAPPINGS = {
    "EmotiveTalkModelLoader": EmotiveTalkModelLoader,
    "EmotiveTalkVAIDLoader": EmotiveTalkVAIDLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EmotiveTalkModelLoader": "EmotiveTalk Model Loader (ETHD)",
    "EmotiveTalkVAIDLoader": "EmotiveTalk V-AID Loader",
}
