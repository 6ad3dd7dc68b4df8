"""Face crop and paste-back: run EmotiveTalk on a portrait that is not a face-centred square.

Not part of the paper. ETHD's reference portrait (and every encoder that reads it: the Lip
Encoder looks at a fixed mouth box of the square) wants a face-centred square, as in the
paper's 512x512 results. A real portrait is often a 1280x720 frame with the face off-centre.
This is the practical step before and after the method:

1. find the face: a user face mask wins, then a user box, then OpenCV's Haar detector
   (:func:`.face_detect.detect_face`);
2. cut a face-centred square around it (:func:`crop_region_from_box`, :func:`crop`), padding by
   edge replication where the square leaves the image, so a face at the border still works;
3. animate the square;
4. put every animated frame back into the full frame at the original resolution
   (:func:`paste_back`) with a feathered edge, so there is no seam; every pixel outside the
   square stays the original pixel, bit for bit.

Images here are channels-last float tensors ``[B, H, W, C]`` in 0..1 (ComfyUI's IMAGE, decoded
video frames); masks are ``[H, W]`` or ``[B, H, W]`` with 1 = face.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .face_detect import Box, FaceDetectionUnavailable, detect_face

log = logging.getLogger(__name__)

# Framing of a face box (the Haar box spans mid-forehead to just under the lower lip). A square
# of 2.2x its side, lifted by 0.1x its height, holds the whole head with the hair, the neck and a
# little of the shoulders, and puts the eyes near 0.48 and the mouth near 0.70 of the height:
# close to the FFHQ alignment portrait models are trained on, and the mouth well inside the Lip
# Encoder's MOUTH_BOX (the lower half, middle half of the width).
DEFAULT_SCALE = 2.2
DEFAULT_LIFT = 0.1
# The face mask drawn around a box: an ellipse reaching from the hairline to the chin and from
# cheek to cheek (the Haar box stops short of both).
FACE_ELLIPSE = (0.55, 0.7)  # semi-axes as fractions of the box width, height
DEFAULT_FEATHER = 0.1
CHUNK = 16  # frames resized at once in crop / paste_back: bounds the temporary memory


class NoFaceFound(ValueError):
    """The detector found no face and none was given."""


@dataclass(frozen=True)
class CropRegion:
    """A square in source pixels, ``x0 <= x < x0 + side``, ``y0 <= y < y0 + side``, of an image of
    ``width x height``. The square may reach past the image edges (the crop pads there) but
    must overlap the image."""

    x0: int
    y0: int
    side: int
    width: int
    height: int

    def __post_init__(self):
        if self.side < 1 or self.width < 1 or self.height < 1:
            raise ValueError(f"a crop region needs a positive side and image size, got {self}")
        if self.x1 <= 0 or self.y1 <= 0 or self.x0 >= self.width or self.y0 >= self.height:
            raise ValueError(f"the crop square {self.as_box().as_tuple()} lies outside the "
                             f"{self.width}x{self.height} image; give a face box or mask inside the image")

    @property
    def x1(self) -> int:
        return self.x0 + self.side

    @property
    def y1(self) -> int:
        return self.y0 + self.side

    def as_box(self) -> Box:
        return Box(self.x0, self.y0, self.x1, self.y1)


def crop_region_from_box(box: Box, image_size: tuple[int, int], scale: float = DEFAULT_SCALE,
                         lift: float = DEFAULT_LIFT) -> CropRegion:
    """A face box -> the face-centred square ``scale`` times its larger side, centred ``lift``
    box heights above the box centre. ``image_size`` is ``(width, height)``."""
    if scale <= 0:
        raise ValueError(f"scale must be above 0, got {scale}")
    if box.width <= 0 or box.height <= 0:
        raise ValueError(f"the face box {box.as_tuple()} is empty; give x0 < x1 and y0 < y1")
    side = max(1, round(scale * max(box.width, box.height)))
    cx, cy = box.centre
    cy -= lift * box.height
    width, height = image_size
    return CropRegion(round(cx - side / 2), round(cy - side / 2), side, int(width), int(height))


def box_from_mask(mask) -> Box | None:
    """The bounding box of ``mask > 0.5`` (``[H, W]``, or the first of a batch), or None when empty."""
    mask = torch.as_tensor(mask).detach().float().cpu()
    inside = (mask.reshape(-1, *mask.shape[-2:])[0] > 0.5).numpy()
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    if rows.size == 0:
        return None
    return Box(float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def locate_face(image: torch.Tensor, mask: torch.Tensor | None = None, box: Box | None = None) -> tuple[Box, str]:
    """The face box of an RGB image ``[H, W, 3]`` and where it came from ("mask", "box", "detector").

    A face mask wins over a box, a box over detection. An empty mask (all below 0.5; ComfyUI's
    LoadImage gives a 64x64 zero mask for an image without alpha) counts as no mask.
    """
    if mask is not None:
        found = box_from_mask(mask)
        if found is not None:
            if tuple(mask.shape[-2:]) != tuple(image.shape[:2]):
                raise ValueError(f"the face mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is "
                                 f"{image.shape[1]}x{image.shape[0]}; give a mask of the image's size")
            return found, "mask"
        log.warning("the face mask is empty (nothing above 0.5); ignoring it")
    if box is not None:
        return box, "box"
    try:
        face = detect_face(image.detach().float().cpu().numpy())
    except FaceDetectionUnavailable as error:
        raise FaceDetectionUnavailable(
            f"{error} (detection is only needed when no face mask or face box is given)") from error
    if face is None:
        raise NoFaceFound("no face found in the image (OpenCV's detector wants a frontal face at least 8% of the "
                          "shorter side); give the face yourself as a face mask (1 = face) or a face box")
    return face, "detector"


def _resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B, h, w, C]`` -> ``[B, height, width, C]``: bicubic with antialiasing, kept in 0..1."""
    if images.shape[1:3] == (height, width):
        return images.float()
    resized = F.interpolate(images.permute(0, 3, 1, 2).float(), size=(height, width), mode="bicubic",
                            align_corners=False, antialias=True)
    return resized.clamp(0, 1).permute(0, 2, 3, 1)


