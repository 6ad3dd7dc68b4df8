"""Training targets of the Lip and Exp Encoders, and face masks, measured on face crops.

Preprocessing measures every crop with one *tool*; the tool's name and target sizes go into each
shard's ``targets`` info, so training knows what it distils toward.

``mediapipe-facemesh`` (``--targets landmarks``; what real training should use)
    MediaPipe FaceMesh (468 landmarks, CPU, model inside the wheel). mediapipe 0.10.21 is the last
    release with this API and it pins numpy<2, so it lives in a separate training environment
    (``requirements-train.txt``) and is imported here only when this tool is chosen: never by the
    nodes or the inference pipeline. Landmarks are put in an eye-aligned frame (origin midway
    between the eye centres, x along the eye line, one unit = the distance between the eyes), which
    removes head position, size and roll:

    - ``lip_target`` [80]: the 40 lip contour points (outer and inner lip): mouth opening, width
      and rounding, i.e. what speech moves.
    - ``exp_target`` [68]: both brows (20 points), both eyes (12: corners and lids) and the two
      mouth corners: brow raise and furrow, eye opening, smile and frown. Lip contours are left
      out so mouth shape from speech stays in the lip target as far as landmarks allow.
    - mask: the filled face oval (36 points: forehead, cheeks, jaw, chin).

``fallback-patches`` (``--targets fallback``; no extra install, what CI runs)
    Grey image patches at fixed places of the face. The places are given in units of the Haar
    face box (``(0, 0)`` its top-left, ``(1, 1)`` its bottom-right: eyes near v = 0.38, mouth
    corners near v = 0.78, chin near v = 1.2) and mapped into the crop through its framing
    (``media.face_crop.DEFAULT_SCALE``, ``DEFAULT_LIFT``). Each patch is area-averaged to a small grid and
    standardised per frame (zero mean, unit spread), so lighting and skin tone matter less than
    the pattern of dark and light:

    - ``lip_target`` [64]: an 8x8 grid of the mouth and jaw (:data:`LIP_REGION`, inside the Lip
      Encoder's :data:`networks.encoders.MOUTH_BOX` for the default framing); an opening mouth darkens its
      middle rows, a dropping jaw moves the chin's edge.
    - ``exp_target`` [80]: a 4x12 grid of the brows and eyes (:data:`EYES_REGION`) plus a 4x4 grid
      at each mouth corner (:data:`CORNER_REGIONS`): raised or knitted brows, eye opening, the
      corners of a smile. The mouth's middle is left out (it moves with speech); the corner patches
      still see some lip motion.
    - mask: the face crop node's ellipse around the face box (``media.face_crop.FACE_ELLIPSE``),
      forehead to chin, cheek to cheek.

    These patches carry identity too (a beard, glasses); they exist so that the whole path runs
    and trains without the landmark tool, not to reach the landmark targets' quality.

Frames where the tool finds no face are filled by interpolation from the clip's other frames;
a clip with more than ``max_missing`` of them is dropped (:func:`finish_clip`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..media.face_crop import DEFAULT_LIFT, DEFAULT_SCALE, FACE_ELLIPSE

logger = logging.getLogger(__name__)

CHOICES = ("auto", "landmarks", "fallback")
INSTALL_HINT = (
    "install the training environment: python3.11 -m venv .venv-train && "
    ".venv-train/bin/pip install -r requirements-train.txt (never into ComfyUI's Python: mediapipe 0.10.21 pins numpy<2)"
)

# --- fallback: regions as (top, bottom, left, right) in face-box units (see the module docstring) ---
LIP_REGION = (0.70, 1.10, 0.20, 0.80)
EYES_REGION = (0.10, 0.50, 0.05, 0.95)
CORNER_REGIONS = ((0.66, 0.90, 0.13, 0.37), (0.66, 0.90, 0.63, 0.87))
_LIP_GRID, _EYES_GRID, _CORNER_GRID = (8, 8), (4, 12), (4, 4)
# Standardising a flat patch would blow noise up to unit size; this floor (on 0..1 grey) stops it.
_MIN_SPREAD = 0.02

# --- FaceMesh landmark indices (the 468-point mesh topology) ---
LIP_POINTS = (
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185,
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191,
)
RIGHT_BROW = (46, 52, 53, 55, 63, 65, 66, 70, 105, 107)
LEFT_BROW = (276, 282, 283, 285, 293, 295, 296, 300, 334, 336)
RIGHT_EYE = (33, 160, 158, 133, 153, 144)
LEFT_EYE = (263, 387, 385, 362, 380, 373)
MOUTH_CORNERS = (61, 291)
EXP_POINTS = RIGHT_BROW + LEFT_BROW + RIGHT_EYE + LEFT_EYE + MOUTH_CORNERS
FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)
# FaceMesh resizes its input to 192 px itself; feeding it more only costs time.
_MESH_INPUT = 256


class TargetsUnavailable(ImportError):
    """The requested target tool is not installed (or not usable) in this environment."""


@dataclass(frozen=True)
class FrameTargets:
    """What one crop gives: the two targets and the face outline (crop pixels ``[P, 2]``, x then y)."""

    lip: np.ndarray
    exp: np.ndarray
    outline: np.ndarray


@dataclass(frozen=True)
class ClipTargets:
    lip: np.ndarray  # float32 [F, L]
    exp: np.ndarray  # float32 [F, E]
    outlines: np.ndarray  # float32 [F, P, 2]
    missing: int  # frames the tool could not measure (interpolated)


Measure = Callable[[np.ndarray], "FrameTargets | None"]


class FallbackTargets:
    """Image patches of the crop (see the module docstring); needs only OpenCV.

    ``crop_scale`` / ``crop_lift``: the crops' framing, which places the face box in the crop.
    """

    name = "fallback-patches"
    lip_dim = _LIP_GRID[0] * _LIP_GRID[1]
    exp_dim = _EYES_GRID[0] * _EYES_GRID[1] + 2 * _CORNER_GRID[0] * _CORNER_GRID[1]

    def __init__(self, crop_scale: float = DEFAULT_SCALE, crop_lift: float = DEFAULT_LIFT):
        self.crop_scale, self.crop_lift = crop_scale, crop_lift
        self.regions = [self._in_crop(region) for region in (LIP_REGION, EYES_REGION, *CORNER_REGIONS)]

    def _in_crop(self, region: tuple[float, float, float, float]) -> tuple[float, ...]:
        """Face-box units -> fractions of the crop side."""
        top, bottom, left, right = region
        centre_y = 0.5 + self.crop_lift / self.crop_scale  # where the box's centre lands in the crop
        fractions = (
            centre_y + (top - 0.5) / self.crop_scale, centre_y + (bottom - 0.5) / self.crop_scale,
            0.5 + (left - 0.5) / self.crop_scale, 0.5 + (right - 0.5) / self.crop_scale,
        )
        if min(fractions) < 0 or max(fractions) > 1:
            raise ValueError(f"a crop scale of {self.crop_scale} is too tight for the fallback targets' face regions; use at least 1.5")
        return fractions

    @contextlib.contextmanager
    def clip(self, size: int) -> Iterator[Measure]:
        """A measuring function for the crops of one clip (all ``[size, size, 3]`` uint8 RGB)."""
        outline = ellipse_outline(size, self.crop_scale, self.crop_lift)
        lip_region, eyes_region, *corner_regions = self.regions

        def measure(crop: np.ndarray) -> FrameTargets:
            grey = _grey(crop)
            lip = _patch(grey, lip_region, _LIP_GRID)
            corners = [_patch(grey, region, _CORNER_GRID) for region in corner_regions]
            return FrameTargets(lip, np.concatenate([_patch(grey, eyes_region, _EYES_GRID), *corners]), outline)

        yield measure


class LandmarkTargets:
    """MediaPipe FaceMesh landmarks (see the module docstring); raises TargetsUnavailable without it."""

    name = "mediapipe-facemesh"
    lip_dim = 2 * len(LIP_POINTS)
    exp_dim = 2 * len(EXP_POINTS)

    def __init__(self):
        try:
            import mediapipe
        except ImportError as error:
            raise TargetsUnavailable(f"landmark targets need mediapipe (FaceMesh): {INSTALL_HINT}") from error
        face_mesh = getattr(getattr(mediapipe, "solutions", None), "face_mesh", None)
        if face_mesh is None:
            raise TargetsUnavailable(
                f"mediapipe {getattr(mediapipe, '__version__', '?')} has no FaceMesh (mediapipe.solutions was removed "
                f"in 0.10.30): {INSTALL_HINT}"
            )
        self._face_mesh = face_mesh

    @contextlib.contextmanager
    def clip(self, size: int) -> Iterator[Measure]:
        """A measuring function for one clip: FaceMesh in tracking mode, reset for every clip."""
        import cv2

        mesh = self._face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=False)

        def measure(crop: np.ndarray) -> FrameTargets | None:
            image = crop if size <= _MESH_INPUT else cv2.resize(crop, (_MESH_INPUT, _MESH_INPUT), interpolation=cv2.INTER_AREA)
            found = mesh.process(np.ascontiguousarray(image)).multi_face_landmarks
            if not found:
                return None
            points = np.array([(point.x, point.y) for point in found[0].landmark], dtype=np.float64)
            return landmark_targets(points, size)

        try:
            yield measure
        finally:
            mesh.close()


def resolve_tool(choice: str, crop_scale: float = DEFAULT_SCALE, crop_lift: float = DEFAULT_LIFT) -> FallbackTargets | LandmarkTargets:
    """The tool for ``--targets``: ``auto`` takes the landmarks when mediapipe is usable, else the fallback."""
    if choice not in CHOICES:
        raise ValueError(f"--targets must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "fallback":
        return FallbackTargets(crop_scale, crop_lift)
    try:
        return LandmarkTargets()
    except TargetsUnavailable as error:
        if choice == "landmarks":
            raise
        logger.info("training targets: image-patch fallback (%s)", error)
        return FallbackTargets(crop_scale, crop_lift)


def tool_named(name: str, crop_scale: float = DEFAULT_SCALE, crop_lift: float = DEFAULT_LIFT) -> FallbackTargets | LandmarkTargets:
    """The tool whose ``name`` a shard records (worker processes rebuild their tool from it)."""
    if name == FallbackTargets.name:
        return FallbackTargets(crop_scale, crop_lift)
    if name == LandmarkTargets.name:
        return LandmarkTargets()
    raise ValueError(f"unknown target tool {name!r}; known: {FallbackTargets.name}, {LandmarkTargets.name}")


def landmark_targets(points: np.ndarray, size: int) -> FrameTargets:
    """Targets of one face from FaceMesh landmarks ``[468, 2]`` in crop fractions (x, y)."""
    right, left = points[list(RIGHT_EYE)].mean(axis=0), points[list(LEFT_EYE)].mean(axis=0)
    axis = left - right
    distance = float(np.hypot(*axis))
    if distance <= 0:
        raise ValueError("landmarks put both eyes at the same place")
    along = axis / distance
    across = np.array([-along[1], along[0]])  # the eye line turned 90 degrees: image "down" for an upright face
    aligned = (points - (right + left) / 2) @ np.stack([along, across], axis=1) / distance
    return FrameTargets(
        lip=aligned[list(LIP_POINTS)].ravel().astype(np.float32),
        exp=aligned[list(EXP_POINTS)].ravel().astype(np.float32),
        outline=(points[list(FACE_OVAL)] * size).astype(np.float32),
    )


def ellipse_outline(size: int, crop_scale: float = DEFAULT_SCALE, crop_lift: float = DEFAULT_LIFT, points: int = 64) -> np.ndarray:
    """The face crop node's ellipse around the face box, as a polygon ``[points, 2]`` in pixels of a ``size`` crop."""
    angle = np.linspace(0, 2 * np.pi, points, endpoint=False)
    x = 0.5 + FACE_ELLIPSE[0] / crop_scale * np.cos(angle)
    y = 0.5 + crop_lift / crop_scale + FACE_ELLIPSE[1] / crop_scale * np.sin(angle)
    return (np.stack([x, y], axis=1) * size).astype(np.float32)


