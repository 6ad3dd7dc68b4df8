"""Preprocessing: real talking-head videos -> training shards (``python -m emotivetalk_core.train preprocess``).

For every video under ``--videos`` (any container FFmpeg reads), one shard (``train.shards``)
under ``OUT/shards/``:

1. The audio is decoded to 16 kHz mono on the video's clock (sample 0 is heard with the first
   frame, whatever start times the two streams carry); a file without an audio stream or with silent audio is
   skipped.
2. Pass one decodes the frames at ``--fps`` (by frame centres, ``media.video_reader.iter_video_frames``)
   and tracks the face (``face_track``); nothing but the boxes is kept. Only frames the audio
   covers are used.
3. The track is cleaned and smoothed; where the face is lost for more than ``--max-gap`` the
   track is cut. Each face run is cut into clips of ``--clip-seconds`` (a shorter last one is
   kept if it lasts at least ``--min-clip-seconds``).
4. Pass two decodes again and crops each planned frame to a ``--size`` square; the target tool
   (``targets``) measures each crop. Crops and masks go straight into memory-mapped files in
   ``OUT/.work/``, so memory holds no clip of frames however long the video; the shard is
   written from them (atomically: temp name, then rename) and the work files are deleted.

Labels come from the path (MEAD layout ``M003/video/front/angry/level_2/001.mp4``): the emotion
is a folder named like one of ``configs.EMOTION_LABELS`` (any case), the level a folder
``level_N``, the identity the first folder under ``--videos`` (the file's stem for a flat folder).

A run can be interrupted and started again with the same command: finished shards (recording
the same source) are not redone, and files skipped before (listed in ``OUT/skipped.json`` with
their size and modification time) are not decoded again unless ``--retry-skipped`` or the file
changed. ``OUT/preprocess.json`` records the settings; a run with different settings into the
same ``OUT`` is refused. ``OUT/summary.json`` counts what the run did and why files were skipped.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..configs import EMOTION_LABELS
from ..media.audio import SAMPLE_RATE, frame_count, load_audio_on_video_timeline
from ..media.face_crop import DEFAULT_SCALE
from ..media.video_reader import iter_video_frames
from . import face_track, targets
from .shards import ShardError, read_shard_info, samples_per_frame, write_shard

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts", ".mts"})
SHARDS_DIR = "shards"
WORK_DIR = ".work"
SETTINGS_FILE = "preprocess.json"
SKIPPED_FILE = "skipped.json"
SUMMARY_FILE = "summary.json"
SKIP_REASONS = {
    "unreadable": "not a readable video (corrupt, truncated, or not a media file)",
    "no_audio": "no audio stream",
    "silent": "the audio is silent",
    "too_short": "shorter than one clip",
    "no_face": "no face found",
    "short_face": "the face is never tracked for one clip's length",
    "no_landmarks": "the landmark tool lost the face in too many frames of every clip",
}
# A clip whose crops the target tool cannot measure in more than this fraction of frames is dropped.
MAX_UNMEASURED = 0.2
# Without a face in sight, the whole frame is searched this often (frames).
REACQUIRE_EVERY = 5
_MIN_SIZE = 64


class Skip(Exception):
    """This video cannot give a shard; ``reason`` is a key of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{SKIP_REASONS[reason]}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Job:
    source: Path
    relative: str
    shard: Path
    work: Path
    settings: dict
    info: dict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--videos", type=Path, required=True, help="folder of talking-head videos (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="output folder: shards/, summary.json, skipped.json")
    parser.add_argument("--size", type=int, default=512, help="side of the square face crops in pixels (default: %(default)s)")
    parser.add_argument("--fps", type=int, default=25, help="frame rate of the shards; must divide 16000 (default: %(default)s)")
    parser.add_argument("--clip-seconds", type=float, default=10.0, help="clip length (default: %(default)s)")
    parser.add_argument("--min-clip-seconds", type=float, default=2.0, help="shortest clip kept, e.g. a video's last piece (default: %(default)s)")
    parser.add_argument("--min-face", type=float, default=0.08, help="smallest face, as a fraction of the frame's shorter side (default: %(default)s)")
    parser.add_argument("--crop-scale", type=float, default=DEFAULT_SCALE, help="crop side / face detector box side (default: %(default)s)")
    parser.add_argument("--smooth", type=float, default=0.2, help="crop-box smoothing: Gaussian sigma in seconds, 0 = none (default: %(default)s)")
    parser.add_argument("--detect-every", type=int, default=2, help="run the face detector every N frames while tracking, interpolate between (default: %(default)s)")
    parser.add_argument("--max-gap", type=float, default=0.5, help="longest face loss bridged by interpolation, seconds; longer ends a clip (default: %(default)s)")
    parser.add_argument("--silence-db", type=float, default=-50.0, help="audio quieter than this RMS (dB full scale) counts as silent (default: %(default)s)")
    parser.add_argument("--targets", choices=targets.CHOICES, default="auto", help="Lip/Exp encoder targets: landmarks (mediapipe, requirements-train.txt), fallback (image patches) or auto (default)")
    parser.add_argument("--include", action="append", default=[], metavar="GLOB", help="only videos whose path under --videos matches, e.g. '*/front/*' (repeatable)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N videos found, in path order (0 = all)")
    parser.add_argument("--workers", type=int, default=1, help="videos processed in parallel processes (default: %(default)s)")
    parser.add_argument("--retry-skipped", action="store_true", help="try again the files an earlier run skipped")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (read by the command-line dispatcher)")


