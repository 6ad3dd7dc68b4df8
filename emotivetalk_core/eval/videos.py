"""Which videos are compared: pairing generated and ground-truth files, checked before any work.

torch-free; the checks read container headers and packets only (no decoding).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
_SHOWN = 10


@dataclass(frozen=True)
class Pair:
    """One generated video and the ground truth it is compared with (None: Sync only)."""

    name: str
    generated: Path
    truth: Path | None


def pair_videos(generated: Path, truth: Path | None) -> list[Pair]:
    """Two files -> one pair; two folders -> their videos paired by name (the stem, so ``a.mp4``
    pairs with ``a.mov``); ``truth`` None -> the generated videos alone.

    FileNotFoundError for a missing path, ValueError for a file paired with a folder, an empty
    folder, two videos of one name in a folder, or names without a partner (listed).
    """
    _exists(generated, "--generated")
    if truth is not None:
        _exists(truth, "--truth")
        if generated.is_dir() != truth.is_dir():
            raise ValueError(f"--generated {generated} and --truth {truth} must both be video files or both folders")
    if not generated.is_dir():
        return [Pair(generated.stem, generated, truth)]
    generated_videos = _videos_by_name(generated, "--generated")
    if truth is None:
        return [Pair(name, path, None) for name, path in sorted(generated_videos.items())]
    truth_videos = _videos_by_name(truth, "--truth")
    _check_matched(generated_videos, truth_videos, generated, truth)
    return [Pair(name, generated_videos[name], truth_videos[name]) for name in sorted(generated_videos)]


def check_readable(pairs: list[Pair], need_audio: bool) -> None:
    """Open every video (packets only); ValueError naming a file that has no video stream, cannot be
    read, or (``need_audio``: Sync) a generated video without an audio track."""
    from ..media.video_reader import probe

    for pair in pairs:
        info = probe(pair.generated)
        if need_audio and info["audio_duration"] is None:
            raise ValueError(f"{pair.generated} has no audio track: Sync-C/Sync-D compare the generated video with "
                             "its own speech; write the speech into the video or leave out --syncnet")
        if pair.truth is not None:
            probe(pair.truth)


def _exists(path: Path, flag: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{flag}: no such file or folder: {path}")


def _videos_by_name(folder: Path, flag: str) -> dict[str, Path]:
    videos: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in VIDEO_SUFFIXES or path.name.startswith("."):
            continue
        if path.stem in videos:
            raise ValueError(f"{flag} {folder}: {videos[path.stem].name} and {path.name} have the same name; "
                             "videos are paired by name, keep one")
        videos[path.stem] = path
    if not videos:
        raise ValueError(f"{flag} {folder} holds no videos ({', '.join(VIDEO_SUFFIXES)})")
    return videos


def _check_matched(generated: dict[str, Path], truth: dict[str, Path], generated_folder: Path, truth_folder: Path) -> None:
    only_generated = sorted(set(generated) - set(truth))
    only_truth = sorted(set(truth) - set(generated))
    problems = []
    if only_generated:
        problems.append(f"{len(only_generated)} generated video(s) without ground truth in {truth_folder}: "
                        f"{_names(only_generated, generated)}")
    if only_truth:
        problems.append(f"{len(only_truth)} ground-truth video(s) without a generated one in {generated_folder}: "
                        f"{_names(only_truth, truth)}")
    if problems:
        raise ValueError("videos are paired by file name and some have no partner: " + "; ".join(problems)
                         + ". Rename them, or move the extra videos out")


def _names(names: list[str], paths: dict[str, Path]) -> str:
    shown = ", ".join(paths[name].name for name in names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
