"""V-AID: Vision-guided Audio Information Decoupling, the lip stream and the two V-AID losses.

Figure panel (b): speech features A_w from a frozen audio encoder are split into a *lip* stream
(the **Audio-lip Projector**, output l_a, pulled toward a frozen Lip Encoder's l_v of the real
mouth) and an *expression* stream (the Audio-exp Generator, i.e. Di-CTE in ``dicte.py``, output
e_a, pulled toward the Exp Encoder's e_v), with a **push** between l_a and e_a so the lip stream
carries no expression and the expression stream no lip motion.

Speech features are ``[B, F, L, D]``: F video frames, L speech-encoder layers, D dims.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpeechLayerMix(nn.Module):
    """Learned softmax weights over the L speech-encoder layers: ``[B, F, L, D]`` -> ``[B, F, D]``.

    Different layers of wav2vec2 carry different information (lower: acoustics and phones,
    upper: words and prosody); each stream learns its own blend. The weights start equal.
    """

    def __init__(self, layers: int, dim: int):
        super().__init__()
        self.layers, self.dim = layers, dim
        self.logits = nn.Parameter(torch.zeros(layers))

    def forward(self, speech: torch.Tensor) -> torch.Tensor:
        if speech.ndim != 4 or speech.shape[2:] != (self.layers, self.dim):
            raise ValueError(
                f"expected speech features [B, F, {self.layers}, {self.dim}] (frames, encoder layers, "
                f"dims), got {tuple(speech.shape)}: was this model trained with another speech encoder?"
            )
        weights = torch.softmax(self.logits, dim=0).to(speech.dtype)
        return torch.einsum("bfld,l->bfd", speech, weights)


class TemporalConvBlock(nn.Module):
    """Pre-norm residual 1-D convolution over frames, ``[B, F, C]`` -> ``[B, F, C]``."""

    def __init__(self, width: int, kernel: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.conv = nn.Conv1d(width, width, kernel, padding="same")
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.out(F.gelu(h))


class AudioLipProjector(nn.Module):
    """Audio-lip Projector (figure panel (b), trainable): speech ``[B, F, L, D]`` -> l_a ``[B, F, lip_dim]``.

    Layer mix, linear in, two residual temporal convolutions, norm, linear out. The convolutions
    see ``kernel`` frames each (5 frames = 200 ms at 25 fps): a mouth shape depends on the phones
    around it (coarticulation), not on the current 40 ms alone. The receptive field is
    ``2 * (kernel - 1) + 1`` frames, so chunks of long audio need half of that as overlap.

    Takes the ``vaid`` config dict: ``speech_dim``, ``speech_layers``, ``lip_dim``, ``hidden``,
    ``kernel``.
    """

    _BLOCKS = 2

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        hidden = config["hidden"]
        self.mix = SpeechLayerMix(config["speech_layers"], config["speech_dim"])
        self.proj_in = nn.Linear(config["speech_dim"], hidden)
        self.blocks = nn.ModuleList(TemporalConvBlock(hidden, config["kernel"]) for _ in range(self._BLOCKS))
        self.norm = nn.LayerNorm(hidden)
        self.proj_out = nn.Linear(hidden, config["lip_dim"])

    def forward(self, speech: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(self.mix(speech.to(self.proj_in.weight.dtype)))
        for block in self.blocks:
            x = block(x)
        return self.proj_out(self.norm(x))


def _check_frame_aligned(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.ndim != 3 or b.ndim != 3 or a.shape[:2] != b.shape[:2]:
        raise ValueError(
            f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must both be [B, F, dim] "
            "with the same batch and frames"
        )


def pull_loss(l_a: torch.Tensor, l_v: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Pull (figure panel (b), l_a <- l_v): InfoNCE from audio to vision over every frame of the batch.

    ``l_a`` and ``l_v`` are ``[B, F, lip_dim]``. Each audio frame must pick its own visual frame
    among all B*F: the positive is the same frame of the same clip, the negatives are the other
    frames of its clip (which teach *timing*: lip sync) and the frames of the other clips (which
    teach *content*). Cosine similarity, so the frozen Lip Encoder's scale does not matter.
    Neighbouring frames of a still mouth are near-duplicates; they stay negatives, which the
    temperature keeps tolerable and which is what makes the lip stream frame-accurate.
    """
    _check_frame_aligned("l_a", l_a, "l_v", l_v)
    if l_a.shape[-1] != l_v.shape[-1]:
        raise ValueError(f"l_a has {l_a.shape[-1]} dims but l_v has {l_v.shape[-1]}: both must be lip_dim")
    audio = F.normalize(l_a.flatten(0, 1), dim=-1)
    visual = F.normalize(l_v.flatten(0, 1).to(audio.dtype), dim=-1)
    logits = audio @ visual.T / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target)


def push_loss(l_a: torch.Tensor, e_a: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Push (figure panel (b), l_a <-> e_a): mean squared cross-correlation of standardised features.

    ``l_a`` ``[B, F, lip_dim]`` and ``e_a`` ``[B, F, exp_dim]`` live in different spaces with
    different sizes, so a distance between them means nothing. Instead every lip feature and
    every expression feature are standardised over the B*F frames, and the loss is the mean of
    the squared entries of their ``[lip_dim, exp_dim]`` cross-correlation matrix (the
    off-diagonal term of Barlow Twins, between two streams). It is 0 exactly when no expression
    feature is linearly predictable from any single lip feature, it lies in [0, 1] whatever the
    dims or scales, and it leaves each stream free to carry what it should. Needs B*F >= 2.
    """
    _check_frame_aligned("l_a", l_a, "e_a", e_a)
    lip = _standardise(l_a.flatten(0, 1), eps)
    exp = _standardise(e_a.flatten(0, 1).to(lip.dtype), eps)
    correlation = lip.T @ exp / lip.shape[0]
    return correlation.square().mean()


def _standardise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Zero mean, unit variance per feature over the rows; a constant feature becomes 0."""
    if x.shape[0] < 2:
        raise ValueError("push_loss needs at least two frames in the batch to measure correlation")
    centred = x - x.mean(dim=0)
    return centred / (centred.square().mean(dim=0) + eps).sqrt()