def run(args: argparse.Namespace) -> int:
    """Preprocess ``args.videos`` into ``args.out``. Returns 0, or 1 when ``OUT`` holds no shard at
    the end. Bad arguments raise ValueError / FileNotFoundError with what to do."""
    started = time.perf_counter()
    settings = _settings(args)
    videos = Path(args.videos).resolve()
    out = Path(args.out).resolve()
    if not videos.is_dir():
        raise FileNotFoundError(f"--videos {args.videos} is not a folder")
    try:
        tool = targets.resolve_tool(args.targets, args.crop_scale)
    except targets.TargetsUnavailable as error:  # an install problem the user fixes, like a bad argument
        raise ValueError(str(error)) from error
    settings["targets"] = tool.name
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out / SETTINGS_FILE, settings)
    sources = find_videos(videos, out, args.include)
    if args.limit > 0:
        sources = sources[: args.limit]
    if not sources:
        raise ValueError(f"no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) under {videos}" + (" matching --include" if args.include else ""))
    logger.info("%d videos under %s; targets: %s", len(sources), videos, tool.name)

    skipped = _read_json(out / SKIPPED_FILE)
    results, jobs = [], []
    for source in sources:
        relative = source.relative_to(videos).as_posix()
        shard = out / SHARDS_DIR / shard_name(relative)
        if _finished(shard, relative):
            results.append({"source": relative, "status": "done"})
        elif not args.retry_skipped and _same_file(skipped.get(relative), source):
            results.append({"source": relative, "status": "skipped_before", **_reason(skipped[relative])})
        else:
            info = _shard_info(relative, settings, tool)
            jobs.append(Job(source, relative, shard, out / WORK_DIR / shard.stem, settings, info))
    _remove_tree(out / WORK_DIR)  # leftovers of an interrupted run
    for result in _execute(jobs, args.workers):
        results.append(result)
        _remember(out / SKIPPED_FILE, skipped, result, videos)
    _remove_tree(out / WORK_DIR)
    summary = _summarise(results, len(sources), time.perf_counter() - started, settings, tool)
    _write_json(out / SUMMARY_FILE, summary)
    _log_summary(summary, out)
    if not any((out / SHARDS_DIR).glob("*.safetensors")):
        logger.error("no shard in %s: every video was skipped (reasons in %s)", out / SHARDS_DIR, out / SUMMARY_FILE)
        return 1
    return 0


