"""Sampler: SVD's preconditioning and schedule against diffusers, guidance, windows, samplers, noise."""

import copy

import numpy as np
import pytest
import torch

from emotivetalk_core.configs import get_config
from emotivetalk_core.networks.ethd import ETHD, lip_windows
from emotivetalk_core.sampling import (
    Conditioning,
    GuidedDenoiser,
    Guidance,
    WindowedDenoiser,
    fusion_weights,
    initial_noise,
    karras_sigmas,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    start_latents,
    window_spans,
)
from emotivetalk_core.svd.conditioning import added_time_ids, image_embeds, reference_latent

# Image guidance > 1 so the pipeline runs its classifier-free pass (it skips it at <= 1).
SVD_GUIDANCE = 2.5
FPS, MOTION_BUCKET, NOISE_AUG = 7, 127, 0.02
SIZE, FRAMES, STEPS = 64, 4, 3


# --- diffusers anchor ------------------------------------------------------------------------
def _svd_scheduler():
    """SVD-XT's scheduler_config.json (also diffusers' own SVD pipeline test)."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
        steps_offset=1, timestep_spacing="leading", timestep_type="continuous", trained_betas=None,
        use_karras_sigmas=True,
    )


@pytest.fixture(scope="module")
def tiny_svd():
    return _tiny_svd_models()


def _tiny_svd_models():
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = get_config("tiny")
    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(**cfg["unet"]).eval()
    vae = AutoencoderKLTemporalDecoder(**cfg["vae"]).eval()
    # The pipeline resizes to a fixed 224 px, so this encoder must take 224 px (the tiny config's
    # is 32); large patches keep it cheap.
    clip_cfg = dict(cfg["image_encoder"], image_size=224, patch_size=32)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_cfg)).eval()
    return cfg, unet, vae, image_encoder


def _portrait() -> "PIL.Image.Image":
    from PIL import Image

    pixels = np.random.default_rng(3).integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _as_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def _pipeline(tiny_svd):
    from diffusers import StableVideoDiffusionPipeline
    from transformers import CLIPImageProcessor

    _, unet, vae, image_encoder = tiny_svd
    # Built in code (no download): transformers' defaults are OpenAI CLIP's mean/std, as SVD's.
    return StableVideoDiffusionPipeline(vae=vae, image_encoder=image_encoder, unet=unet,
                                        scheduler=_svd_scheduler(), feature_extractor=CLIPImageProcessor())


def test_karras_sigmas_and_start_match_svd_scheduler():
    for steps in (1, 3, 25):
        scheduler = _svd_scheduler()
        scheduler.set_timesteps(steps)
        ours = karras_sigmas(steps)
        assert ours.dtype == torch.float32
        assert torch.equal(ours, scheduler.sigmas), (ours, scheduler.sigmas)
        assert torch.equal(0.25 * ours[:-1].log(), scheduler.timesteps)
        assert torch.equal(start_latents(torch.ones(()), ours), scheduler.init_noise_sigma)


def test_image_embeds_equal_pipeline_encode_image(tiny_svd):
    pipe = _pipeline(tiny_svd)
    image = _portrait()
    with torch.no_grad():
        expected = pipe._encode_image(image, "cpu", 1, do_classifier_free_guidance=False)
        ours = image_embeds(pipe.image_encoder, _as_tensor(image))
    assert ours.shape == expected.shape == (1, 1, 32)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_pipeline_anchor(tiny_svd):
    """Our conditioning + ETHD (zero adapters) + guidance + Euler == diffusers' SVD pipeline."""
    cfg, unet, vae, image_encoder = tiny_svd
    noise = torch.randn(1, FRAMES, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(11))
    image = _portrait()
    with torch.no_grad():
        expected = _pipeline(tiny_svd)(
            image, height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=STEPS,
            min_guidance_scale=SVD_GUIDANCE, max_guidance_scale=SVD_GUIDANCE, fps=FPS,
            motion_bucket_id=MOTION_BUCKET, noise_aug_strength=NOISE_AUG,
            generator=torch.Generator().manual_seed(5), latents=noise.clone(), output_type="latent",
        ).frames

    torch.manual_seed(1)  # adapters: random inputs projections, zero output projections
    ethd = ETHD(copy.deepcopy(unet), cfg["adapter"]).eval()
    pixels = _as_tensor(image)
    with torch.no_grad():
        conditioning = Conditioning(
            reference_latent=reference_latent(vae, pixels, NOISE_AUG, torch.Generator().manual_seed(5)),
            image_embeds=image_embeds(image_encoder, pixels),
            # The pipeline's fps=7 is the tensor value 6: SVD was trained on fps - 1.
            added_time_ids=added_time_ids(FPS - 1, MOTION_BUCKET, NOISE_AUG),
            **_random_tokens(ethd, FRAMES, driven_is_reference=True),
        )
    sigmas = karras_sigmas(STEPS)
    denoiser = GuidedDenoiser(ethd, conditioning, Guidance(reference=SVD_GUIDANCE, lip=1.7, expression=3.0))
    ours = sample_euler(denoiser, start_latents(noise, sigmas), sigmas)

    difference = (ours - expected).abs().max().item()
    assert difference < 1e-4, difference
    assert expected.abs().max() > 0.1  # a real signal, not two zeros


