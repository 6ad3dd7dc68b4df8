"""Face crop and paste-back: a 1280x720 frame with the face off-centre, cropped to a face-centred
square, animated (here: tinted), and put back at the original resolution."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emotivetalk_core import pipeline
from emotivetalk_core.media import face_crop, face_detect
from nodes import face_nodes

ROOT = Path(__file__).resolve().parents[1]
AT = (700, 200)  # where the astronaut photo sits in the frame (x, y)
FACE = face_detect.Box(177 + AT[0], 67 + AT[1], 270 + AT[0], 160 + AT[1])  # its face, as detected in the photo alone
SIZE = 256


def _frame(at=AT, grey=0.5):
    """IMAGE [1, 720, 1280, 3]: scikit-image's astronaut portrait on grey at ``at`` (clipped by the frame)."""
    from skimage import data

    photo = torch.from_numpy(data.astronaut()).float() / 255
    frame = torch.full((1, 720, 1280, 3), grey)
    x, y = at
    sx, sy = max(0, -x), max(0, -y)
    w, h = min(512 - sx, 1280 - max(0, x)), min(512 - sy, 720 - max(0, y))
    frame[0, max(0, y):max(0, y) + h, max(0, x):max(0, x) + w] = photo[sy:sy + h, sx:sx + w]
    return frame


@pytest.fixture(scope="module")
def frame():
    return _frame()


@pytest.fixture(scope="module")
def cropped(frame):
    return face_nodes.EmotiveTalkFaceCrop().crop(frame, SIZE, 2.2)


def _paste(frames, crop, feather=0.1):
    (pasted,) = face_nodes.EmotiveTalkPasteBack().paste(frames, crop, feather)
    return pasted


def _tinted(portrait, count=3):
    """An "animation" that turns the whole square pure red."""
    frames = torch.zeros_like(portrait).repeat(count, 1, 1, 1)
    frames[..., 0] = 1.0
    return frames


def _outside(image, region):
    """``image [..., H, W, C]`` with the crop region zeroed: what must stay the original."""
    kept = image.clone()
    kept[..., max(0, region.y0):region.y1, max(0, region.x0):region.x1, :] = 0
    return kept


# --- crop ------------------------------------------------------------------------------------

def test_crop_finds_the_off_centre_face_and_centres_it(cropped):
    portrait, face_mask, crop = cropped
    assert portrait.shape == (1, SIZE, SIZE, 3) and face_mask.shape == (1, SIZE, SIZE)
    assert crop.source == "detector"
    found = crop.face_box
    assert abs(found.centre[0] - FACE.centre[0]) < 10 and abs(found.centre[1] - FACE.centre[1]) < 10
    # The crop shows that face, centred (lifted by DEFAULT_LIFT / scale of the side) and at 1/scale of the side.
    again = face_detect.detect_face(portrait[0].numpy())
    assert again is not None
    cx, cy = (c / SIZE for c in again.centre)
    assert abs(cx - 0.5) < 0.04 and abs(cy - (0.5 + face_crop.DEFAULT_LIFT / 2.2)) < 0.04
    assert abs(again.width / SIZE - 1 / 2.2) < 0.08
    # Face mask: the face's centre is in, the corners are out.
    centre = face_mask[0, round(cy * SIZE), round(cx * SIZE)]
    assert centre == 1.0 and face_mask[0, 0, 0] == 0 and face_mask[0, -1, -1] == 0


def test_the_face_mask_fits_the_generators_face_mask_input(cropped):
    _, face_mask, _ = cropped
    fitted = pipeline.fit_portrait(face_mask[:, None], 64, 64)  # what encode_reference does with a user mask
    assert fitted.shape == (1, 1, 64, 64) and 0.1 < fitted.mean() < 0.6


# --- paste-back ------------------------------------------------------------------------------

def test_paste_back_of_the_unmodified_crop_restores_the_frame(frame, cropped):
    portrait, _, crop = cropped
    pasted = _paste(portrait.repeat(2, 1, 1, 1), crop)
    assert pasted.shape == (2, 720, 1280, 3) and pasted.dtype == torch.float32
    assert torch.equal(_outside(pasted, crop.region), _outside(frame.expand(2, -1, -1, -1), crop.region))
    region = crop.region
    inside = (pasted - frame)[:, region.y0:region.y1, region.x0:region.x1].abs()
    assert inside.mean() < 0.01


