"""``synth evaluate``: held-out SynthTalk clips through the full pipeline, measured by the judge.

A held-out world (a seed the model was not trained on: new people, new sentences) gives, per clip,
a neutral portrait, speech, a requested emotion and the world's truth: what that person's face
does saying that with that emotion. The speech's own emotional colouring is drawn independently
of the requested emotion, so a face that follows the request follows the request, not the voice.
Every clip is generated with the whole pipeline (V-AID lip stream, Di-CTE from the emotion,
ETHD with EDI, the VAE), then read by the frozen judge. Figures, each beside its **ceiling**
(the same measure on the true renders) and its **floor** (the portrait repeated):

- ``lip_sync``: Pearson r of judged vs true mouth opening, pooled over all clips, at the best
  common offset within +-2 frames; ``lip_sync_within_clip``: the mean of per-clip r (at that
  offset), which pooled clips of different loudness cannot inflate;
- ``lip_strength_zero_sync``: ``lip_sync`` with lip strength 0 (the mouth must then not follow;
  no ceiling: true renders always follow the speech);
- ``emotion_accuracy``: share of clips whose judged emotion is the requested one, per route:
  ``label``, ``text`` (the training prompts), ``image`` (a portrait of another held-out person
  showing the emotion), ``video`` (another held-out person's clip with the emotion); chance 0.2.
  Clip ``i`` asks for emotion ``i mod 5`` by route ``i mod 4``, so 20 clips give every route
  every emotion and 64 clips give each route 16;
- ``intensity_monotone``: the judged strength of the requested emotion at intensity 0, 0.5, 1,
  1.5 (mean over ``subset`` label-route clips asking for an emotion other than neutral)
  strictly increases;
- ``identity_error``: mean absolute colour difference (0..1) between generated frames and the
  portrait;
- ``seam_ratio``: ``metrics.seam_ratio`` of the generated frames over ETHD's windows (no floor:
  a still portrait has no frame-to-frame change to compare);
- ``drift_per_minute``: slope of the per-frame identity error over one long take;
- ``grain``: speckle (the issue's "deviation of generated minus true frames where the true render
  is flat", high-passed so that a uniform colour error does not count as grain): the standard
  deviation of the high-frequency part (the residual minus its 5x5 mean) of generated minus
  true frames, over pixels where the true render is flat (its 5x5 neighbourhood constant);
  ``flat_error`` beside it is the mean absolute difference there (colour error, not speckle);
- ``silence_mouth``: mean judged mouth opening over frames where nobody speaks (the world's
  mouth rests there at 0).

Goals (the SynthTalk issue) are in :data:`GOALS`; the report says which are met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..media import audio as audio_lib
from . import world
from .judge import emotion_strength, judge_frames, judged_emotion, load_judge

ROUTES = ("label", "text", "image", "video")
INTENSITIES = (0.0, 0.5, 1.0, 1.5)
MAX_OFFSET = 2
GOALS = {
    "lip_sync": (">=", 0.85),
    "lip_sync_within_clip": (">=", 0.75),
    "lip_strength_zero_sync": ("<=", 0.3),
    "emotion_accuracy.label": (">=", 0.7),
    "emotion_accuracy.text": (">=", 0.7),
    "emotion_accuracy.image": (">=", 0.6),
    "emotion_accuracy.video": (">=", 0.6),
    "intensity_monotone": ("==", True),
    "identity_error": ("<=", 0.08),
    "seam_ratio": ("<=", 1.2),
    "drift_per_minute": ("<", 0.01),
    "grain": ("<=", 0.03),
}


@dataclass
class HeldOutClip:
    index: int
    who: world.Identity
    requested: str
    speech_emotion: str
    clip: object  # dataset.Clip: speech and the truth with the requested emotion
    portrait: np.ndarray  # uint8 [S, S, 3], the person neutral and at rest


def held_out_clips(seed: int, count: int, size: int) -> list[HeldOutClip]:
    """Clip ``i``: person ``i`` of world ``seed``, asked for emotion ``i mod 5``, speaking with an
    independently drawn emotion in the voice."""
    from .dataset import identity_seed, make_clip
    from .texts import sentence

    clips = []
    for index in range(count):
        who = world.identity(identity_seed(seed, index))
        rng = np.random.default_rng([seed, index, 0xE7])
        requested = world.EMOTION_NAMES[index % len(world.EMOTION_NAMES)]
        voice = str(rng.choice(world.EMOTION_NAMES))
        text = sentence(rng, who.voice.language)
        clip_seed = int(rng.integers(2**31))
        truth = make_clip(who, world.Emotion(requested), text, clip_seed, size=size, voice=world.Emotion(voice))
        clips.append(HeldOutClip(index, who, requested, voice, truth, render_portrait(who, size)))
    return clips


# --- generation ------------------------------------------------------------------------------

def _nchw(frames_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames_uint8)).permute(0, 3, 1, 2).float() / 255.0


class Generator:
    """The full pipeline on one model, frames kept in memory (uint8, as a video file holds them)."""

    def __init__(self, checkpoint: str, steps: int | None, **settings):
        """``steps`` None: a quick look's (``settings.preview_steps``: 12, a distilled model's own);
        ``settings``: other ``GenerationSettings`` than the library's defaults (e.g. ``sampler``)."""
        from ..pipeline import EmotiveTalkPipeline
        from ..settings import preview_steps

        self.pipeline = EmotiveTalkPipeline.from_files(checkpoint)
        self.steps, self.settings = steps or preview_steps(self.pipeline.model.info), settings

    def __call__(self, portrait: np.ndarray, waveform: np.ndarray, timeline, seed: int, images=None, videos=None,
                 lip_strength: float | None = None) -> np.ndarray:
        """Frames as a user gets them: every setting the library's default but the steps, the seed,
        the generator's ``settings`` and, where a measure asks for it, the lip strength."""
        from ..pipeline import VAIDEmotionResolver, decode_frames, prepare_audio
        from ..settings import GenerationSettings

        pipe = self.pipeline
        settings = GenerationSettings(**{**self.settings, "steps": self.steps, "seed": seed})
        if lip_strength is not None:
            settings = replace(settings, lip_strength=lip_strength)
        settings = settings.for_model(pipe.model)
        audio = prepare_audio(waveform, audio_lib.SAMPLE_RATE, world.FPS)
        resolver = VAIDEmotionResolver(pipe.vaid, images={key: _nchw(image) for key, image in (images or {}).items()},
                                       videos={key: (_nchw(frames), world.FPS) for key, frames in (videos or {}).items()})
        latents, _ = pipe.latents(_nchw(portrait[None]), audio, settings, timeline, resolver=resolver)
        frames = torch.cat(list(decode_frames(pipe.model, latents, settings.decode_chunk_for(pipe.model))))
        return (frames.clamp(0, 1) * 255).round().to(torch.uint8).numpy()

    @property
    def guidance(self) -> dict:
        """The guidance strengths every generation used (lip strength 0 aside)."""
        from ..settings import GenerationSettings

        used = GenerationSettings(**self.settings).sampling_for(self.pipeline.model)
        return {name: getattr(used, f"{name}_strength") for name in ("reference", "lip", "expression")}

    def spans(self, num_frames: int) -> list[tuple[int, int]]:
        """The ETHD windows of a video of ``num_frames`` frames (where its seams are)."""
        from ..settings import GenerationSettings
        from ..sampling import window_spans

        plan = GenerationSettings(steps=self.steps).sampling_plan(self.pipeline.model, num_frames)
        return window_spans(num_frames, plan.window, plan.overlap)

    @property
    def size(self) -> int:
        from ..settings import native_size

        return native_size(self.pipeline.model)[0]


