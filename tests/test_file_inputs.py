"""Files users hand over: images in every bit depth and orientation, and model files that are not
what they should be. Each is read right or refused with the file's name and what to do."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from emotivetalk_core.checkpoints import CheckpointError, read_metadata
from emotivetalk_core.cli import main
from emotivetalk_core.models import DEFAULT_MODEL_PATH, load_built, load_emotivetalk_model, load_vaid_model
from emotivetalk_core.pipeline import load_image


def test_a_16_bit_png_keeps_its_grey_levels(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    image = load_image(tmp_path / "deep.png")
    assert image.shape == (1, 3, 64, 64)
    assert image.mean().item() == pytest.approx(0.5, abs=0.01)  # PIL's RGB conversion gives white (1.0)
    assert image[0, 0, 0, 0].item() == 0.0 and image[0, 0, -1, -1].item() == 1.0


def test_a_float_tiff_is_read_as_0_to_1(tmp_path):
    Image.fromarray(np.full((16, 16), 0.25, np.float32), mode="F").save(tmp_path / "linear.tiff")
    assert load_image(tmp_path / "linear.tiff").mean().item() == pytest.approx(0.25)  # not black


def test_a_phone_photo_is_turned_upright(tmp_path):
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:10] = 255  # the top rows, as stored
    photo = Image.fromarray(pixels)
    exif = photo.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    photo.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "phone.jpg")
    assert image.shape == (1, 3, 60, 40)
    assert image[0, :, :, -10:].mean() > 0.9 and image[0, :, :, :25].mean() < 0.1  # the stored top is now the right side


def test_a_truncated_jpeg_is_named(tmp_path):
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "whole.jpg")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.jpg: cannot read the image .*damaged or incomplete"):
        load_image(tmp_path / "cut.jpg")


def test_an_image_too_large_to_read_safely_is_refused(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # as a 20000 x 20000 PNG is against the real limit
    with pytest.raises(ValueError, match=r"huge\.png is too large to read safely .*resize it"):
        load_image(tmp_path / "huge.png")


@pytest.fixture
def bad_model_files(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "weights.pt")
    (tmp_path / "legacy.ckpt").write_bytes(b"\x80\x02}q\x00.")  # a protocol-2 pickle of {}
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "cut.safetensors").write_bytes(DEFAULT_MODEL_PATH.read_bytes()[:5000])
    (tmp_path / "noise.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    return {
        "weights.pt": ["PyTorch zip pickle", "only .safetensors", "can run code"],
        "legacy.ckpt": ["a Python pickle", "only .safetensors"],
        "empty.safetensors": ["empty (0 bytes)", "fetch it again"],
        "cut.safetensors": ["not a readable safetensors file", "damaged or incomplete"],
        "noise.safetensors": ["not a readable safetensors file"],
    }, tmp_path


def test_model_files_that_are_not_safetensors_are_named(bad_model_files):
    cases, folder = bad_model_files
    for name, phrases in cases.items():
        with pytest.raises(CheckpointError) as error:
            read_metadata(folder / name)
        for phrase in [name, *phrases]:
            assert phrase in str(error.value), error.value


def test_the_command_line_names_a_pickle_checkpoint_in_one_line(bad_model_files, capsys, tmp_path):
    import soundfile

    _, folder = bad_model_files
    soundfile.write(tmp_path / "a.wav", np.zeros(8000, np.float32), 16000)
    portrait = DEFAULT_MODEL_PATH.parents[1] / "assets" / "portrait.png"
    assert main(["generate", "--image", str(portrait), "--audio", str(tmp_path / "a.wav"), "--out", str(tmp_path / "o.mp4"),
                 "--checkpoint", str(folder / "weights.pt"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "weights.pt is a PyTorch zip pickle" in err and "SafetensorError" not in err


def test_weights_of_other_shapes_name_the_component(tmp_path):
    state = {"weight": torch.zeros(4, 2), "bias": torch.zeros(4)}
    with pytest.raises(CheckpointError, match=r"model\.safetensors: the weights of component 'lip_projector' have other "
                                              r"shapes .*size mismatch for weight"):
        load_built(torch.nn.Linear(2, 3), state, "lip_projector", tmp_path / "model.safetensors")


def test_files_a_self_contained_model_does_not_need_are_reported_not_ignored(caplog, tmp_path):
    unused = tmp_path / "svd_xt.safetensors"
    unused.write_bytes(b"never read")
    with caplog.at_level(logging.WARNING):
        load_emotivetalk_model("default", base=unused)
        load_vaid_model("default", speech_source=unused)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("base" in message and "svd_xt.safetensors is not used" in message for message in warnings), warnings
    assert any("speech encoder" in message and "svd_xt.safetensors is not used" in message for message in warnings), warnings
