"""Mapping: utterance-level emotion sources into Di-CTE's condition space.

Figure panel (b): the frozen **Mapping** turns an utterance source S_U (an emotion image or a
text prompt, panel (a)) into Di-CTE's "conditional" condition. We add emotion labels (the
paper's demos are labelled neutral/angry/happy/surprised). The condition space is the Exp
Encoder's code space: Di-CTE's "unconditional" condition is Exp Encoder(x_ref), so every source
is mapped to where a face showing that emotion would land.

Takes the ``mapping`` config dict: ``exp_dim``, ``text_width``, ``labels`` and, for a model
trained with a pretrained text encoder, ``text_encoder`` (:func:`networks.text.text_record`).
"""

from __future__ import annotations

import torch
from torch import nn

# The built-in text encoder reads UTF-8 bytes, so it has no tokenizer file to download.
_BYTE_VOCAB = 256
_PAD = _BYTE_VOCAB
# Emotion prompts are a few words ("speak seriously"); 128 bytes leaves room for a sentence.
MAX_TEXT_BYTES = 128
_TEXT_LAYERS = 2
_TEXT_HEAD_DIM = 64


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))


def normalise_text(text: str) -> str:
    """Lower-case and collapse whitespace: "Speak  Seriously" and "speak seriously" are one
    prompt, which a small byte-level encoder could not learn from little data."""
    return " ".join(text.lower().split())


class ByteTextEncoder(nn.Module):
    """Byte embedding + learned positions + a couple of transformer layers + masked mean pool:
    a list of strings -> ``[N, width]``."""

    def __init__(self, width: int):
        super().__init__()
        self.bytes = nn.Embedding(_BYTE_VOCAB + 1, width, padding_idx=_PAD)
        self.position = nn.Parameter(torch.randn(MAX_TEXT_BYTES, width) * 0.02)
        # No dropout: the encoder is frozen when it is used (Di-CTE training and inference),
        # and dropout would make one prompt give different conditions between runs.
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, max(1, width // _TEXT_HEAD_DIM), dim_feedforward=2 * width,
                dropout=0.0, activation="gelu", batch_first=True, norm_first=True,
            )
            for _ in range(_TEXT_LAYERS)
        )
        self.norm = nn.LayerNorm(width)

    def encode_bytes(self, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded byte ids ``[N, T]`` and the padding mask ``[N, T]`` (True = padding)."""
        encoded = [normalise_text(text).encode("utf-8") for text in texts]
        for text, data in zip(texts, encoded, strict=True):
            if not data:
                raise ValueError(f"emotion text {text!r} is empty; describe the emotion, e.g. 'speak seriously'")
            if len(data) > MAX_TEXT_BYTES:
                raise ValueError(
                    f"emotion text is {len(data)} bytes long; the Mapping reads at most {MAX_TEXT_BYTES}: "
                    f"shorten {text[:40]!r}..."
                )
        length = max(len(data) for data in encoded)
        ids = torch.full((len(encoded), length), _PAD, dtype=torch.long)
        for row, data in enumerate(encoded):
            ids[row, : len(data)] = torch.tensor(list(data), dtype=torch.long)
        ids = ids.to(device)
        return ids, ids == _PAD

    def forward(self, texts: list[str]) -> torch.Tensor:
        ids, padding = self.encode_bytes(texts, self.position.device)
        x = self.bytes(ids) + self.position[: ids.shape[1]]
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)
        keep = (~padding).unsqueeze(-1).to(x.dtype)
        # Padding positions may hold anything (the fused kernel writes zeros, the plain path
        # values): only real bytes enter the mean, so a prompt's code does not depend on the
        # longest prompt in its batch.
        pooled = (x * keep).sum(dim=1) / keep.sum(dim=1)
        return self.norm(pooled)


class Mapping(nn.Module):
    """Mapping (figure panel (b), frozen at V-AID training): labels, texts or Exp Encoder codes
    of emotion images -> ``[N, exp_dim]`` Di-CTE conditions."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        exp_dim, width = config["exp_dim"], config["text_width"]
        self.labels = [label.lower() for label in config["labels"]]
        self.label_embedding = nn.Embedding(len(self.labels), exp_dim)
        # A pretrained text encoder (networks.text) lives outside the model file: only the head
        # that projects its embeddings is the Mapping's. Without one, the built-in byte encoder.
        self.text_record = config.get("text_encoder")
        self.text_encoder = None if self.text_record else ByteTextEncoder(width)
        self.text_head = _mlp(self.text_record["dim"] if self.text_record else width, width, exp_dim)
        self.image_head = _mlp(exp_dim, 2 * exp_dim, exp_dim)
        # An image's Exp Encoder code is already in the condition space; the head learns a
        # correction (e.g. removing the source face's identity), so it starts as the identity.
        nn.init.zeros_(self.image_head[-1].weight)
        nn.init.zeros_(self.image_head[-1].bias)

    def label_index(self, label: str) -> int:
        key = label.strip().lower()
        if key not in self.labels:
            raise ValueError(f"unknown emotion label {label!r}; valid labels: {', '.join(self.labels)}")
        return self.labels.index(key)

    def from_label(self, labels: list[str]) -> torch.Tensor:
        """Emotion labels (case-insensitive) -> ``[N, exp_dim]``."""
        index = [self.label_index(label) for label in labels]
        index = torch.tensor(index, dtype=torch.long, device=self.label_embedding.weight.device)
        return self.label_embedding(index)

    def from_text(self, texts: list[str]) -> torch.Tensor:
        """Emotion prompts (at most :data:`MAX_TEXT_BYTES` UTF-8 bytes each) -> ``[N, exp_dim]``,
        with the built-in byte encoder (a model trained with a pretrained text encoder reads
        that encoder's embeddings instead: :meth:`from_text_embedding`)."""
        if self.text_encoder is None:
            raise ValueError(f"this model reads emotion text with the pretrained text encoder {self.text_record['name']} "
                             "it was trained with: in ComfyUI connect a CLIP of it to the 'clip' input of EmotiveTalk Emotion "
                             "Text (or Generate); on the command line pass --text-encoder FOLDER (that model's "
                             "transformers folder)")
        return self.text_head(self.text_encoder(texts))

    def from_text_embedding(self, embeddings: torch.Tensor) -> torch.Tensor:
        """A pretrained text encoder's prompt embeddings ``[N, D]`` -> ``[N, exp_dim]``."""
        if self.text_record is None:
            raise ValueError("this model's Mapping reads emotion text with its built-in byte encoder, not embeddings")
        if embeddings.ndim != 2 or embeddings.shape[1] != self.text_record["dim"]:
            raise ValueError(f"text embeddings must be [N, {self.text_record['dim']}], got {tuple(embeddings.shape)}")
        weight = self.text_head[0].weight
        return self.text_head(embeddings.to(weight.device, weight.dtype))

    def from_image(self, exp_codes: torch.Tensor) -> torch.Tensor:
        """Exp Encoder codes ``[N, exp_dim]`` of emotion images -> ``[N, exp_dim]``."""
        exp_codes = exp_codes.to(self.image_head[0].weight.dtype)
        return exp_codes + self.image_head(exp_codes)
