"""Training configuration: one JSON file per run, validated before anything heavy starts.

JSON keeps the training side free of a YAML dependency. Schema (paths are relative to the
config file's folder; ``--data``/``--out`` given on the command line are relative to the
working directory)::

    {
      "stage":  "base" | "encoders" | "vaid" | "ethd" | "distill",
      "model":  "tiny" | "svd-xt" | {full model config dict, as configs.py},
      "data":   {"shards": DIR, "window": FRAMES, "labels": [emotion labels], "reference": "clip" | "video"},
      "init":   {"encoders": FILE, "vaid": FILE, "base": FILE, "base_svd": FILE_OR_DIR, "speech_encoder": FILE_OR_DIR,
                 "text_encoder": DIR, "teacher": FILE},
      "train":  {"seed", "steps", "batch_size", "grad_accum", "lr", "lr_warmup", "lr_schedule", "lr_min", "weight_decay",
                 "ema_decay", "ema_warmup", "mixed_precision", "gradient_checkpointing",
                 "checkpoint_every", "keep_checkpoints", "log_every", "sample_every",
                 "max_grad_norm", "num_workers", "find_unused_parameters"},
      "output": RUN_DIR,
      "<stage>": {free-form options of the stage; the stage gives defaults for every key}
    }

A file may instead describe every stage of one model (what the shipped ``configs/tiny.json``
and ``configs/full.json`` do): no ``stage`` key, the shared keys above, and
``"stages": {"encoders": {...}, "vaid": {...}, "ethd": {...}}`` whose entries may set ``data``,
``init``, ``train`` (merged key by key over the shared ones) and the stage's own section. The
command (``train vaid --config FILE``) picks the entry; the run folder is ``output/<stage>``,
``init.encoders`` of ``vaid`` and ``ethd`` defaults to the encoders run's export
(``output/encoders/export/encoders.safetensors``) and, when the file has a ``base`` stage,
``init.base`` of ``ethd`` to its export, and ``init.vaid`` of an ``ethd`` trained on V-AID's lip
stream (``condition_source: "vaid"``) to the vaid run's export, so the stages chain without edits.

``data.window`` defaults to ``model.ethd.clip_frames`` for ETHD (and must equal it: SVD's
conditioning is per clip, so the training clip length is the inference window) and to
``model.dicte.window`` for V-AID (Di-CTE records the window it trained on: inference samples it,
and encodes the speech, in windows that long);
``data.labels`` defaults to the Mapping's labels, so a shard's emotion index is the Mapping's.
``data.reference`` (default ``"clip"``) is where the portrait frame x_ref comes from: the item's
own clip, or (``"video"``) any clip of its shard (see ``shards.ClipDataset``).
``batch_size`` is per process: the global batch is ``batch_size x processes x grad_accum``.
"""

from __future__ import annotations

import copy
import json
import numbers
from pathlib import Path

STAGES = ("base", "encoders", "vaid", "ethd", "distill")
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULES = ("constant", "cosine")
INIT_KEYS = ("encoders", "vaid", "base", "base_svd", "speech_encoder", "text_encoder", "teacher")
REFERENCES = ("clip", "video")

# Every train key with its default (None = required).
TRAIN_DEFAULTS = {
    "seed": 0,
    "steps": None,
    "batch_size": None,
    "grad_accum": 1,
    "lr": None,
    "lr_warmup": 0,
    "lr_schedule": "constant",
    "lr_min": 0.0,
    "weight_decay": 0.0,
    "ema_decay": 0.999,
    "ema_warmup": True,
    "mixed_precision": "no",
    "gradient_checkpointing": False,
    "checkpoint_every": 1000,
    "keep_checkpoints": 3,
    "log_every": 10,
    "sample_every": 0,
    "max_grad_norm": 1.0,
    "num_workers": 0,
    "find_unused_parameters": False,
}
_POSITIVE_INTS = ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every")
_NON_NEGATIVE_INTS = ("seed", "lr_warmup", "sample_every", "num_workers")
_BOOLS = ("ema_warmup", "gradient_checkpointing", "find_unused_parameters")


class ConfigError(ValueError):
    """A training config is unreadable or breaks the schema; the message names the key."""


class TrainingError(RuntimeError):
    """A run cannot start or continue as asked (e.g. resuming without a checkpoint); the message
    says what to do. Defined here, with the other user-facing errors, so the command line can
    catch it without importing torch."""


