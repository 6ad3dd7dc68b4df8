"""The all-in-one node: portrait + speech + emotion -> frames, padded audio and fps.

It runs the same stage nodes a staged workflow wires up, so both give the same frames.
"""

from __future__ import annotations

from . import _widgets as widgets
from ._core import configs, emotion
from ._types import CATEGORY, EmotionInput, checked_images
from .emotion_nodes import EmotiveTalkEmotionText
from .loaders import EmotiveTalkModelLoader, EmotiveTalkVAIDLoader, model_file_input, resolve_model
from .output_nodes import EmotiveTalkDecode
from .stages import (EmotiveTalkDiCTEExpand, EmotiveTalkEDIReference, EmotiveTalkETHDSampler,
                     EmotiveTalkVAIDDecouple, comfy_audio, prepare_speech)

NAME = "EmotiveTalk Generate (all-in-one)"


def emotion_of(label: str, intensity: float, text: str, clip=None) -> EmotionInput:
    if text.strip():
        (described,) = EmotiveTalkEmotionText().make(text, intensity, clip)
        return described
    return EmotionInput(emotion.single(emotion.EmotionSource("label", label), intensity))


class EmotiveTalkGenerate:
    DESCRIPTION = ("Everything in one node: a portrait, speech and an emotion in, the talking-head frames out (with the "
                   "padded speech and fps for a video saver). Wire the staged nodes for more control.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
    RETURN_NAMES = ("frames", "audio", "fps")
    FUNCTION = "generate"

    def __init__(self):
        # ComfyUI keeps one instance per graph node across runs, so the models loaded for the
        # last run stay here: a new seed or emotion does not re-read the model file.
        self._loaded = None

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "portrait": ("IMAGE", {"tooltip": "A face-centred portrait; scaled to cover width x height and centre-cropped."}),
                "audio": ("AUDIO", {"tooltip": "The speech to animate."}),
                "emotion": (list(configs.EMOTION_LABELS), {"default": "neutral", "tooltip": "The emotion to show (ignored when emotion_text is filled in)."}),
                "intensity": widgets.intensity(),
                "seed": widgets.seed(),
                "steps": widgets.steps("Denoising steps of the video model (and of Di-CTE, 25 when 0)."),
                "width": widgets.size("width"),
                "height": widgets.size("height"),
                "fps": widgets.fps("Output frame rate (EmotiveTalk is trained at 25)."),
                "model_name": model_file_input("A self-contained EmotiveTalk model file from models/emotivetalk"),
            },
            "optional": {
                "emotion_text": ("STRING", {"multiline": True, "default": "", "tooltip": "Describe the emotion in words instead of picking a label (leave empty to use the label)."}),
                "face_mask": ("MASK", {"tooltip": "Optional face mask of the portrait (1 = face), e.g. from EmotiveTalk Face Crop; without it the model's Face Processor finds the face."}),
                "clip": ("CLIP", {"tooltip": "For emotion_text on a model trained with a pretrained text encoder: a CLIP loading that encoder (see EmotiveTalk Emotion Text)."}),
            },
        }

    def models(self, model_name: str):
        """The model and V-AID of ``model_name``, loaded once and reused while the file is unchanged."""
        path = resolve_model(model_name)
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # drop the old models before loading new ones
            (model,) = EmotiveTalkModelLoader().load(model_name)
            (vaid,) = EmotiveTalkVAIDLoader().load(model_name)
            self._loaded = (key, model, vaid)
        return self._loaded[1:]

    def generate(self, portrait, audio, emotion, intensity, seed, steps, width, height, fps, model_name, emotion_text="",
                 face_mask=None, clip=None):
        # Bad inputs are refused before models load, naming this node (not the stages it runs).
        portrait = checked_images(portrait, f"{NAME}, input 'portrait'")
        speech = prepare_speech(audio, fps, 0, node=NAME)
        model, vaid = self.models(model_name)
        lip, audio_exp = EmotiveTalkVAIDDecouple().decouple(vaid, speech)
        reference, _ = EmotiveTalkEDIReference().encode(model, vaid, portrait, width, height, -1.0, seed, face_mask)
        defaults = widgets.DEFAULTS
        (expression,) = EmotiveTalkDiCTEExpand().expand(vaid, audio_exp, reference, emotion_of(emotion, intensity, emotion_text, clip),
                                                       seed, steps or defaults.dicte_steps)
        own = widgets.OWN_STRENGTH
        (latent,) = EmotiveTalkETHDSampler().sample(model, reference, lip, expression, steps, defaults.sampler, seed,
                                                    own, own, own, -1, 0, 0, -1)
        (frames,) = EmotiveTalkDecode().decode(model, latent, 0)
        return frames, comfy_audio(speech.waveform, speech.sample_rate), speech.fps


NODE_CLASS_MAPPINGS = {"EmotiveTalkGenerate": EmotiveTalkGenerate}
NODE_DISPLAY_NAME_MAPPINGS = {"EmotiveTalkGenerate": NAME}
