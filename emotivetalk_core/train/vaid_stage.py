"""The ``vaid`` training stage: V-AID's lip stream, Di-CTE with its Identity Encoder, the Mapping.

Figure panel (b). Frozen: the speech encoder, the Lip Encoder, the Exp Encoder and the Face
Processor (the encoders stage's export, ``init.encoders``; random, with a warning, when absent).
Trainable: the Audio-lip Projector, Di-CTE, the Identity Encoder and the Mapping (``init.vaid``,
an earlier V-AID export, fine-tunes instead of starting at random).

One batch, fed the way the inference pipeline feeds these networks:

- speech ``[B, T, L, D]``: the frozen encoder's ``encode(window audio, T, fps)`` per clip, as
  ``pipeline.encode_speech`` (fps follows from the 16 kHz audio length of the window);
- ``l_v`` / ``e_v``: Lip / Exp Encoder of every frame; ``l_a`` = projector(speech);
- **pull** = ``networks.vaid.pull_loss(l_a, l_v)`` (InfoNCE);
- **lip_scale** = mean over frames of ``(log |l_a| - log |l_v|)^2``. InfoNCE compares directions
  only, so without it the lip stream's norm is arbitrary, yet ETHD (trained on ``l_v``) reads the
  tokens through linear maps, where the norm matters;
- **dicte**: Di-CTE's x0 regression onto ``e_v`` (the noising of ``DiCTE.loss``, drawn per clip),
  identity = Identity Encoder(reference frame), condition = an emotion source mapped by the
  Mapping, replaced with probability ``condition_dropout`` by Exp Encoder(reference frame) (the
  portrait's own expression, the "unconditional" that intensity and guidance interpolate from);
- **push** = ``networks.vaid.push_loss(l_a, e_a)`` with e_a Di-CTE's prediction;
- **mapping**: every route a clip has (the image route always, label and text when it is
  labelled) regressed onto the clip's mean ``e_v``. The Mapping's docstring promises that every
  source lands where a face showing that emotion would land, and the emotion timeline mixes
  conditions linearly around Exp Encoder(portrait); Di-CTE's gradient alone would let the
  conditions drift anywhere it can read them. It is also what gives Mapping("neutral"), the
  baseline of the neutralise option, a meaning: the mean code of the clips labelled neutral (a
  label no shard carries keeps its random embedding; ``build`` warns).

Emotion sources per clip (drawn per clip): a labelled clip takes its label with probability
``label_prob``, a label-derived prompt (:data:`TEXT_TEMPLATES` for the byte encoder; one of 30
paraphrases per emotion, ``train.paraphrases``, for a pretrained text encoder given as
``init.text_encoder``, whose embeddings the Mapping then learns to project) with ``text_prob``, else an
emotion image; an unlabelled clip always takes an emotion image. The emotion image
(``batch["emotion_image"]``, added by the loop: ``ClipDataset.emotion_frame``) is a frame of
another clip with the same label, of another person where the data has one, augmented (Exp
Encoder, then ``Mapping.from_image``); never a frame of the target window, whose expression
Di-CTE would learn to copy, while a user's emotion image shows someone else. Mixing all three
routes on labelled clips trains every route the nodes offer and pulls them to the same place for
the same emotion. A batch
without a labelled clip passes the label and text routes with weight zero, so every parameter
takes part in every step (DDP stops on a parameter one process did not use).

Randomness: every draw comes from ``noise`` keyed by the clip's ``batch["index"]``. The Di-CTE
term draws each clip's timestep, noise and dropout from ``noise.generator("vaid.dicte", index)``
in the order ``DiCTE.loss`` draws them, and runs one batched network call: a clip's term equals
``DiCTE.loss`` on that clip alone with that generator. dicte, mapping and lip_scale are means
of per-clip terms; **pull and push are batch-wide** (InfoNCE negatives, correlations over the
batch's frames), so they change with the per-process batch split; the stage says so here, as
the contract asks.

The portrait x_ref is ``batch["reference"]`` ``[B, 3, S, S]``, the frame of the clip from
outside the window that the loop adds (seeded stream ``"data.reference"``); a batch without it
is an error naming what is missing.

The speech encoder is held by the stage, not in the module dict: its features must be computed
in float32 exactly as inference does (the log-mel encoder does not even run in bf16), and its
fingerprint, recorded in the export, must hash the untouched weights; a frozen module in the
dict would be cast to the mixed-precision dtype. It moves to the batch's device on first use.

With ``train.gradient_checkpointing`` each Di-CTE transformer layer is checkpointed (the
frozen encoders run without gradients and the projector is small).

Options (``config["vaid"]``), defaults in :data:`VAID_DEFAULTS`:

- ``pull_weight`` 1.0, ``dicte_weight`` 1.0, ``push_weight`` 0.1, ``lip_scale_weight`` 0.1,
  ``mapping_weight`` 0.1: loss weights (the paper gives none);
- ``pull_temperature`` 0.1: InfoNCE temperature;
- ``condition_dropout`` 0.1: probability of the unconditional condition;
- ``label_prob`` 0.4, ``text_prob`` 0.3: emotion-source mix on labelled clips (image: the rest);
- ``sample_steps`` 10: DDIM steps of the Di-CTE samples written by :meth:`VAIDStage.sample`;
- ``sample_labels`` ``["neutral", "happy", "angry"]``: emotions sampled there (those the
  Mapping knows);
- ``uncond_source`` ``"reference"``: the unconditional condition is Exp Encoder(x_ref), the
  portrait's own expression, right when x_ref comes from the clip itself (``data.reference =
  "clip"``). With portraits from other clips of the person (``"video"``: an Identity Encoder that
  never sees the target clip's expression, so it cannot leak the emotion that the condition
  should bring), ``"clip"`` takes the code of a random frame of the window instead: the
  unconditional prediction still means "keep the expression given", which is what intensity 0
  asks of the portrait's own code at inference, not "guess the emotion from the voice".
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..bundles import VAIDModel, load_built, vaid_classes, vaid_components, vaid_info
from ..checkpoints import load_model_file
from ..networks.speech.load import load_speech_encoder
from ..networks.speech.timing import SAMPLE_RATE
from ..placement import placement
from ..networks.vaid import pull_loss, push_loss
from .noise import SampleNoise
from .shards import ClipDataset, clip_emotion, read_shard_info, shard_paths

log = logging.getLogger(__name__)

VAID_DEFAULTS = {
    "pull_weight": 1.0,
    "dicte_weight": 1.0,
    "push_weight": 0.1,
    "lip_scale_weight": 0.1,
    "mapping_weight": 0.1,
    "pull_temperature": 0.1,
    "condition_dropout": 0.1,
    "label_prob": 0.4,
    "text_prob": 0.3,
    "sample_steps": 10,
    "sample_labels": ["neutral", "happy", "angry"],
    "uncond_source": "reference",
}
UNCOND_SOURCES = ("reference", "clip")

TRAINABLE = ("lip_projector", "dicte", "identity_encoder", "mapping")
ENCODERS = ("lip_encoder", "exp_encoder", "face_processor")

# Prompts the text route learns from, per label: (adjective, noun). Kept short and plain, the
# way users type them; labels not listed use the label itself for both.
TEXT_WORDS = {
    "neutral": ("neutral", "calm"),
    "happy": ("happy", "happiness"),
    "angry": ("angry", "anger"),
    "sad": ("sad", "sadness"),
    "surprised": ("surprised", "surprise"),
    "fear": ("fearful", "fear"),
    "disgusted": ("disgusted", "disgust"),
    "contempt": ("contemptuous", "contempt"),
}
TEXT_TEMPLATES = ("{adjective}", "{adjective} face", "looking {adjective}", "a face showing {noun}", "speak with {noun}")
_EPS = 1e-6


def options(config: dict, name: str, defaults: dict) -> dict:
    """The stage's section of ``config`` over its defaults; an unknown key is an error (a typo
    would otherwise silently train with the default)."""
    given = config.get(name) or {}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {name} option(s) {unknown}; allowed: {sorted(defaults)}")
    return {**defaults, **given}


def init_path(config: dict, key: str) -> str | None:
    return (config.get("init") or {}).get(key)


def frozen(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


# --- frozen encoders -----------------------------------------------------------------------

def load_encoders(config: dict, fallbacks: tuple[str, ...] = ()) -> dict[str, nn.Module]:
    """Lip Encoder, Exp Encoder and Face Processor, frozen: from ``init.encoders``, else from the
    first ``init.<fallback>`` file given (a V-AID export holds them too), else random (warned)."""
    classes = vaid_classes()
    encoders_config = config["model"]["encoders"]
    for key in ("encoders", *fallbacks):
        path = init_path(config, key)
        if path:
            return {name: frozen(module) for name, module in _encoders_from_file(path, key, encoders_config).items()}
    log.warning("no init.encoders file: the Lip Encoder, Exp Encoder and Face Processor are RANDOM and frozen; "
                "train the encoders stage first and pass its export as init.encoders")
    return {name: frozen(classes[name][0](encoders_config)) for name in ENCODERS}


def _encoders_from_file(path: str, key: str, encoders_config: dict) -> dict[str, nn.Module]:
    states, configs, _ = load_model_file(path, list(ENCODERS))
    modules = {}
    for name in ENCODERS:
        if configs[name] != encoders_config:
            raise ValueError(f"init.{key} {path}: its {name} was built with encoders config {configs[name]}, "
                             f"but model.encoders is {encoders_config}; use the model config it was trained with")
        modules[name] = load_built(vaid_classes()[name][0](configs[name]), states[name], name, Path(path))
    return modules


# --- per-batch inputs shared with the ethd stage ---------------------------------------------

def reference_frames(batch: dict) -> torch.Tensor:
    """``batch["reference"]`` ``[B, 3, S, S]``, or a clear error naming who provides it."""
    if "reference" not in batch:
        raise KeyError("the batch has no 'reference' frame: the training loop adds batch['reference'] "
                       "[B, 3, S, S], a frame of each clip from outside its window (ClipDataset.outside_frame "
                       "with the seeded stream 'data.reference'); a batch made elsewhere must add it too")
    return batch["reference"]


def per_frame(encoder: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """A frozen image encoder over every frame: ``[B, T, 3, S, S]`` -> ``[B, T, dim]`` float32."""
    with torch.no_grad():
        return encoder(frames.flatten(0, 1)).float().unflatten(0, frames.shape[:2])


def speech_features(encoder: nn.Module, audio: torch.Tensor, frames: int) -> torch.Tensor:
    """Speech features ``[B, T, L, D]`` of each clip's window, as ``pipeline.encode_speech``.

    ``audio`` is ``[B, T * samples_per_frame]`` at 16 kHz, so the video rate is
    ``16000 * T / samples``.
    """
    fps = SAMPLE_RATE * frames / audio.shape[1]
    return torch.stack([encoder.encode(clip, frames, fps) for clip in audio]).float()


class SpeechHolder:
    """The frozen speech encoder, kept out of the loop's module dict (see the module docstring)."""

    def __init__(self, encoder: nn.Module):
        self.encoder = frozen(encoder).float()

    def features(self, audio: torch.Tensor, frames: int) -> torch.Tensor:
        if placement(self.encoder)["device"] != audio.device:
            self.encoder.to(audio.device)
        return speech_features(self.encoder, audio, frames)


