"""The ``distill`` training stage: a few-step, one-pass student of a trained EmotiveTalk model.

The teacher (``init.teacher``, a self-contained model file such as the shipped default) samples
with guidance: four UNet passes per step (docs/ARCHITECTURE.md, "Guidance") over ``teacher_steps``
Euler steps. The student is a copy of the teacher's ETHD (the whole UNet with its adapters,
trainable) that takes ``student_steps`` Euler steps on the Karras grid of that many steps, with one
pass per step (every strength 1: the passes cancel to the all-conditions one). It is trained to
land, in one Euler step from ``sigma_i`` to ``sigma_{i+1}`` of its grid, where the guided teacher
lands with the teacher's own steps over that interval (Karras' spacing between the two levels):

- per clip, an interval ``i`` (uniform) and ``x_i = x0 + sigma_i * n`` from the window's true
  latents (as progressive distillation starts from the data, not from teacher trajectories);
- ``x_{i+1}`` = the teacher's guided Euler steps from ``x_i`` (no gradient);
- the student's denoised target is the ``D`` whose Euler step gives ``x_{i+1}``:
  ``x_i - sigma_i (x_i - x_{i+1}) / (sigma_i - sigma_{i+1})``, or ``x_{i+1}`` itself on the last
  interval (to sigma 0);
- the loss is ETHD's v-prediction loss against that target (EDM's weighting), with every condition.

Conditions are built as the ethd stage builds them (``ETHDStage.conditioning``: V-AID's lip
stream with inference's speech context, the Exp Encoder's codes, the Face Processor's binary mask),
from the teacher file's own encoders, V-AID and SVD conditioning settings. The export is a
self-contained model file (the student's ETHD with the teacher's VAE, image encoder and V-AID
side) whose info records the sampling it was distilled for; generation samples with it
wherever the steps and strengths are left unset (``settings.model_sampling``).

Options (``config["distill"]``): ``student_steps`` 6, ``teacher_steps`` 24 (the teacher's steps
over the whole grid, spread evenly over the student's intervals), ``guidance`` null (the
teacher's strengths ``[reference, lip, expression]``; null: ``settings.default_guidance``).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..bundles import VAID_COMPONENTS as VAID_PARTS
from ..bundles import file_digest, vaid_info
from ..sampling import Conditioning, Guidance, GuidedDenoiser, karras_sigmas, sample_euler
from ..settings import default_guidance
from .ethd_stage import ETHD_DEFAULTS, ETHDStage, data_settings, encode_latents, ethd_v, select_passes, speech_context
from .noise import SampleNoise
from .vaid_stage import SpeechHolder, frozen, init_path, options

DISTILL_DEFAULTS = {"student_steps": 6, "teacher_steps": 24, "guidance": None}


class DistillStage(ETHDStage):
    name = "distill"

    def build(self, config: dict) -> nn.ModuleDict:
        from ..bundles import load_emotivetalk_model, load_vaid_model
        from ..checkpoints import read_metadata

        self.distill = opts = options(config, "distill", DISTILL_DEFAULTS)
        if not 1 <= opts["student_steps"] <= opts["teacher_steps"] or opts["teacher_steps"] % opts["student_steps"]:
            raise ValueError(f"distill.teacher_steps ({opts['teacher_steps']}) must be a multiple of student_steps "
                             f"({opts['student_steps']}): the teacher takes as many steps over each of its intervals")
        teacher_path = init_path(config, "teacher")
        if not teacher_path:
            raise ValueError("the distill stage needs init.teacher: a self-contained EmotiveTalk model file")
        teacher = load_emotivetalk_model(teacher_path)
        self.vaid = load_vaid_model(teacher_path, speech_source=init_path(config, "speech_encoder"))
        self.teacher_path, self.teacher_file = teacher_path, file_digest(teacher_path)
        self.teacher_configs, self.teacher_info = read_metadata(teacher_path)
        strengths = opts["guidance"]
        self.guidance = default_guidance() if strengths is None else Guidance(*strengths)
        # What the ethd stage's conditioning reads: inference's mask and V-AID's lip stream.
        self.options = {**ETHD_DEFAULTS, "condition_source": "vaid", "mask_source": "face_processor"}
        # The teacher's SVD conditioning; what its file does not record, from the data (as the ethd stage).
        data = data_settings(config)
        if "resolution" in teacher.settings and list(teacher.settings["resolution"]) != data["resolution"]:
            raise ValueError(f"the shards are {data['resolution']} px, the teacher was trained at "
                             f"{teacher.settings['resolution']}: distill on data of the teacher's resolution")
        self.settings = {**data, **teacher.settings}
        self.speech = SpeechHolder(self.vaid.speech_encoder)
        self.audio_context = speech_context(self.vaid.dicte.window, self.settings["clip_frames"])
        student = copy.deepcopy(teacher.ethd).requires_grad_(True)
        if (config.get("train") or {}).get("gradient_checkpointing"):
            student.enable_gradient_checkpointing()
        return nn.ModuleDict({
            "ethd": student, "teacher": frozen(teacher.ethd), "vae": frozen(teacher.vae),
            "image_encoder": frozen(teacher.image_encoder), "lip_projector": frozen(self.vaid.lip_projector),
            **{name: frozen(getattr(self.vaid, name)) for name in ("lip_encoder", "exp_encoder", "face_processor")},
        })

    def loss(self, modules: nn.ModuleDict, batch: dict, noise: SampleNoise) -> dict[str, torch.Tensor]:
        frames, index = batch["frames"], batch["index"]
        self._check_frames(frames)
        conditioning = self.conditioning(modules, batch, [noise.generator("distill.reference", i) for i in index.tolist()])
        x0 = encode_latents(modules["vae"], frames)
        sigmas = karras_sigmas(self.distill["student_steps"])
        interval = (noise.uniform("distill.interval", index) * self.distill["student_steps"]).long()
        sigma, after = sigmas[interval].to(x0.device), sigmas[interval + 1].to(x0.device)
        noisy = x0 + sigma.view(-1, 1, 1, 1, 1) * noise.normal("distill.noise", index, tuple(x0.shape[1:]), device=x0.device)
        landed = self._teacher(modules["teacher"], conditioning, noisy, interval, sigmas)
        inputs = select_passes(conditioning, ["expression"] * len(index), frames.shape[1])
        v = ethd_v(modules["ethd"], noisy, sigma, inputs)
        return {"loss": (v.float() - v_of(euler_target(noisy, landed, sigma, after), noisy, sigma)).square().mean()}

    def _teacher(self, teacher: nn.Module, conditioning: Conditioning, noisy: torch.Tensor, interval: torch.Tensor,
                 sigmas: torch.Tensor) -> torch.Tensor:
        """Where the guided teacher lands from each clip's ``noisy`` at ``sigmas[i]`` after its
        steps over the interval to ``sigmas[i + 1]`` (clips of one interval run together)."""
        per_interval = self.distill["teacher_steps"] // self.distill["student_steps"]
        landed = torch.empty_like(noisy)
        with torch.no_grad():
            for i in interval.unique().tolist():
                rows = (interval == i).nonzero().flatten()
                # The last interval (sigma_min -> 0) is one step for the teacher too: its denoised estimate.
                steps = per_interval if float(sigmas[i + 1]) > 0 else 1
                high, low = float(sigmas[i]), float(sigmas[i + 1])
                grid = karras_sigmas(steps + 1, low, high)[:-1] if low > 0 else karras_sigmas(1, high, high)
                denoiser = GuidedDenoiser(teacher, _rows(conditioning, rows), self.guidance)
                landed[rows] = sample_euler(denoiser, noisy[rows], grid)
        return landed

    def export(self, modules: nn.ModuleDict, config: dict) -> dict[str, tuple[dict, dict]]:
        """A self-contained file: the student's UNet and adapters, everything else the teacher's,
        each with the teacher file's config (the student keeps the teacher's architecture)."""
        from ..checkpoints import load_model_file

        student = modules["ethd"]
        copied, _, _ = load_model_file(self.teacher_path, ["vae", "image_encoder", *VAID_PARTS])  # as the file holds them
        states = {"unet": student.unet.state_dict(), "adapter": student.adapter_state_dict(), **copied}
        configs = {**self.teacher_configs, "adapter": {**self.teacher_configs["adapter"], "ethd": dict(self.settings)}}
        return {name: (state, configs[name]) for name, state in states.items()}

    def export_info(self, modules: nn.ModuleDict, config: dict) -> dict:
        # The teacher's record (how it was trained, e.g. SynthTalk's world seed, which evaluation
        # refuses), but not its held-out figures or the loop's facts about its own run.
        inherited = {key: value for key, value in self.teacher_info.items()
                     if key not in ("trained", "note", "stage", "steps", "config", "held_out", "script")}
        return {**inherited, "ethd": dict(self.settings), **vaid_info(self.vaid),
                "distilled": {"teacher": self.teacher_file, "steps": self.distill["student_steps"],
                              "teacher_steps": self.distill["teacher_steps"], "sampler": "euler",
                              "guidance": [1.0, 1.0, 1.0],
                              "teacher_guidance": [self.guidance.reference, self.guidance.lip, self.guidance.expression]}}

    def sample(self, modules: nn.ModuleDict, batch: dict, folder: Path, step: int) -> list[Path]:
        return []


def euler_target(noisy: torch.Tensor, landed: torch.Tensor, sigma: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """The denoised estimate whose Euler step from ``noisy`` at ``sigma`` to ``after`` (``[B]``)
    gives ``landed``: ``x' = x + (a - s)(x - D)/s`` solved for D; at ``after`` 0 it is ``landed``."""
    s, a = sigma.view(-1, 1, 1, 1, 1), after.view(-1, 1, 1, 1, 1)
    return torch.where(a > 0, noisy - s * (noisy - landed) / (s - a), landed)


def v_of(denoised: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The v prediction that gives ``denoised`` at ``noisy`` (``GuidedDenoiser``'s preconditioning:
    ``D = x / (s^2 + 1) - s v / sqrt(s^2 + 1)``)."""
    s = sigma.view(-1, 1, 1, 1, 1)
    return (noisy / (s**2 + 1) - denoised) * (s**2 + 1).sqrt() / s


def _rows(conditioning: Conditioning, rows: torch.Tensor) -> Conditioning:
    """The conditions of some clips of a batch."""
    fields = {name: getattr(conditioning, name) for name in conditioning.__dataclass_fields__}
    return replace(conditioning, **{name: None if value is None else value[rows.to(value.device)]
                                    for name, value in fields.items()})
