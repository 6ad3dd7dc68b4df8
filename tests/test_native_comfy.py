"""The native ComfyUI path (nodes/comfy_native.py) inside a real ComfyUI, in-process on the CPU.

Skips unless COMFY_HOME points at a ComfyUI checkout (``$COMFY_HOME/ComfyUI``) that imports: CI has
no ComfyUI. Run with ComfyUI's own venv, e.g.
``COMFY_HOME=/work/comfy /work/comfy/venv/bin/python -m pytest -q tests/test_native_comfy.py``.
Uses the shipped default model (16x16 latents, 8-frame clips), a few frames and steps.
"""

import importlib
import os
import sys
from pathlib import Path

import pytest
import torch


def _comfy_available() -> bool:
    home = os.environ.get("COMFY_HOME")
    if not home or not (Path(home) / "ComfyUI").is_dir():
        return False
    # Appended, not prepended: ComfyUI's top-level nodes.py must not shadow the pack's nodes package.
    sys.path.append(str(Path(home) / "ComfyUI"))
    try:
        from comfy.cli_args import args
    except ImportError:
        return False
    args.cpu = True  # before any other comfy import picks a device
    importlib.import_module("comfy.model_management")
    return True


pytestmark = pytest.mark.skipif(not _comfy_available(), reason="no ComfyUI here (set COMFY_HOME to run)")

FRAMES, WINDOW, OVERLAP, STEPS, SEED = 12, 8, 2, 4, 3
TOLERANCE = 1e-3  # ComfyUI's UNet rounds differently from diffusers' (time embedding at batch F vs 1)


def _max_difference(native: torch.Tensor, pack: torch.Tensor) -> float:
    """max |native - pack| relative to the latents' scale when that is above 1 (4 Heun steps from
    sigma 700 leave latents up to ~17, and rounding differences grow with them)."""
    return float((native - pack).abs().max() / max(1.0, float(pack.abs().max())))


@pytest.fixture(scope="module")
def native():
    from nodes import comfy_native
    from nodes.loaders import EmotiveTalkModelLoader

    (model,) = EmotiveTalkModelLoader().load("default")
    (base,) = comfy_native.EmotiveTalkUNetToModel().convert(model)
    (applied,) = comfy_native.EmotiveTalkApply().apply(base, "default", model)
    return model, base, applied


@pytest.fixture(scope="module")
def streams(native):
    """A Reference, lip stream and expression of the default model's shapes (random, fixed)."""
    from emotivetalk_core.pipeline import Reference

    model = native[0]
    adapter = model.ethd.adapter_config
    g = torch.Generator().manual_seed(0)
    reference = Reference(
        image=torch.rand(1, 3, 32, 32, generator=g), latent=torch.randn(1, 4, 16, 16, generator=g),
        image_embeds=torch.randn(1, 1, model.ethd.unet.config.cross_attention_dim, generator=g),
        expression=torch.randn(adapter["exp_dim"], generator=g), identity=torch.randn(8, generator=g),
        face_mask=(torch.rand(1, 1, 32, 32, generator=g) > 0.3).float(), noise_aug=0.02)
    lip = torch.randn(FRAMES, adapter["lip_dim"], generator=g)
    expression = torch.randn(FRAMES, adapter["exp_dim"], generator=g)
    return reference, lip, expression


def _native_sample(applied, reference, lip, expression, sampler="euler", sigmas=None, guidance=(2.0, 4.0, 2.0), **inputs):
    from comfy_extras.nodes_custom_sampler import KSamplerSelect, SamplerCustomAdvanced

    from nodes import comfy_native

    positive, negative, latent = comfy_native.EmotiveTalkConditioning().encode(applied, reference, lip, expression, -1, -1,
                                                                               **inputs)
    (guider,) = comfy_native.EmotiveTalkGuider().get_guider(applied, positive, negative, *guidance, WINDOW, OVERLAP)
    (noise,) = comfy_native.EmotiveTalkNoiseNode().get_noise(SEED)
    if sigmas is None:
        (sigmas,) = comfy_native.EmotiveTalkSigmas().get_sigmas(STEPS)
    (sampler_object,) = KSamplerSelect().get_sampler(sampler)
    output, _ = SamplerCustomAdvanced().sample(noise, guider, sampler_object, sigmas, latent)
    return output


