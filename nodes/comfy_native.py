"""The native ComfyUI path: EmotiveTalk on ComfyUI's own SVD MODEL, sampled by SamplerCustomAdvanced
(docs/ARCHITECTURE.md, "Native ComfyUI path").

The second module of the pack that touches ComfyUI (after ``comfy_bridge``). Every ``comfy``
import happens inside a function and the ComfyUI subclasses are built on first use
(``functools.cache`` factories), so ``import nodes`` stays light and works without ComfyUI.

How the pieces meet (the method itself is the library's; this module only routes tensors):

- **Apply** clones the MODEL and adds one ``DIFFUSION_MODEL`` wrapper. For an EmotiveTalk call it
  binds the call's tokens (``AdapterSet.bind``) and hooks the adapters onto ComfyUI's own video
  transformers (``AdapterSet.hooked``) for the duration of that call only, so nothing persists in
  the shared UNet: clones, LoRA keys, offloading and weight dtypes stay ComfyUI's. The adapters
  have their own ModelPatcher (an "additional model": loaded and offloaded with the UNet) and
  are read once per file and dtype, shared by every clone.
- **Conditioning** puts the whole video's library ``Conditioning`` (CPU, float32) into the
  CONDITIONING as a custom ``model_conds`` entry; ComfyUI hands it to the wrapper untouched.
- **Guider** runs the library's four-pass guidance and window fusion (``Guidance.combine``,
  ``WindowedDenoiser``) over ComfyUI's ``calc_cond_batch``: all passes of a window in one call.
"""

from __future__ import annotations

import functools
import logging
import weakref
from dataclasses import dataclass

import torch

from . import _widgets as widgets
from . import comfy_bridge as bridge
from ._core import core_module, pipeline, settings as settings_lib
from ._types import CATEGORY, EXPRESSION, LIP, MODEL, REFERENCE, VAID
from .loaders import model_file_input, resolve_model, reused_svd_parts
from .stages import checked_reference_inputs, encoded_reference, model_tag

log = logging.getLogger(__name__)

KEY = "emotivetalk"  # the wrapper's, attachment's, additional model's and model_conds entry's key
APPLY, CONDITIONING, GUIDER = "EmotiveTalk Apply", "EmotiveTalk Conditioning", "EmotiveTalk Guider"
REFERENCE_NODE = "EmotiveTalk Native Reference"


# --- what travels in a CONDITIONING ----------------------------------------------------------

@dataclass(frozen=True)
class PassStreams:
    """The per-frame streams one guidance pass sees: the whole video's library ``Conditioning``,
    the pass (``none``, ``reference``, ``lip``, ``expression``) and the frames ``span`` of the
    window being sampled (``None`` = all)."""

    conditioning: object
    name: str
    span: tuple[int, int] | None = None

    def for_call(self, frames: int) -> dict:
        conditioning = self.conditioning if self.span is None else self.conditioning.frames(*self.span)
        if conditioning.num_frames != frames:
            raise RuntimeError(f"EmotiveTalk: the UNet call has {frames} frames, the streams {conditioning.num_frames}; "
                               "sample with EmotiveTalk Guider (core guiders and Context Windows do not slice them)")
        return conditioning.for_pass(self.name, frames)


@functools.cache
def streams_cond_class() -> type:
    """``comfy.conds.CONDRegular`` for :class:`PassStreams`: never repeated or cut to a batch (the
    Guider picks the frames), and batched with the other passes of the same video."""
    import comfy.conds

    class EmotiveTalkStreamsCond(comfy.conds.CONDRegular):
        def process_cond(self, batch_size, **kwargs):
            return self

        def can_concat(self, other):
            return isinstance(other, EmotiveTalkStreamsCond) and other.cond.conditioning is self.cond.conditioning

        def concat(self, others):  # one entry per batched pass, in ComfyUI's chunk order
            return [self.cond] + [other.cond for other in others]

        def size(self):  # memory estimates ask every entry; the streams are tiny next to the latents
            return [1]

    return EmotiveTalkStreamsCond


def streams_of(conds) -> PassStreams | None:
    """The :class:`PassStreams` a CONDITIONING (or processed cond list) carries, if any."""
    for cond in conds or ():
        entry = (cond[1] if isinstance(cond, (list, tuple)) else cond).get("model_conds", {}).get(KEY)
        if entry is not None:
            return entry.cond
    return None