# --- the stage -----------------------------------------------------------------------------

class VAIDStage:
    name = "vaid"

    def __init__(self):
        # Set by build: the options, the data's label names (batch["emotion"] indexes them) and
        # the speech encoder.
        self.options = dict(VAID_DEFAULTS)
        self.data_labels: list[str] = []
        self.speech: SpeechHolder | None = None

    def build(self, config: dict) -> nn.ModuleDict:
        model = config["model"]
        self.options = options(config, "vaid", VAID_DEFAULTS)
        if self.options["uncond_source"] not in UNCOND_SOURCES:
            raise ValueError(f"vaid.uncond_source must be one of {UNCOND_SOURCES}, got {self.options['uncond_source']!r}")
        self.data_labels = [label.strip().lower() for label in config["data"]["labels"]]
        classes = vaid_classes()
        # Di-CTE records the window it trains on: inference samples it, and encodes the speech, in windows that long.
        configs = {**model, "dicte": {**model["dicte"], "window": config["data"]["window"]},
                   "mapping": self._text_encoder(config, model["mapping"])}
        trainable = {name: classes[name][0](configs[classes[name][1]]) for name in TRAINABLE}
        if init_path(config, "vaid"):
            _load_trainable(trainable, init_path(config, "vaid"))
        _check_labels(config, trainable["mapping"])
        if (config.get("train") or {}).get("gradient_checkpointing"):
            checkpoint_layers(trainable["dicte"].layers)
        self.speech = SpeechHolder(load_speech_encoder(model["speech"], init_path(config, "speech_encoder")))
        encoders = load_encoders(config)
        if not init_path(config, "vaid"):
            trainable["dicte"].set_code_statistics(*code_statistics(config, encoders["exp_encoder"]))
        return nn.ModuleDict({**trainable, **encoders})

    def _text_encoder(self, config: dict, mapping: dict) -> dict:
        """The Mapping's config: with ``init.text_encoder`` (a transformers folder), its record, and
        the embeddings of every prompt the text route can draw (the encoder is frozen, so they are
        computed once here: ``self.text_table``); without, the byte encoder's (unchanged)."""
        from ..networks.text import TransformersTextEncoder, text_record

        self.text_table = None
        folder = init_path(config, "text_encoder")
        if not folder:
            return mapping
        embed = TransformersTextEncoder(folder)
        prompts = sorted({prompt for label in mapping["labels"] for prompt in label_prompts(label, paraphrases=True)})
        self.text_table = dict(zip(prompts, torch.cat([embed(prompts[i:i + 64]) for i in range(0, len(prompts), 64)]),
                                   strict=True))
        return {**mapping, "text_encoder": text_record(Path(folder).name, embed)}

    def _text_route(self, mapping: nn.Module):
        """Prompts -> Mapping conditions: the byte encoder, or the pretrained encoder's embeddings."""
        if self.text_table is None:
            return mapping.from_text
        return lambda texts: mapping.from_text_embedding(torch.stack([self.text_table[text] for text in texts]))

    def trainable(self, modules: nn.ModuleDict) -> list[str]:
        return list(TRAINABLE)

    def loss(self, modules: nn.ModuleDict, batch: dict, noise: SampleNoise) -> dict[str, torch.Tensor]:
        opts = self.options
        frames = batch["frames"]
        index = batch["index"]
        reference = reference_frames(batch)
        speech = self._speech().features(batch["audio"], frames.shape[1])
        l_v = per_frame(modules["lip_encoder"], frames)
        e_v = per_frame(modules["exp_encoder"], frames)
        l_a = modules["lip_projector"](speech).float()
        own = self.own_expression(modules, reference, e_v, noise, index)
        identity = modules["identity_encoder"](reference)
        condition, mapping_terms, idle = self._conditions(modules, batch, e_v, noise)
        dicte_terms, e_a = dicte_loss(modules["dicte"], e_v, speech, identity, condition, own,
                                      opts["condition_dropout"], noise, index)
        terms = {
            "pull": pull_loss(l_a, l_v, opts["pull_temperature"]),
            "lip_scale": lip_scale_loss(l_a, l_v).mean(),
            "dicte": dicte_terms.mean(),
            "push": push_loss(l_a, e_a),
            "mapping": mapping_terms.mean(),
        }
        total = sum(opts[f"{name}_weight"] * value for name, value in terms.items()) + idle
        logged = {name: value.detach() for name, value in terms.items()}
        return {"loss": total, **logged, "pull_top1": top1_accuracy(l_a.detach(), l_v)}

    def own_expression(self, modules, reference, e_v, noise, index) -> torch.Tensor:
        """Di-CTE's unconditional condition ``[B, exp_dim]``: the portrait's expression code, or
        with ``uncond_source = "clip"`` the code of a random frame of the window (see the module
        docstring)."""
        if self.options["uncond_source"] == "clip":
            pick = noise.uniform("vaid.own", index).mul(e_v.shape[1]).long().clamp(max=e_v.shape[1] - 1)
            return e_v[torch.arange(len(e_v)), pick.to(e_v.device)]
        with torch.no_grad():
            return modules["exp_encoder"](reference).float()

    def _conditions(self, modules, batch, e_v, noise) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(condition [B, exp_dim], mapping term [B], idle)``: each clip's Di-CTE condition is
        the code of its drawn route; its mapping term averages every route it has (the image
        route always; label and text when labelled) against its mean ``e_v``, so each route
        learns whenever it can. ``idle`` is a zero-weighted pass through the label and text
        routes when no clip is labelled: every parameter then takes part in every step, which
        DDP needs (a route unused on one process would stop it)."""
        mapping = modules["mapping"]
        sources = self.emotion_sources(batch, noise)
        target = e_v.mean(dim=1)
        rows = range(len(sources))
        if "emotion_image" not in batch:
            raise KeyError("the batch has no 'emotion_image': the training loop adds it (ClipDataset.emotion_frame, "
                           "augmented, with the seeded stream 'data.emotion_image'); a batch made elsewhere must add it too")
        with torch.no_grad():
            shown = modules["exp_encoder"](batch["emotion_image"].to(e_v.device)).float()
        codes = {"image": list(mapping.from_image(shown).float())}
        labelled = [row for row in rows if sources[row]["label"] is not None]
        idle = target.new_zeros(())
        if labelled:
            for kind, route in (("label", mapping.from_label), ("text", self._text_route(mapping))):
                codes[kind] = dict(zip(labelled, route([sources[row][kind] for row in labelled]).float(), strict=True))
        else:
            anchor = mapping.labels[0]
            idle = 0 * (mapping.from_label([anchor]).sum()
                        + self._text_route(mapping)([text_prompt(anchor, 0.0, self.text_table is not None)]).sum())
        condition = torch.stack([codes[sources[row]["kind"]][row] for row in rows])
        terms = torch.stack([
            torch.stack([(codes[kind][row] - target[row]).square().mean() for kind in ("image", "label", "text")
                         if kind == "image" or row in labelled]).mean()
            for row in rows
        ])
        return condition, terms, idle

    def emotion_sources(self, batch: dict, noise: SampleNoise) -> list[dict]:
        """Per clip: ``kind`` (the route of its Di-CTE condition: ``"label"``, ``"text"`` or
        ``"image"``), ``label`` and ``text`` (``None`` for an unlabelled clip)."""
        opts = self.options
        draws = noise.uniform("vaid.condition", batch["index"], (2,)).tolist()
        sources = []
        for emotion, (route, pick) in zip(batch["emotion"].tolist(), draws, strict=True):
            label = self.data_labels[emotion] if emotion >= 0 else None
            if label is not None and route < opts["label_prob"]:
                kind = "label"
            elif label is not None and route < opts["label_prob"] + opts["text_prob"]:
                kind = "text"
            else:
                kind = "image"
            text = None if label is None else text_prompt(label, pick, paraphrases=self.text_table is not None)
            sources.append({"kind": kind, "label": label, "text": text})
        return sources

    def export(self, modules: nn.ModuleDict, config: dict) -> dict[str, tuple[dict, dict]]:
        # Di-CTE's config carries the code statistics measured at build, the Mapping's its text encoder.
        return vaid_components(self._bundle(modules, config),
                               {**config["model"], "dicte": modules["dicte"].config, "mapping": modules["mapping"].config})

    def export_info(self, modules: nn.ModuleDict, config: dict) -> dict:
        return vaid_info(self._bundle(modules, config))

    def _bundle(self, modules: nn.ModuleDict, config: dict) -> VAIDModel:
        return VAIDModel(speech_encoder=self._speech().encoder, speech_config=dict(config["model"]["speech"]),
                         **{name: modules[name] for name in (*TRAINABLE, *ENCODERS)})

    def sample(self, modules: nn.ModuleDict, batch: dict, folder: Path, step: int) -> list[Path]:
        """Di-CTE codes of the batch's first clip for its own expression and a few labels
        (safetensors), and a JSON summary: pull top-1 accuracy over the batch, how far each
        sample lands from the clip's ``e_v``, and how far the emotions spread apart."""
        from safetensors.torch import save_file

        opts = self.options
        frames = batch["frames"]
        reference = reference_frames(batch)[:1]
        speech = self._speech().features(batch["audio"], frames.shape[1])
        l_v, e_v = per_frame(modules["lip_encoder"], frames), per_frame(modules["exp_encoder"], frames)
        l_a = modules["lip_projector"](speech).float()
        dicte, mapping = modules["dicte"], modules["mapping"]
        own = modules["exp_encoder"](reference).float()
        identity = modules["identity_encoder"](reference)
        labels = [label for label in opts["sample_labels"] if label in mapping.labels]
        conditions = {"own": own, **{label: mapping.from_label([label]).float() for label in labels}}
        steps = min(opts["sample_steps"], dicte.train_steps)
        codes = {name: dicte.sample(speech[:1], identity, condition, uncond_condition=own, steps=steps,
                                    generator=0)[0].float().cpu().contiguous()
                 for name, condition in conditions.items()}
        codes["ground_truth"] = e_v[0].cpu().contiguous()
        tensors_path = folder / f"vaid_{step:08d}.safetensors"
        save_file(codes, str(tensors_path))
        summary = {
            "step": step,
            "pull_top1": float(top1_accuracy(l_a, l_v)),
            "mse_to_ground_truth": {name: float((code - codes["ground_truth"]).square().mean())
                                    for name, code in codes.items() if name != "ground_truth"},
            "emotion_spread": _spread([codes[label] for label in labels]),
        }
        summary_path = folder / f"vaid_{step:08d}.json"
        summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True))
        return [tensors_path, summary_path]

    def _speech(self) -> SpeechHolder:
        if self.speech is None:
            raise RuntimeError("VAIDStage.build(config) must run before loss, export or sample")
        return self.speech


