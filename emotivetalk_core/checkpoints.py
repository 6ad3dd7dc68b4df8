"""EmotiveTalk model files: safetensors only, self-describing.

One format for everything the nodes load. A file holds one or more *components* (``ethd``,
``vaid``, ``unet``, ...); tensor names are ``<component>.<name>`` and the safetensors metadata
carries, as JSON strings:

- ``emotivetalk.format``: format version;
- ``emotivetalk.components``: ``{component: config_dict}``, enough to rebuild each module;
- ``emotivetalk.info``: free facts about the file (``trained``, ``note``, provenance, the speech
  encoder a V-AID was trained with, ...).

A "component file" is a file with one component; the default model is one file with all of them.
Pickle is never read or written.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

FORMAT_VERSION = "1"
_FORMAT_KEY = "emotivetalk.format"
_COMPONENTS_KEY = "emotivetalk.components"
_INFO_KEY = "emotivetalk.info"


class CheckpointError(ValueError):
    """A model file is missing, is not an EmotiveTalk file, or lacks a needed component."""


def save_model_file(path: str | Path, components: dict[str, tuple[dict, dict]], info: dict | None = None) -> Path:
    """Write ``{name: (state_dict, config)}`` to one safetensors file.

    Tensors are made contiguous and de-aliased (safetensors refuses shared storage).
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    configs: dict[str, dict] = {}
    for name, (state_dict, config) in components.items():
        if "." in name:
            raise ValueError(f"component name {name!r} must not contain '.'")
        configs[name] = config
        for key, value in state_dict.items():
            tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous().clone()
    metadata = {
        _FORMAT_KEY: FORMAT_VERSION,
        _COMPONENTS_KEY: json.dumps(configs, sort_keys=True),
        _INFO_KEY: json.dumps(info or {}, sort_keys=True),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    readable_by_all(path)
    return path


def readable_by_all(path: str | Path) -> None:
    """rw-r--r-- for a written file: safetensors creates files 0600, which a ComfyUI or training
    job running as another user could not read. (Reading the umask would briefly change it for
    every thread of the process, so the usual mode for data files is set instead.)"""
    import os

    os.chmod(path, 0o644)


def read_metadata(path: str | Path) -> tuple[dict, dict]:
    """``(configs, info)`` of a model file, without reading any tensor."""
    path = _existing(path)
    with open_safetensors(path) as handle:
        metadata = handle.metadata() or {}
    if _COMPONENTS_KEY not in metadata:
        raise CheckpointError(
            f"{path} is not an EmotiveTalk model file (no '{_COMPONENTS_KEY}' metadata). "
            "Base SVD checkpoints go through emotivetalk_core.svd.load; EmotiveTalk files are "
            "written by the pack's training/export code."
        )
    try:
        configs, info = json.loads(metadata[_COMPONENTS_KEY]), json.loads(metadata.get(_INFO_KEY, "{}"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: its EmotiveTalk metadata is damaged ({error}); the file is corrupt: "
                              "download or export it again") from None
    if not (isinstance(configs, dict) and all(isinstance(config, dict) for config in configs.values())
            and isinstance(info, dict)):
        raise CheckpointError(f"{path}: its EmotiveTalk metadata is not a table of component configs; the file is "
                              "corrupt or was not written by this pack: download or export it again")
    return configs, info


def load_model_file(path: str | Path, components: list[str] | None = None, device: str | torch.device = "cpu"):
    """Read components of a model file: ``({name: state_dict}, {name: config}, info)``.

    ``components`` limits what is read (the others' tensors are never loaded); asking for one the
    file lacks raises :class:`CheckpointError` naming what the file has.
    """
    configs, info = read_metadata(path)
    wanted = list(configs) if components is None else list(components)
    missing = [name for name in wanted if name not in configs]
    if missing:
        raise CheckpointError(f"{path} has no component(s) {missing}; it holds {sorted(configs)}")
    states: dict[str, dict[str, torch.Tensor]] = {name: {} for name in wanted}
    with open_safetensors(path, device=device) as handle:
        for key in handle.keys():
            name, _, rest = key.partition(".")
            if name in states:
                states[name][rest] = handle.get_tensor(key)
    return states, {name: configs[name] for name in wanted}, info


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    return path


def open_safetensors(path: str | Path, framework: str = "pt", device: str | torch.device = "cpu"):
    """``safe_open`` of a model file, with an error that names the file and says what it is when
    it is not a readable safetensors file (a pickle, an empty or cut-off download, something else)."""
    from safetensors import SafetensorError, safe_open

    path = _existing(path)
    try:
        return safe_open(str(path), framework=framework, device=str(device))
    except SafetensorError as error:
        raise CheckpointError(_unreadable(path, error)) from None


# How other weight formats begin: torch.save's zip archive and a bare pickle (protocol 2+).
_PICKLE_STARTS = {b"PK\x03\x04": "a PyTorch zip pickle (torch.save)", b"\x80": "a Python pickle"}


def _unreadable(path: Path, error: Exception) -> str:
    with open(path, "rb") as handle:
        start = handle.read(4)
    only = "EmotiveTalk reads only .safetensors files (a pickle can run code when it is loaded)"
    for magic, kind in _PICKLE_STARTS.items():
        if start.startswith(magic):
            return (f"{path} is {kind}, not a safetensors file: {only}; convert it with safetensors.torch.save_file "
                    f"on a machine where you trust the file, or get the .safetensors version")
    if not start:
        return f"{path} is empty (0 bytes): the download or copy did not finish; fetch it again"
    return (f"{path} is not a readable safetensors file ({error}): it is damaged or incomplete, "
            f"or another format; {only}")
