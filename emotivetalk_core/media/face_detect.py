"""Face detection with OpenCV's Haar cascade: the detector every default install has.

Used where a portrait or a training video is not already a face-centred square: the face crop /
paste-back nodes and training-data preprocessing. OpenCV 4.x wheels ship the cascade files
(``cv2.data.haarcascades``); 5.x wheels do not, so a 5.x install gets an error saying so. OpenCV
is imported on first use: the rest of the library does not need it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

CASCADE = "haarcascade_frontalface_default.xml"
INSTALL_HINT = "pip install 'opencv-python-headless>=4.5,<5' (4.x wheels ship the Haar face cascades; 5.x do not)"


class FaceDetectionUnavailable(ImportError):
    """OpenCV or its Haar cascade files are missing."""


@dataclass(frozen=True)
class Box:
    """A face box in pixels: ``x0 <= x < x1``, ``y0 <= y < y1`` (floats; may leave the image)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    @property
    def area(self) -> float:
        return self.width * self.height

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)


@lru_cache(maxsize=1)
def _cascade():
    try:
        import cv2
    except ImportError as error:
        raise FaceDetectionUnavailable(f"face detection needs OpenCV: {INSTALL_HINT}") from error
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if folder is None:
        raise FaceDetectionUnavailable(
            f"OpenCV {cv2.__version__} has no bundled Haar cascades: {INSTALL_HINT}, or give a face mask or box"
        )
    cascade = cv2.CascadeClassifier(folder + CASCADE)
    if cascade.empty():
        raise FaceDetectionUnavailable(f"OpenCV could not read {folder + CASCADE}: {INSTALL_HINT}")
    return cascade


def detect_face(image: np.ndarray, min_size_fraction: float = 0.08) -> Box | None:
    """The best-supported frontal face of an RGB image ``[H, W, 3]`` (uint8 or float 0..1), or None.

    Two choices around the plain cascade, measured on the astronaut photo pasted at 8 places (some
    cut by the frame edge) into 1280x720 frames of 7 grey levels, 56 frames: global histogram
    equalisation + the largest detection found the face in 48, missed 6 and picked a false
    positive in 2; this finds it in all 56.

    - Local contrast (CLAHE), not one equalisation of the whole frame: a large plain background
      takes over the global histogram and flattens the face (the 6 misses).
    - The detection most raw cascade windows agree on, not the largest: a false positive can be
      larger than the face (a 415-px box around the suit: 6 windows; the face: 13).

    ``min_size_fraction`` of the shorter side is the smallest face reported: smaller detections
    in a portrait are almost always false positives (buttons, patterns).
    """
    return detect_in_grey(equalised_grey(image), min_size_fraction)


def equalised_grey(image: np.ndarray) -> np.ndarray:
    """An RGB image ``[H, W, 3]`` (uint8 or float 0..1) as the detector reads it: grey, locally
    contrast-equalised (CLAHE, 8 x 8 tiles over the whole image)."""
    _cascade()  # the OpenCV check, with its install hint
    import cv2

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)


def detect_in_grey(grey: np.ndarray, min_size_fraction: float = 0.08) -> Box | None:
    """:func:`detect_face` on an image :func:`equalised_grey` made (or a part of one: equalising
    the whole frame once and searching a part keeps the contrast, and so the box, independent of
    where the part was cut)."""
    side = max(1, int(min(grey.shape) * min_size_fraction))
    found, support = _cascade().detectMultiScale2(np.ascontiguousarray(grey), scaleFactor=1.1, minNeighbors=5,
                                                  minSize=(side, side))
    if len(found) == 0:
        return None
    boxes = np.reshape(found, (-1, 4)).astype(np.int64)
    support = np.reshape(support, -1).astype(np.int64)
    # The most-supported box; ties broken by position and size, not by the order OpenCV's threads
    # happened to report candidates in (which varies between runs on many-core machines).
    best = np.lexsort((boxes[:, 2], boxes[:, 0], boxes[:, 1], -support))[0]
    x, y, w, h = (float(v) for v in boxes[best])
    return Box(x, y, x + w, y + h)