def checkpoint_layers(layers: nn.ModuleList) -> None:
    """Gradient checkpointing of each layer (Di-CTE's transformer layers over long windows hold
    most of this stage's activations). The layer's forward is wrapped on the instance, so
    parameter names, and with them the export, are unchanged."""
    for layer in layers:
        layer.forward = functools.partial(_checkpointed, layer.forward)


def _checkpointed(forward, *args):
    if torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False)
    return forward(*args)


def _load_trainable(modules: dict[str, nn.Module], path: str) -> None:
    states, configs, _ = load_model_file(path, list(TRAINABLE))
    for name, module in modules.items():
        # Records of the data and encoders a file was trained with, not architecture: Di-CTE's code
        # statistics (kept from the file) and window (this run's data.window), the Mapping's text encoder.
        architecture = [{key: value for key, value in config.items() if key not in TRAINING_RECORDS}
                        for config in (configs[name], module.config)]
        if architecture[0] != architecture[1]:
            raise ValueError(f"init.vaid {path}: {name} has config {configs[name]}, the model config says {module.config}")
        if name == "mapping":
            _check_same_text_encoder(configs[name].get("text_encoder"), module.config.get("text_encoder"), path)
        if "code_mean" in configs[name]:
            module.set_code_statistics(*(torch.tensor(configs[name][key]) for key in CODE_STATISTICS))
        load_built(module, states[name], name, Path(path))