def finish_clip(measured: list[FrameTargets | None], max_missing: float) -> ClipTargets | None:
    """Stack one clip's measurements, interpolating unmeasured frames; None when more than
    ``max_missing`` (a fraction) of the frames, or all of them, are unmeasured."""
    known = [index for index, item in enumerate(measured) if item is not None]
    missing = len(measured) - len(known)
    if not known or missing > max_missing * len(measured):
        return None
    stacked = {key: np.stack([getattr(measured[i], key) for i in known]) for key in ("lip", "exp", "outline")}
    if missing:
        stacked = {key: _interpolate(value, known, len(measured)) for key, value in stacked.items()}
    return ClipTargets(
        lip=stacked["lip"].astype(np.float32),
        exp=stacked["exp"].astype(np.float32),
        outlines=stacked["outline"].astype(np.float32),
        missing=missing,
    )


def _interpolate(values: np.ndarray, known: list[int], frames: int) -> np.ndarray:
    """Rows for every frame from rows at ``known`` frames: linear between, held at the ends."""
    flat = values.reshape(len(known), -1)
    everywhere = np.arange(frames)
    columns = [np.interp(everywhere, known, flat[:, column]) for column in range(flat.shape[1])]
    return np.stack(columns, axis=1).reshape((frames, *values.shape[1:]))


def draw_mask(outline: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[size, size]``: 255 inside the convex hull of ``outline`` (pixels), 0 outside."""
    import cv2

    mask = np.zeros((size, size), np.uint8)
    # fillPoly's fixed point (4 fractional bits) keeps the sub-pixel outline.
    hull = cv2.convexHull(np.round(outline * 16).astype(np.int32))
    cv2.fillPoly(mask, [hull], 255, lineType=cv2.LINE_8, shift=4)
    return mask


def _grey(crop: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0


def _patch(grey: np.ndarray, region: tuple[float, float, float, float], grid: tuple[int, int]) -> np.ndarray:
    """``region`` of a grey crop, area-averaged to ``grid`` (rows, columns), standardised, flattened."""
    import cv2

    size = grey.shape[0]
    top, bottom, left, right = (round(fraction * size) for fraction in region)
    cells = cv2.resize(grey[top:bottom, left:right], (grid[1], grid[0]), interpolation=cv2.INTER_AREA).ravel()
    return ((cells - cells.mean()) / max(float(cells.std()), _MIN_SPREAD)).astype(np.float32)
