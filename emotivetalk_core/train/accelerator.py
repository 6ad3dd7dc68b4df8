"""The Accelerator a training run uses: made from its config, checked against it, and asked what it
means for the run (the dtype frozen modules run in; whether each process holds only a shard of the
parameters, which checkpoints, samples and the export must know).

accelerate itself is imported inside the functions that use it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import TrainingError


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def make_accelerator(config: dict):
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import ProjectConfiguration

    _refuse_sharding_without_accelerators()

    train = config["train"]
    run = Path(config["output"])
    return Accelerator(
        mixed_precision=train["mixed_precision"],
        gradient_accumulation_steps=train["grad_accum"],
        project_config=ProjectConfiguration(project_dir=str(run), logging_dir=str(run / "logs")),
        log_with="tensorboard" if _tensorboard_available() else None,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=train["find_unused_parameters"])],
    )


def _refuse_sharding_without_accelerators() -> None:
    """accelerate (1.x) shards only on GPUs and other accelerators. On CPU processes an FSDP or
    DeepSpeed launch either fails inside accelerate ("no available devices", FSDP 1, DeepSpeed) or
    silently runs as gloo DDP with the whole model on every process (FSDP 2), which a user who
    chose sharding for memory must hear about before the first step."""
    requested = [name for variable, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"))
                 if os.environ.get(variable, "false").lower() == "true"]
    on_cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() == "true" or not torch.accelerator.is_available()
    if requested and on_cpu:
        raise TrainingError(f"the launch asks for {requested[0]}, which accelerate runs only on GPUs (or other "
                            "accelerators), and these processes run on the CPU: launch with "
                            "train/accelerate/ddp.yaml and ACCELERATE_USE_CPU=true for a CPU run")


def check_accelerator(accelerator, config: dict) -> None:
    """Refuse launches whose accelerate settings contradict the training config.

    - ``accelerate launch --multi_gpu`` on a machine without GPUs starts several processes that
      each train alone on the same run folder; on CPU, ``ACCELERATE_USE_CPU=true`` makes them one
      gloo run (``--cpu`` alone starts a single process unless mpirun is set up).
    - An accelerate config's ``gradient_accumulation_steps`` overrides the Accelerator's; the
      data order follows ``train.grad_accum``, so the two must agree.
    - DeepSpeed ZeRO-3 leaves no parameters for the EMA (see :func:`_params_sharded`).
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise TrainingError(f"{launched} processes were launched but accelerate runs {accelerator.num_processes} "
                            "as one job (no GPU?): on CPU set ACCELERATE_USE_CPU=true for a gloo run")
    if accelerator.gradient_accumulation_steps != config["train"]["grad_accum"]:
        raise TrainingError(f"accelerate is set to {accelerator.gradient_accumulation_steps} gradient accumulation "
                            f"steps, the config to train.grad_accum = {config['train']['grad_accum']}: remove "
                            "gradient_accumulation_steps from the accelerate config (train.grad_accum decides)")
    _params_sharded(accelerator)


def _weight_dtype(accelerator) -> torch.dtype | None:
    """The dtype frozen modules run in: half under mixed precision (memory), else unchanged."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision)


def _params_sharded(accelerator) -> bool:
    """True under FSDP, where each process holds a shard of the parameters (and so of the EMA);
    DDP and DeepSpeed ZeRO-1/2 keep a full replica on every process."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3:
        # ZeRO-3 leaves empty placeholders where the parameters were: no EMA, no export.
        raise TrainingError("DeepSpeed ZeRO-3 is not supported (the EMA needs the parameters): "
                            "use train/accelerate/deepspeed_zero2.yaml or fsdp.yaml")
    return accelerator.distributed_type == DistributedType.FSDP
