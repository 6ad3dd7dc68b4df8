"""Checkpoints of a training run, and resuming from one exactly.

``RUN/checkpoints/step-XXXXXX``: accelerate's state (trainable weights as safetensors, optimizer,
RNG, grad scaler), ``ema.safetensors`` and ``state.json`` (step, data position, EMA updates,
config), written last, so a folder without it is incomplete and ignored. The last
``keep_checkpoints`` are kept.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from .accelerator import _params_sharded
from .config import TrainingError
from .ema import EMA

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
EMA_FILE = "ema.safetensors"


def checkpoint_dir(run: Path, step: int) -> Path:
    return Path(run) / CHECKPOINTS / f"step-{step:06d}"


def complete_checkpoints(run: Path) -> list[Path]:
    """Checkpoints of a run that finished writing (they have ``state.json``), oldest first."""
    folder = Path(run) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.glob("step-*") if (path / STATE_FILE).is_file())


def resolve_resume(run: Path, resume: str) -> Path:
    """``latest`` -> the run's newest complete checkpoint; anything else is a checkpoint folder."""
    if resume == "latest":
        found = complete_checkpoints(run)
        if not found:
            raise TrainingError(f"--resume latest: no complete checkpoint under {Path(run) / CHECKPOINTS}")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise TrainingError(f"--resume {resume}: not a complete checkpoint folder (no {STATE_FILE} in it)")
    return path


def _ema_file(folder: Path, accelerator) -> Path:
    # Under FSDP every process holds a different shard of the parameters, so of the EMA too.
    if _params_sharded(accelerator):
        return folder / f"ema.rank-{accelerator.process_index:05d}.safetensors"
    return folder / EMA_FILE


def save_checkpoint(accelerator, run: Path, state: dict, ema: EMA, config: dict) -> Path:
    from safetensors.torch import save_file

    folder = checkpoint_dir(run, state["step"])
    accelerator.save_state(str(folder))
    if accelerator.is_main_process or _params_sharded(accelerator):
        save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(_ema_file(folder, accelerator)))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        record = {**state, "ema_updates": ema.updates, "config": config}
        (folder / STATE_FILE).write_text(json.dumps(record, indent=1, sort_keys=True))
        _prune(run, config["train"]["keep_checkpoints"])
    accelerator.wait_for_everyone()
    return folder


def _prune(run: Path, keep: int) -> None:
    for old in complete_checkpoints(run)[:-keep]:
        shutil.rmtree(old)


def load_checkpoint(accelerator, folder: Path, ema: EMA, config: dict) -> dict:
    from safetensors.torch import load_file

    record = json.loads((folder / STATE_FILE).read_text())
    _check_same_run(record["config"], config, folder)
    accelerator.load_state(str(folder))
    ema_path = _ema_file(folder, accelerator)
    if not ema_path.is_file():
        raise TrainingError(f"{folder} has no {ema_path.name}; the checkpoint is incomplete")
    ema.load_state_dict(load_file(str(ema_path), device=str(accelerator.device)), record["ema_updates"])
    return {"step": record["step"], "samples": record["samples"]}


def _check_same_run(saved: dict, config: dict, folder: Path) -> None:
    """Resuming may change how long and where (steps, output, data folder), not what is trained."""
    for key in ("stage", "model", config["stage"]):
        if saved.get(key) != config.get(key):
            raise TrainingError(f"{folder} was written by a run with a different '{key}'; resume with the config it was trained with")
    fixed = ("seed", "batch_size", "grad_accum", "lr", "lr_warmup", "lr_schedule", "lr_min", "weight_decay", "ema_decay",
             "ema_warmup", "max_grad_norm")
    changed = [key for key in fixed if saved["train"].get(key) != config["train"].get(key)]
    if changed:
        log.warning("resuming %s with changed train settings %s: the run is no longer the uninterrupted one", folder, changed)
