"""The text route with a pretrained text encoder: embeddings, the record in the model, refusals, ComfyUI's CLIP."""

import copy
from types import SimpleNamespace

import pytest
import torch

from emotivetalk_core.configs import get_config
from emotivetalk_core.networks.mapping import Mapping
from emotivetalk_core.networks.text import TEXT_PROBES, TransformersTextEncoder, text_record
from emotivetalk_core.pipeline import VAIDEmotionResolver
from text_models import tiny_clip_model, tiny_t5_model, tiny_text_model

PROMPT = "be cheerful and say that sentence"


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """Two different text encoders of one architecture: the one a model was trained with, another."""
    root = tmp_path_factory.mktemp("text")
    return (TransformersTextEncoder(tiny_text_model(root / "trained-with", seed=0)),
            TransformersTextEncoder(tiny_text_model(root / "another", seed=1)))


def _vaid(encoder) -> SimpleNamespace:
    torch.manual_seed(0)
    config = {**get_config("tiny")["mapping"], "text_encoder": text_record("trained-with", encoder)}
    return SimpleNamespace(mapping=Mapping(config).eval())


class FakeCLIP:
    """A core CLIP as EmotiveTalk Emotion Text calls it, shaped as ComfyUI's: ``tokenize`` appends the
    end token and pads up to a minimum length (word ids on request), ``encode_from_tokens`` gives
    token states and the pooled output. ``pooled``: "yes" (CLIP), "none" (T5 alone) or "zeros" (SD3
    with only T5 loaded). Every token state is the prompt's embedding by ``encoder``, shifted by the
    number of pads the encoder was given: pads that reach an encoder change every state."""

    END, PAD, LENGTH = "</s>", "<pad>", 16

    def __init__(self, encoder, pooled: str = "yes"):
        self.encoder, self.pooled, self.layer = encoder, pooled, None

    def clone(self):
        return copy.copy(self)

    def clip_layer(self, layer):  # CLIP Set Last Layer
        self.layer = layer

    def tokenize(self, text, return_word_ids=False):
        batch = [(word, 1.0, i + 1) for i, word in enumerate(text.split())] + [(self.END, 1.0, 0)]
        batch += [(self.PAD, 1.0, 0)] * (self.LENGTH - len(batch))
        return {"l": [batch if return_word_ids else [token[:2] for token in batch]]}

    def encode_from_tokens(self, tokens, return_pooled=False):
        (batch,) = tokens["l"]
        words = [token[0] for token in batch if token[0] not in (self.END, self.PAD)]
        embedding = self.encoder([" ".join(words)]).half()  # ComfyUI often runs text encoders in float16
        states = embedding.expand(len(batch), -1) + sum(token[0] == self.PAD for token in batch)
        states = states if self.layer is None else states + 100.0  # another layer's states
        pooled = {"yes": embedding, "none": None, "zeros": torch.zeros_like(embedding)}[self.pooled]
        return (states[None], pooled) if return_pooled else states[None]


def test_a_prompts_embedding_does_not_depend_on_its_batch(encoders):
    encoder = encoders[0]
    both = encoder(["happy", PROMPT])
    assert both.shape == (2, 32)
    torch.testing.assert_close(encoder(["happy"])[0], both[0], rtol=0, atol=1e-5)
    assert not torch.allclose(both[0], both[1], atol=1e-3)


def test_the_model_records_its_encoder_and_reads_prompts_through_it(encoders):
    trained_with, another = encoders
    vaid = _vaid(trained_with)
    assert vaid.mapping.text_encoder is None and list(vaid.mapping.text_record["probes"]) == list(TEXT_PROBES)
    expected = vaid.mapping.from_text_embedding(trained_with([PROMPT]))[0]
    torch.testing.assert_close(VAIDEmotionResolver(vaid, text_encoder=trained_with).text(PROMPT), expected)
    with pytest.raises(ValueError, match="not the text encoder this model's Mapping was trained on"):
        VAIDEmotionResolver(vaid, text_encoder=another).text(PROMPT)
    with pytest.raises(ValueError, match=r"--text-encoder FOLDER.*|'clip' input"):
        VAIDEmotionResolver(vaid).text(PROMPT)