def _padded_square(images: torch.Tensor, region: CropRegion) -> torch.Tensor:
    """The region's square of ``[B, H, W, C]`` at source resolution, edges replicated outside."""
    left, top = max(0, -region.x0), max(0, -region.y0)
    right, bottom = max(0, region.x1 - region.width), max(0, region.y1 - region.height)
    inside = images[:, max(0, region.y0):min(region.height, region.y1), max(0, region.x0):min(region.width, region.x1)]
    if not (left or top or right or bottom):
        return inside
    padded = F.pad(inside.permute(0, 3, 1, 2).float(), (left, right, top, bottom), mode="replicate")
    return padded.permute(0, 2, 3, 1)


def crop(images: torch.Tensor, region: CropRegion, size: int) -> torch.Tensor:
    """``[B, H, W, C]`` (the region's image size) -> the region's square at ``size x size``."""
    if tuple(images.shape[1:3]) != (region.height, region.width):
        raise ValueError(f"the images are {images.shape[2]}x{images.shape[1]} but the crop region belongs to a "
                         f"{region.width}x{region.height} image")
    return torch.cat([_resize(_padded_square(images[start:start + CHUNK], region), size, size)
                      for start in range(0, images.shape[0], CHUNK)])


def face_ellipse(region: CropRegion, box: Box, size: int) -> torch.Tensor:
    """A ``[size, size]`` face mask of the crop: 1 inside the ellipse around ``box`` (see FACE_ELLIPSE),
    edge pixels antialiased by their distance to the rim."""
    scale = size / region.side
    cx, cy = ((c - o) * scale for c, o in zip(box.centre, (region.x0, region.y0)))
    ax, ay = FACE_ELLIPSE[0] * box.width * scale, FACE_ELLIPSE[1] * box.height * scale
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    radius = (((coords[None, :] - cx) / ax) ** 2 + ((coords[:, None] - cy) / ay) ** 2).sqrt()
    # (1 - radius) * the smaller semi-axis ~ signed distance to the rim in pixels.
    return ((1 - radius) * min(ax, ay) + 0.5).clamp(0, 1)


@dataclass(frozen=True)
class FaceCrop:
    """What :func:`crop_face` gives: the square crop, its face mask, and what paste-back needs."""

    image: torch.Tensor  # [1, size, size, 3]
    face_mask: torch.Tensor  # [1, size, size], 1 = face
    region: CropRegion
    face_box: Box
    source: str  # where the face box came from: "mask", "box" or "detector"
    original: torch.Tensor  # [H, W, 3], the full frame to paste the animated crops into


def crop_face(image: torch.Tensor, size: int, scale: float = DEFAULT_SCALE, mask: torch.Tensor | None = None,
              box: Box | None = None) -> FaceCrop:
    """The face-centred ``size x size`` crop of an RGB image ``[H, W, 3]`` (see :func:`locate_face`).

    The face mask is the user mask cropped alike when a mask located the face, else an ellipse
    around the face box.
    """
    image = image[..., :3]
    face, source = locate_face(image, mask, box)
    region = crop_region_from_box(face, (image.shape[1], image.shape[0]), scale)
    cropped = crop(image[None], region, size)
    if source == "mask":
        face_mask = crop(mask.reshape(-1, *mask.shape[-2:])[:1, :, :, None].float(), region, size)[..., 0]
    else:
        face_mask = face_ellipse(region, face, size)[None]
    log.info("face %s from the %s; crop square %s", face.as_tuple(), source, region.as_box().as_tuple())
    return FaceCrop(cropped, face_mask.clamp(0, 1), region, face, source, image)