def load_config(path: str | Path, stage: str | None = None) -> dict:
    """Read, resolve and validate a training config file; ``stage`` picks the entry of a
    multi-stage file (and must match a single-stage file's ``stage``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from error
    if isinstance(raw, dict) and "stages" in raw:
        raw = select_stage(raw, stage, str(path))
    elif isinstance(raw, dict) and stage is not None and raw.get("stage") != stage:
        raise ConfigError(f"{path} is a '{raw.get('stage')}' config; run "
                          f"'python -m emotivetalk_core.train {raw.get('stage')} --config {path}'")
    return resolve_config(raw, base_dir=path.resolve().parent, source=str(path))


def select_stage(raw: dict, stage: str | None, source: str = "config") -> dict:
    """One stage's single-stage config out of a multi-stage file (paths still unresolved)."""
    stages = raw["stages"]
    if "stage" in raw:
        raise ConfigError(f"{source}: give either 'stage' (one stage) or 'stages' (every stage), not both")
    if not isinstance(stages, dict) or stage not in stages:
        names = sorted(stages) if isinstance(stages, dict) else []
        raise ConfigError(f"{source}: 'stages' has no entry {stage!r} (it has {names})")
    unknown = sorted(set(raw) - {"model", "data", "init", "train", "output", "stages"})
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} in a multi-stage config (stage options go in stages.<stage>)")
    entry = stages[stage]
    extra = sorted(set(entry) - {"data", "init", "train", stage})
    if extra:
        raise ConfigError(f"{source}: stages.{stage} may set data, init, train and '{stage}', not {extra}")
    if "output" not in raw:
        raise ConfigError(f"{source}: missing 'output' (the folder that holds one run per stage)")
    merged = {key: copy.deepcopy(value) for key, value in raw.items() if key != "stages"}
    for key in ("data", "init", "train"):
        merged[key] = {**raw.get(key, {}), **entry.get(key, {})}
    if stage in ("vaid", "ethd"):
        merged["init"].setdefault("encoders", str(Path(raw["output"]) / "encoders" / "export" / "encoders.safetensors"))
    if stage == "ethd" and "base" in stages:
        merged["init"].setdefault("base", str(Path(raw["output"]) / "base" / "export" / "base.safetensors"))
    if stage == "ethd" and "vaid" in stages and entry.get("ethd", {}).get("condition_source") == "vaid":
        merged["init"].setdefault("vaid", str(Path(raw["output"]) / "vaid" / "export" / "vaid.safetensors"))
    merged["stage"] = stage
    merged["output"] = str(Path(raw["output"]) / stage)
    merged[stage] = copy.deepcopy(entry.get(stage, {}))
    return merged


