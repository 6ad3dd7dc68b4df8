"""Thin ComfyUI adapters over emotivetalk_core: ComfyUI types in, one core call, ComfyUI types out.

The pack loads even when an optional dependency is missing: a node module whose import fails
with ImportError is skipped with a warning naming the module, the missing package and the nodes
it would have registered, and the rest register. Importing this package imports torch and numpy
only; diffusers, transformers and av load when a node first runs (ComfyUI start-up time).
"""

from __future__ import annotations

import importlib
import logging

from . import comfy_bridge

log = logging.getLogger(__name__)

# Node module -> the node ids it registers (named here so a module that fails to import can
# still say which nodes are missing; tests/test_nodes.py checks this list against the modules).
NODE_MODULES = {
    "loaders": ("EmotiveTalkModelLoader", "EmotiveTalkVAIDLoader"),
    "stages": ("EmotiveTalkAudioPrepare", "EmotiveTalkVAIDDecouple", "EmotiveTalkEDIReference",
               "EmotiveTalkDiCTEExpand", "EmotiveTalkETHDSampler"),
    "emotion_nodes": ("EmotiveTalkEmotionLabel", "EmotiveTalkEmotionText", "EmotiveTalkEmotionImage",
                      "EmotiveTalkEmotionVideo", "EmotiveTalkEmotionTimeline"),
    "output_nodes": ("EmotiveTalkDecode", "EmotiveTalkSaveVideo"),
    "generate": ("EmotiveTalkGenerate",),
    "face_nodes": ("EmotiveTalkFaceCrop", "EmotiveTalkPasteBack"),
    "comfy_native": ("EmotiveTalkUNetToModel", "EmotiveTalkApply", "EmotiveTalkNativeReference", "EmotiveTalkConditioning",
                     "EmotiveTalkGuider", "EmotiveTalkNoise", "EmotiveTalkSigmas"),
}


def _collect() -> tuple[dict[str, type], dict[str, str]]:
    classes: dict[str, type] = {}
    names: dict[str, str] = {}
    for module_name, node_ids in NODE_MODULES.items():
        try:
            module = importlib.import_module(f".{module_name}", __name__)
        except ImportError as error:
            log.warning("EmotiveTalk: nodes %s are unavailable: module nodes.%s needs the package %r, which is "
                        "missing (%s); install the pack's requirements.txt", ", ".join(node_ids), module_name,
                        error.name, error)
            continue
        classes.update(module.NODE_CLASS_MAPPINGS)
        names.update(module.NODE_DISPLAY_NAME_MAPPINGS)
    return classes, names


comfy_bridge.register_model_folders()
NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = _collect()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