def _settings(args: argparse.Namespace) -> dict:
    """The options that decide a shard's content, checked."""
    if args.size < _MIN_SIZE:
        raise ValueError(f"--size must be at least {_MIN_SIZE} pixels, got {args.size}")
    if args.fps <= 0:
        raise ValueError(f"--fps must be positive, got {args.fps}")
    samples_per_frame(args.fps, SAMPLE_RATE)  # raises for rates that split 16 kHz unevenly
    for name in ("clip_seconds", "min_clip_seconds"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.crop_scale < 1:
        raise ValueError(f"--crop-scale must be at least 1 (the crop holds the whole face box), got {args.crop_scale}")
    if args.min_clip_seconds > args.clip_seconds:
        raise ValueError(f"--min-clip-seconds ({args.min_clip_seconds}) is longer than --clip-seconds ({args.clip_seconds})")
    if not 0 < args.min_face < 1:
        raise ValueError(f"--min-face is a fraction of the frame's shorter side, in (0, 1); got {args.min_face}")
    if args.smooth < 0 or args.max_gap < 0:
        raise ValueError("--smooth and --max-gap are seconds and cannot be negative")
    if not 1 <= args.detect_every <= max(1, round(args.max_gap * args.fps)) + 1:
        raise ValueError(f"--detect-every {args.detect_every} leaves gaps longer than --max-gap {args.max_gap} s; lower it or raise --max-gap")
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    keys = ("size", "fps", "clip_seconds", "min_clip_seconds", "min_face", "crop_scale", "smooth", "detect_every", "max_gap", "silence_db")
    return {key: getattr(args, key) for key in keys}


def _check_settings(path: Path, settings: dict) -> None:
    if path.exists():
        recorded = _read_json(path)
        changed = {key: (recorded.get(key), value) for key, value in settings.items() if recorded.get(key) != value}
        if changed:
            listing = ", ".join(f"{key}: {old} -> {new}" for key, (old, new) in changed.items())
            raise ValueError(
                f"{path.parent} was preprocessed with other settings ({listing}); shards of different settings "
                "must not mix: use a new --out folder, or delete this one to start over"
            )
    else:
        _write_json(path, settings)


def find_videos(root: Path, out: Path, include: list[str]) -> list[Path]:
    """Video files under ``root`` (by suffix, any case), sorted; hidden folders and ``out`` excluded."""
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != out)
        for name in files:
            path = here / name
            if path.suffix.lower() not in VIDEO_SUFFIXES or name.startswith("."):
                continue
            relative = path.relative_to(root).as_posix()
            if include and not any(fnmatch.fnmatch(relative, pattern) for pattern in include):
                continue
            found.append(path)
    return sorted(found)


