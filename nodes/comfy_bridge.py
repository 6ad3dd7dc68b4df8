"""One of the two modules of the pack that touch ComfyUI (the other, ``comfy_native``, is the native
SamplerCustomAdvanced path).

Every ComfyUI import happens inside a function, so the node classes also run where ComfyUI is
absent (plain pytest, a script): there each function has a plain fallback (CPU, float32, no
progress bar, no interrupts, ``./models/<folder>`` and ``./output``).

Inside ComfyUI the models join its memory management: each model group is wrapped in a
``ModelPatcher`` and brought onto the GPU with ``load_models_gpu`` right before a core call, so
ComfyUI can offload it again when another model (an upscaler, a face restorer) needs the memory.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

log = logging.getLogger(__name__)

# ComfyUI model folder names the pack reads from, and what belongs in each (for error messages).
EMOTIVETALK_FOLDER = "emotivetalk"
SPEECH_FOLDER = "audio_encoders"
BASE_FOLDER = "checkpoints"
FOLDER_CONTENTS = {
    EMOTIVETALK_FOLDER: "EmotiveTalk model files (.safetensors: a full model, or ETHD adapters + V-AID)",
    SPEECH_FOLDER: "wav2vec2 speech encoder files (.safetensors, e.g. wav2vec2-base-960h)",
    BASE_FOLDER: "Stable Video Diffusion checkpoints (svd.safetensors / svd_xt.safetensors)",
}
DEFAULT_MODEL = "default"
NO_FILE = "none"


def _comfy(name: str) -> ModuleType | None:
    """``import name`` from ComfyUI, or None when ComfyUI is not there.

    Only the absence of ComfyUI's own module counts; an ImportError raised inside an existing
    ComfyUI module is a real error and propagates.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and name.startswith(error.name):
            return None
        raise


# --- devices, dtypes, interrupts, progress ---------------------------------------------------

def torch_device() -> torch.device:
    mm = _comfy("comfy.model_management")
    return mm.get_torch_device() if mm else torch.device("cpu")


def offload_device() -> torch.device:
    mm = _comfy("comfy.model_management")
    return mm.unet_offload_device() if mm else torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where node outputs (IMAGE, LATENT, MASK) live between nodes."""
    mm = _comfy("comfy.model_management")
    return mm.intermediate_device() if mm else torch.device("cpu")


def diffusion_dtype(parameters: int) -> torch.dtype:
    """ComfyUI's choice for a diffusion model of this size on the compute device (fp16/bf16/fp32)."""
    mm = _comfy("comfy.model_management")
    return mm.unet_dtype(torch_device(), parameters) if mm else torch.float32


def vae_dtype() -> torch.dtype:
    # SVD's VAE overflows in fp16; ComfyUI's own VAE loader allows bf16 or fp32 for it too.
    mm = _comfy("comfy.model_management")
    return mm.vae_dtype(torch_device(), [torch.bfloat16, torch.float32]) if mm else torch.float32


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException when the user pressed Cancel."""
    mm = _comfy("comfy.model_management")
    if mm:
        mm.throw_exception_if_processing_interrupted()


class Progress:
    """``progress(done, total)`` for core callbacks: checks Cancel, then moves ComfyUI's bar."""

    def __init__(self, total: int):
        utils = _comfy("comfy.utils")
        self._bar = utils.ProgressBar(total) if utils else None

    def __call__(self, done: int, total: int) -> None:
        check_interrupt()
        if self._bar is not None:
            self._bar.update_absolute(done, total)


# --- memory management -----------------------------------------------------------------------

class _Holder(nn.Module):
    """One model group as a single module: ModelPatcher sets ``model.device``, which diffusers and
    transformers modules expose as a read-only property, so they cannot be wrapped directly."""

    def __init__(self, modules: dict[str, nn.Module]):
        super().__init__()
        self.parts = nn.ModuleDict(modules)


def _holder(group: str, parts: dict[str, nn.Module]) -> _Holder:
    # ComfyUI's log names a model by its class ("Requested to load EmotiveTalk_ethd").
    return type(f"EmotiveTalk_{group}", (_Holder,), {})(parts)


@dataclass
class _Managed:
    groups: dict[str, list[nn.Module]]
    patchers: dict[str, object]
    notes: dict = field(default_factory=dict)


# Keyed by id(bundle): the bundles are (unhashable) dataclasses. Entries leave with their bundle.
_MANAGED: dict[int, _Managed] = {}


def manage(bundle, groups: dict[str, tuple[tuple[str, ...], torch.dtype]]):
    """Put a loaded bundle under ComfyUI's memory management; returns the bundle.

    ``groups`` maps a group name to (the bundle's module attributes, dtype). Each group is cast
    once, parked on the offload device and, inside ComfyUI, wrapped in its own ModelPatcher, so
    a stage loads only the groups it needs (decoding never pulls the UNet onto the GPU).
    """
    patcher_module = _comfy("comfy.model_patcher")
    offload = offload_device()
    modules, patchers = {}, {}
    for group, (names, dtype) in groups.items():
        parts = {name: getattr(bundle, name) for name in names}
        for module in parts.values():
            if _needs_cast(module, offload, dtype):
                module.to(device=offload, dtype=dtype)
        modules[group] = list(parts.values())
        if patcher_module:
            patchers[group] = patcher_module.ModelPatcher(_holder(group, parts), load_device=torch_device(), offload_device=offload)
    key = id(bundle)
    _MANAGED[key] = _Managed(modules, patchers)
    weakref.finalize(bundle, _MANAGED.pop, key, None)
    return bundle


