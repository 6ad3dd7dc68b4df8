"""The README's strip: frames of the demo's side-by-side video, one row per moment.

    python -m emotivetalk_core demo --out demo.mp4      # also writes demo_emotions.mp4
    python scripts/make_demo_strip.py demo_emotions.mp4 --out docs/demo_strip.png

Rows are ``--rows`` frames spread over the speech (the first and last quarter second, where the
speaker is silent, are skipped); each row is the portrait, then one column per emotion.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotivetalk_core.media.video_reader import read_video_frames  # noqa: E402


def strip(video: Path, rows: int) -> np.ndarray:
    frames = (read_video_frames(video) * 255).round().astype(np.uint8)
    skip = min(len(frames) // 4, 6)
    picks = np.linspace(skip, len(frames) - 1 - skip, rows).round().astype(int)
    gap = np.full((4, frames.shape[2], 3), 255, np.uint8)
    parts = []
    for index in picks:
        parts += [frames[index], gap]
    return np.concatenate(parts[:-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path, help="the demo's side-by-side mp4")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write (never over an existing file)")
    parser.add_argument("--rows", type=int, default=3)
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: remove it first or give another name")
    from PIL import Image

    Image.fromarray(strip(args.video, args.rows)).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
