"""The real-ComfyUI proof (scripts/comfyui_check.py): it says plainly when there is no ComfyUI, and,
when COMFY_HOME points at one (ComfyUI/ with this pack in custom_nodes, venv/), runs the basic
workflow there. CI has no ComfyUI, so the second test skips; the full proof is the script itself.
The inputs it makes for two_speakers are checked against that workflow without a ComfyUI, and so
are the stand-ins it runs native_ksampler_style on."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "comfyui_check.py"


def test_without_a_comfyui_the_check_says_so_and_checks_nothing():
    env = {k: v for k, v in os.environ.items() if k != "COMFY_HOME"}
    result = subprocess.run([sys.executable, str(SCRIPT)], check=False, capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 2
    assert "No ComfyUI to check against" in result.stderr and "Nothing was checked" in result.stderr


@pytest.mark.skipif(not os.environ.get("COMFY_HOME"), reason="no ComfyUI here (set COMFY_HOME to run the real-ComfyUI check)")
def test_basic_workflow_in_a_real_comfyui(tmp_path):
    home = Path(os.environ["COMFY_HOME"])
    result = subprocess.run([str(home / "venv" / "bin" / "python"), str(SCRIPT), "--comfy-home", str(home), "--only", "basic",
                             "--no-interrupt", "--port", "8197", "--out", str(tmp_path)],
                            check=False, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS  api/basic" in result.stdout


def _check_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("comfyui_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_two_speakers_inputs_fit_its_face_boxes_and_speech_order(tmp_path):
    """The check's two_faces.png has a face where each of two_speakers' Face Crop boxes says (the crop
    centres that face, the two crops do not touch), and Speech 1 is the longer (Audio Merge keeps its
    length), so the video's expected length is Speech 1's."""
    import json

    import numpy as np
    import torch
    from PIL import Image

    from emotivetalk_core.media import face_crop, face_detect
    from emotivetalk_core.media.audio import load_audio
    from nodes import face_nodes

    check = _check_script()
    inputs = check.make_inputs(tmp_path, 2.5, 8.0)
    workflow = json.loads((ROOT / "workflows" / "api" / "two_speakers.json").read_text())
    image = torch.from_numpy(np.array(Image.open(inputs[workflow["1"]["inputs"]["image"]]).convert("RGB"))).float()[None] / 255
    regions = []
    for node in workflow.values():
        if node["class_type"] != "EmotiveTalkFaceCrop":
            continue
        settings = {k: v for k, v in node["inputs"].items() if not isinstance(v, list)}
        portrait, _, crop = face_nodes.EmotiveTalkFaceCrop().crop(image, **settings)
        found = face_detect.detect_face(portrait[0].numpy())
        assert found is not None, node
        size = settings["size"]
        assert abs(found.centre[0] / size - 0.5) < 0.05 and abs(found.centre[1] / size - (0.5 + face_crop.DEFAULT_LIFT / 2.2)) < 0.05
        regions.append(crop.region)
    assert len(regions) == 2 and min(r.x1 for r in regions) < max(r.x0 for r in regions)  # side by side, not touching
    lengths = {node_id: len(load_audio(inputs[node["inputs"]["audio"]])) for node_id, node in workflow.items()
               if node["class_type"] == "LoadAudio"}
    assert len(lengths) == 2 and len(set(lengths.values())) == 2 and min(lengths.values()) > 0
    merge = next(node for node in workflow.values() if node["class_type"] == "AudioMerge")["inputs"]
    first = workflow[merge["audio1"][0]]["inputs"]["audio"][0]  # the Load Audio behind audio1's Generate
    assert lengths[first] == max(lengths.values())
    assert check.audio_of(workflow, inputs) == inputs[workflow[first]["inputs"]["audio"]]


def test_native_ksampler_style_is_the_core_svd_chain_and_the_check_runs_it_on_its_stand_ins():
    """The shipped native_ksampler_style loads SVD with core Image Only Checkpoint Loader, whose MODEL, CLIP_VISION
    and VAE feed Apply, Native Reference and core VAE Decode, and samples with core Euler and Karras
    sigmas; the check swaps exactly its two file names for the stand-ins it writes, and its
    comparison adds the pack's Model Loader on those same two files."""
    import json

    check = _check_script()
    shipped = json.loads((ROOT / "workflows" / "api" / "native_ksampler_style.json").read_text())
    node = {value["class_type"]: value["inputs"] for value in shipped.values()}
    loader = next(node_id for node_id, value in shipped.items() if value["class_type"] == "ImageOnlyCheckpointLoader")
    assert node["EmotiveTalkApply"]["model"] == [loader, 0]
    assert (node["EmotiveTalkNativeReference"]["clip_vision"], node["EmotiveTalkNativeReference"]["vae"]) == ([loader, 1], [loader, 2])
    assert node["VAEDecode"]["vae"] == [loader, 2] and node["KSamplerSelect"]["sampler_name"] == "euler"
    assert shipped[node["SamplerCustomAdvanced"]["sigmas"][0]]["class_type"] == "KarrasScheduler"
    assert check.uses_stand_ins(shipped)
    run = check.with_stand_ins(shipped)
    changed = {run[k]["inputs"][name] for k in shipped for name in shipped[k]["inputs"]
               if shipped[k]["inputs"][name] != run[k]["inputs"][name]}
    assert changed == {check.SVD_CHECKPOINT, check.SVD_ADAPTERS} and not check.uses_stand_ins(run)
    comparison = check.svd_checkpoint_workflow()
    loaders = [value["inputs"] for value in comparison.values() if value["class_type"] == "EmotiveTalkModelLoader"]
    assert loaders == [{"model_name": check.SVD_ADAPTERS, "base_svd": check.SVD_CHECKPOINT}]