# --- Apply: the adapters on ComfyUI's SVD UNet ------------------------------------------------

@dataclass(frozen=True)
class NativeAdapters:
    """The Applied MODEL's attachment: the adapters, where they hook, and what their file records."""

    adapters: torch.nn.Module  # networks.ethd.AdapterSet
    paths: dict
    settings: dict  # the file's SVD conditioning (fps_id, motion_bucket, clip_frames, ...)
    model_tag: str | None  # the EMOTIVETALK_MODEL whose VAE space the LATENT is in, if known
    base_config: str | dict  # the SVD architecture the adapters were trained on (its VAE and image encoder's shapes)
    sampling: dict  # the steps and guidance strengths the file samples with unless set (settings.model_sampling)


class AdapterWrapper:
    """``DIFFUSION_MODEL`` wrapper: an EmotiveTalk call runs with its tokens bound and the adapters
    hooked on; any other call (plain SVD conds) runs untouched."""

    def __init__(self, adapters, paths: dict):
        self.adapters, self.paths = adapters, paths

    def __call__(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        streams = kwargs.pop(KEY, None)
        if streams is None:
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        if "context_window" in transformer_options:
            raise RuntimeError("EmotiveTalk: core Context Windows cannot carry the per-frame streams (SVD keeps frames in "
                               "the batch); remove the Context Windows node and set the EmotiveTalk Guider's window")
        frames = kwargs["num_video_frames"]
        if x.shape[0] != frames * len(streams):
            raise RuntimeError(f"EmotiveTalk: a UNet batch of {x.shape[0]} for {len(streams)} passes of {frames} frames")
        per_pass = [item.for_call(frames) for item in streams]
        on = {"device": x.device}
        masks = [p["face_mask"] for p in per_pass]
        binding = self.adapters.bind(
            torch.cat([p["lip_windows"] for p in per_pass]).to(**on), torch.cat([p["driven_exp"] for p in per_pass]).to(**on),
            torch.cat([p["reference_exp"] for p in per_pass]).to(**on),
            None if masks[0] is None else torch.cat(masks).to(**on), tuple(x.shape[-2:]), x.dtype)
        with binding, self.adapters.hooked(executor.class_obj, self.paths):
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)


# Adapter sets already read, each in its ModelPatcher: one per (file, its version, dtype, UNet layout,
# devices), alive while a MODEL uses it. One patcher per set, not one per Apply: ComfyUI tracks a loaded
# model by its patcher and reports a leak when a patcher dies while its module lives on in another.
_ADAPTERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def load_adapters(path, shapes: dict[str, tuple[int, int]], dtype: torch.dtype, load_device, offload_device):
    """``(ModelPatcher of the AdapterSet, model settings, the SVD it pairs with, its own sampling)`` of an EmotiveTalk
    file, fitted to a UNet with video transformers of ``shapes`` ({adapter name: (width, spatial
    blocks)}); the weights are read once."""
    import comfy.model_patcher

    checkpoints = core_module("checkpoints")
    configs, info = checkpoints.read_metadata(path)
    if "adapter" not in configs:
        raise ValueError(f"{APPLY}, input 'model_name': {path.name} holds no ETHD adapters (it holds {sorted(configs)})")
    model_settings = configs["adapter"]["ethd"]
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size, dtype, tuple(sorted(shapes.items())), str(load_device),
           str(offload_device))
    patcher = _ADAPTERS.get(key)
    if patcher is None:
        adapters = _read_adapters(path, shapes, info).to(dtype).eval().requires_grad_(False)
        patcher = comfy.model_patcher.ModelPatcher(adapters, load_device=load_device, offload_device=offload_device)
        _ADAPTERS[key] = patcher
    return patcher, model_settings, core_module("bundles").base_config(configs, info), core_module("settings").model_sampling(info)


