"""The generation pipeline: frame count and padded audio, determinism, seams, the whole job."""

import logging
import math

import numpy as np
import pytest
import torch

from emotivetalk_core.chunking import over_chunks
from emotivetalk_core.emotion import EmotionSource, parse_timeline, single
from emotivetalk_core.media.audio import frame_count, frame_samples
from emotivetalk_core.media.video_reader import probe, read_metadata
from emotivetalk_core.metrics import boundary_transitions, seam_ratio
from emotivetalk_core.pipeline import (
    EmotiveTalkPipeline,
    decode_frames,
    fit_portrait,
    prepare_audio,
    shift_frames,
)
from emotivetalk_core.settings import GenerationSettings

SMALL = dict(steps=2, dicte_steps=2)  # at the default model's native size (32 px)


@pytest.fixture(scope="module")
def pipeline():
    return EmotiveTalkPipeline.from_files("default")


@pytest.fixture(scope="module")
def portrait():
    from skimage import data

    image = torch.from_numpy(data.astronaut()[0:256, 96:352].copy()).float() / 255
    return image.permute(2, 0, 1)[None]


def _tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.mark.parametrize("seconds", [0.2, 0.5, 1.37, 2.0])
@pytest.mark.parametrize("fps", [25, 30, 29.97, 24])
def test_frame_count_and_padded_audio(seconds, fps):
    source = _tone(seconds, 44100)
    prepared = prepare_audio(source, 44100, fps)
    samples_16k = prepared.source_samples
    assert prepared.num_frames == math.ceil(samples_16k * fps / 16000 - 1e-9) == frame_count(samples_16k, fps)
    # Padded with silence to N / fps (never cut), and that length still counts N frames.
    assert len(prepared.waveform) == frame_samples(prepared.num_frames, fps) >= samples_16k
    assert frame_count(len(prepared.waveform), fps) == prepared.num_frames
    assert not np.any(prepared.waveform[samples_16k:])
    assert abs(prepared.seconds - prepared.num_frames / fps) < 1 / 16000


def test_stereo_comfyui_audio_is_averaged_to_mono():
    left = _tone(0.5)
    prepared = prepare_audio(np.stack([left, -left])[None], 16000, 25)
    assert prepared.num_frames == 13 and np.allclose(prepared.waveform, 0)


def test_portrait_resize_rule_covers_then_centre_crops():
    image = torch.zeros(1, 3, 100, 200)
    image[..., 100:] = 1.0  # right half of the wide image
    fitted = fit_portrait(image, 64, 64)
    assert fitted.shape == (1, 3, 64, 64)
    assert fitted[..., :, :30].mean() < 0.05 and fitted[..., :, 34:].mean() > 0.95  # centre kept, not squashed


def test_face_masks_are_binary_so_the_adapters_leave_the_background_alone(pipeline, caplog):
    """ETHD trains on binary masks and every adapter branch is multiplied by the mask
    (tests/test_ethd.py: exactly zero where it is 0), so inference must give exact zeros too:
    the Face Processor's sigmoid never does, and a soft user mask would not."""
    from emotivetalk_core.pipeline import encode_reference, with_face_mask
    from emotivetalk_core.synth import world
    from emotivetalk_core.synth.evaluate import render_portrait

    face = torch.from_numpy(render_portrait(world.identity(7), 32)).float().permute(2, 0, 1)[None]
    face = face / 255 if face.max() > 1 else face
    found = encode_reference(pipeline.model, pipeline.vaid, face, 0, 0)
    assert found.mask_source == "face processor"
    assert set(found.face_mask.unique().tolist()) == {0.0, 1.0}  # face and background
    soft = torch.full((1, 64, 64), 0.2)
    soft[:, 16:48, 16:48] = 0.7
    given = encode_reference(pipeline.model, pipeline.vaid, face, 0, 0, mask=soft).face_mask
    assert set(given.unique().tolist()) == {0.0, 1.0}
    assert given.mean().item() == pytest.approx(0.25, abs=0.05)
    with caplog.at_level(logging.WARNING):
        faint = encode_reference(pipeline.model, pipeline.vaid, face, 0, 0, mask=torch.full((1, 64, 64), 0.4)).face_mask
    assert torch.equal(faint, torch.ones_like(faint)) and "no pixel above 0.5" in caplog.text
    # A mask given later (native Conditioning's face_mask) is treated as EDI Reference treats it.
    later = with_face_mask(found, soft)
    assert torch.equal(later.face_mask, given) and later.mask_source == "user mask"
    assert torch.equal(later.latent, found.latent) and not torch.equal(later.face_mask, found.face_mask)
    assert with_face_mask(found, torch.zeros(1, 64, 64)) is found  # LoadImage's mask of an image without alpha