def _check_same_text_encoder(recorded: dict | None, given: dict | None, path: str) -> None:
    """A fine-tuned Mapping keeps the text encoder it was trained on (init.text_encoder, or none)."""
    from ..networks.text import TEXT_PROBES, check_text_encoder

    if recorded is None and given is None:
        return
    if recorded is None or given is None:
        had = f"the pretrained text encoder {recorded['name']}" if recorded else "its byte-level text encoder"
        raise ValueError(f"init.vaid {path}: its Mapping was trained with {had}; give "
                         f"{'init.text_encoder (that folder)' if recorded else 'no init.text_encoder'} to fine-tune it")
    check_text_encoder(recorded, torch.tensor([given["probes"][text] for text in TEXT_PROBES]), "init.text_encoder")


CODE_STATISTICS = ("code_mean", "code_std")
TRAINING_RECORDS = (*CODE_STATISTICS, "window", "text_encoder")
STATISTICS_SAMPLE = 128  # windows whose Exp codes set Di-CTE's code statistics


def code_statistics(config: dict, exp_encoder: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of the Exp Encoder's codes over the frames of up to
    :data:`STATISTICS_SAMPLE` training windows spread evenly over the data (Di-CTE's units)."""
    windows = ClipDataset(config["data"]["shards"], config["data"]["window"])
    codes = torch.cat([per_frame(exp_encoder, windows[i]["frames"][None])[0] for i in windows.spread(STATISTICS_SAMPLE)]).double()
    return codes.mean(dim=0).float(), codes.std(dim=0, correction=0).clamp(min=1e-6).float()


def _check_labels(config: dict, mapping) -> None:
    """Every data label must be one the Mapping knows; warn about Mapping labels no shard has."""
    unknown = [label for label in config["data"]["labels"] if label.strip().lower() not in mapping.labels]
    if unknown:
        raise ValueError(f"data.labels {unknown} are not labels of the Mapping ({mapping.labels})")
    present = {str(clip_emotion(clip, info)).lower()
               for info in map(read_shard_info, shard_paths(config["data"]["shards"])) for clip in info["clips"]}
    unseen = [label for label in mapping.labels if label not in present]
    if unseen:
        log.warning("no clip is labelled %s: their Mapping label embeddings stay random%s", unseen,
                    " (including 'neutral', which the neutralise option uses)" if "neutral" in unseen else "")


def label_prompts(label: str, paraphrases: bool = False) -> tuple[str, ...]:
    """Every emotion prompt the text route can draw for ``label``: the templates filled with its
    words, or, for a pretrained text encoder (``paraphrases``), its paraphrases
    (``train.paraphrases``: many wordings per emotion, so the Mapping learns what the encoder's
    embedding means rather than a few strings)."""
    from .paraphrases import PARAPHRASES

    if paraphrases and label in PARAPHRASES:
        return PARAPHRASES[label]
    adjective, noun = TEXT_WORDS.get(label, (label, label))
    return tuple(template.format(adjective=adjective, noun=noun) for template in TEXT_TEMPLATES)


def text_prompt(label: str, pick: float, paraphrases: bool = False) -> str:
    """One of :func:`label_prompts`; ``pick`` in [0, 1) chooses it."""
    prompts = label_prompts(label, paraphrases)
    return prompts[min(int(pick * len(prompts)), len(prompts) - 1)]


def dicte_loss(dicte, e_v, speech, identity, condition, uncond, drop_prob: float, noise: SampleNoise,
               index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-clip Di-CTE losses ``[B]`` and the prediction e_a ``[B, T, exp_dim]``.

    Clip i's timestep, noise and dropout come from ``noise.generator("vaid.dicte", index[i])``
    drawn in ``DiCTE.loss``'s order, so its term is ``DiCTE.loss`` on that clip alone with that
    generator; the network runs once for the whole batch.
    """
    draws = [_dicte_draws(noise.generator("vaid.dicte", i), dicte.train_steps, e_v.shape[1:], drop_prob)
             for i in index.tolist()]
    t = torch.cat([d[0] for d in draws]).to(e_v.device)
    epsilon = torch.cat([d[1] for d in draws]).to(e_v.device)
    drop = torch.cat([d[2] for d in draws]).to(e_v.device)
    batch, frames = e_v.shape[:2]
    condition = torch.where(drop[:, None, None], dicte.per_frame(uncond, batch, frames),
                            dicte.per_frame(condition, batch, frames))
    target = dicte.normalise(e_v)
    alpha = dicte.alphas_cumprod[t.cpu()].to(e_v.device, e_v.dtype)[:, None, None]
    noisy = alpha.sqrt() * target + (1 - alpha).sqrt() * epsilon
    prediction = dicte(noisy, t, speech, identity, dicte.normalise(condition)).float()
    return (prediction - target).square().mean(dim=(1, 2)), dicte.denormalise(prediction)


def _dicte_draws(generator: torch.Generator, train_steps: int, shape, drop_prob: float):
    t = torch.randint(0, train_steps, (1,), generator=generator)
    epsilon = torch.randn((1, *shape), generator=generator)
    drop = torch.rand(1, generator=generator) < drop_prob
    return t, epsilon, drop


def lip_scale_loss(l_a: torch.Tensor, l_v: torch.Tensor) -> torch.Tensor:
    """Per-clip ``(log |l_a| - log |l_v|)^2`` averaged over frames: ``[B]``."""
    ratio = torch.log(l_a.norm(dim=-1) + _EPS) - torch.log(l_v.norm(dim=-1) + _EPS)
    return ratio.square().mean(dim=1)


def top1_accuracy(l_a: torch.Tensor, l_v: torch.Tensor) -> torch.Tensor:
    """Share of audio frames whose most similar visual frame (cosine, over the batch) is their own."""
    audio = F.normalize(l_a.flatten(0, 1).float(), dim=-1)
    visual = F.normalize(l_v.flatten(0, 1).float(), dim=-1)
    best = (audio @ visual.T).argmax(dim=1)
    return (best == torch.arange(len(best), device=best.device)).float().mean()


def _spread(codes: list[torch.Tensor]) -> float | None:
    """Mean distance between the per-frame codes of different emotions (0 = conditions ignored);
    ``None`` with fewer than two emotions."""
    pairs = [(a - b).norm(dim=-1).mean() for i, a in enumerate(codes) for b in codes[i + 1:]]
    return float(torch.stack(pairs).mean()) if pairs else None
