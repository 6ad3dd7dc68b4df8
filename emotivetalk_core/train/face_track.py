"""Face tracking for training videos: one stable, face-centred square crop box per frame.

Training crops must look like what the pack crops at inference, so the face is found and framed
as the face crop node does it (``media.face_crop``): its detector
(``media.face_detect.detect_face``: the Haar cascade on a locally contrast-equalised image, the
most-supported detection), and a square :data:`media.face_crop.DEFAULT_SCALE` (2.2) times the
face box's side, centred :data:`media.face_crop.DEFAULT_LIFT` (0.1) box sides above the box's centre. The Haar box spans mid-forehead to just under the lower lip, so the
square holds the whole head with hair, neck and a little background, the eyes near 0.48 and the
mouth near 0.70 of its height, inside :data:`networks.encoders.MOUTH_BOX`.

One video goes through these steps, all on per-frame numbers (frames are never kept):

1. :class:`FaceTracker` detects the face in every frame (or every ``every`` frames). Every search
   reads the whole frame's contrast-equalised grey (downscaled to :data:`FULL_FRAME_MAX_SIDE`), so
   a box never depends on where the last one was. Once it has the face it only scans a region of
   that grey around the last box, resized to about :data:`ROI_PIXELS` wide (far cheaper than a
   whole-frame scan); without a recent face it scans the whole frame, every
   ``reacquire_every`` frames, so a face-less stretch costs little. Ties between detections are
   broken by position, so the result is the same with any number of OpenCV threads.
2. :func:`reject_outliers`: a detection far from the running median of its neighbours (centre
   off by more than :data:`OUTLIER_SHIFT` of the face side, or side off by more than
   :data:`OUTLIER_SCALE`) is dropped: Haar's rare false positives and half-face boxes.
3. :func:`fill_gaps`: gaps of at most ``max_gap`` frames between detections are interpolated;
   a longer gap splits the track (:func:`segments`), so a clip never spans a lost face.
4. :func:`smooth`: centre and side are smoothed per segment by a Gaussian-weighted local linear
   fit. Centred, so there is no lag, and linear, so a face moving at constant speed is followed
   exactly, at the segment ends too (a plain moving average would lag there).
5. :func:`crop_boxes` turns the smoothed track into those squares; :func:`crop_square` cuts
   one out of a frame (sub-pixel position; replicated border where the box leaves the frame).

:func:`jitter` measures the result: mean frame-to-frame movement of the box centre.

The track is an array ``[N, 3]`` of ``(centre x, centre y, side)`` in source pixels, NaN where
there is no face. OpenCV is imported on first use.
"""

from __future__ import annotations

import math

import numpy as np

from ..media.face_crop import DEFAULT_LIFT, DEFAULT_SCALE
from ..media.face_detect import Box, detect_in_grey, equalised_grey

# Region searched around the last face, in face sides; resized to about ROI_PIXELS wide.
ROI_SCALE = 2.5
ROI_PIXELS = 200
# In that region a face must be at least this fraction of the region's side (0.625 x the last face).
ROI_MIN_FACE = 0.25
# Whole-frame searches run on at most this many pixels on the shorter side.
FULL_FRAME_MAX_SIDE = 720
OUTLIER_SHIFT = 0.3
OUTLIER_SCALE = 1.3


