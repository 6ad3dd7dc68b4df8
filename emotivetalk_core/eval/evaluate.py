"""Running the metric networks over the videos: every video is decoded once per frame rate and its
frames handed to each metric as they arrive (never a whole video in memory).

:func:`evaluate` returns the metrics of :data:`METRICS` whose networks it was given. FID, FVD and
E-FID pool their features over all videos of each side (generated, ground truth) and take the
Frechet distance of the two; Sync-C / Sync-D are computed per generated video at 25 fps and
averaged over the videos, as Wav2Lip's and the talking-head papers' evaluation scripts do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..media.audio import load_audio_on_video_timeline
from ..media.video_reader import iter_video_frames
from . import expression, i3d, inception, syncnet
from .frechet import RunningGaussian, frechet_distance_of
from .videos import Pair

logger = logging.getLogger(__name__)

CLIP_LENGTH = 16  # FVD's clips: 16 consecutive frames, as the FVD paper and StyleGAN-V
SIDES = ("generated", "truth")


def _to_tensor(frame: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` float 0..1 -> ``[3, H, W]``."""
    return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)


def _resized(images: torch.Tensor, size: int, mode: str = "bilinear", antialias: bool = False) -> torch.Tensor:
    """``[N, 3, H, W]`` -> ``[N, 3, size, size]``; no-op at that size already."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode=mode, align_corners=False, antialias=antialias)


class _Batches:
    """Collects items and runs ``process`` on every full batch, and on the rest at :meth:`flush`."""

    def __init__(self, size: int, process: Callable[[list], None]):
        self.size, self.process, self.items = size, process, []

    def add(self, item) -> None:
        self.items.append(item)
        if len(self.items) >= self.size:
            self.flush()

    def flush(self) -> None:
        if self.items:
            items, self.items = self.items, []
            self.process(items)


class FrameFeatures:
    """FID and E-FID: features of every ``step``-th frame of each video, one Gaussian per side."""

    def __init__(self, name: str, features: Callable[[torch.Tensor], torch.Tensor], step: int, batch_size: int,
                 device: str, prepare: Callable[[torch.Tensor], torch.Tensor] = lambda frames: frames):
        self.name, self.features, self.step, self.device, self.prepare = name, features, step, device, prepare
        self.stats = {side: RunningGaussian(f"{name} ({side})") for side in SIDES}
        self.batches = {side: _Batches(batch_size, self._processor(side)) for side in SIDES}
        self.index = 0

    def _processor(self, side: str):
        def process(items: list[torch.Tensor]) -> None:
            batch = self._collate(items).to(self.device)
            self.stats[side].add(self.features(batch).float().cpu().numpy())
        return process

    def _collate(self, frames: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(frames)

    def start(self, side: str):
        """The consumer of one video's frames."""
        self.index = 0
        return self._add_to(side), self.batches[side].flush

    def _add_to(self, side: str):
        def add(frame: np.ndarray) -> None:
            if self.index % self.step == 0:
                self.batches[side].add(self.prepare(_to_tensor(frame)[None])[0])
            self.index += 1
        return add

    def distance(self) -> float:
        return frechet_distance_of(self.stats["generated"], self.stats["truth"])

    def samples(self) -> list[int]:
        return [self.stats[side].count for side in SIDES]


