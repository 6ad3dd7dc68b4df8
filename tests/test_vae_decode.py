"""Chunked temporal VAE decoding: every frame once, in order, streaming, no hard seams."""

import pytest
import torch

from emotivetalk_core.configs import get_config
from emotivetalk_core.svd.build import build_vae
from emotivetalk_core.svd.vae_decode import chunk_starts, decode_latents


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
        plain = vae.decode(latents, num_frames=6).sample
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


class _FramewiseVAE(torch.nn.Module):
    """A stand-in decoder that decodes each frame on its own (so any chunking gives the same
    frames) and runs out of memory, as a GPU would, on chunks longer than ``limit`` frames from
    its ``fail_after``-th call on."""

    def __init__(self, limit: int, fail_after: int = 0, error=torch.OutOfMemoryError):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.limit, self.fail_after, self.error, self.calls = limit, fail_after, error, []

    def decode(self, latents, num_frames):
        self.calls.append(num_frames)
        if num_frames > self.limit and len(self.calls) > self.fail_after:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        pixels = latents[:, :3].repeat_interleave(2, -1).repeat_interleave(2, -2).tanh()
        return type("Output", (), {"sample": pixels})()


def _framewise(latents):
    return (latents[:, :3].repeat_interleave(2, -1).repeat_interleave(2, -2).tanh() + 1).div(2).permute(0, 2, 3, 1)


@pytest.mark.parametrize("fail_after", [0, 1, 2])
def test_out_of_memory_retries_with_smaller_chunks_and_keeps_every_frame(fail_after, caplog):
    latents = torch.randn(40, 4, 3, 3, generator=torch.Generator().manual_seed(3))
    vae = _FramewiseVAE(limit=4, fail_after=fail_after)
    with caplog.at_level("WARNING"):
        frames = torch.cat(list(decode_latents(vae, latents, chunk=14, overlap=4)))
    # Every frame once, in order, as decoded: the sampled latents are not lost to the error.
    torch.testing.assert_close(frames, _framewise(latents))
    after = vae.calls[vae.calls.index(7) + 1:]  # 14 and 7 frames ran out of memory: 3 at a time from there
    assert after and max(after) == 3
    assert "retrying in chunks of 7" in caplog.text and "retrying in chunks of 3" in caplog.text


def test_the_cpu_allocator_failure_also_retries():
    latents = torch.randn(10, 4, 3, 3, generator=torch.Generator().manual_seed(4))
    vae = _FramewiseVAE(limit=5, error=lambda message: RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    frames = torch.cat(list(decode_latents(vae, latents, chunk=10, overlap=2)))
    torch.testing.assert_close(frames, _framewise(latents))


def test_a_retry_from_the_first_chunk_equals_decoding_at_the_smaller_chunk(vae):
    """A real temporal decoder: failing at once, the decode is exactly the smaller chunking's."""
    latents = torch.randn(12, 4, 4, 4, generator=torch.Generator().manual_seed(5))

    class Failing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = vae

        def decode(self, scaled, num_frames):
            if num_frames > 6:
                raise torch.OutOfMemoryError("out of memory")
            return self.inner.decode(scaled, num_frames=num_frames)

    retried = torch.cat(list(decode_latents(Failing(), latents, chunk=12, overlap=4)))
    expected = torch.cat(list(decode_latents(vae, latents, chunk=6, overlap=4)))
    torch.testing.assert_close(retried, expected)


def test_out_of_memory_at_two_frames_says_what_to_do():
    vae = _FramewiseVAE(limit=1)
    with pytest.raises(MemoryError, match="free memory on the device"):
        list(decode_latents(vae, torch.zeros(6, 4, 3, 3), chunk=8, overlap=2))


def test_other_errors_are_not_retried():
    vae = _FramewiseVAE(limit=0, error=ValueError)
    with pytest.raises(ValueError):
        list(decode_latents(vae, torch.zeros(6, 4, 3, 3), chunk=4, overlap=1))
    assert vae.calls == [4]