@pytest.mark.parametrize("pooled", ["yes", "none", "zeros"])
def test_comfyui_clip_gives_the_emotion_text_its_embedding(encoders, pooled):
    """With a pooled output, that; without one, the mean of the last states of the prompt's own
    tokens (end token included, pads never given to the encoder), whatever layer CLIP Set Last
    Layer chose for the workflow's prompts."""
    from nodes.emotion_nodes import EmotiveTalkEmotionText
    from nodes.stages import emotion_resolver

    trained_with, another = encoders
    vaid = _vaid(trained_with)
    clip = FakeCLIP(trained_with, pooled)
    clip.clip_layer(-2)  # a CLIP Set Last Layer upstream changes the prompts of the workflow, not this
    (emotion,) = EmotiveTalkEmotionText().make(PROMPT, 1.0, clip=clip)
    assert clip.layer == -2
    code = emotion_resolver(vaid, emotion).text(PROMPT)
    torch.testing.assert_close(code, vaid.mapping.from_text_embedding(trained_with([PROMPT]))[0], rtol=0, atol=2e-3)
    (other,) = EmotiveTalkEmotionText().make(PROMPT, 1.0, clip=FakeCLIP(another, pooled))
    with pytest.raises(ValueError, match="not the text encoder"):
        emotion_resolver(vaid, other).text(PROMPT)


@pytest.mark.parametrize("batch, kept", [
    ([(49406, 1.0, 0), (320, 1.0, 1), (321, 1.0, 2), (49407, 1.0, 0), (49407, 1.0, 0)], 4),  # CLIP: start, pads = end
    ([(10, 1.0, 1), (11, 1.0, 1), (12, 1.0, 2), (1, 1.0, 0), (0, 1.0, 0), (0, 1.0, 0)], 4),  # T5: end, then pad 0
    ([(10, 1.0, 1), (1, 1.0, 0)], 2),  # no padding
])
def test_comfyui_token_batches_lose_their_padding_and_keep_their_end_token(batch, kept):
    from nodes.emotion_nodes import _without_padding

    assert _without_padding(batch) == batch[:kept]


def test_a_t5_folder_loads_its_encoder_alone_and_embeds_the_mean_of_its_tokens(tmp_path):
    """T5 text encoders ship as the encoder alone: it loads as such (not as an encoder-decoder whose
    forward wants decoder inputs) and embeds a prompt as the mean of its tokens' last states."""
    encoder = TransformersTextEncoder(tiny_t5_model(tmp_path / "t5", seed=0))
    assert type(encoder.model).__name__ == "T5EncoderModel"
    both = encoder(["happy", PROMPT])
    torch.testing.assert_close(encoder(["happy"])[0], both[0], rtol=0, atol=1e-5)
    tokens = encoder.tokenizer([PROMPT], return_tensors="pt")
    with torch.no_grad():
        states = encoder.model(**tokens).last_hidden_state[0]
    torch.testing.assert_close(both[1], states.mean(0), rtol=0, atol=1e-5)


def test_models_with_their_own_byte_encoder_ignore_a_connected_clip(encoders):
    from nodes.emotion_nodes import EmotiveTalkEmotionText
    from nodes.stages import emotion_resolver

    torch.manual_seed(0)
    vaid = SimpleNamespace(mapping=Mapping(get_config("tiny")["mapping"]).eval())
    (emotion,) = EmotiveTalkEmotionText().make(PROMPT, 1.0, clip=FakeCLIP(encoders[0]))
    with torch.no_grad():
        torch.testing.assert_close(emotion_resolver(vaid, emotion).text(PROMPT), vaid.mapping.from_text([PROMPT])[0])


def test_a_whole_clip_folder_embeds_with_its_text_tower(tmp_path):
    """CLIP-L usually ships as the whole CLIP (text and vision): its text tower loads alone and
    gives its pooled output before the projection (the whole model's forward wants an image)."""
    from transformers import CLIPModel

    folder = tiny_clip_model(tmp_path / "clip", seed=0)
    encoder = TransformersTextEncoder(folder)
    assert type(encoder.model).__name__ == "CLIPTextModel"
    tokens = encoder.tokenizer([PROMPT], return_tensors="pt")
    with torch.no_grad():
        expected = CLIPModel.from_pretrained(folder).text_model(**tokens).pooler_output
    torch.testing.assert_close(encoder([PROMPT]), expected, rtol=0, atol=1e-5)
