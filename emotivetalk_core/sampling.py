"""Sampling ETHD: SVD's EDM preconditioning, four-pass guidance, Euler/Heun/DPM-Solver++(2M), windowed long video.

Written k-diffusion style: a *denoiser* is a callable ``denoiser(x, sigma) -> denoised`` over
latents ``x [B, F, 4, h, w]`` at noise level ``sigma``, and a sampler is a small function over
``(denoiser, x, sigmas)``. The pieces:

- :func:`karras_sigmas` - the noise levels of diffusers' ``EulerDiscreteScheduler`` as SVD
  configures it (Karras, sigma 0.002..700, rho 7, a final 0).
- :class:`GuidedDenoiser` - SVD's v-prediction EDM preconditioning around ETHD, with the guidance
  of docs/ARCHITECTURE.md, "Guidance", over four conditioning passes run as one batched UNet call.
- :class:`WindowedDenoiser` - long videos as overlapping windows fused at every step
  (docs/ARCHITECTURE.md, "Long video: windows and seams").
- :func:`sample_euler`, :func:`sample_heun`, :func:`sample_dpmpp_2m` - the samplers.
- :func:`initial_noise`, :func:`start_latents` - the starting point, frame by frame.

Usage::

    sigmas = karras_sigmas(steps)
    denoiser = WindowedDenoiser(GuidedDenoiser(ethd, conditioning, guidance), window=clip_frames)
    x = start_latents(initial_noise(seed, num_frames, (4, h, w)), sigmas)
    latents = sample_euler(denoiser, x, sigmas, callback=progress)

With the default windowing the latent state ``x`` and the fused estimate live on the host (where
``x`` is): one window at a time is moved to the model's device, so device memory depends on the
window, not the video length; host memory grows linearly with the length: a latent-sized float32
tensor is 4 x 64 x 64 x 4 B = 64 KiB per frame at 512 px, about 94 MiB per minute at 25 fps, and
a step holds a few of them (state, fused estimate, the update's temporaries).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Callable

import torch

from .memory import is_out_of_memory, release_cached_memory

log = logging.getLogger(__name__)

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict], None]


# --- noise levels and starting point ---------------------------------------------------------
def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0) -> torch.Tensor:
    """``steps + 1`` decreasing noise levels ending in 0, as float32.

    Computed in float64 and rounded once to float32, the path diffusers takes (numpy float64
    Karras ramp, then ``astype(np.float32)``), so the levels are bit-identical to SVD's scheduler.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)


def initial_noise(
    seed: int,
    num_frames: int,
    shape: tuple[int, ...],
    batch_size: int = 1,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    stream: int = 0,
) -> torch.Tensor:
    """Unit Gaussian noise ``[batch_size, num_frames, *shape]`` (``shape`` = one frame's latent).

    Frame k's noise comes from its own CPU generator seeded from ``(seed, k)``, so it depends only
    on the seed and k: never on the video length or the window layout (a longer render starts
    with the same frames), nor on the device (drawn on the CPU, then moved). Another ``stream``
    (Di-CTE's codes; 0 = ETHD's latents) draws unrelated noise from the same seed.
    """
    import numpy as np

    # Filled frame by frame into one allocation: a list of per-frame tensors plus a stack would
    # double the peak, and small freed blocks often stay in the process after a long video.
    noise = torch.empty((batch_size, num_frames, *shape), dtype=torch.float32)
    for k in range(num_frames):
        # SeedSequence mixes (seed, k) into an unrelated 64-bit seed; seed + k would make
        # neighbouring seeds share shifted noise.
        frame_seed = int(np.random.SeedSequence([seed, k, *([stream] if stream else [])]).generate_state(1, np.uint64)[0])
        generator = torch.Generator().manual_seed(frame_seed)
        noise[:, k] = torch.randn((batch_size, *shape), generator=generator, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)