def _read_adapters(path, shapes: dict[str, tuple[int, int]], info: dict):
    states, configs, _ = core_module("checkpoints").load_model_file(path, ["adapter"])
    in_file = {name.split(".")[1] for name in states["adapter"] if name.startswith("adapters.")}
    advice = f"connect the SVD checkpoint the adapters were trained on ({info.get('base_config', 'svd-xt')})"
    if in_file != set(shapes):
        raise ValueError(f"{APPLY}: the adapters in {path.name} were trained on another SVD than this MODEL (adapters for "
                         f"{len(in_file)} video transformers, the MODEL has {len(shapes)}); {advice}")
    adapters = core_module("networks.ethd").AdapterSet(configs["adapter"]["adapter"], shapes)
    try:
        adapters.load_state_dict(states["adapter"])
    except RuntimeError as error:
        raise ValueError(f"{APPLY}: the adapters in {path.name} do not fit this MODEL's UNet widths ({error}); "
                         f"{advice}") from None
    return adapters


def apply_adapters(model, path, tag: str | None = None):
    """A clone of the ComfyUI MODEL ``model`` with the EmotiveTalk adapters of ``path``."""
    import comfy.patcher_extension

    convert = core_module("svd.convert")
    ethd_lib = core_module("networks.ethd")
    diffusion_model = model.get_model_object("diffusion_model")
    paths = convert.transformer_paths(name for name, _ in diffusion_model.named_parameters())
    if not paths or not hasattr(diffusion_model, "input_blocks"):
        raise ValueError(f"{APPLY}, input 'model': not a Stable Video Diffusion MODEL (no video transformers); load SVD "
                         "with Image Only Checkpoint Loader, or EmotiveTalk UNet to MODEL for an EmotiveTalk file's own UNet")
    shapes = {name: ethd_lib.transformer_shapes(diffusion_model.get_submodule(p)) for name, p in paths.items()}
    dtype = model.model.manual_cast_dtype or model.model_dtype()
    patcher, model_settings, base_config, sampling = load_adapters(path, shapes, dtype, model.load_device, model.offload_device)
    adapters = patcher.model
    applied = model.clone()
    wrappers = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    if applied.get_attachment(KEY) is not None:
        log.info("%s: the MODEL already had EmotiveTalk adapters; they are replaced by %s", APPLY, path.name)
        applied.remove_wrappers_with_key(wrappers, KEY)
    applied.add_wrapper_with_key(wrappers, KEY, AdapterWrapper(adapters, paths))
    applied.set_additional_models(KEY, [patcher])
    applied.set_attachments(KEY, NativeAdapters(adapters, paths, dict(model_settings), tag, base_config, sampling))
    log.info("%s: %s on %d video transformers", APPLY, path.name, len(paths))
    return applied


def attachment(model, where: str) -> NativeAdapters:
    found = model.get_attachment(KEY) if hasattr(model, "get_attachment") else None
    if found is None:
        raise ValueError(f"{where}, input 'model': this MODEL has no EmotiveTalk adapters; connect the MODEL from "
                         f"{APPLY}")
    return found


def unet_as_model(model):
    """An EmotiveTalk file's own UNet (e.g. the shipped default model's) as a ComfyUI SVD MODEL."""
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep

    unet = model.ethd.unet
    config = unet.config
    heads = set(zip(config.block_out_channels, config.num_attention_heads) if isinstance(config.num_attention_heads, (list, tuple))
                else [(config.block_out_channels[0], config.num_attention_heads)])
    head_channels = {width // count for width, count in heads}
    if len(head_channels) != 1:
        raise ValueError(f"EmotiveTalk UNet to MODEL: ComfyUI's SVD UNet needs one head width at every level, this UNet "
                         f"has {sorted(head_channels)}")
    state = core_module("svd.convert").unet_to_stability(unet.state_dict())
    unet_config = comfy.model_detection.detect_unet_config(state, "")
    model_config = comfy.supported_models.SVD_img2vid(unet_config)
    model_config.unet_config["num_head_channels"] = head_channels.pop()
    # The LATENT is the VAE's own space (ComfyUI's convention): this VAE's scaling, not SD's.
    model_config.latent_format = comfy.latent_formats.SD15(scale_factor=model.vae.config.scaling_factor)
    load_device = mm.get_torch_device()
    dtype = mm.unet_dtype(load_device, sum(p.numel() for p in unet.parameters()))
    model_config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, load_device))
    comfy_model = comfy.model_base.SVD_img2vid(model_config)
    comfy_model.embedder = Timestep(config.addition_time_embed_dim)  # SVD's is 256 wide, smaller UNets' narrower
    comfy_model.diffusion_model.load_state_dict(state)
    return comfy.model_patcher.ModelPatcher(comfy_model.eval(), load_device=load_device,
                                            offload_device=mm.unet_offload_device())


