"""Reading and writing the metric networks' weight files (safetensors).

Each network is built by its module's ``build(width)``; ``width`` 1 is the standard architecture
whose keys docs/EVALUATION.md lists (the published weights converted with a few lines of Python).
A file written by :func:`save_network` records its network and width in the safetensors metadata
(smaller widths are for tests); a file without metadata is the standard width.

:func:`check_weight_file` only reads the header, so every file can be checked before any network
is built. torch and safetensors are imported inside the functions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

DOC = "docs/EVALUATION.md"
# Metadata keys save_network writes.
NETWORK_KEY = "emotivetalk.eval.network"
WIDTH_KEY = "emotivetalk.eval.width"
# BatchNorm's step counter: unused in evaluation, absent from older checkpoints.
_IGNORED_SUFFIX = "num_batches_tracked"
_SHOWN_KEYS = 5


def save_network(module, kind: str, width: float, path: str | Path) -> Path:
    """Write ``module``'s weights to ``path`` with its network ``kind`` and ``width`` as metadata."""
    from safetensors.torch import save_file

    tensors = {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
    path = Path(path)
    save_file(tensors, str(path), metadata={NETWORK_KEY: kind, WIDTH_KEY: repr(float(width))})
    return path


def check_weight_file(path: str | Path, kind: str, flag: str) -> float:
    """The width of the ``kind`` network stored at ``path`` (1.0 without metadata), reading only
    the header. FileNotFoundError / ValueError name the file and ``flag``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag}: weight file not found: {path} (see {DOC} for how to make it)")
    metadata = _header(path, flag).get("__metadata__") or {}
    stored_kind = metadata.get(NETWORK_KEY, kind)
    if stored_kind != kind:
        raise ValueError(f"{flag} {path} holds the {stored_kind} network, not the {kind} one: give it to the "
                         f"flag for {stored_kind}")
    try:
        width = float(metadata.get(WIDTH_KEY, "1.0"))
    except ValueError:
        width = math.nan
    if not math.isfinite(width) or width <= 0:
        raise ValueError(f"{flag} {path}: metadata {WIDTH_KEY}={metadata.get(WIDTH_KEY)!r} is not a positive number")
    return width


def load_network(module, path: str | Path, flag: str, device: str = "cpu"):
    """Load ``path`` into ``module`` strictly and return it in eval mode on ``device``.

    Every key of the module must be in the file and no other (BatchNorm's ``num_batches_tracked``
    aside), with the same shapes; otherwise ValueError naming the file, the first few keys and
    where the expected layout is documented.
    """
    from safetensors.torch import load_file

    path = Path(path)
    state = load_file(str(path))
    _check_keys(module, state, path, flag)
    expected = module.state_dict()
    # Older checkpoints have no step counters; the module's own (unused in eval) stand in for them.
    state.update({key: value for key, value in expected.items() if key.endswith(_IGNORED_SUFFIX) and key not in state})
    module.load_state_dict(state, strict=True)
    return module.to(device).eval().requires_grad_(False)


def _header(path: Path, flag: str) -> dict:
    """The safetensors JSON header (an 8-byte little-endian length, then the JSON)."""
    with path.open("rb") as file:
        prefix = file.read(8)
        size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < size <= 100_000_000:
            raise ValueError(f"{flag} {path} is not a safetensors file; convert the checkpoint as {DOC} shows")
        try:
            return json.loads(file.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{flag} {path} is not a safetensors file ({error}); convert it as {DOC} shows") from error


def _check_keys(module, state: dict, path: Path, flag: str) -> None:
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()
                if not key.endswith(_IGNORED_SUFFIX)}
    found = {key: tuple(value.shape) for key, value in state.items() if not key.endswith(_IGNORED_SUFFIX)}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {_first(unexpected)}")
    if not problems:
        wrong = [f"{key} {found[key]} (expected {expected[key]})" for key in sorted(expected) if found[key] != expected[key]]
        if wrong:
            problems.append(f"{len(wrong)} tensor(s) of the wrong shape, e.g. {_first(wrong)}")
    if problems:
        raise ValueError(f"{flag} {path} does not match the {type(module).__name__} layout: {'; '.join(problems)}. "
                         f"See {DOC} for the expected keys and how to convert the published weights")


def _first(items: list[str]) -> str:
    return ", ".join(items[:_SHOWN_KEYS]) + (", ..." if len(items) > _SHOWN_KEYS else "")
