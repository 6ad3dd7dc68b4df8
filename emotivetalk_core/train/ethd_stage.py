"""The ``ethd`` training stage: ETHD's adapters (optionally the whole UNet) on SVD's EDM objective.

Modules: ``ethd`` (the SVD UNet with EmotiveTalk's zero-initialised adapters; trainable, its UNet
frozen unless ``train_unet``), the frozen SVD ``vae`` and ``image_encoder``, and the frozen
``lip_encoder``, ``exp_encoder`` and ``face_processor`` (from ``init.encoders``, else from the
``init.vaid`` file, else random with a warning). The base is ``init.base_svd`` (Stability's
single file or a diffusers folder, loaded in float32 by ``svd.load.load_svd``), else a random
UNet/VAE/image encoder of ``model`` (the tiny test models). The window ``data.window`` must
equal ``model.ethd.clip_frames``: SVD's conditioning and frame positions are per clip, so the
training clip length is the inference window.

One batch, conditioned exactly as ``pipeline.encode_reference`` / ``pipeline.conditioning``
condition inference:

- target latents: the VAE posterior mean of every frame times the VAE's scaling factor: the
  space the sampler works in (``svd.vae_decode`` divides by that factor before decoding);
- reference (``batch["reference"]``, a frame from outside the window, added by the loop):
  ``svd.conditioning.reference_latent`` with ``noise_aug`` and a per-clip generator, and
  ``svd.conditioning.image_embeds``; ``added_time_ids``: the fps id of the data (its fps - 1, as
  SVD was trained; a preset's id for other footage would tell the model a wrong frame rate), each
  clip's own motion bucket (:func:`motion_buckets`: 127 at the data's median motion, in proportion
  to the clip's motion, so the motion control means what it says at inference) and ``noise_aug``;
- lip stream: Lip Encoder of the ground-truth frames (``condition_source = "encoders"``), or the
  V-AID Audio-lip Projector on the speech (``"vaid"``: ETHD then learns from exactly what
  inference feeds it, imperfections and scale included). The speech is read with the context
  inference gives it: inference encodes it in Di-CTE's windows and runs the projector over all
  of it, so the stage reads that window of audio centred on the training window (as far as the
  clip goes, ``ClipDataset(audio_context=...)``), encodes it, projects it and keeps the
  window's frames. Read from the window's audio alone, every frame of an 8-frame window would
  have zero padding inside the projector's 9-frame reach. Windows of ``lip_context`` frames by
  ``networks.ethd.lip_windows`` (at the window's edges the edge frame repeats; inference sees
  real neighbours there);
- driven expression: Exp Encoder of the ground-truth frames (it is what Di-CTE is trained to
  reproduce), or, per clip with probability ``dicte_expression`` (``"vaid"`` only), Di-CTE's
  one-step estimate of those codes from a noised copy whose noise ceiling rises over the first
  ``dicte_ramp`` of training (:meth:`ETHDStage._dicte_expression`): inference feeds ETHD Di-CTE's
  codes, yet codes far from the frames from the start would teach ETHD to ignore the expression
  tokens; reference expression: Exp Encoder(reference);
- face mask, one per clip as ETHD takes it: the union over the window of the shard's masks
  (``mask_source = "shard"``: wherever the face goes in the clip) or the Face Processor on the
  reference frame (``"face_processor"``, what inference computes), thresholded at 0.5 as
  inference thresholds it; an all-zero mask means "no mask" (everywhere), both by
  ``networks.edi.face_region``, the one function inference forms its mask with.

Guidance nulls: each clip trains one of the four passes of the guidance (docs/ARCHITECTURE.md,
"Guidance"), built with ``sampling.Conditioning.for_pass``, the very function inference uses, so
every null is what inference passes. The passes are nested (e0 has no reference, no lip and the null expression;
e_r adds the reference; e_rl the lip; e_rle the driven expression), so the dropouts are too:
with probability ``drop_reference`` a clip is e0; else with ``drop_lip`` it is e_r; else with
``drop_expression`` e_rl; else e_rle. Independent drops would train e0 (all three dropped)
with probability ``p^3`` only.

Objective (SVD's v-prediction EDM, the inverse of ``sampling.GuidedDenoiser``): one sigma per
clip, ``log sigma ~ N(p_mean, p_std)``; ``x = x0 + sigma * n``; the UNet sees
``c_in x ++ reference latent`` with ``c_in = 1 / sqrt(sigma^2 + 1)`` at ``c_noise = 0.25 log
sigma`` and predicts v; the loss is ``|v - v_target|^2`` with ``v_target = (n - sigma x0) /
sqrt(sigma^2 + 1)``, which is exactly EDM's ``lambda(sigma) |D - x0|^2`` with ``D = c_skip x +
c_out v`` and ``lambda = (sigma^2 + 1) / sigma^2`` (``lambda c_out^2 = 1``), computed without
the huge weights at small sigma. Every term is a per-clip mean; all draws are per clip from
``noise``: ``ethd.sigma``, ``ethd.noise``, ``ethd.dropout``, ``ethd.reference`` (the reference
latent's noise augmentation).

Gradient checkpointing: :meth:`ETHD.enable_gradient_checkpointing` (each recomputation runs
under the condition context of the forward it recomputes).

Options (``config["ethd"]``), defaults in :data:`ETHD_DEFAULTS`:

- ``train_unet`` false: train the whole UNet, not only the adapters;
- ``condition_source`` ``"encoders"`` | ``"vaid"`` (needs ``init.vaid``);
- ``mask_source`` ``"shard"`` | ``"face_processor"``;
- ``p_mean`` 0.7, ``p_std`` 1.6: SVD's log-normal noise-level distribution;
- ``drop_reference`` 0.1, ``drop_lip`` 0.1, ``drop_expression`` 0.1: the nested dropouts;
- ``change_weight`` 0: weight the squared error by ``1 + change_weight * |x0 - portrait|`` (latent
  units, normalised to mean 1 per clip; :func:`change_weights`), so pixels that differ from the
  portrait (mouth, brows, eyes) count more; 8 is what made expression learnable in SynthTalk;
- ``motion_weight`` 0: add ``motion_weight * std over the window's frames of x0`` to that weight
  (the same for every frame of the clip), so what moves within the clip (the mouth above all)
  counts more in every frame, the closed ones included: the change from the portrait alone
  weights a closed mouth like the background when the portrait's mouth is closed too;
- ``dicte_expression`` 0, ``dicte_ramp`` 0.5: the share of clips whose driven expression is
  Di-CTE's estimate, and the fraction of training over which its noise ceiling rises (above);
- ``sample_steps`` 4: Euler steps of :meth:`ETHDStage.sample`;
- ``sample_guidance`` null: its (reference, lip, expression) strengths; null = the library's
  default guidance (``settings.default_guidance``), what a user's generation uses.

Export: with a random base (no ``init.base_svd``) a self-contained file (unet, adapter, vae,
image_encoder); with a base file, the adapter alone (the base file's digest in the info), or
all four when ``train_unet`` (``bundles.load_emotivetalk_model`` reads a UNet only together with
its VAE and image encoder). The adapter's settings are ``model.ethd`` with what the data decides
(:func:`data_settings`): ``resolution`` (the shards' crop size), ``fps_id`` and
``motion_reference`` (the clip motion that bucket 127 stands for).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..bundles import (
    ETHD_COMPONENTS,
    EmotiveTalkModel,
    ethd_components,
    file_digest,
)
from ..networks.edi import face_region
from ..networks.ethd import ETHD, lip_windows
from ..placement import placement
from ..sampling import (
    Conditioning,
    Guidance,
    GuidedDenoiser,
    initial_noise,
    karras_sigmas,
    sample_euler,
    start_latents,
)
from ..settings import default_guidance
from ..svd.build import build_image_encoder, build_unet, build_vae
from ..svd.conditioning import added_time_ids, image_embeds, reference_latent
from ..svd.vae_decode import decode_latents, to_vae_space
from .noise import SampleNoise
from .shards import read_shard_info, shard_paths
from .vaid_stage import (
    SpeechHolder,
    frozen,
    init_path,
    load_encoders,
    options,
    per_frame,
    reference_frames,
)

log = logging.getLogger(__name__)

ETHD_DEFAULTS = {
    "train_unet": False,
    "condition_source": "encoders",
    "mask_source": "shard",
    "p_mean": 0.7,
    "p_std": 1.6,
    "drop_reference": 0.1,
    "drop_lip": 0.1,
    "drop_expression": 0.1,
    "change_weight": 0.0,
    "motion_weight": 0.0,
    "sample_steps": 4,
    "sample_guidance": None,
    "dicte_expression": 0.0,
    "dicte_ramp": 0.5,
}
CONDITION_SOURCES = ("encoders", "vaid")
MASK_SOURCES = ("shard", "face_processor")


def check_window(config: dict) -> None:
    """The data window must be the clip length (see the module docstring)."""
    clip_frames = config["model"]["ethd"]["clip_frames"]
    window = config["data"].get("window", clip_frames)
    if window != clip_frames:
        raise ValueError(f"data.window ({window}) must equal model.ethd.clip_frames ({clip_frames}): SVD's "
                         "conditioning is per clip, so ETHD trains on clips of the inference window's length")


def _check_options(opts: dict) -> None:
    if opts["condition_source"] not in CONDITION_SOURCES:
        raise ValueError(f"ethd.condition_source must be one of {CONDITION_SOURCES}, got {opts['condition_source']!r}")
    if opts["mask_source"] not in MASK_SOURCES:
        raise ValueError(f"ethd.mask_source must be one of {MASK_SOURCES}, got {opts['mask_source']!r}")
    for key in ("drop_reference", "drop_lip", "drop_expression"):
        if not 0 <= opts[key] <= 1:
            raise ValueError(f"ethd.{key} is a probability, got {opts[key]}")
    for key in ("change_weight", "motion_weight"):
        if opts[key] < 0:
            raise ValueError(f"ethd.{key} must be >= 0, got {opts[key]}")
    for key in ("dicte_expression", "dicte_ramp"):
        if not 0 <= opts[key] <= 1:
            raise ValueError(f"ethd.{key} must be between 0 and 1, got {opts[key]}")
    if opts["dicte_expression"] and opts["condition_source"] != "vaid":
        raise ValueError("ethd.dicte_expression needs condition_source 'vaid' (Di-CTE comes from init.vaid)")


def nested_passes(draws: torch.Tensor, opts: dict) -> list[str]:
    """The guidance pass each clip trains, from its three uniform draws (see the module docstring)."""
    passes = []
    for reference, lip, expression in draws.tolist():
        if reference < opts["drop_reference"]:
            passes.append("none")
        elif lip < opts["drop_lip"]:
            passes.append("reference")
        elif expression < opts["drop_expression"]:
            passes.append("lip")
        else:
            passes.append("expression")
    return passes


def select_passes(conditioning: Conditioning, passes: list[str], frames: int) -> dict[str, torch.Tensor]:
    """ETHD inputs (without sample and timestep) where clip i gets ``for_pass(passes[i])``."""
    built = {name: conditioning.for_pass(name, frames) for name in set(passes)}
    keys = built[passes[0]].keys()
    return {key: torch.stack([built[name][key][row] for row, name in enumerate(passes)]) for key in keys}


def edm_v_loss(ethd: ETHD, x0: torch.Tensor, sigma: torch.Tensor, epsilon: torch.Tensor, inputs: dict,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-clip v-prediction losses ``[B]`` (see the module docstring): ``x0``, ``epsilon``
    ``[B, T, 4, h, w]``, ``sigma`` ``[B]``, ``inputs`` from :func:`select_passes`; ``weight``
    (broadcastable to ``x0``, mean 1 per clip) weights the squared error per latent pixel."""
    s = sigma.view(-1, 1, 1, 1, 1)
    scale = (s**2 + 1).sqrt()
    v = ethd_v(ethd, x0 + s * epsilon, sigma, inputs)
    target = (epsilon - s * x0) / scale
    error = (v.float() - target).square()
    return (error if weight is None else weight * error).mean(dim=(1, 2, 3, 4))


