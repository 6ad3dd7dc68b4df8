"""The training loop every stage shares: Hugging Face accelerate, EMA, exact resume, logging.

One process per device (``accelerate launch``); the same code runs on one CPU, one GPU, several
GPUs or several machines, under DDP, DeepSpeed ZeRO-2 or FSDP (the shipped configs in
``train/accelerate/``; the Accelerator is made and checked in :mod:`.accelerator`).

**Data order.** The data is an endless stream: the concatenation of one permutation of the
dataset per epoch, each seeded by ``(seed, epoch)``. Optimizer step ``s`` consumes the next
*global batch* of ``G = batch_size x processes x grad_accum`` stream items; micro-step ``a`` of
process ``r`` takes the slice ``[(a * P + r) * B, (a * P + r + 1) * B)`` of it. So one process
with ``batch_size = 2B`` sees, per micro-step, exactly the union of what two processes with
``B`` see. The *data position* (stream items consumed) is part of every checkpoint; a resumed
run starts the stream there without reading the skipped items.

**Randomness.** Stages draw from :class:`~.noise.SampleNoise` keyed by (seed, step, sample), so
a sample's noise does not depend on the process split or on a resume. Global RNG states are
still saved and restored (accelerate's ``save_state``), so anything else is exact on resume too.

The checkpoints the loop writes and resumes from are :mod:`.resume`'s; the export it writes at
the end is :mod:`.export`'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
from torch import nn

from .accelerator import _params_sharded, _weight_dtype, check_accelerator, make_accelerator
from .config import TrainingError
from .ema import EMA
from .export import export_run
from .noise import SampleNoise, sample_seed
from .resume import complete_checkpoints, load_checkpoint, resolve_resume, save_checkpoint
from .shards import ClipDataset
from .stage import Stage, StageModel, get_stage

log = logging.getLogger(__name__)


# --- data order ----------------------------------------------------------------------------

class GlobalBatchSampler:
    """This process's micro-batches of ``(index, step)`` pairs, from the endless stream.

    ``step`` travels with each index so the dataset can seed per-sample draws (the reference
    frame) by the step that consumes the sample.
    """

    def __init__(self, size: int, seed: int, batch_size: int, processes: int, rank: int, grad_accum: int,
                 start_step: int, start_position: int):
        self.size, self.seed = size, seed
        self.batch_size, self.processes, self.rank, self.grad_accum = batch_size, processes, rank, grad_accum
        self.start_step, self.start_position = start_step, start_position
        self._epoch, self._order = -1, None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.processes * self.grad_accum

    def stream(self, position: int) -> int:
        """The dataset index at a stream position."""
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, "data.order", 0))
            self._epoch, self._order = epoch, torch.randperm(self.size, generator=generator).tolist()
        return self._order[offset]

    def __iter__(self):
        step, position = self.start_step, self.start_position
        while True:
            for micro in range(self.grad_accum):
                first = position + (micro * self.processes + self.rank) * self.batch_size
                yield [(self.stream(first + i), step) for i in range(self.batch_size)]
            step, position = step + 1, position + self.global_batch


class SteppedClips(torch.utils.data.Dataset):
    """``ClipDataset`` items addressed by ``(index, step)``: each from a first frame drawn at random
    within its clip (so the model sees every phase of the speech and every pair of frames together,
    not only the tiles' fixed cuts), plus the seeded reference frame outside that window and an
    emotion image (``ClipDataset.emotion_frame``, flipped and brightened or darkened at random:
    a user's emotion image is another photo, not a crop of the training video)."""

    def __init__(self, clips: ClipDataset, seed: int):
        self.clips, self.seed = clips, seed

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, step = key
        draws = SampleNoise(self.seed, step)
        start = int(torch.randint(self.clips.starts(index), (1,), generator=draws.generator("data.start", index)))
        item = self.clips.item(index, start)
        item["reference"] = self.clips.outside_frame(index, draws.generator("data.reference", index), start)
        generator = draws.generator("data.emotion_image", index)
        item["emotion_image"] = augment(self.clips.emotion_frame(index, generator, start), generator)
        return item


def augment(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``[3, S, S]`` in 0..1 mirrored with probability 1/2 (expressions are left-right symmetric)
    and scaled in brightness by 0.8..1.2."""
    flip, gain = torch.rand(2, generator=generator).tolist()
    image = image.flip(-1) if flip < 0.5 else image
    return (image * (0.8 + 0.4 * gain)).clamp(0, 1)


# --- the stage's modules: which train, which are frozen --------------------------------------

def _trainable_names(stage: Stage, modules: nn.ModuleDict) -> list[str]:
    names = list(stage.trainable(modules))
    unknown = [name for name in names if name not in modules]
    if unknown or not names:
        raise TrainingError(f"stage {stage.name!r} names trainable modules {names}, but builds {list(modules)}")
    return names


def _freeze(modules: dict[str, nn.Module], device: torch.device, dtype: torch.dtype | None) -> None:
    for module in modules.values():
        module.requires_grad_(False).eval().to(device=device, dtype=dtype)


# --- logging -----------------------------------------------------------------------------

class RunLog:
    """Losses every ``log_every`` steps: ``RUN/logs/losses.jsonl`` always (no dependency, easy
    to read back), TensorBoard events beside it when tensorboard is installed."""

    def __init__(self, accelerator, run: Path, config: dict):
        self.accelerator = accelerator
        self.path = run / "logs" / "losses.jsonl"
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        if accelerator.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if accelerator.log_with:
            hparams = {f"train.{k}": v for k, v in config["train"].items()}
            accelerator.init_trackers(config["stage"], config={"stage": config["stage"], **hparams})

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0) + value.detach().float()
        self.count += 1

    def flush(self, step: int, extra: dict) -> dict:
        """Mean of each loss over the steps since the last flush and over all processes."""
        names = sorted(self.sums)
        means = torch.stack([self.sums[name] for name in names]) / self.count
        means = self.accelerator.reduce(means, reduction="mean").tolist()
        values = {**dict(zip(names, means, strict=True)), **extra}
        self.sums, self.count = {}, 0
        if self.accelerator.is_main_process:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": step, **values}) + "\n")
        self.accelerator.log(values, step=step)
        return values


# --- the loop ------------------------------------------------------------------------------

def train(config: dict, resume: str | None = None) -> Path:
    """Train ``config["stage"]`` as ``config`` says (resuming from a checkpoint folder or
    ``"latest"``); returns the run folder, which holds ``export/<stage>.safetensors``."""
    from accelerate.utils import set_seed

    accelerator = make_accelerator(config)
    check_accelerator(accelerator, config)
    run, train_cfg = Path(config["output"]), config["train"]
    resume_dir = resolve_resume(run, resume) if resume else None
    if resume_dir is None and complete_checkpoints(run):
        raise TrainingError(f"{run} already holds checkpoints: pass --resume latest to continue it, or another --out")
    stage = get_stage(config["stage"])
    set_seed(train_cfg["seed"])  # every process builds the same random init
    modules = stage.build(config)
    model = StageModel(stage, modules, _trainable_names(stage, modules))
    _freeze(model.frozen, accelerator.device, _weight_dtype(accelerator))
    optimizer = _optimizer(model, train_cfg)
    _tell_deepspeed_the_batch(accelerator, train_cfg["batch_size"])
    model, optimizer = accelerator.prepare(model, optimizer)
    check_accelerator(accelerator, config)  # DeepSpeed's own config may have changed the accumulation
    ema = EMA(_trained_parameters(accelerator.unwrap_model(model)), train_cfg["ema_decay"], train_cfg["ema_warmup"])
    state = load_checkpoint(accelerator, resume_dir, ema, config) if resume_dir else {"step": 0, "samples": 0}
    data = config["data"]
    # A stage that reads audio around its windows says how many frames (the ethd stage on V-AID's lip stream).
    clips = ClipDataset(data["shards"], data["window"], data["labels"], data["reference"], getattr(stage, "audio_context", 0))
    sampler = GlobalBatchSampler(len(clips), train_cfg["seed"], train_cfg["batch_size"], accelerator.num_processes,
                                 accelerator.process_index, train_cfg["grad_accum"], state["step"], state["samples"])
    _warn_small_dataset(len(clips), sampler.global_batch)
    if accelerator.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    loop = _Loop(accelerator, stage, model, optimizer, ema, config, clips, sampler)
    loop.run(state)
    return run


def learning_rate(train_cfg: dict, step: int) -> float:
    """Linear warmup over ``lr_warmup`` steps, then constant, or (``lr_schedule = "cosine"``) a
    cosine from ``lr`` down to ``lr_min`` at ``steps``. A function of the step alone: there is no
    scheduler state to save. With a constant rate a run stopped early is exactly the start of a
    longer one; a cosine depends on ``steps``, so change it on resume only knowingly."""
    import math

    lr, warmup = train_cfg["lr"], train_cfg["lr_warmup"]
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if train_cfg["lr_schedule"] == "cosine":
        progress = min(1.0, (step - warmup) / max(1, train_cfg["steps"] - warmup))
        return train_cfg["lr_min"] + (lr - train_cfg["lr_min"]) * 0.5 * (1 + math.cos(math.pi * progress))
    return lr


def _optimizer(model: nn.Module, train_cfg: dict) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("the stage's trainable modules have no parameter that requires grad")
    return torch.optim.AdamW(params, lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])


def _tell_deepspeed_the_batch(accelerator, batch_size: int) -> None:
    # DeepSpeed reads the micro-batch size from a prepared dataloader; ours is not prepared
    # (accelerate's sharding would change the data order), so it is set explicitly.
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size


def _trained_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _warn_small_dataset(size: int, global_batch: int) -> None:
    if size < global_batch:
        log.warning("the dataset has %d windows, fewer than one global batch (%d): samples repeat within a batch",
                    size, global_batch)


class _Loop:
    """One run's moving parts; :meth:`run` is the loop."""

    def __init__(self, accelerator, stage, model, optimizer, ema, config, clips, sampler):
        self.accelerator, self.stage, self.model, self.optimizer, self.ema = accelerator, stage, model, optimizer, ema
        self.config, self.train_cfg, self.run_dir = config, config["train"], Path(config["output"])
        self.clips, self.sampler = clips, sampler
        self.unwrapped = accelerator.unwrap_model(model)
        self.log = RunLog(accelerator, self.run_dir, config)

    def batches(self):
        data = SteppedClips(self.clips, self.train_cfg["seed"])
        workers = self.train_cfg["num_workers"]
        # Its own generator (worker seeds), so creating the loader never draws from the global
        # RNG: a resumed run's global RNG then matches the uninterrupted run's bitwise.
        generator = torch.Generator().manual_seed(sample_seed(self.train_cfg["seed"], 0, "data.workers", 0))
        loader = torch.utils.data.DataLoader(data, batch_sampler=self.sampler, num_workers=workers,
                                             pin_memory=self.accelerator.device.type == "cuda",
                                             persistent_workers=workers > 0, generator=generator)
        for batch in loader:
            yield {key: value.to(self.accelerator.device, non_blocking=True) for key, value in batch.items()}

    def run(self, state: dict) -> None:
        from tqdm import tqdm

        steps, start = self.train_cfg["steps"], state["step"]
        if start >= steps:
            log.warning("the checkpoint is at step %d, not before train.steps = %d: nothing to train", start, steps)
        batches = self.batches() if start < steps else iter(())
        bar = tqdm(total=steps, initial=start, desc=f"train {self.stage.name}", unit="step",
                   disable=not self.accelerator.is_local_main_process)
        started = time.perf_counter()
        for step in range(start, steps):
            self.log.add(self.step(step, batches))
            state = {"step": step + 1, "samples": state["samples"] + self.sampler.global_batch}
            self.after_step(state, bar, started)
            bar.update(1)
        bar.close()
        if start < steps and not self._checkpoint_due(state["step"]):
            save_checkpoint(self.accelerator, self.run_dir, state, self.ema, self.config)
        self.finish(state)

    def step(self, step: int, batches) -> dict[str, torch.Tensor]:
        """One optimizer step over ``grad_accum`` micro-batches; the losses averaged over them."""
        accelerator, noise = self.accelerator, SampleNoise(self.train_cfg["seed"], step)
        self._set_lr(step)
        totals: dict[str, torch.Tensor] = {}
        for _ in range(self.train_cfg["grad_accum"]):
            batch = next(batches)
            with accelerator.accumulate(self.model):
                losses = self.model(batch, noise)
                accelerator.backward(losses["loss"])
                if accelerator.sync_gradients and self.train_cfg["max_grad_norm"] > 0:
                    accelerator.clip_grad_norm_(self.model.parameters(), self.train_cfg["max_grad_norm"])
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            for name, value in losses.items():
                totals[name] = totals.get(name, 0) + value.detach() / self.train_cfg["grad_accum"]
        self.ema.update()
        return totals

    def _set_lr(self, step: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.train_cfg, step)

    def _checkpoint_due(self, step: int) -> bool:
        return step % self.train_cfg["checkpoint_every"] == 0

    def after_step(self, state: dict, bar, started: float) -> None:
        step = state["step"]
        if step % self.train_cfg["log_every"] == 0:
            extra = {"lr": self.optimizer.param_groups[0]["lr"], "samples": state["samples"],
                     "seconds": round(time.perf_counter() - started, 3)}
            values = self.log.flush(step, extra)
            bar.set_postfix(loss=f"{values['loss']:.4g}")
        every = self.train_cfg["sample_every"]
        if every and step % every == 0:
            self.write_sample(step)
        if self._checkpoint_due(step):
            save_checkpoint(self.accelerator, self.run_dir, state, self.ema, self.config)

    def write_sample(self, step: int) -> list[Path]:
        """The stage's sample of a fixed batch (the first windows of the dataset), EMA weights,
        main process only; the global RNG is forked so sampling never changes the run."""
        if _params_sharded(self.accelerator):
            log.warning("step %d: no sample under FSDP (parameters are sharded); export a checkpoint to look", step)
            return []
        files = []
        if self.accelerator.is_main_process:
            folder = self.run_dir / "samples" / f"step-{step:06d}"
            folder.mkdir(parents=True, exist_ok=True)
            modules = self.unwrapped.modules_view()
            with torch.random.fork_rng(devices=_rng_devices(self.accelerator)), torch.no_grad(), \
                    self.ema.applied(), _eval_mode(modules):
                files = self.stage.sample(modules, self._fixed_batch(), folder, step)
        self.accelerator.wait_for_everyone()
        return files

    def _fixed_batch(self) -> dict:
        data = SteppedClips(self.clips, self.train_cfg["seed"])
        count = min(len(self.clips), self.train_cfg["batch_size"])
        batch = torch.utils.data.default_collate([data[(index, 0)] for index in range(count)])
        return {key: value.to(self.accelerator.device) for key, value in batch.items()}

    def finish(self, state: dict) -> None:
        """Check the replicas agree, write the export, close the trackers."""
        self.check_replicas(state["step"])
        export_run(self.accelerator, self.stage, self.model, self.ema, self.config, state)
        self.accelerator.end_training()

    def check_replicas(self, step: int) -> None:
        """Every process writes a digest of its weights and EMA; they must be identical (a
        diverged replica is a silent DDP bug otherwise). Skipped when parameters are sharded."""
        if _params_sharded(self.accelerator):
            return
        folder = self.run_dir / "replicas"
        folder.mkdir(parents=True, exist_ok=True)
        record = {"rank": self.accelerator.process_index, "step": step,
                  "weights": tensors_digest(_trained_parameters(self.unwrapped)), "ema": tensors_digest(self.ema.state_dict())}
        (folder / f"rank-{self.accelerator.process_index:05d}.json").write_text(json.dumps(record, sort_keys=True))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            records = [json.loads(path.read_text()) for path in sorted(folder.glob("rank-*.json"))]
            digests = {(r["weights"], r["ema"]) for r in records if r["step"] == step}
            if len(digests) != 1:
                # Not a usage error: replicas of a data-parallel run must never diverge.
                raise RuntimeError(f"the {len(records)} processes ended with different weights (see {folder})")


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def _rng_devices(accelerator) -> list:
    return [accelerator.device] if accelerator.device.type == "cuda" else []


class _eval_mode:
    """Modules in eval mode for the duration, each put back in the mode it was in."""

    def __init__(self, modules: nn.ModuleDict):
        self.modes = {module: module.training for module in modules.values()}

    def __enter__(self):
        for module in self.modes:
            module.eval()

    def __exit__(self, *exc):
        for module, training in self.modes.items():
            module.train(training)