def shard_name(relative: str) -> str:
    """Stable, unique file name for a source path: readable path + a short hash of it."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", relative.replace("/", "__"))[-120:]
    digest = hashlib.sha1(relative.encode("utf-8")).hexdigest()[:10]
    return f"{readable}-{digest}.safetensors"


def source_labels(relative: str) -> tuple[str, str | None, int | None]:
    """``(identity, emotion, level)`` from a path under ``--videos`` (see the module docstring)."""
    path = PurePosixPath(relative)
    folders = path.parts[:-1]
    emotion = next((part.lower() for part in folders if part.lower() in EMOTION_LABELS), None)
    levels = (re.fullmatch(r"level_?(\d+)", part, re.IGNORECASE) for part in folders)
    level = next((int(match.group(1)) for match in levels if match), None)
    identity = folders[0] if folders else path.stem
    return identity, emotion, level


def _shard_info(relative: str, settings: dict, tool) -> dict:
    identity, emotion, level = source_labels(relative)
    return {
        "source": relative,
        "identity": identity,
        "emotion": emotion,
        "level": level,
        "fps": settings["fps"],
        "sample_rate": SAMPLE_RATE,
        "size": settings["size"],
        "targets": {"tool": tool.name, "lip_dim": tool.lip_dim, "exp_dim": tool.exp_dim},
    }


def _finished(shard: Path, relative: str) -> bool:
    if not shard.exists():
        return False
    try:
        recorded = read_shard_info(shard).get("source")
    except (ShardError, OSError, ValueError) as error:  # safetensors reports a damaged file as a ValueError subclass
        logger.warning("%s: unreadable shard (%s); processing %s again", shard, error, relative)
        return False
    if recorded != relative:
        logger.warning("%s records source %r, not %r; processing %s again", shard, recorded, relative, relative)
        return False
    return True


def _same_file(entry: dict | None, source: Path) -> bool:
    if entry is None:
        return False
    stat = source.stat()
    return entry.get("bytes") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns


def _reason(entry: dict) -> dict:
    return {"reason": entry["reason"], "detail": entry["detail"]}


def _execute(jobs: list[Job], workers: int):
    """Results of :func:`process` for every job, in completion order, with a progress bar."""
    from tqdm import tqdm

    progress = tqdm(total=len(jobs), unit="video", desc="preprocess", disable=None)
    with progress:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                yield process(job)
                progress.update()
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")  # no inherited OpenCV / MediaPipe threads
        level = logging.getLogger().getEffectiveLevel()
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(level,)) as pool:
            for future in as_completed([pool.submit(process, job) for job in jobs]):
                yield future.result()
                progress.update()


def _init_worker(level: int) -> None:
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def process(job: Job) -> dict:
    """Make one video's shard. Returns ``{"source", "status": "written" | "skipped", ...}``."""
    started = time.perf_counter()
    try:
        clips, frames = _make_shard(job)
    except Skip as skip:
        return {"source": job.relative, "status": "skipped", "reason": skip.reason, "detail": skip.detail}
    finally:
        _remove_tree(job.work)
    seconds = time.perf_counter() - started
    logger.info("%s: %d clips, %d frames in %.1f s", job.relative, clips, frames, seconds)
    return {"source": job.relative, "status": "written", "clips": clips, "frames": frames, "seconds": seconds}


def _make_shard(job: Job) -> tuple[int, int]:
    settings = job.settings
    fps = settings["fps"]
    audio = _read_audio(job.source, settings["silence_db"])
    min_frames = max(1, round(settings["min_clip_seconds"] * fps))
    covered = frame_count(audio.shape[0], fps)
    if covered < min_frames:
        raise Skip("too_short", f"{audio.shape[0] / SAMPLE_RATE:.2f} s of audio, clips need {settings['min_clip_seconds']} s")
    track = _track_face(job.source, settings, covered)
    if track.shape[0] < min_frames:
        raise Skip("too_short", f"{track.shape[0]} frames at {fps} fps, clips need {min_frames}")
    plan = plan_clips(face_track.segments(track), round(settings["clip_seconds"] * fps), min_frames)
    if not plan:
        longest = max((stop - start for start, stop in face_track.segments(track)), default=0)
        if longest == 0:
            raise Skip("no_face", f"no face of at least {settings['min_face']:.0%} of the frame's shorter side in {track.shape[0]} frames")
        raise Skip("short_face", f"longest face track {longest / fps:.2f} s, clips need {min_frames / fps:.2f} s")
    tool = targets.tool_named(job.info["targets"]["tool"], settings["crop_scale"])
    clips = _cut_clips(job, track, plan, audio, tool)
    if not clips:
        raise Skip("no_landmarks", f"{tool.name} found no face in more than {MAX_UNMEASURED:.0%} of the frames of all {len(plan)} clips")
    write_shard(job.shard, clips, job.info)
    return len(clips), sum(clip["frames"].shape[0] for clip in clips)


