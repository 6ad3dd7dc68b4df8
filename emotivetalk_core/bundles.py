"""Bundles, not networks: the loaded networks grouped as the pipeline and nodes hold them, and their loading.

Named for what it holds: dataclasses of ready modules and the model files they load from; the
networks themselves are in ``networks/`` (the paper's) and ``svd/build.py`` (SVD's). Two bundles,
matching the two halves of the paper's figure and the two loader nodes:

- :class:`EmotiveTalkModel` (ETHD + VAE + image encoder): the video diffusion side.
- :class:`VAIDModel` (speech encoder + Audio-lip Projector + Di-CTE + visual encoders + Mapping):
  the audio side, plus the encoders that read the portrait.

Both load from one self-contained EmotiveTalk file (such as the shipped ``default`` and ``fast`` models), or,
for ETHD, from an adapter file plus base SVD weights the user already has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoints import (
    CheckpointError,
    load_model_file,
    read_metadata,
    save_model_file,
)
from .networks.ethd import ETHD
from .svd.build import build_image_encoder, build_unet, build_vae

log = logging.getLogger(__name__)

WEIGHTS = Path(__file__).resolve().parent / "weights"
# The models the pack ships, by the name a user gives instead of a path: "default" (trained in
# SynthTalk, guided sampling) and "fast" (its distilled few-step student: one UNet pass per step).
SHIPPED_MODELS = {"default": WEIGHTS / "emotivetalk_default.safetensors", "fast": WEIGHTS / "emotivetalk_fast.safetensors"}
DEFAULT_MODEL_PATH = SHIPPED_MODELS["default"]

ETHD_COMPONENTS = ("unet", "adapter", "vae", "image_encoder")
VAID_COMPONENTS = ("lip_projector", "dicte", "lip_encoder", "exp_encoder", "identity_encoder", "face_processor", "mapping")


def resolve_model_file(source: str | Path) -> Path:
    """A shipped model's name (:data:`SHIPPED_MODELS`) -> its file; anything else is a path that must exist."""
    shipped = SHIPPED_MODELS.get(str(source))
    path = shipped or Path(source)
    if not path.is_file():
        hint = f" (the '{source}' model ships in the repository: reinstall the pack)" if shipped else ""
        raise CheckpointError(f"EmotiveTalk model file not found: {path}{hint}")
    return path


def describe(info: dict) -> str:
    """One line about a model file, saying loudly when it is untrained."""
    if not info.get("trained", False):
        return f"UNTRAINED model ({info.get('note', 'random weights')}): its output is noise, not a talking head"
    return info.get("note", "trained model")


# --- ETHD side ---------------------------------------------------------------------------

@dataclass
class EmotiveTalkModel:
    """ETHD (SVD UNet + adapters), the SVD VAE and the CLIP image encoder, ready to run."""

    ethd: nn.Module
    vae: nn.Module
    image_encoder: nn.Module
    # SVD conditioning used in training, so inference matches it (docs/ARCHITECTURE.md,
    # "SVD conditioning: training values at inference").
    settings: dict
    info: dict = field(default_factory=dict)

    @property
    def unet_levels(self) -> int:
        """The UNet's resolution levels (each but the last halves the latent)."""
        return len(self.ethd.unet.config.block_out_channels)


def build_emotivetalk_model(config: dict, info: dict | None = None) -> EmotiveTalkModel:
    """A randomly initialised model of a named config's shape (tests, the default-model script)."""
    return EmotiveTalkModel(
        ethd=ETHD(build_unet(config["unet"]), config["adapter"]),
        vae=build_vae(config["vae"]),
        image_encoder=build_image_encoder(config["image_encoder"]),
        settings=dict(config["ethd"]),
        info=dict(info or {}),
    )


def ethd_components(model: EmotiveTalkModel, config: dict) -> dict:
    """``{component: (state_dict, config)}`` of the ETHD side, for :func:`save_model_file`."""
    return {
        "unet": (model.ethd.unet.state_dict(), config["unet"]),
        "adapter": (model.ethd.adapter_state_dict(), {"adapter": config["adapter"], "ethd": model.settings}),
        "vae": (model.vae.state_dict(), config["vae"]),
        "image_encoder": (model.image_encoder.state_dict(), config["image_encoder"]),
    }


def base_config_of(source: str | Path) -> str | dict:
    """The SVD architecture an ETHD file pairs with (:func:`base_config`)."""
    return base_config(*read_metadata(resolve_model_file(source)))


def base_config(configs: dict, info: dict) -> str | dict:
    """The SVD architecture of a model file's ``configs`` and ``info``: its own UNet, VAE and image
    encoder when it holds them, else the base it records (``base_config``), else SVD-XT."""
    if all(name in configs for name in _BASE_PARTS):
        return {name: configs[name] for name in _BASE_PARTS}
    return info.get("base_config", "svd-xt")