def route_source(route: str, clip: HeldOutClip):
    """The emotion source a route uses for a clip (images and videos by in-memory key)."""
    from ..emotion import EmotionSource
    from ..train.vaid_stage import text_prompt

    if route == "label":
        return EmotionSource("label", clip.requested)
    if route == "text":
        return EmotionSource("text", text_prompt(clip.requested, (clip.index * 0.37) % 1.0))
    return EmotionSource(route, f"held-out-{route}-{clip.index}")


def example_of(route: str, clip: HeldOutClip, seed: int, size: int) -> dict:
    """The emotion image or video of another held-out person for a clip's image/video route."""
    from .dataset import identity_seed, make_clip
    from .render import render
    from .texts import sentence

    other = world.identity(identity_seed(seed, 100_000 + clip.index))
    emotion = world.Emotion(clip.requested)
    key = f"held-out-{route}-{clip.index}"
    if route == "image":
        return {"images": {key: render(other, world.still(other, emotion).params, size).rgb}}
    rng = np.random.default_rng([seed, clip.index, 0x71])
    example = make_clip(other, emotion, sentence(rng, other.voice.language), int(rng.integers(2**31)), size=size)
    return {"videos": {key: example.frames.rgb}}


# --- measures --------------------------------------------------------------------------------

def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; 0 when either side is constant (a still mouth follows nothing)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 1e-12 else 0.0