class FaceTracker:
    """Per-frame face boxes of a video, fed frame by frame (see the module docstring, step 1).

    While it has the face it looks every ``every`` frames (the frames between are filled by
    :func:`fill_gaps`); without one, every ``reacquire_every`` frames. ``max_gap``: frames after
    the last detection during which it keeps searching near it.
    """

    def __init__(self, min_face: float = 0.08, max_gap: int = 12, every: int = 1, reacquire_every: int = 5):
        if not 0 < min_face < 1:
            raise ValueError(f"min_face is a fraction of the frame's shorter side, in (0, 1); got {min_face}")
        if not 1 <= every <= max_gap + 1:
            raise ValueError(f"detecting every {every} frames leaves gaps longer than max_gap={max_gap}, which would cut clips")
        self.min_face = min_face
        self.max_gap = max_gap
        self.every = every
        self.reacquire_every = max(1, reacquire_every)
        self._last: np.ndarray | None = None  # (cx, cy, side) of the last detection
        self._last_index = 0
        self._unsearched_tail = False  # no search has failed since the last detection
        self.track: list[np.ndarray] = []

    def update(self, frame: np.ndarray) -> np.ndarray:
        """Look for the face in one RGB frame (uint8) if due; records and returns ``(cx, cy, side)`` or NaNs."""
        index = len(self.track)
        near = self._last is not None and index - self._last_index <= self.max_gap
        found = None
        if near and (index - self._last_index) % self.every:
            pass  # not due: fill_gaps interpolates these frames between detections
        else:
            if near:
                found = self._search_near(frame, self._last)
            elif index % self.reacquire_every == 0:
                found = self._search_frame(frame)
            self._unsearched_tail = found is not None
            if found is not None:
                self._last, self._last_index = found, index
        row = found if found is not None else np.full(3, np.nan)
        self.track.append(row)
        return row

    def result(self) -> np.ndarray:
        """The raw track ``[N, 3]`` of every frame fed so far.

        Frames after the last detection that were not searched (``every`` > 1) keep its box, so
        the video's last frames are not lost to the detection schedule.
        """
        track = np.array(self.track, dtype=np.float64).reshape(-1, 3)
        if self._last is not None and self._unsearched_tail:
            track[self._last_index + 1 :] = self._last
        return track

    def _search_frame(self, frame: np.ndarray) -> np.ndarray | None:
        grey, zoom = _equalised(frame)
        face = detect_in_grey(grey, self.min_face)
        return None if face is None else _centre_side(face, zoom, 0.0, 0.0)

    def _search_near(self, frame: np.ndarray, last: np.ndarray) -> np.ndarray | None:
        # The region is cut from the whole frame's equalised grey, not equalised on its own: local
        # contrast then does not depend on where the region was cut, so the box does not depend
        # on the last box (equalising the region itself fed each box's error into the next one:
        # +7 % in 3 s on a face of constant size).
        grey, zoom = _equalised(frame)
        height, width = grey.shape
        half = ROI_SCALE * last[2] * zoom / 2
        x0, y0 = max(0, int(last[0] * zoom - half)), max(0, int(last[1] * zoom - half))
        x1, y1 = min(width, math.ceil(last[0] * zoom + half)), min(height, math.ceil(last[1] * zoom + half))
        if x1 - x0 < 24 or y1 - y0 < 24:  # Haar's smallest window; the face left the frame
            return None
        shrink = min(1.0, ROI_PIXELS / max(x1 - x0, y1 - y0))
        face = detect_in_grey(_resized(grey[y0:y1, x0:x1], shrink), ROI_MIN_FACE)
        return None if face is None else _centre_side(face, zoom * shrink, x0 / zoom, y0 / zoom)


def _equalised(frame: np.ndarray) -> tuple[np.ndarray, float]:
    """The detector's grey of a frame at most :data:`FULL_FRAME_MAX_SIDE` on its shorter side, and that zoom."""
    zoom = min(1.0, FULL_FRAME_MAX_SIDE / min(frame.shape[:2]))
    return equalised_grey(_resized(frame, zoom)), zoom


