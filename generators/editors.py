"""Gradual property edits: editors that change one property by a controlled strength, batched over images and
strengths (see ``docs/methods.md#property-edits-and-epgm``).

Every editor has one verb, ``edit(images, strengths) -> (N, S + 1, 3, H, W)``, whose first image per sample is
the original (x⁽⁰⁾ = x), then one image per strength. ``strengths`` is shared by every image ``(S,)`` or given per
image ``(N, S)``. An editor declares its ``property``, its ``neutral`` strength (the identity), its ``range`` and
the ``directions`` that make sense (``sweep(direction, steps)`` gives the strengths).

Parametric editors work on any image tensor: brightness, contrast, saturation, hue shift, noise, denoise,
pixelation, sharpening, blur and an occlusion patch; :data:`EDITORS` registers them by property name (a new
editor is one :class:`Editor` subclass plus one ``EDITORS.register`` line). :class:`AttributeEditor` re-renders an
image of a procedural world with one generating attribute changed and everything else fixed: a true intervention.
Worlds that can do this register in :data:`WORLDS` (the demo's shapes world does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cfx.core.images import gaussian_blur, luma
from cfx.core.registry import Registry
from cfx.core.shifts import scale_brightness

__all__ = [
    "AttributeEditor", "Blur", "Brightness", "Contrast", "Denoise", "EDITORS", "Editor", "HueShift", "Noise",
    "Occlusion", "Pixelation", "RenderingWorld", "Saturation", "Sharpen", "WORLDS", "parametric_editors",
    "restoring_editors", "strength_grid",
]


def _luma(x: Tensor) -> Tensor:
    return luma(x).unsqueeze(1)


def strength_grid(strengths: Sequence[float] | Tensor, n: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> Tensor:
    """Strengths as an ``(N, S)`` grid: a shared ``(S,)`` sequence is repeated for every image; an ``(N, S)`` one is
    checked against the number of images."""
    s = torch.as_tensor(strengths, dtype=dtype, device=device)
    if s.dim() <= 1:
        s = s.flatten()
        if len(s) == 0:
            raise ValueError("give at least one strength")
        return s.unsqueeze(0).expand(n, -1)
    if s.dim() != 2 or s.shape[0] != n or s.shape[1] == 0:
        raise ValueError(f"strengths must be shared (S,) or per image (N, S) with N = {n} images, got "
                         f"{tuple(s.shape)}")
    return s


def _check_anchor(anchor: Tensor, images: Tensor) -> None:
    if anchor.shape != images.shape:
        raise ValueError(f"anchor must be the editor's anchor of these images, shape {tuple(images.shape)}, got "
                         f"{tuple(anchor.shape)}")


@dataclass(frozen=True)
class Editor:
    """Base of all editors. Subclasses implement ``_apply(images, strength (N,)) -> images``."""

    property: str = "property"
    neutral: float = 0.0
    range: tuple[float, float] = (0.0, 1.0)
    directions: tuple[str, ...] = ("increase",)
    #: whether the edit can correct an image (tried by the restoring search) or only probes it (occlusion)
    restores: ClassVar[bool] = True
    #: whether the strengths round to a few distinct edits (pixelation's block sizes), so the classifier's response
    #: jumps from one strength to the next: the screened search (:func:`~cfx.generators.sweep_edits`) then sweeps
    #: the editor at every strength instead of screening it at a few
    discrete_strengths: ClassVar[bool] = False

    def _apply(self, images: Tensor, strength: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _anchor(self, images: Tensor) -> Tensor | None:
        """What the edit blends toward when it does not depend on the strength (e.g. the median-filtered image), so
        a sweep computes it once per image instead of once per strength; None when there is no such image."""
        return None

    def _blend(self, images: Tensor, anchor: Tensor, strength: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def anchor(self, images: Tensor) -> Tensor | None:
        """The strength-free part of the edit of ``images`` (e.g. their median-filtered copy), or None for editors
        without one. Computed once, it can be passed to :meth:`apply` and :meth:`edit` for every strength."""
        return self._anchor(images)

    def apply(self, images: Tensor, strength: float | Tensor, *, anchor: Tensor | None = None) -> Tensor:
        """Edit ``images (N, 3, H, W)`` in [0, 1] at one strength per image (or one for all); stays in [0, 1].
        ``anchor``: :meth:`anchor` of the same images, when already computed."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        s = torch.as_tensor(strength, dtype=images.dtype, device=images.device).flatten()
        if s.numel() == 1:
            s = s.expand(len(images))
        if len(s) != len(images):
            raise ValueError(f"{len(s)} strengths for {len(images)} images")
        if anchor is not None:
            _check_anchor(anchor, images)
            return self._blend(images, anchor, s).clamp(0, 1)
        return self._apply(images, s).clamp(0, 1)

    def edit(self, images: Tensor, strengths: Sequence[float] | Tensor, *, attributes: Any = None,
             anchor: Tensor | None = None) -> Tensor:
        """The gradual intervention: ``(N, S + 1, 3, H, W)``, original first, then one image per strength.

        ``strengths``: shared ``(S,)`` or per image ``(N, S)``. ``attributes`` is for re-rendering editors and
        ignored here (pixels are all a parametric edit needs). ``anchor``: :meth:`anchor` of the same images, when
        already computed."""
        return torch.cat([images.unsqueeze(1), self.edited(images, strengths, anchor=anchor)], dim=1)

    def edited(self, images: Tensor, strengths: Sequence[float] | Tensor, *, anchor: Tensor | None = None) -> Tensor:
        """:meth:`edit` without the original: ``(N, S, 3, H, W)``, one image per strength (no copy of the originals,
        for sweeps that already hold them)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        s = strength_grid(strengths, len(images), images.dtype, images.device)
        lo, hi = min(self.range), max(self.range)
        if (s < lo - 1e-9).any() or (s > hi + 1e-9).any():
            raise ValueError(f"{self.property} strengths must lie in {self.range}, got {s.min():.3g}..{s.max():.3g}")
        n, steps = s.shape
        if anchor is None:
            anchor = self._anchor(images)
        else:
            _check_anchor(anchor, images)
        if anchor is None:
            flat = self.apply(images.repeat_interleave(steps, 0), s.reshape(-1))
        else:  # the strength-free part once per image, then one blend per strength
            flat = self._blend(images.repeat_interleave(steps, 0), anchor.repeat_interleave(steps, 0),
                               s.reshape(-1)).clamp(0, 1)
        return flat.view(n, steps, *images.shape[1:])

    def sweep(self, direction: str | None = None, steps: int = 10) -> Tensor:
        """``steps`` strengths from just past neutral to the end of the range in ``direction``."""
        direction = direction or self.directions[0]
        if direction not in self.directions:
            raise ValueError(f"{self.property} edits go {self.directions}, not {direction!r}")
        end = max(self.range) if direction == "increase" else min(self.range)
        return torch.linspace(self.neutral, end, steps + 1)[1:]


@dataclass(frozen=True)
class Brightness(Editor):
    """``x · k`` (``ImageEnhance.Brightness``); neutral 1."""

    property: str = "brightness"
    neutral: float = 1.0
    range: tuple[float, float] = (0.0, 5.0)
    directions: tuple[str, ...] = ("decrease", "increase")

    def _apply(self, x, s):
        return scale_brightness(x, s.view(-1, 1, 1, 1))  # the same operation as the brightness shift


@dataclass(frozen=True)
class Contrast(Editor):
    """Blend with the mean grey level (``ImageEnhance.Contrast``); neutral 1."""

    property: str = "contrast"
    neutral: float = 1.0
    range: tuple[float, float] = (0.0, 4.0)
    directions: tuple[str, ...] = ("increase", "decrease")

    def _apply(self, x, s):
        mean = _luma(x).mean(dim=(1, 2, 3), keepdim=True)
        return mean + s.view(-1, 1, 1, 1) * (x - mean)


@dataclass(frozen=True)
class Saturation(Editor):
    """Blend with the greyscale image (``ImageEnhance.Color``); neutral 1."""

    property: str = "saturation"
    neutral: float = 1.0
    range: tuple[float, float] = (0.0, 16.0)
    directions: tuple[str, ...] = ("decrease", "increase")

    def _apply(self, x, s):
        grey = _luma(x)
        return grey + s.view(-1, 1, 1, 1) * (x - grey)


@dataclass(frozen=True)
class HueShift(Editor):
    """Rotate the hue by ``s`` turns (YIQ chroma rotation, luma kept); neutral 0."""

    property: str = "hue"
    neutral: float = 0.0
    range: tuple[float, float] = (-0.5, 0.5)
    directions: tuple[str, ...] = ("increase", "decrease")

    def _apply(self, x, s):
        to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                              dtype=x.dtype, device=x.device)
        yiq = torch.einsum("ij,njhw->nihw", to_yiq, x)
        a = 2 * math.pi * s.view(-1, 1, 1)
        i = yiq[:, 1] * torch.cos(a) - yiq[:, 2] * torch.sin(a)
        q = yiq[:, 1] * torch.sin(a) + yiq[:, 2] * torch.cos(a)
        return torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_yiq), torch.stack([yiq[:, 0], i, q], 1))


@dataclass(frozen=True)
class Noise(Editor):
    """Add ``s`` × a fixed uniform noise field in [-1, 1] (seeded, so the sequence is smooth); neutral 0."""

    property: str = "noise"
    neutral: float = 0.0
    range: tuple[float, float] = (0.0, 0.5)
    seed: int = 0

    def _apply(self, x, s):
        g = torch.Generator().manual_seed(self.seed)
        field = torch.rand(x.shape[1:], generator=g).to(x.device, x.dtype) * 2 - 1  # same field for every image
        return x + s.view(-1, 1, 1, 1) * field


@dataclass(frozen=True)
class Denoise(Editor):
    """Blend toward the 3×3 median-filtered image; neutral 0, full median at 1."""

    property: str = "denoise"
    neutral: float = 0.0
    range: tuple[float, float] = (0.0, 1.0)

    def _apply(self, x, s):
        return self._blend(x, self._anchor(x), s)

    def _anchor(self, x):
        n, c, h, w = x.shape
        patches = F.unfold(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3).view(n, c, 9, h * w)
        return patches.median(dim=2).values.view(n, c, h, w)

    def _blend(self, x, median, s):
        return x + s.view(-1, 1, 1, 1) * (median - x)


@dataclass(frozen=True)
class Pixelation(Editor):
    """Area-average over ``s``×``s`` blocks, then nearest upsampling; neutral 1 (fractional s rounds)."""

    property: str = "pixelation"
    neutral: float = 1.0
    range: tuple[float, float] = (1.0, 8.0)
    discrete_strengths: ClassVar[bool] = True

    def _apply(self, x, s):
        out = x.clone()
        h, w = x.shape[-2:]
        blocks = s.round().long()
        for k in torch.unique(blocks).tolist():  # one pass per distinct block size, batched over images
            if k <= 1:
                continue
            sel = torch.nonzero(blocks == k).flatten()
            small = F.adaptive_avg_pool2d(x[sel], (max(1, h // k), max(1, w // k)))
            out[sel] = F.interpolate(small, size=(h, w), mode="nearest")
        return out


@dataclass(frozen=True)
class Sharpen(Editor):
    """Unsharp mask ``x + s (x − blur(x))`` with a σ = 1 Gaussian; neutral 0."""

    property: str = "sharpness"
    neutral: float = 0.0
    range: tuple[float, float] = (0.0, 4.0)

    def _apply(self, x, s):
        return self._blend(x, self._anchor(x), s)

    def _anchor(self, x):
        return gaussian_blur(x, torch.ones(len(x), device=x.device, dtype=x.dtype))

    def _blend(self, x, blurred, s):
        return x + s.view(-1, 1, 1, 1) * (x - blurred)


@dataclass(frozen=True)
class Blur(Editor):
    """Gaussian blur with standard deviation ``s`` pixels; neutral 0."""

    property: str = "blur"
    neutral: float = 0.0
    range: tuple[float, float] = (0.0, 3.0)

    def _apply(self, x, s):
        return gaussian_blur(x, s)


@dataclass(frozen=True)
class Occlusion(Editor):
    """A mid-grey square at the centre whose side is ``s`` × the image side; neutral 0."""

    property: str = "occlusion"
    neutral: float = 0.0
    range: tuple[float, float] = (0.0, 0.8)
    value: float = 0.5
    restores: ClassVar[bool] = False  # covering content with grey corrects nothing (see restoring_editors)

    def _apply(self, x, s):
        h, w = x.shape[-2:]
        rows = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5 - h / 2).abs().view(1, h, 1)
        cols = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5 - w / 2).abs().view(1, 1, w)
        half = (s * min(h, w) / 2).view(-1, 1, 1)
        inside = ((rows < half) & (cols < half)).unsqueeze(1)
        return torch.where(inside, torch.full_like(x, self.value), x)


#: Parametric editors by property name, in a fixed order (the order of tables and reports).
EDITORS: Registry[type[Editor]] = Registry("editor")
for _editor in (Brightness, Contrast, Saturation, HueShift, Noise, Denoise, Pixelation, Sharpen, Blur, Occlusion):
    EDITORS.register(_editor.property, _editor)


def parametric_editors() -> list[Editor]:
    """One of each registered parametric editor with its default range."""
    return [cls() for cls in EDITORS.values()]


def restoring_editors() -> list[Editor]:
    """The editors the restoring view tries: the parametric ones that correct an image without removing content.

    Occlusion is left out: covering the object with grey can raise a reconstruction-based competency (a flat patch
    is easy to reconstruct), but it restores nothing; it stays available as a property probe.
    """
    return [e for e in parametric_editors() if e.restores]


class RenderingWorld(Protocol):
    """A procedural world whose images are a pure function of generating attributes (the demo's shapes world).

    ``bands`` maps each editable attribute to its training band ``(low, high)``; ``render(attrs)`` draws images
    ``(N, 3, S, S)``; ``attributes_from_metadata(rows)`` rebuilds the attributes from a data source's metadata
    (``None`` when the rows do not carry them); ``default_edits`` are the attributes an audit re-renders.
    """

    name: str
    bands: Mapping[str, tuple[float, float]]
    default_edits: tuple[str, ...]
    image_size: int

    def render(self, attrs: dict[str, Tensor]) -> Tensor: ...


#: Worlds whose images re-rendering editors can intervene on: name → class with ``for_image_size(size)`` and
#: ``attributes_from_metadata(rows)``. The demo plugin registers its shapes world.
WORLDS: Registry[Any] = Registry("re-rendering world")


class AttributeEditor:
    """Re-render images of a procedural world with one generating attribute changed (a true intervention).

    ``mode="offset"`` adds the strength (hues wrap around), ``"set"`` sets the attribute to it. ``edit`` needs the
    generating ``attributes`` (rows of the world's attribute table), since only they determine the image; the pixel
    ``images`` it is handed are not used.
    """

    def __init__(self, world: RenderingWorld, attribute: str, range: tuple[float, float] = (-0.5, 0.5),
                 mode: str = "offset"):
        if attribute not in world.bands:
            raise ValueError(f"attribute must be one of {sorted(world.bands)}, got {attribute!r}")
        if mode not in ("offset", "set"):
            raise ValueError(f"mode must be offset or set, got {mode!r}")
        self.world, self.attribute, self.range, self.mode = world, attribute, range, mode
        self.property = attribute
        self.neutral = 0.0 if mode == "offset" else None
        self.directions = ("increase", "decrease") if mode == "offset" else ("increase",)

    def edit(self, images: Tensor | None, strengths: Sequence[float] | Tensor, *,
             attributes: dict[str, Tensor] | None = None) -> Tensor:
        """``(N, S + 1, 3, H, W)``: the rendered originals, then one re-rendering per strength (shared ``(S,)`` or
        per image ``(N, S)``)."""
        if attributes is None:
            raise ValueError(f"re-rendering {self.attribute} needs the generating attributes of the images "
                             "(attributes=...); pixels alone cannot be re-rendered")
        n = len(attributes["shape"])
        s = strength_grid(strengths, n)
        steps = s.shape[1]
        rep = {k: v.repeat_interleave(steps, 0) for k, v in attributes.items()}
        base = rep[self.attribute].float()
        value = base + s.reshape(-1) if self.mode == "offset" else s.reshape(-1)
        if self.attribute.endswith("hue"):
            value = torch.remainder(value, 1.0)
        rep[self.attribute] = value
        size = self.world.image_size
        edited = self.world.render(rep).view(n, steps, 3, size, size)
        return torch.cat([self.world.render(attributes).unsqueeze(1), edited], dim=1)

    def sweep(self, direction: str | None = None, steps: int = 10) -> Tensor:
        lo, hi = self.range
        if self.mode == "set":
            return torch.linspace(lo, hi, steps)
        end = hi if (direction or "increase") == "increase" else lo
        return torch.linspace(0.0, end, steps + 1)[1:]
