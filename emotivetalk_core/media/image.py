"""Images as the library takes them, ``[B, 3, H, W]`` floats in 0..1: read from files (a portrait
or an emotion image, RGB, upright) and the check that a tensor has that layout.

PIL is imported inside :func:`load_image` (the package is imported at ComfyUI start-up).
"""

from __future__ import annotations

import numpy as np
import torch


def check_images(images: torch.Tensor) -> None:
    """Raise a clear error for anything but ``[B, 3, H, W]`` (ComfyUI's IMAGE is ``[B, H, W, 3]``)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected images [B, 3, H, W] with values in 0..1, got shape {tuple(images.shape)} "
            "(a ComfyUI IMAGE [B, H, W, 3] needs .permute(0, 3, 1, 2))"
        )


def load_image(path) -> torch.Tensor:
    """An image file as ``[1, 3, H, W]`` float in 0..1 (RGB; alpha dropped), upright.

    Phone photos are turned as their EXIF orientation says; 16-bit and 32-bit integer images are
    scaled from their full range and float images read as 0..1 (PIL's RGB conversion would clip
    them to white or black).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = _rgb_array(ImageOps.exif_transpose(image))
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image this machine can read (try PNG or JPEG)") from None
    except Image.DecompressionBombError as error:
        raise ValueError(f"{path} is too large to read safely ({error}); resize it below 8000 x 8000 pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # PIL's words for truncated or damaged files
        raise ValueError(f"{path}: cannot read the image ({error}); the file is damaged or incomplete: export it again") from None
    if not np.isfinite(rgb).all():
        raise ValueError(f"{path}: the image has NaN or infinite pixels; export it again as an 8-bit PNG or JPEG")
    return torch.from_numpy(np.clip(rgb, 0.0, 1.0)).permute(2, 0, 1)[None]


def _rgb_array(image) -> np.ndarray:
    """``[H, W, 3]`` float32 in 0..1 of any PIL image."""
    if image.mode == "F":  # float images are 0..1
        grey = np.asarray(image, dtype=np.float32)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode == "I" or image.mode.startswith("I;16"):  # 16-bit (PNG) or 32-bit integer grey
        grey = np.asarray(image, dtype=np.float64)
        full = 65535.0 if grey.max(initial=0) <= 65535 else 2.0**31 - 1
        return np.repeat((grey / full).astype(np.float32)[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
