"""The ComfyUI nodes, called directly (no ComfyUI here): schemas, the staged chain, the streaming
saver, the all-in-one node, Cancel, model-file errors and start-up imports."""

import inspect
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nodes
from nodes import comfy_bridge, emotion_nodes, generate, loaders, output_nodes, stages
from emotivetalk_core import bundles as bundles_module
from emotivetalk_core import pipeline, settings
from emotivetalk_core.media.video_reader import probe

ROOT = Path(__file__).resolve().parents[1]
FPS = 25.0
SIZE = 64
STEPS = 2


def _speech(seconds=0.5, rate=22050, channels=2):
    t = np.arange(round(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    return {"waveform": torch.from_numpy(np.stack([wave] * channels))[None], "sample_rate": rate}


@pytest.fixture(scope="module")
def portrait():
    from skimage import data

    return (torch.from_numpy(data.astronaut()[0:256, 96:352].copy()).float() / 255)[None]  # IMAGE [1, H, W, 3]


@pytest.fixture(scope="module")
def bundles():
    (model,) = loaders.EmotiveTalkModelLoader().load("default", "none")
    (vaid,) = loaders.EmotiveTalkVAIDLoader().load("default", "none")
    return model, vaid


@pytest.fixture(scope="module")
def staged(bundles, portrait):
    """The staged chain up to Di-CTE, shared by the sampler tests."""
    model, vaid = bundles
    assert isinstance(model, bundles_module.EmotiveTalkModel) and isinstance(vaid, bundles_module.VAIDModel)
    speech, padded, frame_count, fps = _returns(stages.EmotiveTalkAudioPrepare, stages.EmotiveTalkAudioPrepare().prepare(_speech(), FPS, 0))
    assert isinstance(speech, pipeline.PreparedAudio)
    lip, audio_exp = _returns(stages.EmotiveTalkVAIDDecouple, stages.EmotiveTalkVAIDDecouple().decouple(vaid, speech))
    reference, mask = _returns(stages.EmotiveTalkEDIReference,
                               stages.EmotiveTalkEDIReference().encode(model, vaid, portrait, SIZE, SIZE, -1.0, 0))
    assert isinstance(reference, pipeline.Reference)
    (emotion,) = _returns(emotion_nodes.EmotiveTalkEmotionLabel, emotion_nodes.EmotiveTalkEmotionLabel().make("happy", 1.0))
    (expression,) = _returns(stages.EmotiveTalkDiCTEExpand,
                             stages.EmotiveTalkDiCTEExpand().expand(vaid, audio_exp, reference, emotion, 0, STEPS))
    return dict(speech=speech, padded=padded, frame_count=frame_count, fps=fps, lip=lip, audio_exp=audio_exp,
                reference=reference, mask=mask, expression=expression)


_PYTHON_TYPES = {"IMAGE": torch.Tensor, "MASK": torch.Tensor, "LATENT": dict, "AUDIO": dict, "INT": int, "FLOAT": float,
                 "EMOTIVETALK_LIP": torch.Tensor, "EMOTIVETALK_EXPRESSION": torch.Tensor}


def _returns(cls, result):
    """``result`` matches the node's RETURN_TYPES (count and, for typed ones, Python type)."""
    outputs = result["result"] if isinstance(result, dict) else result
    assert isinstance(outputs, tuple) and len(outputs) == len(cls.RETURN_TYPES)
    for kind, value in zip(cls.RETURN_TYPES, outputs):
        assert isinstance(value, _PYTHON_TYPES.get(kind, object)), (cls.__name__, kind, type(value))
    return result


def _sample(model, staged, seed=0):
    return stages.EmotiveTalkETHDSampler().sample(model, staged["reference"], staged["lip"], staged["expression"],
                                                   STEPS, "euler", seed, 2.0, 1.0, 1.0, -1, 0, 0, -1)[0]


# --- schemas ---------------------------------------------------------------------------------

def _inputs(cls):
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and "required" in spec
    return {**spec["required"], **spec.get("optional", {})}, spec


@pytest.mark.parametrize("node_id", sorted(nodes.NODE_CLASS_MAPPINGS))
def test_node_schema_is_well_formed(node_id):
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    assert node_id.startswith("EmotiveTalk") and cls.CATEGORY.split("/")[0] == "EmotiveTalk"
    assert node_id in nodes.NODE_DISPLAY_NAME_MAPPINGS
    inputs, spec = _inputs(cls)
    for name, entry in inputs.items():
        kind, options = entry[0], (entry[1] if len(entry) > 1 else {})
        assert isinstance(kind, (str, list)), name
        assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
        if kind in ("INT", "FLOAT"):
            assert options["min"] <= options["default"] <= options["max"], name
        if isinstance(kind, list):
            assert options["default"] in kind, name
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
    # FUNCTION exists and accepts every input by name (ComfyUI calls it with keywords).
    parameters = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for name in list(inputs) + list(spec.get("hidden", {})):
        assert name in parameters or takes_any, f"{node_id}.{cls.FUNCTION} does not take {name}"
    for name in spec.get("optional", {}):
        assert takes_any or parameters[name].default is not inspect.Parameter.empty, f"optional {name} needs a default"


def test_widgets_offer_the_library_defaults_and_nothing_it_would_refuse():
    """One owner for each setting: a widget's default is the library's (its "model's own" value
    where the library leaves a setting None: 0 steps, strength -1), its range inside the library's."""
    from nodes import _widgets as widgets

    defaults = settings.GenerationSettings()
    strengths = ("reference_strength", "lip_strength", "expression_strength")
    library = {"seed": "seed", "fps": "fps", **{name: name for name in strengths}}
    to_library = {"steps": widgets.own_steps, **{name: widgets.own_strength for name in strengths}}
    checked = 0
    for node_id in ("EmotiveTalkAudioPrepare", "EmotiveTalkEDIReference", "EmotiveTalkDiCTEExpand",
                    "EmotiveTalkETHDSampler", "EmotiveTalkSaveVideo", "EmotiveTalkGenerate", "EmotiveTalkGuider",
                    "EmotiveTalkSigmas"):
        inputs, _ = _inputs(nodes.NODE_CLASS_MAPPINGS[node_id])
        steps = "dicte_steps" if node_id == "EmotiveTalkDiCTEExpand" else "steps"
        for widget, setting in {**library, "steps": steps}.items():
            if widget not in inputs:
                continue
            options, (low, high) = inputs[widget][1], settings.LIMITS[setting]
            if node_id == "EmotiveTalkSigmas":  # SIGMAS have no model to ask for its own steps
                assert options["default"] == settings.GUIDED_SAMPLING["steps"] and low <= options["min"]
            else:
                convert = to_library.get(setting, lambda value: value)
                assert convert(options["default"]) == getattr(defaults, setting), (node_id, widget)
                assert convert(options["min"]) is None or low <= options["min"], (node_id, widget)
            assert options["max"] <= high, (node_id, widget)
            checked += 1
    assert checked >= 16


def test_model_own_widget_values_mean_the_model_own_and_zero_strength_stays_off():
    from nodes import _widgets as widgets

    assert widgets.own_steps(0) is None and widgets.own_steps(6) == 6
    assert widgets.own_strength(-1.0) is None and widgets.own_strength(0.0) == 0.0 and widgets.own_strength(4.0) == 4.0


def test_native_noise_and_sigmas_are_the_pack_samplers_own():
    """EmotiveTalk Noise / Sigmas (no ComfyUI needed) give exactly what the pack's sampler starts from."""
    from emotivetalk_core.sampling import initial_noise, karras_sigmas
    from nodes import comfy_native

    (noise,) = comfy_native.EmotiveTalkNoiseNode().get_noise(7)
    latent = {"samples": torch.zeros(5, 4, 6, 6)}
    assert noise.seed == 7
    assert torch.equal(noise.generate_noise(latent), initial_noise(7, 5, (4, 6, 6))[0])
    (sigmas,) = comfy_native.EmotiveTalkSigmas().get_sigmas(9)
    assert torch.equal(sigmas, karras_sigmas(9))


def test_module_table_matches_the_modules():
    for module_name, node_ids in nodes.NODE_MODULES.items():
        module = sys.modules[f"nodes.{module_name}"]
        assert tuple(module.NODE_CLASS_MAPPINGS) == node_ids
        assert set(module.NODE_DISPLAY_NAME_MAPPINGS) == set(node_ids)


def test_size_and_emotion_widgets_reject_nonsense():
    inputs, _ = _inputs(stages.EmotiveTalkEDIReference)
    # 0 is the model's native size; anything else a multiple of 64 up to 2048.
    assert inputs["width"][1]["step"] == 64 and inputs["width"][1]["min"] == 0 and inputs["width"][1]["max"] == 2048
    label_inputs, _ = _inputs(emotion_nodes.EmotiveTalkEmotionLabel)
    assert label_inputs["intensity"][1]["min"] == 0.0
    with pytest.raises(ValueError, match="timeline is empty"):
        emotion_nodes.EmotiveTalkEmotionTimeline().make("", False)


# --- the staged chain ------------------------------------------------------------------------

def test_audio_prepare_pads_to_the_frame_count(staged):
    n, fps, padded = staged["frame_count"], staged["fps"], staged["padded"]
    assert n == math.ceil(0.5 * FPS) == staged["speech"].num_frames and fps == FPS
    assert padded["sample_rate"] == 16000 and padded["waveform"].shape[:2] == (1, 1)
    assert abs(padded["waveform"].shape[-1] / 16000 - n / fps) < 1 / 16000


def test_staged_chain_types_and_frame_count(bundles, staged, tmp_path, monkeypatch):
    model, _ = bundles
    n = staged["frame_count"]
    assert staged["lip"].shape[0] == n and staged["audio_exp"].features.shape[0] == n
    assert staged["expression"].shape[0] == n
    assert staged["mask"].shape == (1, SIZE, SIZE)
    latent = _sample(model, staged)
    _returns(stages.EmotiveTalkETHDSampler, (latent,))
    side = SIZE // 2 ** (len(model.vae.config.block_out_channels) - 1)  # the VAE's downsampling
    assert latent["samples"].shape == (n, 4, side, side) and latent["emotivetalk_model"]
    (frames,) = _returns(output_nodes.EmotiveTalkDecode, output_nodes.EmotiveTalkDecode().decode(model, latent, 0))
    assert frames.shape == (n, SIZE, SIZE, 3) and frames.dtype == torch.float32
    assert 0 <= frames.min() and frames.max() <= 1

    monkeypatch.chdir(tmp_path)  # without ComfyUI the output folder is ./output
    result = output_nodes.EmotiveTalkSaveVideo().save(model, latent, staged["padded"], FPS, "EmotiveTalk/test", 0)
    _returns(output_nodes.EmotiveTalkSaveVideo, result)
    preview = result["ui"]["images"][0]
    assert result["ui"]["animated"] == (True,) and preview["type"] == "output" and preview["subfolder"] == "EmotiveTalk"
    path = tmp_path / "output" / "EmotiveTalk" / preview["filename"]
    assert result["result"] == (path,)
    info = probe(path)
    assert info["frames"] == n and (info["width"], info["height"]) == (SIZE, SIZE)
    assert abs(info["duration"] - info["audio_duration"]) <= 1 / FPS
    again = output_nodes.EmotiveTalkSaveVideo().save(model, latent, staged["padded"], FPS, "EmotiveTalk/test", 0)
    assert again["ui"]["images"][0]["filename"] != preview["filename"]  # never overwrites


def test_latents_are_in_comfyuis_space_so_core_vae_decode_reads_them(bundles, staged):
    """ComfyUI's LATENTs hold the VAE's own latents: core VAE Decode passes them to the decoder as
    they are. Ours must decode that way to the frames our Decode gives, and a core LATENT (VAE
    Encode's, no EmotiveTalk tag) must go into our Decode."""
    model, _ = bundles
    latent = _sample(model, staged)
    samples = latent["samples"]
    # One chunk of every frame, as core decodes a short clip (longer ones both cut into chunks).
    (ours,) = output_nodes.EmotiveTalkDecode().decode(model, latent, samples.shape[0])
    with torch.no_grad():  # what core VAE Decode does with an SVD VAE: the latents straight into the decoder
        core = model.vae.decode(samples.float(), num_frames=samples.shape[0]).sample
    core = ((core.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    assert (ours - core).abs().max() < 1e-4
    with torch.no_grad():  # core VAE Encode: the posterior's mode, unscaled
        encoded = model.vae.encode(ours.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    (again,) = output_nodes.EmotiveTalkDecode().decode(model, {"samples": encoded}, encoded.shape[0])
    with torch.no_grad():
        direct = model.vae.decode(encoded, num_frames=encoded.shape[0]).sample
    assert (again - ((direct.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)).abs().max() < 1e-4


def test_interrupt_stops_the_sampler_and_the_next_run_succeeds(bundles, staged, monkeypatch):
    model, _ = bundles

    class Cancelled(Exception):
        pass

    calls = []

    def cancel_on_first_call():
        calls.append(1)
        if len(calls) == 2:  # 1 = the check before sampling, 2 = after the first UNet call
            raise Cancelled

    monkeypatch.setattr(comfy_bridge, "check_interrupt", cancel_on_first_call)
    with pytest.raises(Cancelled):
        _sample(model, staged)
    assert len(calls) == 2
    monkeypatch.undo()
    first = _sample(model, staged)["samples"]
    assert torch.equal(first, _sample(model, staged)["samples"])  # usable and deterministic after a cancel


def test_sampler_widgets_at_their_defaults_sample_the_fast_model_as_it_was_distilled(bundles, staged, portrait, monkeypatch):
    """Steps 0 and strengths -1 (the widgets' defaults) are the model's own: for 'fast' 6 steps of one UNet pass."""
    _, vaid = bundles
    inputs, _ = _inputs(stages.EmotiveTalkETHDSampler)
    at_default = {name: entry[1]["default"] for name, entry in inputs.items() if "default" in entry[1]}
    assert (at_default["steps"], at_default["lip_strength"]) == (0, -1.0)
    calls = []
    monkeypatch.setattr(comfy_bridge, "check_interrupt", lambda: calls.append(1))  # once, then after each UNet call
    (fast,) = loaders.EmotiveTalkModelLoader().load("fast", "none")
    reference, _ = stages.EmotiveTalkEDIReference().encode(fast, vaid, portrait, SIZE, SIZE, -1.0, 0)
    stages.EmotiveTalkETHDSampler().sample(fast, reference, staged["lip"], staged["expression"], **at_default)
    plan = settings.GenerationSettings().sampling_plan(fast, staged["expression"].shape[0])
    assert (plan.calls_per_window, plan.passes) == (6, 1) and len(calls) == 1 + plan.windows * 6


def test_tensor_emotion_sources_and_timeline(bundles, staged, portrait):
    model, vaid = bundles
    (image_emotion,) = emotion_nodes.EmotiveTalkEmotionImage().make(portrait, 1.0)
    (video_emotion,) = emotion_nodes.EmotiveTalkEmotionVideo().make(portrait.expand(3, -1, -1, -1), 12.0, 0.8)
    (text_emotion,) = emotion_nodes.EmotiveTalkEmotionText().make("angry and loud", 1.2)
    (timeline,) = emotion_nodes.EmotiveTalkEmotionTimeline().make(
        "0:neutral", True, emotion_1=image_emotion, start_1=0.1, blend_1=0.0, emotion_2=video_emotion, start_2=0.2,
        emotion_3=text_emotion, start_3=0.3, blend_3=0.1)
    times = [k.time for k in timeline.timeline.keyframes]
    assert times == pytest.approx([0.0, 0.1, 0.2, 0.3]) and timeline.timeline.neutralise_portrait
    assert len(timeline.images) == 1 and len(timeline.videos) == 1
    (expression,) = stages.EmotiveTalkDiCTEExpand().expand(vaid, staged["audio_exp"], staged["reference"], timeline, 0, STEPS)
    assert expression.shape == staged["expression"].shape and torch.isfinite(expression).all()
    assert not torch.equal(expression, staged["expression"])


def test_all_in_one_node(portrait):
    frames, audio, fps = _returns(generate.EmotiveTalkGenerate, generate.EmotiveTalkGenerate().generate(
        portrait, _speech(0.5), "surprised", 1.0, 3, 1, SIZE, SIZE, FPS, "default"))
    n = math.ceil(0.5 * FPS)
    assert frames.shape == (n, SIZE, SIZE, 3) and 0 <= frames.min() and frames.max() <= 1
    assert fps == FPS and audio["sample_rate"] == 16000
    assert abs(audio["waveform"].shape[-1] / 16000 - n / fps) < 1 / 16000


def test_all_in_one_reuses_its_models_and_sizes_0_to_the_model(portrait, monkeypatch):
    node = generate.EmotiveTalkGenerate()
    loads = []
    real_load = bundles_module.load_emotivetalk_model
    monkeypatch.setattr(bundles_module, "load_emotivetalk_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    for seed in (1, 2):
        frames, _, _ = node.generate(portrait, _speech(0.2), "happy", 1.0, seed, 1, 0, 0, FPS, "default")
    assert len(loads) == 1  # the second run (new seed) reused the loaded model
    # The shipped default model records its native size (32 x 32): width = height = 0 asks for it.
    assert frames.shape[1:] == (32, 32, 3)


# --- files and imports -----------------------------------------------------------------------

def test_missing_model_file_names_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "models" / "emotivetalk"
    folder.mkdir(parents=True)
    assert comfy_bridge.list_files("emotivetalk", "default", "fast") == ["default", "fast"]
    with pytest.raises(FileNotFoundError) as error:
        loaders.EmotiveTalkModelLoader().load("missing.safetensors")
    message = str(error.value)
    assert "missing.safetensors" in message and str(folder) in message and "models/emotivetalk" in message
    with pytest.raises(FileNotFoundError, match="svd_xt.safetensors.*models/checkpoints"):
        loaders.EmotiveTalkModelLoader().load("default", "svd_xt.safetensors")


def test_importing_nodes_keeps_heavy_packages_lazy():
    code = ("import sys, nodes; heavy = [m for m in ('diffusers', 'transformers', 'av') if m in sys.modules]; "
            "assert not heavy, heavy; assert len(nodes.NODE_CLASS_MAPPINGS) == 24")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_pack_loads_as_comfyui_loads_it():
    # ComfyUI imports the folder as a package named after it; the library must come relatively.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('ComfyUI-EmotiveTalk', {str(ROOT / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(ROOT)!r}])\n"
        "pack = importlib.util.module_from_spec(spec); sys.modules[spec.name] = pack; spec.loader.exec_module(pack)\n"
        "assert len(pack.NODE_CLASS_MAPPINGS) == 24\n"
        "assert 'emotivetalk_core' not in sys.modules and 'ComfyUI-EmotiveTalk.emotivetalk_core' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd="/", check=True)


def test_a_node_module_with_a_missing_package_is_skipped_with_a_warning(caplog, monkeypatch):
    real = nodes.importlib.import_module

    def failing(name, package=None):
        if name == ".output_nodes":
            raise ModuleNotFoundError("No module named 'av'", name="av")
        return real(name, package)

    monkeypatch.setattr(nodes.importlib, "import_module", failing)
    classes, _ = nodes._collect()
    assert "EmotiveTalkSaveVideo" not in classes and "EmotiveTalkGenerate" in classes
    assert "output_nodes" in caplog.text and "'av'" in caplog.text and "EmotiveTalkSaveVideo" in caplog.text