def test_animated_frames_change_only_the_crop_and_the_edge_is_soft(frame, cropped):
    portrait, _, crop = cropped
    region = crop.region
    soft, hard = _paste(_tinted(portrait), crop, 0.1), _paste(_tinted(portrait), crop, 0.0)
    assert soft.shape == (3, 720, 1280, 3)
    changed = (soft[0] != frame[0]).any(-1).nonzero()
    assert changed[:, 0].min() >= region.y0 and changed[:, 0].max() < region.y1
    assert changed[:, 1].min() >= region.x0 and changed[:, 1].max() < region.x1
    assert changed.shape[0] > 0.8 * region.side ** 2  # the whole square is animated, not just a spot
    # Across the crop's left edge, along the face's row: a hard paste jumps, a feathered one ramps.
    row, columns = round(crop.face_box.centre[1]), slice(region.x0 - 4, region.x0 + region.side // 3)
    jump_soft = soft[0, row, columns].diff(dim=0).abs().max()
    jump_hard = hard[0, row, columns].diff(dim=0).abs().max()
    assert jump_hard > 0.5 and jump_soft < 0.15 * jump_hard


def test_paste_back_in_chunks_equals_all_at_once(cropped):
    portrait, _, crop = cropped
    frames = portrait * torch.linspace(0.5, 1.0, 5)[:, None, None, None]
    one_go = face_crop.paste_back(frames, crop.original, crop.region, chunk=16)
    assert torch.equal(face_crop.paste_back(frames, crop.original, crop.region, chunk=2), one_go)
    assert not torch.equal(one_go[0], one_go[4])  # each frame gets its own crop


def test_upscaled_frames_paste_back_at_the_original_resolution(frame, cropped):
    portrait, _, crop = cropped
    upscaled = torch.nn.functional.interpolate(portrait.permute(0, 3, 1, 2), scale_factor=2, mode="bilinear")
    pasted = _paste(upscaled.permute(0, 2, 3, 1), crop)
    assert pasted.shape == (1, 720, 1280, 3)
    region = crop.region
    assert (pasted - frame)[:, region.y0:region.y1, region.x0:region.x1].abs().mean() < 0.01


def test_non_square_frames_go_back_where_the_generator_took_them_from(frame, cropped):
    portrait, _, crop = cropped
    # The generator covers width x height with the square and centre-crops (pipeline.fit_portrait).
    wide = pipeline.fit_portrait(portrait.permute(0, 3, 1, 2), 256, 128).permute(0, 2, 3, 1)
    pasted = _paste(torch.cat([wide, _tinted(wide, 1)]), crop)
    x0, y0, w, h = face_crop.frame_rect(crop.region, 128, 256)
    assert (x0, w) == (crop.region.x0, crop.region.side) and abs(h - crop.region.side / 2) <= 1
    # (a little above the square's 0.01: the band's place is rounded to whole source pixels)
    assert (pasted[0] - frame[0])[y0:y0 + h, x0:x0 + w].abs().mean() < 0.02
    changed = (pasted[1] != frame[0]).any(-1).nonzero()
    assert changed[:, 0].min() >= y0 and changed[:, 0].max() < y0 + h  # the top and bottom of the square are kept



def _two_faces():
    """A frame with the astronaut twice, far enough apart that the two 2.2x crops do not touch, and
    each face's crop (by box, as the two_speakers workflow chooses them)."""
    frame = _frame(at=(-100, 200))
    frame[:, 200:712, 700:1212] = _frame()[:, 200:712, 700:1212]
    crops = [face_nodes.EmotiveTalkFaceCrop().crop(frame, SIZE, 2.2, box_x=x0, box_y=67 + 200, box_width=93, box_height=93)
             for x0 in (177 - 100, 177 + 700)]
    assert crops[0][2].region.x1 < crops[1][2].region.x0
    return frame, crops


def test_a_second_face_pastes_into_the_first_paste_so_both_animate_in_the_same_frames():
    frame, ((first, _, crop1), (second, _, crop2)) = _two_faces()
    once = _paste(_tinted(first, 3), crop1)
    (both,) = face_nodes.EmotiveTalkPasteBack().paste(_tinted(second, 3) * 0.5, crop2, 0.1, background=once)
    assert both.shape == (3, 720, 1280, 3)
    row = round(crop1.face_box.centre[1])
    assert torch.allclose(both[:, row, round(crop1.face_box.centre[0])], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(both[:, row, round(crop2.face_box.centre[0])], torch.tensor([0.5, 0.0, 0.0]))
    # Outside the second crop the first paste is kept exactly; outside both, the frame itself.
    assert torch.equal(_outside(both, crop2.region), _outside(once, crop2.region))
    assert torch.equal(_outside(_outside(both, crop1.region), crop2.region),
                       _outside(_outside(frame.expand(3, -1, -1, -1), crop1.region), crop2.region))
    # Frame i goes into background frame i (not every crop into the first).
    steps = torch.linspace(0.2, 1.0, 3)[:, None, None, None]
    (ramped,) = face_nodes.EmotiveTalkPasteBack().paste(_tinted(second, 3) * steps, crop2, 0.1, background=once * steps)
    centre = ramped[:, row, round(crop1.face_box.centre[0]), 0]
    assert torch.allclose(centre, steps.flatten())


def test_clips_of_different_lengths_last_as_long_as_the_longer():
    _, ((first, _, crop1), (second, _, crop2)) = _two_faces()
    short, long = _paste(_tinted(first, 2), crop1), _paste(_tinted(first, 5), crop1)
    # Background longer than the crops: past their end the background shows as it is.
    (pasted,) = face_nodes.EmotiveTalkPasteBack().paste(_tinted(second, 3) * 0.5, crop2, 0.1, background=long)
    assert pasted.shape[0] == 5 and torch.equal(pasted[3:], long[3:])
    assert not torch.equal(pasted[2], long[2])
    # Background shorter than the crops: its last frame is held under the rest of the crops.
    (pasted,) = face_nodes.EmotiveTalkPasteBack().paste(_tinted(second, 4) * 0.5, crop2, 0.1, background=short)
    assert pasted.shape[0] == 4
    assert torch.equal(pasted[3], pasted[1]) and torch.equal(_outside(pasted[3], crop2.region), _outside(short[1], crop2.region))


def test_a_background_of_another_size_is_refused_naming_the_input(cropped):
    portrait, _, crop = cropped
    with pytest.raises(ValueError, match="input 'background': the frames are 640x360 but the crop was cut from a 1280x720"):
        face_nodes.EmotiveTalkPasteBack().paste(portrait, crop, 0.1, background=torch.zeros(2, 360, 640, 3))
    with pytest.raises(ValueError, match="input 'background'.*NaN"):
        face_nodes.EmotiveTalkPasteBack().paste(portrait, crop, 0.1, background=torch.full((1, 720, 1280, 3), float("nan")))

# --- where the face comes from ---------------------------------------------------------------

def test_a_user_mask_wins_over_detection(frame):
    mask = torch.zeros(1, 720, 1280)
    mask[0, 300:420, 100:200] = 1.0  # nowhere near the detected face
    portrait, face_mask, crop = face_nodes.EmotiveTalkFaceCrop().crop(frame, SIZE, 2.0, mask=mask)
    assert crop.source == "mask"
    centre_x, centre_y = crop.region.x0 + crop.region.side / 2, crop.region.y0 + crop.region.side / 2
    assert abs(centre_x - 150) <= 1 and abs(centre_y - (360 - face_crop.DEFAULT_LIFT * 120)) <= 1
    assert crop.region.side == 240
    # The face mask output is the user's mask, cropped alike: its box, centred, half the side.
    inside = face_crop.box_from_mask(face_mask)
    assert abs(inside.width - SIZE / 2 * 100 / 120) <= 2 and abs(inside.height - SIZE / 2) <= 2
    assert torch.allclose(portrait[0, 0, 0], frame[0, round(crop.region.y0), round(crop.region.x0)], atol=0.02)


def test_an_empty_mask_as_loadimage_gives_it_falls_back_to_detection(frame, caplog):
    _, _, crop = face_nodes.EmotiveTalkFaceCrop().crop(frame, SIZE, 2.2, mask=torch.zeros(1, 64, 64))
    assert crop.source == "detector" and "empty" in caplog.text


def test_a_mask_of_another_size_is_refused(frame):
    with pytest.raises(ValueError, match="64x64 but the image is 1280x720"):
        face_nodes.EmotiveTalkFaceCrop().crop(frame, SIZE, 2.2, mask=torch.ones(1, 64, 64))


def test_a_user_box_is_used_and_half_a_box_is_refused(frame):
    _, face_mask, crop = face_nodes.EmotiveTalkFaceCrop().crop(frame, SIZE, 2.0, box_x=200, box_y=300, box_width=80,
                                                                box_height=100)
    assert crop.source == "box" and crop.region.side == 200
    assert crop.region.x0 == 140 and crop.region.y0 == 350 - 10 - 100  # centre - lift - side / 2
    assert face_mask[0, SIZE // 2, SIZE // 2] == 1.0  # the ellipse is drawn around the box
    with pytest.raises(ValueError, match="box_width and box_height"):
        face_nodes.EmotiveTalkFaceCrop().crop(frame, SIZE, 2.0, box_x=200, box_y=300, box_width=80)


def test_a_face_at_the_border_is_cropped_padded_and_animated_up_to_the_edge():
    frame = _frame(at=(-150, 100))  # the face's centre is 74 px from the left edge
    portrait, _, crop = face_nodes.EmotiveTalkFaceCrop().crop(frame, SIZE, 2.2)
    region = crop.region
    assert region.x0 < 0 and crop.source == "detector"
    # Left of the image the crop repeats the image's edge column.
    padding = round(-region.x0 * SIZE / region.side)
    edge = portrait[0, :, padding + 1:padding + 2]
    assert padding > 8 and (portrait[0, :, 2:padding - 2] - edge).abs().mean() < 0.03
    # This feather reaches past the image edge, so only a feather that spares that edge keeps the face animated.
    assert 0.3 * region.side > -region.x0
    pasted = _paste(torch.cat([portrait, _tinted(portrait, 1)]), crop, feather=0.3)
    assert pasted.shape == (2, 720, 1280, 3)
    assert torch.equal(_outside(pasted, region), _outside(frame.expand(2, -1, -1, -1), region))
    assert (pasted[0] - frame[0])[max(0, region.y0):region.y1, :region.x1].abs().mean() < 0.01
    # No feather against the image's own edge: the face there stays fully animated; the crop's
    # edge inside the image fades to the original.
    row = round(crop.face_box.centre[1])
    assert torch.allclose(pasted[1, row, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-4)
    assert torch.allclose(pasted[1, row, region.x1 - 1], frame[0, row, region.x1 - 1], atol=0.01)


def test_detection_prefers_the_box_most_windows_agree_on_over_a_larger_one(monkeypatch):
    class Cascade:  # what OpenCV's detectMultiScale2 gives: boxes (x, y, w, h) and their window counts
        def detectMultiScale2(self, gray, **options):
            return np.array([[10, 10, 400, 400], [100, 120, 90, 90]]), np.array([6, 13])

    monkeypatch.setattr(face_detect, "_cascade", Cascade)
    assert face_detect.detect_face(np.zeros((480, 640, 3), np.uint8)) == face_detect.Box(100, 120, 190, 210)


def test_tied_detections_give_the_same_box_in_any_report_order(monkeypatch):
    # OpenCV's threads report candidates in the order they finish: a tie must not follow it.
    boxes, support = np.array([[100, 120, 90, 90], [300, 40, 96, 96]]), np.array([9, 9])
    chosen = []
    for order in ([0, 1], [1, 0]):
        class Cascade:
            def detectMultiScale2(self, gray, **options):
                return boxes[order], support[order]

        monkeypatch.setattr(face_detect, "_cascade", Cascade)
        chosen.append(face_detect.detect_face(np.zeros((480, 640, 3), np.uint8)))
    assert chosen[0] == chosen[1] == face_detect.Box(300, 40, 396, 136)  # the higher one, whichever came first


def test_no_face_says_to_give_a_mask_or_box():
    from skimage import data

    coffee = torch.from_numpy(data.coffee()).float()[None] / 255
    with pytest.raises(face_crop.NoFaceFound, match="face mask .* or a face box"):
        face_nodes.EmotiveTalkFaceCrop().crop(coffee, SIZE, 2.2)


def test_without_opencv_the_error_names_the_fix_and_a_box_still_works(frame, monkeypatch):
    face_detect._cascade.cache_clear()
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now fails, as without OpenCV
    try:
        with pytest.raises(face_detect.FaceDetectionUnavailable, match="pip install 'opencv-python-headless.*face mask or face box"):
            face_nodes.EmotiveTalkFaceCrop().crop(frame, SIZE, 2.2)
        _, _, crop = face_nodes.EmotiveTalkFaceCrop().crop(frame, SIZE, 2.2, box_x=880, box_y=270, box_width=90,
                                                           box_height=90)
        assert crop.source == "box"
    finally:
        face_detect._cascade.cache_clear()


# --- widgets and start-up ----------------------------------------------------------------------

def test_widgets_reject_nonsense(cropped):
    crop_inputs = face_nodes.EmotiveTalkFaceCrop.INPUT_TYPES()
    size = crop_inputs["required"]["size"][1]
    assert (size["min"], size["max"], size["step"]) == (64, 2048, 64)
    assert crop_inputs["required"]["scale"][1]["min"] >= 1.0
    assert all(crop_inputs["optional"][f"box_{name}"][1]["min"] == 0 for name in ("x", "y", "width", "height"))
    feather = face_nodes.EmotiveTalkPasteBack.INPUT_TYPES()["required"]["feather"][1]
    assert (feather["min"], feather["max"]) == (0.0, 0.5)
    portrait, _, crop = cropped
    with pytest.raises(ValueError, match="feather"):
        face_crop.paste_back(portrait, crop.original, crop.region, feather=0.9)
    with pytest.raises(ValueError, match="outside the 1280x720 image"):
        face_crop.crop_region_from_box(face_detect.Box(1400, 100, 1500, 200), (1280, 720), scale=1.0)


def test_importing_the_nodes_keeps_opencv_lazy():
    code = "import sys, nodes; assert 'EmotiveTalkFaceCrop' in nodes.NODE_CLASS_MAPPINGS; assert 'cv2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_detection_needs_a_colour_image():
    with pytest.raises(ValueError, match="RGB image"):
        face_detect.detect_face(np.zeros((64, 64), np.uint8))
