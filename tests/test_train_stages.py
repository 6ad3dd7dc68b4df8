"""The vaid and ethd training stages: they learn, each clip's terms do not depend on its batch,
they feed the networks what inference feeds them (nulls of the guidance included), and their
exports load in the inference loaders."""

from collections import Counter

import numpy as np
import pytest
import torch

from emotivetalk_core.bundles import (
    build_vaid_model,
    load_emotivetalk_model,
    load_vaid_model,
)
from emotivetalk_core.checkpoints import save_model_file
from emotivetalk_core.configs import get_config
from emotivetalk_core.networks.edi import TokenCrossAttention, face_region
from emotivetalk_core.networks.ethd import lip_windows
from emotivetalk_core.sampling import Guidance, GuidedDenoiser
from emotivetalk_core.svd.build import build_unet
from emotivetalk_core.svd.conditioning import image_embeds, reference_latent
from emotivetalk_core.train.ethd_stage import ETHDStage, motion_buckets, nested_passes
from emotivetalk_core.train.loop import SteppedClips
from emotivetalk_core.train.noise import SampleNoise
from emotivetalk_core.train.shards import ClipDataset, write_shard
from emotivetalk_core.train.vaid_stage import VAIDStage, dicte_loss

SIZE, FPS, RATE, WINDOW, CLIP_FRAMES = 64, 25, 16000, 8, 16
PER_FRAME = RATE // FPS
LABELS = list(get_config("tiny")["mapping"]["labels"])
EMOTIONS = ("happy", "angry", "neutral", None)  # one clip each (None: unlabelled); 2 windows per clip
BROW_SHIFT = {"happy": -4, "angry": 5, "neutral": 0, None: 2}
ETHD_INPUTS = ("sample", "timestep", "image_embeds", "added_time_ids", "lip_windows", "driven_exp", "reference_exp",
               "face_mask")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --- a learnable toy: the mouth opens with the audio's loudness ----------------------------

def _faces(opening: np.ndarray, brow: int, background) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    face = ((yy - 0.55) / 0.42) ** 2 + ((xx - 0.5) / 0.33) ** 2 < 1
    frames = np.empty((len(opening), SIZE, SIZE, 3), np.uint8)
    for k, amount in enumerate(opening):
        image = np.empty((SIZE, SIZE, 3))
        image[:] = background
        image[face] = (225, 180, 150)
        image[((yy - 0.78) / (0.02 + 0.09 * amount)) ** 2 + ((xx - 0.5) / 0.12) ** 2 < 1] = (70, 20, 30)
        for x in (0.36, 0.64):
            image[((yy - 0.45) / 0.04) ** 2 + ((xx - x) / 0.06) ** 2 < 1] = (30, 30, 30)
            image[(abs(yy - 0.35 - brow / SIZE) < 0.02) & (abs(xx - x) < 0.08)] = (60, 40, 20)
        frames[k] = image
    return frames, np.repeat(face[None].astype(np.uint8) * 255, len(opening), 0)