def test_av_offset_shifts_frames():
    sequence = torch.arange(5.0)
    assert shift_frames(sequence, 2).tolist() == [0, 0, 0, 1, 2]
    assert shift_frames(sequence, -1).tolist() == [1, 2, 3, 4, 4]


def test_long_sequences_run_in_overlapping_chunks_without_steps():
    sequence = torch.linspace(0, 1, 1000)[:, None]
    calls = []

    def model(frames: slice) -> torch.Tensor:
        calls.append(frames.stop - frames.start)
        return sequence[frames] * 2

    result = over_chunks(model, 1000, chunk=100, context=20)
    assert max(calls) <= 140 and len(calls) == 10
    torch.testing.assert_close(result, sequence * 2)


@pytest.mark.parametrize("fps", [25, 29.97])
def test_speech_is_encoded_in_the_training_window(pipeline, monkeypatch, fps):
    # V-AID trained on each window's speech encoded alone: inference over speech three windows
    # long encodes it in windows no longer, each from its own stretch of the audio.
    from emotivetalk_core.pipeline import encode_speech

    window = pipeline.vaid.dicte.window
    audio = prepare_audio(_tone(3 * window / fps), 16000, fps)
    encoder, encoded = pipeline.vaid.speech_encoder, []
    plain_encode = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda waveform, frames, rate: encoded.append((len(waveform), frames))
                        or plain_encode(waveform, frames, rate))
    features = encode_speech(pipeline.vaid, audio)
    assert len(encoded) >= 3 and max(frames for _, frames in encoded) == window
    assert all(abs(samples - frames * 16000 / fps) <= 1 for samples, frames in encoded)
    one_pass = plain_encode(torch.from_numpy(audio.waveform), audio.num_frames, fps)
    if fps == 25:
        # The log-mel features are local and a window starts on the STFT's 10 ms grid at 25 fps
        # (640 samples a frame), so encoding in windows changes nothing one pass gives. (At 29.97
        # a window's grid is shifted by a few samples, which moves quiet mel bands, as it does for
        # training windows.)
        torch.testing.assert_close(features, one_pass, rtol=0, atol=1e-4)
    else:
        assert features.shape == one_pass.shape


def test_dicte_attends_within_its_training_window(pipeline, portrait):
    window = pipeline.vaid.dicte.window
    audio = prepare_audio(_tone(3 * window / 25), 16000, 25)
    attended = []
    handle = pipeline.vaid.dicte.layers[0].register_forward_pre_hook(lambda module, args: attended.append(args[0].shape[1]))
    try:
        pipeline.latents(portrait, audio, GenerationSettings(seed=1, **SMALL), single(EmotionSource("label", "happy"), 1.0))
    finally:
        handle.remove()
    assert max(attended) == window


def test_same_inputs_and_seed_give_identical_frames(pipeline, portrait):
    audio = prepare_audio(_tone(0.6), 16000, 25)
    settings = GenerationSettings(seed=7, **SMALL)
    timeline = single(EmotionSource("label", "happy"), 0.8)
    first, _ = pipeline.latents(portrait, audio, settings, timeline)
    second, _ = pipeline.latents(portrait, audio, settings, timeline)
    side = 32 // 2 ** (len(pipeline.model.vae.config.block_out_channels) - 1)  # native size / the VAE's downsampling
    assert first.shape == (audio.num_frames, 4, side, side)
    assert torch.equal(first, second)
    other, _ = pipeline.latents(portrait, audio, GenerationSettings(seed=8, **SMALL), timeline)
    assert not torch.equal(first, other)


# Half precision against float32 (the trained default model, 1.2 s, 6 steps): frames in 0..1 may
# differ by at most HALF_MEAN on average and HALF_MAX anywhere. The sampler carries rounding
# differences from step to step, so the figure depends on the model; measured on the default model:
# bfloat16 0.014 / 0.157, float16 0.008 / 0.096 (a broken cast or NaN reads far above).
HALF_MEAN, HALF_MAX = 0.02, 0.25


def _frames_in(dtype: torch.dtype, portrait) -> torch.Tensor:
    pipe = EmotiveTalkPipeline.from_files("default", dtype=dtype)
    assert {p.dtype for module in (pipe.model.ethd, pipe.model.vae, pipe.vaid.dicte) for p in module.parameters()} == {dtype}
    audio = prepare_audio(_tone(1.2), 16000, 25)
    settings = GenerationSettings(seed=5, steps=6, dicte_steps=6)
    latents, _ = pipe.latents(portrait, audio, settings, single(EmotionSource("label", "happy"), 1.0))
    return torch.cat(list(decode_frames(pipe.model, latents))).float()