def _read_audio(source: Path, silence_db: float) -> np.ndarray:
    import av

    try:
        with av.open(str(source)) as container:
            has_video, has_audio = bool(container.streams.video), bool(container.streams.audio)
    except av.FFmpegError as error:
        raise Skip("unreadable", str(error)) from error
    if not has_video:
        raise Skip("unreadable", "no video stream")
    if not has_audio:
        raise Skip("no_audio", "the file has a video stream only")
    try:
        audio = load_audio_on_video_timeline(source, SAMPLE_RATE)
    except ValueError as error:
        raise Skip("unreadable", str(error)) from error
    level = 20 * math.log10(float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) + 1e-12)
    if level < silence_db:
        raise Skip("silent", f"audio RMS {level:.1f} dBFS is below --silence-db {silence_db:g}")
    return audio


def _frames(source: Path, fps: int):
    """uint8 RGB frames at ``fps`` (decoding errors become a Skip)."""
    try:
        for frame in iter_video_frames(source, fps=fps):
            # media.video_reader returns exact k/255 floats, so this gives back the decoded bytes.
            yield (frame * np.float32(255) + np.float32(0.5)).astype(np.uint8)
    except ValueError as error:
        raise Skip("unreadable", str(error)) from error


def _track_face(source: Path, settings: dict, frames: int) -> np.ndarray:
    """Pass one: the smoothed face track ``[N, 3]`` of at most ``frames`` frames (NaN where lost)."""
    fps = settings["fps"]
    max_gap = round(settings["max_gap"] * fps)
    tracker = face_track.FaceTracker(settings["min_face"], max_gap, settings["detect_every"], REACQUIRE_EVERY)
    with closing(_frames(source, fps)) as decoded:
        for index, frame in enumerate(decoded):
            if index >= frames:
                break
            tracker.update(frame)
    return face_track.stabilise(tracker.result(), settings["smooth"] * fps, max_gap, outlier_window=max(1, fps // 2))


def plan_clips(runs: list[tuple[int, int]], clip_frames: int, min_frames: int) -> list[tuple[int, int]]:
    """Clips ``[start, stop)`` of at most ``clip_frames`` tiling each face run; shorter than ``min_frames`` dropped."""
    plan = []
    for start, stop in runs:
        for first in range(start, stop, clip_frames):
            last = min(first + clip_frames, stop)
            if last - first >= min_frames:
                plan.append((first, last))
    return plan


def _cut_clips(job: Job, track: np.ndarray, plan: list[tuple[int, int]], audio: np.ndarray, tool) -> list[dict]:
    """Pass two: crop, measure and store every planned clip; returns the clips the tool could measure."""
    settings = job.settings
    size, fps = settings["size"], settings["fps"]
    per_frame = samples_per_frame(fps, SAMPLE_RATE)
    boxes = face_track.crop_boxes(track, settings["crop_scale"])
    job.work.mkdir(parents=True, exist_ok=True)
    clips = []
    with closing(_frames(job.source, fps)) as decoded:
        frames = iter(enumerate(decoded))
        for number, (start, stop) in enumerate(plan):
            store = _ClipStore(job.work / f"{number:04d}", stop - start, size)
            measured = []
            with tool.clip(size) as measure:
                for index, frame in frames:
                    if index < start:
                        continue
                    crop = face_track.crop_square(frame, boxes[index], size)
                    store.frames[index - start] = crop
                    measured.append(measure(crop))
                    if index + 1 == stop:
                        break
            if len(measured) != stop - start:
                raise Skip("unreadable", f"the video ended at frame {start + len(measured)} on the second pass, the first reached {stop}")
            found = targets.finish_clip(measured, MAX_UNMEASURED)
            if found is None:
                logger.warning("%s: clip at %.1f s dropped: %s lost the face in over %.0f%% of its frames",
                               job.relative, start / fps, tool.name, 100 * MAX_UNMEASURED)
                store.discard()
                continue
            for offset, outline in enumerate(found.outlines):
                store.masks[offset] = targets.draw_mask(outline, size)
            clip_audio = np.zeros((stop - start) * per_frame, np.float32)
            piece = audio[start * per_frame : stop * per_frame]
            clip_audio[: piece.shape[0]] = piece
            clips.append({
                "frames": store.frames, "mask": store.masks, "audio": clip_audio,
                "box": boxes[start:stop].astype(np.float32), "lip_target": found.lip, "exp_target": found.exp,
                "start_frame": start,
            })
    return clips


class _ClipStore:
    """One clip's crops and masks in memory-mapped ``.npy`` files, filled frame by frame."""

    def __init__(self, stem: Path, frames: int, size: int):
        from numpy.lib.format import open_memmap

        self._paths = (stem.with_name(stem.name + ".frames.npy"), stem.with_name(stem.name + ".mask.npy"))
        self.frames = open_memmap(self._paths[0], mode="w+", dtype=np.uint8, shape=(frames, size, size, 3))
        self.masks = open_memmap(self._paths[1], mode="w+", dtype=np.uint8, shape=(frames, size, size))

    def discard(self) -> None:
        del self.frames, self.masks
        for path in self._paths:
            path.unlink()


def _remember(path: Path, skipped: dict, result: dict, videos: Path) -> None:
    """Keep ``skipped.json`` current after every video, so an interrupted run loses nothing."""
    source = result["source"]
    if result["status"] == "skipped":
        logger.warning("skipped %s: %s: %s", videos / source, SKIP_REASONS[result["reason"]], result["detail"])
        stat = (videos / source).stat()
        skipped[source] = {"reason": result["reason"], "detail": result["detail"], "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    elif skipped.pop(source, None) is None:
        return
    _write_json(path, skipped)


def _summarise(results: list[dict], found: int, seconds: float, settings: dict, tool) -> dict:
    results = sorted(results, key=lambda result: result["source"])
    written = [r for r in results if r["status"] == "written"]
    skipped = [r for r in results if r["status"] in ("skipped", "skipped_before")]
    reasons: dict[str, int] = {}
    for result in skipped:
        reasons[result["reason"]] = reasons.get(result["reason"], 0) + 1
    frames = sum(r["frames"] for r in written)
    return {
        "videos": found,
        "written": len(written),
        "already_done": sum(r["status"] == "done" for r in results),
        "skipped": sum(r["status"] == "skipped" for r in results),
        "skipped_before": sum(r["status"] == "skipped_before" for r in results),
        "skip_reasons": dict(sorted(reasons.items())),
        "clips": sum(r["clips"] for r in written),
        "frames": frames,
        "seconds": round(seconds, 3),
        "frames_per_second": round(frames / seconds, 2) if seconds > 0 else 0.0,
        "skipped_files": [{"source": r["source"], "reason": r["reason"], "detail": r["detail"], "this_run": r["status"] == "skipped"} for r in skipped],
        "targets": {"tool": tool.name, "lip_dim": tool.lip_dim, "exp_dim": tool.exp_dim},
        "settings": settings,
    }


def _log_summary(summary: dict, out: Path) -> None:
    reasons = ", ".join(f"{count} {reason}" for reason, count in summary["skip_reasons"].items()) or "none"
    logger.info(
        "preprocessed %d videos into %s: %d written (%d clips, %d frames, %.1f frames/s), %d already done, "
        "%d skipped now and %d skipped before (%s); details in %s",
        summary["videos"], out / SHARDS_DIR, summary["written"], summary["clips"], summary["frames"],
        summary["frames_per_second"], summary["already_done"], summary["skipped"], summary["skipped_before"],
        reasons, out / SUMMARY_FILE,
    )


def _remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete it to start that record over") from error


def _write_json(path: Path, value: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    partial.replace(path)
