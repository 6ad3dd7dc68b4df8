"""Named model configurations.

A configuration is a plain dict of per-component keyword dicts, so it can be stored as JSON in a
safetensors file's metadata and rebuilt without this module. ``tiny`` keeps every test on a CPU
in seconds; ``synthtalk`` is the shipped demo model trained in SynthTalk; ``svd-xt`` is the real
size (the base UNet equals diffusers' ``UNetSpatioTemporalConditionModel()`` default, i.e.
Stability's SVD-XT).
"""

from __future__ import annotations

import copy

# Emotion labels the Mapping knows: MEAD's eight, the paper's demos use four of them.
EMOTION_LABELS = ("neutral", "happy", "angry", "sad", "surprised", "fear", "disgusted", "contempt")

_TINY = {
    "unet": {
        "in_channels": 8,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
        "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
        "block_out_channels": [32, 64],
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 24,
        "layers_per_block": 1,
        "cross_attention_dim": 32,
        "num_attention_heads": [2, 4],
        "num_frames": 8,
    },
    # Four levels so the latent is 1/8 of the image, as with SVD's VAE; 32 channels is the
    # smallest width diffusers' GroupNorm(32) accepts.
    "vae": {
        "block_out_channels": [32, 32, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "layers_per_block": 1,
        "latent_channels": 4,
    },
    "image_encoder": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
        "projection_dim": 32,
    },
    "adapter": {"lip_dim": 16, "exp_dim": 16, "token_dim": 32, "lip_context": 2, "exp_tokens": 4, "head_dim": 16},
    "speech": {"kind": "logmel", "n_mels": 32, "layers": 1},
    "vaid": {"speech_dim": 32, "speech_layers": 1, "lip_dim": 16, "hidden": 32, "kernel": 5},
    "dicte": {"exp_dim": 16, "speech_dim": 32, "speech_layers": 1, "id_dim": 16, "width": 32,
              "layers": 2, "heads": 2, "train_steps": 100, "window": 25},
    "encoders": {"image_size": 32, "channels": [8, 16, 32], "lip_dim": 16, "exp_dim": 16, "id_dim": 16},
    "mapping": {"exp_dim": 16, "text_width": 32, "labels": list(EMOTION_LABELS)},
    # Clip length used in training = the inference window (SVD conditioning is per clip);
    # resolution = (width, height) of the training crops, the size a "0" width/height asks for.
    "ethd": {"clip_frames": 8, "fps_id": 24, "motion_bucket": 127, "noise_aug": 0.02, "resolution": [128, 128]},
}

_SVD_XT = {
    "unet": {},  # diffusers' defaults are SVD-XT
    "vae": {
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "layers_per_block": 2,
        "latent_channels": 4,
    },
    # OpenCLIP ViT-H/14 visual tower, as transformers' CLIPVisionModelWithProjection.
    "image_encoder": {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
        "projection_dim": 1024,
        "hidden_act": "gelu",
    },
    "adapter": {"lip_dim": 256, "exp_dim": 128, "token_dim": 768, "lip_context": 2, "exp_tokens": 8, "head_dim": 64},
    "speech": {"kind": "wav2vec2", "architecture": "base", "layers": [4, 8, 12]},
    "vaid": {"speech_dim": 768, "speech_layers": 3, "lip_dim": 256, "hidden": 512, "kernel": 5},
    "dicte": {"exp_dim": 128, "speech_dim": 768, "speech_layers": 3, "id_dim": 256, "width": 512,
              "layers": 8, "heads": 8, "train_steps": 1000, "window": 50},
    "encoders": {"image_size": 128, "channels": [32, 64, 128, 256], "lip_dim": 256, "exp_dim": 128, "id_dim": 256},
    "mapping": {"exp_dim": 128, "text_width": 256, "labels": list(EMOTION_LABELS)},
    "ethd": {"clip_frames": 14, "fps_id": 6, "motion_bucket": 127, "noise_aug": 0.02, "resolution": [512, 512]},
}

# SynthTalk's demo model (``python -m emotivetalk_core synth train``): 32 px faces, small enough to
# train every part from scratch on two CPU cores in 90 minutes. The VAE downsamples by 2 (two
# levels), so the UNet sees 16 x 16 latents as the feasibility run's pixel model did. Its
# GroupNorms keep only their affine part (``norm_num_groups`` 0, see svd.build.build_vae): with 32
# channels, diffusers' 32 groups normalise every channel alone and erase the colour of flat
# regions; measured over 300-400 steps, test L1 0.08 without normalisation, 0.12 with one group,
# 0.28 with 32.
_SYNTHTALK_LABELS = ["neutral", "happy", "sad", "angry", "surprised"]
_SYNTHTALK = {
    "unet": {
        "in_channels": 8,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"],
        "up_block_types": ["CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
        "block_out_channels": [32, 64],
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 24,
        "layers_per_block": 1,
        "cross_attention_dim": 32,
        "num_attention_heads": [2, 4],
        "num_frames": 8,
    },
    "vae": {
        "block_out_channels": [32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 0,
    },
    "image_encoder": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
        "projection_dim": 32,
    },
    "adapter": {"lip_dim": 16, "exp_dim": 16, "token_dim": 32, "lip_context": 2, "exp_tokens": 4, "head_dim": 16},
    "speech": {"kind": "logmel", "n_mels": 40, "layers": 1},
    "vaid": {"speech_dim": 40, "speech_layers": 1, "lip_dim": 16, "hidden": 64, "kernel": 5},
    "dicte": {"exp_dim": 16, "speech_dim": 40, "speech_layers": 1, "id_dim": 16, "width": 64,
              "layers": 3, "heads": 4, "train_steps": 100, "window": 25},
    "encoders": {"image_size": 32, "channels": [16, 32, 64], "lip_dim": 16, "exp_dim": 16, "id_dim": 16},
    "mapping": {"exp_dim": 16, "text_width": 32, "labels": _SYNTHTALK_LABELS},
    "ethd": {"clip_frames": 8, "fps_id": 24, "motion_bucket": 127, "noise_aug": 0.02, "resolution": [32, 32]},
}

CONFIGS = {"tiny": _TINY, "svd-xt": _SVD_XT, "synthtalk": _SYNTHTALK}


def get_config(name: str) -> dict:
    """A fresh copy of a named configuration (callers may edit it)."""
    if name not in CONFIGS:
        raise KeyError(f"unknown config {name!r}; choose one of {sorted(CONFIGS)}")
    return copy.deepcopy(CONFIGS[name])