def _speech(opening: np.ndarray, rng) -> np.ndarray:
    t = np.arange(len(opening) * PER_FRAME) / RATE
    loudness = np.repeat(0.02 + 0.5 * opening, PER_FRAME)
    return (loudness * np.sin(2 * np.pi * 220 * t) + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    # Every frame of the data set has its own mouth opening, so every frame is identifiable.
    levels = rng.permutation(len(EMOTIONS) * CLIP_FRAMES) / (len(EMOTIONS) * CLIP_FRAMES - 1)
    for number, emotion in enumerate(EMOTIONS):
        opening = levels[number * CLIP_FRAMES:(number + 1) * CLIP_FRAMES]
        frames, mask = _faces(opening, BROW_SHIFT[emotion], rng.integers(0, 255, 3))
        clip = {"frames": frames, "mask": mask, "audio": _speech(opening, rng), "box": np.zeros((CLIP_FRAMES, 4), np.float32),
                "lip_target": np.zeros((CLIP_FRAMES, 4), np.float32), "exp_target": np.zeros((CLIP_FRAMES, 4), np.float32)}
        info = {"source": f"video{number}.mp4", "identity": f"person{number}", "emotion": emotion, "level": None,
                "fps": FPS, "sample_rate": RATE, "size": SIZE, "targets": {"tool": "toy", "lip_dim": 4, "exp_dim": 4}}
        write_shard(root / f"video{number}.safetensors", [clip], info)
    return root


def _config(shards, stage: str, options: dict | None = None, init: dict | None = None, train: dict | None = None) -> dict:
    return {
        "stage": stage,
        "model": get_config("tiny"),
        "data": {"shards": str(shards), "window": WINDOW, "labels": LABELS},
        "init": {"encoders": None, "vaid": None, "base_svd": None, "speech_encoder": None, **(init or {})},
        "train": {"gradient_checkpointing": False, **(train or {})},
        stage: dict(options or {}),
    }


def _batch(shards, indices: list[int], step: int = 0, window: int = WINDOW, audio_context: int = 0) -> dict:
    """A collated batch as the training loop makes it (the seeded reference frame included)."""
    data = SteppedClips(ClipDataset(shards, window, LABELS, audio_context=audio_context), seed=0)
    return torch.utils.data.default_collate([data[(index, step)] for index in indices])


def _build(stage_class, config: dict, seed: int = 0):
    torch.manual_seed(seed)
    stage = stage_class()
    return stage, stage.build(config)


def _optimizer(stage, modules, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam([p for name in stage.trainable(modules) for p in modules[name].parameters()
                             if p.requires_grad], lr=lr)


def _save(stage, modules, config, path):
    with torch.no_grad():
        return save_model_file(path, stage.export(modules, config),
                               {"trained": True, "note": "test", **stage.export_info(modules, config)})


# --- vaid ------------------------------------------------------------------------------------


def _train(stage, modules, batch, optimizer, steps: int) -> None:
    """A plain Adam loop over one batch, fresh noise each step (steps 1..steps)."""
    for step in range(1, steps + 1):
        loss = stage.loss(modules, batch, SampleNoise(0, step))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

def test_vaid_losses_fall_on_a_learnable_toy_and_the_export_loads(shards, tmp_path):
    from emotivetalk_core.pipeline import PreparedAudio, encode_speech, lip_stream

    config = _config(shards, "vaid")
    stage, modules = _build(VAIDStage, config)
    optimizer = _optimizer(stage, modules, 3e-3)
    batch = _batch(shards, [0, 2, 4, 6])  # one window of each clip: 32 frames

    def losses():
        with torch.no_grad():
            return stage.loss(modules, batch, SampleNoise(0, 0))

    before = losses()
    _train(stage, modules, batch, optimizer, steps=120)
    after = losses()
    assert after["pull"] < 0.5 * before["pull"], (before, after)
    assert after["pull_top1"] > 0.5
    for name in ("dicte", "lip_scale"):
        assert after[name] < 0.5 * before[name], (name, before, after)
    assert after["mapping"] < 0.8 * before["mapping"]

    loaded = load_vaid_model(_save(stage, modules, config, tmp_path / "vaid.safetensors"))
    # The exported projector on the pipeline's speech features is the trained one on the stage's.
    audio = PreparedAudio(batch["audio"][1].numpy(), WINDOW, float(FPS))
    with torch.no_grad():
        expected = modules["lip_projector"](stage.speech.features(batch["audio"][1:2], WINDOW))[0]
    torch.testing.assert_close(lip_stream(loaded, encode_speech(loaded, audio)), expected, rtol=0, atol=1e-6)

    files = stage.sample(modules, batch, tmp_path, 120)
    assert [path.suffix for path in files] == [".safetensors", ".json"] and all(path.is_file() for path in files)


def test_dicte_term_of_each_clip_is_dicte_loss_on_that_clip_alone():
    from emotivetalk_core.networks.dicte import DiCTE

    torch.manual_seed(0)
    dicte = DiCTE(get_config("tiny")["dicte"])
    for layer in dicte.layers:  # adaLN-Zero starts blind to the condition; make it matter
        torch.nn.init.normal_(layer.modulation[-1].weight, std=0.2)
    g = torch.Generator().manual_seed(1)
    batch, frames = 8, WINDOW
    e_v, condition, uncond = (torch.randn(batch, frames, 16, generator=g), torch.randn(batch, 16, generator=g),
                              torch.randn(batch, 16, generator=g))
    speech, identity = torch.randn(batch, frames, 1, 32, generator=g), torch.randn(batch, 16, generator=g)
    noise, index = SampleNoise(3, 7), torch.tensor([5, 0, 11, 2, 9, 4, 13, 7])
    with torch.no_grad():
        terms, _ = dicte_loss(dicte, e_v, speech, identity, condition, uncond, 0.5, noise, index)
        kept, _ = dicte_loss(dicte, e_v, speech, identity, condition, uncond, 0.0, noise, index)
        for row, i in enumerate(index.tolist()):
            alone, _ = dicte.loss(e_v[row:row + 1], speech[row:row + 1], identity[row:row + 1], condition[row:row + 1],
                                  uncond[row:row + 1], drop_prob=0.5, generator=noise.generator("vaid.dicte", i))
            torch.testing.assert_close(terms[row], alone, rtol=0, atol=1e-6)
    dropped = (terms != kept).sum().item()
    assert 0 < dropped < batch  # both branches of the condition dropout happened


def test_vaid_per_clip_terms_do_not_depend_on_the_batch(shards):
    stage, modules = _build(VAIDStage, _config(shards, "vaid"))
    noise = SampleNoise(0, 3)
    with torch.no_grad():
        pair = stage.loss(modules, _batch(shards, [1, 6]), noise)
        alone = [stage.loss(modules, _batch(shards, [index]), noise) for index in (1, 6)]
    # pull and push are batch-wide (InfoNCE negatives, correlations): the stage documents it.
    for name in ("dicte", "mapping", "lip_scale"):
        torch.testing.assert_close(pair[name], (alone[0][name] + alone[1][name]) / 2, rtol=0, atol=1e-6)


def test_vaid_gradient_checkpointing_gives_the_same_gradients(shards):
    batch, noise = _batch(shards, [0, 3]), SampleNoise(0, 2)
    gradients = []
    for checkpointing in (False, True):
        stage, modules = _build(VAIDStage, _config(shards, "vaid", train={"gradient_checkpointing": checkpointing}))
        for layer in modules["dicte"].layers:  # gates open, so every layer's weights get gradients
            torch.nn.init.normal_(layer.modulation[-1].weight, std=0.2, generator=torch.Generator().manual_seed(1))
        stage.loss(modules, batch, noise)["loss"].backward()
        gradients.append({name: p.grad for name, p in modules["dicte"].named_parameters()})
    assert gradients[0].keys() == gradients[1].keys()
    assert all(gradient is not None for gradient in gradients[1].values())
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, rtol=0, atol=1e-6, msg=name)


def test_emotion_sources_mix_every_route_on_labelled_clips_and_images_otherwise(shards):
    stage, _ = _build(VAIDStage, _config(shards, "vaid"))
    count = 300
    batch = {"index": torch.arange(2 * count),
             "emotion": torch.tensor([LABELS.index("happy")] * count + [-1] * count)}
    sources = stage.emotion_sources(batch, SampleNoise(0, 0))
    labelled, unlabelled = sources[:count], sources[count:]
    shares = Counter(source["kind"] for source in labelled)
    assert abs(shares["label"] / count - 0.4) < 0.08 and abs(shares["text"] / count - 0.3) < 0.08
    assert abs(shares["image"] / count - 0.3) < 0.08
    assert {source["label"] for source in labelled} == {"happy"}
    texts = {source["text"] for source in labelled}
    assert len(texts) == 5 and all("happ" in text for text in texts)
    assert {source["kind"] for source in unlabelled} == {"image"}
    assert {source["label"] for source in unlabelled} == {source["text"] for source in unlabelled} == {None}


@pytest.mark.parametrize("index", [0, 6], ids=["labelled", "unlabelled"])
def test_every_trainable_vaid_parameter_takes_part_in_every_batch(shards, index):
    # DDP stops when one process leaves a parameter out of its graph: a route no clip drew, or
    # the label and text routes in a batch without a labelled clip.
    stage, modules = _build(VAIDStage, _config(shards, "vaid"))
    stage.loss(modules, _batch(shards, [index]), SampleNoise(0, 0))["loss"].backward()
    missing = [f"{name}.{parameter}" for name in stage.trainable(modules)
               for parameter, value in modules[name].named_parameters() if value.grad is None]
    assert not missing


def test_vaid_errors_name_what_is_wrong(shards):
    with pytest.raises(ValueError, match="unknown vaid option"):
        _build(VAIDStage, _config(shards, "vaid", {"pul_weight": 2.0}))
    config = _config(shards, "vaid")
    config["data"]["labels"] = ["happy", "bored"]
    with pytest.raises(ValueError, match="bored"):
        _build(VAIDStage, config)
    stage, modules = _build(VAIDStage, _config(shards, "vaid"))
    batch = _batch(shards, [0])
    del batch["reference"]
    with pytest.raises(KeyError, match="outside its window"):
        stage.loss(modules, batch, SampleNoise(0, 0))


# --- ethd ------------------------------------------------------------------------------------

NO_DROPOUT = {"drop_reference": 0.0, "drop_lip": 0.0, "drop_expression": 0.0}


def test_untrained_adapters_give_the_base_unets_loss_through_the_inference_preconditioning(shards):
    stage, modules = _build(ETHDStage, _config(shards, "ethd", NO_DROPOUT))
    index, batch, noise = 3, _batch(shards, [3]), SampleNoise(0, 5)
    with torch.no_grad():
        loss = stage.loss(modules, batch, noise)["loss"]
        base = build_unet(get_config("tiny")["unet"])
        base.load_state_dict(modules["ethd"].unet.state_dict())

        def base_unet(sample, timestep, image_embeds, added_time_ids, **conditions):
            return base(sample, timestep, image_embeds, added_time_ids=added_time_ids, return_dict=False)[0]

        # EDM by hand: the sampler's latent space, SVD's noise distribution, inference's denoiser.
        vae = modules["vae"]
        x0 = vae.encode(batch["frames"][0] * 2 - 1).latent_dist.mean[None] * vae.config.scaling_factor
        sigma = (0.7 + 1.6 * noise.normal("ethd.sigma", torch.tensor([index]))).exp()[0]
        x = x0 + sigma * noise.normal("ethd.noise", torch.tensor([index]), tuple(x0.shape[1:]))
        conditioning = stage.conditioning(modules, batch, [noise.generator("ethd.reference", index)])
        denoised = GuidedDenoiser(base_unet, conditioning, Guidance(1.0, 1.0, 1.0))(x, sigma)
        expected = (sigma**2 + 1) / sigma**2 * (denoised - x0).square().mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=0)