# --- the Guider -------------------------------------------------------------------------------

@functools.cache
def guider_class() -> type:
    """``comfy.samplers.CFGGuider`` whose noise prediction is the library's guidance over the
    library's windows; sampling, samplers, schedulers and LATENT noise masks stay ComfyUI's."""
    import comfy.conds
    import comfy.model_management
    import comfy.samplers

    sampling = core_module("sampling")

    class EmotiveTalkGuider(comfy.samplers.CFGGuider):
        def __init__(self, model_patcher, guidance, window: int, overlap: int):
            super().__init__(model_patcher)
            self.guidance, self.window, self.overlap = guidance, window, overlap

        def set_conds(self, positive, negative):
            self.inner_set_conds({"positive": positive, "negative": negative})

        def predict_noise(self, x, timestep, model_options={}, seed=None):
            streams = streams_of(self.conds["positive"])
            frames = streams.conditioning.num_frames
            if x.shape[0] != frames:
                raise ValueError(f"{GUIDER}: the LATENT has {x.shape[0]} frames, the streams {frames}; sample the "
                                 f"LATENT of the same {CONDITIONING} node")
            post_cfg = model_options.get("sampler_post_cfg_function", [])
            windows = _Windows(self, x.device, timestep, model_options, parts=bool(post_cfg))
            fused = sampling.WindowedDenoiser(windows, self.window, self.overlap,
                                              on_window=comfy.model_management.throw_exception_if_processing_interrupted)
            if not post_cfg:
                return fused(x[None], timestep)[0]
            # CFG++ samplers and post-CFG patches read the estimates core CFG makes from its two
            # passes: "uncond" is the least conditioned pass of the step (e0 unless the reference
            # strength is 1), "cond" the one with every condition, each fused over the windows.
            denoised, uncond, cond = fused(x[None].expand(3, *x.shape), timestep)
            for function in post_cfg:
                denoised = function({
                    "denoised": denoised, "cond": self.conds["positive"], "uncond": self.conds["negative"],
                    "cond_scale": windows.guidance.reference, "model": self.inner_model, "uncond_denoised": uncond,
                    "cond_denoised": cond, "sigma": timestep, "model_options": model_options, "input": x})
            return denoised

    class _Windows:
        """The window-able denoiser ``WindowedDenoiser`` expects, over ComfyUI's batched UNet calls."""

        def __init__(self, guider, device, timestep, model_options, parts: bool):
            self.guider, self.device = guider, device
            self.timestep, self.model_options = timestep, model_options
            self.guidance = guider.guidance.at(float(timestep.max()))  # the step's noise level (the sigma)
            self.parts = parts  # also the least and the most conditioned pass, after the guided estimate

        def window(self, start: int, stop: int):
            guider, guidance = self.guider, self.guidance
            names = [name for name, _ in guidance.active_passes()]
            conds = [self._pass(guider.conds["negative" if name == "none" else "positive"], name, start, stop)
                     for name in names]

            def denoise(x_window, sigma):
                outputs = comfy.samplers.calc_cond_batch(guider.inner_model, conds, x_window[0],
                                                         self.timestep[start:stop], self.model_options)
                guided = guidance.combine(outputs)
                return torch.stack([guided, outputs[0], outputs[-1]]) if self.parts else guided[None]

            return denoise

        @staticmethod
        def _pass(conds, name: str, start: int, stop: int) -> list[dict]:
            """The processed conds of one pass restricted to frames ``start:stop``: its streams and
            the frame count the UNet rearranges by (per-clip entries stay as they are)."""
            windowed = []
            for cond in conds:
                model_conds = dict(cond["model_conds"])
                model_conds["num_video_frames"] = comfy.conds.CONDConstant(stop - start)
                streams = model_conds[KEY].cond
                model_conds[KEY] = streams_cond_class()(PassStreams(streams.conditioning, name, (start, stop)))
                windowed.append({**cond, "model_conds": model_conds})
            return windowed

    return EmotiveTalkGuider


