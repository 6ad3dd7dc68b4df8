"""Stage exports: what each training run writes at its end, and ``train export``, which merges them
into the one inference file the nodes load.

Each training run writes ``RUN/export/<stage>.safetensors`` at its end (:func:`export_run`): the
stage's components with the EMA weights, via ``checkpoints.save_model_file``, and in its info the
facts every stage export records (:func:`export_facts`) beside the stage's own; the nodes and
``train export`` read it.

The inference file (:func:`merge_exports`) needs the V-AID side (``lip_projector``, ``dicte``,
``identity_encoder``, ``mapping`` from the ``vaid`` stage; ``lip_encoder``, ``exp_encoder``,
``face_processor`` from ``encoders``; the speech encoder's fingerprint in ``info``) and the ETHD
side (``adapter`` from ``ethd``, plus ``unet``/``vae``/``image_encoder`` when the file is to be
self-contained; without them it is an adapter file that loads with the user's base SVD). A
component is taken from the stage that makes it for the inference file (the ETHD stage's export
carries the VAE and image encoder it was trained with, which a ``base`` run made); a stage's export
may carry a copy (the frozen encoders), which is used only when the maker's export is not given,
and a copy that differs is reported.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..bundles import VAID_COMPONENTS
from ..checkpoints import (
    CheckpointError,
    load_model_file,
    read_metadata,
    save_model_file,
)
from .accelerator import _params_sharded
from .config import STAGES
from .ema import EMA
from .stage import Stage, StageModel

log = logging.getLogger(__name__)

PRODUCERS = {
    "lip_encoder": "encoders", "exp_encoder": "encoders", "face_processor": "encoders",
    "lip_projector": "vaid", "dicte": "vaid", "identity_encoder": "vaid", "mapping": "vaid",
    "adapter": "ethd", "unet": "ethd", "vae": "ethd", "image_encoder": "ethd",
}
REQUIRED = (*VAID_COMPONENTS, "adapter")
BASE = ("unet", "vae", "image_encoder")
# Facts every stage export records (export_facts); the rest of a stage export's info is the stage's.
_LOOP_FACTS = ("trained", "note", "stage", "steps", "samples", "config")


# --- a stage export, written at the end of its run -------------------------------------------

def export_path(run: Path, stage: str) -> Path:
    return Path(run) / "export" / f"{stage}.safetensors"


def export_run(accelerator, stage: Stage, model: nn.Module, ema: EMA, config: dict, state: dict) -> Path:
    """Write ``RUN/export/<stage>.safetensors`` with the EMA weights (main process writes; every
    process must call it, the FSDP gather is collective)."""
    path = export_path(config["output"], config["stage"])
    unwrapped = accelerator.unwrap_model(model)
    if _params_sharded(accelerator):
        with ema.applied():
            full = accelerator.get_state_dict(model)  # gathered onto the main process
        if accelerator.is_main_process:
            _write_export(path, stage, _rebuilt(stage, config, list(unwrapped.trainable), full), config, state)
    elif accelerator.is_main_process:
        with ema.applied():
            _write_export(path, stage, unwrapped.modules_view(), config, state)
    accelerator.wait_for_everyone()
    return path


def _rebuilt(stage: Stage, config: dict, trainable: list[str], weights: dict) -> nn.ModuleDict:
    """The stage's modules built afresh on the CPU with ``weights`` (a full container state dict)
    in the trainable ones: the export path when the live parameters are sharded."""
    modules = stage.build(config)
    StageModel(stage, modules, trainable).load_state_dict(weights)
    return modules


def _write_export(path: Path, stage: Stage, modules: nn.ModuleDict, config: dict, state: dict) -> None:
    with torch.no_grad():
        components = stage.export(modules, config)
        info = stage.export_info(modules, config)
    save_model_file(path, components, {**export_facts(config, state), **info})
    log.info("wrote %s", path)


def export_facts(config: dict, state: dict) -> dict:
    """What every stage export records besides the stage's own facts."""
    data = config["data"]["shards"]
    return {
        "trained": True,
        "note": f"EmotiveTalk {config['stage']} stage, {state['step']} steps ({state['samples']} windows) on {data}",
        "stage": config["stage"],
        "steps": state["step"],
        "samples": state["samples"],
        "config": config,
    }


# --- the inference file, merged from stage exports (train export) ----------------------------

class StageExport:
    """One stage export file, its components and info (tensors not read)."""

    def __init__(self, path: Path):
        self.path = path
        self.configs, self.info = read_metadata(path)
        self.stage = self.info.get("stage")
        if self.stage not in STAGES:
            raise CheckpointError(f"{path} is not a training stage export (its info has no stage); "
                                  "give RUN folders or RUN/export/<stage>.safetensors files")


def stage_files(sources: list[str | Path]) -> list[Path]:
    """Run folders become their ``export/*.safetensors``; files are taken as they are."""
    files = []
    for source in map(Path, sources):
        if source.is_dir():
            found = sorted((source / "export").glob("*.safetensors"))
            if not found:
                raise CheckpointError(f"{source} has no export/*.safetensors: the run has not finished "
                                      "(resume it with --resume latest --steps N to finish and export)")
            files.extend(found)
        elif source.is_file():
            files.append(source)
        else:
            raise CheckpointError(f"not found: {source} (give training run folders or stage export files)")
    return files


