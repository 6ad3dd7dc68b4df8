"""svd.convert: Stability's single-file SVD layout <-> diffusers/transformers modules; svd.load: load_svd."""

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from emotivetalk_core.configs import get_config
from emotivetalk_core.svd.convert import (STABILITY_PREFIXES, diffusers_to_stability, stability_to_diffusers,
                                         transformer_paths)
from emotivetalk_core.svd.load import load_svd

# Names and shapes of every tensor in Stability's svd_xt.safetensors (no weights; see its "notes").
REFERENCE = Path(__file__).resolve().parent / "data" / "svd_xt_stability_keys.json"
SVD_XT_UNET_PARAMETERS = 1_524_623_082
FRAMES = 3

# Stand-ins for the two groups of the real file that nothing loads.
IGNORED_TENSORS = {
    "conditioner.embedders.0.open_clip.model.logit_scale": torch.tensor(4.6),
    "conditioner.embedders.3.encoder.quant_conv.weight": torch.ones(8, 8, 1, 1),
}


def _modules(config: dict) -> tuple:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return (
        UNetSpatioTemporalConditionModel(**config["unet"]),
        AutoencoderKLTemporalDecoder(**config["vae"]),
        CLIPVisionModelWithProjection(CLIPVisionConfig(**config["image_encoder"])),
    )


def _shapes(state_dict: dict) -> dict:
    return {name: list(tensor.shape) for name, tensor in state_dict.items()}


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())["tensors"]


@pytest.fixture(scope="module")
def svd_xt_meta() -> tuple:
    with torch.device("meta"):
        return _modules(get_config("svd-xt"))


@pytest.fixture(scope="module")
def tiny() -> tuple:
    """Tiny modules with every parameter perturbed, so no two same-shaped tensors are equal."""
    torch.manual_seed(0)
    modules = _modules(get_config("tiny"))
    with torch.no_grad():
        for module in modules:
            for parameter in module.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.05)
    quant_conv = modules[1].quant_conv.weight.flatten(1)
    assert not torch.allclose(quant_conv, torch.eye(quant_conv.shape[0]), atol=0.1)  # the fold is exercised
    return tuple(module.eval() for module in modules)


def _outputs(unet, vae, image_encoder) -> dict:
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(1, FRAMES, 8, 8, 8, generator=g)
    context = torch.randn(1, 1, 32, generator=g)
    images = torch.randn(FRAMES, 3, 32, 32, generator=g)
    latents = torch.randn(FRAMES, 4, 4, 4, generator=g)
    pixels = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        return {
            "unet": unet(sample, torch.tensor([0.7]), encoder_hidden_states=context,
                         added_time_ids=torch.tensor([[6.0, 127.0, 0.02]]), return_dict=False)[0],
            "encode_mean": vae.encode(images).latent_dist.mean,
            "decode": vae.decode(latents, num_frames=FRAMES).sample,
            "image_embeds": image_encoder(pixel_values=pixels).image_embeds,
        }


def _stability_file(path: Path, tiny: tuple, drop: str | None = None) -> Path:
    unet, vae, image_encoder = tiny
    tensors = diffusers_to_stability(unet.state_dict(), vae.state_dict(), image_encoder.state_dict())
    tensors.update(IGNORED_TENSORS)
    if drop is not None:
        del tensors[drop]
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(path))
    return path


# --- names and shapes of the real file ---------------------------------------------------------------

def test_svd_xt_modules_convert_to_exactly_the_reference_names_and_shapes(reference, svd_xt_meta):
    unet, vae, image_encoder = svd_xt_meta
    assert sum(p.numel() for p in unet.parameters()) == SVD_XT_UNET_PARAMETERS
    converted = _shapes(diffusers_to_stability(unet.state_dict(), vae.state_dict(), image_encoder.state_dict()))
    expected = {k: v for k, v in reference.items() if k.startswith(tuple(STABILITY_PREFIXES.values()))}
    assert len(expected) == 1428 + 372 + 392
    assert sorted(converted.keys() - expected.keys()) == []
    assert sorted(expected.keys() - converted.keys()) == []
    assert converted == expected


def test_reference_names_convert_back_to_exactly_the_diffusers_names_and_shapes(reference, svd_xt_meta, caplog):
    stability = {name: torch.empty(shape, device="meta") for name, shape in reference.items()}
    with caplog.at_level(logging.DEBUG, logger="emotivetalk_core.svd.convert"):
        converted = stability_to_diffusers(stability)
    for name, module in zip(("unet", "vae", "image_encoder"), svd_xt_meta):
        assert _shapes(converted[name]) == _shapes(module.state_dict()), name
    ignored = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "ignoring" in r.getMessage()]
    assert len(ignored) == 1
    assert "6 OpenCLIP text-tower leftovers" in ignored[0] and "248 conditioning-frame VAE" in ignored[0]


# --- values: tiny models through both formats ----------------------------------------------------------

