"""The 'base' stage (SVD's VAE and image encoder from scratch) and what uses it: a VAE whose
GroupNorms keep only their affine part, the stage's starting point, a short run and its export,
and ETHD trained on that export (init.base) down to the inference loader."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder
from train_helpers import write_synthetic_shards

from emotivetalk_core.bundles import (
    build_vaid_model,
    load_built,
    load_emotivetalk_model,
    vaid_components,
    vaid_info,
)
from emotivetalk_core.checkpoints import CheckpointError, load_model_file, read_metadata, save_model_file
from emotivetalk_core.configs import get_config
from emotivetalk_core.svd.build import ChannelAffine, build_image_encoder, build_vae
from emotivetalk_core.svd.vae_decode import decode_latents
from emotivetalk_core.train.base_stage import BaseStage
from emotivetalk_core.train.config import resolve_config
from emotivetalk_core.train.ethd_stage import ETHDStage
from emotivetalk_core.train.export import merge_exports
from emotivetalk_core.train.loop import train
from emotivetalk_core.train.shards import ClipDataset

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SYNTHTALK_VAE = get_config("synthtalk")["vae"]
# A smaller variant: one level (no downsampling).
SMALL_VAE = {"block_out_channels": [32], "down_block_types": ["DownEncoderBlock2D"], "layers_per_block": 1,
             "latent_channels": 4}
BASE_SIZE = 16  # pixels of the base run's faces: the VAE's cost decides the test's
# SynthTalk's model with a smaller image encoder for 16 px faces (projection_dim stays the
# UNet's cross-attention width, so ETHD can use it).
MODEL = {**get_config("synthtalk"),
         "image_encoder": {**get_config("synthtalk")["image_encoder"], "hidden_size": 16, "intermediate_size": 32,
                           "num_hidden_layers": 1, "image_size": BASE_SIZE}}


def _plain(config: dict) -> dict:
    return {key: value for key, value in config.items() if key != "norm_num_groups"}


# --- svd.build.build_vae: norm_num_groups -------------------------------------------------

@pytest.mark.parametrize("config", [SYNTHTALK_VAE, SMALL_VAE], ids=["synthtalk", "small"])
def test_vae_without_normalisation_has_svds_parameters_and_loads_either_way(config):
    torch.manual_seed(0)
    plain = AutoencoderKLTemporalDecoder(**_plain(config))
    affine = build_vae({**config, "norm_num_groups": 0})
    norms = sum(isinstance(module, torch.nn.GroupNorm) for module in plain.modules())
    assert norms > 0
    assert not any(isinstance(module, torch.nn.GroupNorm) for module in affine.modules())
    assert sum(isinstance(module, ChannelAffine) for module in affine.modules()) == norms
    plain_state, affine_state = plain.state_dict(), affine.state_dict()
    assert list(affine_state) == list(plain_state)
    assert all(affine_state[key].shape == plain_state[key].shape for key in plain_state)
    # weights load either way, strictly (load_built refuses missing or unexpected keys)
    load_built(affine, plain_state, "vae", "plain.safetensors")
    assert all(torch.equal(affine.state_dict()[key], plain_state[key]) for key in plain_state)
    load_built(build_vae(_plain(config)), affine_state, "vae", "affine.safetensors")


def test_channel_affine_scales_and_shifts_each_channel_without_normalising():
    norm = torch.nn.GroupNorm(2, 4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, -1.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.0, 1.0, 2.0, -3.0]))
    affine = ChannelAffine(norm)
    assert affine.weight is norm.weight and affine.bias is norm.bias  # the same parameters, the same names
    for shape in ((2, 4, 3, 3), (2, 4, 5, 3, 3)):  # images and the temporal decoder's [B, C, T, H, W]
        x = 3 + 2 * torch.randn(shape)  # a GroupNorm would remove this offset and scale
        view = (1, 4) + (1,) * (len(shape) - 2)
        expected = x * norm.weight.view(view) + norm.bias.view(view)
        torch.testing.assert_close(affine(x), expected, rtol=0, atol=1e-6)
    # a flat colour keeps its value (a per-image normalisation would map it to the bias)
    flat = torch.full((1, 4, 3, 3), 0.7)
    assert not torch.allclose(affine(flat), norm(flat))


def test_vae_norm_num_groups_regroups_and_refuses_a_non_divisor():
    regrouped = build_vae({**SYNTHTALK_VAE, "norm_num_groups": 8})
    groups = {module.num_groups for module in regrouped.modules() if isinstance(module, torch.nn.GroupNorm)}
    assert groups == {8}
    assert {module.num_groups for module in build_vae(_plain(SYNTHTALK_VAE)).modules()
            if isinstance(module, torch.nn.GroupNorm)} == {32}  # diffusers' fixed 32 without the key
    # the regrouped VAE normalises with 8 groups: the same weights give other outputs than 32 groups
    plain = build_vae(_plain(SYNTHTALK_VAE))
    plain.load_state_dict(regrouped.state_dict())
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert not torch.allclose(regrouped.encode(x).latent_dist.mean, plain.encode(x).latent_dist.mean)
    with pytest.raises(ValueError, match="norm_num_groups 5 does not divide a 32-channel GroupNorm"):
        build_vae({**SYNTHTALK_VAE, "norm_num_groups": 5})
    with pytest.raises(ValueError, match="norm_num_groups 3"):
        build_vae({**SMALL_VAE, "norm_num_groups": 3})


# --- the base stage: its starting point ---------------------------------------------------

def _built_vae(options: dict | None = None, seed: int = 0):
    torch.manual_seed(seed)
    stage = BaseStage()
    return stage.build({"model": MODEL, "train": {}, "base": dict(options or {})})["vae"]


def _window_against_frames(vae, latents: torch.Tensor) -> float:
    """Largest difference between decoding ``latents`` as one window and frame by frame."""
    with torch.no_grad():
        whole = vae.decode(latents, num_frames=len(latents)).sample
        alone = torch.cat([vae.decode(latents[i:i + 1], num_frames=1).sample for i in range(len(latents))])
    return float((whole - alone).abs().max())


def test_base_vae_starts_as_a_per_frame_decoder_with_a_small_posterior_variance():
    latents = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    vae = _built_vae()
    # The default blend (mix logit -6) leaves 0.25% of the temporal branch; a decoder of the same
    # weights as diffusers initialises it mixes neighbouring frames by tens of percent.
    random = build_vae(MODEL["vae"])
    random.load_state_dict({k: v for k, v in vae.state_dict().items() if "mix_factor" not in k and "time_conv_out" not in k},
                           strict=False)
    assert _window_against_frames(random, latents) > 0.05
    assert _window_against_frames(vae, latents) < 1e-3
    assert _window_against_frames(_built_vae({"initial_mix_logit": -20.0}), latents) < 1e-5

    frames = torch.rand(3, 3, BASE_SIZE, BASE_SIZE) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(frames).latent_dist
        torch.testing.assert_close(posterior.logvar, torch.full_like(posterior.logvar, -8.0))
        smaller = _built_vae({"initial_logvar": -5.0}).encode(frames).latent_dist
        torch.testing.assert_close(smaller.logvar, torch.full_like(smaller.logvar, -5.0))
    assert posterior.mean.std() > 0.01  # the means still depend on the image


# --- the base stage: a short run and its export ---------------------------------------------

@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A 12-step base run on learnable 16 px faces; EMA on, so the export must use the EMA weights
    for its scaling factor too."""
    root = tmp_path_factory.mktemp("base")
    shards = write_synthetic_shards(root / "shards", videos=2, clips=2, frames=8, learnable=True, size=BASE_SIZE)
    raw = {"stage": "base", "model": MODEL, "data": {"shards": str(shards), "window": 2, "reference": "video"},
           "train": {"seed": 0, "steps": 12, "batch_size": 4, "lr": 3e-3, "checkpoint_every": 12, "log_every": 2,
                     "ema_decay": 0.5},
           "base": {"scale_windows": 6},
           "output": str(root / "run")}
    config = resolve_config(raw)
    # Module fixtures are set up before the function-scoped one_thread fixture: single-thread here too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = train(config)
    finally:
        torch.set_num_threads(threads)
    return run, config


