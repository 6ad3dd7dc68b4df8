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


def _gray_uint8(image: np.ndarray) -> np.ndarray:
    """RGB ``[H, W, 3]`` (uint8, or float 0..1) -> contrast-equalised gray uint8."""
    import cv2

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    # Equalised, so a dim or low-contrast portrait still triggers the cascade.
    return cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY))


def detect_faces(image: np.ndarray, min_size_fraction: float = 0.08) -> list[Box]:
    """Every frontal face in an RGB image, largest first.

    ``min_size_fraction`` of the shorter side is the smallest face reported: smaller detections
    in a portrait are almost always false positives (buttons, patterns).
    """
    gray = _gray_uint8(image)
    side = max(1, int(min(gray.shape) * min_size_fraction))
    found = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
    boxes = [Box(float(x), float(y), float(x + w), float(y + h)) for x, y, w, h in np.reshape(found, (-1, 4))]
    return sorted(boxes, key=lambda box: box.area, reverse=True)


def largest_face(image: np.ndarray, min_size_fraction: float = 0.08) -> Box | None:
    """The largest face of an RGB image, or None when there is none."""
    faces = detect_faces(image, min_size_fraction)
    return faces[0] if faces else None
