"""V-AID: the Audio-lip Projector's shapes, and the pull and push losses doing what they claim."""

import pytest
import torch

from emotivetalk_core.configs import get_config
from emotivetalk_core.networks.dicte import DiCTE
from emotivetalk_core.networks.vaid import AudioLipProjector, pull_loss, push_loss

CFG = get_config("tiny")
SPEECH_DIM, LIP_DIM, EXP_DIM = CFG["vaid"]["speech_dim"], CFG["vaid"]["lip_dim"], CFG["dicte"]["exp_dim"]


def _projector() -> AudioLipProjector:
    torch.manual_seed(0)
    return AudioLipProjector(CFG["vaid"])


def _toy_batch(batch: int = 4, frames: int = 8) -> dict:
    """Speech and targets that depend on it: mouths follow the speech, expressions partly too."""
    g = torch.Generator().manual_seed(1)
    speech = torch.randn(batch, frames, 1, SPEECH_DIM, generator=g)
    flat = speech[:, :, 0]
    return {
        "speech": speech,
        "l_v": torch.tanh(flat @ torch.randn(SPEECH_DIM, LIP_DIM, generator=g) / 4),
        "e_v": torch.tanh(flat @ torch.randn(SPEECH_DIM, EXP_DIM, generator=g) / 4),
        "identity": torch.randn(batch, CFG["dicte"]["id_dim"], generator=g),
        "condition": torch.randn(batch, EXP_DIM, generator=g),
        "uncond": torch.randn(batch, EXP_DIM, generator=g),
    }


@pytest.mark.parametrize("frames", [1, 7, 40])
def test_projector_gives_one_lip_embedding_per_frame(frames):
    speech = torch.randn(2, frames, 1, SPEECH_DIM)
    assert _projector()(speech).shape == (2, frames, LIP_DIM)


def test_projector_refuses_features_from_another_speech_encoder():
    with pytest.raises(ValueError, match="another speech encoder"):
        _projector()(torch.randn(2, 5, 3, SPEECH_DIM))


def test_pull_loss_is_lower_for_matching_frames_than_for_shuffled_ones():
    g = torch.Generator().manual_seed(2)
    l_v = torch.randn(3, 10, LIP_DIM, generator=g)
    l_a = l_v + 0.3 * torch.randn(l_v.shape, generator=g)
    frames_shuffled = l_a[:, torch.randperm(10, generator=g)]
    clips_shuffled = l_a[torch.tensor([1, 2, 0])]
    matched = pull_loss(l_a, l_v)
    assert matched < 0.5 * pull_loss(frames_shuffled, l_v)
    assert matched < 0.5 * pull_loss(clips_shuffled, l_v)


def test_pull_loss_ignores_the_scale_of_the_embeddings():
    l_v = torch.randn(2, 6, LIP_DIM, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(pull_loss(5 * l_v, l_v), pull_loss(l_v, l_v))


def test_push_loss_measures_cross_correlation_across_different_dims():
    g = torch.Generator().manual_seed(4)
    lip = torch.randn(8, 250, LIP_DIM, generator=g)
    independent = torch.randn(8, 250, 5, generator=g)
    mixed = lip[..., :5] @ torch.randn(5, 5, generator=g)
    assert push_loss(lip, independent) < 0.005
    assert push_loss(lip, mixed) > 0.02
    # Standardised features: neither scale nor offset of a stream changes the loss.
    torch.testing.assert_close(push_loss(3 * lip + 1, mixed), push_loss(lip, mixed))
    assert push_loss(lip, lip) <= 1


def test_pull_and_push_training_of_the_projector():
    batch = _toy_batch()
    projector = _projector()
    optimizer = torch.optim.Adam(projector.parameters(), lr=3e-3)

    def losses():
        l_a = projector(batch["speech"])
        return pull_loss(l_a, batch["l_v"]), push_loss(l_a, batch["e_v"])

    pull_before, push_before = (loss.item() for loss in losses())
    for _ in range(40):
        pull, push = losses()
        optimizer.zero_grad()
        (pull + push).backward()
        optimizer.step()
    pull_after, push_after = (loss.item() for loss in losses())
    # Measured: pull 6.10 -> 0.04, pull + push 6.16 -> 0.08.
    assert pull_after < 0.5 * pull_before
    assert pull_after + push_after < 0.5 * (pull_before + push_before)


def test_push_loss_decorrelates_streams_that_start_entangled():
    batch = _toy_batch()
    projector = _projector()
    with torch.no_grad():
        entangled = projector(batch["speech"])[..., :EXP_DIM] @ torch.randn(EXP_DIM, EXP_DIM)
    optimizer = torch.optim.Adam(projector.parameters(), lr=3e-3)
    before = push_loss(projector(batch["speech"]), entangled).item()
    for _ in range(30):
        loss = push_loss(projector(batch["speech"]), entangled)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = push_loss(projector(batch["speech"]), entangled).item()
    assert after < 0.5 * before


def test_full_vaid_objective_trains_both_streams():
    """Pull + Di-CTE + push, with the push between l_a and Di-CTE's prediction e_a."""
    batch = _toy_batch()
    projector = _projector()
    dicte = DiCTE(CFG["dicte"])
    optimizer = torch.optim.Adam([*projector.parameters(), *dicte.parameters()], lr=3e-3)
    noise = torch.Generator().manual_seed(5)

    def losses(generator):
        l_a = projector(batch["speech"])
        exp, e_a = dicte.loss(batch["e_v"], batch["speech"], batch["identity"], batch["condition"],
                              batch["uncond"], drop_prob=0.1, generator=generator)
        return pull_loss(l_a, batch["l_v"]), exp, push_loss(l_a, e_a)

    def probe():
        with torch.no_grad():
            return [loss.item() for loss in losses(torch.Generator().manual_seed(6))]

    before = probe()
    for _ in range(40):
        optimizer.zero_grad()
        sum(losses(noise)).backward()
        optimizer.step()
    after = probe()
    assert after[0] < 0.5 * before[0], (before, after)
    assert after[1] < 0.5 * before[1], (before, after)
    assert sum(after) < 0.5 * sum(before), (before, after)


def test_losses_refuse_streams_that_are_not_frame_aligned():
    with pytest.raises(ValueError, match="same batch and frames"):
        push_loss(torch.randn(2, 5, LIP_DIM), torch.randn(2, 6, EXP_DIM))
    with pytest.raises(ValueError, match="lip_dim"):
        pull_loss(torch.randn(2, 5, LIP_DIM), torch.randn(2, 5, LIP_DIM + 1))
