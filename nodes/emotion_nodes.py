"""Emotion source nodes (label, text, image, video) and the emotion timeline node.

Each source node gives a one-keyframe timeline; the timeline node places sources in time.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

from . import _widgets as widgets
import torch

from ._core import configs, emotion
from ._core import text as text_lib
from ._types import CATEGORY, EMOTION, EmotionInput, checked_images

MAX_TIMELINE_INPUTS = 4

def _single(source: emotion.EmotionSource, intensity: float, **tensors) -> tuple[EmotionInput]:
    return (EmotionInput(emotion.single(source, intensity), **tensors),)


def _tensor_key(kind: str) -> str:
    # A unique name per node run: the key only has to find its tensor inside this EmotionInput.
    return f"comfy-{kind}:{uuid.uuid4().hex[:12]}"


class _EmotionNode:
    """What every emotion node shares: one EMOTIVETALK_EMOTION out, under EmotiveTalk/emotion."""

    CATEGORY = f"{CATEGORY}/emotion"
    RETURN_TYPES = (EMOTION,)
    RETURN_NAMES = ("emotion",)
    FUNCTION = "make"


class EmotiveTalkEmotionLabel(_EmotionNode):
    DESCRIPTION = "An emotion by name (the Mapping's learned label embedding), for the whole video."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "label": (list(configs.EMOTION_LABELS), {"default": "neutral", "tooltip": "The emotion to show."}),
            "intensity": widgets.intensity(),
        }}

    def make(self, label, intensity):
        return _single(emotion.EmotionSource("label", label), intensity)


class EmotiveTalkEmotionText(_EmotionNode):
    DESCRIPTION = ("An emotion described in words, for the whole video: read by the model's own text encoder, or by "
                   "the CLIP connected here when the model was trained with a pretrained text encoder.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": ("STRING", {"multiline": True, "default": "a cheerful, smiling speaker",
                                    "tooltip": "A description of the emotion, e.g. 'calm but slightly sad'."}),
                "intensity": widgets.intensity(),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "For a model trained with a pretrained text encoder: a CLIP loading that "
                                             "encoder (its file says which; another one is refused). Models with their "
                                             "own text encoder ignore it."}),
            },
        }

    def make(self, text, intensity, clip=None):
        source = emotion.EmotionSource("text", text)  # refuses an empty text before the encoder runs
        texts = {} if clip is None else {text: text_lib.embed_prompt(clip_embedder(clip), text)}
        return _single(source, intensity, texts=texts)


def clip_embedder(clip):
    """Prompt embeddings ``[N, D]`` from a core CLIP (a text encoder Load CLIP loads), as a
    transformers folder of the same weights gives them (``networks.text.TransformersTextEncoder``):
    the unprojected pooled output where the encoder has one (CLIP text models: the end-of-text
    state), else the mean of the prompt's last token states (T5, UMT5, ...). The prompt is read
    literally, as the folder reads it: parentheses are text, not ComfyUI's prompt weights."""
    clip = clip.clone()
    clip.clip_layer(None)  # CLIP Set Last Layer picks a layer for prompts; the folder's states are the last

    def embed(texts: list[str]) -> torch.Tensor:
        return torch.stack([_clip_embedding(clip, text.replace("(", "\\(").replace(")", "\\)")) for text in texts])
    return embed


def _clip_embedding(clip, text: str) -> torch.Tensor:
    # The pooled output from the tokens as ComfyUI pads them (its CLIP wants all 77).
    _, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled="unprojected")
    # No pooled output, or SD3's zeros where CLIP-L/G are not loaded: the encoder pools nothing.
    if pooled is not None and bool(pooled.any()):
        return pooled.reshape(-1, pooled.shape[-1])[0].float().cpu()
    tokens = {name: [_without_padding(batch) for batch in batches]
              for name, batches in clip.tokenize(text, return_word_ids=True).items()}
    states = clip.encode_from_tokens(tokens)
    return states.reshape(-1, states.shape[-1]).float().mean(0).cpu()


def _without_padding(batch: list) -> list:
    """One token batch of ``clip.tokenize(..., return_word_ids=True)`` without the pads ComfyUI's
    tokenizers append up to a minimum length: after the last word token (word id > 0) one token
    stays, the end token (T5, UMT5, BERT: every tokenizer of an encoder without a pooled output
    that a folder can match has one). The encoder must not see pads: where ComfyUI runs it without
    an attention mask (T5-XXL loaded alone as type sd3) they change every token's state, and where
    it zeroes them they would dilute the mean."""
    words = [index for index, token in enumerate(batch) if token[2] > 0]
    return batch[:words[-1] + 2] if words else batch  # no words: EmotionSource refused the text