class EmotiveTalkNoise:
    """NOISE for SamplerCustomAdvanced with the pack's per-frame noise (``sampling.initial_noise``):
    frame k depends only on the seed and k, so frames match the pack's sampler."""

    def __init__(self, seed: int):
        self.seed = seed

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        samples = input_latent["samples"]
        return core_module("sampling").initial_noise(self.seed, samples.shape[0], tuple(samples.shape[1:]))[0]


# --- nodes ------------------------------------------------------------------------------------

class EmotiveTalkUNetToModel:
    DESCRIPTION = ("An EmotiveTalk model file's own SVD UNet (e.g. the shipped default model's) as a ComfyUI MODEL, for the "
                   "native nodes; real SVD comes from Image Only Checkpoint Loader instead.")
    CATEGORY = f"{CATEGORY}/native"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"emotivetalk_model": (MODEL, {"tooltip": "From EmotiveTalk Model Loader."})}}

    def convert(self, emotivetalk_model):
        return (unet_as_model(emotivetalk_model),)


class EmotiveTalkApply:
    DESCRIPTION = ("Adds EmotiveTalk's lip and expression adapters to an SVD MODEL, for EmotiveTalk Conditioning and "
                   "EmotiveTalk Guider with SamplerCustomAdvanced.")
    CATEGORY = f"{CATEGORY}/native"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "SVD from Image Only Checkpoint Loader (the SVD the adapters were trained on), "
                                               "or EmotiveTalk UNet to MODEL."}),
                "model_name": model_file_input("EmotiveTalk file whose ETHD adapters to add (models/emotivetalk)"),
            },
            "optional": {
                "emotivetalk_model": (MODEL, {"tooltip": "Optional: the EmotiveTalk model whose VAE decodes the result, so "
                                                         "EmotiveTalk Decode can check the LATENT's origin."}),
            },
        }

    def apply(self, model, model_name, emotivetalk_model=None):
        path = resolve_model(model_name)
        tag = None if emotivetalk_model is None else model_tag(emotivetalk_model)
        return (apply_adapters(model, path, tag),)


@dataclass(frozen=True)
class NativeSVD:
    """What ``pipeline.encode_reference`` reads from a model, made of ComfyUI's own SVD: the VAE and
    image encoder of Image Only Checkpoint Loader as library modules sharing their weights, the
    adapter file's settings and the UNet's depth (for the sizes it can make)."""

    vae: torch.nn.Module
    image_encoder: torch.nn.Module
    settings: dict
    unet_levels: int


def native_svd(model, vae, clip_vision) -> NativeSVD:
    """The Applied MODEL's SVD parts, sharing the weights of ComfyUI's VAE and CLIP_VISION where
    they are now (nothing is copied or moved)."""
    native = attachment(model, REFERENCE_NODE)
    parts = reused_svd_parts(native.base_config, vae, clip_vision)
    levels = len(model.get_model_object("diffusion_model").channel_mult)
    return NativeSVD(parts["vae"], parts["image_encoder"], native.settings, levels)


class EmotiveTalkNativeReference:
    DESCRIPTION = ("EDI Reference for the native path: reads the portrait with the VAE and CLIP_VISION of Image Only "
                   "Checkpoint Loader (so SVD is loaded once), for EmotiveTalk Conditioning and Di-CTE Expand.")
    CATEGORY = f"{CATEGORY}/native"
    RETURN_TYPES = (REFERENCE, "MASK")
    RETURN_NAMES = ("reference", "face_mask")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        portrait, mask = widgets.portrait_inputs()
        return {
            "required": {
                "model": ("MODEL", {"tooltip": f"From {APPLY} (its adapter file gives the size and SVD settings)."}),
                "vae": ("VAE", {"tooltip": "From Image Only Checkpoint Loader: the SVD the adapters were trained on."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "From Image Only Checkpoint Loader."}),
                "vaid": (VAID, {"tooltip": "From EmotiveTalk V-AID Loader (its encoders read the portrait)."}),
                **portrait,
            },
            "optional": mask,
        }

    def encode(self, model, vae, clip_vision, vaid, portrait, width, height, noise_aug, seed, mask=None):
        import comfy.model_management as mm

        portrait, noise_aug = checked_reference_inputs(native_svd(model, vae, clip_vision), portrait, width, height,
                                                       noise_aug, REFERENCE_NODE)
        # Loaded where ComfyUI runs them, then taken again: the shared tensors are the loaded ones.
        mm.load_models_gpu([vae.patcher, clip_vision.patcher], force_full_load=True)
        return encoded_reference(native_svd(model, vae, clip_vision), vaid, portrait, width, height, noise_aug, seed, mask)