def _pack_sample(model, reference, lip, expression, sampler="euler"):
    from emotivetalk_core import pipeline
    from emotivetalk_core.settings import GenerationSettings

    settings = GenerationSettings(steps=STEPS, sampler=sampler, seed=SEED, window=WINDOW, overlap=OVERLAP)
    return pipeline.sample_latents(model, reference, lip, expression, settings)


def _transformers(applied):
    from nodes import comfy_native

    root = applied.model.diffusion_model
    return [root.get_submodule(path) for path in applied.get_attachment(comfy_native.KEY).paths.values()]


def _hook_count(applied) -> int:
    return sum(len(block._forward_hooks) for t in _transformers(applied)
               for block in [*t.transformer_blocks, t.time_mixer])


def _unet_inputs(model, streams, frames=5):
    """One UNet call's inputs, for ComfyUI's UNet and for ETHD.forward alike."""
    from emotivetalk_core.networks.ethd import lip_windows

    reference, lip, expression = streams
    g = torch.Generator().manual_seed(1)
    x = torch.randn(frames, 4, 16, 16, generator=g)
    sample = torch.cat([x, reference.latent.expand(frames, -1, -1, -1)], dim=1)
    c_noise = torch.full((frames,), 0.25 * torch.tensor(3.0).log().item())
    windows = lip_windows(lip[None], model.ethd.lip_context)[:, :frames]  # real neighbours, as the window sees
    return sample, c_noise, windows, expression[None, :frames]


def test_adapters_sit_where_ethd_puts_them(native, streams):
    """One UNet call through the Applied MODEL equals ETHD.forward on the same inputs within 1e-3
    (measured max |diff| 4.0e-5 on outputs up to 5.3; the default model's adapters change the
    output by up to 1.09, so they are active and placed as in ETHD)."""
    from emotivetalk_core.svd.conditioning import added_time_ids
    from nodes import comfy_native

    model, base, applied = native
    reference = streams[0]
    sample, c_noise, windows, driven = _unet_inputs(model, streams)
    frames = sample.shape[0]
    time_ids = added_time_ids(model.settings["fps_id"], model.settings["motion_bucket"], reference.noise_aug)
    fps_id, motion, augmentation = time_ids[0].tolist()
    y = base.model.encode_adm(fps=fps_id + 1, motion_bucket_id=motion, augmentation_level=augmentation).expand(frames, -1)
    conditioning = _conditioning(model, streams)
    items = [comfy_native.PassStreams(conditioning.frames(0, frames), "expression")]
    call = dict(context=reference.image_embeds.expand(frames, -1, -1), y=y, num_video_frames=frames)
    with torch.no_grad():
        native_out = applied.model.diffusion_model(sample, c_noise, transformer_options={"wrappers": applied.wrappers},
                                                   emotivetalk=items, **call)
        plain = base.model.diffusion_model(sample, c_noise, transformer_options={}, **call)
        ethd_out = model.ethd(sample[None], c_noise[:1], reference.image_embeds, time_ids, windows, driven,
                              reference.expression[None], reference.face_mask)[0]
    assert (native_out - ethd_out).abs().max() < TOLERANCE
    assert (native_out - plain).abs().max() > 0.1
    assert _hook_count(applied) == 0  # the hooks lived only for the call