def test_transformer_paths_place_each_adapter_on_the_video_transformer_of_the_same_name(reference):
    """The native path hooks ETHD's adapters onto ComfyUI's SVD UNet (Stability names): each
    adapter must land on the transformer its diffusers name means, and every one must exist."""
    prefix = STABILITY_PREFIXES["unet"]
    unet_keys = [name[len(prefix):] for name in reference if name.startswith(prefix)]
    paths = transformer_paths(unet_keys)
    assert len(paths) == 16
    assert paths["down_blocks_0_attentions_0"] == "input_blocks.1.1"
    assert paths["down_blocks_2_attentions_1"] == "input_blocks.8.1"
    assert paths["mid_block_attentions_0"] == "middle_block.1"
    assert paths["up_blocks_1_attentions_0"] == "output_blocks.3.1"
    assert paths["up_blocks_3_attentions_2"] == "output_blocks.11.1"
    assert all(f"{path}.proj_in.weight" in unet_keys for path in paths.values())


def test_transformer_paths_name_exactly_ethds_adapters():
    from emotivetalk_core.networks.ethd import ETHD
    from emotivetalk_core.svd.convert import _unet_to_stability

    ethd = ETHD.from_config(get_config("tiny"))
    paths = transformer_paths(_unet_to_stability(ethd.unet.state_dict()))
    assert set(paths) == set(ethd.adapters)


def test_stability_file_loads_with_identical_outputs(tiny, tmp_path):
    path = _stability_file(tmp_path / "svd_tiny.safetensors", tiny)
    loaded = load_svd(path, config="tiny")
    expected, actual = _outputs(*tiny), _outputs(*loaded)
    # Pure renames (and the split/fused q/k/v, transposed proj, 1x1-conv attention) are exact.
    for name in ("unet", "decode", "image_embeds"):
        assert torch.equal(actual[name], expected[name]), name
    # The file has no quant_conv: it is folded into encoder.conv_out, and the loaded VAE's is the
    # identity. One folded conv rounds differently from two convs in float32, so "close", not equal.
    assert torch.equal(loaded[1].quant_conv.weight.flatten(1), torch.eye(8))
    assert not loaded[1].quant_conv.bias.any()
    torch.testing.assert_close(actual["encode_mean"], expected["encode_mean"], rtol=1e-5, atol=1e-6)


