"""Model files: the shipped default model, self-contained and component files, speech-encoder checks."""

import json

import pytest
import torch

from emotivetalk_core.bundles import (
    DEFAULT_MODEL_PATH,
    ETHD_COMPONENTS,
    SHIPPED_MODELS,
    VAID_COMPONENTS,
    build_vaid_model,
    describe,
    load_emotivetalk_model,
    load_vaid_model,
    save_full_model,
    build_emotivetalk_model,
    file_digest,
)
from emotivetalk_core.checkpoints import CheckpointError, load_model_file, read_metadata, save_model_file
from emotivetalk_core.configs import get_config


@pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))
def test_shipped_models_are_the_synthtalk_run_with_their_held_out_figures(name):
    from emotivetalk_core.settings import model_sampling
    from emotivetalk_core.synth.evaluate import GOALS

    path = SHIPPED_MODELS[name]
    assert path.stat().st_size <= 20e6
    configs, info = read_metadata(path)
    assert set(configs) == set(ETHD_COMPONENTS) | set(VAID_COMPONENTS)
    assert info["trained"] is True and info["config"] == "synthtalk" and "UNTRAINED" not in describe(info)
    run = info["synthtalk"]
    assert run["command"].startswith("python -m emotivetalk_core synth train") and isinstance(run["seed"], int)
    held_out = info["held_out"]
    assert held_out["settings"]["seed"] != run["world_seed"] and held_out["settings"]["clips"] >= 64
    assert held_out["settings"]["checkpoint_sha256"]  # the report of these weights (make_default_model checks)
    # The figures a user reads were made with the sampling a user gets: change it, re-evaluate.
    own = model_sampling(info)
    assert held_out["settings"].get("guidance") == {key: own[f"{key}_strength"] for key in ("reference", "lip", "expression")}
    if name == "fast":  # the default model's student, evaluated at the steps it samples with
        assert info["distilled"]["teacher"]["sha256"] == file_digest(DEFAULT_MODEL_PATH)["sha256"]
        assert held_out["settings"]["steps"] == own["steps"] == info["distilled"]["steps"] <= 25 // 4
    for goal in GOALS:  # every goal measured, beside its ceiling and floor
        assert {"value", "ceiling", "floor", "goal", "met"} <= set(held_out[goal]), goal
        assert held_out[goal]["met"] is not None, goal
    model = load_emotivetalk_model(name)
    vaid = load_vaid_model(name)
    # The synthtalk config's ETHD settings, and what the training data decided (train/ethd_stage.data_settings):
    # the clip motion that motion bucket 127 stands for.
    settings = dict(model.settings)
    assert settings.pop("motion_reference") > 0
    assert settings == get_config("synthtalk")["ethd"]
    assert model.info["trained"] is True and vaid.info["trained"] is True
    assert next(model.ethd.parameters()).dtype == torch.float32  # stored in float16, computed as asked


def _script(name: str):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_default_model_ships_the_evaluated_weights_with_their_whole_report(tmp_path):
    from emotivetalk_core.synth.evaluate import GOALS

    torch.manual_seed(0)
    config = get_config("tiny")
    model, vaid = build_emotivetalk_model(config), build_vaid_model(config)
    run = {"command": "python -m emotivetalk_core synth train --out RUN", "seed": 0, "world_seed": 0}
    source = save_full_model(tmp_path / "run.safetensors", model, vaid, config, {"trained": True, "note": "run", "synthtalk": run})
    script = _script("make_default_model")
    halved = script.half(source, tmp_path / "half.safetensors")
    originals, _, _ = load_model_file(source)
    states, _, half_info = load_model_file(halved)
    for component, state in originals.items():
        for key, tensor in state.items():
            if tensor.is_floating_point():
                assert torch.equal(states[component][key], tensor.half()), f"{component}.{key}"
    assert half_info["synthtalk"] == run and halved.stat().st_size < 0.6 * source.stat().st_size

    report = {name: {"value": 1.0, "ceiling": 1.0, "floor": 0.0, "goal": "x", "met": True} for name in GOALS}
    report.update(settings={"seed": 1, "clips": 64, "checkpoint": str(halved), "checkpoint_sha256": file_digest(halved)["sha256"]},
                  all_goals_met=True)
    out = script.ship(halved, report, tmp_path / "default.safetensors")
    _, info = read_metadata(out)
    assert info["trained"] is True and info["synthtalk"] == run and info["held_out"] == report
    assert info["script"] == "scripts/make_default_model.py" and "SynthTalk" in info["note"]
    shipped, _, _ = load_model_file(out)
    assert all(torch.equal(shipped[c][k], t) for c, state in states.items() for k, t in state.items())

    refusals = {
        "not .* evaluate the file you ship": {**report, "settings": {**report["settings"], "checkpoint_sha256": "0" * 64}},
        "world 0, the one .* was trained in": {**report, "settings": {**report["settings"], "seed": 0}},
        "partial \\(20 clips": {**report, "settings": {**report["settings"], "clips": 20}},
        "unmeasured: \\['grain'\\]": {**report, "grain": {**report["grain"], "value": None, "met": None}},
    }
    for message, bad in refusals.items():
        with pytest.raises(SystemExit, match=message):
            script.ship(halved, bad, tmp_path / "again.safetensors")
    with pytest.raises(SystemExit, match="is the model read"):
        script.half(source, source)
    untrained = save_full_model(tmp_path / "untrained.safetensors", model, vaid, config, {"trained": False, "note": "x"})
    assert "UNTRAINED" in describe(read_metadata(untrained)[1])
    with pytest.raises(SystemExit, match="not a SynthTalk-trained model"):
        script.half(untrained, tmp_path / "again.safetensors")
    assert not (tmp_path / "again.safetensors").exists()