def test_zero_adapters_give_plain_comfyui_svd_bitwise(native, streams):
    """Fresh adapters (zero output projections) hooked on by the wrapper change nothing, bit for bit."""
    from emotivetalk_core.networks.ethd import AdapterSet, transformer_shapes
    from nodes import comfy_native

    model, base, applied = native
    native_adapters = applied.get_attachment(comfy_native.KEY)
    root = base.model.diffusion_model
    shapes = {name: transformer_shapes(root.get_submodule(p)) for name, p in native_adapters.paths.items()}
    wrapper = comfy_native.AdapterWrapper(AdapterSet(model.ethd.adapter_config, shapes), native_adapters.paths)
    sample, c_noise, _, _ = _unet_inputs(model, streams)
    frames = sample.shape[0]
    items = [comfy_native.PassStreams(_conditioning(model, streams).frames(0, frames), "expression")]
    call = dict(context=streams[0].image_embeds.expand(frames, -1, -1), y=torch.zeros(frames, 24), num_video_frames=frames)
    with torch.no_grad():
        zero = root(sample, c_noise, transformer_options={"wrappers": {"diffusion_model": {"t": [wrapper]}}},
                    emotivetalk=items, **call)
        plain = root(sample, c_noise, transformer_options={}, **call)
    assert torch.equal(zero, plain)


def _conditioning(model, streams):
    from emotivetalk_core import pipeline
    from emotivetalk_core.settings import GenerationSettings

    reference, lip, expression = streams
    return pipeline.stream_conditioning(reference, lip, expression, model.settings, model.ethd.lip_context,
                                        GenerationSettings())


def test_adapters_are_shared_by_clones_and_never_leak_into_the_base(native):
    """Apply reads the adapters once (the same module in every Applied clone, and in a clone of
    a clone, in one ModelPatcher: ComfyUI warns of a memory leak when a patcher dies while its module
    lives on in another); the base MODEL gets no wrapper; a second Apply on an Applied MODEL replaces
    the first."""
    from comfy.patcher_extension import WrappersMP

    from nodes import comfy_native

    model, base, applied = native
    (again,) = comfy_native.EmotiveTalkApply().apply(base, "default")
    (twice,) = comfy_native.EmotiveTalkApply().apply(applied, "default")
    adapters = applied.get_attachment(comfy_native.KEY).adapters
    assert again.get_attachment(comfy_native.KEY).adapters is adapters
    assert applied.clone().get_attachment(comfy_native.KEY).adapters is adapters
    assert applied.clone().get_additional_models_with_key(comfy_native.KEY)[0].model is adapters
    assert again.get_additional_models_with_key(comfy_native.KEY)[0] is applied.get_additional_models_with_key(comfy_native.KEY)[0]
    assert base.get_attachment(comfy_native.KEY) is None
    assert not base.get_wrappers(WrappersMP.DIFFUSION_MODEL, comfy_native.KEY)
    assert len(twice.get_wrappers(WrappersMP.DIFFUSION_MODEL, comfy_native.KEY)) == 1
    assert _hook_count(applied) == 0


def test_all_guidance_passes_of_a_window_run_as_one_unet_call(native, streams):
    """Four passes, one batched call per window and model call (2 windows x 4 steps of Euler)."""
    from comfy.patcher_extension import WrappersMP

    from nodes import comfy_native

    model, base, _ = native
    calls = []

    def record(executor, *args, **kwargs):
        calls.append([item.name for item in kwargs["emotivetalk"]])
        return executor(*args, **kwargs)

    recording = base.clone()
    recording.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "record", record)  # outside Apply's wrapper
    (applied,) = comfy_native.EmotiveTalkApply().apply(recording, "default")
    _native_sample(applied, *streams)
    assert len(calls) == 2 * STEPS
    assert all(sorted(names) == ["expression", "lip", "none", "reference"] for names in calls)


