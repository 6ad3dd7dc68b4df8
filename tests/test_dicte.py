"""Di-CTE: deterministic sampling, one code per frame, guidance meaning, condition dropout, learning."""

import pytest
import torch

from emotivetalk_core.configs import get_config
from emotivetalk_core.networks.dicte import DiCTE, cosine_alphas_cumprod

CFG = get_config("tiny")["dicte"]
EXP_DIM, SPEECH_DIM, ID_DIM = CFG["exp_dim"], CFG["speech_dim"], CFG["id_dim"]
STEPS = 10


def _dicte(randomise_zero_init: bool = True) -> DiCTE:
    """A tiny Di-CTE. Its adaLN gates start at zero, where the condition has no effect at all;
    randomising them makes conditional and unconditional predictions differ, so the guidance
    tests can fail."""
    torch.manual_seed(0)
    model = DiCTE(CFG).eval()
    if randomise_zero_init:
        with torch.no_grad():
            for parameter in model.parameters():
                if not parameter.any():
                    parameter.normal_(std=0.2)
    return model


def _inputs(frames: int = 7, batch: int = 2, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "speech": torch.randn(batch, frames, 1, SPEECH_DIM, generator=g),
        "identity": torch.randn(batch, ID_DIM, generator=g),
        "condition": torch.randn(batch, EXP_DIM, generator=g),
    }


def _uncond(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, EXP_DIM, generator=torch.Generator().manual_seed(9))


def test_cosine_schedule_runs_from_clean_to_noise():
    alphas = cosine_alphas_cumprod(CFG["train_steps"])
    assert alphas.shape == (CFG["train_steps"],)
    assert (alphas[1:] < alphas[:-1]).all()
    assert alphas[0] > 0.999 and alphas[-1] < 1e-3


def test_sampling_is_deterministic_for_a_seed():
    model, inputs = _dicte(), _inputs()
    first = model.sample(**inputs, steps=STEPS, generator=3)
    again = model.sample(**inputs, steps=STEPS, generator=3)
    other = model.sample(**inputs, steps=STEPS, generator=4)
    from_generator = model.sample(**inputs, steps=STEPS, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert torch.equal(from_generator, model.sample(**inputs, steps=STEPS, generator=torch.Generator().manual_seed(3)))
    assert not torch.allclose(first, other, atol=1e-3)


def test_a_frames_starting_noise_depends_on_the_seed_and_the_frame_alone():
    from emotivetalk_core.networks.dicte import _initial_noise
    from emotivetalk_core.sampling import initial_noise

    long, short = _initial_noise(2, 60, EXP_DIM, 3), _initial_noise(2, 7, EXP_DIM, 3)
    assert torch.equal(long[:, :7], short)
    # Not the latents' noise of the same seed (ETHD draws from it too).
    assert not torch.allclose(short, initial_noise(3, 7, (4, 2, 2), batch_size=2).flatten(2)[..., :EXP_DIM])


def _frame_local(model: DiCTE) -> DiCTE:
    """Di-CTE with no exchange between frames (zero position convolution and attention output),
    so windowing cannot change what a frame's prediction is, only how the windows are joined."""
    with torch.no_grad():
        model.position.weight.zero_()
        model.position.bias.zero_()
        for layer in model.layers:
            for parameter in layer.attn_out.parameters():
                parameter.zero_()
    return model


def test_long_sequences_run_in_training_windows_fused_into_one_trajectory():
    # A 60-frame sequence in 25-frame windows: every network call sees at most 25 frames, and
    # with nothing exchanged between frames the fused windows give what one window over all 60
    # frames gives: one trajectory per frame, no independently sampled chunks crossfaded.
    model = _frame_local(_dicte())
    inputs, guidance = _inputs(60), torch.linspace(0, 1.5, 60)
    calls = []
    handle = model.layers[0].register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[1]))
    windowed = model.sample(**inputs, uncond_condition=_uncond(), guidance=guidance, steps=STEPS, generator=3)
    handle.remove()
    assert model.window == 25 and calls and max(calls) == 25
    model.window = 60
    whole = model.sample(**inputs, uncond_condition=_uncond(), guidance=guidance, steps=STEPS, generator=3)
    torch.testing.assert_close(windowed, whole, rtol=0, atol=1e-5)


def test_windows_attend_within_the_training_window():
    # Windows (0, 25), (18, 43), (35, 60). Attention stays within a window: speech changed from
    # frame 45 on reaches frames 35..42 in the first step, the middle window's frames in the
    # second, so after two steps the first window's own frames (0..17) are untouched.
    model, inputs = _dicte(), _inputs(60)
    first = model.sample(**inputs, steps=2, generator=3)
    changed = dict(inputs, speech=inputs["speech"].clone())
    changed["speech"][:, 45:] += 1.0
    second = model.sample(**changed, steps=2, generator=3)
    assert torch.equal(first[:, :18], second[:, :18])
    assert not torch.allclose(first[:, 45:], second[:, 45:], atol=1e-3)


@pytest.mark.parametrize("frames", [1, 7, 40])
def test_one_expression_code_per_video_frame(frames):
    codes = _dicte().sample(**_inputs(frames), uncond_condition=_uncond(), guidance=1.5, steps=STEPS, generator=0)
    assert codes.shape == (2, frames, EXP_DIM)
    assert torch.isfinite(codes).all()


