"""Bad node inputs are refused where they enter, naming the node and input, before any model runs
(so ComfyUI shows the message on the node): NaN audio, pixels and strengths, empty batches,
tensors of the wrong shape. Integer PCM audio is read at its full scale."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nodes import emotion_nodes, face_nodes, output_nodes, stages

NO_MODEL = None  # the refusals come before a model is touched


def _audio(waveform, rate=16000):
    return {"waveform": waveform, "sample_rate": rate}


def _tone(samples=8000):
    return torch.sin(torch.arange(samples) / 16000 * 2 * math.pi * 200)[None, None] * 0.5


@pytest.mark.parametrize("audio, phrases", [
    (_audio(torch.full((1, 1, 8000), float("nan"))), ["input 'audio'", "8000 audio samples are NaN", "0.000 s"]),
    (_audio(torch.zeros(1, 0, 8000)), ["input 'audio'", "no clip or no channel"]),
    (_audio(torch.zeros(0, 1, 8000)), ["input 'audio'", "no clip or no channel"]),
    (_audio(torch.zeros(8000)), ["input 'audio'", "[batch, channels, samples]", "(8000,)"]),
    (_audio(torch.zeros(1, 1, 0)), ["input 'audio'", "no samples"]),
    (_audio(_tone(), rate=1), ["input 'audio'", "sample rate 1 Hz"]),
    ({"samples": torch.zeros(1, 1, 10)}, ["input 'audio'", "ComfyUI AUDIO"]),
])
def test_bad_audio_is_named(audio, phrases):
    with pytest.raises(ValueError) as error:
        stages.EmotiveTalkAudioPrepare().prepare(audio, 25.0, 0)
    for phrase in phrases:
        assert phrase in str(error.value), error.value


def test_int16_audio_is_read_at_its_full_scale():
    tone = _tone()
    as_int16 = (tone * 32767).round().to(torch.int16)
    speech_float = stages.EmotiveTalkAudioPrepare().prepare(_audio(tone), 25.0, 0)[0]
    speech_int = stages.EmotiveTalkAudioPrepare().prepare(_audio(as_int16), 25.0, 0)[0]
    assert np.abs(speech_int.waveform).max() == pytest.approx(0.5, abs=1e-3)  # not 16383
    assert np.abs(speech_int.waveform - speech_float.waveform).max() < 1e-4


def _image(*shape, fill=0.5):
    return torch.full(shape, fill)


BAD_IMAGES = [
    (_image(1, 32, 32, 3, fill=float("nan")), "NaN or infinite pixels"),
    (_image(0, 32, 32, 3), "holds no pixels"),
    (_image(1, 0, 0, 3), "holds no pixels"),
    (_image(32, 32, 3), "[images, height, width, 3]"),
    (_image(1, 32, 32, 8), "[images, height, width, 3]"),
]


@pytest.mark.parametrize("image, phrase", BAD_IMAGES)
def test_bad_images_are_named_on_every_node_that_takes_one(image, phrase):
    calls = {
        "EDI Reference, input 'portrait'": lambda: stages.EmotiveTalkEDIReference().encode(NO_MODEL, NO_MODEL, image, 0, 0, -1.0, 0),
        "Emotion Image, input 'image'": lambda: emotion_nodes.EmotiveTalkEmotionImage().make(image, 1.0),
        "Emotion Video, input 'frames'": lambda: emotion_nodes.EmotiveTalkEmotionVideo().make(image, 25.0, 1.0),
        "Face Crop, input 'image'": lambda: face_nodes.EmotiveTalkFaceCrop().crop(image, 512, 2.2),
        "Paste Back, input 'frames'": lambda: face_nodes.EmotiveTalkPasteBack().paste(image, None, 0.1),
    }
    for where, call in calls.items():
        with pytest.raises(ValueError) as error:
            call()
        assert f"EmotiveTalk {where}" in str(error.value) and phrase in str(error.value), error.value


def test_a_nan_noise_augmentation_is_refused():
    with pytest.raises(ValueError, match="input 'noise_aug': must be a finite number"):
        stages.EmotiveTalkEDIReference().encode(NO_MODEL, NO_MODEL, _image(1, 32, 32, 3), 0, 0, float("nan"), 0)


@pytest.mark.parametrize("width, height, culprit", [(100, 0, "width"), (64, 96, "height")])
def test_a_size_the_model_cannot_make_is_refused_before_a_model_moves(monkeypatch, width, height, culprit):
    monkeypatch.setattr(stages.bridge, "use", lambda *args: pytest.fail("a model moved before the size was checked"))
    levels = SimpleNamespace(config=SimpleNamespace(block_out_channels=[32] * 4))  # 8 x 8 = multiples of 64
    model = SimpleNamespace(settings={"resolution": [512, 512]}, vae=levels, unet_levels=4)
    with pytest.raises(ValueError, match=f"EmotiveTalk EDI Reference, input '{culprit}': {culprit} must be a multiple of 64"):
        stages.EmotiveTalkEDIReference().encode(model, NO_MODEL, _image(1, 32, 32, 3), width, height, -1.0, 0)


@pytest.mark.parametrize("knob", ["reference_strength", "lip_strength", "expression_strength"])
def test_a_nan_strength_is_refused_before_sampling(knob):
    strengths = {"reference_strength": 2.0, "lip_strength": 1.0, "expression_strength": 1.0, knob: float("nan")}
    reference = SimpleNamespace(image=torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=f"EmotiveTalk ETHD Sampler, input '{knob}': {knob} must be a number"):
        stages.EmotiveTalkETHDSampler().sample(NO_MODEL, reference, None, None, 2, "euler", 0, motion=-1, window=0,
                                               overlap=0, lip_context=-1, **strengths)


def test_a_latent_of_another_shape_is_refused_by_decode():
    model = SimpleNamespace(vae=SimpleNamespace(config=SimpleNamespace(latent_channels=4)))
    for samples in (torch.zeros(3, 8, 4, 4), torch.zeros(0, 4, 4, 4), torch.zeros(4, 4, 4)):
        with pytest.raises(ValueError, match=r"EmotiveTalk Decode, input 'latent': expected an SVD-layout LATENT \[frames, 4, h, w\]"):
            output_nodes.EmotiveTalkDecode().decode(model, {"samples": samples}, 0)


def test_generate_refuses_bad_inputs_naming_itself_before_it_loads_a_model(monkeypatch):
    from nodes import generate

    def no_models(self, model_name):
        raise AssertionError("models were loaded before the audio was checked")

    monkeypatch.setattr(generate.EmotiveTalkGenerate, "models", no_models)
    # The node the user placed is named, not the stage nodes it runs inside.
    with pytest.raises(ValueError, match=r"^EmotiveTalk Generate \(all-in-one\), input 'audio'.*8000 audio samples are NaN"):
        generate.EmotiveTalkGenerate().generate(_image(1, 32, 32, 3), _audio(torch.full((1, 1, 8000), float("nan"))),
                                                "happy", 1.0, 0, 2, 0, 0, 25.0, "default")
    with pytest.raises(ValueError, match=r"^EmotiveTalk Generate \(all-in-one\), input 'portrait'"):
        generate.EmotiveTalkGenerate().generate(_image(1, 32, 32, 3, fill=float("nan")), _audio(torch.zeros((1, 1, 8000))),
                                                "happy", 1.0, 0, 2, 0, 0, 25.0, "default")