def test_guider_strengths_at_minus_one_are_the_applied_files_own(native, streams):
    """At the widgets' default (-1) the Guider guides as the Applied file samples: the default
    model's 2, 4, 2 (four passes per call), the fast model's 1, 1, 1 (one pass: its distillation)."""
    from comfy.patcher_extension import WrappersMP

    from nodes import comfy_native
    from nodes.loaders import EmotiveTalkModelLoader

    (fast,) = EmotiveTalkModelLoader().load("fast")
    (fast_base,) = comfy_native.EmotiveTalkUNetToModel().convert(fast)
    for name, base, passes in (("default", native[1], ["expression", "lip", "none", "reference"]),
                               ("fast", fast_base, ["expression"])):
        calls = []
        recording = base.clone()
        recording.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "record",
                                       lambda executor, *args, **kwargs: calls.append(sorted(item.name for item in kwargs["emotivetalk"]))
                                       or executor(*args, **kwargs))
        (applied,) = comfy_native.EmotiveTalkApply().apply(recording, name)
        _native_sample(applied, *streams, guidance=(-1.0, -1.0, -1.0))
        assert calls and all(names == passes for names in calls), (name, calls[:2])


def test_native_sampling_gives_the_pack_samplers_latents(native, streams):
    """EmotiveTalk Noise + Guider + core euler + EmotiveTalk Sigmas in SamplerCustomAdvanced equal
    the pack's ETHD sampler (12 frames = 2 windows of 8, overlap 2, 4 steps) within 1e-3 on the
    LATENT (measured max |diff| 5.2e-5, mean 6.8e-6, on latents up to 5.0), and no hook is left after."""
    model, base, applied = native
    native_latent = _native_sample(applied, *streams)["samples"]
    pack = _pack_sample(model, *streams)
    assert native_latent.shape == pack.shape == (FRAMES, 4, 16, 16)
    assert _max_difference(native_latent, pack) < TOLERANCE
    assert _hook_count(applied) == 0


def test_conditioning_takes_svds_fps_and_a_face_mask(native, streams):
    """Conditioning's fps reaches SVD's fps conditioning (0 = the model's value) and changes the
    frames; its face mask replaces the reference's, fitted to the reference's size, and changes the
    frames; an all-zero mask (LoadImage's for an image without alpha) keeps the reference's."""
    from nodes import comfy_native

    model, _, applied = native
    reference = streams[0]

    def conditioned(**inputs):
        positive, _, _ = comfy_native.EmotiveTalkConditioning().encode(applied, *streams, -1, -1, **inputs)
        return positive[0][1]["fps"], comfy_native.streams_of(positive).conditioning.face_mask

    assert conditioned()[0] == model.settings["fps_id"] + 1 != 30
    assert conditioned(fps=30)[0] == 30
    left = torch.zeros(1, 64, 64)
    left[:, :, :32] = 1  # twice the reference's 32 px: fitted, not stretched or refused
    expected = torch.zeros(1, 1, 32, 32)
    expected[..., :16] = 1
    assert torch.equal(conditioned(face_mask=left)[1], expected) and not torch.equal(reference.face_mask, expected)
    assert torch.equal(conditioned(face_mask=torch.zeros(1, 64, 64))[1], reference.face_mask)
    plain = _native_sample(applied, *streams)
    for inputs in ({"fps": 30}, {"face_mask": left}):
        assert _max_difference(_native_sample(applied, *streams, **inputs)["samples"], plain["samples"]) > 1e-3, inputs


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m"])
def test_core_second_order_samplers_match_the_packs(native, streams, sampler):
    """Core heun and dpmpp_2m against the pack's own (same sigmas, noise and windows): within 1e-3
    relative to the latents' scale (measured: heun max |diff| 6.4e-4 on latents up to 15.9, i.e.
    4.0e-5 relative; dpmpp_2m 8.2e-5 on latents up to 4.2)."""
    model, _, applied = native
    native_latent = _native_sample(applied, *streams, sampler=sampler)["samples"]
    assert _max_difference(native_latent, _pack_sample(model, *streams, sampler=sampler)) < TOLERANCE


def test_other_core_samplers_and_schedulers_run(native, streams):
    """An ancestral sampler with core Karras sigmas from the MODEL runs and gives finite latents."""
    from comfy_extras.nodes_custom_sampler import KarrasScheduler

    _, _, applied = native
    (sigmas,) = KarrasScheduler().get_sigmas(STEPS, 700.0, 0.002, 7.0)
    latent = _native_sample(applied, *streams, sampler="euler_ancestral", sigmas=sigmas)["samples"]
    assert torch.isfinite(latent).all()