class EmotiveTalkEmotionImage(_EmotionNode):
    DESCRIPTION = "The expression of a face image (Exp Encoder + Mapping), for the whole video."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "A face showing the emotion (face-centred works best); a batch averages the expressions of its images."}),
            "intensity": widgets.intensity(),
        }}

    def make(self, image, intensity):
        image = checked_images(image, "EmotiveTalk Emotion Image, input 'image'")
        key = _tensor_key("image")
        return _single(emotion.EmotionSource("image", key), intensity, images={key: image})


class EmotiveTalkEmotionVideo(_EmotionNode):
    DESCRIPTION = "A face video's expression frame by frame (a temporal source: it bypasses Di-CTE)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "frames": ("IMAGE", {"tooltip": "The video's frames (e.g. from Load Video); face-centred works best. Played forward then backward if shorter than the speech."}),
            "fps": ("FLOAT", {"default": widgets.DEFAULTS.fps, "min": 1.0, "max": 240.0, "step": 0.01,
                              "tooltip": "Frame rate of these frames, so they are timed correctly against the output video."}),
            "intensity": widgets.intensity(),
        }}

    def make(self, frames, fps, intensity):
        frames = checked_images(frames, "EmotiveTalk Emotion Video, input 'frames'")
        key = _tensor_key("video")
        return _single(emotion.EmotionSource("video", key), intensity, videos={key: (frames, float(fps))})


def _timeline_inputs() -> dict:
    optional = {}
    for index in range(1, MAX_TIMELINE_INPUTS + 1):
        optional[f"emotion_{index}"] = (EMOTION, {"tooltip": f"Emotion source {index}, starting at start_{index}."})
        optional[f"start_{index}"] = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 36000.0, "step": 0.1,
                                                "tooltip": f"Seconds into the video where emotion_{index} begins."})
        optional[f"blend_{index}"] = ("FLOAT", {"default": 0.5, "min": 0.0, "max": 60.0, "step": 0.1,
                                                "tooltip": f"Seconds emotion_{index} takes to fade in from what shows before it (0 = a cut)."})
    return optional


class EmotiveTalkEmotionTimeline(_EmotionNode):
    DESCRIPTION = ("Places emotions in time: a compact spec of labels and/or connected emotion sources, each with a "
                   "start time and a fade-in.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "spec": ("STRING", {"multiline": True, "default": "0:neutral,2:happy@0.8~0.5",
                                    "tooltip": f"Label keyframes: {emotion.COMPACT_SYNTAX}. May be empty when emotions are connected below."}),
                "neutralise_portrait": ("BOOLEAN", {"default": False,
                                                    "tooltip": "Start from a neutral face instead of the expression the portrait already shows."}),
            },
            "optional": _timeline_inputs(),
        }

    def make(self, spec, neutralise_portrait, **connected):
        keyframes, images, videos, texts = [], {}, {}, {}
        if spec.strip():
            keyframes.extend(emotion.parse_timeline(spec).keyframes)
        for index in range(1, MAX_TIMELINE_INPUTS + 1):
            source = connected.get(f"emotion_{index}")
            if source is None:
                continue
            keyframes.extend(_placed(source, connected.get(f"start_{index}", 0.0), connected.get(f"blend_{index}", 0.5)))
            images.update(source.images)
            videos.update(source.videos)
            texts.update(source.texts)
        if not keyframes:
            raise ValueError(f"the emotion timeline is empty: write a spec ({emotion.COMPACT_SYNTAX}) or connect an emotion")
        timeline = emotion.EmotionTimeline(tuple(keyframes), bool(neutralise_portrait))
        return (EmotionInput(timeline, images, videos, texts),)


def _placed(source: EmotionInput, start: float, blend: float) -> list:
    """The source's keyframes moved to begin at ``start``; its first keyframe fades in over ``blend``."""
    keyframes = [replace(keyframe, time=keyframe.time + start) for keyframe in source.timeline.keyframes]
    keyframes[0] = replace(keyframes[0], blend=blend)
    return keyframes


NODE_CLASS_MAPPINGS = {
    "EmotiveTalkEmotionLabel": EmotiveTalkEmotionLabel,
    "EmotiveTalkEmotionText": EmotiveTalkEmotionText,
    "EmotiveTalkEmotionImage": EmotiveTalkEmotionImage,
    "EmotiveTalkEmotionVideo": EmotiveTalkEmotionVideo,
    "EmotiveTalkEmotionTimeline": EmotiveTalkEmotionTimeline,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EmotiveTalkEmotionLabel": "EmotiveTalk Emotion (label)",
    "EmotiveTalkEmotionText": "EmotiveTalk Emotion (text)",
    "EmotiveTalkEmotionImage": "EmotiveTalk Emotion (image)",
    "EmotiveTalkEmotionVideo": "EmotiveTalk Emotion (video)",
    "EmotiveTalkEmotionTimeline": "EmotiveTalk Emotion Timeline",
}
