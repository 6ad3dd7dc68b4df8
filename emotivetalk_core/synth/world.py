"""SynthTalk's world: identities, emotions, and the per-frame causes of every frame.

Everything is a function of a seed. A *performance* is one clip's per-frame parameters
(:data:`FRAME_PARAMETERS`), made from:

- **speech**: the phonemes eSpeak reports drive the mouth through visemes (closed for m/b/p,
  rounded, wide, open; :func:`viseme`), with coarticulation (targets smoothed over ~50 ms) and
  the mouth at rest in silence;
- **emotion**: a label and an intensity set brows, mouth curvature, eye opening and cheek
  blush (:data:`EMOTIONS`), and colour the voice (pitch, range, rate, loudness), as in people,
  so the speech itself carries cues;
- **life**: blinks, small head motion, a little expression drift, brows that lift a little
  while speaking.

The world's true parameters are the training targets: the lip target is (mouth opening, mouth
width), the expression target (smile, brow raise, brow tilt, eye opening, blink, blush).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

FPS = 25
# Pixels: the world's frames and the demo model's native resolution. 32, as in the feasibility run
# that learned lips and expression: SVD's VAE (three levels at 64 px, two at 32) is the part that
# costs most to train from scratch, and at 64 px it needs four times the budget to learn colour.
SIZE = 32
FRAME_PARAMETERS = ("mouth_open", "mouth_width", "smile", "brow_raise", "brow_tilt", "eye_open", "blink", "blush",
                    "head_x", "head_y", "head_tilt")
LIP_PARAMETERS = ("mouth_open", "mouth_width")
EXPRESSION_PARAMETERS = ("smile", "brow_raise", "brow_tilt", "eye_open", "blink", "blush")

# The emotion's face at intensity 1 (parameters in [-1, 1], blush in [0, 1]) and its voice: pitch
# and range offsets (eSpeak's 0..100 scale), a rate factor and a volume factor. Chosen so every
# pair of emotions differs in at least two large, visible features.
EMOTIONS = {
    "neutral": {"face": {}, "voice": (0, 0, 1.0, 1.0)},
    "happy": {"face": {"smile": 1.0, "brow_raise": 0.25, "eye_open": -0.35, "blush": 1.0}, "voice": (12, 20, 1.1, 1.1)},
    "sad": {"face": {"smile": -0.8, "brow_raise": 0.1, "brow_tilt": 1.0, "eye_open": -0.55}, "voice": (-10, -25, 0.82, 0.75)},
    "angry": {"face": {"smile": -0.45, "brow_raise": -0.9, "brow_tilt": -1.0, "eye_open": 0.15}, "voice": (4, 10, 1.05, 1.45)},
    "surprised": {"face": {"smile": 0.05, "brow_raise": 1.0, "brow_tilt": 0.25, "eye_open": 1.0}, "voice": (22, 35, 0.95, 1.15)},
}
EMOTION_NAMES = tuple(EMOTIONS)

# Mouth targets (opening 0..1, width -1 rounded .. +1 wide) per viseme class.
VISEMES = {
    "rest": (0.0, 0.0),
    "closed": (0.0, 0.05),      # m, b, p: the lips press together
    "labiodental": (0.08, 0.1),  # f, v
    "open": (0.9, 0.2),         # a, A, V, aI ...
    "mid": (0.5, 0.25),         # @, 3, e, E
    "wide": (0.28, 0.9),        # i, I, j, eI
    "rounded": (0.32, -1.0),    # u, U, w, y, o
    "round_open": (0.6, -0.6),  # O, 0
    "protruded": (0.2, -0.55),  # S, Z, tS, dZ: lips pushed forward
    "teeth": (0.14, 0.6),       # s, z: teeth together, lips spread
    "consonant": (0.22, 0.2),   # t, d, k, n, l, r, ...
}


def viseme(symbol: str) -> str:
    """The viseme class of one eSpeak phoneme mnemonic (its first letter decides, which holds
    across eSpeak's languages: m/b/p are always bilabial, i/e wide, u/o/w rounded, a open)."""
    core = symbol.lstrip("'-,%=")
    head = core[:1]
    if head in ("", "_", ":"):
        return "rest"
    if core in ("S", "Z", "tS", "dZ"):
        return "protruded"
    if head in "sz":
        return "teeth"
    if head in "mbp":
        return "closed"
    if head in "fv":
        return "labiodental"
    if head in "aAV&":
        return "open"
    if head in "@3":
        return "mid"
    if head in "eE":
        return "mid" if head == "E" else "wide"
    if head in "iIj":
        return "wide"
    if head in "uUwyYW":
        return "rounded"
    if head in "oO0":
        return "round_open" if head in "O0" else "rounded"
    return "consonant"


@dataclass(frozen=True)
class FaceShape:
    cy: float  # canvas units, y down
    rx: float
    ry: float


@dataclass(frozen=True)
class VoiceStyle:
    """An identity's own voice: eSpeak language and variant, base pitch, range and rate."""

    language: str
    variant: str
    pitch: int
    pitch_range: int
    rate: int


@dataclass(frozen=True)
class Identity:
    seed: int
    face: FaceShape
    skin_colour: tuple
    hair_colour: tuple
    hair_style: str
    hairline: float
    fringe: float
    parting: float
    brow_colour: tuple
    brow_thickness: float
    eye_width: float
    eye_height: float
    eye_spacing: float
    iris_colour: tuple
    nose_width: float
    mouth_width: float
    lip_thickness: float
    lip_colour: tuple
    clothes_colour: tuple
    background_colour: tuple
    background_pattern: str
    background_frequency: float
    voice: VoiceStyle
    articulation: float = 1.0  # how wide this person opens the mouth


# Skin tones from light to dark (sRGB 0..1), jittered per identity.
_SKINS = ((0.98, 0.84, 0.74), (0.93, 0.76, 0.62), (0.85, 0.64, 0.49), (0.72, 0.52, 0.38), (0.55, 0.37, 0.26),
          (0.42, 0.28, 0.2))
_HAIRS = ((0.08, 0.06, 0.05), (0.3, 0.18, 0.1), (0.55, 0.35, 0.18), (0.85, 0.7, 0.45), (0.6, 0.6, 0.62),
          (0.62, 0.2, 0.1), (0.2, 0.22, 0.4))
_HAIR_STYLES = ("short", "short", "fringe", "long", "long", "bald")
# Backgrounds vary in colour and in smooth, large-scale shading only: fine textures would cost the
# small VAE most of its capacity and teach the face nothing.
_PATTERNS = ("flat", "flat", "gradient", "blobs")
LANGUAGES = ("en", "en-us", "de", "fr", "es", "it")
_VARIANTS = ("", "m1", "m2", "m3", "m4", "f1", "f2", "f3", "f4")


def identity(seed: int) -> Identity:
    """The identity of ``seed``: every seed gives a different face, voice and background."""
    rng = np.random.default_rng([seed, 0x1D])
    skin = _jitter(rng, _SKINS[rng.integers(len(_SKINS))], 0.04)
    hair = _jitter(rng, _HAIRS[rng.integers(len(_HAIRS))], 0.05)
    # Brows a shade darker than the hair, so raised brows stay visible against a fringe.
    brow = tuple(c * 0.6 for c in hair) if rng.random() < 0.8 else _jitter(rng, (0.15, 0.1, 0.08), 0.05)
    # Keep dark brows visible on dark skin and light brows on light skin: at least this contrast.
    if abs(np.mean(brow) - np.mean(skin)) < 0.25:
        brow = tuple(c * 0.35 for c in skin)
    background = tuple(float(c) for c in rng.uniform(0.15, 0.9, 3))
    if abs(np.mean(background) - np.mean(skin)) < 0.12:  # the face must stand out from the background
        background = tuple(float(np.clip(c + (0.35 if np.mean(skin) < 0.5 else -0.35), 0.05, 0.95)) for c in background)
    return Identity(
        seed=seed,
        face=FaceShape(cy=float(rng.uniform(0.0, 0.1)), rx=float(rng.uniform(0.44, 0.56)), ry=float(rng.uniform(0.58, 0.68))),
        skin_colour=skin,
        hair_colour=hair,
        hair_style=str(rng.choice(_HAIR_STYLES)),
        hairline=float(rng.uniform(0.8, 0.95)),
        fringe=float(rng.uniform(-0.2, 0.35)),
        parting=float(rng.uniform(-1.5, 1.5)),
        brow_colour=brow,
        brow_thickness=float(rng.uniform(0.08, 0.11)),
        eye_width=float(rng.uniform(0.085, 0.11)),
        eye_height=float(rng.uniform(0.055, 0.07)),
        eye_spacing=float(rng.uniform(0.9, 1.1)),
        iris_colour=_jitter(rng, ((0.3, 0.2, 0.1), (0.2, 0.35, 0.55), (0.25, 0.45, 0.25), (0.15, 0.1, 0.08))[rng.integers(4)], 0.04),
        nose_width=float(rng.uniform(0.8, 1.3)),
        mouth_width=float(rng.uniform(0.34, 0.44)),
        lip_thickness=float(rng.uniform(0.03, 0.045)),
        lip_colour=_jitter(rng, tuple(c * f for c, f in zip(skin, (0.8, 0.5, 0.5))), 0.03),
        clothes_colour=tuple(float(c) for c in rng.uniform(0.1, 0.9, 3)),
        background_colour=background,
        background_pattern=str(rng.choice(_PATTERNS)),
        background_frequency=float(rng.uniform(1.5, 3.5)),
        voice=VoiceStyle(language=str(rng.choice(LANGUAGES)), variant=str(rng.choice(_VARIANTS)),
                         pitch=int(rng.integers(30, 66)), pitch_range=int(rng.integers(35, 66)), rate=int(rng.integers(135, 185))),
        articulation=float(rng.uniform(0.85, 1.15)),
    )


def _jitter(rng, colour, amount: float) -> tuple:
    return tuple(float(np.clip(c + rng.uniform(-amount, amount), 0.0, 1.0)) for c in colour)


@dataclass(frozen=True)
class Emotion:
    label: str
    intensity: float = 1.0

    def __post_init__(self):
        if self.label not in EMOTIONS:
            raise ValueError(f"unknown SynthTalk emotion {self.label!r}; choose one of {', '.join(EMOTION_NAMES)}")
        if not 0.0 <= self.intensity <= 2.0:
            raise ValueError(f"emotion intensity must be in 0..2, got {self.intensity}")

    def face(self) -> dict[str, float]:
        preset = EMOTIONS[self.label]["face"]
        return {name: self.intensity * preset.get(name, 0.0) for name in EXPRESSION_PARAMETERS}


def voice_for(style: VoiceStyle, emotion: Emotion):
    """The eSpeak voice of an identity speaking with an emotion."""
    from .speech import Voice

    pitch, pitch_range, rate, volume = EMOTIONS[emotion.label]["voice"]
    k = emotion.intensity
    return Voice(
        language=style.language, variant=style.variant,
        pitch=int(np.clip(style.pitch + k * pitch, 0, 100)),
        pitch_range=int(np.clip(style.pitch_range + k * pitch_range, 0, 100)),
        rate=int(np.clip(style.rate * (1 + k * (rate - 1)), 80, 450)),
        volume=int(np.clip(100 * (1 + k * (volume - 1)), 10, 200)),
    )


@dataclass
class Performance:
    """One clip's per-frame parameters (``[F]`` each) and what caused them."""

    params: dict[str, np.ndarray]
    emotion: Emotion
    speaking: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # [F] 1 while a phoneme sounds

    @property
    def num_frames(self) -> int:
        return len(self.params["mouth_open"])

    def lip_target(self) -> np.ndarray:
        return np.stack([self.params[name] for name in LIP_PARAMETERS], axis=1).astype(np.float32)

    def exp_target(self) -> np.ndarray:
        return np.stack([self.params[name] for name in EXPRESSION_PARAMETERS], axis=1).astype(np.float32)

    def with_params(self, **changes) -> "Performance":
        return replace(self, params={**self.params, **changes})


def mouth_track(phonemes, num_frames: int, articulation: float = 1.0, fps: int = FPS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(opening, width, speaking)`` per frame from timed phonemes.

    Each phoneme holds its viseme's target over its interval (a diphthong moves from its first
    to its second vowel); the target curve, sampled every millisecond, is smoothed over ~50 ms
    (coarticulation: lips move continuously and anticipate the next sound) and then averaged
    over each frame's 40 ms. Silence is the rest position, so the mouth closes in pauses.
    """
    duration = num_frames / fps
    steps = int(np.ceil(duration * 1000)) + 1
    opening = np.zeros(steps, dtype=np.float64)
    width = np.zeros(steps, dtype=np.float64)
    speaking = np.zeros(steps, dtype=np.float64)
    for phoneme in phonemes:
        start, end = int(round(phoneme.start * 1000)), int(round(phoneme.end * 1000))
        if end <= start or start >= steps:
            continue
        end = min(end, steps)
        parts = _viseme_parts(phoneme.symbol)
        bounds = np.linspace(start, end, len(parts) + 1).round().astype(int)
        for part, lo, hi in zip(parts, bounds[:-1], bounds[1:]):
            opening[lo:hi], width[lo:hi] = VISEMES[part]
        if parts != ["rest"]:
            speaking[start:end] = 1.0
    opening, width = (_smooth(curve, 18.0) for curve in (opening, width))
    frames = np.minimum((np.arange(steps) * fps / 1000).astype(int), num_frames - 1)
    return (_frame_means(opening * articulation, frames, num_frames), _frame_means(width, frames, num_frames),
            _frame_means(speaking, frames, num_frames))


def _viseme_parts(symbol: str) -> list[str]:
    core = symbol.lstrip("'-,%=")
    if len(core) >= 2 and viseme(core[0]) in ("open", "mid", "wide", "rounded", "round_open") \
            and viseme(core[1]) in ("wide", "rounded", "mid") and core[1] not in ":":
        return [viseme(core[0]), viseme(core[1])]
    return [viseme(core)]


def _smooth(curve: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing (``sigma`` in samples), the ends extended with their edge values."""
    radius = int(3 * sigma)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return np.convolve(np.pad(curve, radius, mode="edge"), kernel / kernel.sum(), mode="valid")


def _frame_means(curve: np.ndarray, frame_of_sample: np.ndarray, num_frames: int) -> np.ndarray:
    sums = np.bincount(frame_of_sample, weights=curve, minlength=num_frames)[:num_frames]
    counts = np.bincount(frame_of_sample, minlength=num_frames)[:num_frames]
    return (sums / np.maximum(counts, 1)).astype(np.float32)


def perform(phonemes, num_frames: int, who: Identity, emotion: Emotion, seed: int, fps: int = FPS,
            life: bool = True) -> Performance:
    """A clip's per-frame parameters: the mouth from ``phonemes``, the face from ``emotion``, and
    (with ``life``) blinks, head motion and small expression drift drawn from ``seed``."""
    rng = np.random.default_rng([seed, 0x5E])
    opening, width, speaking = mouth_track(phonemes, num_frames, who.articulation, fps)
    face = emotion.face()
    t = np.arange(num_frames, dtype=np.float64) / fps
    # Speaking lifts the brows a little (an audio cue for the expression stream); smoothed ~0.3 s.
    talk = _smooth(speaking, 0.12 * fps)
    params = {"mouth_open": opening, "mouth_width": width}
    for name in EXPRESSION_PARAMETERS:
        params[name] = np.full(num_frames, face[name], dtype=np.float64)
    if life:
        for name in ("smile", "brow_raise", "brow_tilt", "eye_open"):
            params[name] += _wander(rng, t, 0.05)
        params["brow_raise"] += 0.12 * talk
        params["blink"] = _blinks(rng, num_frames, fps)
        params["head_x"] = _wander(rng, t, 0.025)
        params["head_y"] = _wander(rng, t, 0.015) + 0.012 * talk
        params["head_tilt"] = _wander(rng, t, 0.035)
    else:
        params.update(blink=np.zeros(num_frames), head_x=np.zeros(num_frames), head_y=np.zeros(num_frames),
                      head_tilt=np.zeros(num_frames))
    params = {name: np.asarray(values, dtype=np.float32) for name, values in params.items()}
    return Performance(params, emotion, speaking.astype(np.float32))


def with_intensity(performance: Performance, intensity: float) -> Performance:
    """The same performance with its emotion at another intensity (drift, blinks and mouth kept)."""
    emotion = performance.emotion
    preset = EMOTIONS[emotion.label]["face"]
    change = intensity - emotion.intensity
    params = {name: values + np.float32(change * preset[name]) if name in preset else values
              for name, values in performance.params.items()}
    return replace(performance, params=params, emotion=Emotion(emotion.label, intensity))


def still(who: Identity, emotion: Emotion, num_frames: int = 1) -> Performance:
    """A face at rest (mouth closed, no blink, head centred) showing ``emotion``: portraits."""
    return perform((), num_frames, who, emotion, seed=0, life=False)


def _wander(rng, t: np.ndarray, amplitude: float) -> np.ndarray:
    """A slow smooth random motion: three sinusoids of 0.1-0.6 Hz with random phases."""
    result = np.zeros_like(t)
    for _ in range(3):
        result += np.sin(2 * np.pi * rng.uniform(0.1, 0.6) * t + rng.uniform(0, 2 * np.pi))
    return amplitude * result / 3 ** 0.5


def _blinks(rng, num_frames: int, fps: int) -> np.ndarray:
    """Blinks about every 3 s, each closing the eyes over 5 frames (200 ms)."""
    blink = np.zeros(num_frames)
    shape = np.array([0.5, 1.0, 1.0, 0.6, 0.2])
    frame = int(rng.uniform(0.5, 3.0) * fps)
    while frame < num_frames:
        stop = min(num_frames, frame + len(shape))
        blink[frame:stop] = np.maximum(blink[frame:stop], shape[: stop - frame])
        frame += int(rng.uniform(2.0, 4.5) * fps)
    return blink