def _needs_cast(module: nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    # Skipping no-op casts keeps diffusers from warning about casts that never happen.
    return any(t.device != device or (t.is_floating_point() and t.dtype != dtype)
               for t in [*module.parameters(), *module.buffers()])


def use(bundle, *groups: str) -> None:
    """Bring ``groups`` of a managed bundle onto the compute device before a core call."""
    entry = _entry(bundle)
    unknown = [group for group in groups if group not in entry.groups]
    if unknown:
        raise ValueError(f"unknown model groups {unknown}; this bundle has {sorted(entry.groups)}")
    mm = _comfy("comfy.model_management")
    if mm and entry.patchers:
        # Full load: these are plain torch modules, not comfy.ops layers that can run partly offloaded.
        mm.load_models_gpu([entry.patchers[group] for group in groups], force_full_load=True)
        return
    device = torch_device()
    for group in groups:
        for module in entry.groups[group]:
            module.to(device)


def notes(bundle) -> dict:
    """A scratch dict that lives as long as the bundle (e.g. the last measured sampler speed)."""
    return _entry(bundle).notes


def _entry(bundle) -> _Managed:
    entry = _MANAGED.get(id(bundle))
    if entry is None:
        raise ValueError(f"this {type(bundle).__name__} was not loaded by an EmotiveTalk loader node")
    return entry


# --- model folders ---------------------------------------------------------------------------

def register_model_folders() -> None:
    """Register ``models/emotivetalk`` (and ``audio_encoders`` on ComfyUI versions without it).

    An existing entry (from extra_model_paths.yaml, read before custom nodes load) is extended
    with add_model_folder_path, never replaced, so the user's extra paths keep working.
    """
    folder_paths = _comfy("folder_paths")
    if folder_paths is None:
        return
    for name in (EMOTIVETALK_FOLDER, SPEECH_FOLDER):
        default = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path(name, default)
            extensions = folder_paths.folder_names_and_paths[name][1]
            if isinstance(extensions, set):
                extensions.add(".safetensors")
        else:
            folder_paths.folder_names_and_paths[name] = ([default], {".safetensors"})


def model_folders(folder: str) -> list[Path]:
    folder_paths = _comfy("folder_paths")
    if folder_paths is None:
        return [Path.cwd() / "models" / folder]
    return [Path(path) for path in folder_paths.get_folder_paths(folder)]


def list_files(folder: str, *first: str) -> list[str]:
    """``[*first] +`` the .safetensors files of a model folder (``first``: the shipped models' names, or "none")."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        names = folder_paths.get_filename_list(folder)
    else:
        names = sorted(str(path.relative_to(root)) for root in model_folders(folder) if root.is_dir()
                       for path in root.rglob("*.safetensors"))
    # Model files are safetensors only (never pickle), base SVD included.
    return [*first, *(name for name in names if name.lower().endswith(".safetensors"))]


def resolve_file(folder: str, name: str) -> Path:
    """A chosen file name -> its path; the error names the file, the folders and what goes there."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        found = folder_paths.get_full_path(folder, name)
        path = Path(found) if found else None
    else:
        path = next((root / name for root in model_folders(folder) if (root / name).is_file()), None)
    if path is None or not path.is_file():
        where = ", ".join(str(root) for root in model_folders(folder))
        raise FileNotFoundError(
            f"model file {name!r} was not found in models/{folder} (looked in: {where}); "
            f"that folder holds {FOLDER_CONTENTS.get(folder, 'model files')}"
        )
    return path


# --- output ----------------------------------------------------------------------------------

def output_directory() -> Path:
    folder_paths = _comfy("folder_paths")
    return Path(folder_paths.get_output_directory()) if folder_paths else Path.cwd() / "output"


def output_path(prefix: str, extension: str) -> tuple[Path, str, str]:
    """``(path, filename, subfolder)`` for the next ``<prefix>_<counter>_.<ext>`` in the output folder."""
    out_dir = output_directory()
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, str(out_dir))
        folder = Path(folder)
    else:
        folder, name, counter, subfolder = _next_output(out_dir, prefix)
    filename = f"{name}_{counter:05}_.{extension}"
    return folder / filename, filename, subfolder


def _next_output(out_dir: Path, prefix: str) -> tuple[Path, str, int, str]:
    # Same numbering as folder_paths.get_save_image_path, for runs without ComfyUI.
    subfolder, name = os.path.split(os.path.normpath(prefix))
    folder = (out_dir / subfolder).resolve()
    if out_dir.resolve() not in (folder, *folder.parents):
        raise ValueError(f"filename_prefix {prefix!r} points outside the output folder {out_dir}")
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(name) + r"_(\d+)_")
    counters = [int(match.group(1)) for entry in folder.iterdir() if (match := pattern.match(entry.name))]
    return folder, name, max(counters, default=0) + 1, subfolder


def video_output(path: Path):
    """ComfyUI's VIDEO for a file (VideoFromFile); the path itself without ComfyUI."""
    latest = _comfy("comfy_api.latest")
    if latest is not None and hasattr(latest, "InputImpl"):
        return latest.InputImpl.VideoFromFile(str(path))
    legacy = _comfy("comfy_api.input_impl")
    return legacy.VideoFromFile(str(path)) if legacy else path
