"""Training loop: EMA arithmetic, data order, exact resume, learning, configs, command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import encoders_config, write_config, write_synthetic_shards

from emotivetalk_core.checkpoints import CheckpointError, load_model_file, read_metadata
from emotivetalk_core.train.config import (
    ConfigError,
    apply_overrides,
    load_config,
    resolve_config,
)
from emotivetalk_core.train.ema import EMA
from emotivetalk_core.train.export import merge_exports
from emotivetalk_core.train.loop import GlobalBatchSampler, train

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")




# --- EMA -----------------------------------------------------------------------------------

def test_ema_follows_the_formula_and_warms_up():
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    ema = EMA({"w": param}, decay=0.9, warmup=False)
    expected = param.detach().clone()
    for value in (3.0, 5.0, -1.0):
        param.data.fill_(value)
        ema.update()
        expected = 0.9 * expected + 0.1 * value
    torch.testing.assert_close(ema.shadow["w"], expected, rtol=0, atol=1e-6)

    warm = EMA({"w": param}, decay=0.999, warmup=True)
    decays = []
    for _ in range(3):
        decays.append(warm.current_decay())
        warm.update()
    assert decays == pytest.approx([2 / 11, 3 / 12, 4 / 13])
    capped = EMA({"w": param}, decay=0.5, warmup=True)
    capped.updates = 100
    assert capped.current_decay() == 0.5  # the warmup ramp never exceeds the configured decay


def test_ema_applied_swaps_in_and_restores_bitwise():
    param = torch.nn.Parameter(torch.randn(5))
    original = param.detach().clone()
    ema = EMA({"w": param}, decay=0.9, warmup=False)
    ema.shadow["w"].add_(1.0)
    with ema.applied():
        assert torch.equal(param.detach(), original + 1.0)
    assert torch.equal(param.detach(), original)
    with pytest.raises(ValueError, match="missing"):
        ema.load_state_dict({}, 0)
    assert ema.shadow["w"].dtype == torch.float32


# --- data order ------------------------------------------------------------------------------

def _take(sampler: GlobalBatchSampler, count: int) -> list:
    iterator = iter(sampler)
    return [next(iterator) for _ in range(count)]


def test_two_processes_see_exactly_what_one_process_with_the_same_global_batch_sees():
    one = _take(GlobalBatchSampler(10, seed=1, batch_size=4, processes=1, rank=0, grad_accum=2,
                                   start_step=0, start_position=0), 6)
    ranks = [_take(GlobalBatchSampler(10, seed=1, batch_size=2, processes=2, rank=r, grad_accum=2,
                                      start_step=0, start_position=0), 6) for r in range(2)]
    for micro in range(6):
        assert one[micro] == ranks[0][micro] + ranks[1][micro]
    # steps travel with the indices: micro-batches 0,1 are step 0, 2,3 step 1, ...
    assert [batch[0][1] for batch in one] == [0, 0, 1, 1, 2, 2]
    # the stream covers every index once per epoch
    stream = [index for batch in one for index, _ in batch]
    assert sorted(stream[:10]) == list(range(10))


def test_starting_at_a_data_position_continues_the_stream():
    full = _take(GlobalBatchSampler(7, seed=4, batch_size=3, processes=1, rank=0, grad_accum=1,
                                    start_step=0, start_position=0), 5)
    resumed = _take(GlobalBatchSampler(7, seed=4, batch_size=3, processes=1, rank=0, grad_accum=1,
                                       start_step=2, start_position=6), 3)
    assert resumed == full[2:]


# --- exact resume ----------------------------------------------------------------------------

def _optimizer_state(folder: Path) -> dict:
    return torch.load(folder / "optimizer.bin", weights_only=True)


def _assert_same_nested(a, b, where="optimizer"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_nested(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_nested(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_stopping_and_resuming_gives_bitwise_the_uninterrupted_run(tmp_path):
    shards = write_synthetic_shards(tmp_path / "shards", videos=2, clips=2, frames=6)
    # grad_accum 2 and a dataset (6 windows) that does not divide the global batch (4): the
    # resume crosses an epoch boundary in the middle of a global batch.
    settings = {"steps": 5, "grad_accum": 2, "checkpoint_every": 2, "keep_checkpoints": 5, "sample_every": 2}
    whole = train(resolve_config(encoders_config(shards, tmp_path / "whole", **settings)))
    train(resolve_config(encoders_config(shards, tmp_path / "parts", **{**settings, "steps": 3})))
    parts = train(resolve_config(encoders_config(shards, tmp_path / "parts", **settings)), resume="latest")

    a, b = whole / "checkpoints" / "step-000005", parts / "checkpoints" / "step-000005"
    for name in ("model.safetensors", "ema.safetensors"):
        left, right = load_file(a / name), load_file(b / name)
        assert left.keys() == right.keys()
        assert all(torch.equal(left[key], right[key]) for key in left), name
    _assert_same_nested(_optimizer_state(a), _optimizer_state(b))
    assert (a / "random_states_0.pkl").read_bytes() == (b / "random_states_0.pkl").read_bytes()
    state_a, state_b = (json.loads((x / "state.json").read_text()) for x in (a, b))
    assert (state_a["step"], state_a["samples"], state_a["ema_updates"]) == (5, 20, 5)
    assert (state_b["step"], state_b["samples"], state_b["ema_updates"]) == (5, 20, 5)
    # the exports (EMA weights) are bitwise equal too
    left, _, _ = load_model_file(whole / "export" / "encoders.safetensors")
    right, _, _ = load_model_file(parts / "export" / "encoders.safetensors")
    assert all(torch.equal(left[c][k], right[c][k]) for c in left for k in left[c])
    # and the run really trained: the weights moved from the first checkpoint
    first = load_file(whole / "checkpoints" / "step-000002" / "model.safetensors")
    last = load_file(a / "model.safetensors")
    assert any(not torch.equal(first[key], last[key]) for key in first)


def test_data_loader_workers_do_not_change_the_run(tmp_path):
    shards = write_synthetic_shards(tmp_path / "shards", videos=1, clips=2, frames=4)
    runs = [train(resolve_config(encoders_config(shards, tmp_path / f"w{workers}", steps=2, num_workers=workers)))
            for workers in (0, 2)]
    left, right = (load_file(run / "checkpoints" / "step-000002" / "model.safetensors") for run in runs)
    assert all(torch.equal(left[key], right[key]) for key in left)


def test_a_run_folder_with_checkpoints_is_not_overwritten(tmp_path):
    shards = write_synthetic_shards(tmp_path / "shards", videos=1, clips=1, frames=4)
    config = resolve_config(encoders_config(shards, tmp_path / "run", steps=2))
    train(config)
    with pytest.raises(RuntimeError, match="--resume latest"):
        train(config)


# --- learning --------------------------------------------------------------------------------

def test_encoders_learn_targets_that_are_a_function_of_the_pixels(tmp_path):
    shards = write_synthetic_shards(tmp_path / "shards", videos=2, clips=2, frames=16, learnable=True)
    config = resolve_config(encoders_config(shards, tmp_path / "run", steps=50, batch_size=4, lr=3e-3,
                                            log_every=5, checkpoint_every=50, sample_every=50))
    run = train(config)
    logged = [json.loads(line) for line in (run / "logs" / "losses.jsonl").read_text().splitlines()]
    first, last = logged[0], logged[-1]
    assert [entry["step"] for entry in logged] == list(range(5, 51, 5))
    assert last["loss"] < 0.5 * first["loss"], (first, last)
    for part in ("lip", "exp", "mask"):
        assert last[part] < 0.6 * first[part], (part, first, last)
    # the export is a model file with the three encoders and the facts of the run
    configs, info = read_metadata(run / "export" / "encoders.safetensors")
    assert sorted(configs) == ["exp_encoder", "face_processor", "lip_encoder"]
    assert info["trained"] is True and info["stage"] == "encoders" and info["steps"] == 50
    assert info["targets"] == {"tool": "synthetic", "lip_dim": 3, "exp_dim": 4}
    assert (run / "samples" / "step-000050" / "encoders-step-000050.png").is_file()
    print(f"encoders loss {first['loss']:.3f} (steps 1-5) -> {last['loss']:.3f} (steps 46-50)")


# --- configs -----------------------------------------------------------------------------------

def _raw(tmp_path, **changes) -> dict:
    raw = encoders_config(tmp_path / "shards", tmp_path / "run")
    for dotted, value in changes.items():
        keys = dotted.split("__")
        target = raw
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return raw


@pytest.mark.parametrize(("changes", "message"), [
    ({"stage": "lips"}, "'stage' must be one of"),
    ({"train__lr": 0}, "train.lr must be a positive number"),
    ({"train__batch_size": 1.5}, "train.batch_size must be an integer >= 1"),
    ({"train__mixed_precision": "fp8"}, "train.mixed_precision must be one of"),
    ({"train__learning_rate": 1e-4}, "unknown train key(s) ['learning_rate']"),
    ({"model": "huge"}, "unknown config 'huge'"),
    ({"data__window": 0}, "data.window must be a whole number of frames >= 1"),
    ({"extra": 1}, "unknown key(s) ['extra']"),
    ({"init": {"svd": "x"}}, "unknown init key(s) ['svd']"),
])
def test_config_errors_name_the_key(tmp_path, changes, message):
    with pytest.raises(ConfigError) as error:
        resolve_config(_raw(tmp_path, **changes))
    assert message in str(error.value)


def test_ethd_window_is_the_models_clip_length(tmp_path):
    raw = _raw(tmp_path, stage="ethd")
    del raw["data"]["window"]
    assert resolve_config(raw)["data"]["window"] == 8  # tiny's clip_frames
    raw["data"]["window"] = 5
    with pytest.raises(ConfigError, match="must equal model.ethd.clip_frames"):
        resolve_config(raw)


def test_config_paths_are_relative_to_the_config_file(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    path = write_config(folder / "enc.json", {"stage": "encoders", "model": "tiny",
                                               "data": {"shards": "../shards", "window": 2},
                                               "init": {"encoders": "weights/enc.safetensors"},
                                               "train": {"steps": 1, "batch_size": 1, "lr": 1e-3}, "output": "runs/a"})
    config = load_config(path)
    assert config["data"]["shards"] == str(tmp_path / "shards")
    assert config["init"]["encoders"] == str(folder / "weights" / "enc.safetensors")
    assert config["output"] == str(folder / "runs" / "a")
    assert config["model"]["encoders"]["image_size"] == 32  # the name became the dict
    assert config["data"]["labels"] == config["model"]["mapping"]["labels"]
    (folder / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(folder / "bad.json")


# --- command line ----------------------------------------------------------------------------

def _cli(*args, cwd=ROOT):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "emotivetalk_core.train", *map(str, args)], check=False, cwd=cwd,
                          capture_output=True, text=True, env=env)


def test_cli_exit_codes(tmp_path):
    shards = write_synthetic_shards(tmp_path / "shards", videos=1, clips=1, frames=4)
    config = write_config(tmp_path / "enc.json", encoders_config(shards, tmp_path / "run", steps=1))

    missing = _cli("encoders", "--config", tmp_path / "nope.json")
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [f"error: training config not found: {tmp_path / 'nope.json'}"]
    wrong_stage = _cli("vaid", "--config", config)
    assert wrong_stage.returncode == 2 and "is a 'encoders' config" in wrong_stage.stderr
    bad_flag = _cli("encoders", "--config", config, "--steps", "many")
    assert bad_flag.returncode == 2 and "invalid int value" in bad_flag.stderr

    done = _cli("encoders", "--config", config, "--out", tmp_path / "other", "--steps", "2")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "other" / "checkpoints" / "step-000002" / "state.json").read_text())["step"] == 2
    resumed = _cli("encoders", "--config", config, "--out", tmp_path / "other", "--steps", "3", "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "other" / "checkpoints" / "step-000003" / "state.json").is_file()

    only_encoders = _cli("export", "--runs", tmp_path / "other", "--out", tmp_path / "model.safetensors")
    assert only_encoders.returncode == 2
    assert "missing lip_projector, dicte, identity_encoder, mapping (made by the 'vaid' stage" in only_encoders.stderr
    assert "adapter (made by the 'ethd' stage" in only_encoders.stderr
    with pytest.raises(CheckpointError, match="not found"):
        merge_exports([tmp_path / "nothing"], tmp_path / "model.safetensors")


def test_a_multi_stage_file_gives_each_stage_its_config(tmp_path):
    raw = {"model": "tiny", "data": {"shards": "shards", "window": 4}, "output": "runs",
           "train": {"steps": 10, "batch_size": 2, "lr": 1e-3},
           "stages": {"encoders": {"train": {"lr": 5e-3}, "encoders": {"augment": 0.0}},
                      "vaid": {"data": {"window": 16}, "init": {"speech_encoder": "w2v"}}}}
    path = write_config(tmp_path / "all.json", raw)
    encoders = load_config(path, stage="encoders")
    assert encoders["train"]["lr"] == 5e-3 and encoders["train"]["steps"] == 10
    assert encoders["encoders"] == {"augment": 0.0} and encoders["output"] == str(tmp_path / "runs" / "encoders")
    vaid = load_config(path, stage="vaid")
    assert vaid["data"]["window"] == 16 and vaid["train"]["lr"] == 1e-3 and vaid["vaid"] == {}
    assert vaid["init"]["encoders"] == str(tmp_path / "runs" / "encoders" / "export" / "encoders.safetensors")
    assert vaid["init"]["speech_encoder"] == str(tmp_path / "w2v")
    overridden = apply_overrides(vaid, init=["encoders=elsewhere.safetensors"], steps=3)
    assert overridden["init"]["encoders"] == str(Path("elsewhere.safetensors").resolve())
    assert overridden["train"]["steps"] == 3
    with pytest.raises(ConfigError, match="'stages' has no entry 'ethd'"):
        load_config(path, stage="ethd")
    with pytest.raises(ConfigError, match="--init 'lips=x'"):
        apply_overrides(vaid, init=["lips=x"])
    raw["stages"]["vaid"]["model"] = "svd-xt"
    with pytest.raises(ConfigError, match=r"stages.vaid may set data, init, train and 'vaid', not \['model'\]"):
        load_config(write_config(tmp_path / "bad.json", raw), stage="vaid")
