"""The known causes of low competency ("shifts"), declared once.

Each :class:`Shift` is one way an image can leave the data a classifier knows: its name, its grid of strengths
from mild to strong, the transform that applies it (:func:`apply_shift`), the words a free-text explanation uses
for it, its wording as a multiple-choice answer, and the property edits that undo it. The demo world injects them,
the trust oracle's training augments with them, the evidence reporter names them, prompts offer them as choices
and the explanation scoring reads them back from text: all from :data:`SHIFTS`.

The first six causes follow the competency-explanation study of Pohland et al. (see ``docs/methods.md``):
unfamiliar content (``spatial``), brightness, contrast, saturation, noise and pixelation. Brightness, contrast and
saturation equal ``PIL.ImageEnhance.Brightness/Contrast/Color(img).enhance(strength)`` on 8-bit images; noise adds
uniform noise of half-width ``strength`` on the 0-255 scale; pixelation resizes down by ``strength`` with NEAREST and
back; ``spatial`` pastes a square patch of a real photograph (side ``strength`` × image side), content that never
occurs in training. The seventh, ``blur`` (out of focus), is a Gaussian blur whose standard deviation is ``strength``
× the image's shorter side (1-8 %, so the same strength means the same look at 32 and at 224 px): measured to be
the commonest way a competent photograph loses competency with a real ImageNet model (``docs/results.md``).

Brightness, contrast and saturation go both ways: each has the study's grid (``grid``, in ``direction``) and the
opposite one (``opposite``), so images too dark or washed out are causes as much as images too bright or harsh;
:data:`CAUSE_DIRECTIONS` lists all ten. A new cause is one more :class:`Shift` in the tuple registered below (its
transform, grids, words and inverse edits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .images import gaussian_blur
from .registry import Registry

__all__ = ["CAUSES", "CAUSE_DIRECTIONS", "CAUSE_LABELS", "SHIFTS", "Shift", "apply_shift", "pil_luminance",
           "scale_brightness"]

Transform = Callable[[Tensor, float, torch.Generator], Tensor]


@dataclass(frozen=True)
class Shift:
    """One cause of low competency. ``transform(images, strength, generator)`` returns unclipped images."""

    name: str
    grid: tuple[float, ...]            # strengths from mild to strong (the last is the strong end)
    transform: Transform
    keywords: tuple[str, ...]          # words a free-text explanation uses for it (matched on word boundaries)
    choice: str                        # wording as a multiple-choice answer
    inverse_edits: tuple[tuple[str, str], ...] = ()  # (property, direction) of the edits that undo it
    colour: bool = False               # acts on colour only (nothing to do on grey images)
    direction: str = "increase"        # what ``grid`` does to the property
    neutral: float = 1.0               # the strength that changes nothing (a factor 1, or an amount 0)
    opposite: tuple[float, ...] = ()   # strengths of the other direction, mild → strong (empty: one way only)

    @property
    def grids(self) -> dict[str, tuple[float, ...]]:
        """``{direction: grid}``: ``grid`` under :attr:`direction`, and :attr:`opposite` under the other one."""
        out = {self.direction: self.grid}
        if self.opposite:
            out[_OTHER[self.direction]] = self.opposite
        return out


_OTHER = {"increase": "decrease", "decrease": "increase"}


def pil_luminance(images: Tensor) -> Tensor:
    """PIL's "L" conversion: ITU-R 601-2 luma in 16-bit fixed point, rounded to the 8-bit grid, ``(N, 1, H, W)``."""
    v = torch.round(images.double() * 255.0 * 1e4) / 1e4  # inputs on the 8-bit grid map to exact integers
    lum = torch.floor((19595 * v[:, 0] + 38470 * v[:, 1] + 7471 * v[:, 2] + 32768) / 65536)
    return (lum / 255.0).to(images.dtype).unsqueeze(1)


_PHOTOS: Tensor | None = None


