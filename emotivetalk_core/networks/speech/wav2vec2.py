"""The wav2vec2 encoder: a transformers ``Wav2Vec2Model`` from a Hugging Face folder or a ComfyUI
file.

A ComfyUI ``models/audio_encoders`` file is a bare state dict: its names are made canonical
(prefix, legacy weight-norm names, pre-training heads dropped) and the ``Wav2Vec2Config`` is
inferred from its shapes (:func:`infer_wav2vec2_config`). Long audio is encoded in chunks.

transformers and safetensors are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

import torch
from torch import nn

from ...placement import placement
from .base import SpeechEncoder, weights_sha256
from .timing import SAMPLE_RATE, WAV2VEC2_CONV_KERNELS, WAV2VEC2_CONV_STRIDES, conv_frame_count, conv_receptive_field

logger = logging.getLogger(__name__)

# Attention heads are not stored either; every released wav2vec2 (base 12x64, large 16x64) uses 64.
WAV2VEC2_HEAD_DIM = 64
WAV2VEC2_NORMALISATION = "zero-mean-unit-variance"
# Input normalisation of wav2vec2-base-960h's feature extractor: (x - mean) / sqrt(var + 1e-7).
_NORMALISATION_EPS = 1e-7
# Parameters of pre-training heads: present in some files, unused by the encoder.
_IGNORED_PREFIXES = ("lm_head.", "quantizer.", "project_q.", "project_hid.")
# SpecAugment's mask vector: training-only, absent from some files, so it is neither required nor
# part of the weights hash.
_TRAINING_ONLY = ("masked_spec_embed",)
_LEGACY_WEIGHT_NORM = {
    ".weight_g": ".parametrizations.weight.original0",
    ".weight_v": ".parametrizations.weight.original1",
}
_KNOWN_WAV2VEC2 = {
    # (hidden, layers, feat_extract_norm) -> name
    (768, 12, "group"): "wav2vec2-base",
    (1024, 24, "layer"): "wav2vec2-large",
    (1024, 24, "group"): "wav2vec2-large-groupnorm",
}


class Wav2Vec2SpeechEncoder(SpeechEncoder):
    """Hidden states of a transformers ``Wav2Vec2Model`` (indices into ``hidden_states``; 0 = input
    of the first transformer layer).

    Long audio is encoded in chunks of ``chunk_seconds`` with ``context_seconds`` of extra audio on
    each side whose outputs are discarded, so memory does not grow with the audio length. The
    waveform is normalised, and base's first-conv group norm measured, over the full length, so
    chunking only narrows what attention sees (the chunk instead of the whole clip). (Generation
    and training call it on one Di-CTE window at a time, ``pipeline.encode_speech``, which stays
    below a chunk; the chunks keep a direct call on minutes of audio within memory.)
    """

    def __init__(self, model, layers, source: str, chunk_seconds: float = 20.0, context_seconds: float = 2.0):
        super().__init__()
        config = model.config
        self.layers = [int(index) for index in layers]
        if not self.layers or not all(0 <= index <= config.num_hidden_layers for index in self.layers):
            raise ValueError(
                f"wav2vec2 layers must be indices 0..{config.num_hidden_layers} into hidden_states, got {layers}"
            )
        if chunk_seconds <= 0 or context_seconds < 0:
            raise ValueError(f"need chunk_seconds > 0 and context_seconds >= 0, got {chunk_seconds}, {context_seconds}")
        self.model = model.eval().requires_grad_(False)
        self.source = source
        self.num_layers = len(self.layers)
        self.dim = config.hidden_size
        self.receptive_field, self.stride = conv_receptive_field(config.conv_kernel, config.conv_stride)
        self.chunk_frames = max(1, round(chunk_seconds * SAMPLE_RATE / self.stride))
        self.context_frames = round(context_seconds * SAMPLE_RATE / self.stride)
        self._weights_sha256: str | None = None

    @classmethod
    def load(cls, source: str | Path, layers, **kwargs) -> "Wav2Vec2SpeechEncoder":
        """From a Hugging Face folder (config.json + model.safetensors) or a ComfyUI safetensors file."""
        source = Path(source)
        if source.is_dir():
            return cls.from_folder(source, layers, **kwargs)
        if source.is_file():
            return cls.from_file(source, layers, **kwargs)
        raise FileNotFoundError(f"wav2vec2 model not found: {source}")

    @classmethod
    def from_folder(cls, folder: str | Path, layers, **kwargs) -> "Wav2Vec2SpeechEncoder":
        """A Hugging Face model folder; only safetensors weights are read (never pickle)."""
        from transformers import Wav2Vec2Model

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ValueError(f"{folder} is not a Hugging Face model folder: config.json is missing")
        if not any(folder.glob("*.safetensors")):
            raise ValueError(
                f"{folder} has no .safetensors weights; only safetensors are loaded (convert "
                "pytorch_model.bin with transformers' save_pretrained(safe_serialization=True))"
            )
        model = Wav2Vec2Model.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                              dtype=torch.float32)
        return cls(model, layers, source=folder.name, **kwargs)

    @classmethod
    def from_file(cls, path: str | Path, layers, **kwargs) -> "Wav2Vec2SpeechEncoder":
        """A ComfyUI ``models/audio_encoders`` file: bare state dict, architecture read from shapes."""
        from transformers import Wav2Vec2Model

        from ...checkpoints import open_safetensors

        path = Path(path)
        with open_safetensors(path) as handle:
            state_dict = _canonical_state_dict({key: handle.get_tensor(key) for key in handle.keys()}, path)
        model = Wav2Vec2Model(infer_wav2vec2_config(state_dict, path))
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        missing = [key for key in missing if key not in _TRAINING_ONLY]
        if missing or unexpected:
            raise ValueError(
                f"{path} does not fit the wav2vec2 architecture inferred from its shapes: "
                f"missing {missing[:8]}, unexpected {unexpected[:8]}"
            )
        return cls(model, layers, source=path.name, **kwargs)

    def features(self, waveform: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        device = placement(self.model)["device"]
        waveform = waveform.to(device)
        waveform = (waveform - waveform.mean()) / torch.sqrt(waveform.var(correction=0) + _NORMALISATION_EPS)
        if waveform.shape[0] < self.receptive_field:
            # Zero (the normalised mean) up to one receptive field, so even a click yields a frame.
            waveform = nn.functional.pad(waveform, (0, self.receptive_field - waveform.shape[0]))
        total = conv_frame_count(waveform.shape[0], self.receptive_field, self.stride)
        if total <= self.chunk_frames:
            features = self._chunk(waveform, 0, total, total)
        else:
            with self._whole_waveform_group_norm(waveform):
                features = torch.cat([self._chunk(waveform, start, min(start + self.chunk_frames, total), total)
                                      for start in range(0, total, self.chunk_frames)])
        return features, self.receptive_field / 2 / SAMPLE_RATE, self.stride / SAMPLE_RATE

    @contextlib.contextmanager
    def _whole_waveform_group_norm(self, waveform: torch.Tensor):
        """Make every chunk normalise base's first conv with the statistics of the whole waveform.

        Base-style models group-norm the first conv's output over time (one group per channel),
        the one step besides attention that sees the whole input. Measuring those statistics in a
        cheap first pass keeps the convolutional features of a chunked run equal to a single pass.
        """
        first = self.model.feature_extractor.conv_layers[0]
        norm = getattr(first, "layer_norm", None)
        if not isinstance(norm, nn.GroupNorm):  # layer-norm (large-style) convs are frame-local
            yield
            return
        if norm.num_groups != norm.num_channels:
            raise RuntimeError(f"expected one group per channel in wav2vec2's first conv norm, got {norm}")
        block = self.chunk_frames * self.stride // first.conv.stride[0]
        mean, var = _conv_channel_statistics(first.conv, waveform, block)
        first.layer_norm = _FixedChannelNorm(norm, mean, var)
        try:
            yield
        finally:
            first.layer_norm = norm

    def _chunk(self, waveform: torch.Tensor, first: int, end: int, total: int) -> torch.Tensor:
        """Frames ``[first, end)`` computed from their audio plus up to ``context_frames`` either side.

        Chunk inputs start on a multiple of the stride, so chunk frame k is global frame ``lo + k``.
        The last chunk runs to the end of the waveform: the samples after the last full frame
        change nothing but base's group-norm statistics, and keeping them makes a single chunk
        exactly the model applied to the whole waveform.
        """
        lo = max(0, first - self.context_frames)
        hi = min(total, end + self.context_frames)
        stop = waveform.shape[0] if hi == total else (hi - 1) * self.stride + self.receptive_field
        samples = waveform[lo * self.stride:stop]
        hidden = self.model(samples[None], output_hidden_states=True).hidden_states
        stacked = torch.stack([hidden[index][0] for index in self.layers], dim=1)  # [hi - lo, L, D]
        if stacked.shape[0] != hi - lo:
            raise RuntimeError(
                f"wav2vec2 returned {stacked.shape[0]} frames for {samples.shape[0]} samples, expected "
                f"{hi - lo} (receptive field {self.receptive_field}, stride {self.stride})"
            )
        return stacked[first - lo:end - lo]

    def fingerprint(self) -> dict:
        if self._weights_sha256 is None:
            self._weights_sha256 = weights_sha256(self.model.state_dict(), skip=_TRAINING_ONLY)
        return {
            "architecture": wav2vec2_architecture_name(self.model.config),
            "normalisation": WAV2VEC2_NORMALISATION,
            "weights_sha256": self._weights_sha256,
            "source": self.source,
        }


def _conv_channel_statistics(conv: nn.Conv1d, waveform: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance over time of ``conv(waveform)``, ``block`` outputs at a time."""
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    count = (waveform.shape[0] - kernel) // stride + 1
    total = torch.zeros(conv.out_channels, dtype=torch.float64, device=waveform.device)
    squares = torch.zeros_like(total)
    for start in range(0, count, block):
        end = min(start + block, count)
        out = conv(waveform[start * stride:(end - 1) * stride + kernel][None, None])[0].double()
        total += out.sum(dim=1)
        squares += out.square().sum(dim=1)
    mean = total / count
    var = (squares / count - mean.square()).clamp_min(0)
    return mean.float(), var.float()


