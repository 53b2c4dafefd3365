"""Image operations every stage shares: images are float tensors ``(N, 3, H, W)`` with pixels in ``[0, 1]``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["as_float_images", "gaussian_blur", "is_grey", "luma", "luma_and_detail", "resize"]


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


def gaussian_blur(x: Tensor, sigma: Tensor | float) -> Tensor:
    """Gaussian blur of ``(N, C, H, W)`` images with standard deviation ``sigma`` pixels: one number, or one per
    image ``(N,)`` (0 leaves that image as it is). Separable, truncated at 3 σ, reflect padding (on images smaller
    than the kernel, the kernel is cut to what reflection allows and renormalised)."""
    n, c, h, w = x.shape
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    sigma = sigma.expand(n) if sigma.dim() == 0 else sigma
    if sigma.shape != (n,) or bool((sigma < 0).any()) or not bool(torch.isfinite(sigma).all()):
        raise ValueError(f"sigma must be one number or one per image ({n}), each finite and ≥ 0, got "
                         f"{tuple(sigma.shape)} values")
    radius = int(math.ceil(3 * float(sigma.max()))) if n else 0
    if radius == 0:
        return x
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    s = sigma.clamp_min(1e-6).view(n, 1)
    k = torch.exp(-coords.view(1, -1) ** 2 / (2 * s ** 2))
    k = k / k.sum(1, keepdim=True)
    k = torch.where(sigma.view(n, 1) > 0, k, (coords == 0).to(x.dtype).view(1, -1).expand(n, -1))
    pad = min(radius, h - 1, w - 1)
    if pad < radius:  # tiny images: truncate the kernel to what reflect padding allows
        k = k[:, radius - pad: radius + pad + 1]
        k = k / k.sum(1, keepdim=True)
    weight = k.repeat_interleave(c, 0)  # (N*C, K)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), weight.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), weight.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


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
