"""Tiny random transformers text models saved as local folders (no download): stand-ins for the
pretrained text encoder a real model is trained with (tests/test_text_encoder.py, test_train_stages.py)."""

from __future__ import annotations

import re
from pathlib import Path

from emotivetalk_core.networks.text import TEXT_PROBES
from emotivetalk_core.train.paraphrases import HELD_OUT, PARAPHRASES

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_text_model(folder: Path, seed: int) -> Path:
    """A 1-layer BERT of width 32 whose vocabulary holds every word of the paraphrases and probes."""
    import torch
    from transformers import BertConfig, BertModel

    size = _vocabulary(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=size, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


def tiny_t5_model(folder: Path, seed: int) -> Path:
    """A 1-layer T5 encoder of width 32, saved as T5 text encoders ship (T5EncoderModel: no decoder),
    with the same vocabulary (pad id 0, as T5's)."""
    import torch
    from transformers import T5Config, T5EncoderModel

    size = _vocabulary(folder)
    torch.manual_seed(seed)
    config = T5Config(vocab_size=size, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2, pad_token_id=0)
    T5EncoderModel(config).save_pretrained(folder)
    return folder


def tiny_clip_model(folder: Path, seed: int) -> Path:
    """A whole CLIP (text and vision towers, width 32), saved as CLIP-L usually is, with the same
    vocabulary ([SEP] ends a prompt: its state is the pooled output)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    size = _vocabulary(folder)
    torch.manual_seed(seed)
    text = dict(vocab_size=size, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1,
                max_position_embeddings=64, pad_token_id=0, bos_token_id=SPECIALS.index("[CLS]"),
                eos_token_id=SPECIALS.index("[SEP]"))
    vision = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1, image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    return folder


def _vocabulary(folder: Path) -> int:
    """Writes a word-level tokenizer of every word of the paraphrases and probes; returns its size."""
    from transformers import BertTokenizer

    prompts = [*TEXT_PROBES, *(p for group in (PARAPHRASES, HELD_OUT) for prompts in group.values() for p in prompts)]
    words = sorted({word for prompt in prompts for word in re.findall(r"\w+|[^\w\s]", prompt.lower())})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIALS + words) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return len(SPECIALS) + len(words)
