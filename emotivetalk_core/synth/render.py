"""SynthTalk's renderer: an identity and per-frame face parameters -> RGB frames and face masks.

Vectorised numpy over whole clips (``[F, S, S]`` per primitive), no drawing library. Every shape
is a signed distance (approximate, exact at the outline) turned into pixel coverage with a
one-pixel ramp, so edges are anti-aliased and move smoothly under sub-pixel motion: a judge and a
model see a mouth opening by 0.1 as a real change, not as a jump between pixel rows.

Canvas units: the square image spans ``[-1, 1]`` in x (right) and y (down); one pixel is
``2 / size``. The face sits in the middle, so the mouth lies inside the Lip Encoder's
``MOUTH_BOX`` (lower half, middle half of the width) for every identity and head pose.

Sizes were chosen for a 32 px model: the features that carry emotion are large on screen (brows
about 1.5 px thick and 5 px long, a smile lifts the mouth corners by up to 2.5 px, raised brows
move 2 px), because a feasibility run showed that small, thin cues are not learned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import FRAME_PARAMETERS, Identity

# Face layout in face units (x scaled by the face's x radius, y by its y radius, origin = centre).
EYE_Y, BROW_Y, NOSE_Y, MOUTH_Y = -0.18, -0.47, 0.2, 0.56
EYE_X = 0.42
BROW_HALF_LENGTH = 0.3
# Canvas units.
BROW_RAISE = 0.13     # brow height change at brow_raise = 1
BROW_TILT = 0.075     # inner-end lift (outer end drops as much) at brow_tilt = 1
SMILE_LIFT = 0.15     # mouth-corner lift at smile = 1
MOUTH_GAP = 0.2       # lip gap at mouth_open = 1
EYE_OPEN = 0.6        # relative eye-height change at eye_open = 1
BLUSH_ALPHA = 0.55
# How far any point of the face can move with the head (translation plus tilt about the chin),
# canvas units: the world's head motion stays well inside it.
HEAD_MARGIN = 0.16
# Largest parameter values the boxes allow for (the world stays inside them).
_MAX_PARAM = 1.6


def _eye_extent(who):
    half_width = who.face.rx * (EYE_X * who.eye_spacing + BROW_HALF_LENGTH) + who.eye_width + who.brow_thickness
    top = who.face.ry * BROW_Y - _MAX_PARAM * (BROW_RAISE + BROW_TILT) - 0.025 - who.brow_thickness
    bottom = who.face.ry * EYE_Y + who.eye_height * (1 + EYE_OPEN * _MAX_PARAM)
    return half_width, top, bottom


def _mouth_extent(who):
    half_width = who.mouth_width * who.face.rx * (1 + 0.28) + who.lip_thickness
    reach = _MAX_PARAM * SMILE_LIFT + 1.35 * MOUTH_GAP * 1.2 + who.lip_thickness
    return half_width, who.face.ry * MOUTH_Y - reach, who.face.ry * MOUTH_Y + reach


def _cheek_extent(who):
    return who.face.rx * 0.79 + 0.12, who.face.ry * 0.11 - 0.12, who.face.ry * 0.39 + 0.12


def _nose_extent(who):
    return who.face.rx * 0.11 * who.nose_width, who.face.ry * (NOSE_Y - 0.07), who.face.ry * (NOSE_Y + 0.07)


@dataclass
class Frames:
    """A rendered clip: ``rgb`` uint8 ``[F, S, S, 3]`` and ``mask`` uint8 ``[F, S, S]`` (255 = face)."""

    rgb: np.ndarray
    mask: np.ndarray


def render(identity: Identity, params: dict[str, np.ndarray], size: int = 64) -> Frames:
    """Render ``F`` frames of ``identity`` with per-frame ``params`` (each ``[F]``, the names of
    :data:`world.FRAME_PARAMETERS`)."""
    missing = [name for name in FRAME_PARAMETERS if name not in params]
    if missing:
        raise ValueError(f"frame parameters missing: {missing}")
    count = len(params["mouth_open"])
    p = {name: np.asarray(params[name], dtype=np.float32).reshape(count, 1, 1) for name in FRAME_PARAMETERS}
    canvas = _Canvas(size, count)
    image = canvas.background(identity)
    head_x, head_y = canvas.head_coordinates(identity, p)
    face = identity.face
    # Back to front: hair behind the head, shoulders, neck, ears, face, hair in front, features.
    if identity.hair_style == "long":
        canvas.paint(image, _ellipse(head_x, head_y + face.ry * 0.25, face.rx * 1.28, face.ry * 1.15), identity.hair_colour)
    canvas.paint(image, _ellipse(canvas.x, canvas.y - 1.35, 0.95, 0.5), identity.clothes_colour)
    neck = np.maximum(np.abs(canvas.x - p["head_x"] * 0.5) - face.rx * 0.42, face.ry * 0.6 - (canvas.y - face.cy))
    canvas.paint(image, neck, _shade(identity.skin_colour, 0.85))
    for side in (-1.0, 1.0):
        canvas.paint(image, _ellipse(head_x, head_y, face.rx * 0.14, face.ry * 0.2, centre=(side * face.rx * 0.97, 0.0)),
                     _shade(identity.skin_colour, 0.9))
    face_sdf = _ellipse(head_x, head_y, face.rx, face.ry)
    canvas.paint(image, face_sdf, identity.skin_colour)
    mask = canvas.coverage(face_sdf)
    _hair(canvas, image, identity, head_x, head_y)
    # Small features are drawn inside their own boxes only (about 4x faster than the whole canvas).
    for draw, extent in ((_cheeks, _cheek_extent), (_eyes, _eye_extent), (_brows, _eye_extent),
                         (_nose, _nose_extent), (_mouth, _mouth_extent)):
        rows, cols = canvas.box(identity, *extent(identity))
        draw(canvas, image[:, rows, cols], identity, head_x[:, rows, cols], head_y[:, rows, cols], p)
    rgb = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return Frames(rgb, np.clip(np.round(mask * 255.0), 0, 255).astype(np.uint8))


class _Canvas:
    def __init__(self, size: int, count: int):
        self.size, self.count = size, count
        self.pixel = 2.0 / size
        centres = (np.arange(size, dtype=np.float32) + 0.5) * self.pixel - 1.0
        self.x = centres[None, None, :]
        self.y = centres[None, :, None]

    def coverage(self, sdf: np.ndarray) -> np.ndarray:
        """Pixel coverage of the region ``sdf < 0``: a one-pixel linear ramp across the outline."""
        return np.clip(0.5 - sdf / self.pixel, 0.0, 1.0)

    def paint(self, image: np.ndarray, sdf: np.ndarray, colour, alpha: float | np.ndarray = 1.0) -> None:
        """Blend ``colour`` over ``image`` by coverage, touching only the rows and columns it covers
        (most shapes cover a small part of the canvas, and blending is most of the render time)."""
        cover = self.coverage(sdf) * alpha
        rows = np.flatnonzero(cover.any(axis=(0, 2)))
        if rows.size == 0:
            return
        cols = np.flatnonzero(cover.any(axis=(0, 1)))
        region = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        target = image[region]
        target += cover[region][..., None] * (np.asarray(colour, dtype=np.float32) - target)

    def box(self, identity: Identity, half_width: float, top: float, bottom: float) -> tuple[slice, slice]:
        """Pixel rows and columns covering ``|x| <= half_width``, ``top <= y <= bottom`` (face units
        times the face radii, i.e. canvas units from the face centre) wherever the head moves."""
        face, margin = identity.face, HEAD_MARGIN + 2 * self.pixel
        to_pixel = self.size / 2.0

        def span(low: float, high: float) -> slice:
            return slice(max(0, int(np.floor((low - margin + 1.0) * to_pixel))),
                         min(self.size, int(np.ceil((high + margin + 1.0) * to_pixel))))

        return span(face.cy + top, face.cy + bottom), span(-half_width, half_width)

    def background(self, identity: Identity) -> np.ndarray:
        base = np.asarray(identity.background_colour, dtype=np.float32)
        pattern = identity.background_pattern
        x, y = np.broadcast_arrays(self.x[0], self.y[0])
        if pattern == "gradient":
            shade = 0.12 * (y + 1.0) / 2.0 - 0.06
        elif pattern == "blobs":
            shade = 0.08 * np.sin(x * identity.background_frequency) * np.cos(y * identity.background_frequency * 0.8)
        else:
            shade = np.zeros_like(x)
        layer = np.clip(base + shade[..., None], 0.0, 1.0)
        return np.broadcast_to(layer, (self.count, self.size, self.size, 3)).copy()

    def head_coordinates(self, identity: Identity, p: dict) -> tuple[np.ndarray, np.ndarray]:
        """Canvas coordinates in the head's own frame (translated, rotated about the neck), with the
        face centre at the origin: every feature of the head is drawn in it."""
        face = identity.face
        angle = p["head_tilt"]
        cos, sin = np.cos(angle), np.sin(angle)
        pivot_y = face.cy + face.ry  # the chin: the head turns on the neck
        dx = self.x - p["head_x"]
        dy = self.y - p["head_y"] - pivot_y
        return cos * dx + sin * dy, -sin * dx + cos * dy + face.ry


def _ellipse(x, y, rx, ry, centre=(0.0, 0.0)):
    """Signed distance to an ellipse (first-order: exact on the outline, which is what coverage uses)."""
    u, v = (x - centre[0]) / rx, (y - centre[1]) / ry
    value = u * u + v * v - 1.0
    gradient = 2.0 * np.sqrt((u / rx) ** 2 + (v / ry) ** 2) + 1e-6
    return value / gradient


def _stroke(x, y, centre_x, centre_y, half_length, thickness, lift_inner, arch, inner_side):
    """A thick curved stroke (a brow): ``x`` runs over ``[-half_length, half_length]`` around
    ``centre_x``; its centre line rises by ``arch`` in the middle and by ``lift_inner`` at the end
    on ``inner_side`` (-1 = left end, +1 = right end), dropping as much at the other end."""
    t = (x - centre_x) / half_length
    inside = np.clip(t, -1.0, 1.0)
    line = centre_y - arch * (1.0 - inside * inside) - lift_inner * inside * inner_side
    beyond = (np.abs(t) - 1.0).clip(min=0.0) * half_length
    return np.sqrt(beyond * beyond + (y - line) ** 2) - thickness / 2.0


def _shade(colour, factor: float):
    return tuple(min(1.0, c * factor) for c in colour)


def _hair(canvas, image, identity, x, y):
    face = identity.face
    if identity.hair_style == "bald":
        return
    # The hair cap: a slightly larger ellipse than the face, above a hairline that dips with the fringe.
    cap = _ellipse(x, y, face.rx * 1.07, face.ry * 1.05, centre=(0.0, -face.ry * 0.04))
    hairline = -face.ry * identity.hairline + identity.fringe * face.ry * 0.25 * np.cos(x / face.rx * 1.6 + identity.parting)
    canvas.paint(image, np.maximum(cap, y - hairline), identity.hair_colour)


def _eyes(canvas, image, identity, x, y, p):
    face = identity.face
    height = identity.eye_height * (1.0 + EYE_OPEN * p["eye_open"]) * (1.0 - p["blink"])
    height = np.maximum(height, 0.004)
    for side in (-1.0, 1.0):
        centre = (side * face.rx * EYE_X * identity.eye_spacing, face.ry * EYE_Y)
        # Bounded in x: the first-order distance of a nearly shut eye would smear along its row.
        white = np.maximum(_ellipse(x, y, identity.eye_width, height, centre=centre), np.abs(x - centre[0]) - identity.eye_width)
        canvas.paint(image, white, (0.96, 0.96, 0.94))
        iris = np.maximum(_ellipse(x, y, identity.eye_width * 0.52, identity.eye_width * 0.52, centre=centre), white)
        canvas.paint(image, iris, identity.iris_colour)
        pupil = np.maximum(_ellipse(x, y, identity.eye_width * 0.24, identity.eye_width * 0.24, centre=centre), white)
        canvas.paint(image, pupil, (0.05, 0.05, 0.06))
        # Upper lid line: the eye's outline above its centre, darker than skin; a closed eye is this line.
        lid = np.maximum.reduce([np.abs(white) - canvas.pixel * 0.6, (y - centre[1]) - height * 0.2,
                                 np.abs(x - centre[0]) - identity.eye_width])
        canvas.paint(image, lid, _shade(identity.skin_colour, 0.35))


def _brows(canvas, image, identity, x, y, p):
    face = identity.face
    brow_y = face.ry * BROW_Y - BROW_RAISE * p["brow_raise"]
    for side in (-1.0, 1.0):
        centre_x = side * face.rx * EYE_X * identity.eye_spacing
        stroke = _stroke(x, y, centre_x, brow_y, BROW_HALF_LENGTH * face.rx, identity.brow_thickness,
                         BROW_TILT * p["brow_tilt"], 0.025, inner_side=-side)
        canvas.paint(image, stroke, identity.brow_colour)


def _nose(canvas, image, identity, x, y, p):
    face = identity.face
    shadow = _ellipse(x, y, face.rx * 0.11 * identity.nose_width, face.ry * 0.07, centre=(0.0, face.ry * NOSE_Y))
    canvas.paint(image, shadow, _shade(identity.skin_colour, 0.72), alpha=0.8)


def _cheeks(canvas, image, identity, x, y, p):
    face = identity.face
    blush = np.clip(p["blush"], 0.0, 1.5) * BLUSH_ALPHA
    for side in (-1.0, 1.0):
        cheek = _ellipse(x, y, face.rx * 0.24, face.ry * 0.14, centre=(side * face.rx * 0.55, face.ry * 0.25))
        # Soft-edged: a wide ramp instead of a one-pixel one.
        soft = np.clip(0.5 - cheek / (canvas.pixel * 4.0), 0.0, 1.0) * blush
        image += soft[..., None] * (np.asarray((0.92, 0.35, 0.4), dtype=np.float32) - image)


def _mouth(canvas, image, identity, x, y, p):
    """Lips and the opening, bent by the smile: mouth opening, width (wide vs rounded) and smile
    are the speech and emotion parameters that the lip and expression streams carry."""
    face = identity.face
    half_width = identity.mouth_width * face.rx * (1.0 + 0.28 * p["mouth_width"])
    centre_y = face.ry * MOUTH_Y
    t = (x / half_width).clip(-1.5, 1.5)
    across = np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0))
    # Centre line: a parabola through the corners; smile > 0 lifts them (y down, so minus).
    line = centre_y - SMILE_LIFT * p["smile"] * t * t
    gap = MOUTH_GAP * np.clip(p["mouth_open"], 0.0, 1.2) * (1.0 + 0.35 * np.clip(-p["mouth_width"], 0.0, 1.0))
    offset = y - line - gap * 0.15  # the jaw drops: the opening grows mostly downward
    beyond = (np.abs(t) - 1.0).clip(min=0.0) * half_width
    lips = np.sqrt(beyond**2 + np.maximum(np.abs(offset) - (gap / 2 + identity.lip_thickness) * across**0.6, 0) ** 2) \
        - canvas.pixel * 0.3
    canvas.paint(image, lips, identity.lip_colour)
    opening_half = np.maximum(gap / 2 * across, canvas.pixel * 0.45 * across)
    opening = np.sqrt(beyond**2 + np.maximum(np.abs(offset) - opening_half, 0) ** 2) - canvas.pixel * 0.05
    canvas.paint(image, np.where(opening_half > 0, opening, 1.0), (0.22, 0.05, 0.07))
    # Upper teeth show in a wide-open mouth.
    teeth = np.maximum(opening, (offset + opening_half) - gap * 0.28)
    canvas.paint(image, np.where(gap > 0.05, teeth, 1.0), (0.93, 0.92, 0.88))