def _random_tokens(ethd: ETHD, frames: int, driven_is_reference: bool = False, seed: int = 7) -> dict:
    a = ethd.adapter_config
    g = torch.Generator().manual_seed(seed)
    reference = torch.randn(1, a["exp_dim"], generator=g)
    driven = reference[:, None].repeat(1, frames, 1) if driven_is_reference else torch.randn(1, frames, a["exp_dim"], generator=g)
    return {
        "lip_windows": lip_windows(torch.randn(1, frames, a["lip_dim"], generator=g), a["lip_context"]),
        "driven_exp": driven,
        "reference_exp": reference,
    }


def test_added_time_ids_are_the_tensor_values():
    ids = added_time_ids(6, 127, 0.02, batch_size=2)
    assert ids.shape == (2, 3)
    torch.testing.assert_close(ids, torch.tensor([[6.0, 127.0, 0.02]] * 2))


def test_reference_latent_is_unscaled_mode_with_noise_augmentation(tiny_svd):
    _, _, vae, _ = tiny_svd
    pixels = _as_tensor(_portrait())
    with torch.no_grad():
        clean = vae.encode(pixels * 2 - 1).latent_dist.mode()
        same_seed = [reference_latent(vae, pixels, 0.5, torch.Generator().manual_seed(2)) for _ in range(2)]
        no_aug = reference_latent(vae, pixels, 0.0, torch.Generator().manual_seed(2))
    torch.testing.assert_close(no_aug, clean)
    assert torch.equal(same_seed[0], same_seed[1])
    assert not torch.allclose(same_seed[0], clean, atol=1e-3)