@pytest.fixture(scope="module")
def float32_frames(portrait):
    return _frames_in(torch.float32, portrait)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gives_the_float32_video_within_tolerance(portrait, float32_frames, dtype):
    frames = _frames_in(dtype, portrait)
    assert torch.isfinite(frames).all()
    difference = (frames - float32_frames).abs()
    assert float(difference.mean()) < HALF_MEAN and float(difference.max()) < HALF_MAX, \
        (float(difference.mean()), float(difference.max()))


def test_the_fast_model_samples_as_it_was_distilled_unless_told_otherwise(pipeline, portrait, caplog):
    """Steps and strengths left unset are the model's: the default model's 25 guided steps of four
    UNet passes, the fast model's 6 of one (its distillation); a user's own choice wins, with a warning."""
    fast = EmotiveTalkPipeline.from_files("fast")
    guided, distilled = (GenerationSettings().sampling_plan(p.model, 33) for p in (pipeline, fast))
    assert (guided.calls_per_window, guided.passes) == (25, 4)
    assert (distilled.calls_per_window, distilled.passes) == (6, 1) and distilled.windows == guided.windows
    audio = prepare_audio(_tone(1.3), 16000, 25)
    for settings, calls, warned in ((GenerationSettings(dicte_steps=2), 6, False), (GenerationSettings(steps=2, dicte_steps=2), 2, True)):
        counted = []
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="emotivetalk_core.pipeline"):
            fast.latents(portrait, audio, settings, single(EmotionSource("label", "happy")),
                         progress=lambda done, total: counted.append(total))
        assert counted[-1] == distilled.windows * calls
        assert ("distilled for 6 euler steps" in caplog.text) is warned


def test_generate_writes_an_mp4_of_the_audio_length_with_settings(pipeline, portrait, tmp_path):
    audio = prepare_audio(_tone(1.3), 16000, 25)  # 33 frames: several ETHD windows of 8
    timeline = parse_timeline("0:neutral,0.5:angry@1.5~0.3")
    calls = []
    result = pipeline.generate_to_file(portrait, audio, tmp_path / "out.mp4", GenerationSettings(seed=3, **SMALL),
                                       timeline, progress=lambda done, total: calls.append((done, total)))
    info = probe(tmp_path / "out.mp4")
    assert info["frames"] == audio.num_frames == result.num_frames == 33
    assert abs(info["audio_duration"] - info["duration"]) <= 1 / 25
    assert calls[-1][0] == calls[-1][1] == len(calls)  # windows x steps, counted to the end
    metadata = read_metadata(tmp_path / "out.mp4")
    assert '"seed": 3' in metadata["emotivetalk_settings"]
    assert parse_timeline(metadata["emotivetalk_timeline"]) == timeline
    assert "sha256" in metadata["emotivetalk_models"]


def test_emotion_video_source_drives_the_expression(pipeline, portrait, tmp_path):
    from emotivetalk_core.media.video_writer import VideoWriter
    from emotivetalk_core.pipeline import expand_expression, encode_reference, encode_speech

    video = tmp_path / "emotion.mp4"
    with VideoWriter(video, 25, 64, 64) as writer:
        writer.write(np.random.default_rng(0).random((5, 64, 64, 3)).astype(np.float32))
    audio = prepare_audio(_tone(0.8), 16000, 25)
    speech = encode_speech(pipeline.vaid, audio)
    reference = encode_reference(pipeline.model, pipeline.vaid, portrait, 64, 64)
    codes = expand_expression(pipeline.vaid, speech, reference, single(EmotionSource("video", str(video))), 25, steps=2)
    assert codes.shape == (audio.num_frames, reference.expression.shape[0])
    neutral = expand_expression(pipeline.vaid, speech, reference, single(EmotionSource("video", str(video)), 0.0), 25, steps=2)
    torch.testing.assert_close(neutral, reference.expression.expand_as(neutral))  # intensity 0 = own expression