def load_emotivetalk_model(source: str | Path = "default", base: str | Path | None = None,
                           base_config: str | dict | None = None, vae: nn.Module | None = None,
                           image_encoder: nn.Module | None = None) -> EmotiveTalkModel:
    """Load the ETHD side.

    ``source`` is a self-contained file (``default`` included) or an adapter-only file. Each of
    UNet, VAE and image encoder comes from, in order: the ``vae`` / ``image_encoder`` given (e.g.
    built from ComfyUI's own loaders, so SVD is not loaded twice), the file itself, or ``base``:
    Stability's single-file SVD (``svd_xt.safetensors``) or a diffusers SVD folder, of the shape
    ``base_config`` names (default: what the file records, else SVD-XT); only the parts still
    missing are read from ``base``.
    """
    path = resolve_model_file(source)
    configs, info = read_metadata(path)
    if "adapter" not in configs:
        raise CheckpointError(f"{path} has no ETHD adapter (it holds {sorted(configs)}); pick an ETHD or full model file")
    parts = {name: module for name, module in (("vae", vae), ("image_encoder", image_encoder)) if module is not None}
    wanted = ["adapter"] + [name for name in _BASE_PARTS if name in configs and name not in parts]
    states, configs, info = load_model_file(path, wanted)
    for name in wanted[1:]:
        parts[name] = load_built(_BUILDERS[name](configs[name]), states[name], name, path)
    missing = tuple(name for name in _BASE_PARTS if name not in parts)
    if base is not None and not missing:
        log.warning("the base %s is not used: %s holds its own UNet, VAE and image encoder", base, path.name)
    if missing and base is None:
        raise CheckpointError(
            f"{path} holds only ETHD adapters (no {', '.join(missing)}); it needs the base Stable Video Diffusion "
            "weights too (svd_xt.safetensors from ComfyUI's models/checkpoints, or a diffusers SVD folder)"
        )
    if missing:
        from .svd.load import load_svd_parts

        parts.update(load_svd_parts(base, missing, config=base_config or info.get("base_config", "svd-xt")))
    ethd = ETHD(parts["unet"], configs["adapter"]["adapter"])
    ethd.load_adapter_state_dict(states["adapter"])
    log.info("EmotiveTalk model %s: %s", path.name, describe(info))
    return EmotiveTalkModel(ethd.eval(), parts["vae"].eval(), parts["image_encoder"].eval(),
                            dict(configs["adapter"]["ethd"]), info)


_BASE_PARTS = ("unet", "vae", "image_encoder")
_BUILDERS = {"unet": build_unet, "vae": build_vae, "image_encoder": build_image_encoder}