def speech_context(dicte_window: int, clip_frames: int) -> int:
    """Frames of audio read on each side of a training window so the speech around it spans
    Di-CTE's window, the context inference encodes it in (rounded up to the same on both sides)."""
    return max(0, -(-(dicte_window - clip_frames) // 2))


def ethd_v(ethd: ETHD, noisy: torch.Tensor, sigma: torch.Tensor, inputs: dict) -> torch.Tensor:
    """ETHD's v prediction for latents ``noisy`` at per-clip noise levels ``sigma`` ``[B]`` (SVD's
    EDM preconditioning: ``c_in = 1 / sqrt(sigma^2 + 1)``, ``c_noise = 0.25 log sigma``)."""
    s = sigma.view(-1, 1, 1, 1, 1)
    dtype = placement(ethd)["dtype"]
    sample = torch.cat([noisy / (s**2 + 1).sqrt(), inputs["latent"].float()], dim=2).to(dtype)
    return ethd(sample, (0.25 * sigma.log()).to(dtype), inputs["image_embeds"], inputs["added_time_ids"],
                inputs["lip_windows"], inputs["driven_exp"], inputs["reference_exp"], inputs["face_mask"])


def change_weights(x0: torch.Tensor, reference: torch.Tensor, strength: float, motion: float = 0.0) -> torch.Tensor:
    """``1 + strength * |x0 - reference| + motion * std_t(x0)`` (means over latent channels),
    normalised to mean 1 per clip: ``[B, T, 1, h, w]`` from target latents ``[B, T, C, h, w]`` and
    the portrait's ``[B, 1, C, h, w]``.

    Where a frame differs from the portrait (mouth, brows, eyes, the cheeks of a smile) the error
    counts more. A plain mean lets a small model settle for the portrait's face with a moving
    mouth: expression changes cover few pixels, and a feasibility run learned no expression at
    all without this weighting (emotion accuracy at chance) and 0.86 with it, at equal cost.
    The motion term (the pixel's standard deviation over the window, the same in every frame)
    marks where the clip moves, the mouth above all, in the frames where it matches the portrait too."""
    weight = 1 + strength * (x0 - reference).abs().mean(dim=2, keepdim=True)
    if motion:
        weight = weight + motion * x0.std(dim=1, correction=0, keepdim=True).mean(dim=2, keepdim=True)
    weight = weight.expand(x0.shape[0], x0.shape[1], 1, *x0.shape[3:])
    return weight / weight.mean(dim=(1, 2, 3, 4), keepdim=True)


def encode_latents(vae, frames: torch.Tensor) -> torch.Tensor:
    """``[B, T, 3, S, S]`` in 0..1 -> the sampler's latents ``[B, T, 4, S/8, S/8]`` (float32)."""
    pixels = frames.flatten(0, 1).to(**placement(vae)) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    return latents.float().unflatten(0, frames.shape[:2])


MOTION_SAMPLE = 128  # windows whose median motion sets what bucket 127 means


def clip_motion(frames: torch.Tensor) -> torch.Tensor:
    """Per clip ``[B]``: the mean absolute change between consecutive frames ``[B, T, 3, S, S]`` (0..1)."""
    return (frames[:, 1:] - frames[:, :-1]).abs().mean(dim=(1, 2, 3, 4))


def motion_buckets(frames: torch.Tensor, motion_reference: float) -> torch.Tensor:
    """SVD's motion bucket per clip: 127 (SVD's default) for the data's median motion, in
    proportion to the clip's motion, within SVD's 0..255."""
    return (127.0 * clip_motion(frames) / motion_reference).round().clamp(0, 255)


def data_settings(config: dict) -> dict:
    """ETHD settings the training data decides: ``resolution`` (the shards' crop size), ``fps_id``
    (the data's fps - 1) and ``motion_reference`` (the median :func:`clip_motion` of up to
    :data:`MOTION_SAMPLE` windows spread evenly over the data)."""
    from .shards import ClipDataset

    info = read_shard_info(shard_paths(config["data"]["shards"])[0])
    windows = ClipDataset(config["data"]["shards"], config["model"]["ethd"]["clip_frames"])
    motion = torch.cat([clip_motion(windows[i]["frames"][None]) for i in windows.spread(MOTION_SAMPLE)])
    reference = float(motion.quantile(0.5))
    if reference <= 0:
        raise ValueError(f"the training clips under {config['data']['shards']} do not move (median frame change 0): "
                         "ETHD cannot learn the motion control from still clips")
    return {"resolution": [info["size"], info["size"]], "fps_id": round(float(info["fps"])) - 1,
            "motion_reference": reference}


def clip_masks(masks: torch.Tensor) -> torch.Tensor:
    """Masks ``[B, T, 1, S, S]`` (0..1) -> one binary face region per clip ``[B, 1, S, S]``: the
    union over the clip's frames, as ``networks.edi.face_region`` forms it at inference."""
    return face_region(masks.amax(dim=1))


class ETHDStage:
    name = "ethd"

    def __init__(self):
        # Set by build: the options, model.ethd with what the data decides (exported as the model's settings) and, for
        # condition_source "vaid", the speech encoder (held out of the module dict, see vaid_stage).
        self.options = dict(ETHD_DEFAULTS)
        self.settings: dict = {}
        self.speech: SpeechHolder | None = None
        # The VAE and image encoder configs of an init.base export (scaling factor included).
        self.base_configs: dict = {}

    # --- modules ---------------------------------------------------------------------------
    def build(self, config: dict) -> nn.ModuleDict:
        self.options = opts = options(config, "ethd", ETHD_DEFAULTS)
        _check_options(opts)
        check_window(config)
        model = config["model"]
        self.settings = {**model["ethd"], **data_settings(config)}
        unet, vae, image_encoder = self._base(config)
        ethd = ETHD(unet, model["adapter"])
        unet.requires_grad_(bool(opts["train_unet"]))
        if config.get("train", {}).get("gradient_checkpointing"):
            ethd.enable_gradient_checkpointing()
        modules = {"ethd": ethd, "vae": frozen(vae), "image_encoder": frozen(image_encoder),
                   **load_encoders(config, fallbacks=("vaid",))}
        self.audio_context = 0
        self.total_steps = config.get("train", {}).get("steps") or 1
        self.data_labels = [label.strip().lower() for label in config["data"].get("labels", [])]
        if opts["condition_source"] == "vaid":
            modules.update(self._vaid_modules(config))
        return nn.ModuleDict(modules)

    def _base(self, config: dict):
        model = config["model"]
        base = init_path(config, "base_svd")
        if base:
            from ..svd.load import load_svd

            # float32 master weights whatever the file stores (SVD files are often fp16).
            return load_svd(base, config=model, dtype=torch.float32)
        if init_path(config, "base"):
            return build_unet(model["unet"]), *self._trained_base(config)
        log.warning("no init.base_svd: ETHD trains on a RANDOM base UNet, VAE and image encoder of the model config")
        return build_unet(model["unet"]), build_vae(model["vae"]), build_image_encoder(model["image_encoder"])

    def _trained_base(self, config: dict):
        """The VAE and image encoder of a ``base`` stage export (their own configs: the VAE's
        records the scaling factor measured on the data); the UNet then trains from scratch."""
        from ..bundles import load_built
        from ..checkpoints import load_model_file

        path = init_path(config, "base")
        if not self.options["train_unet"]:
            raise ValueError(f"init.base {path} holds a VAE and image encoder, not a UNet: set ethd.train_unet to true "
                             "so the UNet trains from scratch")
        states, configs, _ = load_model_file(path, ["vae", "image_encoder"])
        self.base_configs = {name: configs[name] for name in ("vae", "image_encoder")}
        return (load_built(build_vae(configs["vae"]), states["vae"], "vae", Path(path)),
                load_built(build_image_encoder(configs["image_encoder"]), states["image_encoder"], "image_encoder", Path(path)))

    def _vaid_modules(self, config: dict) -> dict[str, nn.Module]:
        """V-AID's frozen lip projector; with ``dicte_expression``, also Di-CTE, the Identity Encoder and the Mapping."""
        from ..bundles import load_vaid_model

        path = init_path(config, "vaid")
        if not path:
            raise ValueError("ethd.condition_source 'vaid' needs init.vaid (a V-AID export) for the lip stream")
        vaid = load_vaid_model(path, speech_source=init_path(config, "speech_encoder"))
        self.speech = SpeechHolder(vaid.speech_encoder)
        # Inference encodes the speech in Di-CTE's windows and runs the projector over all of it:
        # read that much audio around each training window (rounded up to the same on both sides,
        # so 26 frames around 8 for a 25-frame window), so its lip stream is inference's.
        self.audio_context = speech_context(vaid.dicte.window, config["model"]["ethd"]["clip_frames"])
        names = ("lip_projector", "dicte", "identity_encoder", "mapping") if self.options["dicte_expression"] else ("lip_projector",)
        return {name: frozen(getattr(vaid, name)) for name in names}

    def trainable(self, modules: nn.ModuleDict) -> list[str]:
        # The UNet inside is frozen unless train_unet: the loop trains what requires grad.
        return ["ethd"]

    # --- loss ------------------------------------------------------------------------------
    def loss(self, modules: nn.ModuleDict, batch: dict, noise: SampleNoise) -> dict[str, torch.Tensor]:
        opts = self.options
        frames = batch["frames"]
        self._check_frames(frames)
        index = batch["index"]
        speech = None if opts["condition_source"] == "encoders" else self._speech(batch)
        conditioning = self.conditioning(modules, batch, [noise.generator("ethd.reference", i) for i in index.tolist()], speech)
        if opts["dicte_expression"]:
            conditioning = replace(conditioning, driven_exp=self._dicte_expression(modules, batch, conditioning.driven_exp,
                                                                                   speech, noise))
        passes = nested_passes(noise.uniform("ethd.dropout", index, (3,)), opts)
        inputs = select_passes(conditioning, passes, frames.shape[1])
        x0 = encode_latents(modules["vae"], frames)
        sigma = (opts["p_mean"] + opts["p_std"] * noise.normal("ethd.sigma", index, device=x0.device)).exp()
        epsilon = noise.normal("ethd.noise", index, tuple(x0.shape[1:]), device=x0.device)
        weight = None
        if opts["change_weight"] or opts["motion_weight"]:
            portrait = encode_latents(modules["vae"], reference_frames(batch)[:, None])
            weight = change_weights(x0, portrait, opts["change_weight"], opts["motion_weight"])
        per_clip = edm_v_loss(modules["ethd"], x0, sigma, epsilon, inputs, weight)
        return {"loss": per_clip.mean()}

    def _check_frames(self, frames: torch.Tensor) -> None:
        clip_frames = self.settings["clip_frames"]
        if frames.shape[1] != clip_frames:
            raise ValueError(f"the batch has {frames.shape[1]}-frame windows, ETHD trains on clip_frames = {clip_frames}")

    def conditioning(self, modules: nn.ModuleDict, batch: dict, generators: list[torch.Generator],
                     speech: list | None = None) -> Conditioning:
        """ETHD's conditions of every clip of ``batch`` (``generators``: the reference latent's
        noise augmentation, one per clip; ``speech``: :meth:`_speech` of the batch when already
        computed), as the pipeline builds them at inference."""
        settings = self.settings
        frames = batch["frames"]
        reference = reference_frames(batch)
        vae, ethd = modules["vae"], modules["ethd"]
        on = placement(ethd)
        with torch.no_grad():
            latent = torch.cat([reference_latent(vae, image[None], settings["noise_aug"], generator)
                                for image, generator in zip(reference, generators, strict=True)])
            embeds = image_embeds(modules["image_encoder"], reference)
            reference_exp = modules["exp_encoder"](reference)
        return Conditioning(
            reference_latent=latent.to(**on),
            image_embeds=embeds.to(**on),
            added_time_ids=self._time_ids(frames, on),
            lip_windows=lip_windows(self._lip(modules, batch, speech), ethd.lip_context).to(**on),
            driven_exp=per_frame(modules["exp_encoder"], frames).to(**on),
            reference_exp=reference_exp.to(**on),
            face_mask=self._mask(modules, batch, reference).to(**on),
        )

    def _time_ids(self, frames: torch.Tensor, on: dict) -> torch.Tensor:
        """SVD's micro-conditioning per clip: the data's fps id, the clip's own motion bucket."""
        settings = self.settings
        ids = added_time_ids(settings["fps_id"], 0.0, settings["noise_aug"], batch_size=len(frames), **on)
        ids[:, 1] = motion_buckets(frames, settings["motion_reference"]).to(ids)
        return ids

    def _lip(self, modules: nn.ModuleDict, batch: dict, speech: list | None = None) -> torch.Tensor:
        if self.options["condition_source"] == "encoders":
            return per_frame(modules["lip_encoder"], batch["frames"])
        window = batch["frames"].shape[1]
        with torch.no_grad():
            return torch.stack([modules["lip_projector"](features[None])[0, start:start + window].float()
                                for features, start in (speech or self._speech(batch))])

    def _speech(self, batch: dict) -> list[tuple[torch.Tensor, int]]:
        """Per clip: speech features ``[n, L, D]`` of the audio read around its window, and the
        window's first frame among them (no gradient: the speech encoder is frozen)."""
        window, context = batch["frames"].shape[1], self.audio_context
        if context == 0:  # Di-CTE's window is no longer than ETHD's: the window's own audio
            spans = torch.tensor([[0, window]]).expand(len(batch["audio"]), 2)
            audios = batch["audio"]
        else:
            spans, audios = batch["speech_span"], batch["speech_audio"]
        per_frame_samples = audios.shape[1] // (window + 2 * context)
        with torch.no_grad():
            return [(self.speech.features(audio[first * per_frame_samples:(first + count) * per_frame_samples][None],
                                          count)[0], context - first)
                    for audio, (first, count) in zip(audios, spans.tolist(), strict=True)]

    def _dicte_expression(self, modules: nn.ModuleDict, batch: dict, codes: torch.Tensor, speech: list,
                          noise: SampleNoise) -> torch.Tensor:
        """Driven expression ``[B, T, exp_dim]``: per clip with probability ``dicte_expression``,
        Di-CTE's one-step estimate of the window's codes (on the window's frames) instead of the
        codes themselves: inference feeds ETHD Di-CTE's codes, not the frames'. The estimate
        denoises the codes noised at a timestep drawn uniformly up to a ceiling that rises from 0
        to Di-CTE's last over the first ``dicte_ramp`` of ``train.steps``: near the frames'
        expression at first, later as far from them as Di-CTE's guess from noise alone, so ETHD
        learns to follow imperfect codes without learning that codes and frames disagree."""
        opts, index, frames = self.options, batch["index"], codes.shape[1]
        use = noise.uniform("ethd.dicte", index) < opts["dicte_expression"]
        if not bool(use.any()):
            return codes
        dicte = modules["dicte"]
        ramp = min(1.0, noise.step / (opts["dicte_ramp"] * self.total_steps)) if opts["dicte_ramp"] else 1.0
        ceiling = int(ramp * (dicte.train_steps - 1))
        t = (noise.uniform("ethd.dicte_t", index) * (ceiling + 1)).long().clamp(max=ceiling)
        epsilon = noise.normal("ethd.dicte_noise", index, (frames, dicte.exp_dim))
        on = placement(dicte)
        with torch.no_grad():
            window_speech = torch.stack([features[start:start + frames] for features, start in speech])
            identity = modules["identity_encoder"](reference_frames(batch).to(on["device"]))
            estimate = dicte.estimate(codes.to(on["device"]), t, epsilon, window_speech.to(on["device"]), identity,
                                      self._emotion(modules, batch))
        return torch.where(use.to(codes.device)[:, None, None], estimate.to(codes), codes)

    def _emotion(self, modules: nn.ModuleDict, batch: dict) -> torch.Tensor:
        """Each clip's emotion as a user gives it: its label through the Mapping, else the image
        route on the loop's emotion image (another clip with the emotion, never the window)."""
        mapping = modules["mapping"]
        weight = mapping.label_embedding.weight
        with torch.no_grad():
            shown = mapping.from_image(modules["exp_encoder"](batch["emotion_image"].to(weight.device)).float())
        rows = []
        for row, emotion in enumerate(batch["emotion"].tolist()):
            label = self.data_labels[emotion] if emotion >= 0 else None
            rows.append(mapping.from_label([label])[0] if label in mapping.labels else shown[row])
        return torch.stack(rows).to(weight)

    def _mask(self, modules: nn.ModuleDict, batch: dict, reference: torch.Tensor) -> torch.Tensor:
        if self.options["mask_source"] == "shard":
            return clip_masks(batch["mask"])
        with torch.no_grad():
            return clip_masks(modules["face_processor"](reference)[:, None])

    # --- export and sample -----------------------------------------------------------------
    def export(self, modules: nn.ModuleDict, config: dict) -> dict[str, tuple[dict, dict]]:
        model = EmotiveTalkModel(modules["ethd"], modules["vae"], modules["image_encoder"],
                                 settings=dict(self.settings))
        components = ethd_components(model, self._architecture(config, modules))
        adapter_only = bool(init_path(config, "base_svd")) and not self.options["train_unet"]
        return {name: components[name] for name in (("adapter",) if adapter_only else ETHD_COMPONENTS)}

    def export_info(self, modules: nn.ModuleDict, config: dict) -> dict:
        base = init_path(config, "base_svd")
        facts = {
            "ethd": dict(self.settings),
            "condition_source": self.options["condition_source"],
            "mask_source": self.options["mask_source"],
            "train_unet": bool(self.options["train_unet"]),
            "base_svd": file_digest(base) if base else None,
        }
        if base:
            # The base's architecture, which models.load_emotivetalk_model builds for an adapter-only file.
            architecture = self._architecture(config, modules)
            facts["base_config"] = {name: architecture[name] for name in ("unet", "vae", "image_encoder")}
        return facts

    def sample(self, modules: nn.ModuleDict, batch: dict, folder: Path, step: int) -> list[Path]:
        """One PNG: the first clip's frames over the frames ETHD generates from its reference
        frame and conditions (``sample_steps`` Euler steps, ``sample_guidance``, seed 0)."""
        opts = self.options
        first = {key: value[:1] for key, value in batch.items()}
        conditioning = self.conditioning(modules, first, [torch.Generator().manual_seed(0)])
        frames = first["frames"].shape[1]
        sigmas = karras_sigmas(opts["sample_steps"])
        x = start_latents(initial_noise(0, frames, (4, *conditioning.reference_latent.shape[-2:])), sigmas)
        strengths = opts["sample_guidance"]
        guidance = default_guidance() if strengths is None else Guidance(*strengths)
        denoiser = GuidedDenoiser(modules["ethd"], conditioning, guidance)
        latents = sample_euler(denoiser, x, sigmas)[0]
        generated = torch.cat(list(decode_latents(modules["vae"], to_vae_space(modules["vae"], latents), chunk=frames, overlap=0)))
        truth = first["frames"][0].permute(0, 2, 3, 1).float().cpu()
        strip = torch.cat([torch.cat(list(truth), dim=1), torch.cat(list(generated), dim=1)], dim=0)
        path = folder / f"ethd_{step:08d}.png"
        _save_png(strip, path)
        return [path]


    def _architecture(self, config: dict, modules: nn.ModuleDict) -> dict:
        """The component configs the modules were built from: ``model``, except for parts read
        from a file with configs of its own: the VAE and image encoder of an ``init.base`` export,
        all three parts of a diffusers folder base."""
        base = init_path(config, "base_svd")
        if not base or not Path(base).is_dir():
            return {**config["model"], **self.base_configs}
        drop = {"transformers_version", "model_type", "architectures", "dtype", "torch_dtype"}
        return {
            **config["model"],
            "unet": {k: v for k, v in modules["ethd"].unet.config.items() if not k.startswith("_")},
            "vae": {k: v for k, v in modules["vae"].config.items() if not k.startswith("_")},
            "image_encoder": {k: v for k, v in modules["image_encoder"].config.to_diff_dict().items() if k not in drop},
        }


def _save_png(image: torch.Tensor, path: Path) -> None:
    """``[H, W, 3]`` in 0..1 -> an 8-bit PNG."""
    from PIL import Image

    Image.fromarray((image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()).save(path)
