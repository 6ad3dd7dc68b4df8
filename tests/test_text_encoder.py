"""The text route with a pretrained text encoder: embeddings, the record in the model, refusals, ComfyUI's CLIP."""

from types import SimpleNamespace

import pytest
import torch

from emotivetalk_core.configs import get_config
from emotivetalk_core.networks.mapping import Mapping
from emotivetalk_core.networks.text import TEXT_PROBES, TransformersTextEncoder, text_record
from emotivetalk_core.pipeline import VAIDEmotionResolver
from text_models import tiny_text_model

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
    """What EmotiveTalk Emotion Text calls on a core CLIP: tokenize, then encode_from_tokens with the pooled output."""

    def __init__(self, encoder, pooled: bool = True):
        self.encoder, self.pooled = encoder, pooled

    def tokenize(self, text):
        return {"l": [text]}

    def encode_from_tokens(self, tokens, return_pooled=False):
        pooled = self.encoder(tokens["l"]).half() if self.pooled else None  # ComfyUI often runs CLIP in float16
        return torch.zeros(1, 77, 32), pooled


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


def test_comfyui_clip_gives_the_emotion_text_its_embedding(encoders):
    from nodes.emotion_nodes import EmotiveTalkEmotionText
    from nodes.stages import emotion_resolver

    trained_with, another = encoders
    vaid = _vaid(trained_with)
    (emotion,) = EmotiveTalkEmotionText().make(PROMPT, 1.0, clip=FakeCLIP(trained_with))
    code = emotion_resolver(vaid, emotion).text(PROMPT)
    torch.testing.assert_close(code, vaid.mapping.from_text_embedding(trained_with([PROMPT]))[0], rtol=0, atol=2e-3)
    (other,) = EmotiveTalkEmotionText().make(PROMPT, 1.0, clip=FakeCLIP(another))
    with pytest.raises(ValueError, match="not the text encoder"):
        emotion_resolver(vaid, other).text(PROMPT)
    with pytest.raises(ValueError, match="no pooled embedding"):
        EmotiveTalkEmotionText().make(PROMPT, 1.0, clip=FakeCLIP(trained_with, pooled=False))


def test_models_with_their_own_byte_encoder_ignore_a_connected_clip(encoders):
    from nodes.emotion_nodes import EmotiveTalkEmotionText
    from nodes.stages import emotion_resolver

    torch.manual_seed(0)
    vaid = SimpleNamespace(mapping=Mapping(get_config("tiny")["mapping"]).eval())
    (emotion,) = EmotiveTalkEmotionText().make(PROMPT, 1.0, clip=FakeCLIP(encoders[0]))
    with torch.no_grad():
        torch.testing.assert_close(emotion_resolver(vaid, emotion).text(PROMPT), vaid.mapping.from_text([PROMPT])[0])
