"""The distributed path on CPU: ``accelerate launch --num_processes 2 --cpu`` (gloo DDP).

Two processes end with bitwise-identical weights, and match one process with the same global
batch within rel 1e-5: the data order and the per-sample noise (the encoders stage's seeded
brightness augmentation) do not depend on the split. A one-process run with a different global
batch is the negative control: it must differ by far more.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file
from train_helpers import encoders_config, write_config, write_synthetic_shards

from emotivetalk_core.configs import get_config
from emotivetalk_core.svd.build import build_unet
from emotivetalk_core.train.config import load_config, resolve_config
from emotivetalk_core.train.loop import train
from emotivetalk_core.train.stage import get_stage

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
SETTINGS = {"steps": 3, "grad_accum": 2, "lr": 3e-3, "checkpoint_every": 3, "log_every": 1, "sample_every": 3}




def _config(shards: Path, output: Path, batch_size: int) -> dict:
    raw = encoders_config(shards, output, batch_size=batch_size, **SETTINGS)
    # tiny's first encoder stage has 8 channels in 8 GroupNorm groups: a conv bias right before a
    # one-channel group is normalised away, its gradient is pure roundoff, and Adam turns roundoff
    # into full-size steps whose sign depends on summation order. With 16 channels (2 per group)
    # every parameter has a real gradient, so the comparison measures the loop, not roundoff.
    raw["model"] = get_config("tiny")
    raw["model"]["encoders"]["channels"] = [16, 32]
    return resolve_config(raw)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_two_processes(config_path: Path) -> subprocess.CompletedProcess:
    # accelerate 1.x's --cpu runs one process unless mpirun is set up; torchrun processes (what
    # --multi_gpu starts) become one gloo run on CPU with ACCELERATE_USE_CPU=true.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()),
               "-m", "emotivetalk_core.train", "encoders", "--config", str(config_path)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


def _initial_weights(config: dict) -> dict[str, torch.Tensor]:
    """The init every process builds (the loop seeds the build with train.seed)."""
    set_seed(config["train"]["seed"])
    stage = get_stage("encoders")
    modules = stage.build(config)
    return {f"trainable.{name}": value for name, value in modules.state_dict().items()}


def _relative_difference(a: dict, b: dict, start: dict | None = None) -> float:
    """||a - b|| / ||b - start|| over all tensors together (``start`` None: relative to ||b||).

    A norm over the whole model, not a per-element maximum: Adam turns an element's roundoff-
    sized gradient into a full-size step, so single elements with near-zero gradients differ
    between any two summation orders, while the model as a whole agrees."""
    difference = sum(float((a[key] - b[key]).double().pow(2).sum()) for key in b) ** 0.5
    reference = b if start is None else {key: b[key] - start[key] for key in b}
    return difference / sum(float(value.double().pow(2).sum()) for value in reference.values()) ** 0.5


def test_two_processes_agree_with_each_other_and_with_one_process(tmp_path):
    shards = write_synthetic_shards(tmp_path / "shards", videos=2, clips=2, frames=6)
    two = _config(shards, tmp_path / "two", batch_size=2)
    result = _launch_two_processes(write_config(tmp_path / "two.json", two))
    assert result.returncode == 0, result.stderr[-3000:]

    replicas = [json.loads(path.read_text()) for path in sorted((tmp_path / "two" / "replicas").glob("rank-*.json"))]
    assert [r["rank"] for r in replicas] == [0, 1]
    assert replicas[0]["weights"] == replicas[1]["weights"] and replicas[0]["ema"] == replicas[1]["ema"]

    one = train(_config(shards, tmp_path / "one", batch_size=4))
    train(_config(shards, tmp_path / "half", batch_size=2))
    final = "checkpoints/step-000003/model.safetensors"
    weights = {name: load_file(tmp_path / name / final) for name in ("two", "one", "half")}
    start = _initial_weights(two)
    assert weights["one"].keys() == weights["two"].keys() == start.keys()

    agreement = _relative_difference(weights["two"], weights["one"])
    update_agreement = _relative_difference(weights["two"], weights["one"], start)
    control = _relative_difference(weights["half"], weights["one"])
    update_control = _relative_difference(weights["half"], weights["one"], start)
    print(f"2 processes vs 1 with the same global batch: weights rel {agreement:.2e}, updates rel "
          f"{update_agreement:.2e}; vs another global batch: weights rel {control:.2e}, updates rel {update_control:.2e}")
    assert agreement < 1e-5 and update_agreement < 1e-3
    assert control > 1e-3 and update_control > 0.3

    ema_two, ema_one = (load_file(tmp_path / name / "checkpoints/step-000003/ema.safetensors") for name in ("two", "one"))
    assert ema_two.keys() == ema_one.keys()
    assert _relative_difference(ema_two, ema_one) < 1e-5
    logged = [json.loads(line) for line in (tmp_path / "two" / "logs" / "losses.jsonl").read_text().splitlines()]
    assert [entry["samples"] for entry in logged] == [8, 16, 24]  # global batch 2 x 2 processes x 2 accumulation
    assert (one / "export" / "encoders.safetensors").is_file() and (tmp_path / "two" / "export" / "encoders.safetensors").is_file()


def test_a_sharded_launch_on_cpu_processes_is_refused_not_run_as_plain_ddp(tmp_path):
    """On CPU processes accelerate fails inside FSDP 1 ("no available devices") and silently runs
    FSDP 2 as gloo DDP (every process holds the whole model); the run says what to do instead,
    before the first step. (A DeepSpeed launch needs deepspeed installed, which this machine has
    not: accelerate's launcher refuses it first; the same check covers it, see the next test.)"""
    shards = write_synthetic_shards(tmp_path / "shards", videos=1, clips=2, frames=6)
    config_path = write_config(tmp_path / "run.json", _config(shards, tmp_path / "run", batch_size=1))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / "fsdp.yaml"),
               "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port()),
               "-m", "emotivetalk_core.train", "encoders", "--config", str(config_path)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode != 0
    assert "which accelerate runs only on GPUs" in result.stderr and "ddp.yaml" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_sharding_is_refused_on_cpu_processes_before_accelerate_starts(monkeypatch, tmp_path, variable):
    from emotivetalk_core.train.accelerator import make_accelerator
    from emotivetalk_core.train.config import TrainingError

    monkeypatch.setenv(variable, "true")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    with pytest.raises(TrainingError, match="ddp.yaml"):
        make_accelerator({"train": {}, "output": str(tmp_path)})