def test_post_cfg_patches_see_the_least_and_most_conditioned_estimates(native, streams):
    """What CFG++ samplers and post-CFG patches read (core CFG's uncond/cond estimates): on one step
    from sigma 700 to 0 (Euler's result is then the denoised estimate itself), the step's
    "uncond_denoised" equals the sample at guidance (0, 0, 0) (only e0), "cond_denoised" the sample
    at (1, 1, 1) (only e_rle), and "denoised" the guided sample."""
    from comfy_extras.nodes_custom_sampler import KarrasScheduler

    _, _, applied = native
    (one_step,) = KarrasScheduler().get_sigmas(1, 700.0, 0.002, 7.0)
    seen = []
    patched = applied.clone()
    patched.set_model_sampler_post_cfg_function(lambda args: seen.append(args) or args["denoised"])
    guided = _native_sample(patched, *streams, sigmas=one_step)["samples"]
    assert len(seen) == 1
    args = {name: applied.model.process_latent_out(seen[0][name])  # the sampler's space -> the LATENT's
            for name in ("denoised", "uncond_denoised", "cond_denoised")}
    for name, guidance in (("uncond_denoised", (0.0, 0.0, 0.0)), ("cond_denoised", (1.0, 1.0, 1.0))):
        expected = _native_sample(applied, *streams, sigmas=one_step, guidance=guidance)["samples"]
        assert _max_difference(args[name], expected) < TOLERANCE, name
    assert _max_difference(args["denoised"], guided) < TOLERANCE
    assert _max_difference(args["uncond_denoised"], args["cond_denoised"]) > 0.01  # the passes differ


def test_cfg_pp_samplers_run_and_reduce_to_their_plain_sampler_without_guidance(native, streams):
    """CFG++ Euler renoises with the uncond estimate: with one pass per step (guidance (1, 1, 1))
    uncond = guided and it is plain Euler; with the default guidance it runs and differs."""
    _, _, applied = native
    single = (1.0, 1.0, 1.0)
    plain = _native_sample(applied, *streams, sampler="euler", guidance=single)["samples"]
    cfg_pp = _native_sample(applied, *streams, sampler="euler_cfg_pp", guidance=single)["samples"]
    assert _max_difference(cfg_pp, plain) < TOLERANCE
    guided = _native_sample(applied, *streams, sampler="euler_cfg_pp")["samples"]
    assert torch.isfinite(guided).all()
    assert _max_difference(guided, _native_sample(applied, *streams, sampler="euler")["samples"]) > TOLERANCE


class _CoreSVDPart:
    """ComfyUI's VAE / CLIP_VISION as Native Reference uses them: a patcher to load, ``get_sd()``."""

    def __init__(self, module, state_dict):
        import comfy.model_patcher

        cpu = torch.device("cpu")
        holder = torch.nn.Module()  # ComfyUI's patcher sets .device, which diffusers' modules do not allow
        holder.module = module
        self.patcher = comfy.model_patcher.ModelPatcher(holder, load_device=cpu, offload_device=cpu)
        self.state_dict = state_dict

    def get_sd(self):
        return self.state_dict