def test_ethd_loss_falls_when_the_adapters_overfit_one_clip(shards):
    stage, modules = _build(ETHDStage, _config(shards, "ethd"))
    optimizer = _optimizer(stage, modules, 1e-2)
    batch = _batch(shards, [0])

    def loss_at_fixed_noise():
        with torch.no_grad():
            return sum(stage.loss(modules, batch, SampleNoise(0, 1000 + k))["loss"] for k in range(4)) / 4

    before = loss_at_fixed_noise()
    _train(stage, modules, batch, optimizer, steps=10)
    assert loss_at_fixed_noise() < 0.9 * before
    assert all(not p.requires_grad for p in modules["ethd"].unet.parameters())


def _ethd_inputs(stage, modules, batch, noise) -> dict:
    """What the stage passes to ETHD in one loss call."""
    ethd, seen = modules["ethd"], {}
    original = ethd.forward

    def record(*args):
        seen.update(zip(ETHD_INPUTS, args, strict=True))
        return original(*args)

    ethd.forward = record
    try:
        with torch.no_grad():
            stage.loss(modules, batch, noise)
    finally:
        del ethd.forward
    return seen


@pytest.mark.parametrize("dropped, guidance_pass", [
    ({"drop_reference": 1.0}, "none"),
    ({**NO_DROPOUT, "drop_lip": 1.0}, "reference"),
    ({**NO_DROPOUT, "drop_expression": 1.0}, "lip"),
    (NO_DROPOUT, "expression"),
])
def test_each_dropout_feeds_the_null_that_inference_uses(shards, dropped, guidance_pass):
    stage, modules = _build(ETHDStage, _config(shards, "ethd", dropped))
    index, batch, noise = 2, _batch(shards, [2]), SampleNoise(0, 1)
    seen = _ethd_inputs(stage, modules, batch, noise)
    reference, frames = batch["reference"], batch["frames"][0]
    with torch.no_grad():
        latent = reference_latent(modules["vae"], reference, 0.02, noise.generator("ethd.reference", index))
        embeds = image_embeds(modules["image_encoder"], reference)
        lip = lip_windows(modules["lip_encoder"](frames)[None], 2)
        own, driven = modules["exp_encoder"](reference), modules["exp_encoder"](frames)[None]
    with_reference, with_lip = guidance_pass != "none", guidance_pass in ("lip", "expression")
    # e0: zero concat latent AND zero image embedding; null lip = zeros; null expression = own.
    torch.testing.assert_close(seen["sample"][:, :, 4:], (latent if with_reference else 0 * latent)[:, None].expand(-1, WINDOW, -1, -1, -1))
    torch.testing.assert_close(seen["image_embeds"], embeds if with_reference else torch.zeros_like(embeds))
    torch.testing.assert_close(seen["lip_windows"], lip if with_lip else torch.zeros_like(lip))
    torch.testing.assert_close(seen["driven_exp"], driven if guidance_pass == "expression" else own[:, None].expand(-1, WINDOW, -1))
    torch.testing.assert_close(seen["reference_exp"], own)
    bucket = float(motion_buckets(batch["frames"], stage.settings["motion_reference"])[0])  # the clip's own motion
    torch.testing.assert_close(seen["added_time_ids"], torch.tensor([[24.0, bucket, 0.02]]))
    torch.testing.assert_close(seen["face_mask"], batch["mask"][0].amax(dim=0, keepdim=True))


