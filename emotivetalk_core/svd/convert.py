"""Stability AI's single-file Stable Video Diffusion checkpoint <-> diffusers/transformers modules.

ComfyUI users have SVD as one file (``models/checkpoints/svd.safetensors`` / ``svd_xt.safetensors``)
in the names of Stability's ``sgm`` DiffusionEngine. We run diffusers'
``UNetSpatioTemporalConditionModel`` and ``AutoencoderKLTemporalDecoder`` and transformers'
``CLIPVisionModelWithProjection``. This module renames between the two layouts, three groups:

- ``model.diffusion_model.*``  <-> the UNet;
- ``first_stage_model.*``  <-> the VAE;
- ``conditioner.embedders.0.open_clip.model.visual.*`` (native OpenCLIP ViT names) <-> the image encoder.

The mapping is a set of rules generated from the block structure found in the names themselves
(levels, resnets per level, which levels have attention), so it follows any config of these
classes, not only SVD-XT. Differences that are more than a rename:

- sgm's ``first_stage_model`` (an ``AutoencodingEngine``) has no ``quant_conv``; diffusers' VAE
  applies one after the encoder. Reading, it becomes the identity; writing, a non-identity one is
  folded into ``encoder.conv_out`` (a 1x1 conv after a conv is one conv).
- The VAE's mid-block attention q/k/v/proj_out are 1x1 convs ``[C, C, 1, 1]`` in sgm and Linear
  ``[C, C]`` in diffusers. Neither VAE has a ``post_quant_conv``.
- OpenCLIP fuses q/k/v into ``in_proj_weight``/``in_proj_bias`` and stores ``proj`` as
  ``[width, embed_dim]``, the transpose of transformers' ``visual_projection.weight``.
- ``mix_factor`` is copied unchanged: sgm's VAE ``VideoResBlock`` blends
  ``a*temporal + (1-a)*spatial`` and diffusers builds those blocks with
  ``switch_spatial_to_temporal_mix=True``, which is the same formula.

The real file also holds two groups nothing loads (OpenCLIP text-tower leftovers and the
conditioning-frame VAE ``conditioner.embedders.3.encoder.*``); they are skipped with a DEBUG log.
Anything else is a ValueError naming the offending tensors: a wrong file never loads half-way.

It works on state dicts only: it builds no model and reads no file (loading is :mod:`.load`'s).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import torch

logger = logging.getLogger(__name__)

STABILITY_PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "image_encoder": "conditioner.embedders.0.open_clip.model.visual.",
}

# Tensors of the real svd/svd_xt files that no module loads. The text-tower prefix also covers
# ``.visual.``, so component prefixes are matched first.
_IGNORED_GROUPS = {
    "OpenCLIP text-tower leftovers": "conditioner.embedders.0.open_clip.model.",
    "conditioning-frame VAE": "conditioner.embedders.3.encoder.",
}


# --- rules -------------------------------------------------------------------------------------

class _Transform(NamedTuple):
    """A tensor change that goes with a rename, in both directions."""

    to_stability: Callable[[torch.Tensor], torch.Tensor]
    to_diffusers: Callable[[torch.Tensor], torch.Tensor]


def _linear_to_conv1x1(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[:, :, None, None] if tensor.ndim == 2 else tensor  # biases are the same


def _conv1x1_to_linear(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.flatten(1) if tensor.ndim == 4 else tensor


def _transposed(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.t().contiguous()  # safetensors refuses non-contiguous tensors


_CONV1X1 = _Transform(_linear_to_conv1x1, _conv1x1_to_linear)
_TRANSPOSE = _Transform(_transposed, _transposed)

# A rule is (diffusers name, Stability name, transform or None). A name ending in "." is a prefix
# (the rest of the key is kept); otherwise it is a whole key.
_Rule = tuple[str, str, "_Transform | None"]


def _renames(*pairs: tuple[str, str]) -> list[_Rule]:
    return [(diffusers, stability, None) for diffusers, stability in pairs]


def _nest(diffusers_prefix: str, stability_prefix: str, rules: Iterable[_Rule]) -> list[_Rule]:
    return [(diffusers_prefix + d, stability_prefix + s, t) for d, s, t in rules]


# sgm openaimodel ResBlock (UNet resnets, and the time_stack of every video resblock) <->
# diffusers ResnetBlock2D / TemporalResnetBlock.
_SGM_RESBLOCK = _renames(
    ("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection."),
)
_UNET_RESNET = (
    _nest("spatial_res_block.", "", _SGM_RESBLOCK)
    + _nest("temporal_res_block.", "time_stack.", _SGM_RESBLOCK)
    + _renames(("time_mixer.mix_factor", "time_mixer.mix_factor"))
)
# Transformer blocks have the same inner names on both sides, so they are kept as prefixes.
_UNET_ATTENTION = _renames(
    ("norm.", "norm."), ("proj_in.", "proj_in."), ("proj_out.", "proj_out."),
    ("transformer_blocks.", "transformer_blocks."), ("temporal_transformer_blocks.", "time_stack."),
    ("time_pos_embed.linear_1.", "time_pos_embed.0."), ("time_pos_embed.linear_2.", "time_pos_embed.2."),
    ("time_mixer.mix_factor", "time_mixer.mix_factor"),
)
_UNET_TOP = _renames(
    ("conv_in.", "input_blocks.0.0."),
    ("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
    ("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2."),
    ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
)

# ldm ResnetBlock (VAE) <-> diffusers ResnetBlock2D.
_LDM_RESNET = _renames(
    ("norm1.", "norm1."), ("conv1.", "conv1."), ("norm2.", "norm2."), ("conv2.", "conv2."),
    ("conv_shortcut.", "nin_shortcut."),
)
_VAE_VIDEO_RESNET = (
    _nest("spatial_res_block.", "", _LDM_RESNET)
    + _nest("temporal_res_block.", "time_stack.", _SGM_RESBLOCK)
    + _renames(("time_mixer.mix_factor", "mix_factor"))
)
_VAE_ATTENTION = _renames(("group_norm.", "norm.")) + [
    (f"{d}.", f"{s}.", _CONV1X1) for d, s in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))
]
_VAE_TOP = _renames(
    ("encoder.conv_in.", "encoder.conv_in."), ("encoder.conv_norm_out.", "encoder.norm_out."),
    ("encoder.conv_out.", "encoder.conv_out."),
    ("decoder.conv_in.", "decoder.conv_in."), ("decoder.conv_norm_out.", "decoder.norm_out."),
    ("decoder.conv_out.", "decoder.conv_out."), ("decoder.time_conv_out.", "decoder.conv_out.time_mix_conv."),
)

_CLIP_TOP = [
    ("vision_model.embeddings.patch_embedding.weight", "conv1.weight", None),
    ("vision_model.embeddings.class_embedding", "class_embedding", None),
    ("vision_model.embeddings.position_embedding.weight", "positional_embedding", None),
    ("vision_model.pre_layrnorm.", "ln_pre.", None),
    ("vision_model.post_layernorm.", "ln_post.", None),
    ("visual_projection.weight", "proj", _TRANSPOSE),
]
# OpenCLIP fuses q/k/v; _image_encoder_to_* split and fuse them, outside the rules.
_CLIP_LAYER = _renames(
    ("layer_norm1.", "ln_1."), ("self_attn.out_proj.", "attn.out_proj."), ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj."),
)
_QKV = ("q", "k", "v")


# --- block structure ----------------------------------------------------------------------------

class _Level(NamedTuple):
    """One resolution level of a UNet/VAE side, in diffusers order."""

    resnets: int
    attentions: bool
    resample: bool


def _levels(keys: Iterable[str], blocks: str, resnet: str, attention: str, resample: str) -> list[_Level]:
    """Levels of ``<blocks>.<i>.<kind>[.<j>].*`` names (diffusers, and sgm's VAE ``down``/``up``)."""
    pattern = re.compile(rf"{re.escape(blocks)}\.(\d+)\.(\w+)\.(?:(\d+)\.)?")
    found: dict[int, dict] = {}
    for key in keys:
        match = pattern.match(key)
        if match is None:
            continue
        level = found.setdefault(int(match[1]), {"resnets": set(), "attentions": False, "resample": False})
        if match[2] == resnet and match[3] is not None:
            level["resnets"].add(int(match[3]))
        level["attentions"] |= match[2] == attention
        level["resample"] |= match[2] == resample
    return [_Level(len(found[i]["resnets"]), found[i]["attentions"], found[i]["resample"]) for i in sorted(found)]


def _sgm_unet_levels(keys: Iterable[str], blocks: str) -> list[_Level]:
    """Levels of sgm's flat ``input_blocks``/``output_blocks``.

    Each numbered block holds a resnet at ``.0`` and optionally attention at ``.1``; a resampler
    (``0.op`` on the way down, ``1.conv``/``2.conv`` on the way up) closes a level.
    """
    pattern = re.compile(rf"{blocks}\.(\d+)\.(\d+)\.(\w+)")
    parts: dict[int, set[str]] = {}
    for key in keys:
        match = pattern.match(key)
        if match is not None and not (blocks == "input_blocks" and match[1] == "0"):  # input_blocks.0 is conv_in
            parts.setdefault(int(match[1]), set()).add(f"{match[2]}.{match[3]}")
    levels, resnets, attentions = [], 0, False
    for index in sorted(parts):
        names = parts[index]
        resnets += any(n.startswith("0.") and n != "0.op" for n in names)
        attentions |= any(n.startswith("1.") and n != "1.conv" for n in names)
        if names & {"0.op", "1.conv", "2.conv"}:
            levels.append(_Level(resnets, attentions, True))
            resnets, attentions = 0, False
    if resnets:
        levels.append(_Level(resnets, attentions, False))
    return levels


def _unet_rules(down: list[_Level], up: list[_Level]) -> list[_Rule]:
    rules = list(_UNET_TOP)
    rules += _nest("mid_block.resnets.0.", "middle_block.0.", _UNET_RESNET)
    rules += _nest("mid_block.attentions.0.", "middle_block.1.", _UNET_ATTENTION)
    rules += _nest("mid_block.resnets.1.", "middle_block.2.", _UNET_RESNET)
    return rules + _unet_down_rules(down) + _unet_up_rules(up)


def _unet_down_rules(down: list[_Level]) -> list[_Rule]:
    rules = []
    block = 1  # input_blocks.0 is conv_in
    for i, level in enumerate(down):
        for j in range(level.resnets):
            rules += _nest(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{block}.0.", _UNET_RESNET)
            if level.attentions:
                rules += _nest(f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{block}.1.", _UNET_ATTENTION)
            block += 1
        if level.resample:
            rules += _renames((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{block}.0.op."))
            block += 1
    return rules


def _unet_up_rules(up: list[_Level]) -> list[_Rule]:
    rules = []
    block = 0
    for i, level in enumerate(up):
        for j in range(level.resnets):
            rules += _nest(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{block}.0.", _UNET_RESNET)
            if level.attentions:
                rules += _nest(f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{block}.1.", _UNET_ATTENTION)
            block += 1
        if level.resample:  # the upsampler sits in the level's last block, after its attention
            slot = 2 if level.attentions else 1
            rules += _renames((f"up_blocks.{i}.upsamplers.0.conv.", f"output_blocks.{block - 1}.{slot}.conv."))
    return rules


def _vae_rules(encoder: list[_Level], decoder: list[_Level]) -> list[_Rule]:
    """``decoder`` in diffusers order (deepest first); sgm numbers ``up`` the other way round."""
    rules = list(_VAE_TOP)
    for side, resnet in (("encoder", _LDM_RESNET), ("decoder", _VAE_VIDEO_RESNET)):
        rules += _nest(f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1.", resnet)
        rules += _nest(f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2.", resnet)
        rules += _nest(f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.", _VAE_ATTENTION)
    for i, level in enumerate(encoder):
        for j in range(level.resnets):
            rules += _nest(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", _LDM_RESNET)
        if level.resample:
            rules += _renames((f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv."))
    for i, level in enumerate(decoder):
        up = len(decoder) - 1 - i
        for j in range(level.resnets):
            rules += _nest(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{up}.block.{j}.", _VAE_VIDEO_RESNET)
        if level.resample:
            rules += _renames((f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{up}.upsample.conv."))
    return rules


def _clip_rules(layers: int) -> list[_Rule]:
    rules = list(_CLIP_TOP)
    for n in range(layers):
        rules += _nest(f"vision_model.encoder.layers.{n}.", f"transformer.resblocks.{n}.", _CLIP_LAYER)
    return rules


def _count_layers(keys: Iterable[str], pattern: str) -> int:
    indices = [int(m[1]) for m in map(re.compile(pattern).match, keys) if m is not None]
    return max(indices, default=-1) + 1


# --- renaming -----------------------------------------------------------------------------------

def _few(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _longest_prefix(table: Mapping[str, tuple], key: str) -> tuple[str, tuple] | None:
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end]) + ("." if end < len(parts) else "")
        if candidate in table:
            return candidate, table[candidate]
    return None


def _required(state_dict: Mapping[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    """``state_dict[key]``, or a ValueError naming the tensor as ``where + key``."""
    if key not in state_dict:
        raise ValueError(f"missing tensor {where}{key}")
    return state_dict[key]


def _rename(state_dict: Mapping[str, torch.Tensor], rules: list[_Rule], to_stability: bool,
            where: str) -> dict[str, torch.Tensor]:
    """Apply ``rules`` to every key; a key no rule covers is a ValueError naming it as ``where + key``."""
    table = {(d if to_stability else s): ((s if to_stability else d), t) for d, s, t in rules}
    converted, unknown = {}, []
    for key, tensor in state_dict.items():
        found = _longest_prefix(table, key)
        if found is None:
            unknown.append(key)
            continue
        source, (target, transform) = found
        if transform is not None:
            tensor = transform.to_stability(tensor) if to_stability else transform.to_diffusers(tensor)
        converted[target + key[len(source):]] = tensor
    if unknown:
        names = sorted(where + key for key in unknown)
        raise ValueError(f"{len(unknown)} tensor name(s) not understood: {_few(names)}")
    return converted


# --- per component --------------------------------------------------------------------------------
# *_to_diffusers take Stability names without their group prefix and name tensors in errors with it;
# *_to_stability name diffusers tensors "(<model>) <name>".

_UNET_WHERE, _VAE_WHERE, _CLIP_WHERE = "(diffusers UNet) ", "(diffusers VAE) ", "(transformers CLIP vision) "


def _unet_to_stability(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    down = _levels(state_dict, "down_blocks", "resnets", "attentions", "downsamplers")
    up = _levels(state_dict, "up_blocks", "resnets", "attentions", "upsamplers")
    return _rename(state_dict, _unet_rules(down, up), True, _UNET_WHERE)


def unet_to_stability(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers SVD UNet's state dict in Stability's (and ComfyUI's ``diffusion_model``) names,
    without the ``model.diffusion_model.`` prefix."""
    return _unet_to_stability(state_dict)


def transformer_paths(stability_unet_keys: Iterable[str]) -> dict[str, str]:
    """Where each ETHD adapter goes in a Stability-layout (ComfyUI) SVD UNet: ``{adapter name:
    video transformer path}``, e.g. ``down_blocks_0_attentions_0 -> input_blocks.1.1``, from the
    UNet's own parameter names (no ``model.diffusion_model.`` prefix). The adapter name is the
    diffusers transformer's path with ``.`` -> ``_`` (how ETHD names its adapters)."""
    keys = list(stability_unet_keys)
    rules = _unet_rules(_sgm_unet_levels(keys, "input_blocks"), _sgm_unet_levels(keys, "output_blocks"))
    suffix = ".proj_in."  # one rule per video transformer
    return {diffusers[:-len(suffix)].replace(".", "_"): stability[:-len(suffix)]
            for diffusers, stability, _ in rules if diffusers.endswith(suffix)}


def _unet_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    down = _sgm_unet_levels(state_dict, "input_blocks")
    up = _sgm_unet_levels(state_dict, "output_blocks")
    return _rename(state_dict, _unet_rules(down, up), False, STABILITY_PREFIXES["unet"])


def _is_identity(weight: torch.Tensor, bias: torch.Tensor) -> bool:
    eye = torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return torch.equal(weight.flatten(1), eye) and not bias.any()


def _fold_quant_conv(conv_weight: torch.Tensor, conv_bias: torch.Tensor, quant_weight: torch.Tensor,
                     quant_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``quant_conv(conv_out(x))`` as one conv: ``W' = Q.W`` over output channels, ``b' = Q.b + q``.

    The identity is returned untouched so a round trip from a Stability file is bitwise. Meta
    tensors have no values to compare, so they always take the (shape-only) fold.
    """
    if not conv_weight.is_meta and _is_identity(quant_weight, quant_bias):
        return conv_weight, conv_bias
    # At least float32, so a half-precision checkpoint is rounded once, not at every product.
    work = torch.promote_types(conv_weight.dtype, torch.float32)
    q = quant_weight.flatten(1).to(work)
    weight = torch.einsum("oi,ichw->ochw", q, conv_weight.to(work))
    bias = q @ conv_bias.to(work) + quant_bias.to(work)
    return weight.to(conv_weight.dtype), bias.to(conv_bias.dtype)


def _vae_to_stability(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    quant_weight = _required(state_dict, "quant_conv.weight", _VAE_WHERE)
    quant_bias = _required(state_dict, "quant_conv.bias", _VAE_WHERE)
    rest = {k: v for k, v in state_dict.items() if not k.startswith("quant_conv.")}
    encoder = _levels(rest, "encoder.down_blocks", "resnets", "attentions", "downsamplers")
    decoder = _levels(rest, "decoder.up_blocks", "resnets", "attentions", "upsamplers")
    converted = _rename(rest, _vae_rules(encoder, decoder), True, _VAE_WHERE)
    weight = _required(converted, "encoder.conv_out.weight", _VAE_WHERE)
    bias = _required(converted, "encoder.conv_out.bias", _VAE_WHERE)
    converted["encoder.conv_out.weight"], converted["encoder.conv_out.bias"] = _fold_quant_conv(
        weight, bias, quant_weight, quant_bias)
    return converted


def _vae_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    encoder = _levels(state_dict, "encoder.down", "block", "attn", "downsample")
    decoder = _levels(state_dict, "decoder.up", "block", "attn", "upsample")[::-1]
    converted = _rename(state_dict, _vae_rules(encoder, decoder), False, STABILITY_PREFIXES["vae"])
    # sgm's encoder output already is the latent distribution's moments: quant_conv is the identity.
    conv_out = _required(state_dict, "encoder.conv_out.weight", STABILITY_PREFIXES["vae"])
    channels, dtype, device = conv_out.shape[0], conv_out.dtype, conv_out.device
    converted["quant_conv.weight"] = torch.eye(channels, dtype=dtype, device=device)[:, :, None, None]
    converted["quant_conv.bias"] = torch.zeros(channels, dtype=dtype, device=device)
    return converted


def _qkv_names(layer: int, kind: str) -> tuple[str, list[str]]:
    fused = f"transformer.resblocks.{layer}.attn.in_proj_{kind}"
    return fused, [f"vision_model.encoder.layers.{layer}.self_attn.{x}_proj.{kind}" for x in _QKV]


def _image_encoder_to_stability(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    layers = _count_layers(state_dict, r"vision_model\.encoder\.layers\.(\d+)\.")
    fused, separate = {}, set()
    for layer in range(layers):
        for kind in ("weight", "bias"):
            target, sources = _qkv_names(layer, kind)
            fused[target] = torch.cat([_required(state_dict, s, _CLIP_WHERE) for s in sources])
            separate.update(sources)
    rest = {k: v for k, v in state_dict.items() if k not in separate}
    return _rename(rest, _clip_rules(layers), True, _CLIP_WHERE) | fused


def _image_encoder_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    where = STABILITY_PREFIXES["image_encoder"]
    layers = _count_layers(state_dict, r"transformer\.resblocks\.(\d+)\.")
    split, fused = {}, set()
    for layer in range(layers):
        for kind in ("weight", "bias"):
            source, targets = _qkv_names(layer, kind)
            split.update(zip(targets, _required(state_dict, source, where).chunk(3)))
            fused.add(source)
    rest = {k: v for k, v in state_dict.items() if k not in fused}
    return _rename(rest, _clip_rules(layers), False, where) | split


class _Converters(NamedTuple):
    to_diffusers: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]
    to_stability: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]


_COMPONENTS = {
    "unet": _Converters(_unet_to_diffusers, _unet_to_stability),
    "vae": _Converters(_vae_to_diffusers, _vae_to_stability),
    "image_encoder": _Converters(_image_encoder_to_diffusers, _image_encoder_to_stability),
}


# --- public conversion ------------------------------------------------------------------------------

def _split_stability(keys: Iterable[str]) -> dict[str, list[str]]:
    """Stability names per component; logs the ignored groups, rejects anything else."""
    groups: dict[str, list[str]] = {name: [] for name in STABILITY_PREFIXES}
    ignored = dict.fromkeys(_IGNORED_GROUPS, 0)
    unknown = []
    for key in keys:
        component = next((n for n, p in STABILITY_PREFIXES.items() if key.startswith(p)), None)
        group = next((g for g, p in _IGNORED_GROUPS.items() if key.startswith(p)), None)
        if component is not None:
            groups[component].append(key)
        elif group is not None:
            ignored[group] += 1
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"not a Stability SVD checkpoint (or one with parts this loader does not know): "
            f"{len(unknown)} unexpected tensor(s): {_few(sorted(unknown))}")
    empty = [STABILITY_PREFIXES[name] for name, names in groups.items() if not names]
    if empty:
        raise ValueError(f"not a complete Stability SVD checkpoint: no tensors under {', '.join(empty)}")
    if any(ignored.values()):
        logger.debug("Stability SVD checkpoint: ignoring tensors no module loads: %s",
                     ", ".join(f"{count} {group} ({_IGNORED_GROUPS[group]}*)" for group, count in ignored.items()))
    return groups


def stability_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Stability single-file SVD state dict -> ``{"unet": sd, "vae": sd, "image_encoder": sd}``.

    Output names are those of diffusers' ``UNetSpatioTemporalConditionModel``,
    ``AutoencoderKLTemporalDecoder`` (with an identity ``quant_conv``) and transformers'
    ``CLIPVisionModelWithProjection``. Renamed tensors are the input tensors (views, no copies).
    Raises ValueError for names outside the three groups and the two known ignored ones, for a
    missing group, and for names inside a group that no rule covers. Whether a group is complete
    depends on the architecture; :func:`load_svd` checks that against the modules it builds.
    """
    groups = _split_stability(state_dict)
    return {
        name: _COMPONENTS[name].to_diffusers({k[len(STABILITY_PREFIXES[name]):]: state_dict[k] for k in keys})
        for name, keys in groups.items()
    }


def diffusers_to_stability(unet: Mapping[str, torch.Tensor], vae: Mapping[str, torch.Tensor],
                           image_encoder: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers/transformers state dicts -> one state dict in Stability's single-file layout.

    Only the three groups (``model.diffusion_model.``, ``first_stage_model.``,
    ``conditioner.embedders.0.open_clip.model.visual.``). The VAE's ``quant_conv`` is folded into
    ``encoder.conv_out``; an identity ``quant_conv`` leaves ``conv_out`` untouched.
    """
    converted = {}
    for name, state_dict in (("unet", unet), ("vae", vae), ("image_encoder", image_encoder)):
        prefix = STABILITY_PREFIXES[name]
        converted.update({prefix + k: v for k, v in _COMPONENTS[name].to_stability(state_dict).items()})
    return converted