def start_latents(noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The sampler's starting point: noise scaled to the marginal std at ``sigmas[0]``.

    SVD's data std is 1 (its ``c_skip = 1 / (sigma^2 + 1)``), so the noisy latent at sigma has
    std ``sqrt(sigma^2 + 1)``; this is diffusers' ``init_noise_sigma``, computed the same way.
    """
    return noise * (sigmas.max() ** 2 + 1) ** 0.5


# --- guidance --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Guidance:
    """Strengths of the guidance (docs/ARCHITECTURE.md, "Guidance"):
    ``e = e0 + s_ref (e_r - e0) + s_lip (e_rl - e_r) + s_exp (e_rle - e_rl)``.

    ``reference`` = s_ref (SVD's image guidance scale), ``lip`` = s_lip (``lip_strength``),
    ``expression`` = s_exp (``expression_strength``).
    """

    reference: float
    lip: float
    expression: float
    # Below this noise level one pass with every condition replaces the guidance (0: guide every
    # step): late steps refine detail the early ones placed, so guidance there may buy little.
    sigma_min: float = 0.0

    def at(self, sigma: float) -> "Guidance":
        """The guidance a step at noise level ``sigma`` uses."""
        return self if sigma >= self.sigma_min else Guidance(1.0, 1.0, 1.0)

    def coefficients(self) -> dict[str, float]:
        """The same sum regrouped per pass: ``e = sum(c_pass * e_pass)`` (the c add up to 1).

        A pass whose coefficient is exactly 0 contributes exactly 0 (for finite model outputs),
        so it is skipped: s_ref == 1 drops e0, s_ref == s_lip drops e_r, s_lip == s_exp drops
        e_rl, s_exp == 0 drops e_rle. Note s_lip == 0 alone drops nothing: e_rl still carries
        -s_exp. Regrouping changes only float rounding, not the value.
        """
        s_ref, s_lip, s_exp = self.reference, self.lip, self.expression
        return {"none": 1.0 - s_ref, "reference": s_ref - s_lip, "lip": s_lip - s_exp, "expression": s_exp}

    def active_passes(self) -> list[tuple[str, float]]:
        return [(name, c) for name, c in self.coefficients().items() if c != 0.0]

    def combine(self, outputs) -> torch.Tensor:
        """The guided output from the passes' outputs, in :meth:`active_passes` order: v
        predictions (:class:`GuidedDenoiser`) or denoised estimates (ComfyUI's guider; the same
        value, since the coefficients add up to 1)."""
        guided = None
        for (_, coefficient), output in zip(self.active_passes(), outputs, strict=True):
            guided = coefficient * output if guided is None else guided + coefficient * output
        return guided


@dataclass(frozen=True)
class Conditioning:
    """ETHD's conditions for one video, on the model's device and dtype.

    Per clip: ``reference_latent [B, 4, h, w]`` (:func:`svd.conditioning.reference_latent`),
    ``image_embeds [B, 1, C]``, ``added_time_ids [B, 3]``, ``reference_exp [B, exp_dim]``,
    ``face_mask [B, 1, H, W]`` or ``None`` (ETHD takes one mask per clip). Per frame, over the
    whole video: ``lip_windows [B, N, 2c+1, lip_dim]`` (``networks.ethd.lip_windows`` over the full
    sequence, so window edges see their real neighbours) and ``driven_exp [B, N, exp_dim]``.
    """

    reference_latent: torch.Tensor
    image_embeds: torch.Tensor
    added_time_ids: torch.Tensor
    lip_windows: torch.Tensor
    driven_exp: torch.Tensor
    reference_exp: torch.Tensor
    face_mask: torch.Tensor | None = None

    @property
    def num_frames(self) -> int:
        return self.driven_exp.shape[1]

    def frames(self, start: int, stop: int) -> "Conditioning":
        """The conditions of frames ``start:stop`` (per-clip entries unchanged)."""
        return replace(self, lip_windows=self.lip_windows[:, start:stop], driven_exp=self.driven_exp[:, start:stop])

    def for_pass(self, name: str, frames: int) -> dict[str, torch.Tensor | None]:
        """ETHD inputs (except sample and timestep) of one guidance pass.

        e0 ("none"): no reference (zero concat latent and zero image embedding), null lip (zeros)
        and null expression (the reference's own); "reference" adds the portrait; "lip" adds the
        lip tokens; "expression" adds the driven expression.
        """
        with_reference = name != "none"
        latent = self.reference_latent if with_reference else torch.zeros_like(self.reference_latent)
        own_expression = self.reference_exp[:, None].expand(-1, frames, -1)
        return {
            "latent": latent[:, None].expand(-1, frames, -1, -1, -1),
            "image_embeds": self.image_embeds if with_reference else torch.zeros_like(self.image_embeds),
            "added_time_ids": self.added_time_ids,
            "lip_windows": self.lip_windows if name in ("lip", "expression") else torch.zeros_like(self.lip_windows),
            "driven_exp": self.driven_exp if name == "expression" else own_expression,
            "reference_exp": self.reference_exp,
            "face_mask": self.face_mask,
        }


class GuidedDenoiser:
    """SVD's v-prediction EDM denoiser around ETHD, with four-pass guidance (docs/ARCHITECTURE.md, "Guidance").

    ``denoised = c_skip x + c_out v(c_in x ++ reference latent, c_noise)`` with c_in =
    1/sqrt(sigma^2+1), c_out = -sigma/sqrt(sigma^2+1), c_skip = 1/(sigma^2+1), c_noise =
    0.25 log sigma, the reference latent concatenated to the *scaled* input (as the SVD
    pipeline). Guidance combines the passes' v predictions (equivalent to combining denoised
    estimates: the coefficients add up to 1). All passes of a step run as one UNet batch;
    ``max_batch`` splits it into calls of at most that many samples, only to save memory
    (every sample is computed independently, so the result does not depend on it).

    ``x`` may live anywhere (e.g. the host); the model is fed on the conditioning's device and
    dtype, and the preconditioning is done in ``x``'s device and dtype.
    """

    def __init__(self, model, conditioning: Conditioning, guidance: Guidance, max_batch: int | None = None):
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model, self.conditioning, self.guidance = model, conditioning, guidance
        # Shared with the windows made by ``window()``, so a split forced by memory is kept.
        self._batch_limit = [max_batch]

    @property
    def max_batch(self) -> int | None:
        return self._batch_limit[0]

    @property
    def device(self) -> torch.device:
        return self.conditioning.image_embeds.device

    def window(self, start: int, stop: int) -> "GuidedDenoiser":
        """The same denoiser restricted to frames ``start:stop``."""
        window = GuidedDenoiser(self.model, self.conditioning.frames(start, stop), self.guidance)
        window._batch_limit = self._batch_limit
        return window

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.conditioning.num_frames:
            raise ValueError(f"latents have {x.shape[1]} frames, the conditions {self.conditioning.num_frames}")
        sigma = torch.as_tensor(sigma, device=x.device)
        scale = (sigma**2 + 1) ** 0.5
        # The order of operations mirrors diffusers' scheduler so the SVD anchor matches closely.
        v = self.predict_v(x / scale, 0.25 * sigma.log(), self.guidance.at(float(sigma)))
        return v * (-sigma / scale) + x / (sigma**2 + 1)

    def predict_v(self, x_in: torch.Tensor, c_noise: torch.Tensor, guidance: Guidance) -> torch.Tensor:
        """Guided v prediction for the scaled input ``x_in`` with the step's ``guidance`` (all
        passes in one batch)."""
        # Never empty: the coefficients add up to 1, so at least one is nonzero.
        passes = guidance.active_passes()
        inputs = self._batch([name for name, _ in passes], x_in, c_noise)
        return guidance.combine(self._run(inputs).to(device=x_in.device, dtype=x_in.dtype).chunk(len(passes)))

    def _batch(self, names: list[str], x_in: torch.Tensor, c_noise: torch.Tensor) -> dict:
        """ETHD inputs of all passes concatenated along the batch (pass-major)."""
        cond = self.conditioning
        dtype = cond.image_embeds.dtype
        frames = x_in.shape[1]
        x_model = x_in.to(device=self.device, dtype=dtype)
        per_pass = [cond.for_pass(name, frames) for name in names]
        batch = {
            "sample": torch.cat([torch.cat([x_model, p["latent"].to(dtype)], dim=2) for p in per_pass]),
            "timestep": c_noise.to(device=self.device, dtype=dtype).expand(x_in.shape[0] * len(names)),
        }
        for key in ("image_embeds", "added_time_ids", "lip_windows", "driven_exp", "reference_exp"):
            batch[key] = torch.cat([p[key] for p in per_pass])
        batch["face_mask"] = None if cond.face_mask is None else torch.cat([p["face_mask"] for p in per_pass])
        return batch

    def _run(self, batch: dict) -> torch.Tensor:
        """One UNet batch; on out-of-memory, halves the batch (and remembers it) and retries."""
        size = batch["sample"].shape[0]
        while True:
            step = size if self.max_batch is None else min(self.max_batch, size)
            try:
                return torch.cat([self.model(**{k: None if v is None else v[start:start + step] for k, v in batch.items()})
                                  for start in range(0, size, step)])
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                if step == 1:
                    raise MemoryError(f"out of memory even with one window of one guidance pass per UNet call "
                                      f"({error}); free memory on the device (close other models or workflows), "
                                      "or generate at a smaller size or with a shorter window") from error
                self._batch_limit[0] = (step + 1) // 2
                log.warning("out of memory with %d samples per UNet call; retrying with %d", step, self.max_batch)
                release_cached_memory()


# --- long video ------------------------------------------------------------------------------
def default_overlap(window: int) -> int:
    """A quarter of the window, rounded up (overlap >= 25 %: docs/ARCHITECTURE.md, "Long video: windows and seams")."""
    return max(1, math.ceil(window / 4))


def window_spans(num_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each window: stride ``window - overlap``, the last one aligned to the end.

    A sequence no longer than the window is one window (of its own length).
    """
    if num_frames <= window:
        return [(0, num_frames)]
    if not 1 <= overlap < window:
        raise ValueError(f"overlap must be in 1..window-1 = 1..{window - 1}, got {overlap}")
    starts = list(range(0, num_frames - window + 1, window - overlap))
    if starts[-1] != num_frames - window:
        starts.append(num_frames - window)
    return [(start, start + window) for start in starts]


def fusion_weights(num_frames: int, window: int, overlap: int) -> list[torch.Tensor]:
    """Per-window frame weights (float64, ``[stop - start]`` each) that add up to 1 on every frame.

    Each window's raw weight ramps linearly over ``overlap`` frames at both of its edges,
    ``min(k + 0.5, L - k - 0.5, overlap) / overlap``: where two windows overlap by exactly
    ``overlap`` frames this is a linear cross-fade (raw weights already sum to 1), so neither
    window's edge frames, which see only one-sided temporal context, ever dominate. The raw
    weights are then divided by their per-frame total; a frame covered by one window gets
    weight exactly 1 (x / x == 1 in IEEE arithmetic), so a single window is reproduced bit for bit.
    """
    spans = window_spans(num_frames, window, overlap)
    raw = []
    for start, stop in spans:
        k = torch.arange(stop - start, dtype=torch.float64)
        raw.append(torch.minimum(torch.minimum(k + 0.5, (stop - start) - k - 0.5), torch.tensor(float(overlap))) / overlap)
    total = torch.zeros(num_frames, dtype=torch.float64)
    for (start, stop), weight in zip(spans, raw):
        total[start:stop] += weight
    return [weight / total[start:stop] for (start, stop), weight in zip(spans, raw)]


class WindowedDenoiser:
    """Runs a window-able denoiser on overlapping windows and fuses their estimates every step.

    ``denoiser`` must offer ``window(start, stop)`` (a denoiser of those frames, e.g.
    :class:`GuidedDenoiser`) and ``device`` (where its model runs). The window length should
    be ETHD's training clip length: SVD's conditioning and frame positions are per clip. Windows
    run one at a time: each window's slice of ``x`` is moved to the model's device and its
    denoised estimate back to ``x``'s device, where the weighted fusion happens, so the full
    latent state can stay on the host.
    """

    def __init__(self, denoiser, window: int, overlap: int | None = None, on_window: Callable[[], None] | None = None):
        overlap = default_overlap(window) if overlap is None else overlap
        if not 1 <= overlap < window:
            raise ValueError(f"overlap must be in 1..window-1 = 1..{window - 1}, got {overlap}")
        self.denoiser, self.window, self.overlap = denoiser, window, overlap
        # Called after every window's model call: progress bars count it, a cancel raises from it.
        self.on_window = on_window
        self._weights: dict[int, list[torch.Tensor]] = {}

    def spans(self, num_frames: int) -> list[tuple[int, int]]:
        return window_spans(num_frames, self.window, self.overlap)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        num_frames = x.shape[1]
        if num_frames not in self._weights:
            self._weights[num_frames] = fusion_weights(num_frames, self.window, self.overlap)
        device = self.denoiser.device
        sigma_model = torch.as_tensor(sigma).to(device)
        fused = torch.zeros_like(x)
        for (start, stop), weight in zip(self.spans(num_frames), self._weights[num_frames]):
            denoised = self.denoiser.window(start, stop)(x[:, start:stop].to(device), sigma_model)
            weight = weight.to(device=x.device, dtype=x.dtype).view(1, -1, *([1] * (x.dim() - 2)))
            fused[:, start:stop] += weight * denoised.to(x.device)
            if self.on_window is not None:
                self.on_window()
        return fused


# --- samplers --------------------------------------------------------------------------------
def _report(callback: Callback | None, i: int, x, sigmas, denoised) -> None:
    """k-diffusion's callback convention; raising from it (e.g. a cancel) stops the sampler."""
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigmas[i], "sigma_next": sigmas[i + 1], "denoised": denoised,
                  "total": len(sigmas) - 1})