def test_nested_dropout_trains_every_pass_of_the_guidance():
    draws = SampleNoise(0, 0).uniform("ethd.dropout", torch.arange(20000), (3,))
    shares = Counter(nested_passes(draws, {"drop_reference": 0.1, "drop_lip": 0.1, "drop_expression": 0.1}))
    expected = {"none": 0.1, "reference": 0.09, "lip": 0.081, "expression": 0.729}
    for name, share in expected.items():
        assert abs(shares[name] / 20000 - share) < 0.01, (name, shares)


def test_ethd_window_must_be_the_clip_length(shards):
    config = _config(shards, "ethd")
    config["data"]["window"] = 4
    with pytest.raises(ValueError, match=r"data.window \(4\) must equal model.ethd.clip_frames \(8\)"):
        _build(ETHDStage, config)
    stage, modules = _build(ETHDStage, _config(shards, "ethd"))
    with pytest.raises(ValueError, match="16-frame windows"):
        stage.loss(modules, _batch(shards, [0], window=16), SampleNoise(0, 0))


def test_ethd_loss_of_a_batch_is_the_mean_of_its_clips(shards):
    stage, modules = _build(ETHDStage, _config(shards, "ethd", {"drop_reference": 0.5, "drop_lip": 0.5}))
    noise = SampleNoise(0, 2)
    with torch.no_grad():
        pair = stage.loss(modules, _batch(shards, [1, 6]), noise)["loss"]
        alone = [stage.loss(modules, _batch(shards, [index]), noise)["loss"] for index in (1, 6)]
    torch.testing.assert_close(pair, (alone[0] + alone[1]) / 2, rtol=0, atol=1e-6)


