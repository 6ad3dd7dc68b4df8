"""Speech encoders: timing, loading wav2vec2 from either file layout, chunking, fingerprints."""

import math

import numpy as np
import pytest
import torch

from emotivetalk_core.configs import get_config
from emotivetalk_core.media.audio import frame_count
from emotivetalk_core.networks.speech.base import weights_sha256
from emotivetalk_core.networks.speech.load import check_speech_encoder, load_speech_encoder
from emotivetalk_core.networks.speech.logmel import LogMelSpeechEncoder
from emotivetalk_core.networks.speech.timing import (
    conv_frame_count,
    conv_frame_times,
    conv_receptive_field,
    interpolate_frames,
)
from emotivetalk_core.networks.speech.wav2vec2 import Wav2Vec2SpeechEncoder

STYLES = {
    # wav2vec2-base layout: group norm on the first conv, post-norm transformer, no conv bias.
    "base": {"feat_extract_norm": "group", "do_stable_layer_norm": False, "conv_bias": False},
    # wav2vec2-large-lv60 layout: layer norm on every conv, pre-norm transformer, conv bias.
    "large": {"feat_extract_norm": "layer", "do_stable_layer_norm": True, "conv_bias": True},
}


def _tiny_wav2vec2(style):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    # 64-dim heads (128 / 2) as in every released wav2vec2: a bare file does not store the head
    # count, so the loader assumes 64. Standard kernels/strides: stride 320, receptive field 400.
    config = Wav2Vec2Config(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        conv_dim=(32,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, **STYLES[style],
    )
    torch.manual_seed(0)
    model = Wav2Vec2Model(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            # fp16-representable values, so the fp16 file and the fp32 folder hold the same model.
            parameter.copy_(parameter.half().float())
    return model


def _comfyui_state_dict(model, keep_spec_embed=True):
    """The layout of ComfyUI's models/audio_encoders files: prefixed, legacy weight-norm names, fp16."""
    state_dict = {}
    for key, tensor in model.state_dict().items():
        if key == "masked_spec_embed" and not keep_spec_embed:
            continue
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        state_dict[f"wav2vec2.{key}"] = tensor.half().contiguous()
    return state_dict


@pytest.fixture(scope="module", params=sorted(STYLES))
def saved_model(request, tmp_path_factory):
    from safetensors.torch import save_file

    style = request.param
    root = tmp_path_factory.mktemp(f"wav2vec2-{style}")
    model = _tiny_wav2vec2(style)
    model.save_pretrained(root / "hf-folder", safe_serialization=True)
    file = root / "tiny-w2v.safetensors"
    save_file(_comfyui_state_dict(model, keep_spec_embed=style == "base"), str(file))
    return style, model, root / "hf-folder", file


def _speech(seconds, seed=0):
    # Broadband noise with a slow envelope: every chunk sees similar statistics, as speech does.
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 16000)) / 16000
    return torch.randn(t.shape[0], generator=generator) * (0.6 + 0.4 * torch.sin(2 * math.pi * 3 * t))


# --------------------------------------------------------------------------------------------
# Timing


