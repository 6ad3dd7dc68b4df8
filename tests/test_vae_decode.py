"""Chunked temporal VAE decoding: every frame once, in order, streaming, no hard seams."""

import pytest
import torch

from emotivetalk_core.configs import get_config
from emotivetalk_core.models import build_vae
from emotivetalk_core.vae_decode import chunk_starts, decode_latents


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return build_vae(get_config("tiny")["vae"]).eval()


@pytest.mark.parametrize("num_frames,chunk,overlap", [(5, 8, 2), (20, 8, 3), (17, 6, 0), (9, 8, 4)])
def test_chunks_cover_every_frame_and_end_at_the_end(num_frames, chunk, overlap):
    starts = chunk_starts(num_frames, chunk, overlap)
    covered = set()
    for start in starts:
        covered |= set(range(start, min(start + chunk, num_frames)))
    assert covered == set(range(num_frames))
    assert min(starts[-1] + chunk, num_frames) == num_frames
    assert all(b - a <= chunk - overlap for a, b in zip(starts, starts[1:]))


def test_single_chunk_equals_a_plain_decode(vae):
    latents = torch.randn(6, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    blocks = list(decode_latents(vae, latents, chunk=8, overlap=2))
    with torch.no_grad():
        plain = vae.decode(latents / vae.config.scaling_factor, num_frames=6).sample
    expected = ((plain.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    assert len(blocks) == 1
    torch.testing.assert_close(blocks[0], expected)


def test_long_latents_stream_in_order_with_crossfaded_overlaps(vae):
    latents = torch.randn(20, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    blocks = list(decode_latents(vae, latents, chunk=8, overlap=3))
    frames = torch.cat(blocks)
    assert frames.shape == (20, 32, 32, 3)
    assert max(len(block) for block in blocks) <= 8  # never more than one chunk held at once
    assert 0 <= frames.min() and frames.max() <= 1
    # Frames before the first overlap are exactly the first chunk's own decode.
    first = list(decode_latents(vae, latents[:8], chunk=8, overlap=3))[0]
    torch.testing.assert_close(frames[:5], first[:5])
    # An overlapped frame lies between what the two chunks decoded on their own.
    second = list(decode_latents(vae, latents[5:13], chunk=8, overlap=3))[0]
    low, high = torch.minimum(first[5:8], second[:3]), torch.maximum(first[5:8], second[:3])
    assert torch.all(frames[5:8] >= low - 1e-6) and torch.all(frames[5:8] <= high + 1e-6)