def shifted_pairs(judged: list[np.ndarray], truth: list[np.ndarray], offset: int):
    """Per clip, judged frame k + offset against true frame k (frames in both clips only)."""
    pairs = []
    for j, t in zip(judged, truth, strict=True):
        n = len(t)
        lo, hi = max(0, -offset), min(n, n - offset)
        pairs.append((j[lo + offset:hi + offset], t[lo:hi]))
    return pairs


def lip_sync(judged: list[np.ndarray], truth: list[np.ndarray]) -> dict:
    """Pooled r at the best common offset within +-MAX_OFFSET, and the mean per-clip r there."""
    best = None
    for offset in range(-MAX_OFFSET, MAX_OFFSET + 1):
        pairs = shifted_pairs(judged, truth, offset)
        pooled = pearson(np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs]))
        if best is None or pooled > best[0]:
            best = (pooled, offset, pairs)
    pooled, offset, pairs = best
    return {"pooled": pooled, "within_clip": float(np.mean([pearson(j, t) for j, t in pairs])), "offset": offset}


def flat_mask(true_frames: np.ndarray, radius: int = 2) -> np.ndarray:
    """``[F, H, W]`` True where the true render is constant over the (2r+1)^2 neighbourhood."""
    frames = true_frames.astype(np.int16)
    height, width = frames.shape[1:3]
    padded = np.pad(frames, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    high = low = frames
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            window = padded[:, dy:dy + height, dx:dx + width]
            high, low = np.maximum(high, window), np.minimum(low, window)
    return (high - low).max(axis=-1) <= 1


def _box_mean(values: np.ndarray, radius: int = 2) -> np.ndarray:
    height, width = values.shape[1:3]
    padded = np.pad(values, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    total = np.zeros_like(values)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            total += padded[:, dy:dy + height, dx:dx + width]
    return total / (2 * radius + 1) ** 2


def grain(generated: np.ndarray, true_frames: np.ndarray) -> dict:
    """Speckle and colour error of generated vs true frames where the true render is flat."""
    flat = flat_mask(true_frames)
    residual = generated.astype(np.float64) / 255 - true_frames.astype(np.float64) / 255
    speckle = residual - _box_mean(residual)
    if not flat.any():
        return {"grain": None, "flat_error": None}
    return {"grain": float(np.sqrt((speckle[flat] ** 2).mean())), "flat_error": float(np.abs(residual[flat]).mean())}


def identity_error(frames: np.ndarray, portrait: np.ndarray) -> np.ndarray:
    """Per-frame mean absolute colour difference (0..1) to the portrait."""
    return np.abs(frames.astype(np.float64) - portrait[None].astype(np.float64)).mean(axis=(1, 2, 3)) / 255


def drift_slope(per_frame_error: np.ndarray) -> float:
    """Least-squares slope of a per-frame series, per minute of video."""
    minutes = np.arange(len(per_frame_error)) / (world.FPS * 60.0)
    return float(np.polyfit(minutes, per_frame_error, 1)[0]) if len(per_frame_error) > 1 else 0.0


# --- the evaluation --------------------------------------------------------------------------

def trained_world_seed(checkpoint: str) -> int | None:
    """The SynthTalk world a model file was trained in (its info records it), if any."""
    from ..bundles import resolve_model_file
    from ..checkpoints import read_metadata

    _, info = read_metadata(resolve_model_file(checkpoint))
    return (info.get("synthtalk") or {}).get("world_seed")


def evaluate(checkpoint: str = "default", seed: int = 1, clips: int = 64, steps: int | None = None, take_seconds: float = 60.0,
             subset: int = 8, routes: tuple[str, ...] = ROUTES, progress=None) -> dict:
    """Every figure of the module docstring for ``clips`` held-out clips of world ``seed``.

    ``steps`` None: 12, or a distilled model's own (its strengths too: every other setting is the
    model's); ``subset`` label-route clips also measure intensity and lip strength 0 (0: not measured);
    ``take_seconds`` is the drift take (0: none); ``routes`` the emotion routes taken in turn.
    """
    _check_arguments(checkpoint, seed, clips, steps, take_seconds, subset, routes)
    generate = Generator(checkpoint, steps)
    judge = load_judge()
    size = generate.size
    held_out = held_out_clips(seed, clips, size)
    chosen = [clip for clip in held_out if route_of(clip, routes) == "label" and clip.requested != "neutral"][:subset]
    # Per chosen clip: the intensities other than 1 (its own generation) and one at lip strength 0.
    counter = _Counter(progress, total=clips + len(chosen) * (len(INTENSITIES) - 1 + 1) + (1 if take_seconds else 0))

    rows = []
    for clip in held_out:
        route = route_of(clip, routes)
        extras = example_of(route, clip, seed, size) if route in ("image", "video") else {}
        frames = generate(clip.portrait, clip.clip.waveform, _single(route_source(route, clip)), _generation_seed(seed, clip),
                          **extras)
        rows.append({"clip": clip, "route": route, "frames": frames, "judged": judge_frames(judge, frames)})
        counter.tick()

    measures = _route_measures(rows, judge, routes, generate.spans)
    if chosen:
        measures.update(_subset_measures([row for row in rows if row["clip"] in chosen], generate, judge, seed, counter.tick))
    if take_seconds:
        measures.update(_take_measures(generate, seed, take_seconds, size, counter.tick))
    return _report(measures, checkpoint, seed, clips, len(chosen), take_seconds, generate, routes)


def route_of(clip: HeldOutClip, routes: tuple[str, ...] = ROUTES) -> str:
    return routes[clip.index % len(routes)]


def _generation_seed(seed: int, clip: HeldOutClip) -> int:
    return seed * 1000 + clip.index


class _Counter:
    def __init__(self, progress, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def tick(self) -> None:
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total)


def _single(source):
    from ..emotion import single

    return single(source)


def _check_arguments(checkpoint, seed, clips, steps, take_seconds, subset, routes) -> None:
    unknown = [route for route in routes if route not in ROUTES]
    if unknown or not routes:
        raise ValueError(f"unknown emotion routes {unknown}; choose from {', '.join(ROUTES)}")
    if clips < 5 * len(routes):
        raise ValueError(f"--clips must be at least {5 * len(routes)} (every emotion by every route), got {clips}")
    if seed < 0:
        raise ValueError(f"--seed must be 0 or more, got {seed}")
    if steps is not None and not 1 <= steps <= 200:
        raise ValueError(f"--steps must be between 1 and 200, got {steps}")
    if take_seconds and not 2.0 <= take_seconds <= 600.0:
        raise ValueError(f"--take-seconds must be 0 (no take) or between 2 and 600, got {take_seconds:g}")
    if subset < 0:
        raise ValueError(f"--subset must be 0 or more, got {subset}")
    trained_on = trained_world_seed(checkpoint)
    if trained_on is not None and seed == trained_on:
        raise ValueError(f"--seed {seed} is the world {checkpoint} was trained in: held-out figures need another seed")


def _route_measures(rows, judge, routes, spans) -> dict:
    """Lip sync, emotion per route, identity, silence, grain, with their ceilings and floors."""
    truths = [row["clip"].clip for row in rows]
    true_mouth = [truth.performance.params["mouth_open"] for truth in truths]
    judged_true = [judge_frames(judge, truth.frames.rgb) for truth in truths]
    portraits = [np.repeat(row["clip"].portrait[None], truth.num_frames, axis=0) for row, truth in zip(rows, truths)]
    judged_portrait = [judge_frames(judge, frames) for frames in portraits]
    sources = {"value": [row["judged"] for row in rows], "ceiling": judged_true, "floor": judged_portrait}
    syncs = {kind: lip_sync([j["mouth_open"] for j in judged], true_mouth) for kind, judged in sources.items()}
    measures = {
        "lip_sync": tuple(syncs[kind]["pooled"] for kind in sources),
        "lip_sync_within_clip": tuple(syncs[kind]["within_clip"] for kind in sources),
        "lip_sync_offset": (syncs["value"]["offset"], syncs["ceiling"]["offset"], None),
    }
    for route in routes:
        picked = [k for k, row in enumerate(rows) if row["route"] == route]
        requested = [rows[k]["clip"].requested for k in picked]
        measures[f"emotion_accuracy.{route}"] = tuple(
            float(np.mean([judged_emotion(judged[k])[0] == want for k, want in zip(picked, requested)]))
            for judged in sources.values())
    silent = [truth.performance.speaking < 0.01 for truth in truths]
    measures["silence_mouth"] = tuple(float(np.mean(np.concatenate([j["mouth_open"][s] for j, s in zip(judged, silent)])))
                                      for judged in sources.values())
    identity = [identity_error(row["frames"], row["clip"].portrait).mean() for row in rows]
    identity_true = [identity_error(truth.frames.rgb, row["clip"].portrait).mean() for row, truth in zip(rows, truths)]
    measures["identity_error"] = (float(np.mean(identity)), float(np.mean(identity_true)), 0.0)
    measures["seam_ratio"] = (_seams([row["frames"] for row in rows], spans), _seams([t.frames.rgb for t in truths], spans), None)
    grains = [grain(row["frames"], truth.frames.rgb) for row, truth in zip(rows, truths)]
    floor_grains = [grain(portrait, truth.frames.rgb) for portrait, truth in zip(portraits, truths)]
    for name in ("grain", "flat_error"):  # clips without flat pixels say nothing about speckle
        measures[name] = (_mean_of([g[name] for g in grains]), 0.0, _mean_of([g[name] for g in floor_grains]))
    return measures


def _seams(frames_list, spans_of) -> float | None:
    from ..metrics import seam_ratio

    ratios = [seam_ratio(torch.from_numpy(frames), spans_of(len(frames))) for frames in frames_list
              if len(spans_of(len(frames))) >= 2]
    return float(np.mean(ratios)) if ratios else None


def _subset_measures(rows, generate, judge, seed, tick) -> dict:
    """Intensity 0 / 0.5 / 1.5 (1 is the clip's own generation), lip strength 0, and seams."""
    from ..emotion import EmotionSource, single
    from .render import render

    strengths = {intensity: [] for intensity in INTENSITIES}
    true_strengths = {intensity: [] for intensity in INTENSITIES}
    for row in rows:
        clip = row["clip"]
        for intensity in INTENSITIES:
            scaled = world.with_intensity(clip.clip.performance, intensity)
            true_frames = render(clip.who, scaled.params, clip.portrait.shape[0]).rgb
            true_strengths[intensity].append(emotion_strength(judge_frames(judge, true_frames), clip.requested))
            if intensity == 1.0:
                judged = row["judged"]
            else:
                judged = judge_frames(judge, generate(clip.portrait, clip.clip.waveform,
                                                      single(EmotionSource("label", clip.requested), intensity),
                                                      _generation_seed(seed, clip)))
                tick()
            strengths[intensity].append(emotion_strength(judged, clip.requested))
    zero_lip = []
    for row in rows:
        clip = row["clip"]
        frames = generate(clip.portrait, clip.clip.waveform, single(EmotionSource("label", clip.requested)),
                          _generation_seed(seed, clip), lip_strength=0.0)
        tick()
        zero_lip.append(judge_frames(judge, frames)["mouth_open"])
    truth = [row["clip"].clip.performance.params["mouth_open"] for row in rows]
    still = [judge_frames(judge, np.repeat(row["clip"].portrait[None], len(t), axis=0))["mouth_open"] for row, t in zip(rows, truth)]
    means = [float(np.mean(strengths[i])) for i in INTENSITIES]
    true_means = [float(np.mean(true_strengths[i])) for i in INTENSITIES]
    return {
        "intensity_monotone": (_increasing(means), _increasing(true_means), False),
        "intensity_strengths": (means, true_means, None),
        "lip_strength_zero_sync": (lip_sync(zero_lip, truth)["pooled"], None, lip_sync(still, truth)["pooled"]),
    }


def _mean_of(values: list) -> float | None:
    known = [value for value in values if value is not None]
    return float(np.mean(known)) if known else None


def _increasing(values: list[float]) -> bool:
    return bool(all(a < b for a, b in zip(values, values[1:])))


def _take_measures(generate, seed, take_seconds, size, tick) -> dict:
    """One long take of one held-out person: identity drift per minute, and seams over it."""
    from ..emotion import EmotionSource, single
    from .dataset import identity_seed, make_clip
    from .texts import sentence

    who = world.identity(identity_seed(seed, 200_000))
    rng = np.random.default_rng([seed, 0x7A])
    emotion = world.Emotion(str(rng.choice(world.EMOTION_NAMES[1:])))
    # A sentence is rarely under 1.5 s, so this speaks for at least the take; the rest is cut.
    text = " ".join(sentence(rng, who.voice.language) for _ in range(max(1, math.ceil(take_seconds / 1.5))))
    take = make_clip(who, emotion, text, int(rng.integers(2**31)), size=size)
    limit = int(take_seconds * world.FPS)
    waveform = take.waveform[: limit * audio_lib.SAMPLE_RATE // world.FPS]
    portrait = render_portrait(who, size)
    frames = generate(portrait, waveform, single(EmotionSource("label", emotion.label)), seed * 1000 + 999)
    tick()
    return {
        "drift_per_minute": (drift_slope(identity_error(frames, portrait)),
                             drift_slope(identity_error(take.frames.rgb[:limit], portrait)), 0.0),
        "take_seconds": (len(frames) / world.FPS, None, None),
        "take_seam_ratio": (_seams([frames], generate.spans), _seams([take.frames.rgb[:limit]], generate.spans), None),
    }


def render_portrait(who: world.Identity, size: int) -> np.ndarray:
    from .render import render

    return render(who, world.still(who, world.Emotion("neutral")).params, size).rgb[0]


_COMPARE = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "==": lambda a, b: a == b}


def _report(measures: dict, checkpoint, seed, clips, subset, take_seconds, generate, routes) -> dict:
    """Every measure with its ceiling and floor; every goal of :data:`GOALS`, measured or not (an
    unmeasured goal has ``met: None`` and keeps ``all_goals_met`` false: a short run proves less)."""
    from ..bundles import file_digest, resolve_model_file

    report = {}
    for name, (value, ceiling, floor) in measures.items():
        report[name] = {"value": value, "ceiling": ceiling, "floor": floor}
    for name, (op, target) in GOALS.items():
        entry = report.setdefault(name, {"value": None, "ceiling": None, "floor": None})
        entry["goal"] = f"{op} {target}"
        entry["met"] = None if entry["value"] is None else bool(_COMPARE[op](entry["value"], target))
    info = generate.pipeline.model.info
    report["settings"] = {"checkpoint": str(checkpoint), "checkpoint_sha256": file_digest(resolve_model_file(checkpoint))["sha256"],
                          "seed": seed, "clips": clips, "subset": subset, "steps": generate.steps, "take_seconds": take_seconds,
                          "trained": bool(info.get("trained")), "routes": list(routes), "guidance": generate.guidance,
                          "route_of_clip": "clip i asks for emotion i mod 5 by route i mod len(routes)"}
    report["all_goals_met"] = all(report[name]["met"] is True for name in GOALS)
    return report


def format_report(report: dict) -> str:
    lines = []
    for name, entry in report.items():
        if name in ("settings", "all_goals_met"):
            continue
        verdict = {True: "met", False: "NOT met", None: "not measured"}[entry["met"]] if "goal" in entry else ""
        goal = f"  goal {entry['goal']}: {verdict}" if verdict else ""
        lines.append(f"{name:28s} {_fmt(entry['value']):>10s}  (ceiling {_fmt(entry['ceiling'])}, floor {_fmt(entry['floor'])}){goal}")
    lines.append(f"all goals met: {report['all_goals_met']}")
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