# --- guidance --------------------------------------------------------------------------------
class _ConditionEcho(torch.nn.Module):
    """Fake ETHD whose output encodes which conditions it got (one number per condition)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, sample, timestep, image_embeds, added_time_ids, lip_windows, driven_exp, reference_exp,
                face_mask=None):
        self.calls.append(sample.shape[0])
        batch, frames = sample.shape[:2]
        has_latent = sample[:, :, 4:].abs().flatten(1).sum(1)
        has_embeds = image_embeds.abs().flatten(1).sum(1)
        lip = lip_windows.abs().flatten(1).sum(1)
        expression = (driven_exp - reference_exp[:, None]).abs().flatten(1).sum(1)
        code = 1.0 * (has_latent > 0) + 10.0 * (has_embeds > 0) + 100.0 * (lip > 0) + 1000.0 * (expression > 0)
        # Also depend on the input and the timestep, so scaling mistakes show.
        return sample[:, :, :4] * (1 + timestep.view(-1, 1, 1, 1, 1)) + code.view(batch, 1, 1, 1, 1)


def _echo_conditioning(frames: int, batch: int = 2) -> Conditioning:
    g = torch.Generator().manual_seed(0)
    return Conditioning(
        reference_latent=torch.randn(batch, 4, 4, 4, generator=g),
        image_embeds=torch.randn(batch, 1, 8, generator=g),
        added_time_ids=added_time_ids(6, 127, 0.02, batch_size=batch),
        lip_windows=torch.randn(batch, frames, 5, 3, generator=g),
        driven_exp=torch.randn(batch, frames, 6, generator=g),
        reference_exp=torch.randn(batch, 6, generator=g),
        face_mask=torch.ones(batch, 1, 32, 32),
    )


@pytest.mark.parametrize("s_ref, s_lip, s_exp", [(2.5, 1.0, 1.0), (1.0, 0.0, 0.0), (3.0, 2.0, 0.5), (0.0, 1.5, -1.0),
                                                 (2.0, 2.0, 2.0)])
def test_guidance_is_designs_formula(s_ref, s_lip, s_exp):
    model = _ConditionEcho()
    x = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor(1.7)
    denoiser = GuidedDenoiser(model, _echo_conditioning(3), Guidance(s_ref, s_lip, s_exp))
    denoised = denoiser(x, sigma)

    scale = (sigma**2 + 1) ** 0.5
    x_in, c_noise = x / scale, 0.25 * sigma.log()
    v_base = x_in * (1 + c_noise)
    e0, e_r, e_rl, e_rle = (v_base + code for code in (0.0, 11.0, 111.0, 1111.0))
    e = e0 + s_ref * (e_r - e0) + s_lip * (e_rl - e_r) + s_exp * (e_rle - e_rl)
    torch.testing.assert_close(denoised, x / (sigma**2 + 1) - sigma / scale * e, rtol=1e-6, atol=1e-5)
    # One UNet call per step, with only the passes whose coefficient is nonzero.
    passes = sum(c != 0 for c in Guidance(s_ref, s_lip, s_exp).coefficients().values())
    assert model.calls == [2 * passes]


def test_pass_skipping_rule():
    assert [n for n, _ in Guidance(1.0, 0.0, 0.0).active_passes()] == ["reference"]
    assert [n for n, _ in Guidance(2.5, 0.0, 0.0).active_passes()] == ["none", "reference"]
    # s_lip == 0 alone drops nothing: e_rl still enters with -s_exp.
    assert [n for n, _ in Guidance(2.5, 0.0, 1.0).active_passes()] == ["none", "reference", "lip", "expression"]
    assert [n for n, _ in Guidance(2.5, 2.5, 1.0).active_passes()] == ["none", "lip", "expression"]
    for g in (Guidance(2.5, 1.0, 3.0), Guidance(0.0, 0.0, 0.0), Guidance(1.0, 1.0, 1.0)):
        assert sum(g.coefficients().values()) == pytest.approx(1.0)


def test_guidance_stops_below_its_noise_level_with_one_pass_of_every_condition():
    """guidance_sigma_min: steps at lower noise run e_rle alone (one pass instead of four)."""
    x = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    guided = Guidance(2.0, 4.0, 2.0, sigma_min=1.0)
    for sigma, passes, same_as in ((3.0, 4, Guidance(2.0, 4.0, 2.0)), (1.0, 4, Guidance(2.0, 4.0, 2.0)),
                                   (0.5, 1, Guidance(1.0, 1.0, 1.0))):
        model, reference = _ConditionEcho(), _ConditionEcho()
        denoised = GuidedDenoiser(model, _echo_conditioning(3), guided)(x, torch.tensor(sigma))
        expected = GuidedDenoiser(reference, _echo_conditioning(3), same_as)(x, torch.tensor(sigma))
        assert model.calls == [2 * passes], sigma
        assert torch.equal(denoised, expected), sigma


def test_split_batches_equal_one_batch_fake_model():
    x = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    guidance = Guidance(2.5, 1.5, 0.7)
    whole_model, split_model = _ConditionEcho(), _ConditionEcho()
    whole = GuidedDenoiser(whole_model, _echo_conditioning(3), guidance)(x, torch.tensor(3.0))
    split = GuidedDenoiser(split_model, _echo_conditioning(3), guidance, max_batch=3)(x, torch.tensor(3.0))
    assert whole_model.calls == [8] and split_model.calls == [3, 3, 2]
    assert torch.equal(whole, split)


def test_split_batches_equal_one_batch_ethd():
    torch.manual_seed(0)
    ethd = ETHD.from_config(get_config("tiny")).eval()
    for module in ethd.adapters.modules():  # trained-looking adapters, so every pass differs
        if isinstance(module, torch.nn.Linear) and module.weight.abs().sum() == 0:
            torch.nn.init.normal_(module.weight, std=0.3)
    g = torch.Generator().manual_seed(4)
    conditioning = Conditioning(
        reference_latent=torch.randn(1, 4, 4, 4, generator=g), image_embeds=torch.randn(1, 1, 32, generator=g),
        added_time_ids=added_time_ids(6, 127, 0.02), face_mask=None, **_random_tokens(ethd, 2),
    )
    x = torch.randn(1, 2, 4, 4, 4, generator=g)
    guidance = Guidance(2.0, 1.5, 1.2)
    with torch.no_grad():
        whole = GuidedDenoiser(ethd, conditioning, guidance)(x, torch.tensor(5.0))
        split = GuidedDenoiser(ethd, conditioning, guidance, max_batch=1)(x, torch.tensor(5.0))
        no_lip = GuidedDenoiser(ethd, conditioning, Guidance(2.0, 0.0, 0.0))(x, torch.tensor(5.0))
    torch.testing.assert_close(whole, split, rtol=0, atol=1e-5)
    assert not torch.allclose(whole, no_lip, atol=1e-3)  # the lip/expression passes matter here


# --- windowed fusion -------------------------------------------------------------------------
class _RecordingModel(_ConditionEcho):
    """Echo model that also records each call's frame count and driven expressions."""

    def __init__(self):
        super().__init__()
        self.frames, self.driven = [], []

    def forward(self, sample, timestep, image_embeds, added_time_ids, lip_windows, driven_exp, reference_exp,
                face_mask=None):
        self.frames.append(sample.shape[1])
        self.driven.append(driven_exp)
        # Frame-dependent output (through the driven codes), so wrong slices change the result.
        out = super().forward(sample, timestep, image_embeds, added_time_ids, lip_windows, driven_exp, reference_exp,
                              face_mask)
        return out + driven_exp[:, :, :1, None, None]


