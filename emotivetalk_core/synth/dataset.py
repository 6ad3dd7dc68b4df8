"""SynthTalk clips and training shards.

A *clip* is one identity saying one pseudo-sentence with one emotion: eSpeak's speech (with a
little silence before and after, so the mouth is seen at rest), the performance it causes, and
the rendered frames. :func:`write_shards` writes a world of clips in the shard format that
real-video preprocessing writes (``train/shards.py``): one shard per identity (a "video" of that
person), one clip per utterance, each clip labelled with its own emotion and intensity. So the
same datasets, training stages and export serve SynthTalk and real video; the world's true
mouth and expression parameters are the lip and expression targets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..media import audio as audio_lib
from . import world
from .render import Frames, render

log = logging.getLogger(__name__)

SIZE = world.SIZE
TARGETS = {"tool": "synthtalk-world", "lip_dim": len(world.LIP_PARAMETERS), "exp_dim": len(world.EXPRESSION_PARAMETERS)}
# Room noise under the speech (about -66 dBFS): real recordings are never digitally silent, and a
# log-mel of exact zeros would sit far below anything speech gives.
ROOM_NOISE = 5e-4


@dataclass
class Clip:
    identity: world.Identity
    emotion: world.Emotion
    text: str
    waveform: np.ndarray  # float32, 16 kHz, exactly num_frames / fps long
    performance: world.Performance
    frames: Frames

    @property
    def num_frames(self) -> int:
        return self.performance.num_frames

    def shard_entry(self) -> dict:
        """The clip as ``train.shards.write_shard`` takes it."""
        count, size = self.frames.rgb.shape[:2]
        return {
            "frames": self.frames.rgb,
            "audio": self.waveform,
            "mask": self.frames.mask,
            "box": np.tile(np.array([0, 0, size, size], dtype=np.float32), (count, 1)),
            "lip_target": self.performance.lip_target(),
            "exp_target": self.performance.exp_target(),
            "emotion": self.emotion.label,
            "intensity": round(float(self.emotion.intensity), 4),
        }


def speak(who: world.Identity, emotion: world.Emotion, text: str, seed: int, lead: float, tail: float):
    """``(waveform, phonemes)``: the identity saying ``text`` with ``emotion``, with ``lead`` and
    ``tail`` seconds of room noise around it; phoneme times are on the returned waveform."""
    from .speech import Phoneme, synthesize

    utterance = synthesize(text, world.voice_for(who.voice, emotion))
    rate = audio_lib.SAMPLE_RATE
    before, after = int(round(lead * rate)), int(round(tail * rate))
    waveform = np.concatenate([np.zeros(before, np.float32), utterance.waveform, np.zeros(after, np.float32)])
    waveform += ROOM_NOISE * np.random.default_rng([seed, 0xA0]).standard_normal(len(waveform)).astype(np.float32)
    phonemes = [Phoneme(p.symbol, p.start + lead, p.end + lead, p.stress) for p in utterance.phonemes]
    return waveform, phonemes


def make_clip(who: world.Identity, emotion: world.Emotion, text: str, seed: int, lead: float = 0.3,
              tail: float = 0.4, size: int = SIZE, fps: int = world.FPS, life: bool = True,
              voice: world.Emotion | None = None) -> Clip:
    """One rendered clip; its length is the audio's, rounded up to whole frames (the audio is
    padded with room noise to match, as ``pipeline.prepare_audio`` pads with silence). The voice
    carries ``emotion`` too unless ``voice`` names another (evaluation asks a face for an emotion
    its voice does not have)."""
    waveform, phonemes = speak(who, voice or emotion, text, seed, lead, tail)
    num_frames = audio_lib.frame_count(len(waveform), fps)
    padded = audio_lib.pad_to_frames(waveform, num_frames, fps)
    padded[len(waveform):] = ROOM_NOISE * np.random.default_rng([seed, 0xA1]).standard_normal(len(padded) - len(waveform))
    performance = world.perform(phonemes, num_frames, who, emotion, seed, fps=fps, life=life)
    return Clip(who, emotion, text, padded.astype(np.float32), performance, render(who, performance.params, size))


def identity_seed(world_seed: int, index: int) -> int:
    """The identity seed of person ``index`` of a world: different worlds share no one."""
    return int(np.random.SeedSequence([world_seed, index, 0x1D]).generate_state(1, np.uint32)[0])


def person_clips(world_seed: int, index: int, clips: int, size: int = SIZE,
                 intensity_range: tuple[float, float] = (0.5, 1.5)) -> list[Clip]:
    """Person ``index`` of world ``world_seed``: ``clips`` utterances, the emotions cycling through
    every SynthTalk emotion in a random order (so each person shows them all), each with its own
    intensity, sentence, pauses and performance."""
    from .texts import sentence

    who = world.identity(identity_seed(world_seed, index))
    rng = np.random.default_rng([world_seed, index, 0xC1])
    order = rng.permutation(len(world.EMOTION_NAMES))
    result = []
    for k in range(clips):
        label = world.EMOTION_NAMES[order[k % len(order)]]
        intensity = 1.0 if label == "neutral" else float(rng.uniform(*intensity_range))
        text = sentence(rng, who.voice.language)
        seed = int(rng.integers(2**31))
        result.append(make_clip(who, world.Emotion(label, intensity), text, seed,
                                lead=float(rng.uniform(0.15, 0.6)), tail=float(rng.uniform(0.2, 0.6)), size=size))
    return result


def write_person(out: Path, world_seed: int, index: int, clips: int, size: int = SIZE) -> Path:
    from ..train.shards import write_shard

    made = person_clips(world_seed, index, clips, size)
    info = {
        "source": _source(world_seed, index),
        "identity": f"synthtalk-{world_seed}-{index}",
        "emotion": None,
        "level": None,
        "fps": world.FPS,
        "sample_rate": audio_lib.SAMPLE_RATE,
        "size": size,
        "targets": TARGETS,
    }
    return write_shard(_shard_path(Path(out), index), [clip.shard_entry() for clip in made], info)


def write_shards(out: str | Path, world_seed: int, people: int, clips: int = 5, size: int = SIZE, workers: int = 1,
                 progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Write ``people`` shards of ``clips`` clips each into ``out``; ``workers`` processes render in
    parallel. Shards already there are kept when they are the ones asked for (same world, person,
    clip count and size), so an interrupted run resumes; any other file of the same name is refused,
    never written over. Returns the requested people's shards."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [_shard_path(out, index) for index in range(people)]
    todo = [index for index, path in enumerate(paths) if not _is_made(path, world_seed, index, clips, size)]
    done = people - len(todo)
    if progress:
        progress(done, people)
    if workers <= 1:
        for index in todo:
            write_person(out, world_seed, index, clips, size)
            done += 1
            if progress:
                progress(done, people)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: a fork would copy torch's thread pools and eSpeak's global state.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(write_person, out, world_seed, index, clips, size) for index in todo]
            for future in as_completed(futures):
                future.result()
                done += 1
                if progress:
                    progress(done, people)
    return paths


def _source(world_seed: int, index: int) -> str:
    return f"synthtalk/world-{world_seed}/person-{index:05d}"


def _shard_path(out: Path, index: int) -> Path:
    return out / f"person-{index:05d}.safetensors"


def _is_made(path: Path, world_seed: int, index: int, clips: int, size: int) -> bool:
    """True when ``path`` is already this person's shard; False when absent; raises when another
    file sits there (a resumed run must not mix worlds or sizes)."""
    from ..train.shards import ShardError, read_shard_info

    if not path.is_file():
        return False
    try:
        info = read_shard_info(path)
    except Exception as error:
        raise ShardError(f"{path} exists and is not a SynthTalk shard ({error}): give an empty folder") from error
    if (info.get("source"), len(info.get("clips", [])), info.get("size")) != (_source(world_seed, index), clips, size):
        raise ShardError(f"{path} holds {info.get('source')} ({len(info.get('clips', []))} clips, {info.get('size')} px), "
                         f"not {_source(world_seed, index)} ({clips} clips, {size} px): give an empty folder")
    return True
