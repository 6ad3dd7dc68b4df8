"""The ETHD loader node reuses ComfyUI's own SVD VAE and CLIP vision (from ImageOnlyCheckpointLoader)
instead of reading them again from the base checkpoint."""

import pytest
import torch

from emotivetalk_core.bundles import build_emotivetalk_model
from emotivetalk_core.checkpoints import save_model_file
from emotivetalk_core.configs import get_config
from emotivetalk_core.svd.convert import _vae_to_stability, diffusers_to_stability
from nodes import loaders


class ComfyObject:
    """What the loader uses of ComfyUI's VAE / CLIP_VISION objects: ``get_sd()``.

    ComfyUI's SVD VAE holds Stability's names without ``first_stage_model.``; its CLIP vision holds
    transformers' names (checked against ComfyUI 0.3.64's own classes at full SVD-XT size).
    """

    def __init__(self, state_dict):
        self.state_dict = state_dict

    def get_sd(self):
        return self.state_dict


@pytest.fixture
def adapter_and_base(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(7)
    config = get_config("tiny")
    model = build_emotivetalk_model(config)
    base = tmp_path / "models" / "checkpoints" / "svd_tiny.safetensors"
    base.parent.mkdir(parents=True)
    stability = diffusers_to_stability(model.ethd.unet.state_dict(), model.vae.state_dict(), model.image_encoder.state_dict())
    save_file({k: v.contiguous() for k, v in stability.items()}, str(base))
    save_model_file(tmp_path / "models" / "emotivetalk" / "adapter.safetensors",
                    {"adapter": (model.ethd.adapter_state_dict(), {"adapter": config["adapter"], "ethd": config["ethd"]})},
                    {"trained": True, "base_config": "tiny"})
    return model


def test_vae_and_clip_vision_inputs_are_used_as_they_are(adapter_and_base):
    model = adapter_and_base
    vae_sd = _vae_to_stability(model.vae.state_dict())
    clip_sd = dict(model.image_encoder.state_dict())
    (loaded,) = loaders.EmotiveTalkModelLoader().load("adapter.safetensors", "svd_tiny.safetensors",
                                                      ComfyObject(vae_sd), ComfyObject(clip_sd))
    # The very tensors ComfyUI holds: no second copy of the weights.
    assert loaded.vae.decoder.conv_in.weight.data_ptr() == vae_sd["decoder.conv_in.weight"].data_ptr()
    assert loaded.image_encoder.visual_projection.weight.data_ptr() == clip_sd["visual_projection.weight"].data_ptr()
    image = torch.rand(1, 3, 32, 32)  # the tiny image encoder's input size
    with torch.no_grad():
        torch.testing.assert_close(loaded.vae.decode(torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)),
                                                     num_frames=2).sample,
                                   model.vae.eval().decode(torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)),
                                                           num_frames=2).sample)
        torch.testing.assert_close(loaded.image_encoder(image).image_embeds, model.image_encoder.eval()(image).image_embeds)


def test_a_vae_that_is_not_svds_is_refused_with_what_to_connect(adapter_and_base):
    wrong = {"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}
    with pytest.raises(ValueError, match="VAE input is not Stable Video Diffusion's VAE.*Image Only Checkpoint Loader"):
        loaders.EmotiveTalkModelLoader().load("adapter.safetensors", "svd_tiny.safetensors", ComfyObject(wrong))


def test_clip_vision_in_comfyuis_mixed_dtypes_runs_in_its_weights_dtype(adapter_and_base):
    """ComfyUI 0.3.64 on the CPU holds SVD's CLIP vision in float16 but its layer norms and projection
    in float32 (its manual-cast layers compute in the input's dtype); a torch module needs one dtype.
    The odd tensors are cast, the float16 weights stay ComfyUI's own."""
    from emotivetalk_core.svd.conditioning import image_embeds

    model = adapter_and_base
    kept = ("pre_layrnorm", "post_layernorm", "visual_projection")
    clip_sd = {k: v if any(name in k for name in kept) else v.half() for k, v in model.image_encoder.state_dict().items()}
    (encoder,) = loaders.reused_svd_parts("tiny", None, ComfyObject(clip_sd)).values()
    assert {p.dtype for p in encoder.parameters()} == {torch.float16}
    weight = "vision_model.encoder.layers.0.mlp.fc1.weight"
    assert encoder.get_parameter(weight).data_ptr() == clip_sd[weight].data_ptr()
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(image_embeds(encoder, image).float(), image_embeds(model.image_encoder.eval(), image),
                                   rtol=2e-2, atol=2e-2)
