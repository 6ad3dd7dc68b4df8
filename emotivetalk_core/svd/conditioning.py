"""How SVD conditions on the portrait: CLIP image embedding, reference latent, added time ids.

Each function reproduces one step of diffusers' ``StableVideoDiffusionPipeline`` without a
pipeline object, so ETHD is conditioned exactly as the SVD weights were trained to expect (a
test compares them with the pipeline on tiny models). Images follow the package convention:
``[B, 3, H, W]``, floats in 0..1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..media.image import check_images
from ..placement import placement

# OpenAI CLIP normalisation: the image_mean / image_std of SVD's feature_extractor.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def image_embeds(image_encoder, image: torch.Tensor) -> torch.Tensor:
    """CLIP image embedding of the portrait, ``[B, 1, C]`` (the UNet's cross-attention context).

    As the pipeline's ``_encode_image``: antialiased bicubic resize (done in -1..1, as Stability's
    code does), then CLIP normalisation, then ``image_embeds`` of a
    ``CLIPVisionModelWithProjection``. The pipeline resizes to a fixed 224 px, which is SVD's
    ViT-H input size; we resize to the encoder's own ``config.image_size`` (224 for SVD, smaller
    for the tiny test models) so every encoder gets the input size it was built for.
    """
    check_images(image)
    size = image_encoder.config.image_size
    resized = (resize_with_antialiasing(image.float() * 2.0 - 1.0, (size, size)) + 1.0) / 2.0
    mean = resized.new_tensor(CLIP_MEAN)[:, None, None]
    std = resized.new_tensor(CLIP_STD)[:, None, None]
    pixels = (resized - mean) / std
    embeds = image_encoder(pixels.to(**placement(image_encoder))).image_embeds
    return embeds[:, None]


def reference_latent(vae, image: torch.Tensor, noise_aug: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The portrait's VAE latent ``[B, 4, h, w]`` with SVD's noise augmentation.

    As the pipeline: the image in -1..1 plus ``noise_aug * randn`` (drawn on the generator's
    device, as diffusers' ``randn_tensor`` does, so a seed gives the same latent on any device),
    encoded and the posterior's mode taken. It is *not* multiplied by the VAE's scaling factor:
    SVD was trained with the unscaled latent as its concatenated condition.
    """
    check_images(image)
    pixels = image.float() * 2.0 - 1.0
    noise_device = generator.device if generator is not None else pixels.device
    noise = torch.randn(pixels.shape, generator=generator, device=noise_device, dtype=pixels.dtype)
    pixels = pixels + noise_aug * noise.to(pixels.device)
    return vae.encode(pixels.to(**placement(vae))).latent_dist.mode()


def added_time_ids(
    fps_id: float,
    motion_bucket: float,
    noise_aug: float,
    batch_size: int = 1,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """SVD's micro-conditioning ``[B, 3]``: (fps id, motion bucket, noise augmentation).

    ``fps_id`` is the number that goes into the tensor. SVD was trained on fps - 1, so the
    pipeline's ``fps=7`` is our ``fps_id=6``; our configs and checkpoints store the tensor value
    so nothing downstream has to remember the offset.
    """
    ids = torch.tensor([[fps_id, motion_bucket, noise_aug]], dtype=dtype, device=device)
    return ids.repeat(batch_size, 1)


def resize_with_antialiasing(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Gaussian blur then bicubic resize (``align_corners=True``), as SVD's pipeline resizes.

    The blur's sigma and kernel size follow skimage's anti-aliasing rule that the pipeline uses:
    sigma = (downscale factor - 1) / 2, kernel about 4 sigma, odd, at least 3; reflect padding.
    """
    height, width = image.shape[-2:]
    sigma_y = max((height / size[0] - 1.0) / 2.0, 0.001)
    sigma_x = max((width / size[1] - 1.0) / 2.0, 0.001)
    blurred = _blur_1d(_blur_1d(image, sigma_x, dim=-1), sigma_y, dim=-2)
    return F.interpolate(blurred, size=size, mode="bicubic", align_corners=True)


def _blur_1d(image: torch.Tensor, sigma: float, dim: int) -> torch.Tensor:
    """Separable Gaussian blur along the width (``dim=-1``) or the height (``dim=-2``)."""
    kernel_size = int(max(4.0 * sigma, 3))
    kernel_size += 1 - kernel_size % 2
    # The sigma is rounded to the image dtype before the kernel is built, as the pipeline does.
    sigma_t = torch.tensor(sigma, dtype=image.dtype, device=image.device)
    x = torch.arange(kernel_size, dtype=image.dtype, device=image.device) - kernel_size // 2
    kernel = torch.exp(-x.pow(2.0) / (2 * sigma_t.pow(2.0)))
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    pad = kernel_size // 2
    if dim == -1:
        weight = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
        padded = F.pad(image, (pad, pad, 0, 0), mode="reflect")
    else:
        weight = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
        padded = F.pad(image, (0, 0, pad, pad), mode="reflect")
    return F.conv2d(padded, weight, groups=channels)
