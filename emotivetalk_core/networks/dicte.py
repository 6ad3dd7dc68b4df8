"""Di-CTE: Diffusion-based Co-speech Temporal Expansion (the Audio-exp Generator of V-AID).

Figure panel (b), inside the Di-CTE box::

    Noisy Code -(+ timestep T)-(+ A_w)-(+ Identity Encoder(x_ref))-> Conditional Transformers x N -> MLP
                                                  condition: Exp Encoder(x_ref) ("uncond.")
                                                          or Mapping(S_U)      ("cond.")

It expands one utterance-level emotion into a per-frame, speech-aligned expression sequence
e_a ``[B, F, exp_dim]`` in the Exp Encoder's code space (trained to land on e_v).

Choices the paper leaves open, and why:

- **x0-parameterisation**: the network predicts the clean code. The figure's pull is "e_a lands
  on e_v", the push loss needs e_a at every training step, and the MLP's output *is* e_a; with
  x0 both are the prediction itself, no conversion that blows up at high noise.
- **Cosine schedule** (Nichol & Dhariwal) over ``train_steps``: a linear schedule spends most of
  a short schedule at near-pure noise; cosine keeps useful noise levels everywhere.
- **Deterministic DDIM sampler** (eta = 0): the output is a function of the seed alone, so a
  workflow re-runs identically, and any step count up to ``train_steps`` works.
- **Condition by adaptive LayerNorm (adaLN-Zero, as in DiT)**, per frame: the condition is one
  vector per frame, not a token set. Cross-attention to a single token is a softmax over one key,
  i.e. the same value vector added to every query: a bias. adaLN instead scales, shifts and gates
  every feature of every layer from that frame's condition, so an emotion timeline that changes
  the condition changes exactly the frames it covers. Zero-initialised gates make every layer
  start as the identity, which keeps early training stable.
- **Relative frame order** from a depthwise temporal convolution at the input rather than
  learned absolute positions, so the model runs on any number of frames.
- **Windows at inference as in training**: attention trained over ``window`` frames (the
  config's record of the vaid stage's ``data.window``) meets only that many at inference:
  :meth:`DiCTE.sample` denoises longer sequences in overlapping windows fused at every step,
  from per-frame noise, so there are no independently sampled chunks whose crossfade would
  damp the expression at the joins.
- **Normalised codes**: Exp codes spread about 0.02 around their mean while the diffusion's noise
  has unit variance, so almost every noise level would drown them and the loss would hardly see
  them. Di-CTE diffuses ``(code - code_mean) / code_std`` (per dimension, measured on the training
  data and stored in its config, so the model file carries them), takes its conditions in the
  same units and returns codes in the Exp Encoder's space. A config without them (models trained
  before) means mean 0 and std 1: the raw codes, as those models learned them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .vaid import SpeechLayerMix

_POSITION_KERNEL = 5
# The window of a model whose config does not record its own (trained before it was recorded):
# 2 s at 25 fps, the paper's data.
UNRECORDED_WINDOW = 50
DICTE_NOISE_STREAM = 1
_MLP_RATIO = 4


def cosine_alphas_cumprod(train_steps: int, offset: float = 0.008) -> torch.Tensor:
    """alpha_bar_t for t = 0..train_steps-1 (float64), betas clipped at 0.999 as in Nichol & Dhariwal."""
    t = torch.arange(train_steps + 1, dtype=torch.float64) / train_steps
    f = torch.cos((t + offset) / (1 + offset) * math.pi / 2).square()
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0)


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of timesteps ``[B]`` -> ``[B, 2 * (dim // 2)]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ConditionalTransformerLayer(nn.Module):
    """Conditional Transformer (figure panel (b)): self-attention over frames and an MLP, each
    modulated per frame by the condition through adaLN-Zero (shift, scale, gate)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, _MLP_RATIO * width), nn.GELU(), nn.Linear(_MLP_RATIO * width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.modulation[-1].weight)
        nn.init.zeros_(self.modulation[-1].bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        return self.attn_out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """``x`` and ``condition`` (already embedded) are ``[B, F, width]``."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(condition).chunk(6, dim=-1)
        x = x + gate1 * self.attention(self.norm1(x) * (1 + scale1) + shift1)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class DiCTE(nn.Module):
    """Di-CTE (figure panel (b), the Audio-exp Generator): a conditional transformer diffusion
    model over the per-frame expression code.

    Takes the ``dicte`` config dict: ``exp_dim``, ``speech_dim``, ``speech_layers``, ``id_dim``,
    ``width``, ``layers``, ``heads``, ``train_steps``.

    Shapes: speech ``[B, F, L, D]``; identity ``[B, id_dim]`` (the Identity Encoder's embedding of
    the portrait; that encoder trains with Di-CTE, so pass it with its graph when training);
    conditions ``[B, F, exp_dim]`` per frame, or ``[B, exp_dim]`` for one condition over all frames.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        width, heads = config["width"], config["heads"]
        if width % heads:
            raise ValueError(f"Di-CTE width {width} is not a multiple of heads {heads}")
        self.exp_dim = config["exp_dim"]
        self.train_steps = config["train_steps"]
        self.window = config.get("window") or UNRECORDED_WINDOW
        # Derived from train_steps, so not a buffer: it stays float64 on the CPU whatever
        # .to() the module gets, and the checkpoint does not store it.
        self.alphas_cumprod = cosine_alphas_cumprod(self.train_steps)
        self.code_in = nn.Linear(self.exp_dim, width)
        self.time_embed = nn.Sequential(nn.Linear(2 * (width // 2), width), nn.SiLU(), nn.Linear(width, width))
        self.speech_mix = SpeechLayerMix(config["speech_layers"], config["speech_dim"])
        self.speech_in = nn.Linear(config["speech_dim"], width)
        self.identity_in = nn.Linear(config["id_dim"], width)
        self.position = nn.Conv1d(width, width, _POSITION_KERNEL, padding="same", groups=width)
        self.condition_in = nn.Sequential(nn.Linear(self.exp_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.layers = nn.ModuleList(ConditionalTransformerLayer(width, heads) for _ in range(config["layers"]))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, self.exp_dim))
        # Not persistent: the config is their one record (the model file's component config).
        self.register_buffer("code_mean", torch.zeros(self.exp_dim), persistent=False)
        self.register_buffer("code_std", torch.ones(self.exp_dim), persistent=False)
        if config.get("code_mean") is not None:
            self.set_code_statistics(torch.tensor(config["code_mean"]), torch.tensor(config["code_std"]))

    # --- code units --------------------------------------------------------------------------
    def set_code_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-dimension mean and std of the Exp codes Di-CTE models (see the module docstring)."""
        if mean.shape != (self.exp_dim,) or std.shape != (self.exp_dim,) or not bool((std > 0).all()):
            raise ValueError(f"code statistics must be [{self.exp_dim}] with std > 0, got {tuple(mean.shape)} "
                             f"and {tuple(std.shape)}")
        self.code_mean.copy_(mean)
        self.code_std.copy_(std)
        self.config.update(code_mean=[float(v) for v in mean], code_std=[float(v) for v in std])

    def normalise(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes - self.code_mean.to(codes)) / self.code_std.to(codes)

    def denormalise(self, values: torch.Tensor) -> torch.Tensor:
        return values * self.code_std.to(values) + self.code_mean.to(values)

    # --- the network -----------------------------------------------------------------------
    def context(self, speech: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """The step-independent part of the input, A_w + Identity Encoder(x_ref): ``[B, F, width]``.

        Computed once per sampling run rather than once per step.
        """
        dtype = self.code_in.weight.dtype
        audio = self.speech_in(self.speech_mix(speech.to(dtype)))
        if identity.ndim != 2 or identity.shape[0] != speech.shape[0]:
            raise ValueError(f"identity must be [B, id_dim] with B = {speech.shape[0]}, got {tuple(identity.shape)}")
        return audio + self.identity_in(identity.to(dtype))[:, None]

    def denoise(self, noisy: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Predicted clean code ``[B, F, exp_dim]`` from the noisy code, timesteps ``[B]``, the
        :meth:`context` and a per-frame condition ``[B, F, exp_dim]``."""
        dtype = self.code_in.weight.dtype
        time = self.time_embed(timestep_embedding(timestep, self.code_in.out_features).to(dtype))
        x = self.code_in(noisy.to(dtype)) + time[:, None] + context
        x = x + self.position(x.transpose(1, 2)).transpose(1, 2)
        condition = self.condition_in(condition.to(dtype))
        for layer in self.layers:
            x = layer(x, condition)
        return self.head(x)

    def forward(self, noisy, timestep, speech, identity, condition) -> torch.Tensor:
        """One network call: the predicted clean code ``[B, F, exp_dim]``, in normalised units
        (``noisy`` and ``condition`` too: :meth:`normalise`)."""
        context = self.context(speech, identity)
        return self.denoise(noisy, timestep, context, self.per_frame(condition, *context.shape[:2]))

    def per_frame(self, condition: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        """A condition ``[B, exp_dim]`` or ``[B, F, exp_dim]`` as ``[B, F, exp_dim]``."""
        if condition.shape == (batch, self.exp_dim):
            return condition[:, None].expand(-1, frames, -1)
        if condition.shape == (batch, frames, self.exp_dim):
            return condition
        raise ValueError(
            f"a Di-CTE condition must be [B, exp_dim] or [B, F, exp_dim] = [{batch}, {frames}, {self.exp_dim}], "
            f"got {tuple(condition.shape)}"
        )

    # --- training ----------------------------------------------------------------------------
    def loss(
        self,
        e_v: torch.Tensor,
        speech: torch.Tensor,
        identity: torch.Tensor,
        condition: torch.Tensor,
        uncond_condition: torch.Tensor,
        drop_prob: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss and the prediction e_a: ``(mse(e_a, e_v) in normalised units, e_a)``.

        ``e_v`` ``[B, F, exp_dim]`` is the Exp Encoder's code of the real frames. One timestep and
        one noise per clip; with probability ``drop_prob`` a clip's condition is replaced by
        ``uncond_condition`` (Exp Encoder(x_ref)), so the unconditional prediction that guidance
        needs is trained too. e_a is returned for the push loss against the lip stream. Random
        draws come from ``generator`` (a CPU one unless given) and do not depend on the device.
        """
        batch, frames = e_v.shape[:2]
        device = generator.device if generator is not None else torch.device("cpu")
        t = torch.randint(0, self.train_steps, (batch,), generator=generator, device=device)
        noise = torch.randn(e_v.shape, generator=generator, device=device)
        drop = torch.rand(batch, generator=generator, device=device) < drop_prob
        t, noise, drop = t.to(e_v.device), noise.to(e_v.device, e_v.dtype), drop.to(e_v.device)
        condition = torch.where(
            drop[:, None, None],
            self.per_frame(uncond_condition, batch, frames),
            self.per_frame(condition, batch, frames),
        )
        target = self.normalise(e_v)
        prediction = self(self._noised(target, t, noise), t, speech, identity, self.normalise(condition))
        return F.mse_loss(prediction, target.to(prediction.dtype)), self.denormalise(prediction)

    def estimate(self, e_v: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, speech: torch.Tensor,
                 identity: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Di-CTE's one-step clean estimate ``[B, F, exp_dim]`` (Exp Encoder units) of codes ``e_v``
        noised at timesteps ``t`` ``[B]`` with ``noise`` ``[B, F, exp_dim]``, as :meth:`loss` noises
        them: near ``e_v`` at small t, Di-CTE's guess from the speech and condition alone at the last."""
        batch, frames = e_v.shape[:2]
        # Noised in float32 (as training noises): in half precision alpha_t rounds to 1 at small t.
        noisy = self._noised(self.normalise(e_v.float()), t, noise.to(e_v.device, torch.float32))
        condition = self.normalise(self.per_frame(condition.float(), batch, frames))
        return self.denormalise(self(noisy, t.to(e_v.device), speech, identity, condition))

    def _noised(self, target: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        alpha = self.alphas_cumprod[t.cpu()].to(target.device, target.dtype)[:, None, None]
        return alpha.sqrt() * target + (1 - alpha).sqrt() * noise

    # --- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        speech: torch.Tensor,
        identity: torch.Tensor,
        condition: torch.Tensor,
        uncond_condition: torch.Tensor | None = None,
        guidance: float | torch.Tensor = 1.0,
        steps: int = 50,
        generator: torch.Generator | int = 0,
    ) -> torch.Tensor:
        """Per-frame expression codes ``[B, F, exp_dim]``, one per video frame of ``speech``.

        Deterministic DDIM (eta = 0): the same ``generator`` seed gives the same codes. With
        ``uncond_condition`` (Exp Encoder(x_ref), or Mapping("neutral") to neutralise the portrait)
        each step's prediction is ``e_u + guidance * (e_c - e_u)``: 0 = the portrait's own
        expression, 1 = the requested one, > 1 exaggerated. ``guidance`` is a number or a tensor
        ``[F]`` / ``[B, F]`` (an intensity per frame from an emotion timeline).

        Sequences longer than :attr:`window` (the training window) run as overlapping windows
        whose predictions are fused at every step (:func:`~emotivetalk_core.sampling.fusion_weights`,
        as ETHD's windows are), so every call attends over what training attended over and one
        trajectory covers the whole sequence: no independently sampled chunks to crossfade. With an
        integer seed, frame k's starting noise depends on the seed and k alone.
        """
        if not 1 <= steps <= self.train_steps:
            raise ValueError(f"steps must be between 1 and train_steps = {self.train_steps}, got {steps}")
        batch, frames = speech.shape[:2]
        context = self.context(speech, identity)
        conditions = self.normalise(self.per_frame(condition, batch, frames))
        if uncond_condition is not None:
            # One network batch per step: conditional and unconditional passes together.
            context = torch.cat([context, context])
            conditions = torch.cat([conditions, self.normalise(self.per_frame(uncond_condition, batch, frames))])
        scale = self._guidance_scale(guidance, uncond_condition is not None, batch, frames, context)
        x = _initial_noise(batch, frames, self.exp_dim, generator).to(context.device, context.dtype)
        windows = _Windows(frames, self.window, x.device)
        if isinstance(scale, torch.Tensor):
            scale = scale.expand(batch, -1, -1)
        context, conditions, scale = windows.cut(context), windows.cut(conditions), windows.cut(scale)
        timesteps = torch.linspace(self.train_steps - 1, 0, steps, dtype=torch.float64).round().long().tolist()
        for index, t in enumerate(timesteps):
            # Every window in one network batch; their predictions fused with ETHD's weights.
            clean = windows.fuse(self._guided_prediction(windows.cut(x), t, context, conditions, scale), batch).to(x.dtype)
            previous = timesteps[index + 1] if index + 1 < steps else None
            x = self._ddim_step(x, clean, t, previous)
        return self.denormalise(x)

    def _guided_prediction(self, x, t: int, context, conditions, scale) -> torch.Tensor:
        guided = scale is not None
        inputs = torch.cat([x, x]) if guided else x
        timestep = torch.full((inputs.shape[0],), t, device=x.device)
        prediction = self.denoise(inputs, timestep, context, conditions)
        if not guided:
            return prediction
        conditional, unconditional = prediction.chunk(2)
        return unconditional + scale * (conditional - unconditional)

    def _ddim_step(self, x: torch.Tensor, clean: torch.Tensor, t: int, previous: int | None) -> torch.Tensor:
        """x_t -> x_previous along the deterministic DDIM path; the last step returns the clean code."""
        if previous is None:
            return clean
        alpha, alpha_prev = float(self.alphas_cumprod[t]), float(self.alphas_cumprod[previous])
        noise = (x - math.sqrt(alpha) * clean) / math.sqrt(1 - alpha)
        return math.sqrt(alpha_prev) * clean + math.sqrt(1 - alpha_prev) * noise

    @staticmethod
    def _guidance_scale(guidance, has_uncond: bool, batch: int, frames: int, like: torch.Tensor):
        """``None`` (no guidance) or the scale as a number or ``[B or 1, F, 1]`` tensor."""
        if not has_uncond:
            if isinstance(guidance, torch.Tensor) or guidance != 1.0:
                raise ValueError("guidance needs uncond_condition (the portrait's own expression code)")
            return None
        if not isinstance(guidance, torch.Tensor):
            return float(guidance)
        if guidance.shape not in ((frames,), (batch, frames)):
            raise ValueError(f"a guidance tensor must be [F] or [B, F] = [{batch}, {frames}], got {tuple(guidance.shape)}")
        return guidance.reshape(-1, frames, 1).to(like.device, like.dtype)


class _Windows:
    """Overlapping windows over ``frames`` frames (``sampling.window_spans``, all ``window`` long
    when there are several) as one batch: :meth:`cut` stacks a sequence's windows along the batch,
    :meth:`fuse` adds their predictions back with ``sampling.fusion_weights`` (in float32, where
    the weights sum to 1)."""

    def __init__(self, frames: int, window: int, device: torch.device):
        from ..sampling import default_overlap, fusion_weights, window_spans

        overlap = default_overlap(window)
        spans = window_spans(frames, window, overlap)
        self.frames, self.count = frames, len(spans)
        self.index = torch.stack([torch.arange(start, stop) for start, stop in spans]).to(device)  # [W, L]
        self.weights = torch.stack(fusion_weights(frames, window, overlap)).float().to(device)  # [W, L]

    def cut(self, sequence):
        """``[B, F, ...]`` -> ``[B * W, L, ...]`` (batch-major); numbers pass through."""
        if not isinstance(sequence, torch.Tensor):
            return sequence
        return sequence[:, self.index].flatten(0, 1)

    def fuse(self, predictions: torch.Tensor, batch: int) -> torch.Tensor:
        """``[B * W, L, D]`` -> ``[B, F, D]`` float32: each frame the weighted sum of its windows."""
        weighted = predictions.float().unflatten(0, (batch, self.count)) * self.weights[None, :, :, None]
        fused = torch.zeros((batch, self.frames, predictions.shape[-1]), dtype=torch.float32, device=predictions.device)
        return fused.index_add_(1, self.index.flatten(), weighted.flatten(1, 2))


def _initial_noise(batch: int, frames: int, exp_dim: int, generator: torch.Generator | int) -> torch.Tensor:
    """x_T ``[batch, frames, exp_dim]``: from an integer seed, frame k's noise from its own CPU
    generator (``sampling.initial_noise``, a stream of its own: ETHD's latents draw from the same
    seed), so it is the same on every device and whatever the windows; from a generator, one draw
    of the whole tensor."""
    if isinstance(generator, int):
        from ..sampling import initial_noise

        return initial_noise(generator, frames, (exp_dim,), batch_size=batch, stream=DICTE_NOISE_STREAM)
    return torch.randn((batch, frames, exp_dim), generator=generator, device=generator.device)
