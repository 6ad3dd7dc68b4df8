"""Widgets that more than one node shows, built from the library's defaults and ranges
(``settings.GenerationSettings``, ``settings.LIMITS``): a default or a range changes in one place,
and a widget never offers a value the library would then refuse."""

from __future__ import annotations

from ._core import emotion, settings

DEFAULTS = settings.GenerationSettings()
LIMITS = settings.LIMITS
# Widget values meaning "the model's own" (the library's None): 0 steps, strength -1 (a strength of
# 0 is a real choice: that guidance off).
OWN_STEPS = 0
OWN_STRENGTH = -1.0


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


def steps(tooltip: str) -> tuple:
    """Sampling steps of the video model; 0 = the model's own (``settings.model_sampling``)."""
    high = LIMITS["steps"][1]
    return ("INT", {"default": OWN_STEPS, "min": OWN_STEPS, "max": high,
                    "tooltip": f"{tooltip} 0 = the model's: {settings.GUIDED_SAMPLING['steps']}, or a distilled model's own "
                               f"(6 for 'fast')."})


def dicte_steps(tooltip: str) -> tuple:
    low, high = LIMITS["dicte_steps"]
    return ("INT", {"default": DEFAULTS.dicte_steps, "min": low, "max": high, "tooltip": tooltip})


def sampler_steps(tooltip: str) -> tuple:
    """Steps where no model is at hand to say its own (native SIGMAS)."""
    low, high = LIMITS["steps"]
    return ("INT", {"default": settings.GUIDED_SAMPLING["steps"], "min": low, "max": high, "tooltip": tooltip})


def own_steps(value: int) -> int | None:
    """The steps widget's value for the library: None (the model's own) for 0."""
    return None if value == OWN_STEPS else value


def own_strength(value: float) -> float | None:
    """A strength widget's value for the library: None (the model's own) below 0; 0 is guidance off."""
    return None if value < 0 else value


def intensity() -> tuple:
    return ("FLOAT", {"default": emotion.DEFAULT_INTENSITY, "min": 0.0, "max": 3.0, "step": 0.05,
                      "tooltip": "0 = the portrait's own expression, 1 = the emotion as requested, above 1 = exaggerated."})


def strength(setting: str, tooltip: str) -> tuple:
    """One of the guidance strengths (reference, lip, expression); -1 = the model's own."""
    high = LIMITS[setting][1]
    own = settings.GUIDED_SAMPLING[setting]
    return ("FLOAT", {"default": OWN_STRENGTH, "min": OWN_STRENGTH, "max": high, "step": 0.05,
                      "tooltip": f"{tooltip} -1 = the model's: {own:g}, or a distilled model's own (1 for 'fast')."})


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