def test_native_reference_reads_the_portrait_as_edi_reference_does(native):
    """Native Reference with the VAE and CLIP vision ComfyUI would hold (Stability's VAE names,
    transformers' CLIP names) gives EDI Reference's latent, embedding, codes and mask; a size the
    model cannot make is refused by name."""
    from emotivetalk_core.svd.convert import STABILITY_PREFIXES, diffusers_to_stability
    from nodes import comfy_native
    from nodes.loaders import EmotiveTalkVAIDLoader
    from nodes.stages import EmotiveTalkEDIReference

    model, _, applied = native
    (vaid,) = EmotiveTalkVAIDLoader().load("default")
    prefix = STABILITY_PREFIXES["vae"]
    stability = diffusers_to_stability(model.ethd.unet.state_dict(), model.vae.state_dict(), model.image_encoder.state_dict())
    vae = _CoreSVDPart(model.vae, {k[len(prefix):]: v for k, v in stability.items() if k.startswith(prefix)})
    clip_vision = _CoreSVDPart(model.image_encoder, dict(model.image_encoder.state_dict()))
    portrait = torch.rand(1, 40, 48, 3, generator=torch.Generator().manual_seed(2))  # IMAGE, not the model's size
    native_reference, native_mask = comfy_native.EmotiveTalkNativeReference().encode(
        applied, vae, clip_vision, vaid, portrait, 0, 0, -1.0, 5)
    reference, mask = EmotiveTalkEDIReference().encode(model, vaid, portrait, 0, 0, -1.0, 5)
    for name in ("latent", "image_embeds", "expression", "identity", "face_mask"):
        torch.testing.assert_close(getattr(native_reference, name), getattr(reference, name), msg=name)
    torch.testing.assert_close(native_mask, mask)
    with pytest.raises(ValueError, match="EmotiveTalk Native Reference, input 'width': width must be a multiple"):
        comfy_native.EmotiveTalkNativeReference().encode(applied, vae, clip_vision, vaid, portrait, 42, 0, -1.0, 5)


def test_refusals_name_the_input_and_the_fix(native, streams):
    from emotivetalk_core.bundles import build_emotivetalk_model
    from emotivetalk_core.configs import get_config
    from nodes import comfy_native

    model, base, applied = native
    positive, negative, _ = comfy_native.EmotiveTalkConditioning().encode(applied, *streams, -1, -1)
    guider = comfy_native.EmotiveTalkGuider()
    with pytest.raises(ValueError, match="EmotiveTalk Guider, input 'model': .*connect the MODEL from EmotiveTalk Apply"):
        guider.get_guider(base, positive, negative, 2.0, 4.0, 2.0, 0, 0)
    plain = [[streams[0].image_embeds, {"fps": 25, "motion_bucket_id": 127, "augmentation_level": 0.02}]]
    with pytest.raises(ValueError, match="EmotiveTalk Guider, input 'positive': .*connect EmotiveTalk Conditioning"):
        guider.get_guider(applied, plain, negative, 2.0, 4.0, 2.0, 0, 0)
    with pytest.raises(ValueError, match="EmotiveTalk Guider, input 'overlap'"):
        guider.get_guider(applied, positive, negative, 2.0, 4.0, 2.0, 4, 4)
    with pytest.raises(ValueError, match="EmotiveTalk Conditioning, input 'model'"):
        comfy_native.EmotiveTalkConditioning().encode(base, *streams, -1, -1)
    with pytest.raises(ValueError, match="EmotiveTalk Conditioning, input 'lip_context'"):
        comfy_native.EmotiveTalkConditioning().encode(applied, *streams, -1, 9)
    torch.manual_seed(0)
    (other,) = comfy_native.EmotiveTalkUNetToModel().convert(build_emotivetalk_model(get_config("tiny")))
    with pytest.raises(ValueError, match="EmotiveTalk Apply: the adapters in .* (were trained on another SVD|do not fit)"):
        comfy_native.EmotiveTalkApply().apply(other, "default")