# --- shipped configs -------------------------------------------------------------------------

ACCELERATE_CONFIGS = ROOT / "emotivetalk_core" / "train" / "accelerate"


def _launch_args(name: str):
    from accelerate.commands.launch import (
        _validate_launch_command,
        launch_command_parser,
    )

    argv = ["--config_file", str(ACCELERATE_CONFIGS / f"{name}.yaml"), "-m", "emotivetalk_core.train", "ethd",
            "--config", "full.json"]
    return _validate_launch_command(launch_command_parser().parse_args(argv))


def test_shipped_accelerate_configs_are_what_accelerate_launch_reads(monkeypatch):
    from accelerate.commands.config.config_args import (
        ClusterConfig,
        load_config_from_file,
    )
    from accelerate.utils import DeepSpeedPlugin, DistributedType
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    expected = {"ddp": DistributedType.MULTI_GPU, "deepspeed_zero2": DistributedType.DEEPSPEED,
                "fsdp": DistributedType.FSDP}
    for name, kind in expected.items():
        config = load_config_from_file(str(ACCELERATE_CONFIGS / f"{name}.yaml"))
        assert isinstance(config, ClusterConfig) and config.distributed_type == kind

    args, _, _ = _launch_args("ddp")
    assert args.multi_gpu and args.num_processes == 8

    args, defaults, _ = _launch_args("deepspeed_zero2")
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    # ZeRO-2 (weights replicated: the EMA reads them); accumulation left to train.grad_accum
    assert plugin.zero_stage == 2 and plugin.gradient_accumulation_steps == "auto"

    args, _, _ = _launch_args("fsdp")
    env = prepare_multi_gpu_env(args)
    assert env["FSDP_USE_ORIG_PARAMS"] == "true" and env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"
    classes = {type(module).__name__ for module in build_unet(get_config("tiny")["unet"]).modules()}
    assert set(env["FSDP_TRANSFORMER_CLS_TO_WRAP"].split(",")) <= classes  # the wrap units exist in SVD's UNet


@pytest.mark.parametrize("size", ["tiny", "full"])
def test_shipped_training_configs_resolve_for_every_stage(size):
    path = ROOT / "emotivetalk_core" / "train" / "configs" / f"{size}.json"
    configs = {stage: load_config(path, stage=stage) for stage in ("encoders", "vaid", "ethd")}
    for stage, config in configs.items():
        assert config["stage"] == stage and config["output"].endswith(f"runs/{size}/{stage}")
    assert configs["ethd"]["data"]["window"] == configs["ethd"]["model"]["ethd"]["clip_frames"]
    # V-AID trains on Di-CTE's window (what inference samples and encodes the speech in)
    assert configs["vaid"]["data"]["window"] == configs["vaid"]["model"]["dicte"]["window"] == (50 if size == "full" else 25)
    # the later stages read the encoders run's export
    encoders_export = str(Path(configs["encoders"]["output"]) / "export" / "encoders.safetensors")
    assert configs["vaid"]["init"]["encoders"] == configs["ethd"]["init"]["encoders"] == encoders_export
    if size == "full":
        assert configs["ethd"]["model"]["unet"] == {} and configs["ethd"]["train"]["mixed_precision"] == "bf16"
        # the paper's figure: the whole UNet trains, on the lip stream inference gives it (V-AID's),
        # half of the clips on Di-CTE's estimate of the expression
        assert configs["ethd"]["ethd"] == {"train_unet": True, "condition_source": "vaid", "dicte_expression": 0.5}
        assert configs["ethd"]["init"]["vaid"] == str(Path(configs["vaid"]["output"]) / "export" / "vaid.safetensors")
