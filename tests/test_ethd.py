"""ETHD/EDI: the adapters sit where the figure puts them and do exactly what EDI promises."""

import pytest
import torch

from emotivetalk_core.configs import get_config
from emotivetalk_core.networks.edi import ExpressionAdapter, SpatialAdapter, TokenCrossAttention
from emotivetalk_core.networks.ethd import ETHD, lip_windows

BATCH, FRAMES, LATENT_H, LATENT_W = 1, 4, 16, 16


def _ethd(randomise_outputs: bool) -> ETHD:
    torch.manual_seed(0)
    model = ETHD.from_config(get_config("tiny")).eval()
    if randomise_outputs:
        for module in model.modules():
            if isinstance(module, TokenCrossAttention):
                torch.nn.init.normal_(module.to_out.weight, std=0.5)
                if module.to_out.bias is not None:  # EDI's has none
                    torch.nn.init.normal_(module.to_out.bias, std=0.5)
    return model


def _inputs(model: ETHD, seed: int = 1, batch: int = BATCH) -> dict:
    cfg = model.adapter_config
    g = torch.Generator().manual_seed(seed)
    lip = torch.randn(batch, FRAMES, cfg["lip_dim"], generator=g)
    return {
        "sample": torch.randn(batch, FRAMES, 8, LATENT_H, LATENT_W, generator=g),
        "timestep": torch.tensor([0.7]).expand(batch),
        "image_embeds": torch.randn(batch, 1, 32, generator=g),
        "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]]).expand(batch, -1),
        "lip_windows": lip_windows(lip, cfg["lip_context"]),
        "driven_exp": torch.randn(batch, FRAMES, cfg["exp_dim"], generator=g),
        "reference_exp": torch.randn(batch, cfg["exp_dim"], generator=g),
    }


def _run(model, inputs):
    with torch.no_grad():
        return model(**inputs)


def test_zero_initialised_adapters_reproduce_base_svd():
    from diffusers import UNetSpatioTemporalConditionModel

    model = _ethd(randomise_outputs=False)
    base = UNetSpatioTemporalConditionModel(**get_config("tiny")["unet"]).eval()
    base.load_state_dict(model.unet.state_dict())
    inputs = _inputs(model)
    with torch.no_grad():
        expected = base(inputs["sample"], inputs["timestep"], inputs["image_embeds"],
                        added_time_ids=inputs["added_time_ids"], return_dict=False)[0]
    torch.testing.assert_close(_run(model, inputs), expected, rtol=0, atol=1e-6)


def test_token_cross_attention_is_a_standard_multi_head_cross_attention():
    """The folded projections (TokenCrossAttention's docstring) compute what the weights mean:
    LayerNorm, query/key/value projections, per-head softmax attention, output projection."""
    torch.manual_seed(3)
    attention = TokenCrossAttention(dim=64, token_dim=24, head_dim=16)
    torch.nn.init.normal_(attention.to_out.weight, std=0.3)
    torch.nn.init.normal_(attention.to_out.bias, std=0.3)
    hidden, tokens = torch.randn(6, 50, 64), torch.randn(6, 5, 24)
    split = lambda x: x.unflatten(-1, (4, 16)).transpose(1, 2)  # noqa: E731 - 4 heads of 16
    with torch.no_grad():
        query = split(attention.to_q(attention.norm(hidden)))
        heads = torch.nn.functional.scaled_dot_product_attention(query, split(attention.to_k(tokens)), split(attention.to_v(tokens)))
        expected = attention.to_out(heads.transpose(1, 2).flatten(2))
        got = attention(hidden, tokens)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - expected).abs().max() < 1e-3 * expected.abs().max()  # and not by being tiny


