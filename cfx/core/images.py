"""Image operations every stage shares: images are float tensors ``(N, 3, H, W)`` with pixels in ``[0, 1]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["as_float_images", "is_grey", "luma", "luma_and_detail", "resize"]


def as_float_images(x: Tensor) -> Tensor:
    """uint8 images (the compact in-memory form) → float in [0, 1]; float images pass through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def luma(x: Tensor) -> Tensor:
    """ITU-R 601 luma ``0.299 R + 0.587 G + 0.114 B`` of ``(N, 3, H, W)`` images, as ``(N, H, W)``."""
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def luma_and_detail(x: Tensor) -> tuple[Tensor, Tensor]:
    """Luma ``(N, H, W)`` of ``(N, 3, H, W)`` images and the magnitude of its 4-neighbour Laplacian
    ``(N, H-2, W-2)``: fine detail, grain and sharpness."""
    y = luma(x)
    return y, (4 * y[:, 1:-1, 1:-1] - y[:, :-2, 1:-1] - y[:, 2:, 1:-1] - y[:, 1:-1, :-2] - y[:, 1:-1, 2:]).abs()


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``(N, C, H, W)`` to ``size``, antialiased when shrinking; the same tensor when the size
    already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def is_grey(images: Tensor) -> bool:
    """Whether every image has three equal channels (a colour change cannot act on it)."""
    return bool((images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all())