class EmotiveTalkConditioning:
    DESCRIPTION = ("The portrait, lip stream and expression as positive/negative CONDITIONING and an empty LATENT of the "
                   "video's length, for EmotiveTalk Guider (like SVD_img2vid_Conditioning, with the per-frame streams).")
    CATEGORY = f"{CATEGORY}/native"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": f"From {APPLY} (its adapter file says how the model was trained)."}),
            "reference": (REFERENCE, {"tooltip": f"From {REFERENCE_NODE} (or EmotiveTalk EDI Reference): the portrait, at the video's width and height, and its face mask unless face_mask is given."}),
            "lip": (LIP, {"tooltip": "Lip stream from EmotiveTalk V-AID Decouple."}),
            "expression": (EXPRESSION, {"tooltip": "Expression sequence from EmotiveTalk Di-CTE Expand."}),
            "motion": ("INT", {"default": -1, "min": -1, "max": 255, "tooltip": "SVD motion bucket (more = more head motion); -1 = the model's training value."}),
            "lip_context": ("INT", {"default": -1, "min": -1, "max": 16, "tooltip": "Lip frames either side each frame sees; -1 = the model's value (the maximum)."}),
        }, "optional": {
            "fps": ("INT", {"default": 0, "min": 0, "max": settings_lib.LIMITS["fps"][1],
                            "tooltip": "The frame rate SVD is told (its fps conditioning, like core SVD_img2vid_Conditioning's); "
                                       "0 = the model's training value. The video's own rate is Audio Prepare's fps."}),
            "face_mask": ("MASK", {"tooltip": "Face mask (1 = face) in place of the reference's, fitted to its size like the "
                                              "portrait; the adapters act inside it. An all-zero mask counts as no mask."}),
        }}

    def encode(self, model, reference, lip, expression, motion, lip_context, fps=0, face_mask=None):
        # No width or height here: the REFERENCE was encoded at the video's size (core
        # SVD_img2vid_Conditioning has them because it encodes its image itself).
        native = attachment(model, CONDITIONING)
        if lip.shape[0] != expression.shape[0]:
            raise ValueError(f"{CONDITIONING}: the lip stream has {lip.shape[0]} frames, the expression {expression.shape[0]}; "
                             "make both from the same speech")
        if face_mask is not None:
            try:
                reference = pipeline.with_face_mask(reference, face_mask[:1].float().cpu())
            except ValueError as error:
                raise ValueError(f"{CONDITIONING}, input 'face_mask': {error}") from error
        # A model file records SVD's fps id: the fps minus 1.
        model_settings = native.settings if fps == 0 else {**native.settings, "fps_id": fps - 1}
        settings = settings_lib.GenerationSettings(motion=None if motion < 0 else motion,
                                                   lip_context=None if lip_context < 0 else lip_context)
        try:
            settings.validate()
            conditioning = pipeline.stream_conditioning(
                reference, lip.float().cpu(), expression.float().cpu(), model_settings, native.adapters.lip_context, settings)
        except ValueError as error:
            setting = getattr(error, "setting", "lip_context")
            raise ValueError(f"{CONDITIONING}, input '{setting}': {error}") from error
        fps_id, motion_bucket, augmentation = conditioning.added_time_ids[0].tolist()
        streams = streams_cond_class()

        def cond(name: str, with_reference: bool) -> list:
            embeds, latent = conditioning.image_embeds, conditioning.reference_latent
            if not with_reference:
                embeds, latent = torch.zeros_like(embeds), torch.zeros_like(latent)
            # ComfyUI's SVD subtracts 1 from "fps" (SVD was trained on fps - 1).
            return [[embeds, {"fps": fps_id + 1, "motion_bucket_id": motion_bucket, "augmentation_level": augmentation,
                              "concat_latent_image": latent, "model_conds": {KEY: streams(PassStreams(conditioning, name))}}]]

        samples = torch.zeros([conditioning.num_frames, 4, *conditioning.reference_latent.shape[-2:]])
        latent = {"samples": samples.to(bridge.intermediate_device())}
        if native.model_tag is not None:
            latent["emotivetalk_model"] = native.model_tag
        return cond("expression", True), cond("none", False), latent