def _photos() -> Tensor:
    """scikit-learn's two bundled photographs, downsampled to 96×144: the unfamiliar content of the spatial cause."""
    global _PHOTOS
    if _PHOTOS is None:
        from sklearn.datasets import load_sample_images  # lazy: reads two JPEGs from disk

        arrays = load_sample_images().images
        photos = torch.stack([torch.from_numpy(np.asarray(a, dtype=np.float32) / 255.0).permute(2, 0, 1)
                              for a in arrays])
        _PHOTOS = F.interpolate(photos, size=(96, 144), mode="bilinear", antialias=True, align_corners=False)
    return _PHOTOS


def scale_brightness(x: Tensor, factor: float | Tensor) -> Tensor:
    """``x · factor`` (``ImageEnhance.Brightness``); ``factor`` a number or broadcastable ``(N, 1, 1, 1)``."""
    return x * factor


def _brightness(x: Tensor, k: float, g: torch.Generator) -> Tensor:
    return scale_brightness(x, k)


def _contrast(x: Tensor, k: float, g: torch.Generator) -> Tensor:
    mean = torch.round(pil_luminance(x).mean(dim=(1, 2, 3), keepdim=True) * 255.0) / 255.0
    return mean + k * (x - mean)


def _saturation(x: Tensor, k: float, g: torch.Generator) -> Tensor:
    grey = pil_luminance(x)
    return grey + k * (x - grey)


def _noise(x: Tensor, k: float, g: torch.Generator) -> Tensor:
    return x + (torch.rand(x.shape, generator=g) * 2 - 1) * (k / 255.0)