def test_a_base_run_learns_to_reconstruct(base_run):
    run, _ = base_run
    logged = [json.loads(line) for line in (run / "logs" / "losses.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logged] == list(range(2, 13, 2))
    first, last = logged[0], logged[-1]
    assert last["reconstruction"] < 0.7 * first["reconstruction"], (first, last)
    assert {"loss", "reconstruction", "kl", "identity"} <= set(last)


def test_base_export_scales_the_latents_to_unit_variance_and_loads(base_run):
    run, config = base_run
    path = run / "export" / "base.safetensors"
    configs, info = read_metadata(path)
    assert sorted(configs) == ["image_encoder", "vae"] and info["stage"] == "base"
    scaling = configs["vae"]["scaling_factor"]
    assert configs["vae"] == {**MODEL["vae"], "scaling_factor": scaling}
    assert scaling == pytest.approx(1 / info["latent_std"])
    states, _, _ = load_model_file(path)
    vae = load_built(build_vae(configs["vae"]), states["vae"], "vae", path)
    assert vae.config.scaling_factor == scaling
    assert any(isinstance(module, ChannelAffine) for module in vae.modules())  # norm_num_groups 0 kept
    data = ClipDataset(config["data"]["shards"], config["data"]["window"])
    with torch.no_grad():
        means = torch.cat([vae.encode(data[index]["frames"] * 2 - 1).latent_dist.mean.flatten() for index in range(6)])
    assert float((means * scaling).std()) == pytest.approx(1.0, abs=0.05)
    assert info["latent_std"] == pytest.approx(float(means.std()), rel=1e-4)  # the first scale_windows (6) windows
    assert abs(scaling - 1) > 0.2  # the measurement matters: the raw latents are not unit variance
    load_built(build_image_encoder(configs["image_encoder"]), states["image_encoder"], "image_encoder", path)


# --- ETHD on a base export (init.base) ----------------------------------------------------

def _ethd_config(run, config: dict, **options) -> dict:
    """An ETHD config on the base run's shards whose own model VAE is diffusers' plain one: what
    ETHD uses must come from init.base."""
    model = {**MODEL, "vae": _plain(MODEL["vae"])}
    return {"stage": "ethd", "model": model, "data": {"shards": config["data"]["shards"], "window": 8},
            "init": {"base": str(run / "export" / "base.safetensors")}, "train": {}, "ethd": options}


def test_ethd_on_a_base_export_uses_its_vae_and_image_encoder_and_records_them(base_run, tmp_path):
    run, config = base_run
    base_path = run / "export" / "base.safetensors"
    base_states, base_configs, _ = load_model_file(base_path)

    with pytest.raises(ValueError, match="ethd.train_unet"):
        ETHDStage().build(_ethd_config(run, config))

    ethd_config = _ethd_config(run, config, train_unet=True)
    torch.manual_seed(0)
    stage = ETHDStage()
    modules = stage.build(ethd_config)
    for name in ("vae", "image_encoder"):
        state = modules[name].state_dict()
        assert state.keys() == base_states[name].keys()
        assert all(torch.equal(state[key], base_states[name][key]) for key in state), name
    assert modules["vae"].config.scaling_factor == base_configs["vae"]["scaling_factor"]
    assert any(isinstance(module, ChannelAffine) for module in modules["vae"].modules())
    assert all(p.requires_grad for p in modules["ethd"].unet.parameters())

    # The export records the base's VAE (scaling factor, norm_num_groups 0), not the model's.
    with torch.no_grad():
        exported = stage.export(modules, ethd_config)
    assert set(exported) == {"unet", "adapter", "vae", "image_encoder"}
    assert exported["vae"][1] == base_configs["vae"] and exported["vae"][1]["norm_num_groups"] == 0
    assert exported["image_encoder"][1] == base_configs["image_encoder"]
    ethd_path = save_model_file(tmp_path / "ethd.safetensors", exported,
                                {"trained": True, "note": "test", "stage": "ethd", **stage.export_info(modules, ethd_config)})

    # The inference file merged from the stage exports decodes with the base's VAE and scale.
    torch.manual_seed(1)
    vaid = build_vaid_model(MODEL)
    vaid_path = save_model_file(tmp_path / "vaid.safetensors", vaid_components(vaid, MODEL),
                                {"trained": True, "note": "test", "stage": "vaid", **vaid_info(vaid)})
    merged = merge_exports([base_path, vaid_path, ethd_path], tmp_path / "model.safetensors")
    model = load_emotivetalk_model(merged)
    assert model.vae.config.scaling_factor == base_configs["vae"]["scaling_factor"]
    base_vae = load_built(build_vae(base_configs["vae"]), base_states["vae"], "vae", base_path).eval()
    latents = torch.randn(4, 4, BASE_SIZE // 2, BASE_SIZE // 2, generator=torch.Generator().manual_seed(2))
    decoded = torch.cat(list(decode_latents(model.vae, latents, chunk=4, overlap=0)))
    with torch.no_grad():
        expected = base_vae.decode(latents, num_frames=4).sample
    torch.testing.assert_close(decoded, ((expected + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1), rtol=0, atol=1e-5)


def test_init_base_must_be_a_base_export(base_run, tmp_path):
    run, config = base_run
    ethd_config = _ethd_config(run, config, train_unet=True)
    ethd_config["init"]["base"] = str(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="missing.safetensors"):  # not a silent random base
        ETHDStage().build(ethd_config)