def test_wav2vec2_frame_timing_is_stride_320_receptive_field_400():
    assert conv_receptive_field((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)) == (400, 320)
    for samples, frames in [(0, 0), (399, 0), (400, 1), (719, 1), (720, 2), (16000, 49), (32000, 99)]:
        assert conv_frame_count(samples) == frames
    for samples in range(0, 5000, 37):  # the closed form equals the per-layer floor((L - k) / s) + 1
        length = samples
        for kernel, stride in zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)):
            length = max(0, (length - kernel) // stride + 1) if length >= kernel else 0
        assert conv_frame_count(samples) == length
    # Frame k covers samples [320k, 320k + 400): centre (320k + 200) / 16000 s.
    np.testing.assert_allclose(conv_frame_times(3), [0.0125, 0.0325, 0.0525])


def test_model_output_length_matches_the_timing_rule(saved_model):
    _, model, _, _ = saved_model
    for samples in (400, 719, 720, 5000, 8123):
        with torch.no_grad():
            frames = model(torch.randn(1, samples)).last_hidden_state.shape[1]
        assert frames == conv_frame_count(samples)


def test_wav2vec2_features_are_read_at_video_frame_centres(saved_model):
    _, _, _, file = saved_model
    encoder = Wav2Vec2SpeechEncoder.load(file, [0, 2])
    waveform = _speech(1.0)
    features = encoder.features(waveform)[0]
    # Video frame j at 25 fps is centred at 0.02 + 0.04 j s; wav2vec2 frame k at 0.0125 + 0.02 k s,
    # so video frame j sits 0.375 of the way from feature frame 2j to 2j + 1.
    expected = 0.625 * features[0:48:2] + 0.375 * features[1:49:2]
    torch.testing.assert_close(encoder.encode(waveform, 24, 25), expected)


def test_weights_hash_casts_to_float32_and_ignores_order():
    weights = {"b": torch.randn(3, 2), "a": torch.randn(4)}
    weights = {name: tensor.half().float() for name, tensor in weights.items()}
    reference = weights_sha256(weights)
    assert weights_sha256({"a": weights["a"].half(), "b": weights["b"].half()}) == reference
    assert weights_sha256({"b": weights["b"], "a": weights["a"], "skip": torch.ones(1)}, skip=("skip",)) == reference
    assert weights_sha256({"a": weights["a"], "b": weights["b"] + 1e-3}) != reference
    assert weights_sha256({"a": weights["a"], "c": weights["b"]}) != reference


def test_interpolation_reads_feature_timestamps_and_clamps():
    features = torch.arange(5, dtype=torch.float32).reshape(5, 1, 1) * 10  # value 10*i at 0.1 + 0.2*i s
    out = interpolate_frames(features, 0.1, 0.2, np.array([0.0, 0.1, 0.2, 0.45, 0.9, 2.0]))
    np.testing.assert_allclose(out.reshape(-1).numpy(), [0, 0, 5, 17.5, 40, 40], atol=1e-5)


@pytest.mark.parametrize("fps", [25, 30])
@pytest.mark.parametrize("position", [0.25, 0.5, 0.75])
def test_click_peaks_at_its_video_frame(fps, position):
    encoder = LogMelSpeechEncoder(n_mels=32)
    for frame in (3, 10, 22):
        # A click a quarter, half and three quarters into a frame: a half-frame timing error moves
        # the peak of the 0.25 or the 0.75 case into a neighbouring frame.
        t = (frame + position) / fps
        waveform = torch.zeros(16000)
        waveform[round(t * 16000)] = 1.0
        features = encoder.encode(waveform, frame_count(16000, fps), fps)
        energy = features.sum(dim=(1, 2))
        assert int(energy.argmax()) == math.floor(t * fps) == frame


# --------------------------------------------------------------------------------------------
# wav2vec2 loading


def test_folder_and_comfyui_file_give_the_same_features(saved_model):
    style, model, folder, file = saved_model
    from_folder = Wav2Vec2SpeechEncoder.load(folder, [0, 1, 2])
    from_file = Wav2Vec2SpeechEncoder.load(file, [0, 1, 2])

    for key in ("feat_extract_norm", "do_stable_layer_norm", "conv_bias", "num_attention_heads", "intermediate_size"):
        assert getattr(from_file.model.config, key) == getattr(model.config, key), key
    waveform = _speech(1.3)
    expected = from_folder.encode(waveform, 33, 25)
    assert expected.shape == (33, 3, 128)
    torch.testing.assert_close(from_file.encode(waveform, 33, 25), expected, rtol=1e-6, atol=1e-6)
    # The features are the model's own hidden states, not a different computation.
    with torch.no_grad():
        normalised = (waveform - waveform.mean()) / torch.sqrt(waveform.var(correction=0) + 1e-7)
        direct = model(normalised[None], output_hidden_states=True).hidden_states[2][0]
    torch.testing.assert_close(from_file.features(waveform)[0][:, 2], direct, rtol=1e-5, atol=1e-5)

    folder_print, file_print = from_folder.fingerprint(), from_file.fingerprint()
    assert (folder_print["source"], file_print["source"]) == ("hf-folder", "tiny-w2v.safetensors")
    assert {k: v for k, v in folder_print.items() if k != "source"} == {k: v for k, v in file_print.items() if k != "source"}
    assert folder_print["architecture"] == f"wav2vec2-h128-l2-{STYLES[style]['feat_extract_norm']}norm"
    assert len(folder_print["weights_sha256"]) == 64


def test_chunked_encoding_matches_one_pass(saved_model):
    style, _, _, file = saved_model
    waveform = _speech(3.0)
    whole = Wav2Vec2SpeechEncoder.load(file, [0, 1, 2]).features(waveform)[0]
    chunked = Wav2Vec2SpeechEncoder.load(file, [0, 1, 2], chunk_seconds=0.5, context_seconds=0.3).features(waveform)[0]
    assert chunked.shape == whole.shape == (conv_frame_count(48000), 3, 128)
    # Layer 0 (convs, base's whole-input group norm, positional conv) must be unchanged by
    # chunking: a misplaced chunk boundary or per-chunk group-norm statistics show here.
    torch.testing.assert_close(chunked[:, 0], whole[:, 0], rtol=1e-4, atol=1e-4)
    # Attention spans the chunk instead of the whole clip: close, not equal.
    assert (chunked - whole).abs().mean() < 0.015 * whole.abs().mean()
    assert (chunked - whole).abs().max() < 0.1


def test_wrong_files_are_rejected_with_what_was_expected(tmp_path, saved_model):
    from safetensors.torch import save_file

    _, model, _, _ = saved_model
    not_wav2vec2 = tmp_path / "clip_vision.safetensors"
    save_file({"vision_model.embeddings.patch_embedding.weight": torch.zeros(4, 3, 2, 2)}, str(not_wav2vec2))
    with pytest.raises(ValueError, match=r"clip_vision\.safetensors is not a wav2vec2 model file.*wav2vec2-base-960h"):
        Wav2Vec2SpeechEncoder.load(not_wav2vec2, [1])

    whisper = tmp_path / "whisper.safetensors"
    save_file({"model.encoder.embed_positions.weight": torch.zeros(4, 4)}, str(whisper))
    with pytest.raises(ValueError, match="Whisper"):
        Wav2Vec2SpeechEncoder.load(whisper, [1])

    truncated = tmp_path / "truncated.safetensors"
    state_dict = _comfyui_state_dict(model)
    del state_dict["wav2vec2.encoder.layers.1.attention.q_proj.weight"]
    save_file(state_dict, str(truncated))
    with pytest.raises(ValueError, match=r"truncated\.safetensors.*missing.*q_proj"):
        Wav2Vec2SpeechEncoder.load(truncated, [1])

    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        Wav2Vec2SpeechEncoder.load(tmp_path / "absent.safetensors", [1])


# --------------------------------------------------------------------------------------------
# Fingerprints and configuration


def test_fingerprint_mismatch_names_the_needed_file(tmp_path, saved_model):
    from safetensors.torch import save_file

    _, model, _, file = saved_model
    expected = dict(Wav2Vec2SpeechEncoder.load(file, [1]).fingerprint(), source="wav2vec2-base-960h.safetensors")
    hint = "Put wav2vec2-base-960h.safetensors in ComfyUI/models/audio_encoders."

    same_weights = dict(expected, source="renamed.safetensors")
    check_speech_encoder(expected, same_weights, hint)  # only the source differs: accepted

    with pytest.raises(ValueError, match=r"wav2vec2-base-960h\.safetensors.*logmel-32.*models/audio_encoders"):
        check_speech_encoder(expected, LogMelSpeechEncoder(32).fingerprint(), hint)

    state_dict = _comfyui_state_dict(model)
    state_dict["wav2vec2.encoder.layer_norm.bias"] = state_dict["wav2vec2.encoder.layer_norm.bias"] + 1
    retrained = tmp_path / "retrained.safetensors"
    save_file(state_dict, str(retrained))
    with pytest.raises(ValueError, match=r"weights_sha256.*retrained\.safetensors|retrained\.safetensors.*weights_sha256"):
        check_speech_encoder(expected, Wav2Vec2SpeechEncoder.load(retrained, [1]).fingerprint(), hint)


@pytest.mark.parametrize("num_frames", [0, 1, 17, 26, 40])
def test_encode_returns_exactly_num_frames(saved_model, num_frames):
    _, _, _, file = saved_model
    waveform = _speech(16001 / 16000)  # frame_count(16001, 25) == 26
    for encoder in (LogMelSpeechEncoder(32), Wav2Vec2SpeechEncoder.load(file, [0, 2])):
        features = encoder.encode(waveform, num_frames, 25)
        assert features.shape == (num_frames, encoder.num_layers, encoder.dim)
        assert torch.isfinite(features).all()


def test_load_speech_encoder_follows_the_configuration(saved_model):
    _, _, folder, file = saved_model
    logmel = load_speech_encoder(get_config("tiny")["speech"])
    assert isinstance(logmel, LogMelSpeechEncoder)
    assert (logmel.num_layers, logmel.dim, logmel.fingerprint()["architecture"]) == (1, 32, "logmel-32")

    svd_speech = get_config("svd-xt")["speech"]
    with pytest.raises(ValueError, match=r"wav2vec2-base-960h.*models/audio_encoders"):
        load_speech_encoder(svd_speech)
    with pytest.raises(ValueError, match=r"wav2vec2-h128-l2-.*needs wav2vec2-base"):
        load_speech_encoder(dict(svd_speech, layers=[1]), file)  # the tiny model is not wav2vec2-base

    encoder = load_speech_encoder({"kind": "wav2vec2", "layers": [1, 2]}, folder)
    assert (encoder.num_layers, encoder.dim) == (2, 128)
    with pytest.raises(ValueError, match="indices 0..2"):
        load_speech_encoder({"kind": "wav2vec2", "layers": [4, 8, 12]}, file)
    with pytest.raises(ValueError, match="kind"):
        load_speech_encoder({"kind": "hubert"})