def choose_components(exports: list[StageExport]) -> dict[str, StageExport]:
    """``{component: export it is read from}``; refuses an incomplete set, saying which stage makes what."""
    stages = [export.stage for export in exports]
    repeated = sorted({stage for stage in stages if stages.count(stage) > 1})
    if repeated:
        raise CheckpointError(f"more than one export of stage(s) {repeated}: give one run per stage")
    chosen = {}
    for component, producer in PRODUCERS.items():
        holders = [export for export in exports if component in export.configs]
        makers = [export for export in holders if export.stage == producer]
        if makers or holders:
            chosen[component] = (makers or holders)[0]
    missing = [component for component in REQUIRED if component not in chosen]
    if missing:
        by_stage = {}
        for component in missing:
            by_stage.setdefault(PRODUCERS[component], []).append(component)
        needs = "; ".join(f"{', '.join(names)} (made by the '{stage}' stage: python -m emotivetalk_core.train {stage} --config FILE)"
                          for stage, names in by_stage.items())
        raise CheckpointError(f"cannot make an inference file: missing {needs}")
    present = [name for name in BASE if name in chosen]
    if present and len(present) != len(BASE):
        absent = [name for name in BASE if name not in chosen]
        raise CheckpointError(f"the ETHD export holds {present} but not {absent}: a self-contained file needs all of "
                              f"{list(BASE)}, an adapter file none of them")
    return chosen


def check_dimensions(configs: dict[str, dict]) -> None:
    """The streams must meet: lip and expression widths agree across V-AID, encoders and ETHD."""
    adapter = configs["adapter"]["adapter"]
    pairs = [
        ("lip", configs["lip_encoder"]["lip_dim"], {"lip_projector": configs["lip_projector"]["lip_dim"], "adapter": adapter["lip_dim"]}),
        ("expression", configs["exp_encoder"]["exp_dim"], {"dicte": configs["dicte"]["exp_dim"],
                                                            "mapping": configs["mapping"]["exp_dim"], "adapter": adapter["exp_dim"]}),
    ]
    for stream, width, others in pairs:
        wrong = {name: value for name, value in others.items() if value != width}
        if wrong:
            raise CheckpointError(f"the {stream} stream is {width} wide in the encoders but {wrong}: "
                                  "train every stage with the same model config")


def merge_exports(sources: list[str | Path], out: str | Path, info: dict | None = None) -> Path:
    """Write one inference file from stage exports (run folders or files); returns its path.
    ``info`` adds facts to the file's info (e.g. how a SynthTalk run made it)."""
    exports = [StageExport(path) for path in stage_files(sources)]
    chosen = choose_components(exports)
    states, configs = {}, {}
    for export in exports:
        names = [name for name, source in chosen.items() if source is export]
        if names:
            loaded, loaded_configs, _ = load_model_file(export.path, names)
            states.update(loaded)
            configs.update(loaded_configs)
    check_dimensions(configs)
    _report_differing_copies(exports, chosen, states)
    info = {**merged_info(exports, chosen, self_contained=all(name in chosen for name in BASE)), **(info or {})}
    path = save_model_file(out, {name: (states[name], configs[name]) for name in chosen}, info)
    log.info("wrote %s (%s)", path, info["note"])
    return path


def _report_differing_copies(exports: list[StageExport], chosen: dict, states: dict) -> None:
    for export in exports:
        copies = [name for name in export.configs if name in chosen and chosen[name] is not export]
        if not copies:
            continue
        loaded, _, _ = load_model_file(export.path, copies)
        for name in copies:
            same = loaded[name].keys() == states[name].keys() and all(torch.equal(loaded[name][k], states[name][k]) for k in loaded[name])
            if not same:
                log.warning("%s holds a '%s' that differs from the one in %s (the %s stage was trained against other "
                            "weights); using the latter", export.path, name, chosen[name].path, export.stage)


def merged_info(exports: list[StageExport], chosen: dict, self_contained: bool) -> dict:
    vaid = chosen["lip_projector"]
    if "speech_encoder" not in vaid.info:
        raise CheckpointError(f"{vaid.path} does not record the speech encoder V-AID was trained with")
    stages = {}
    for export in sorted(exports, key=lambda e: STAGES.index(e.stage)):
        stages[export.stage] = {
            "file": export.path.name,
            "steps": export.info.get("steps"),
            "samples": export.info.get("samples"),
            "data": export.info.get("config", {}).get("data", {}).get("shards"),
            "info": {key: value for key, value in export.info.items() if key not in _LOOP_FACTS},
        }
    summary = ", ".join(f"{stage} {facts['steps']} steps on {facts['data']}" for stage, facts in stages.items())
    kind = "self-contained" if self_contained else "adapter-only (needs base SVD weights)"
    base_config = chosen["adapter"].info.get("base_config")
    return {
        **({"base_config": base_config} if base_config else {}),
        "trained": True,
        "note": f"EmotiveTalk trained by emotivetalk_core.train ({kind}): {summary}",
        "speech_encoder": vaid.info["speech_encoder"],
        "stages": stages,
        "self_contained": self_contained,
    }