def _randomise_adapters(modules, seed: int = 7) -> None:
    """Stand-in for training: adapters whose outputs are not zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules["ethd"].modules():
            if isinstance(module, TokenCrossAttention):
                module.to_out.weight.copy_(torch.randn(module.to_out.weight.shape, generator=g) * 0.1)


def test_self_contained_export_loads_and_runs_a_pipeline_sampling_step(shards, tmp_path, monkeypatch):
    from emotivetalk_core.pipeline import (
        encode_reference,
        sample_latents,
    )
    from emotivetalk_core.settings import GenerationSettings, default_guidance

    config = _config(shards, "ethd")
    stage, modules = _build(ETHDStage, config)
    _randomise_adapters(modules)
    path = _save(stage, modules, config, tmp_path / "ethd.safetensors")
    model = load_emotivetalk_model(path)
    assert model.settings == {**get_config("tiny")["ethd"], "resolution": [SIZE, SIZE],
                              "motion_reference": stage.settings["motion_reference"]}
    for name, tensor in modules["ethd"].state_dict().items():
        assert torch.equal(model.ethd.state_dict()[name], tensor), name
    vaid = build_vaid_model(get_config("tiny"))
    batch = _batch(shards, [0])
    reference = encode_reference(model, vaid, batch["reference"], 0, 0)  # 0 = the model's native size
    with torch.no_grad():
        lip, driven = vaid.lip_encoder(batch["frames"][0]), vaid.exp_encoder(batch["frames"][0])
    latents = sample_latents(model, reference, lip, driven, GenerationSettings(steps=1))
    assert latents.shape == (WINDOW, 4, SIZE // 8, SIZE // 8) and torch.isfinite(latents).all()
    from emotivetalk_core.train import ethd_stage

    guidances = []
    monkeypatch.setattr(ethd_stage, "GuidedDenoiser",
                        lambda model, conditioning, guidance: guidances.append(guidance) or GuidedDenoiser(model, conditioning, guidance))
    with torch.no_grad():
        (png,) = stage.sample(modules, batch, tmp_path, 1)
    from PIL import Image

    assert Image.open(png).size == (WINDOW * SIZE, 2 * SIZE)
    assert guidances == [default_guidance()]  # the preview shows what a user's generation does


def test_export_on_a_stability_base_file_is_the_adapter_with_the_bases_digest(shards, tmp_path):
    from safetensors.torch import save_file

    from emotivetalk_core.bundles import build_emotivetalk_model
    from emotivetalk_core.svd.convert import diffusers_to_stability

    torch.manual_seed(11)
    base = build_emotivetalk_model(get_config("tiny"))
    base_path = tmp_path / "svd_tiny.safetensors"
    save_file(diffusers_to_stability(base.ethd.unet.state_dict(), base.vae.state_dict(), base.image_encoder.state_dict()),
              str(base_path))
    config = _config(shards, "ethd", init={"base_svd": str(base_path)})
    stage, modules = _build(ETHDStage, config)
    for name, tensor in base.ethd.unet.state_dict().items():
        assert torch.equal(modules["ethd"].unet.state_dict()[name], tensor), name
    _randomise_adapters(modules)
    path = _save(stage, modules, config, tmp_path / "adapter.safetensors")
    model = load_emotivetalk_model(path, base=base_path, base_config=get_config("tiny"))
    assert set(model.ethd.adapter_state_dict()) == set(modules["ethd"].adapter_state_dict())
    for name, tensor in modules["ethd"].state_dict().items():
        assert torch.equal(model.ethd.state_dict()[name], tensor), name
    assert model.info["base_svd"]["name"] == base_path.name and "sha256" in model.info["base_svd"]
    # The export records the base's architecture, so loading needs no base_config.
    assert set(load_emotivetalk_model(path, base=base_path).ethd.adapter_state_dict()) == set(modules["ethd"].adapter_state_dict())
    with torch.no_grad():
        assert set(stage.export(modules, config)) == {"adapter"}
        stage.options["train_unet"] = True
        assert set(stage.export(modules, config)) == {"unet", "adapter", "vae", "image_encoder"}


def test_whole_unet_trained_on_a_diffusers_folder_exports_a_self_contained_file(shards, tmp_path):
    from emotivetalk_core.bundles import build_emotivetalk_model

    torch.manual_seed(12)
    base = build_emotivetalk_model(get_config("tiny"))
    folder = tmp_path / "svd_tiny"
    base.ethd.unet.save_pretrained(folder / "unet")
    base.vae.save_pretrained(folder / "vae")
    base.image_encoder.save_pretrained(folder / "image_encoder")
    config = _config(shards, "ethd", {"train_unet": True}, init={"base_svd": str(folder)})
    stage, modules = _build(ETHDStage, config)
    assert all(p.requires_grad for p in modules["ethd"].unet.parameters())
    _randomise_adapters(modules)
    model = load_emotivetalk_model(_save(stage, modules, config, tmp_path / "ethd.safetensors"))  # no base needed
    for name, tensor in modules["ethd"].state_dict().items():
        assert torch.equal(model.ethd.state_dict()[name], tensor), name
    for name, tensor in base.image_encoder.state_dict().items():
        assert torch.equal(model.image_encoder.state_dict()[name], tensor), name
    assert model.info["base_svd"]["name"] == "svd_tiny" and len(model.info["base_svd"]["files"]) == 3


def test_gradient_checkpointing_gives_the_same_gradients(shards):
    batch, noise = _batch(shards, [5]), SampleNoise(0, 4)
    gradients = []
    for checkpointing in (False, True):
        config = _config(shards, "ethd", {"train_unet": True}, train={"gradient_checkpointing": checkpointing})
        stage, modules = _build(ETHDStage, config)
        _randomise_adapters(modules)
        stage.loss(modules, batch, noise)["loss"].backward()
        gradients.append({name: p.grad for name, p in modules["ethd"].named_parameters() if p.requires_grad})
    assert modules["ethd"].unet.is_gradient_checkpointing
    assert gradients[0].keys() == gradients[1].keys()
    assert all(gradients[1][name] is not None for name in gradients[1])
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, rtol=0, atol=1e-6, msg=name)


def test_vaid_conditions_are_the_pipelines_lip_stream_and_the_face_processors_mask(shards, tmp_path):
    from emotivetalk_core.bundles import vaid_components, vaid_info
    from emotivetalk_core.pipeline import PreparedAudio, encode_speech, lip_stream

    torch.manual_seed(5)
    config_model = get_config("tiny")
    vaid = build_vaid_model(config_model)
    vaid_path = save_model_file(tmp_path / "vaid.safetensors", vaid_components(vaid, config_model), vaid_info(vaid))
    config = _config(shards, "ethd", {"condition_source": "vaid", "mask_source": "face_processor"},
                     init={"vaid": str(vaid_path)})
    stage, modules = _build(ETHDStage, config)
    # The stage reads audio around the window: Di-CTE's window (25) centred on the 8 frames.
    assert stage.audio_context == 9
    # One 48-frame clip: inference encodes its speech in three 25-frame windows; the training
    # window at frame 20 reads frames 11..36, inside the clip.
    frames, rng = 48, np.random.default_rng(1)
    opening = rng.random(frames)
    faces, mask = _faces(opening, 0, rng.integers(0, 255, 3))
    whole = _speech(opening, rng)
    write_shard(tmp_path / "long" / "video.safetensors", [{
        "frames": faces, "mask": mask, "audio": whole, "box": np.zeros((frames, 4), np.float32),
        "lip_target": np.zeros((frames, 4), np.float32), "exp_target": np.zeros((frames, 4), np.float32)}],
        {"source": "video.mp4", "identity": "person", "emotion": "happy", "level": None, "fps": FPS, "sample_rate": RATE,
         "size": SIZE, "targets": {"tool": "toy", "lip_dim": 4, "exp_dim": 4}})
    clips = ClipDataset(tmp_path / "long", WINDOW, LABELS, audio_context=stage.audio_context)
    start = 20
    item = clips.item(0, start)
    assert item["speech_span"].tolist() == [0, WINDOW + 2 * 9]
    item["reference"] = clips.outside_frame(0, torch.Generator().manual_seed(0), start)
    batch = torch.utils.data.default_collate([item])
    with torch.no_grad():
        conditioning = stage.conditioning(modules, batch, [torch.Generator().manual_seed(0)])
        # Inference on the clip's whole speech, at the window's frames.
        lip = lip_stream(vaid, encode_speech(vaid, PreparedAudio(whole, frames, float(FPS))))[start:start + WINDOW]
        alone = lip_stream(vaid, encode_speech(vaid, PreparedAudio(item["audio"].numpy(), WINDOW, float(FPS))))
        mask = vaid.face_processor(batch["reference"])
    torch.testing.assert_close(conditioning.lip_windows, lip_windows(lip[None], 2), rtol=0, atol=1e-4)
    # Read from the window's audio alone (zero padding inside the projector's reach), it would differ.
    assert (alone - lip).abs().max() > 1e-2
    # The Face Processor's mask thresholded at 0.5, as inference thresholds it (an empty one: everywhere).
    assert set(conditioning.face_mask.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(conditioning.face_mask, face_region(mask))
    # No init.encoders: the frozen encoders come from the V-AID file.
    for name, tensor in vaid.exp_encoder.state_dict().items():
        assert torch.equal(modules["exp_encoder"].state_dict()[name], tensor), name
    with pytest.raises(ValueError, match="needs init.vaid"):
        _build(ETHDStage, _config(shards, "ethd", {"condition_source": "vaid"}))


def test_vaid_learns_the_text_route_from_a_pretrained_encoders_paraphrases(shards, tmp_path):
    from emotivetalk_core.networks.text import TransformersTextEncoder
    from emotivetalk_core.train.paraphrases import PARAPHRASES
    from text_models import tiny_text_model

    folder = tiny_text_model(tmp_path / "text-model", seed=0)
    config = _config(shards, "vaid", {"label_prob": 0.0, "text_prob": 1.0}, init={"text_encoder": str(folder)})
    stage, modules = _build(VAIDStage, config)
    mapping, encoder = modules["mapping"], TransformersTextEncoder(folder)
    batch = _batch(shards, [0, 2, 4, 6])
    sources = stage.emotion_sources(batch, SampleNoise(0, 0))
    # Every labelled clip asks by text, in one of its emotion's paraphrases, through the encoder's embedding.
    sources = [source for source in sources if source["label"] is not None]
    assert len(sources) >= 3 and all(source["kind"] == "text" for source in sources)
    assert all(source["text"] in PARAPHRASES[source["label"]] for source in sources)
    prompts = [source["text"] for source in sources]
    with torch.no_grad():
        torch.testing.assert_close(stage._text_route(mapping)(prompts), mapping.from_text_embedding(encoder(prompts)))
    # The Mapping's text head trains (the byte encoder is gone), and the file records the encoder.
    before = {name: p.clone() for name, p in mapping.text_head.named_parameters()}
    _train(stage, modules, batch, _optimizer(stage, modules, 3e-3), steps=3)
    assert any(not torch.equal(before[name], p) for name, p in mapping.text_head.named_parameters())
    loaded = load_vaid_model(_save(stage, modules, config, tmp_path / "vaid.safetensors"))
    assert loaded.mapping.text_record["name"] == "text-model" and loaded.mapping.text_encoder is None
    with torch.no_grad():
        torch.testing.assert_close(loaded.mapping.from_text_embedding(encoder(prompts)), mapping.from_text_embedding(encoder(prompts)))


def test_ethd_reads_the_windows_own_audio_when_dictes_window_is_no_longer(shards, tmp_path):
    from emotivetalk_core.bundles import vaid_components, vaid_info

    config_model = get_config("tiny")
    config_model["dicte"]["window"] = WINDOW
    vaid = build_vaid_model(config_model)
    vaid_path = save_model_file(tmp_path / "vaid.safetensors", vaid_components(vaid, config_model), vaid_info(vaid))
    stage, modules = _build(ETHDStage, _config(shards, "ethd", {"condition_source": "vaid"}, init={"vaid": str(vaid_path)}))
    assert stage.audio_context == 0
    with torch.no_grad():
        conditioning = stage.conditioning(modules, _batch(shards, [4]), [torch.Generator().manual_seed(0)])
    assert conditioning.lip_windows.shape[1] == WINDOW


def test_vaid_fine_tunes_an_export_from_before_dicte_recorded_its_window(shards, tmp_path):
    from emotivetalk_core.bundles import vaid_components, vaid_info

    config_model = get_config("tiny")
    del config_model["dicte"]["window"]
    vaid = build_vaid_model(config_model)
    old = save_model_file(tmp_path / "old.safetensors", vaid_components(vaid, config_model), vaid_info(vaid))
    stage, modules = _build(VAIDStage, _config(shards, "vaid", init={"vaid": str(old)}))
    assert modules["dicte"].window == WINDOW  # this run's data.window is recorded
    for name, tensor in vaid.dicte.state_dict().items():
        assert torch.equal(modules["dicte"].state_dict()[name], tensor), name


def test_ethd_can_train_on_dictes_estimates_of_the_expression(shards, tmp_path):
    from emotivetalk_core.bundles import vaid_components, vaid_info

    config_model = get_config("tiny")
    last = config_model["dicte"]["train_steps"] - 1
    vaid = build_vaid_model(config_model)
    vaid_path = save_model_file(tmp_path / "vaid.safetensors", vaid_components(vaid, config_model), vaid_info(vaid))
    options = {"condition_source": "vaid", "dicte_expression": 0.5, "dicte_ramp": 0.5}
    config = _config(shards, "ethd", options, init={"vaid": str(vaid_path)}, train={"steps": 100})
    stage, modules = _build(ETHDStage, config)
    indices = list(range(8))
    batch = _batch(shards, indices, audio_context=stage.audio_context)
    timesteps = []
    modules["dicte"].register_forward_pre_hook(lambda module, args: timesteps.append(args[1].tolist()))

    def driven(step: int, rows=slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        part = {key: value[rows] for key, value in batch.items()}
        with torch.no_grad():
            conditioning = stage.conditioning(modules, part, [torch.Generator().manual_seed(0)] * len(part["index"]))
            speech = stage._speech(part)
            return stage._dicte_expression(modules, part, conditioning.driven_exp, speech, SampleNoise(0, step)), conditioning.driven_exp

    # Half of the clips (drawn per clip) take Di-CTE's estimate, the others keep the frames' codes.
    mixed, codes = driven(0)
    kept = [(mixed[i] == codes[i]).all().item() for i in range(len(indices))]
    assert 0 < sum(kept) < len(indices)
    # The noise ceiling: 0 at the first step, a quarter of the way (step 25 of the 50-step ramp)
    # half of Di-CTE's timesteps, all of them from half-way on.
    assert set(timesteps[-1]) == {0}
    driven(25)
    assert max(timesteps[-1]) <= last // 2
    late, _ = driven(60)
    assert max(timesteps[-1]) > last // 2
    # A clip's draws are its own: alone it gets what it gets in the batch.
    alone, _ = driven(60, slice(2, 3))
    torch.testing.assert_close(alone[0], late[2])
    # Without it, no Di-CTE; and it needs V-AID's Di-CTE.
    plain_stage, plain = _build(ETHDStage, _config(shards, "ethd", {"condition_source": "vaid"}, init={"vaid": str(vaid_path)}))
    assert "dicte" not in plain
    with pytest.raises(ValueError, match="needs condition_source 'vaid'"):
        _build(ETHDStage, _config(shards, "ethd", {"dicte_expression": 0.5}))
    assert torch.isfinite(stage.loss(modules, batch, SampleNoise(0, 60))["loss"])
