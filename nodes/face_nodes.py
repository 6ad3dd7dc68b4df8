"""Face crop and paste-back nodes, for portraits that are not face-centred squares.

EmotiveTalk Face Crop cuts a face-centred square out of the portrait (for the generation nodes'
portrait input) and hands on an EMOTIVETALK_CROP (core ``media.face_crop.FaceCrop``: the square's place
and the full frame); EmotiveTalk Paste Back puts the animated squares back into the full frame.
"""

from __future__ import annotations

import logging

from . import comfy_bridge as bridge
from ._core import core_module
from ._types import CATEGORY, CROP, checked_images

log = logging.getLogger(__name__)

face_crop = core_module("media.face_crop")

MAX_PIXELS = 16384


def _box_input(tooltip: str) -> tuple:
    return ("INT", {"default": 0, "min": 0, "max": MAX_PIXELS, "tooltip": tooltip})


def user_box(x: int, y: int, width: int, height: int):
    """The box widgets -> a core Box, or None when width and height are both 0 (not used)."""
    if width == 0 and height == 0:
        return None
    if width == 0 or height == 0:
        raise ValueError(f"the face box needs both box_width and box_height (got {width} x {height}); "
                         "set both, or both to 0 to find the face another way")
    return face_crop.Box(float(x), float(y), float(x + width), float(y + height))


class EmotiveTalkFaceCrop:
    DESCRIPTION = ("Cuts a face-centred square out of a portrait that is not one (e.g. a 1280x720 frame with the face "
                   "off-centre), for EmotiveTalk's portrait input. The face comes from the mask if given, else the box, "
                   "else OpenCV's face detector. Connect crop to EmotiveTalk Paste Back to put the animation back.")
    CATEGORY = f"{CATEGORY}/face"
    RETURN_TYPES = ("IMAGE", "MASK", CROP)
    RETURN_NAMES = ("portrait", "face_mask", "crop")
    FUNCTION = "crop"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The portrait or frame; the face may be anywhere in it (the first image of a batch is used)."}),
                "size": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 64,
                                 "tooltip": "Side of the square crop in pixels (a multiple of 64; EmotiveTalk works at 512)."}),
                "scale": ("FLOAT", {"default": face_crop.DEFAULT_SCALE, "min": 1.0, "max": 5.0, "step": 0.05,
                                    "tooltip": "Crop side = scale x the face box's larger side. 2.2 frames a detected face with "
                                               "the whole head, the neck and a little of the shoulders; raise it for more shoulders."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Face mask of the image (1 = face); wins over the box and the detector. "
                                             "An empty mask counts as none."}),
                "box_x": _box_input("Left edge of the face box in image pixels (used when box_width and box_height are set)."),
                "box_y": _box_input("Top edge of the face box in image pixels (used when box_width and box_height are set)."),
                "box_width": _box_input("Width of the face box in pixels; 0 = no box (use the mask or the detector)."),
                "box_height": _box_input("Height of the face box in pixels; 0 = no box (use the mask or the detector)."),
            },
        }

    def crop(self, image, size, scale, mask=None, box_x=0, box_y=0, box_width=0, box_height=0):
        image = checked_images(image, "EmotiveTalk Face Crop, input 'image'")
        if image.shape[0] > 1:
            log.warning("the IMAGE holds %d images; EmotiveTalk Face Crop uses the first", image.shape[0])
        result = face_crop.crop_face(image[0], size, scale, mask=mask, box=user_box(box_x, box_y, box_width, box_height))
        device = bridge.intermediate_device()
        return result.image.to(device), result.face_mask.to(device), result


class EmotiveTalkPasteBack:
    DESCRIPTION = ("Puts animated face crops back into the full frame they were cut from, at its original resolution, "
                   "with a soft edge; everything outside the crop stays the original pixels. Give background (e.g. another "
                   "Paste Back's frames) to paste into those frames instead, so a second face talks in the same video.")
    CATEGORY = f"{CATEGORY}/face"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    FUNCTION = "paste"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "frames": ("IMAGE", {"tooltip": "The animated crops (any size: an upscaler may sit in between; frames of another "
                                            "shape than square are taken as the centre of the crop, as the generator makes them)."}),
            "crop": (CROP, {"tooltip": "From EmotiveTalk Face Crop."}),
            "feather": ("FLOAT", {"default": face_crop.DEFAULT_FEATHER, "min": 0.0, "max": 0.5, "step": 0.01,
                                  "tooltip": "Width of the soft edge as a fraction of the crop side (0 = hard edge)."}),
        }, "optional": {
            "background": ("IMAGE", {"tooltip": "Frames to paste into instead of the still frame the crop was cut from, "
                                                "e.g. another Paste Back's frames (a second face in the same video); the "
                                                "size of that frame. The result is as long as the longer of frames and "
                                                "background: after the crops end the background shows as it is, after the "
                                                "background ends its last frame is held."}),
        }}

    def paste(self, frames, crop, feather, background=None):
        frames = checked_images(frames, "EmotiveTalk Paste Back, input 'frames'")
        original = crop.original
        if background is not None:
            original = checked_images(background, "EmotiveTalk Paste Back, input 'background'")
            if tuple(original.shape[1:3]) != tuple(crop.original.shape[:2]):
                raise ValueError(f"EmotiveTalk Paste Back, input 'background': the frames are {original.shape[2]}x"
                                 f"{original.shape[1]} but the crop was cut from a {crop.original.shape[1]}x"
                                 f"{crop.original.shape[0]} image; give frames of that image's size")
            if original.shape[0] != frames.shape[0]:
                log.info("EmotiveTalk Paste Back: %d animated frames into %d background frames; the result has %d",
                         frames.shape[0], original.shape[0], max(frames.shape[0], original.shape[0]))
        pasted = face_crop.paste_back(frames, original, crop.region, feather)
        return (pasted.to(bridge.intermediate_device()),)


NODE_CLASS_MAPPINGS = {
    "EmotiveTalkFaceCrop": EmotiveTalkFaceCrop,
    "EmotiveTalkPasteBack": EmotiveTalkPasteBack,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EmotiveTalkFaceCrop": "EmotiveTalk Face Crop",
    "EmotiveTalkPasteBack": "EmotiveTalk Paste Back",
}