def test_make_default_model_ships_a_student_of_the_shipped_default_model_only(tmp_path):
    from emotivetalk_core.synth.evaluate import GOALS

    torch.manual_seed(0)
    config = get_config("tiny")
    model, vaid = build_emotivetalk_model(config), build_vaid_model(config)
    distilled = {"teacher": file_digest(DEFAULT_MODEL_PATH), "steps": 6, "teacher_steps": 12, "sampler": "euler",
                 "guidance": [1.0, 1.0, 1.0], "teacher_guidance": [2.0, 4.0, 2.0]}
    run = {"command": "python -m emotivetalk_core synth train --out RUN", "seed": 0, "world_seed": 0}
    training = {"stage": "distill", "distill": {"student_steps": 6, "teacher_steps": 12}}
    info = {"trained": True, "note": "distill stage", "synthtalk": run, "distilled": distilled, "config": training}
    student = save_full_model(tmp_path / "student.safetensors", model, vaid, config, info)
    report = {name: {"value": 1.0, "ceiling": 1.0, "floor": 0.0, "goal": "x", "met": True} for name in GOALS}
    report.update(settings={"seed": 1, "clips": 64, "checkpoint": str(student), "checkpoint_sha256": file_digest(student)["sha256"]})
    script = _script("make_default_model")
    _, shipped = read_metadata(script.ship(student, report, tmp_path / "fast.safetensors"))
    assert shipped["distilled"] == distilled and shipped["distill_config"] == training and shipped["config"] == "synthtalk"
    assert "distilled" in shipped["note"] and "6 euler steps" in shipped["note"] and shipped["held_out"] == report

    other = {**info, "distilled": {**distilled, "teacher": {"name": "mine.safetensors", "sha256": "1" * 64, "bytes": 1}}}
    student = save_full_model(tmp_path / "other.safetensors", model, vaid, config, other)
    report["settings"]["checkpoint_sha256"] = file_digest(student)["sha256"]
    with pytest.raises(SystemExit, match="distilled from mine.safetensors .* not the shipped default model"):
        script.ship(student, report, tmp_path / "again.safetensors")
    assert not (tmp_path / "again.safetensors").exists()


