"""Loading Stable Video Diffusion into diffusers/transformers modules.

From Stability's single-file checkpoint (renamed by :mod:`.convert`) or a diffusers pipeline
folder (:func:`load_svd`, :func:`load_svd_parts`), and from the state dicts ComfyUI's own VAE and
CLIP vision objects hold (:func:`vae_from_stability_state`,
:func:`image_encoder_from_transformers_state`). Only safetensors are read. Modules are built on the
meta device and take the read tensors as they are, so peak memory is about one copy of the
weights; names and shapes that do not fit the built modules are a ValueError naming them (in a
single file, checked before any tensor data is read).

diffusers and transformers are imported inside the functions that need them (``import diffusers``
alone takes seconds).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from .convert import STABILITY_PREFIXES, _COMPONENTS, _few, _split_stability, _vae_to_diffusers

logger = logging.getLogger(__name__)

# Weight file stems of a diffusers pipeline folder, per subfolder.
_FOLDER_WEIGHT_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "image_encoder": "model"}


def _shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def _check_names_and_shapes(what: str, expected: Mapping[str, tuple], found: Mapping[str, tuple]) -> None:
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    reshaped = sorted(f"{k} {list(found[k])} (model {list(expected[k])})"
                      for k in expected.keys() & found.keys() if tuple(found[k]) != tuple(expected[k]))
    problems = [f"{label} {len(names)}: {_few(names)}"
                for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped))
                if names]
    if problems:
        raise ValueError(f"{what} does not fit the model built from its config; " + "; ".join(problems))


def _resolve_config(config: str | Mapping) -> Mapping:
    from ..configs import get_config

    resolved = get_config(config) if isinstance(config, str) else config
    absent = [name for name in STABILITY_PREFIXES if name not in resolved]
    if absent:
        raise ValueError(f"config lacks {absent}; it needs per-component kwargs for unet, vae and image_encoder")
    return resolved


def _config_factories(config: Mapping) -> dict[str, Callable[[], torch.nn.Module]]:
    from .build import build_image_encoder, build_unet, build_vae

    return {
        "unet": lambda: build_unet(config["unet"]),
        "vae": lambda: build_vae(config["vae"]),
        "image_encoder": lambda: build_image_encoder(config["image_encoder"]),
    }


def _folder_factories(folder: Path) -> dict[str, Callable[[], torch.nn.Module]]:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    def diffusers_model(cls, sub):
        return lambda: cls.from_config(cls.load_config(str(folder / sub)))

    return {
        "unet": diffusers_model(UNetSpatioTemporalConditionModel, "unet"),
        "vae": diffusers_model(AutoencoderKLTemporalDecoder, "vae"),
        "image_encoder": lambda: CLIPVisionModelWithProjection(
            CLIPVisionConfig.from_json_file(str(folder / "image_encoder" / "config.json"))),
    }


def _build_empty(factories: Mapping[str, Callable[[], torch.nn.Module]]) -> dict[str, torch.nn.Module]:
    # Parameters on the meta device cost no memory; load_state_dict(assign=True) then puts the
    # file's tensors in place, so the real-size model is never allocated twice.
    with torch.device("meta"):
        return {name: factory() for name, factory in factories.items()}


def _read(handle, keys: Iterable[str], device: torch.device, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    tensors = {}
    for key in keys:
        tensor = handle.get_tensor(key)
        cast = dtype if dtype is not None and tensor.is_floating_point() else None
        # Always a fresh tensor: on the CPU, get_tensor's result sits at the file's byte offsets,
        # and unaligned weights take other SIMD paths (results differ in the last bits).
        tensors[key] = tensor.to(device=device, dtype=cast, copy=True)
    return tensors


def _restore_position_ids(image_encoder: torch.nn.Module, device: torch.device) -> None:
    # A non-persistent buffer is not in any file, so meta construction leaves it on meta.
    embeddings = image_encoder.vision_model.embeddings
    position_ids = torch.arange(embeddings.num_positions, device=device).expand((1, -1))
    embeddings.register_buffer("position_ids", position_ids, persistent=False)


def _finish(modules: dict[str, torch.nn.Module], state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
            device: torch.device, source: Path | str) -> dict[str, torch.nn.Module]:
    for name, module in modules.items():
        _check_names_and_shapes(f"{source}: {name}", _shapes(module.state_dict()), _shapes(state_dicts[name]))
        module.load_state_dict(state_dicts[name], assign=True)
    if "image_encoder" in modules:
        _restore_position_ids(modules["image_encoder"], device)
    for name, module in modules.items():
        left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
        if left:
            raise RuntimeError(f"{name}: tensors not loaded (still on the meta device): {_few(left)}")
        module.eval()
    return modules


def _load_stability_file(path: Path, names: tuple[str, ...], config: str | Mapping, device: torch.device,
                         dtype: torch.dtype | None) -> dict[str, torch.nn.Module]:
    from ..checkpoints import open_safetensors

    factories = _config_factories(_resolve_config(config))
    modules = _build_empty({name: factories[name] for name in names})
    with open_safetensors(path) as handle:
        groups = _split_stability(handle.keys())
        # Check names and shapes in the file's own names before reading any tensor data.
        for name, module in modules.items():
            prefix = STABILITY_PREFIXES[name]
            expected = {prefix + k: s for k, s in _shapes(_COMPONENTS[name].to_stability(module.state_dict())).items()}
            found = {k: tuple(handle.get_slice(k).get_shape()) for k in groups[name]}
            _check_names_and_shapes(f"{path}: {name} ({prefix}*)", expected, found)
        raw = {name: _read(handle, groups[name], device, dtype) for name in names}
    state_dicts = {
        name: _COMPONENTS[name].to_diffusers({k[len(STABILITY_PREFIXES[name]):]: v for k, v in tensors.items()})
        for name, tensors in raw.items()
    }
    return _finish(modules, state_dicts, device, path)


def _with_variant(filename: str, variant: str | None) -> str:
    if variant is None:
        return filename
    stem, suffix = filename.rsplit(".", 1)
    return f"{stem}.{variant}.{suffix}"  # diffusers/transformers: model.fp16.safetensors, ...index.fp16.json


def _weight_files(folder: Path, stem: str, dtype: torch.dtype | None) -> list[Path]:
    """The safetensors file(s) of one pipeline subfolder: single or sharded, plain or ``fp16`` variant."""
    variants = ("fp16", None) if dtype == torch.float16 else (None, "fp16")
    for variant in variants:
        single = folder / _with_variant(f"{stem}.safetensors", variant)
        index = folder / _with_variant(f"{stem}.safetensors.index.json", variant)
        if single.is_file():
            return [single]
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / shard for shard in shards]
    raise FileNotFoundError(
        f"{folder} has no {stem}.safetensors (nor a sharded or fp16 variant of it); "
        "pickle weights (.bin) are never read")


def _load_diffusers_folder(folder: Path, names: tuple[str, ...], device: torch.device,
                           dtype: torch.dtype | None) -> dict[str, torch.nn.Module]:
    from ..checkpoints import open_safetensors

    for sub in _FOLDER_WEIGHT_STEMS:
        if not (folder / sub / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder / sub / 'config.json'} not found; a diffusers SVD folder "
                "(stabilityai/stable-video-diffusion-img2vid-xt layout) has unet/, vae/ and image_encoder/, "
                "each with config.json and safetensors weights")
    files = {sub: _weight_files(folder / sub, _FOLDER_WEIGHT_STEMS[sub], dtype) for sub in names}
    factories = _folder_factories(folder)
    modules = _build_empty({name: factories[name] for name in names})
    state_dicts = {}
    for name, paths in files.items():
        state_dicts[name] = {}
        for path in paths:
            with open_safetensors(path) as handle:
                state_dicts[name].update(_read(handle, handle.keys(), device, dtype))
    return _finish(modules, state_dicts, device, folder)


def load_svd(source: str | Path, config: str | Mapping = "svd-xt", device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """Load ``(unet, vae, image_encoder)``, in eval mode, from either SVD format.

    ``source`` is Stability's single-file checkpoint (``svd_xt.safetensors``; ``config``, a name
    from :mod:`configs` or a dict with ``unet``/``vae``/``image_encoder`` kwargs, gives the
    architecture) or a diffusers folder with ``unet/``, ``vae/`` and ``image_encoder/`` (each
    subfolder's ``config.json`` gives the architecture; ``config`` is not used). Only safetensors
    are read. ``dtype=None`` keeps the stored dtype; otherwise floating tensors are cast while
    reading. Modules are built on the meta device and take the read tensors as they are, so peak
    memory is about one copy of the weights (plus one tensor in transit). Names or shapes that do
    not fit the built modules raise ValueError naming them.
    """
    modules = load_svd_parts(source, tuple(STABILITY_PREFIXES), config, device, dtype)
    return modules["unet"], modules["vae"], modules["image_encoder"]


def load_svd_parts(source: str | Path, names: tuple[str, ...], config: str | Mapping = "svd-xt",
                   device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> dict[str, torch.nn.Module]:
    """Like :func:`load_svd`, for some of ``unet``, ``vae``, ``image_encoder``: the others' tensors
    are never read (the VAE and image encoder may come from ComfyUI's own loaders instead)."""
    unknown = [name for name in names if name not in STABILITY_PREFIXES]
    if unknown:
        raise ValueError(f"unknown SVD components {unknown}; choose from {list(STABILITY_PREFIXES)}")
    path = Path(source)
    device = torch.device(device)
    if path.is_dir():
        modules = _load_diffusers_folder(path, names, device, dtype)
    elif path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: only .safetensors checkpoints are read (pickle files are never loaded)")
        modules = _load_stability_file(path, names, config, device, dtype)
    else:
        raise FileNotFoundError(
            f"{path} does not exist; expected Stability's single-file SVD checkpoint "
            "(e.g. ComfyUI/models/checkpoints/svd_xt.safetensors) or a diffusers folder with unet/, vae/ "
            "and image_encoder/ subfolders (stabilityai/stable-video-diffusion-img2vid-xt layout)")
    logger.info("loaded %s of Stable Video Diffusion from %s", ", ".join(names), path)
    return modules


def vae_from_stability_state(state_dict: Mapping[str, torch.Tensor], config: str | Mapping = "svd-xt") -> torch.nn.Module:
    """The diffusers VAE from a VAE state dict in Stability's names without ``first_stage_model.``:
    what ComfyUI's VAE object holds for SVD (``VAE.get_sd()``). The tensors are taken as they
    are (no copy), so reusing ComfyUI's VAE costs no second set of weights."""
    modules = _build_empty({"vae": _config_factories(_resolve_config(config))["vae"]})
    return _one_dtype(_finish(modules, {"vae": _vae_to_diffusers(state_dict)}, _device_of(state_dict), "ComfyUI VAE")["vae"])


def image_encoder_from_transformers_state(state_dict: Mapping[str, torch.Tensor],
                                          config: str | Mapping = "svd-xt") -> torch.nn.Module:
    """The image encoder from a CLIP vision state dict in transformers' names: what ComfyUI's
    CLIP_VISION object holds (``ClipVisionModel.get_sd()``, converted from OpenCLIP on load).
    Tensors are taken as they are (no copy)."""
    modules = _build_empty({"image_encoder": _config_factories(_resolve_config(config))["image_encoder"]})
    state = {k: v for k, v in state_dict.items() if k != "vision_model.embeddings.position_ids"}
    return _one_dtype(_finish(modules, {"image_encoder": state}, _device_of(state_dict), "ComfyUI CLIP vision")["image_encoder"])


def _one_dtype(module: torch.nn.Module) -> torch.nn.Module:
    """ComfyUI keeps a few tensors of a model in another dtype than the rest (its manual-cast
    layers compute in the input's dtype; e.g. CLIP vision's layer norms and projection stay float32
    beside float16 weights); a torch module computes in one. The odd tensors are cast (copied), the
    rest stay shared: the dtype most tensors have wins."""
    counts = Counter(tensor.dtype for tensor in module.parameters() if tensor.is_floating_point())
    return module.to(counts.most_common(1)[0][0]) if len(counts) > 1 else module


def _device_of(state_dict: Mapping[str, torch.Tensor]) -> torch.device:
    return next(iter(state_dict.values())).device