def test_guidance_zero_is_the_portraits_own_expression_and_one_the_requested():
    model, inputs, uncond = _dicte(), _inputs(), _uncond()
    conditional = model.sample(**inputs, steps=STEPS, generator=5)
    unconditional = model.sample(**{**inputs, "condition": uncond}, steps=STEPS, generator=5)
    assert not torch.allclose(conditional, unconditional, atol=1e-2), "the condition must matter for this test"

    def guided(scale):
        return model.sample(**inputs, uncond_condition=uncond, guidance=scale, steps=STEPS, generator=5)

    # Close, not bitwise: guided sampling runs both passes as one batch.
    torch.testing.assert_close(guided(0.0), unconditional, rtol=0, atol=1e-5)
    torch.testing.assert_close(guided(1.0), conditional, rtol=0, atol=1e-5)
    assert not torch.allclose(guided(2.0), conditional, atol=1e-2)


def test_guidance_per_frame_tensor_equals_the_same_number():
    model, inputs, uncond = _dicte(), _inputs(), _uncond()
    number = model.sample(**inputs, uncond_condition=uncond, guidance=1.7, steps=STEPS, generator=2)
    per_frame = model.sample(**inputs, uncond_condition=uncond, guidance=torch.full((7,), 1.7), steps=STEPS, generator=2)
    torch.testing.assert_close(per_frame, number)


def test_one_condition_equals_the_same_condition_on_every_frame():
    model, inputs = _dicte(), _inputs()
    per_frame = {**inputs, "condition": inputs["condition"][:, None].expand(-1, 7, -1)}
    torch.testing.assert_close(
        model.sample(**per_frame, steps=STEPS, generator=1), model.sample(**inputs, steps=STEPS, generator=1)
    )


def test_guidance_without_an_unconditional_condition_is_refused():
    with pytest.raises(ValueError, match="uncond_condition"):
        _dicte().sample(**_inputs(), guidance=2.0, steps=STEPS)


def test_condition_dropout_trains_the_unconditional_prediction():
    model, inputs, uncond = _dicte(), _inputs(), _uncond()
    e_v = torch.randn(2, 7, EXP_DIM, generator=torch.Generator().manual_seed(7))

    def loss(condition, drop_prob):
        generator = torch.Generator().manual_seed(8)
        with torch.no_grad():
            return model.loss(e_v, inputs["speech"], inputs["identity"], condition, uncond, drop_prob, generator)[0]

    assert torch.equal(loss(inputs["condition"], 1.0), loss(uncond, 0.0))
    assert not torch.equal(loss(inputs["condition"], 0.0), loss(uncond, 0.0))


def test_dicte_loss_goes_down_on_a_toy_batch():
    model = _dicte(randomise_zero_init=False).train()
    inputs, uncond = _inputs(frames=8, batch=4), _uncond(batch=4)
    g = torch.Generator().manual_seed(11)
    # Expression that follows the speech and the requested emotion, as Di-CTE must learn.
    e_v = torch.tanh(inputs["speech"][:, :, 0] @ torch.randn(SPEECH_DIM, EXP_DIM, generator=g) / 4
                     + inputs["condition"][:, None])
    args = (e_v, inputs["speech"], inputs["identity"], inputs["condition"], uncond, 0.1)

    def probe():
        with torch.no_grad():
            return sum(model.loss(*args, torch.Generator().manual_seed(s))[0].item() for s in range(8)) / 8

    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = probe()
    for _ in range(50):
        loss, _ = model.loss(*args, g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = probe()
    # Measured: 0.62 -> 0.04.
    assert after < 0.5 * before, (before, after)


def test_codes_are_diffused_in_units_of_their_spread_and_returned_in_the_exp_space():
    """Exp codes spread ~0.02 against unit noise: Di-CTE normalises them by the statistics in
    its config and gives codes back in the Exp Encoder's space."""
    mean = torch.linspace(-0.3, 0.3, EXP_DIM)
    std = torch.full((EXP_DIM,), 0.02)
    dicte = DiCTE({**CFG, "code_mean": mean.tolist(), "code_std": std.tolist()}).eval()
    torch.nn.init.zeros_(dicte.head[-1].weight)
    torch.nn.init.zeros_(dicte.head[-1].bias)  # the network predicts 0: the data's mean code
    inputs = _inputs()
    codes = dicte.sample(**inputs, uncond_condition=_uncond(), guidance=1.5, steps=STEPS)
    torch.testing.assert_close(codes, mean.expand_as(codes))  # not 0: back in the Exp Encoder's space

    z = torch.randn(2, 7, EXP_DIM, generator=torch.Generator().manual_seed(4))
    loss, e_a = dicte.loss(mean + std * z, inputs["speech"], inputs["identity"], inputs["condition"], _uncond(),
                           generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(loss, z.square().mean())  # the error in units of the spread, not of 0.02
    torch.testing.assert_close(e_a, mean.expand_as(e_a))
    assert dicte.config["code_std"] == pytest.approx(std.tolist())
    with pytest.raises(ValueError, match="std > 0"):
        dicte.set_code_statistics(mean, torch.zeros(EXP_DIM))

    plain = DiCTE(CFG)  # a config without statistics (models trained before): the raw codes
    assert torch.equal(plain.code_mean, torch.zeros(EXP_DIM)) and torch.equal(plain.code_std, torch.ones(EXP_DIM))
