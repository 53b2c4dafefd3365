"""Small networks cfx trains itself: the demo classifier and the PaRCE reconstruction autoencoder.

Both follow the layout of ``docs/methods.md`` (three strided convolutions, then fully
connected layers), scaled to small inputs and to any resolution of at least 16 px.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvAutoencoder", "SmallCNN"]


def _conv_stack(in_channels: int) -> nn.Sequential:
    # as in the PaRCE paper: conv(3→32, k5, s2, p2), conv(32→64, k3, s2, p1), conv(64→64, k3, s2, p1), each + ReLU.
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, stride=2, padding=2), nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(inplace=True),
    )


def _down(n: int) -> int:
    for kernel, pad in ((5, 2), (3, 1), (3, 1)):
        n = (n + 2 * pad - kernel) // 2 + 1
    return n


class SmallCNN(nn.Module):
    """The demo classifier: the PaRCE paper's conv stack, then FC 256 → FC 128 → dropout → linear head (``self.head``).

    Takes inputs ``(N, 3, H, W)`` (whatever preprocessing the adapter applies) and returns logits.
    The dropout before the head makes MC-dropout available.
    """

    def __init__(self, num_classes: int, image_size: int | tuple[int, int] = 32, in_channels: int = 3,
                 dropout: float = 0.2):
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        if min(h, w) < 16:
            raise ValueError(f"SmallCNN needs inputs of at least 16 px, got {h}x{w}")
        self.convs = _conv_stack(in_channels)
        flat = 64 * _down(h) * _down(w)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(flat, 256), nn.ReLU(inplace=True),
                                  nn.Linear(256, 128), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(self.convs(x)))


class ConvAutoencoder(nn.Module):
    """PaRCE's reconstruction model, for any input resolution ≥ 16 px.

    Encoder: the PaRCE paper's conv stack, flatten, FC 512, FC ``latent_dim`` (ReLU): the latent is non-negative as in the PaRCE paper.
    Decoder: FC 512, FC back to the conv shape, three transposed convs, then a sigmoid so reconstructions stay in
    ``[0, 1]`` (the paper ends in a ReLU; the sigmoid is our deviation, it keeps pixels in range). Sizes that the stride-8
    path does not reproduce exactly are resized back bilinearly.
    """

    def __init__(self, image_size: int | tuple[int, int] = 32, latent_dim: int = 256, in_channels: int = 3):
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        if min(h, w) < 16:
            raise ValueError(f"ConvAutoencoder needs inputs of at least 16 px, got {h}x{w}")
        self.image_size = (h, w)
        self.latent_dim = latent_dim
        self.grid = (_down(h), _down(w))
        flat = 64 * self.grid[0] * self.grid[1]
        self.encoder = nn.Sequential(_conv_stack(in_channels), nn.Flatten(), nn.Linear(flat, 512), nn.ReLU(True),
                                     nn.Linear(512, latent_dim), nn.ReLU(True))
        self.decoder_fc = nn.Sequential(nn.Linear(latent_dim, 512), nn.ReLU(True), nn.Linear(512, flat),
                                        nn.ReLU(True))
        self.decoder_conv = nn.Sequential(
            nn.ConvTranspose2d(64, 64, 3, stride=2, padding=1, output_padding=1), nn.ReLU(True),
            nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1), nn.ReLU(True),
            nn.ConvTranspose2d(32, in_channels, 5, stride=2, padding=2, output_padding=1),
        )

    def encode(self, x: Tensor) -> Tensor:
        """Images ``(N, C, H, W)`` in [0, 1] → latents ``(N, latent_dim)``. Images of another floating dtype (a
        float64 or bfloat16 classifier's) are cast to the autoencoder's own."""
        return self.encoder(x.to(self.decoder_fc[0].weight.dtype))

    def decode(self, z: Tensor) -> Tensor:
        """Latents ``(N, latent_dim)`` → images ``(N, C, H, W)`` in [0, 1]."""
        x = self.decoder_fc(z).view(z.shape[0], 64, *self.grid)
        x = self.decoder_conv(x)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return torch.sigmoid(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def reconstruction_loss(self, x: Tensor) -> Tensor:
        """Per-image mean squared reconstruction error ``(N,)`` (PaRCE's ℓ(x))."""
        return (self(x) - x).pow(2).flatten(1).mean(1)