def test_stability_layout_round_trip_is_bitwise(tiny):
    unet, vae, image_encoder = tiny
    stability = diffusers_to_stability(unet.state_dict(), vae.state_dict(), image_encoder.state_dict())
    back = diffusers_to_stability(**stability_to_diffusers(stability))
    assert back.keys() == stability.keys()
    assert all(torch.equal(back[name], stability[name]) for name in stability)
    # The identity quant_conv the reader adds is recognised: conv_out is written as it was, not refolded.
    assert back["first_stage_model.encoder.conv_out.weight"] is stability["first_stage_model.encoder.conv_out.weight"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_is_applied_while_reading(tiny, tmp_path, dtype):
    path = _stability_file(tmp_path / "svd_tiny.safetensors", tiny)
    for module in load_svd(path, config="tiny", dtype=dtype):
        assert {p.dtype for p in module.parameters()} == {dtype}


# Plain, the hub's fp16-variant file names, and sharded with an index.
@pytest.mark.parametrize("save", [{}, {"variant": "fp16"}, {"max_shard_size": "200KB"}])
def test_diffusers_folder_loads_with_identical_outputs(tiny, tmp_path, save):
    unet, vae, image_encoder = tiny
    unet.save_pretrained(tmp_path / "unet", safe_serialization=True, **save)
    vae.save_pretrained(tmp_path / "vae", safe_serialization=True, **save)
    image_encoder.save_pretrained(tmp_path / "image_encoder", **save)  # transformers 5 writes only safetensors
    assert not list(tmp_path.rglob("*.bin"))
    if save.get("max_shard_size"):
        assert len(list((tmp_path / "unet").glob("*.safetensors"))) > 1
    loaded = load_svd(tmp_path)
    expected, actual = _outputs(*tiny), _outputs(*loaded)
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


# --- meaning: the Stability tensors run through Stability's own formulas ----------------------------------
# Round trips cannot see a pairing that is wrong the same way in both directions (q and k swapped,
# proj transposed twice), so these forwards are written from OpenCLIP's and sgm's definitions.

def _open_clip_visual(tensors: dict, config, pixels: torch.Tensor) -> torch.Tensor:
    """OpenCLIP VisionTransformer (pre-norm, fused nn.MultiheadAttention, CLS pooling, ``@ proj``)."""
    from transformers.activations import ACT2FN

    def t(name):
        return tensors[STABILITY_PREFIXES["image_encoder"] + name]

    def norm(x, name):
        return F.layer_norm(x, x.shape[-1:], t(name + ".weight"), t(name + ".bias"), eps=1e-5)

    x = F.conv2d(pixels, t("conv1.weight"), stride=config.patch_size).flatten(2).transpose(1, 2)
    x = torch.cat([t("class_embedding").expand(x.shape[0], 1, -1), x], dim=1) + t("positional_embedding")
    x = norm(x, "ln_pre").transpose(0, 1)  # nn.MultiheadAttention is sequence-first
    for n in range(config.num_hidden_layers):
        block = f"transformer.resblocks.{n}."
        h = norm(x, block + "ln_1")
        x = x + F.multi_head_attention_forward(
            h, h, h, config.hidden_size, config.num_attention_heads, t(block + "attn.in_proj_weight"),
            t(block + "attn.in_proj_bias"), None, None, False, 0.0, t(block + "attn.out_proj.weight"),
            t(block + "attn.out_proj.bias"), need_weights=False)[0]
        h = F.linear(norm(x, block + "ln_2"), t(block + "mlp.c_fc.weight"), t(block + "mlp.c_fc.bias"))
        x = x + F.linear(ACT2FN[config.hidden_act](h), t(block + "mlp.c_proj.weight"), t(block + "mlp.c_proj.bias"))
    return norm(x[0], "ln_post") @ t("proj")


def _sgm_attn_block(tensors: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """ldm/sgm AttnBlock: GroupNorm, q/k/v as 1x1 convs, single-head softmax attention, proj_out, residual."""
    def conv(h, name):
        return F.conv2d(h, tensors[prefix + name + ".weight"], tensors[prefix + name + ".bias"])

    b, c, height, width = x.shape
    h = F.group_norm(x, 32, tensors[prefix + "norm.weight"], tensors[prefix + "norm.bias"], eps=1e-6)
    q, k, v = (conv(h, name).reshape(b, c, height * width) for name in "qkv")
    weights = torch.softmax(q.transpose(1, 2) @ k * c ** -0.5, dim=2)
    return x + conv((v @ weights.transpose(1, 2)).reshape(b, c, height, width), "proj_out")


def test_stability_image_encoder_tensors_mean_what_open_clip_means(tiny):
    unet, vae, image_encoder = tiny
    tensors = diffusers_to_stability(unet.state_dict(), vae.state_dict(), image_encoder.state_dict())
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = image_encoder(pixel_values=pixels).image_embeds
        actual = _open_clip_visual(tensors, image_encoder.config, pixels)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)  # same maths, other op order


@pytest.mark.parametrize("side", ["encoder", "decoder"])
def test_stability_vae_attention_tensors_mean_what_sgm_means(tiny, side):
    unet, vae, image_encoder = tiny
    tensors = diffusers_to_stability(unet.state_dict(), vae.state_dict(), image_encoder.state_dict())
    x = torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = getattr(vae, side).mid_block.attentions[0](x)
        actual = _sgm_attn_block(tensors, f"first_stage_model.{side}.mid.attn_1.", x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


# --- wrong files -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", ["model.diffusion_model.input_blocks.1.0.bogus.weight", "cond_stage_model.proj"])
def test_unknown_key_is_an_error_naming_it(tiny, extra):
    unet, vae, image_encoder = tiny
    stability = diffusers_to_stability(unet.state_dict(), vae.state_dict(), image_encoder.state_dict())
    stability[extra] = torch.zeros(1)
    with pytest.raises(ValueError, match=extra.replace(".", r"\.")):
        stability_to_diffusers(stability)


@pytest.mark.parametrize("drop", [
    "first_stage_model.decoder.up.0.block.1.time_stack.out_layers.3.bias",
    "model.diffusion_model.output_blocks.1.1.conv.weight",
    "conditioner.embedders.0.open_clip.model.visual.transformer.resblocks.1.attn.in_proj_bias",
])
def test_missing_key_is_an_error_naming_it(tiny, tmp_path, drop):
    path = _stability_file(tmp_path / "broken.safetensors", tiny, drop=drop)
    with pytest.raises(ValueError, match=drop.replace(".", r"\.")):
        load_svd(path, config="tiny")


def test_file_without_a_group_is_an_error(tiny, tmp_path):
    unet, vae, _ = tiny
    tensors = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    tensors.update({"first_stage_model.decoder.conv_in.weight": vae.state_dict()["decoder.conv_in.weight"]})
    path = tmp_path / "partial.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match=r"conditioner\.embedders\.0\.open_clip\.model\.visual\."):
        load_svd(path, config="tiny")


def test_pickle_checkpoints_are_refused(tmp_path):
    path = tmp_path / "svd_xt.ckpt"
    path.write_bytes(b"not read")
    with pytest.raises(ValueError, match="only .safetensors"):
        load_svd(path)


def test_missing_source_says_what_belongs_there(tmp_path):
    with pytest.raises(FileNotFoundError, match="svd_xt.safetensors") as raised:
        load_svd(tmp_path / "nowhere.safetensors")
    assert str(tmp_path / "nowhere.safetensors") in str(raised.value)
    (tmp_path / "folder" / "unet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"unet/, vae/ and image_encoder/"):
        load_svd(tmp_path / "folder")
