"""Files users hand over: images in every bit depth and orientation, and model files that are not
what they should be. Each is read right or refused with the file's name and what to do."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from emotivetalk_core.bundles import DEFAULT_MODEL_PATH, load_built, load_emotivetalk_model, load_vaid_model
from emotivetalk_core.checkpoints import CheckpointError, read_metadata
from emotivetalk_core.cli import main
from emotivetalk_core.media.image import load_image


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


# --- cases found by fuzzing (tests/test_fuzz.py) ---------------------------------------------

def _wav_bytes(channels: int, rate: int, frames: bytes) -> bytes:
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(frames)
    return buffer.getvalue()


def test_a_wav_whose_header_names_no_codec_is_refused_by_name(tmp_path):
    from emotivetalk_core.media.audio import load_audio

    data = bytearray(_wav_bytes(1, 16000, b"\x00\x01" * 800))
    data[32:36] = b"\xff\xff\xff\xff"  # block align and bits per sample: FFmpeg finds no decoder
    (tmp_path / "broken.wav").write_bytes(data)
    with pytest.raises(ValueError, match=r"broken\.wav: its audio codec cannot be decoded"):
        load_audio(tmp_path / "broken.wav")  # was AttributeError: 'AudioStream' object has no attribute 'rate'


def test_audio_too_short_for_one_sample_at_16_khz_is_refused_by_name(tmp_path):
    from emotivetalk_core.media.audio import load_audio

    (tmp_path / "blip.wav").write_bytes(_wav_bytes(2, 44100, b"\x00\x00\x00\x00"))
    with pytest.raises(ValueError, match=r"blip\.wav: the audio is too short"):
        load_audio(tmp_path / "blip.wav")  # was "need at least one array to concatenate"


def test_damaged_model_metadata_names_the_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"part.w": torch.zeros(2)}, str(tmp_path / "bad.safetensors"),
              metadata={"emotivetalk.components": '{"part": {"width": 3}}', "emotivetalk.info": '{"trained"::false}'})
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: its EmotiveTalk metadata is damaged"):
        read_metadata(tmp_path / "bad.safetensors")  # was a bare JSONDecodeError
    save_file({"part.w": torch.zeros(2)}, str(tmp_path / "odd.safetensors"), metadata={"emotivetalk.components": "[1, 2]"})
    with pytest.raises(CheckpointError, match=r"odd\.safetensors: its EmotiveTalk metadata is not a table"):
        read_metadata(tmp_path / "odd.safetensors")


def test_an_image_pil_cannot_lay_out_is_refused_by_name(tmp_path, monkeypatch):
    """PIL raises ValueError ("tile cannot extend outside image") for some damaged GIFs and TIFFs."""
    import emotivetalk_core.media.image as image_module

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "tiles.gif")

    def damaged(image):
        raise ValueError("tile cannot extend outside image")

    monkeypatch.setattr(image_module, "_rgb_array", damaged)
    with pytest.raises(ValueError, match=r"tiles\.gif: cannot read the image \(tile cannot extend outside image\)"):
        load_image(tmp_path / "tiles.gif")