def test_short_sequence_is_exactly_one_window():
    frames = 6
    conditioning = _echo_conditioning(frames)
    x = torch.randn(2, frames, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    guided = GuidedDenoiser(_RecordingModel(), conditioning, Guidance(2.0, 1.0, 1.0))
    for window in (6, 8):
        windowed = WindowedDenoiser(guided, window=window, overlap=2)
        assert windowed.spans(frames) == [(0, frames)]
        assert torch.equal(windowed(x, torch.tensor(2.0)), guided(x, torch.tensor(2.0)))


def test_long_sequence_runs_fixed_windows_and_fuses_them():
    frames, window, overlap = 21, 8, 3
    model = _RecordingModel()
    conditioning = _echo_conditioning(frames)
    guided = GuidedDenoiser(model, conditioning, Guidance(2.0, 1.0, 1.0))
    windowed = WindowedDenoiser(guided, window=window, overlap=overlap)
    spans = windowed.spans(frames)
    assert spans == [(0, 8), (5, 13), (10, 18), (13, 21)]  # stride 5, the last aligned to the end

    x = torch.randn(2, frames, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    fused = windowed(x, torch.tensor(2.0))
    assert model.frames == [window] * len(spans)  # one call per window, never the whole sequence
    for (start, stop), driven in zip(spans, model.driven):
        assert torch.equal(driven[-2:], conditioning.driven_exp[:, start:stop])  # the "expression" pass

    weights = fusion_weights(frames, window, overlap)
    total = torch.zeros(frames, dtype=torch.float64)
    for (start, stop), weight in zip(spans, weights):
        assert (weight > 0).all()
        total[start:stop] += weight
    torch.testing.assert_close(total, torch.ones(frames, dtype=torch.float64), rtol=0, atol=1e-12)

    # Fused = the weighted sum of each window's own estimate, computed here independently.
    expected = torch.zeros_like(x)
    for (start, stop), weight in zip(spans, weights):
        estimate = GuidedDenoiser(_RecordingModel(), conditioning.frames(start, stop), Guidance(2.0, 1.0, 1.0))(
            x[:, start:stop], torch.tensor(2.0))
        expected[:, start:stop] += weight.float().view(1, -1, 1, 1, 1) * estimate
    torch.testing.assert_close(fused, expected)


def test_fusion_weights_taper_towards_window_edges():
    weights = fusion_weights(13, 8, 3)  # windows (0, 8), (5, 13): a 3-frame linear cross-fade
    torch.testing.assert_close(weights[0][5:], torch.tensor([5 / 6, 3 / 6, 1 / 6], dtype=torch.float64))
    torch.testing.assert_close(weights[1][:3], torch.tensor([1 / 6, 3 / 6, 5 / 6], dtype=torch.float64))
    assert torch.equal(weights[0][:5], torch.ones(5, dtype=torch.float64))


def test_window_spans_cover_every_frame():
    for frames in range(1, 60):
        for window, overlap in ((8, 2), (14, 4), (14, 7), (25, 13)):
            spans = window_spans(frames, window, overlap)
            covered = torch.zeros(frames, dtype=torch.bool)
            for start, stop in spans:
                assert stop - start == min(window, frames)
                covered[start:stop] = True
            assert covered.all() and spans[-1][1] == frames
    with pytest.raises(ValueError):
        WindowedDenoiser(None, window=8, overlap=8)


# --- samplers --------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", [sample_euler, sample_heun, sample_dpmpp_2m])
def test_samplers_land_on_a_fixed_prediction(sampler):
    target = torch.randn(1, 3, 4, 2, 2, dtype=torch.float64)
    sigmas = karras_sigmas(7).double()
    x = start_latents(torch.randn(1, 3, 4, 2, 2, dtype=torch.float64), sigmas)
    seen = []
    out = sampler(lambda x, sigma: target, x, sigmas, callback=lambda info: seen.append(info["i"]))
    torch.testing.assert_close(out, target, rtol=0, atol=1e-9)
    assert seen == list(range(7))


def test_convergence_orders_on_gaussian_data():
    """Data ~ N(mu, s^2): the ideal denoiser and the ODE's solution are closed-form, so the error
    can be measured. Doubling the steps halves Euler's error (first order) and quarters Heun's
    and DPM-Solver++(2M)'s (second order; one call per step, as Euler)."""
    mu, s, sigma_max, sigma_min = 0.3, 0.5, 80.0, 0.1
    noise = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = mu + noise * (sigma_max**2 + s**2) ** 0.5
    exact = mu + noise * (sigma_min**2 + s**2) ** 0.5

    def denoiser(x, sigma):
        return mu + s**2 / (s**2 + sigma**2) * (x - mu)

    def error(sampler, steps):
        sigmas = karras_sigmas(steps, sigma_min=sigma_min, sigma_max=sigma_max).double()[:-1]  # stop at sigma_min
        return (sampler(denoiser, x.clone(), sigmas) - exact).abs().max()  # samplers step x in place

    euler_ratio = error(sample_euler, 20) / error(sample_euler, 40)
    heun_ratio = error(sample_heun, 20) / error(sample_heun, 40)
    assert 1.7 < euler_ratio < 2.5, euler_ratio
    assert heun_ratio > 3.5, heun_ratio
    assert error(sample_heun, 40) < error(sample_euler, 40) / 5
    # DPM-Solver++'s signed error crosses zero near 10 steps here: compare where it is asymptotic.
    dpmpp_ratio = error(sample_dpmpp_2m, 40) / error(sample_dpmpp_2m, 80)
    assert dpmpp_ratio > 3.5, dpmpp_ratio
    assert error(sample_dpmpp_2m, 40) < error(sample_euler, 40) / 5


def test_callback_can_cancel():
    class Cancelled(Exception):
        pass

    def cancel(info):
        if info["i"] == 1:
            raise Cancelled

    with pytest.raises(Cancelled):
        sample_euler(lambda x, sigma: x * 0, torch.ones(3), karras_sigmas(5), callback=cancel)


# --- initial noise ---------------------------------------------------------------------------
def test_initial_noise_depends_only_on_seed_and_frame():
    long = initial_noise(123, 30, (4, 8, 8))
    short = initial_noise(123, 10, (4, 8, 8))
    assert long.shape == (1, 30, 4, 8, 8)
    assert torch.equal(long[:, :10], short)
    assert not torch.equal(initial_noise(124, 10, (4, 8, 8)), short)
    assert not torch.equal(long[:, 0], long[:, 1])
    assert 0.9 < long.std() < 1.1


class _SmallMemoryModel(torch.nn.Module):
    """A stand-in UNet that runs out of memory, as a GPU (or the CPU allocator) would, on
    batches of more than ``limit`` samples."""

    def __init__(self, limit, error=torch.OutOfMemoryError):
        super().__init__()
        self.limit, self.error, self.sizes, self.failures = limit, error, [], 0
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, sample, timestep, image_embeds, **_):
        if self.limit is not None and sample.shape[0] > self.limit:
            self.failures += 1
            raise self.error("test: too many samples")
        self.sizes.append(sample.shape[0])
        return sample[:, :, :4] * timestep.view(-1, 1, 1, 1, 1) + image_embeds.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)