class _FixedChannelNorm(nn.Module):
    """A per-channel ``nn.GroupNorm`` with given statistics instead of those of its input."""

    def __init__(self, norm: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor):
        super().__init__()
        self.norm, self.mean, self.var = norm, mean[:, None], var[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(self.var + self.norm.eps)
        return (x - self.mean) * scale * self.norm.weight[:, None] + self.norm.bias[:, None]


def wav2vec2_architecture_name(config) -> str:
    """``wav2vec2-base`` / ``wav2vec2-large`` for the released shapes, a descriptive name otherwise."""
    key = (config.hidden_size, config.num_hidden_layers, config.feat_extract_norm)
    if key in _KNOWN_WAV2VEC2:
        return _KNOWN_WAV2VEC2[key]
    return f"wav2vec2-h{config.hidden_size}-l{config.num_hidden_layers}-{config.feat_extract_norm}norm"


def _canonical_state_dict(raw: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """transformers ``Wav2Vec2Model`` names and float32 values for a ComfyUI-style state dict."""
    if any(key.startswith("model.encoder.embed_positions") for key in raw):
        raise ValueError(f"{path} is a Whisper audio encoder; expected a wav2vec2 model (e.g. wav2vec2-base-960h)")
    state_dict = {}
    for key, tensor in raw.items():
        key = key.removeprefix("wav2vec2.")
        if key.startswith(_IGNORED_PREFIXES):
            logger.debug("%s: ignoring pre-training head tensor %s", path, key)
            continue
        for legacy, current in _LEGACY_WEIGHT_NORM.items():
            if key.endswith(legacy):
                key = key[: -len(legacy)] + current
        state_dict[key] = tensor.float() if tensor.is_floating_point() else tensor
    required = ("feature_extractor.conv_layers.0.conv.weight", "feature_projection.projection.weight",
                "encoder.layer_norm.weight", "encoder.pos_conv_embed.conv.parametrizations.weight.original1")
    absent = [key for key in required if key not in state_dict]
    if absent:
        sample = sorted(raw)[:5]
        raise ValueError(
            f"{path} is not a wav2vec2 model file: expected transformers Wav2Vec2Model tensors (optionally "
            f"prefixed 'wav2vec2.', as ComfyUI's models/audio_encoders files are), e.g. wav2vec2-base-960h; "
            f"missing {absent}, the file has keys like {sample}"
        )
    return state_dict


def _indices(state_dict: dict, pattern: str) -> list[int]:
    found = {int(match.group(1)) for key in state_dict if (match := re.match(pattern, key))}
    return sorted(found)


def infer_wav2vec2_config(state_dict: dict[str, torch.Tensor], path: Path):
    """A ``Wav2Vec2Config`` matching the tensor shapes and names of a canonical state dict.

    Feature-extractor norm: base-style files have a (group) norm on the first conv only
    (``feat_extract_norm="group"``, post-norm transformer); large-lv60-style files a layer norm on
    every conv, which in every released model goes with the pre-norm ("stable") transformer.
    """
    from transformers import Wav2Vec2Config

    convs = _indices(state_dict, r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight$")
    kernels = tuple(state_dict[f"feature_extractor.conv_layers.{i}.conv.weight"].shape[-1] for i in convs)
    if convs != list(range(len(WAV2VEC2_CONV_KERNELS))) or kernels != WAV2VEC2_CONV_KERNELS:
        raise ValueError(f"{path}: expected wav2vec2's 7 feature-extractor convolutions with kernels "
                         f"{WAV2VEC2_CONV_KERNELS}, found kernels {kernels}")
    normed = _indices(state_dict, r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.weight$")
    if normed == [0]:
        norm = "group"
    elif normed == convs:
        norm = "layer"
    else:
        raise ValueError(f"{path}: feature-extractor norms on convolutions {normed}; expected on the first "
                         "only (base, group norm) or on all (large-lv60, layer norm)")
    biased = _indices(state_dict, r"feature_extractor\.conv_layers\.(\d+)\.conv\.bias$")
    if biased not in ([], convs):
        raise ValueError(f"{path}: conv biases on convolutions {biased}; expected on none or all")
    hidden = state_dict["encoder.layer_norm.weight"].shape[0]
    if hidden % WAV2VEC2_HEAD_DIM:
        raise ValueError(f"{path}: hidden size {hidden} is not a multiple of {WAV2VEC2_HEAD_DIM}; the head count "
                         "is not stored in the file and wav2vec2 models use 64-dimensional heads")
    layers = _indices(state_dict, r"encoder\.layers\.(\d+)\.")
    if layers != list(range(len(layers))) or not layers:
        raise ValueError(f"{path}: transformer layers {layers} are not numbered 0..N-1")
    pos_conv = state_dict["encoder.pos_conv_embed.conv.parametrizations.weight.original1"]
    return Wav2Vec2Config(
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=hidden // WAV2VEC2_HEAD_DIM,
        intermediate_size=state_dict["encoder.layers.0.feed_forward.intermediate_dense.weight"].shape[0],
        conv_dim=tuple(state_dict[f"feature_extractor.conv_layers.{i}.conv.weight"].shape[0] for i in convs),
        conv_kernel=WAV2VEC2_CONV_KERNELS,
        conv_stride=WAV2VEC2_CONV_STRIDES,
        conv_bias=bool(biased),
        feat_extract_norm=norm,
        do_stable_layer_norm=norm == "layer",
        num_conv_pos_embeddings=pos_conv.shape[-1],
        num_conv_pos_embedding_groups=hidden // pos_conv.shape[1],
    )
