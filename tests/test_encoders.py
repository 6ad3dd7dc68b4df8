"""Visual encoders and the Mapping: shapes at any input size, the mouth crop, the mask, errors."""

import pytest
import torch

from emotivetalk_core.configs import get_config
from emotivetalk_core.networks.encoders import ExpEncoder, FaceProcessor, IdentityEncoder, LipEncoder
from emotivetalk_core.networks.mapping import MAX_TEXT_BYTES, Mapping

CFG = get_config("tiny")
ENC = CFG["encoders"]


def _images(height: int, width: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _build(cls):
    torch.manual_seed(0)
    return cls(ENC).eval()


@pytest.mark.parametrize("size", [(32, 32), (96, 96), (64, 48)])
@pytest.mark.parametrize("cls, key", [(LipEncoder, "lip_dim"), (ExpEncoder, "exp_dim"), (IdentityEncoder, "id_dim")])
def test_embedding_encoders_give_one_vector_per_image_at_any_size(cls, key, size):
    with torch.no_grad():
        assert _build(cls)(_images(*size)).shape == (2, ENC[key])


@pytest.mark.parametrize("size", [(32, 32), (96, 96), (64, 48)])
def test_face_processor_gives_probabilities_at_the_input_resolution(size):
    model = _build(FaceProcessor)
    with torch.no_grad():
        # Logit heads with unit weights give logits well outside 0..1: only a sigmoid keeps them in.
        for head in model.heads:
            head.weight.normal_(std=1.0)
        mask = model(_images(*size))
    assert mask.shape == (2, 1, *size)
    assert mask.min() >= 0 and mask.max() <= 1
    assert mask.std() > 0.05


def test_lip_encoder_looks_at_the_mouth_only():
    model, images = _build(LipEncoder), _images(64, 64)
    eyes_changed, mouth_changed = images.clone(), images.clone()
    eyes_changed[:, :, :30] = 0.0
    mouth_changed[:, :, 40:60, 20:44] = 0.0
    with torch.no_grad():
        reference = model(images)
        torch.testing.assert_close(model(eyes_changed), reference, rtol=0, atol=0)
        assert not torch.allclose(model(mouth_changed), reference, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_encoders_run_in_half_precision_on_the_cpu(dtype):
    # Mixed-precision training casts the frozen encoders; resizing must still work on a CPU.
    config = get_config("tiny")["encoders"]
    encoder = ExpEncoder(config).to(dtype)
    codes = encoder(torch.rand(2, 3, 50, 50))
    assert codes.dtype == dtype and codes.shape == (2, config["exp_dim"]) and torch.isfinite(codes).all()


def test_encoders_refuse_channels_last_images():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        _build(ExpEncoder)(torch.rand(1, 32, 32, 3))


def _mapping() -> Mapping:
    torch.manual_seed(0)
    return Mapping(CFG["mapping"]).eval()


def test_mapping_from_label():
    mapping = _mapping()
    codes = mapping.from_label(["happy", "Angry", "happy"])
    assert codes.shape == (3, CFG["mapping"]["exp_dim"])
    torch.testing.assert_close(codes[0], codes[2])
    assert not torch.allclose(codes[0], codes[1])


def test_mapping_unknown_label_lists_the_valid_ones():
    with pytest.raises(ValueError) as error:
        _mapping().from_label(["happy", "ecstatic"])
    message = str(error.value)
    assert "'ecstatic'" in message
    assert all(label in message for label in CFG["mapping"]["labels"])


def test_mapping_from_text():
    mapping = _mapping()
    with torch.no_grad():
        codes = mapping.from_text(["speak seriously", "a happy voice", "Speak   Seriously"])
        alone = mapping.from_text(["speak seriously"])
    assert codes.shape == (3, CFG["mapping"]["exp_dim"])
    assert not torch.allclose(codes[0], codes[1], atol=1e-4)
    torch.testing.assert_close(codes[0], codes[2])
    # Padding to the longest prompt of the batch must not change a prompt's code.
    torch.testing.assert_close(codes[:1], alone, rtol=0, atol=1e-5)


def test_mapping_refuses_empty_or_overlong_text():
    with pytest.raises(ValueError, match="empty"):
        _mapping().from_text(["  "])
    with pytest.raises(ValueError, match=str(MAX_TEXT_BYTES)):
        _mapping().from_text(["angry " * 40])


def test_mapping_from_image_starts_as_the_exp_code_itself():
    mapping = _mapping()
    exp_codes = torch.randn(3, CFG["mapping"]["exp_dim"])
    mapped = mapping.from_image(exp_codes)
    assert mapped.shape == exp_codes.shape
    torch.testing.assert_close(mapped, exp_codes)