def test_token_sets_shared_by_the_frames_of_a_clip_attend_as_one_set_per_frame():
    """EDI's reference tokens come once per clip: attending with them is attending with a copy
    per frame (frames of a clip are consecutive items)."""
    torch.manual_seed(4)
    attention = TokenCrossAttention(dim=64, token_dim=24, head_dim=16)
    torch.nn.init.normal_(attention.to_out.weight, std=0.3)
    normed, per_clip = torch.randn(2 * 3, 50, 64), torch.randn(2, 5, 24)  # 2 clips of 3 frames
    with torch.no_grad():
        shared = attention.attend(normed, per_clip)
        copied = attention.attend(normed, per_clip.repeat_interleave(3, dim=0))
    torch.testing.assert_close(shared, copied, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(shared[:3], attention.attend(normed[:3], per_clip[1:]))  # each clip its own
    with pytest.raises(ValueError, match="4 token sets cannot be shared by 6 video items"):
        attention.attend(normed, torch.randn(4, 5, 24))


def test_adapters_sit_in_every_spatio_temporal_transformer():
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    model = _ethd(randomise_outputs=False)
    transformers = [m for m in model.unet.modules() if isinstance(m, TransformerSpatioTemporalModel)]
    assert len(transformers) == len(model.adapters) >= 3  # down, mid and up blocks of the tiny UNet
    for transformer in transformers:
        for block in transformer.transformer_blocks:
            assert len(block._forward_hooks) == 1
        assert len(transformer.time_mixer._forward_hooks) == 1


def test_lip_tokens_of_frame_k_change_frame_k_most():
    model = _ethd(randomise_outputs=True)
    inputs = _inputs(model)
    before = _run(model, inputs)
    k = 2
    changed = dict(inputs, lip_windows=inputs["lip_windows"].clone())
    changed["lip_windows"][:, k] += 3.0
    delta = (_run(model, changed) - before).abs().mean(dim=(0, 2, 3, 4))
    assert delta[k] > 0
    assert int(delta.argmax()) == k, delta
    # Temporal attention spreads some of it to the neighbours, less than to frame k itself.
    assert delta[k] > 2 * max(delta[j] for j in range(FRAMES) if j != k), delta


def _face_box_mask() -> torch.Tensor:
    mask = torch.zeros(BATCH, 1, LATENT_H, LATENT_W)
    mask[..., 4:12, 4:12] = 1.0
    return mask


def _record_residuals(model):
    """Hooks that record (level tokens, residual) for each adapter branch."""
    records = {"lip": [], "edi": [], "expression": []}
    handles = []

    def spatial_hook(module, args, output):
        hidden = args[0]
        edi_residual = module._last_edi
        records["lip"].append(output - edi_residual - hidden)
        records["edi"].append(edi_residual)

    def edi_hook(module, args, output):
        module_parent = edi_owner[id(module)]
        module_parent._last_edi = output

    def expression_hook(module, args, output):
        records["expression"].append(output - args[0])

    edi_owner = {}
    for module in model.modules():
        if isinstance(module, SpatialAdapter):
            edi_owner[id(module.edi)] = module
            handles.append(module.edi.register_forward_hook(edi_hook))
            handles.append(module.register_forward_hook(spatial_hook))
        elif isinstance(module, ExpressionAdapter):
            handles.append(module.register_forward_hook(expression_hook))
    return records, handles


def _level_masks(mask):
    import torch.nn.functional as F

    levels = {}
    size = mask.shape[-2:]
    while size[0] >= 1:
        level = F.interpolate(mask, size=size, mode="area")
        levels[size[0] * size[1]] = level.flatten(2).transpose(1, 2).repeat_interleave(FRAMES, dim=0)
        if size == (1, 1):
            break
        size = ((size[0] + 1) // 2, (size[1] + 1) // 2)
    return levels


def test_every_branch_is_exactly_zero_outside_the_face_at_every_level():
    model = _ethd(randomise_outputs=True)
    inputs = dict(_inputs(model), face_mask=_face_box_mask())
    records, handles = _record_residuals(model)
    try:
        _run(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    levels = _level_masks(inputs["face_mask"])
    for branch, residuals in records.items():
        assert len(residuals) == len(model.adapters), branch  # one record per transformer
        seen_levels = set()
        for residual in residuals:
            mask = levels[residual.shape[1]]
            seen_levels.add(residual.shape[1])
            outside = (mask == 0).expand_as(residual)
            assert outside.any(), "the mask must leave some zeros at every level for this test"
            assert torch.count_nonzero(residual[outside]) == 0, branch
            assert residual[~outside].abs().max() > 0, branch  # the branch is alive inside the face
        assert len(seen_levels) == 2, seen_levels  # both levels of the tiny UNet (16x16, 8x8)


def test_edi_is_exactly_zero_when_driven_equals_reference():
    model = _ethd(randomise_outputs=True)
    inputs = _inputs(model)
    same = dict(inputs, driven_exp=inputs["reference_exp"][:, None].expand(-1, FRAMES, -1).clone())
    records, handles = _record_residuals(model)
    try:
        _run(model, same)
        edi_same = list(records["edi"])
        records["edi"].clear()
        _run(model, inputs)
        edi_different = list(records["edi"])
    finally:
        for handle in handles:
            handle.remove()
    assert edi_same and all(torch.count_nonzero(r) == 0 for r in edi_same)
    assert all(r.abs().max() > 0 for r in edi_different)


def test_edi_is_exactly_zero_on_the_frames_whose_expression_is_the_references():
    """Per frame, within one batch of two clips: frames 0 and 2 of the second clip ask for the
    portrait's own expression (as a guidance pass does), the others for another one."""
    model = _ethd(randomise_outputs=True)
    inputs = _inputs(model, batch=2)
    driven = inputs["driven_exp"].clone()
    driven[1, [0, 2]] = inputs["reference_exp"][1]
    records, handles = _record_residuals(model)
    try:
        _run(model, dict(inputs, driven_exp=driven))
    finally:
        for handle in handles:
            handle.remove()
    same = [FRAMES + 0, FRAMES + 2]  # items of the [B * F] batch
    for residual in records["edi"]:
        per_item = residual.abs().flatten(1).amax(dim=1)
        assert torch.count_nonzero(per_item[same]) == 0
        assert (per_item[[i for i in range(2 * FRAMES) if i not in same]] > 0).all()


def test_unet_called_directly_is_plain_svd():
    # Calling the UNet directly (outside ETHD.forward) is plain SVD: hooks are inactive.
    model = _ethd(randomise_outputs=True)
    inputs = _inputs(model)
    with torch.no_grad():
        direct = model.unet(inputs["sample"], inputs["timestep"], inputs["image_embeds"],
                            added_time_ids=inputs["added_time_ids"], return_dict=False)[0]
        adapted = _run(model, inputs)
    assert not torch.allclose(direct, adapted)
    assert not model._context.active


def test_svd_xt_base_parameter_count_and_adapter_count():
    with torch.device("meta"):
        model = ETHD.from_config(get_config("svd-xt"))
    base = sum(p.numel() for p in model.unet.parameters())
    adapters = model.adapter_parameter_count()
    assert base == 1_524_623_082
    print(f"svd-xt UNet {base:,} parameters; EmotiveTalk adapters {adapters:,} ({adapters / base:.1%})")
    assert 0 < adapters < 0.25 * base
    assert len(model.adapters) == 16  # every TransformerSpatioTemporalModel of SVD-XT


@pytest.mark.parametrize("context", [0, 2])
def test_lip_windows_clamp_at_the_ends(context):
    lip = torch.arange(5.0).view(1, 5, 1)
    windows = lip_windows(lip, context)
    assert windows.shape == (1, 5, 2 * context + 1, 1)
    assert windows[0, 0, 0, 0] == 0 and windows[0, 4, -1, 0] == 4
    assert windows[0, 2, context, 0] == 2


def test_all_zero_face_mask_means_no_mask_given(caplog):
    from emotivetalk_core.networks.edi import resolve_face_mask

    with caplog.at_level("WARNING"):
        assert resolve_face_mask(torch.zeros(1, 64, 64)) is None
    assert "all zero" in caplog.text
    mask = resolve_face_mask(torch.ones(2, 64, 64) * 0.5)
    assert mask.shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="face mask must be"):
        resolve_face_mask(torch.ones(1, 2, 3, 64, 64))