def resolve_config(raw: dict, base_dir: str | Path = ".", source: str = "config") -> dict:
    """A validated copy of ``raw`` with defaults filled, the model name expanded and paths absolute."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a training config is a JSON object, got {type(raw).__name__}")
    config = copy.deepcopy(raw)
    base_dir = Path(base_dir)
    _check_top_level(config, source)
    config["model"] = _model(config["model"], source)
    config["train"] = _train(config.get("train"), source)
    config["init"] = _init(config.get("init") or {}, base_dir, source)
    config["data"] = _data(config.get("data"), config, base_dir, source)
    config["output"] = str(_path(config["output"], base_dir, "output", source))
    stage = config["stage"]
    section = config.setdefault(stage, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: '{stage}' (the stage's options) must be an object, got {type(section).__name__}")
    return config


def apply_overrides(config: dict, *, data=None, out=None, steps=None, seed=None, init=()) -> dict:
    """Command-line overrides on a resolved config; paths are taken relative to the working
    directory; ``init`` is a list of ``KEY=PATH``."""
    config = copy.deepcopy(config)
    for item in init:
        key, _, value = item.partition("=")
        if key not in INIT_KEYS or not value:
            raise ConfigError(f"--init {item!r}: expected KEY=PATH with KEY one of {list(INIT_KEYS)}")
        config["init"][key] = str(Path(value).resolve())
    if data is not None:
        config["data"]["shards"] = str(Path(data).resolve())
    if out is not None:
        config["output"] = str(Path(out).resolve())
    if steps is not None:
        config["train"]["steps"] = steps
    if seed is not None:
        config["train"]["seed"] = seed
    config["train"] = _train(config["train"], "command line")
    return config


def _check_top_level(config: dict, source: str) -> None:
    stage = config.get("stage")
    if stage not in STAGES:
        raise ConfigError(f"{source}: 'stage' must be one of {list(STAGES)}, got {stage!r}")
    allowed = {"stage", "model", "data", "init", "train", "output", stage}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    for key in ("model", "data", "train", "output"):
        if key not in config:
            raise ConfigError(f"{source}: missing '{key}' (see TRAINING.md for the config schema)")


def _model(model, source: str) -> dict:
    from ..configs import CONFIGS, get_config

    if isinstance(model, str):
        if model not in CONFIGS:
            raise ConfigError(f"{source}: 'model' names an unknown config {model!r}; choose one of {sorted(CONFIGS)} or give the dict")
        return get_config(model)
    if not isinstance(model, dict):
        raise ConfigError(f"{source}: 'model' must be a config name or a model config object")
    missing = [key for key in CONFIGS["tiny"] if key not in model]
    if missing:
        raise ConfigError(f"{source}: 'model' lacks section(s) {missing} (compare emotivetalk_core/configs.py)")
    return model


def _train(train, source: str) -> dict:
    if not isinstance(train, dict):
        raise ConfigError(f"{source}: 'train' must be an object with at least steps, batch_size and lr")
    unknown = sorted(set(train) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ConfigError(f"{source}: unknown train key(s) {unknown}; allowed: {sorted(TRAIN_DEFAULTS)}")
    merged = {key: train.get(key, default) for key, default in TRAIN_DEFAULTS.items()}
    missing = [key for key, value in merged.items() if value is None]
    if missing:
        raise ConfigError(f"{source}: train.{missing[0]} is required")
    for key in _POSITIVE_INTS + _NON_NEGATIVE_INTS:
        value = merged[key]
        low = 1 if key in _POSITIVE_INTS else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{source}: train.{key} must be an integer >= {low}, got {value!r}")
    for key in _BOOLS:
        if not isinstance(merged[key], bool):
            raise ConfigError(f"{source}: train.{key} must be true or false, got {merged[key]!r}")
    if merged["lr_schedule"] not in LR_SCHEDULES:
        raise ConfigError(f"{source}: train.lr_schedule must be one of {list(LR_SCHEDULES)}, got {merged['lr_schedule']!r}")
    for key in ("lr", "lr_min", "weight_decay", "max_grad_norm"):
        if not _is_number(merged[key]) or merged[key] < 0 or (key == "lr" and merged[key] == 0):
            raise ConfigError(f"{source}: train.{key} must be a {'positive' if key == 'lr' else 'non-negative'} number, got {merged[key]!r}")
    if not _is_number(merged["ema_decay"]) or not 0 <= merged["ema_decay"] < 1:
        raise ConfigError(f"{source}: train.ema_decay must be in [0, 1), got {merged['ema_decay']!r}")
    if merged["mixed_precision"] not in MIXED_PRECISION:
        raise ConfigError(f"{source}: train.mixed_precision must be one of {list(MIXED_PRECISION)}, got {merged['mixed_precision']!r}")
    return merged


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _init(init, base_dir: Path, source: str) -> dict:
    if not isinstance(init, dict):
        raise ConfigError(f"{source}: 'init' must be an object of paths")
    unknown = sorted(set(init) - set(INIT_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown init key(s) {unknown}; allowed: {list(INIT_KEYS)}")
    return {key: None if init.get(key) is None else str(_path(init[key], base_dir, f"init.{key}", source)) for key in INIT_KEYS}


def _data(data, config: dict, base_dir: Path, source: str) -> dict:
    if not isinstance(data, dict) or "shards" not in data:
        raise ConfigError(f"{source}: 'data' must be an object with 'shards' (the folder preprocessing wrote)")
    unknown = sorted(set(data) - {"shards", "window", "labels", "reference"})
    if unknown:
        raise ConfigError(f"{source}: unknown data key(s) {unknown}; allowed: ['labels', 'reference', 'shards', 'window']")
    data = dict(data)
    data["shards"] = str(_path(data["shards"], base_dir, "data.shards", source))
    clip_frames = config["model"]["ethd"]["clip_frames"]
    if config["stage"] in ("ethd", "distill"):
        data.setdefault("window", clip_frames)
        if data["window"] != clip_frames:
            raise ConfigError(f"{source}: data.window ({data['window']}) must equal model.ethd.clip_frames ({clip_frames}) "
                              "for ETHD: the training clip length is the inference window")
    if config["stage"] == "vaid" and config["model"]["dicte"].get("window"):
        data.setdefault("window", config["model"]["dicte"]["window"])
    if config["stage"] == "vaid" and isinstance(data.get("window"), int) and data["window"] < 2:
        raise ConfigError(f"{source}: data.window must be at least 2 frames for vaid (Di-CTE's windows overlap), "
                          f"got {data['window']}")
    window = data.get("window")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"{source}: data.window must be a whole number of frames >= 1, got {window!r}")
    if data.setdefault("reference", "clip") not in REFERENCES:
        raise ConfigError(f"{source}: data.reference must be one of {list(REFERENCES)}, got {data['reference']!r}")
    labels = data.setdefault("labels", list(config["model"].get("mapping", {}).get("labels", [])))
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ConfigError(f"{source}: data.labels must be a list of emotion label strings")
    return data


def _path(value, base_dir: Path, key: str, source: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: {key} must be a path string, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()