class ClipFeatures(FrameFeatures):
    """FVD: I3D features of consecutive non-overlapping 16-frame clips of each video (a last clip
    shorter than 16 frames is left out, as in StyleGAN-V)."""

    def __init__(self, network, batch_size: int, device: str):
        super().__init__("FVD", network, step=1, batch_size=max(1, batch_size // CLIP_LENGTH), device=device)
        self.clip: list[torch.Tensor] = []

    def _collate(self, clips: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(clips).transpose(1, 2)  # [B, T, 3, H, W] -> [B, 3, T, H, W]

    def start(self, side: str):
        self.clip = []

        def add(frame: np.ndarray) -> None:
            # Resized on arrival (the network's own bilinear resize, a no-op after this) so a clip of
            # 1080p frames does not sit in memory.
            self.clip.append(_resized(_to_tensor(frame)[None], i3d.INPUT_SIZE)[0])
            if len(self.clip) == CLIP_LENGTH:
                self.batches[side].add(torch.stack(self.clip))
                self.clip = []

        return add, self.batches[side].flush


class SyncVideo:
    """Sync-C / Sync-D of one generated video: SyncNet embeddings of its 5-frame windows and of the
    matching 0.2 s of its own audio, compared over offsets by :func:`syncnet.sync_scores`."""

    def __init__(self, network, path, batch_size: int, device: str):
        self.network, self.path, self.batch_size, self.device = network, path, batch_size, device
        speech = load_audio_on_video_timeline(path, sample_rate=syncnet.SAMPLE_RATE)
        self.samples = len(speech)
        self.mfcc = syncnet.mfcc(speech).T.astype(np.float32)  # [13, frames]
        self.frames: list[torch.Tensor] = []
        self.embeddings: list[torch.Tensor] = []
        self.count = 0

    def add(self, frame: np.ndarray) -> None:
        image = _resized(_to_tensor(frame)[None], syncnet.FRAME_SIZE)[0]
        # syncnet_python reads 8-bit BGR frames (cv2.imread) and feeds their values 0..255 as they are.
        self.frames.append(torch.round(image.flip(0).clamp(0, 1) * 255))
        self.count += 1
        if len(self.frames) >= self.batch_size + syncnet.WINDOW - 1:
            self._embed_windows(self.batch_size)

    def _embed_windows(self, count: int) -> None:
        stack = torch.stack(self.frames[:count + syncnet.WINDOW - 1], dim=1)  # [3, count + 4, H, W]
        windows = stack.unfold(1, syncnet.WINDOW, 1).permute(1, 0, 4, 2, 3)  # [count, 3, 5, H, W]
        self.embeddings.append(self.network.forward_lip(windows.contiguous().to(self.device)).float().cpu())
        del self.frames[:count]

    def scores(self) -> dict:
        windows = syncnet.windows(self.count, self.samples)
        if windows < 1:
            raise ValueError(f"{self.path}: {self.count} frames at 25 fps and {self.samples / syncnet.SAMPLE_RATE:.2f} s "
                             f"of audio are too short for SyncNet, which needs more than {syncnet.WINDOW} frames of both")
        if len(self.frames) >= syncnet.WINDOW:
            self._embed_windows(len(self.frames) - syncnet.WINDOW + 1)
        video = torch.cat(self.embeddings)[:windows]
        starts = range(0, windows * syncnet.MFCC_PER_FRAME, syncnet.MFCC_PER_FRAME)
        width = syncnet.WINDOW * syncnet.MFCC_PER_FRAME
        audio = []
        for first in range(0, windows, self.batch_size):
            chunk = [self.mfcc[:, start:start + width] for start in starts[first:first + self.batch_size]]
            batch = torch.from_numpy(np.stack(chunk))[:, None].to(self.device)  # [B, 1, 13, 20]
            audio.append(self.network.forward_aud(batch).float().cpu())
        return syncnet.sync_scores(video, torch.cat(audio))


def _read(path, fps, consumers: list[tuple[Callable, Callable]]) -> None:
    for frame in iter_video_frames(path, fps=fps):
        for add, _ in consumers:
            add(frame)
    for _, finish in consumers:
        finish()


@torch.inference_mode()
def evaluate(pairs: list[Pair], networks: dict, fps: float = 25, frame_step: int = 1, batch_size: int = 16,
             device: str = "cpu", progress: bool = True) -> dict:
    """The metrics of the networks given (keys of ``networks``: ``inception``, ``i3d``,
    ``syncnet``, ``expression``, each a loaded network in eval mode on ``device``).

    Returns ``{"videos", "fid", "fvd", "sync_c", "sync_d", "e_fid", "samples", "sync"}`` with the
    metrics that were computed; ``samples`` gives, per Frechet metric, the frames (clips for FVD)
    of [generated, truth]; ``sync`` the offset, Sync-C and Sync-D of each generated video.
    """
    from tqdm import tqdm

    metrics = _metrics(networks, frame_step, batch_size, device)
    unpaired = [pair.name for pair in pairs if pair.truth is None]
    if metrics and unpaired:
        raise ValueError(f"FID, FVD and E-FID need the ground truth of every video; {', '.join(unpaired[:5])} "
                         "have none")
    sync_network = networks.get(syncnet.KIND)
    per_video = {}
    for pair in tqdm(pairs, desc="evaluate", unit="video", disable=not progress):
        passes = {}  # fps -> the consumers of the generated video's frames at that rate
        for metric in metrics.values():
            passes.setdefault(fps, []).append(metric.start("generated"))
        sync = None
        if sync_network is not None:
            sync = SyncVideo(sync_network, pair.generated, batch_size, device)
            passes.setdefault(syncnet.FPS, []).append((sync.add, lambda: None))
        for rate, consumers in passes.items():
            _read(pair.generated, rate, consumers)
        if sync is not None:
            per_video[pair.name] = sync.scores()
        if metrics:
            _read(pair.truth, fps, [metric.start("truth") for metric in metrics.values()])
    return _results(len(pairs), metrics, per_video)


def _metrics(networks: dict, frame_step: int, batch_size: int, device: str) -> dict[str, FrameFeatures]:
    metrics = {}
    if inception.KIND in networks:
        # Resized on arrival with the network's own filter (its resize is then a no-op), so a batch
        # of 1080p frames does not sit in memory.
        metrics["fid"] = FrameFeatures("FID", networks[inception.KIND], frame_step, batch_size, device,
                                       prepare=lambda frames: _resized(frames, inception.INPUT_SIZE))
    if i3d.KIND in networks:
        metrics["fvd"] = ClipFeatures(networks[i3d.KIND], batch_size, device)
    if expression.KIND in networks:
        network = networks[expression.KIND]
        metrics["e_fid"] = FrameFeatures(
            "E-FID", lambda images: network(images)[:, expression.EXPRESSION], frame_step, batch_size, device,
            # Deep3DFaceRecon's crops are resized with PIL's bicubic filter (antialiased when shrinking).
            prepare=lambda frames: _resized(frames, expression.INPUT_SIZE, mode="bicubic", antialias=True).clamp(0, 1))
    return metrics


def _results(videos: int, metrics: dict[str, FrameFeatures], per_video: dict) -> dict:
    results: dict = {"videos": videos}
    for key, metric in metrics.items():
        results[key] = metric.distance()
    if per_video:
        results["sync_c"] = float(np.mean([scores["sync_c"] for scores in per_video.values()]))
        results["sync_d"] = float(np.mean([scores["sync_d"] for scores in per_video.values()]))
        results["sync"] = per_video
    results["samples"] = {key: metric.samples() for key, metric in metrics.items()}
    return results