@torch.no_grad()
def sample_euler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback | None = None) -> torch.Tensor:
    """Euler on the probability-flow ODE (SVD's default sampler): one model call per step.

    ``x`` is updated in place and returned (pass a copy to keep the start).

    ``callback`` gets, after each step's model call, a dict with ``i``, ``total`` (steps),
    ``x`` (the state the step starts from), ``sigma``, ``sigma_next`` and ``denoised``, for
    progress bars and previews; an exception raised in it (a cancel) stops sampling.
    """
    sigmas = sigmas.to(x.device)
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i])
        _report(callback, i, x, sigmas, denoised)
        # x + (x - denoised) / sigma * (sigma_next - sigma) == r x + (1 - r) denoised, r = sigma_next / sigma,
        # computed in place: the state of a long video is the largest host allocation, and this
        # way a step holds two latent-sized tensors (state and estimate), not four.
        ratio = float(sigmas[i + 1] / sigmas[i])
        x.mul_(ratio).add_(denoised, alpha=1.0 - ratio)
        del denoised  # before the next estimate is allocated
    return x


@torch.no_grad()
def sample_heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback | None = None) -> torch.Tensor:
    """EDM's Heun (Karras et al. 2022, Algorithm 1, deterministic): second order, two model calls
    per step except a last step to sigma = 0, which is Euler (the slope is undefined at 0).
    ``callback`` as in :func:`sample_euler`, once per step."""
    sigmas = sigmas.to(x.device)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        _report(callback, i, x, sigmas, denoised)
        slope = (x - denoised) / sigma
        x_euler = x + slope * (sigma_next - sigma)
        if float(sigma_next) == 0.0:
            x = x_euler
        else:
            slope_next = (x_euler - denoiser(x_euler, sigma_next)) / sigma_next
            x = x + (slope + slope_next) / 2 * (sigma_next - sigma)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, multistep, data prediction) on the EDM sigmas: one model
    call per step, second order from the previous step's estimate. In log-sigma time
    ``t = -log sigma`` with ``h = t_next - t``, a step is the exact exponential integrator
    ``x = (sigma_next / sigma) x + (1 - e^-h) D`` with ``D`` the estimate extrapolated linearly
    in t from the last two; the first step and the last (to sigma = 0) use the estimate as it is.
    ``callback`` as in :func:`sample_euler`."""
    sigmas = sigmas.to(x.device)
    previous = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigmas[i])
        _report(callback, i, x, sigmas, denoised)
        if sigma_next == 0.0:
            x = denoised
            break
        h = math.log(sigma / sigma_next)
        estimate = denoised
        if previous is not None:
            r = math.log(float(sigmas[i - 1]) / sigma) / h  # the last step's length over this one's
            estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (sigma_next / sigma) * x + (-math.expm1(-h)) * estimate
        previous = denoised
    return x
