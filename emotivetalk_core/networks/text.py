"""Pretrained text encoders for the Mapping's text route, and the record that pins one to a model.

A byte-level encoder trained from scratch on a few templates per label cannot understand "Speak
seriously" or "Be cheerful and say that sentence". A model trained with a pretrained text encoder
(``init.text_encoder``: a local transformers folder) learns the Mapping's projection of that
encoder's sentence embedding from many paraphrases per emotion, and its file records which
encoder it was (:func:`text_record`): a name, the embedding size and the embeddings of a few
fixed probe prompts. At inference any source of the same embeddings serves: on the command line
the same folder (:class:`TransformersTextEncoder`), in ComfyUI a core CLIP input that loads the
same weights. :func:`check_text_encoder` compares the probes, so another encoder (which would
give meaningless conditions) is refused with what to connect instead.

An embedder is any callable ``list[str] -> [N, D]`` float tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

Embedder = Callable[[list[str]], torch.Tensor]

# Embedded at training and again at inference: the same encoder gives the same directions.
TEXT_PROBES = ("happy", "speak seriously", "a frightened face")
# Cosine similarity each probe must reach: float16 against float32 weights stays above 0.999,
# two different encoders (even of one architecture) fall far below.
PROBE_SIMILARITY = 0.99


@dataclass
class TextEmbedding:
    """A prompt's embedding ``[D]`` and the probes' ``[len(TEXT_PROBES), D]`` by the same encoder."""

    vector: torch.Tensor
    probes: torch.Tensor


def embed_prompt(embed: Embedder, prompt: str) -> TextEmbedding:
    """The prompt and the probes in one call of ``embed``."""
    vectors = embed([prompt, *TEXT_PROBES]).detach().float().cpu()
    return TextEmbedding(vectors[0], vectors[1:])


def text_record(name: str, embed: Embedder) -> dict:
    """What a model file records about the text encoder its Mapping was trained on."""
    probes = embed(list(TEXT_PROBES)).detach().float().cpu()
    return {"kind": "pretrained", "name": name, "dim": int(probes.shape[1]),
            "probes": {text: [float(v) for v in row] for text, row in zip(TEXT_PROBES, probes, strict=True)}}


def check_text_encoder(record: dict, probes: torch.Tensor, given: str) -> None:
    """Refuse embeddings (``probes`` of :data:`TEXT_PROBES`) from another encoder than ``record``'s."""
    expected = torch.tensor([record["probes"][text] for text in TEXT_PROBES])
    wanted = f"{record['name']} ({record['dim']}-dimensional embeddings)"
    if probes.shape != expected.shape:
        raise ValueError(f"{given} gives {probes.shape[-1]}-dimensional text embeddings; this model's Mapping was "
                         f"trained on {wanted}: use that text encoder")
    similarity = torch.nn.functional.cosine_similarity(probes.float(), expected, dim=1)
    if float(similarity.min()) < PROBE_SIMILARITY:
        raise ValueError(f"{given} is not the text encoder this model's Mapping was trained on ({wanted}): its "
                         f"embeddings of the probe prompts differ (cosine {float(similarity.min()):.3f}); use that "
                         "text encoder")


class TransformersTextEncoder:
    """Sentence embeddings ``[N, D]`` from a local transformers text-model folder (no download).

    CLIP text models give their pooled (end-of-text) embedding before the text projection: what
    ComfyUI's CLIP gives as its pooled output for CLIP-L (Load CLIP, type stable_diffusion or
    sdxl), whatever the folder's architecture; other encoders (BERT, T5's encoder, ...) the mean
    of the last hidden states over the prompt's tokens, end token included: what the node's
    embedder takes from a ComfyUI encoder without a pooled output (nodes.emotion_nodes.clip_embedder).
    """

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu"):
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"text encoder folder {folder} has no config.json: give a local transformers "
                                    "text-model folder (saved with save_pretrained, tokenizer files included)")
        from transformers import AutoConfig, AutoTokenizer

        self.name = folder.name
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        kind = AutoConfig.from_pretrained(folder, local_files_only=True).model_type
        self.model = _text_model_class(kind).from_pretrained(folder, local_files_only=True)
        self.model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        output = self.model(**tokens)
        if self.model.config.model_type.startswith("clip"):
            return output.pooler_output.float().cpu()
        keep = tokens["attention_mask"].unsqueeze(-1).to(output.last_hidden_state.dtype)
        return ((output.last_hidden_state * keep).sum(1) / keep.sum(1)).float().cpu()


def _text_model_class(model_type: str):
    """The transformers class that loads a folder's text model alone: a whole CLIP (text and
    vision, how CLIP-L is usually saved) loads its text tower, whose forward needs no image; T5
    and UMT5 their encoder, not the encoder-decoder whose forward wants decoder inputs (with a
    randomly initialised decoder as large as the encoder)."""
    from transformers import AutoModel, AutoModelForTextEncoding, CLIPTextModel
    from transformers.models.auto.modeling_auto import MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES

    if model_type == "clip":
        return CLIPTextModel
    return AutoModelForTextEncoding if model_type in MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES else AutoModel