def test_emotion_videos_that_drive_every_frame_skip_dicte(pipeline, portrait, monkeypatch):
    from emotivetalk_core.pipeline import VAIDEmotionResolver, encode_reference, encode_speech, expand_expression

    def not_needed(*args, **kwargs):
        raise AssertionError("Di-CTE ran although the emotion video drives every frame")

    monkeypatch.setattr(pipeline.vaid.dicte, "sample", not_needed)
    audio = prepare_audio(_tone(0.8), 16000, 25)  # 20 frames
    frames = torch.rand(25, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # 1 s in memory, 25 fps
    resolver = VAIDEmotionResolver(pipeline.vaid, videos={"clip": (frames, 25)})
    reference = encode_reference(pipeline.model, pipeline.vaid, portrait, 64, 64)
    codes = expand_expression(pipeline.vaid, encode_speech(pipeline.vaid, audio), reference,
                              single(EmotionSource("video", "clip")), 25, steps=2, resolver=resolver)
    torch.testing.assert_close(codes, resolver.expressions(frames[:20]).to(codes.dtype), rtol=0, atol=1e-5)


# --- seams -------------------------------------------------------------------------------------

class DriftingModel(torch.nn.Module):
    """A stand-in ETHD whose output depends on where a frame sits in its window.

    Its denoised estimate is the speech-driven content of the frame (read from the lip tokens,
    consistent across windows, as a real model's) plus a drift along the window: the first
    frame of a window low, the last high, as a model whose frame positions restart per window.
    """

    def __init__(self, drift: float):
        super().__init__()
        self.drift = drift
        # Fixed spatial patterns, so frames have structure the VAE decoder (GroupNorm) keeps.
        patterns = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
        self.content_pattern = torch.nn.Parameter(patterns[0])
        self.drift_pattern = patterns[1]

    def forward(self, sample, timestep, image_embeds, added_time_ids, lip_windows, driven_exp, reference_exp, face_mask=None):
        sigma = torch.exp(4 * timestep).view(-1, 1, 1, 1, 1)
        x = sample[:, :, :4] * (sigma**2 + 1).sqrt()
        content = lip_windows[:, :, lip_windows.shape[2] // 2, :4, None, None] * self.content_pattern
        drift = self.drift * torch.linspace(-0.5, 0.5, x.shape[1]).view(1, -1, 1, 1, 1) * self.drift_pattern
        # v such that SVD's preconditioning turns it into denoised = content + drift.
        return (x / (sigma**2 + 1) - content - drift) * (sigma**2 + 1).sqrt() / sigma


def _drifting_video(fused: bool, num_frames: int = 48, window: int = 8):
    from emotivetalk_core.networks.ethd import lip_windows
    from emotivetalk_core.sampling import (Conditioning, GuidedDenoiser, Guidance, WindowedDenoiser, initial_noise,
                                           karras_sigmas, sample_euler, start_latents)

    model = DriftingModel(drift=1.0)
    t = torch.arange(num_frames, dtype=torch.float32)
    content = torch.stack([torch.sin(2 * math.pi * t / 96 + k) for k in range(4)], -1)
    windows_of_lip = lip_windows(content[None], 2)

    def conditioning(start, stop):
        return Conditioning(torch.zeros(1, 4, 4, 4), torch.zeros(1, 1, 8), torch.zeros(1, 3), windows_of_lip[:, start:stop],
                            torch.zeros(1, stop - start, 4), torch.zeros(1, 4))

    sigmas, noise, guidance = karras_sigmas(8), initial_noise(0, num_frames, (4, 4, 4)), Guidance(1.0, 1.0, 1.0)
    if fused:
        denoiser = WindowedDenoiser(GuidedDenoiser(model, conditioning(0, num_frames), guidance), window)
        return sample_euler(denoiser, start_latents(noise, sigmas), sigmas)[0], denoiser.spans(num_frames)
    # Negative control: fusion switched off, each window sampled on its own and butted together.
    spans = [(start, min(start + window, num_frames)) for start in range(0, num_frames, window)]
    parts = [sample_euler(GuidedDenoiser(model, conditioning(a, b), guidance), start_latents(noise[:, a:b], sigmas), sigmas)[0]
             for a, b in spans]
    return torch.cat(parts), spans


def test_window_fusion_leaves_no_seam_in_decoded_frames_and_the_control_shows_one(pipeline):
    from emotivetalk_core.svd.vae_decode import decode_latents

    ratios = {}
    for fused in (True, False):
        latents, spans = _drifting_video(fused)
        frames = torch.cat(list(decode_latents(pipeline.model.vae, latents, chunk=8, overlap=2)))
        ratios[fused] = seam_ratio(frames, spans)
    assert ratios[True] <= 1.5, ratios
    assert ratios[False] > ratios[True] and ratios[False] > 1.5, ratios


def test_boundary_transitions():
    assert boundary_transitions([(0, 8), (6, 14)]) == [5, 6, 7]
    assert boundary_transitions([(0, 8), (8, 16)]) == [7]