def _resized(image: np.ndarray, zoom: float) -> np.ndarray:
    if zoom >= 1.0:
        return image
    import cv2

    height, width = image.shape[:2]
    size = (max(1, round(width * zoom)), max(1, round(height * zoom)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _centre_side(box: Box, zoom: float, x0: float, y0: float) -> np.ndarray:
    cx, cy = box.centre
    return np.array([cx / zoom + x0, cy / zoom + y0, max(box.width, box.height) / zoom])


def reject_outliers(track: np.ndarray, window: int) -> np.ndarray:
    """``track`` with detections far from the median of the ``window`` frames either side set to NaN."""
    track = np.array(track, dtype=np.float64)
    rows = np.flatnonzero(~np.isnan(track[:, 0]))
    if rows.size == 0:
        return track
    padded = np.pad(track, ((window, window), (0, 0)), constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * window + 1, axis=0)[rows]
    # Each window holds its own detection, so the median always exists.
    median = np.nanmedian(windows, axis=-1)
    shift = np.hypot(*(track[rows, :2] - median[:, :2]).T) / median[:, 2]
    scale = np.abs(np.log(track[rows, 2] / median[:, 2]))
    outliers = rows[(shift > OUTLIER_SHIFT) | (scale > math.log(OUTLIER_SCALE))]
    track[outliers] = np.nan
    return track


def fill_gaps(track: np.ndarray, max_gap: int) -> np.ndarray:
    """``track`` with runs of at most ``max_gap`` missing frames between two detections interpolated."""
    track = np.array(track, dtype=np.float64)
    known = np.flatnonzero(~np.isnan(track[:, 0]))
    steps = np.diff(known)
    for index in np.flatnonzero((steps > 1) & (steps <= max_gap + 1)):
        before, after = known[index], known[index + 1]
        gap = after - before - 1
        weight = (np.arange(1, gap + 1) / (gap + 1))[:, None]
        track[before + 1 : after] = (1 - weight) * track[before] + weight * track[after]
    return track


def segments(track: np.ndarray) -> list[tuple[int, int]]:
    """Runs ``[start, stop)`` of consecutive frames with a face."""
    present = np.concatenate([[False], ~np.isnan(track[:, 0]), [False]])
    edges = np.flatnonzero(np.diff(present.astype(np.int8)))
    return [(int(start), int(stop)) for start, stop in zip(edges[::2], edges[1::2])]


def smooth(track: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted local linear fit (``sigma`` in frames) of every column, per segment."""
    track = np.array(track, dtype=np.float64)
    if sigma <= 0:
        return track
    for start, stop in segments(track):
        track[start:stop] = _local_linear(track[start:stop], sigma)
    return track


def _local_linear(values: np.ndarray, sigma: float) -> np.ndarray:
    """At each frame, the value at offset 0 of the weighted least-squares line through its window.

    In the middle of a segment the window is symmetric and this is the weighted mean; at the ends
    the line extrapolates the trend instead of pulling the value toward the interior.
    """
    radius = max(1, math.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    padded = np.pad(values, ((radius, radius), (0, 0)), constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1, axis=0)  # [n, C, K]
    w = weights * ~np.isnan(windows[:, 0, :])  # [n, K]
    y = np.nan_to_num(windows)
    s0, s1, s2 = w.sum(-1), (w * offsets).sum(-1), (w * offsets**2).sum(-1)
    y0, y1 = (y * w[:, None]).sum(-1), (y * (w * offsets)[:, None]).sum(-1)
    det = s0 * s2 - s1**2
    line = det > 1e-12  # a one-frame segment has no slope to fit: its value stays
    mean = y0 / s0[:, None]
    fitted = (s2[:, None] * y0 - s1[:, None] * y1) / np.where(line, det, 1.0)[:, None]
    return np.where(line[:, None], fitted, mean)


def stabilise(raw: np.ndarray, sigma: float, max_gap: int, outlier_window: int) -> np.ndarray:
    """Raw detections ``[N, 3]`` -> smoothed track ``[N, 3]`` (steps 2-4), NaN where the face is lost."""
    return smooth(fill_gaps(reject_outliers(raw, outlier_window), max_gap), sigma)


def crop_boxes(track: np.ndarray, scale: float = DEFAULT_SCALE, lift: float = DEFAULT_LIFT) -> np.ndarray:
    """Square crop boxes ``[N, 4]`` ``(x0, y0, x1, y1)`` in source pixels around a track ``[N, 3]``."""
    half = scale * track[:, 2] / 2
    cx, cy = track[:, 0], track[:, 1] - lift * track[:, 2]
    return np.stack([cx - half, cy - half, cx + half, cy + half], axis=1)


def jitter(track: np.ndarray) -> float:
    """Mean distance (pixels) the centre moves between consecutive frames that both have a face."""
    steps = np.hypot(*np.diff(track[:, :2], axis=0).T)
    steps = steps[~np.isnan(steps)]
    return float(steps.mean()) if steps.size else 0.0


def crop_square(frame: np.ndarray, box, size: int) -> np.ndarray:
    """The square ``box`` ``(x0, y0, x1, y1)`` of an RGB uint8 frame, resampled to ``[size, size, 3]``.

    Positioned to a fraction of a pixel, so a smoothly moving box gives a smoothly moving crop.
    Parts outside the frame repeat the frame's edge pixels.
    """
    import cv2

    x0, y0, x1, _ = (float(v) for v in box)
    side = x1 - x0
    # Only the box's own pixels (plus one for interpolation) are cut out, padded and resampled.
    ix0, iy0 = math.floor(x0) - 1, math.floor(y0) - 1
    extent = math.ceil(side) + 3
    region = _padded_region(frame, ix0, iy0, extent)
    zoom = size / side
    factor = 1.0
    if zoom < 1:  # shrinking: average areas first so the bilinear warp below does not alias
        target = max(1, round(extent * zoom))
        factor = target / extent
        region = cv2.resize(region, (target, target), interpolation=cv2.INTER_AREA)
    # Pixel centres: output j + 1/2 <-> source x0 + (j + 1/2) / zoom; region pixel i <-> (i + 1/2) / factor.
    scale = zoom / factor
    matrix = np.array(
        [[scale, 0.0, 0.5 * scale - zoom * (x0 - ix0) - 0.5], [0.0, scale, 0.5 * scale - zoom * (y0 - iy0) - 0.5]]
    )
    return cv2.warpAffine(region, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _padded_region(frame: np.ndarray, x0: int, y0: int, extent: int) -> np.ndarray:
    """``frame[y0:y0+extent, x0:x0+extent]``, edge pixels repeated where it leaves the frame."""
    import cv2

    height, width = frame.shape[:2]
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + extent, width), min(y0 + extent, height)
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(f"crop box at ({x0}, {y0}) with side {extent} lies outside the {width}x{height} frame")
    inside = np.ascontiguousarray(frame[cy0:cy1, cx0:cx1])
    top, left = cy0 - y0, cx0 - x0
    bottom, right = extent - top - (cy1 - cy0), extent - left - (cx1 - cx0)
    if top == left == bottom == right == 0:
        return inside
    return cv2.copyMakeBorder(inside, top, bottom, left, right, cv2.BORDER_REPLICATE)