def frame_rect(region: CropRegion, frame_height: int, frame_width: int) -> tuple[int, int, int, int]:
    """Where frames of this size sit in the source: ``(x0, y0, width, height)`` in source pixels.

    Square frames fill the crop square. Other frames came from a model that scaled the square to
    cover them and centre-cropped (``pipeline.fit_portrait``), so they fill the same centred part.
    """
    cover = max(frame_width, frame_height)
    scale = region.side / cover
    left, top = (cover - frame_width) // 2, (cover - frame_height) // 2
    return (region.x0 + round(left * scale), region.y0 + round(top * scale),
            max(1, round(frame_width * scale)), max(1, round(frame_height * scale)))


def _ramp(length: int, ramp: float, fade_start: bool, fade_end: bool) -> torch.Tensor:
    """Per-pixel weight along one side of the pasted rectangle: smoothstep from 0 at a faded
    edge to 1 at ``ramp`` pixels in; an edge at or past the image border is not faded (the
    image ends there: no seam to hide, and the face there stays animated)."""
    centres = torch.arange(length, dtype=torch.float32) + 0.5
    distance = torch.full((length,), float("inf"))
    if fade_start:
        distance = torch.minimum(distance, centres)
    if fade_end:
        distance = torch.minimum(distance, length - centres)
    t = (distance / ramp).clamp(0, 1) if ramp > 0 else torch.ones(length)
    return t * t * (3 - 2 * t)


def feather_weights(rect: tuple[int, int, int, int], image_size: tuple[int, int], feather: float) -> torch.Tensor:
    """Blend weights ``[h, w]`` of a pasted rectangle ``(x0, y0, w, h)`` in a ``(width, height)`` image.

    ``feather`` is the soft edge as a fraction of the rectangle's shorter side (0 = hard edge).
    The weight is a product of per-axis ramps: corners fall off a little faster (rounded).
    """
    x0, y0, w, h = rect
    width, height = image_size
    ramp = feather * min(w, h)
    across = _ramp(w, ramp, x0 > 0, x0 + w < width)
    down = _ramp(h, ramp, y0 > 0, y0 + h < height)
    return down[:, None] * across[None, :]


def paste_back(frames: torch.Tensor, original: torch.Tensor, region: CropRegion, feather: float = DEFAULT_FEATHER,
               chunk: int = CHUNK) -> torch.Tensor:
    """Animated crops ``[F, h, w, C]`` -> ``[N, H, W, 3]`` full frames at the original's resolution.

    ``original`` is the still frame the crop was cut from (``[H, W, C]`` or ``[1, H, W, C]``), used
    for every frame, or ``B`` frames ``[B, H, W, C]`` (e.g. another paste-back's output, so a
    second face is animated in the same video): animated frame ``i`` goes into frame ``i``.
    ``N = max(F, B)``: past the end of the animated crops the original frames stay as they are,
    past the end of the original frames the last one is held.

    Each frame is resized to its place in the source (:func:`frame_rect`) and blended into a
    copy of its original frame with :func:`feather_weights`; pixels outside that place are the
    original's exactly. Frames are resized ``chunk`` at a time and one weight map serves every
    frame, so the only full-resolution memory is the output.
    """
    if not 0 <= feather <= 0.5:
        raise ValueError(f"feather is a fraction of the crop side between 0 and 0.5, got {feather}")
    original = original.reshape(-1, *original.shape[-3:])[..., :3]
    if tuple(original.shape[1:3]) != (region.height, region.width):
        raise ValueError(f"the original image is {original.shape[2]}x{original.shape[1]} but the crop region belongs "
                         f"to a {region.width}x{region.height} image")
    x0, y0, w, h = rect = frame_rect(region, frames.shape[1], frames.shape[2])
    # The part of the rectangle inside the image, in image and in rectangle coordinates.
    vx0, vy0, vx1, vy1 = max(0, x0), max(0, y0), min(region.width, x0 + w), min(region.height, y0 + h)
    weights = feather_weights(rect, (region.width, region.height), feather)
    weights = weights[vy0 - y0:vy1 - y0, vx0 - x0:vx1 - x0, None].to(original.device)
    count = max(frames.shape[0], original.shape[0])
    out = original.float()[torch.arange(count, device=original.device).clamp(max=original.shape[0] - 1)]
    for start in range(0, frames.shape[0], chunk):
        resized = _resize(frames[start:start + chunk, ..., :3].to(original.device), h, w)
        target = out[start:start + resized.shape[0], vy0:vy1, vx0:vx1]
        target.lerp_(resized[:, vy0 - y0:vy1 - y0, vx0 - x0:vx1 - x0], weights)
    return out