def test_full_model_round_trip_gives_identical_modules(tmp_path):
    torch.manual_seed(3)
    config = get_config("tiny")
    model, vaid = build_emotivetalk_model(config), build_vaid_model(config)
    path = save_full_model(tmp_path / "full.safetensors", model, vaid, config, {"trained": True, "note": "test"})
    loaded, loaded_vaid = load_emotivetalk_model(path), load_vaid_model(path)
    for original, copy in [(model.ethd, loaded.ethd), (model.vae, loaded.vae), (vaid.dicte, loaded_vaid.dicte),
                           (vaid.mapping, loaded_vaid.mapping), (vaid.face_processor, loaded_vaid.face_processor)]:
        for (name, a), (_, b) in zip(original.state_dict().items(), copy.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
    assert loaded.settings == config["ethd"]
    assert describe(loaded.info) == "test"


def test_component_file_holds_one_component_and_names_what_is_missing(tmp_path):
    torch.manual_seed(0)
    vaid = build_vaid_model(get_config("tiny"))
    path = save_model_file(tmp_path / "dicte.safetensors", {"dicte": (vaid.dicte.state_dict(), get_config("tiny")["dicte"])})
    states, configs, _ = load_model_file(path, ["dicte"])
    assert configs["dicte"] == get_config("tiny")["dicte"]
    assert set(states["dicte"]) == set(vaid.dicte.state_dict())
    with pytest.raises(CheckpointError, match=r"no component\(s\) \['mapping'\].*holds \['dicte'\]"):
        load_model_file(path, ["mapping"])


def test_a_file_without_emotivetalk_metadata_is_refused_clearly(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "random.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not an EmotiveTalk model file"):
        load_emotivetalk_model(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_emotivetalk_model(tmp_path / "nothing.safetensors")


def _tiny_wav2vec2_file(path, seed):
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    config = Wav2Vec2Config(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    model = Wav2Vec2Model(config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_vaid_refuses_a_speech_encoder_it_was_not_trained_with(tmp_path):
    config = get_config("tiny")
    config["speech"] = {"kind": "wav2vec2", "architecture": None, "layers": [1, 2]}
    config["vaid"].update(speech_dim=128, speech_layers=2)
    config["dicte"].update(speech_dim=128, speech_layers=2)
    trained_with = _tiny_wav2vec2_file(tmp_path / "wav2vec2-trained.safetensors", seed=0)
    other = _tiny_wav2vec2_file(tmp_path / "wav2vec2-other.safetensors", seed=1)
    model = build_emotivetalk_model(config)
    vaid = build_vaid_model(config, speech_source=trained_with)
    path = save_full_model(tmp_path / "full.safetensors", model, vaid, config, {"trained": True})
    recorded = json.loads(json.dumps(read_metadata(path)[1]["speech_encoder"]))
    assert recorded["fingerprint"]["source"] == "wav2vec2-trained.safetensors"

    assert load_vaid_model(path, speech_source=trained_with).speech_encoder.fingerprint()["weights_sha256"]
    with pytest.raises(ValueError, match="wav2vec2-trained.safetensors"):
        load_vaid_model(path, speech_source=other)
    with pytest.raises(CheckpointError, match="needs its speech encoder.*wav2vec2-trained.safetensors"):
        load_vaid_model(path)


def test_adapter_file_plus_base_svd_in_stability_layout(tmp_path):
    from safetensors.torch import save_file

    from emotivetalk_core.svd.convert import diffusers_to_stability

    torch.manual_seed(4)
    config = get_config("tiny")
    model = build_emotivetalk_model(config)
    for parameter in model.ethd.adapter_state_dict().values():  # make the adapters matter
        parameter.normal_(std=0.1)
    base = tmp_path / "svd_tiny.safetensors"
    stability = diffusers_to_stability(model.ethd.unet.state_dict(), model.vae.state_dict(), model.image_encoder.state_dict())
    save_file({k: v.contiguous() for k, v in stability.items()}, str(base))
    adapter = save_model_file(tmp_path / "adapter.safetensors",
                              {"adapter": (model.ethd.adapter_state_dict(), {"adapter": config["adapter"], "ethd": config["ethd"]})},
                              {"trained": True})
    with pytest.raises(CheckpointError, match="needs the base Stable Video Diffusion weights"):
        load_emotivetalk_model(adapter)
    loaded = load_emotivetalk_model(adapter, base=base, base_config="tiny")
    g = torch.Generator().manual_seed(0)
    inputs = dict(sample=torch.randn(1, 2, 8, 8, 8, generator=g), timestep=torch.tensor([0.3]),
                  image_embeds=torch.randn(1, 1, 32, generator=g), added_time_ids=torch.tensor([[6.0, 127.0, 0.02]]),
                  lip_windows=torch.randn(1, 2, 5, 16, generator=g), driven_exp=torch.randn(1, 2, 16, generator=g),
                  reference_exp=torch.randn(1, 16, generator=g))
    with torch.no_grad():
        torch.testing.assert_close(loaded.ethd(**inputs), model.ethd.eval()(**inputs), rtol=0, atol=0)


def test_model_files_are_readable_by_other_users(tmp_path):
    # A ComfyUI service running as another user must be able to read what training exported.
    path = save_model_file(tmp_path / "m.safetensors", {"dicte": ({"w": torch.zeros(2)}, {})})
    assert path.stat().st_mode & 0o777 == 0o644