def test_a_core_clip_gives_the_embeddings_of_the_same_text_encoders_folder(tmp_path):
    """EmotiveTalk Emotion Text's clip input: ComfyUI's own CLIP-L (Load CLIP, type stable_diffusion)
    gives the embeddings a transformers folder of the same weights gives, so a Mapping trained on that
    folder takes it; another CLIP is refused."""
    import shutil

    import comfy.sd
    import comfy.sd1_clip
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from emotivetalk_core.networks.text import TransformersTextEncoder, check_text_encoder, embed_prompt, text_record
    from nodes.emotion_nodes import clip_embedder

    def clip_l(seed: int) -> tuple:
        """A random CLIP-L text tower as a transformers folder (ComfyUI's tokenizer files) and as a ComfyUI file."""
        torch.manual_seed(seed)
        config = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                                projection_dim=768, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
                                pad_token_id=49407)
        model = CLIPTextModelWithProjection(config)
        folder = tmp_path / f"clip-l-{seed}"
        model.save_pretrained(folder)
        for file in (Path(comfy.sd1_clip.__file__).parent / "sd1_tokenizer").iterdir():
            shutil.copy(file, folder)
        path = tmp_path / f"clip_l_{seed}.safetensors"
        save_file({name: tensor.half().contiguous() for name, tensor in model.state_dict().items()}, str(path))
        return folder, comfy.sd.load_clip(ckpt_paths=[str(path)], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)

    folder, clip = clip_l(0)
    prompts = ["speak seriously", "Be (very) cheerful and say that sentence"]  # parentheses are text, not weights
    reference = TransformersTextEncoder(folder)
    similarity = torch.nn.functional.cosine_similarity(clip_embedder(clip)(prompts), reference(prompts), dim=1)
    assert float(similarity.min()) > 0.999, similarity
    record = text_record("clip-l-0", reference)
    check_text_encoder(record, embed_prompt(clip_embedder(clip), prompts[1]).probes, "ComfyUI's CLIP")
    _, other = clip_l(1)
    with pytest.raises(ValueError, match="not the text encoder"):
        check_text_encoder(record, embed_prompt(clip_embedder(other), prompts[1]).probes, "ComfyUI's CLIP")


@pytest.mark.parametrize("masked", [True, False], ids=["pads-masked", "pads-unmasked"])
def test_a_core_text_encoder_without_a_pooled_output_gives_the_folders_mean_embedding(tmp_path, masked):
    """A T5 (Load CLIP, type stable_audio: T5-base, no pooled output) gives the mean of its token
    states that a transformers folder of the same weights gives; whether ComfyUI masks the pads it
    appends (as for T5-base) or runs them through the encoder (as SD3 runs T5-XXL loaded alone) does
    not change it, nor does a CLIP Set Last Layer, so a Mapping trained on that folder takes it."""
    import json
    import shutil

    import comfy.sd
    import comfy.text_encoders.sa_t5
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    from emotivetalk_core.networks.text import TransformersTextEncoder, check_text_encoder, embed_prompt, text_record
    from nodes.emotion_nodes import clip_embedder

    comfy_dir = Path(comfy.text_encoders.sa_t5.__file__).parent
    torch.manual_seed(0)
    # ComfyUI builds T5-base from its own config: the random weights must have those shapes.
    model = T5EncoderModel(T5Config(**json.loads((comfy_dir / "t5_config_base.json").read_text())))
    folder = tmp_path / "t5-base-random"
    model.save_pretrained(folder)
    for file in (comfy_dir / "t5_tokenizer").iterdir():
        shutil.copy(file, folder)
    path = tmp_path / "t5_base_random.safetensors"
    save_file({name: tensor.clone().contiguous() for name, tensor in model.state_dict().items()}, str(path))
    clip = comfy.sd.load_clip(ckpt_paths=[str(path)], clip_type=comfy.sd.CLIPType.STABLE_AUDIO)
    clip.cond_stage_model.t5base.enable_attention_masks = masked
    clip.cond_stage_model.t5base.zero_out_masked = masked
    clip.clip_layer(-2)  # CLIP Set Last Layer, for the workflow's prompts

    prompts = ["speak seriously", "Be (very) cheerful and say that sentence"]  # parentheses are text
    reference = TransformersTextEncoder(folder)
    similarity = torch.nn.functional.cosine_similarity(clip_embedder(clip)(prompts), reference(prompts), dim=1)
    assert float(similarity.min()) > 0.999, similarity
    size = clip_embedder(clip)(prompts).norm(dim=1) / reference(prompts).norm(dim=1)
    assert torch.allclose(size, torch.ones(2), atol=1e-3), size  # the mean of the same tokens, not diluted by pads
    check_text_encoder(text_record("t5-base-random", reference),
                       embed_prompt(clip_embedder(clip), prompts[1]).probes, "ComfyUI's CLIP")