def _guided(model, frames=12):
    from emotivetalk_core.sampling import Conditioning, GuidedDenoiser, Guidance, WindowedDenoiser

    conditioning = Conditioning(torch.randn(1, 4, 2, 2), torch.randn(1, 1, 8), torch.zeros(1, 3), torch.randn(1, frames, 5, 4),
                                torch.randn(1, frames, 4), torch.randn(1, 4))
    guidance = Guidance(2.0, 1.5, 1.2)  # four passes
    return WindowedDenoiser(GuidedDenoiser(model, conditioning, guidance), window=8)


def _cpu_allocator_failure(message):
    return RuntimeError(f"[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory ({message})")


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, _cpu_allocator_failure], ids=["device", "host"])
def test_out_of_memory_splits_the_batch_and_keeps_the_split(error):
    """One UNet batch per step, split only when memory forces it; the result does not change."""
    frames = 12
    x = torch.randn(1, frames, 4, 2, 2)
    results = {}
    for limit in (None, 2):
        torch.manual_seed(0)
        model = _SmallMemoryModel(limit, error)
        denoiser = _guided(model, frames)
        results[limit] = denoiser(x, torch.tensor(3.0))
        results[limit] = denoiser(x, torch.tensor(1.0))  # second step: the split is remembered
        sizes, failures = model.sizes, model.failures
    assert sizes and max(sizes) <= 2
    assert failures == 1  # later windows and steps start from the split that worked
    torch.testing.assert_close(results[2], results[None])


def test_out_of_memory_at_one_sample_per_call_says_what_to_do():
    model = _SmallMemoryModel(limit=0)
    with pytest.raises(MemoryError, match="free memory on the device") as raised:
        _guided(model)(torch.randn(1, 12, 4, 2, 2), torch.tensor(1.0))
    assert isinstance(raised.value.__cause__, torch.OutOfMemoryError)  # the device's own message kept


def test_an_error_that_is_not_memory_is_not_retried():
    model = _SmallMemoryModel(limit=0, error=lambda message: RuntimeError(f"shape mismatch ({message})"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _guided(model)(torch.randn(1, 12, 4, 2, 2), torch.tensor(1.0))
    assert model.failures == 1  # raised at once, not halved down to one sample