class EmotiveTalkGuider:
    DESCRIPTION = ("EmotiveTalk's guidance (reference, lip and expression strengths) and its overlapping windows for any "
                   "length, as a GUIDER for SamplerCustomAdvanced with any core sampler and scheduler.")
    CATEGORY = f"{CATEGORY}/native"
    RETURN_TYPES = ("GUIDER",)
    RETURN_NAMES = ("guider",)
    FUNCTION = "get_guider"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": f"From {APPLY}."}),
            "positive": ("CONDITIONING", {"tooltip": f"From {CONDITIONING}."}),
            "negative": ("CONDITIONING", {"tooltip": f"From {CONDITIONING}."}),
            **widgets.guidance_strengths(),
            **widgets.windows(),
        }}

    def get_guider(self, model, positive, negative, reference_strength, lip_strength, expression_strength, window, overlap):
        native = attachment(model, GUIDER)
        for name, conds in (("positive", positive), ("negative", negative)):
            if streams_of(conds) is None:
                raise ValueError(f"{GUIDER}, input '{name}': this CONDITIONING carries no lip/expression streams; connect "
                                 f"{CONDITIONING}'s {name} output")
        settings = settings_lib.GenerationSettings(
            reference_strength=widgets.own_strength(reference_strength), lip_strength=widgets.own_strength(lip_strength),
            expression_strength=widgets.own_strength(expression_strength), window=window or None, overlap=overlap or None)
        widgets.validated(settings, GUIDER)
        window, overlap = settings.windowing(native)
        guider = guider_class()(model, settings.with_sampling(native.sampling).guidance(), window, overlap)
        guider.set_conds(positive, negative)
        return (guider,)


class EmotiveTalkNoiseNode:
    DESCRIPTION = ("NOISE for SamplerCustomAdvanced drawn frame by frame as the pack's own sampler draws it, so a seed gives "
                   "the same video here and in EmotiveTalk ETHD Sampler.")
    CATEGORY = f"{CATEGORY}/native"
    RETURN_TYPES = ("NOISE",)
    RETURN_NAMES = ("noise",)
    FUNCTION = "get_noise"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"noise_seed": widgets.seed()}}

    def get_noise(self, noise_seed):
        return (EmotiveTalkNoise(noise_seed),)


class EmotiveTalkSigmas:
    DESCRIPTION = ("The noise levels of the pack's own sampler (Karras, sigma 0.002..700, as SVD's scheduler) as SIGMAS for "
                   "SamplerCustomAdvanced; core Karras differs only by float rounding.")
    CATEGORY = f"{CATEGORY}/native"
    RETURN_TYPES = ("SIGMAS",)
    RETURN_NAMES = ("sigmas",)
    FUNCTION = "get_sigmas"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": widgets.sampler_steps(
            "Denoising steps (the 'fast' model was distilled for 6: use 6 with it).")}}

    def get_sigmas(self, steps):
        return (core_module("sampling").karras_sigmas(steps),)


NODE_CLASS_MAPPINGS = {
    "EmotiveTalkUNetToModel": EmotiveTalkUNetToModel,
    "EmotiveTalkApply": EmotiveTalkApply,
    "EmotiveTalkNativeReference": EmotiveTalkNativeReference,
    "EmotiveTalkConditioning": EmotiveTalkConditioning,
    "EmotiveTalkGuider": EmotiveTalkGuider,
    "EmotiveTalkNoise": EmotiveTalkNoiseNode,
    "EmotiveTalkSigmas": EmotiveTalkSigmas,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EmotiveTalkUNetToModel": "EmotiveTalk UNet to MODEL",
    "EmotiveTalkApply": APPLY,
    "EmotiveTalkNativeReference": REFERENCE_NODE,
    "EmotiveTalkConditioning": CONDITIONING,
    "EmotiveTalkGuider": GUIDER,
    "EmotiveTalkNoise": "EmotiveTalk Noise",
    "EmotiveTalkSigmas": "EmotiveTalk Sigmas",
}