def load_built(module: nn.Module, state_dict: dict, name: str, path: Path) -> nn.Module:
    """``module`` with a component's weights from ``path``; a mismatch with its config is an error
    naming the component (loading and training both use it)."""
    try:
        result = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # torch's size-mismatch report: keep its first lines, name the file
        mismatches = [line.strip() for line in str(error).splitlines() if "size mismatch" in line][:3]
        raise CheckpointError(
            f"{path}: the weights of component '{name}' have other shapes than its config says "
            f"({'; '.join(mismatches) or error}); the file was edited or damaged: export it again"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: component '{name}' does not match its config: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return module


# --- V-AID side --------------------------------------------------------------------------

@dataclass
class VAIDModel:
    """The audio side of the figure plus the encoders that read the portrait."""

    speech_encoder: nn.Module
    lip_projector: nn.Module
    dicte: nn.Module
    lip_encoder: nn.Module
    exp_encoder: nn.Module
    identity_encoder: nn.Module
    face_processor: nn.Module
    mapping: nn.Module
    speech_config: dict
    info: dict = field(default_factory=dict)


def vaid_classes() -> dict:
    """``{component: (class, config section)}`` of the V-AID side, as files name them."""
    from .networks.dicte import DiCTE
    from .networks.encoders import ExpEncoder, FaceProcessor, IdentityEncoder, LipEncoder
    from .networks.mapping import Mapping
    from .networks.vaid import AudioLipProjector

    return {
        "lip_projector": (AudioLipProjector, "vaid"),
        "dicte": (DiCTE, "dicte"),
        "lip_encoder": (LipEncoder, "encoders"),
        "exp_encoder": (ExpEncoder, "encoders"),
        "identity_encoder": (IdentityEncoder, "encoders"),
        "face_processor": (FaceProcessor, "encoders"),
        "mapping": (Mapping, "mapping"),
    }


def build_vaid_model(config: dict, speech_source: str | Path | None = None, info: dict | None = None) -> VAIDModel:
    """A randomly initialised V-AID bundle of a named config's shape."""
    from .networks.speech.load import load_speech_encoder

    modules = {name: cls(config[section]) for name, (cls, section) in vaid_classes().items()}
    speech = load_speech_encoder(config["speech"], speech_source)
    return VAIDModel(speech_encoder=speech, speech_config=dict(config["speech"]), info=dict(info or {}), **modules)


def vaid_components(model: VAIDModel, config: dict) -> dict:
    """``{component: (state_dict, config)}`` of the V-AID side, for :func:`save_model_file`."""
    return {name: (getattr(model, name).state_dict(), config[section]) for name, (_, section) in vaid_classes().items()}


def vaid_info(model: VAIDModel) -> dict:
    """What a V-AID file must record about the speech encoder it was trained with."""
    return {"speech_encoder": {"config": model.speech_config, "fingerprint": model.speech_encoder.fingerprint()}}


def load_vaid_model(source: str | Path = "default", speech_source: str | Path | None = None) -> VAIDModel:
    """Load the V-AID side; refuses a speech encoder other than the one it was trained with."""
    from .networks.speech.load import check_speech_encoder, load_speech_encoder

    path = resolve_model_file(source)
    states, configs, info = load_model_file(path, list(VAID_COMPONENTS))
    recorded = info.get("speech_encoder")
    if recorded is None:
        raise CheckpointError(f"{path} does not record the speech encoder its V-AID was trained with")
    expected = recorded["fingerprint"]
    needed = (f"It needs {expected.get('source') or expected['architecture']} "
              "(a wav2vec2 file in ComfyUI's models/audio_encoders, or a Hugging Face folder).")
    if recorded["config"].get("kind") != "logmel" and speech_source is None:
        raise CheckpointError(f"{path} needs its speech encoder. {needed}")
    if recorded["config"].get("kind") == "logmel" and speech_source is not None:
        log.warning("the speech encoder %s is not used: %s computes log-mel features and needs no speech encoder file",
                    speech_source, path.name)
    speech = load_speech_encoder(recorded["config"], speech_source)
    check_speech_encoder(expected, speech.fingerprint(), needed_file_hint=needed)
    modules = {}
    for name, (cls, _) in vaid_classes().items():
        modules[name] = load_built(cls(configs[name]), states[name], name, path).eval()
    log.info("EmotiveTalk V-AID %s: %s", path.name, describe(info))
    return VAIDModel(speech_encoder=speech.eval(), speech_config=dict(recorded["config"]), info=info, **modules)


def save_full_model(path: str | Path, model: EmotiveTalkModel, vaid: VAIDModel, config: dict, info: dict) -> Path:
    """One self-contained file with both halves (what ``default`` is)."""
    components = {**ethd_components(model, config), **vaid_components(vaid, config)}
    return save_model_file(path, components, {**info, **vaid_info(vaid)})


def to_device(model, device: str | torch.device, dtype: torch.dtype | None = None):
    """Move every module of a bundle; returns the bundle."""
    device = torch.device(device)
    for value in vars(model).values():
        if isinstance(value, nn.Module) and _needs_move(value, device, dtype):
            # nn.Module's own move: diffusers' ModelMixin.to warns about "modules that should be kept in
            # float32" on every dtype cast, even when its list of them is empty (the SVD VAE's is).
            nn.Module.to(value, device=device, dtype=dtype)
    return model


def _needs_move(module: nn.Module, device: torch.device, dtype: torch.dtype | None) -> bool:
    # Skipping no-op moves also keeps diffusers from warning about casts that never happen.
    return any(t.device.type != device.type or (device.index is not None and t.device.index != device.index)
               or (dtype is not None and t.is_floating_point() and t.dtype != dtype)
               for t in [*module.parameters(), *module.buffers()])


def file_digest(path: str | Path) -> dict:
    """Name and sha256 of a model file or folder (for the settings an mp4 records).

    Files over 1 GiB hash their first and last 64 MiB plus their size, so a 10 GB SVD file
    costs a fraction of a second instead of a minute; the kind says which.
    """
    import hashlib

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.safetensors"))
        return {"name": path.name, "files": [file_digest(p) for p in files]}
    size = path.stat().st_size
    digest = hashlib.sha256()
    chunk = 64 << 20
    with path.open("rb") as handle:
        if size <= 1 << 30:
            for block in iter(lambda: handle.read(chunk), b""):
                digest.update(block)
            kind = "sha256"
        else:
            digest.update(handle.read(chunk))
            handle.seek(size - chunk)
            digest.update(handle.read(chunk))
            digest.update(str(size).encode())
            kind = "sha256-head-tail-64MiB"
    return {"name": path.name, kind: digest.hexdigest(), "bytes": size}
