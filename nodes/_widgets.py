"""Widgets that more than one node shows, built from the library's defaults and ranges
(``settings.GenerationSettings``, ``settings.LIMITS``): a default or a range changes in one place,
and a widget never offers a value the library would then refuse."""

from __future__ import annotations

from ._core import emotion, settings

DEFAULTS = settings.GenerationSettings()
LIMITS = settings.LIMITS


def seed() -> tuple:
    low, high = LIMITS["seed"]
    return ("INT", {"default": DEFAULTS.seed, "min": low, "max": high,
                    "tooltip": "Random seed; the same seed and inputs give the same result."})


def size(side: str) -> tuple:
    """The output ``width`` or ``height`` (0 = the model's native size)."""
    native = " (512 for SVD-size models)" if side == "width" else ""
    return ("INT", {"default": getattr(DEFAULTS, side), "min": 0, "max": 2048, "step": 64,
                    "tooltip": f"Output {side} in pixels (a multiple of 64); 0 = the model's native size{native}."})


def fps(tooltip: str = "Frame rate of the video to make (EmotiveTalk is trained at 25).") -> tuple:
    low, high = LIMITS["fps"]
    return ("FLOAT", {"default": DEFAULTS.fps, "min": float(low), "max": float(high), "step": 0.01, "tooltip": tooltip})


def steps(tooltip: str, setting: str = "steps") -> tuple:
    """Sampling steps of the video model (``steps``) or of Di-CTE (``dicte_steps``)."""
    low, high = LIMITS[setting]
    return ("INT", {"default": getattr(DEFAULTS, setting), "min": low, "max": high, "tooltip": tooltip})


def intensity() -> tuple:
    return ("FLOAT", {"default": emotion.DEFAULT_INTENSITY, "min": 0.0, "max": 3.0, "step": 0.05,
                      "tooltip": "0 = the portrait's own expression, 1 = the emotion as requested, above 1 = exaggerated."})


def strength(setting: str, tooltip: str) -> tuple:
    """One of the guidance strengths (reference, lip, expression)."""
    low, high = LIMITS[setting]
    return ("FLOAT", {"default": getattr(DEFAULTS, setting), "min": low, "max": high, "step": 0.05, "tooltip": tooltip})


def guidance_strengths() -> dict:
    """The three guidance strengths, as the ETHD Sampler and the native Guider show them."""
    return {
        "reference_strength": strength("reference_strength", "Guidance toward the portrait (identity, appearance)."),
        "lip_strength": strength("lip_strength", "Guidance toward the lip stream (lip-sync)."),
        "expression_strength": strength("expression_strength", "Guidance toward the driven expression."),
    }


def windows() -> dict:
    """The ETHD window and overlap (0 = the model's value)."""
    return {
        "window": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "Frames per window; 0 = the model's training clip length (recommended)."}),
        "overlap": ("INT", {"default": 0, "min": 0, "max": 255, "tooltip": "Frames shared by neighbouring windows; 0 = 25 % of the window."}),
    }


def validated(generation: settings.GenerationSettings, node: str) -> settings.GenerationSettings:
    """``generation`` if the library accepts it, else a ``ValueError`` naming the node and the input
    (every setting a node passes is the widget of the same name), before any work."""
    try:
        generation.validate()
    except settings.SettingError as error:
        raise ValueError(f"{node}, input '{error.setting}': {error}") from error
    return generation


def portrait_inputs() -> tuple[dict, dict]:
    """``(required, optional)`` inputs of a reference node: the portrait, the output size, the
    portrait latent's noise and its seed; the face mask (EDI Reference and Native Reference)."""
    required = {
        "portrait": ("IMAGE", {"tooltip": "A face-centred portrait; it is scaled to cover width x height and centre-cropped."}),
        "width": size("width"),
        "height": size("height"),
        "noise_aug": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.01,
                                "tooltip": "Noise added to the portrait latent (SVD's augmentation); -1 = the value the model was trained with."}),
        "seed": seed(),
    }
    optional = {"mask": ("MASK", {"tooltip": "Face mask (1 = face) used instead of the computed one; an all-zero mask counts as no mask."})}
    return required, optional