def _pixelation(x: Tensor, k: float, g: torch.Generator) -> Tensor:
    h, w = x.shape[-2:]
    k = int(k)
    small = F.interpolate(x, size=(max(1, h // k), max(1, w // k)), mode="nearest-exact")
    return F.interpolate(small, size=(h, w), mode="nearest-exact")


def _blur(x: Tensor, k: float, g: torch.Generator) -> Tensor:
    return gaussian_blur(x, k * min(x.shape[-2:]))


def _spatial(x: Tensor, k: float, g: torch.Generator) -> Tensor:
    n, _, h, w = x.shape
    photos = _photos()
    side = max(2, int(round(k * min(h, w))))
    side = min(side, photos.shape[-2], photos.shape[-1], h, w)
    which = torch.randint(len(photos), (n,), generator=g)
    r0 = torch.randint(0, h - side + 1, (n,), generator=g).view(n, 1, 1)
    c0 = torch.randint(0, w - side + 1, (n,), generator=g).view(n, 1, 1)
    pr = torch.randint(0, photos.shape[-2] - side + 1, (n,), generator=g).view(n, 1, 1)
    pc = torch.randint(0, photos.shape[-1] - side + 1, (n,), generator=g).view(n, 1, 1)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    inside = (rows >= r0) & (rows < r0 + side) & (cols >= c0) & (cols < c0 + side)
    src_r = (pr + rows - r0).clamp(0, photos.shape[-2] - 1)
    src_c = (pc + cols - c0).clamp(0, photos.shape[-1] - 1)
    patch = photos[which.view(n, 1, 1), :, src_r, src_c].permute(0, 3, 1, 2)  # (N, 3, H, W)
    return torch.where(inside.unsqueeze(1), patch, x)


#: Every known cause, in a fixed order (the order of tables and of the oracle's augmentation draws).
SHIFTS: Registry[Shift] = Registry("shift")
for _shift in (
    Shift("spatial", (0.25, 0.35, 0.45, 0.55, 0.65, 0.75), _spatial,
          ("unfamiliar", "unusual object", "unknown object", "novel object", "unseen", "never seen",
           "out-of-distribution", "out of distribution", "foreign object", "structure", "structures",
           "occlusion", "occluded", "patch", "spatial"),
          "an unfamiliar object or region", neutral=0.0),
    Shift("brightness", (1.5, 2.0, 2.5, 3.0, 4.0, 5.0), _brightness,
          ("bright", "brighter", "brightness", "overexposed", "over-exposed", "dark", "darker", "darkness",
           "underexposed", "under-exposed", "lighting", "illumination", "dim", "too light", "too dark"),
          "brightness", (("brightness", "decrease"), ("brightness", "increase")),
          opposite=(0.6, 0.45, 0.35, 0.25, 0.15, 0.1)),
    Shift("contrast", (0.5, 0.35, 0.25, 0.15, 0.1, 0.05), _contrast,
          ("contrast", "washed out", "washed-out", "faded", "flat", "low-contrast", "dull", "high-contrast",
           "harsh"),
          "contrast", (("contrast", "increase"), ("contrast", "decrease")), direction="decrease",
          opposite=(1.5, 2.0, 2.5, 3.0, 4.0, 5.0)),
    Shift("saturation", (2.0, 4.0, 6.0, 8.0, 12.0, 16.0), _saturation,
          ("saturation", "saturated", "oversaturated", "over-saturated", "colourful", "colorful", "vivid",
           "vibrant", "intense colours", "intense colors", "desaturated", "unsaturated", "muted", "colourless",
           "colorless", "greyish", "grayish", "pale colours", "pale colors"),
          "colour saturation", (("saturation", "decrease"), ("saturation", "increase")), colour=True,
          opposite=(0.5, 0.35, 0.25, 0.15, 0.05, 0.0)),
    Shift("noise", (20.0, 40.0, 60.0, 80.0, 100.0, 120.0), _noise,
          ("noise", "noisy", "grain", "grainy", "speckle", "speckled", "static"),
          "noise", (("denoise", "increase"),), neutral=0.0),
    Shift("pixelation", (2.0, 3.0, 4.0, 5.0, 6.0, 8.0), _pixelation,
          ("pixelated", "pixelation", "pixelised", "pixelized", "pixellated", "blocky", "blockiness",
           "low resolution", "low-resolution", "mosaic"),
          "pixelation"),
    Shift("blur", (0.01, 0.02, 0.03, 0.04, 0.06, 0.08), _blur,
          ("blur", "blurry", "blurred", "blurriness", "out of focus", "out-of-focus", "unfocused", "defocused",
           "smeared", "smudged", "fuzzy"),
          "blur (out of focus)", (("sharpness", "increase"),), neutral=0.0),
):
    SHIFTS.register(_shift.name, _shift)

#: ``{cause: grid}`` of every registered shift (mild → strong), in the direction of the explanation study.
CAUSES: dict[str, tuple[float, ...]] = {s.name: s.grid for s in SHIFTS.values()}
#: ``{(cause, direction): grid}``: every cause in every direction it goes (under- and over-exposure, low and high
#: contrast, desaturation and over-saturation; noise, pixelation, blur and unfamiliar content one way).
CAUSE_DIRECTIONS: dict[tuple[str, str], tuple[float, ...]] = {
    (s.name, d): g for s in SHIFTS.values() for d, g in s.grids.items()}
#: Every cause an explanation can name: the shifts, then "other" (no single cause).
CAUSE_LABELS: tuple[str, ...] = tuple(CAUSES) + ("other",)


def apply_shift(images: Tensor, cause: str, strength: float, seed: int = 0) -> Tensor:
    """Apply one cause at ``strength`` to images ``(N, 3, H, W)`` in [0, 1]; returns new images in [0, 1].

    Deterministic given ``seed`` (noise and spatial are random).
    """
    if cause not in SHIFTS:
        raise ValueError(f"unknown cause {cause!r}; causes are {list(SHIFTS)}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    g = torch.Generator().manual_seed(seed)
    return SHIFTS.get(cause).transform(images.float(), strength, g).clamp(0.0, 1.0)
