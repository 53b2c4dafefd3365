"""The demo world: data and models that cfx makes itself, so the demo and the tests need no download.

Two data sets:

- **Shapes world** (:class:`ShapesWorld`): procedurally rendered RGB images (32×32 by default) of six shape
  families. The class lives in the shape only; colour, background hue, texture, size, position and rotation vary.
  Rendering is a pure function of the generating attributes, which every image carries as metadata, so any image
  can be re-rendered with one attribute changed and everything else fixed (:meth:`ShapesWorld.intervene`: a true
  intervention). A *biased variant* ties the background hue (the nuisance attribute) to the class at a configurable
  rate; ``bias_rate=0`` is its unbiased control.
- **Digits**: scikit-learn's bundled handwritten digits (1797 real 8×8 images, 10 classes), upsampled to 32×32 RGB.

The six known causes of low competency of ``../shared/methods/counterfactuals.md`` §A4 are :data:`CAUSES`, each
with a fixed grid of strengths ordered from mild to strong; :func:`apply_cause` applies one (PIL-equivalent
brightness/contrast/colour enhancement, uniform noise, nearest-neighbour pixelation, and for *spatial* a patch of a
real photograph, content that never occurs in training). The training bands of brightness and saturation are
narrow, so the strong end of each grid leaves the training distribution.

:func:`load_demo` trains (on first use) and caches, keyed by a hash of the config, a :class:`~cfx.nets.SmallCNN`
classifier and a :class:`~cfx.nets.ConvAutoencoder` (the reconstruction model PaRCE needs, §A1), with the §A1 splits
(train 72 % / calibration 18 % / test 10 %).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data import DataSourceError, TensorSource
from .models import Classifier, Preprocessing
from .nets import ConvAutoencoder, SmallCNN
from .training import train_model

__all__ = [
    "CAUSES",
    "CauseExamples",
    "SHAPES",
    "HELD_OUT_SHAPE",
    "DemoData",
    "DemoModels",
    "ShapesWorld",
    "WorldConfig",
    "apply_cause",
    "cause_conditions",
    "cause_examples",
    "default_cache_dir",
    "demo_fitted",
    "demo_source",
    "digits_data",
    "explanation_benchmark",
    "review_set",
    "load_demo",
    "shapes_data",
    "split_indices",
]

SHAPES = ("circle", "square", "triangle", "plus", "ring", "crescent")
HELD_OUT_SHAPE = "star"  # never in training data: an unfamiliar object
TEXTURES = ("flat", "stripes", "checker", "waves")

#: The six causes of §A4 with their strength grids, mild → strong (the last value is the strong end).
CAUSES: dict[str, tuple[float, ...]] = {
    "spatial": (0.25, 0.35, 0.45, 0.55, 0.65, 0.75),   # side of a real-photo patch, as a fraction of the image side
    "brightness": (1.5, 2.0, 2.5, 3.0, 4.0, 5.0),      # ImageEnhance.Brightness factor
    "contrast": (0.5, 0.35, 0.25, 0.15, 0.1, 0.05),    # ImageEnhance.Contrast factor
    "saturation": (2.0, 4.0, 6.0, 8.0, 12.0, 16.0),    # ImageEnhance.Color factor
    "noise": (20.0, 40.0, 60.0, 80.0, 100.0, 120.0),   # uniform noise half-width on the 0-255 scale
    "pixelation": (2.0, 3.0, 4.0, 5.0, 6.0, 8.0),      # NEAREST down by this factor, then NEAREST back up
}

# Training bands of the shapes world: (low, high) of uniform draws.
_BANDS = {
    "size": (0.20, 0.32),               # object radius as a fraction of the image side
    "x": (0.32, 0.68), "y": (0.32, 0.68),
    "rotation": (0.0, 2 * math.pi),
    "object_hue": (0.0, 1.0), "object_saturation": (0.40, 0.80), "object_value": (0.60, 0.90),
    "background_hue": (0.0, 1.0), "background_saturation": (0.15, 0.45), "background_value": (0.18, 0.42),
    "texture_frequency": (2.0, 5.0), "texture_angle": (0.0, math.pi), "texture_phase": (0.0, 2 * math.pi),
    "texture_amplitude": (0.03, 0.10),
}
BIAS_BAND = 0.04  # half-width of the class-tied background-hue band in the biased variant


# ---------------------------------------------------------------------------------------------- shapes world

@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a shapes world. Same config → same images, bit for bit."""

    image_size: int = 32
    n_images: int = 9000
    seed: int = 0
    bias_rate: float = 0.0  # share of images whose background hue is tied to their class (0 = unbiased control)

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        if self.n_images < 10:
            raise ValueError(f"n_images must be at least 10, got {self.n_images}")
        if not 0.0 <= self.bias_rate <= 1.0:
            raise ValueError(f"bias_rate must be in [0, 1], got {self.bias_rate}")


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """Batched HSV → RGB; inputs broadcast together, output has a channel dim inserted at -3."""
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + h * 6.0, 6.0)
        channels.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(channels, dim=-3)


def _sd_box(px: Tensor, py: Tensor, bx: float, by: float) -> Tensor:
    dx, dy = px.abs() - bx, py.abs() - by
    outside = torch.sqrt(dx.clamp(min=0) ** 2 + dy.clamp(min=0) ** 2)
    return outside + torch.clamp(torch.maximum(dx, dy), max=0.0)


def _sd_triangle(px: Tensor, py: Tensor, half_side: float) -> Tensor:
    # Equilateral triangle centred on its centroid, pointing up (standard closed-form SDF).
    k = math.sqrt(3.0)
    qx, qy = px.abs() - half_side, py + half_side / k
    fold = qx + k * qy > 0
    qx, qy = torch.where(fold, (qx - k * qy) / 2, qx), torch.where(fold, (-k * qx - qy) / 2, qy)
    qx = qx - qx.clamp(-2 * half_side, 0.0)
    return -torch.sqrt(qx ** 2 + qy ** 2) * torch.sign(qy)


def _shape_sdf(shape: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """Signed distance (object radius 1; negative inside) for each image's shape index (len(SHAPES) = star)."""
    r = torch.sqrt(px ** 2 + py ** 2)
    theta = torch.atan2(py, px)
    sdfs = torch.stack([
        r - 1.0,                                                                     # circle
        _sd_box(px, py, 0.8, 0.8),                                                   # square
        _sd_triangle(px, -py, 0.95),                                                 # triangle
        torch.minimum(_sd_box(px, py, 1.0, 0.34), _sd_box(px, py, 0.34, 1.0)),      # plus
        (r - 0.72).abs() - 0.28,                                                     # ring
        torch.maximum(r - 1.0, -(torch.sqrt((px - 0.5) ** 2 + py ** 2) - 0.78)),   # crescent
        0.6 * (r - (0.62 + 0.38 * torch.cos(5 * theta))),                           # star (held out)
    ])
    index = shape.view(1, -1, *([1] * (px.dim() - 1))).expand(1, *px.shape)
    return sdfs.gather(0, index)[0]


class ShapesWorld:
    """Procedural shapes world: sample generating attributes, render them, intervene on one of them."""

    classes = SHAPES

    def __init__(self, config: WorldConfig | None = None):
        self.config = config or WorldConfig()

    # -- attributes ------------------------------------------------------------------------------------------
    def sample_attributes(self, n: int, seed: int | None = None, shapes: Tensor | None = None,
                          held_out: bool = False) -> dict[str, Tensor]:
        """Draw ``n`` attribute sets from the training bands (deterministic given ``seed``).

        ``shapes`` fixes the class indices; ``held_out=True`` draws the unfamiliar shape family instead.
        With ``bias_rate > 0`` the background hue of that share of images is tied to the class.
        """
        g = torch.Generator().manual_seed(self.config.seed if seed is None else seed)
        u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)  # noqa: E731
        attrs: dict[str, Tensor] = {}
        if held_out:
            attrs["shape"] = torch.full((n,), len(SHAPES), dtype=torch.long)
        elif shapes is not None:
            attrs["shape"] = torch.as_tensor(shapes, dtype=torch.long).clone()
        else:
            attrs["shape"] = torch.randint(len(SHAPES), (n,), generator=g)
        for name, (lo, hi) in _BANDS.items():
            attrs[name] = u(lo, hi)
        attrs["texture"] = torch.randint(len(TEXTURES), (n,), generator=g)
        tied = torch.rand(n, generator=g) < self.config.bias_rate
        class_hue = self.class_hue(attrs["shape"].clamp(max=len(SHAPES) - 1))
        jitter = (torch.rand(n, generator=g) * 2 - 1) * BIAS_BAND
        if not held_out:
            attrs["background_hue"] = torch.where(tied, torch.remainder(class_hue + jitter, 1.0),
                                                  attrs["background_hue"])
        return attrs

    @staticmethod
    def class_hue(shape: Tensor) -> Tensor:
        """The background hue the biased variant ties to each class."""
        return shape.float() / len(SHAPES)

    def bias_aligned(self, attrs: dict[str, Tensor]) -> Tensor:
        """Whether each image's background hue lies in its class's biased band (the spurious cue holds)."""
        d = torch.remainder(attrs["background_hue"] - self.class_hue(attrs["shape"]), 1.0)
        return torch.minimum(d, 1.0 - d) <= BIAS_BAND + 1e-6

    # -- rendering -------------------------------------------------------------------------------------------
    def render(self, attrs: dict[str, Tensor], batch_size: int = 2048) -> Tensor:
        """Render attribute sets to images ``(N, 3, S, S)`` in [0, 1] (pure function of ``attrs``)."""
        n = len(attrs["shape"])
        out = [self._render(({k: v[i:i + batch_size] for k, v in attrs.items()}))
               for i in range(0, n, batch_size)]
        return torch.cat(out) if out else torch.empty(0, 3, self.config.image_size, self.config.image_size)

    def _render(self, a: dict[str, Tensor]) -> Tensor:
        s = self.config.image_size
        coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s
        v = coords.view(1, s, 1)
        u = coords.view(1, 1, s)
        col = lambda name: a[name].float().view(-1, 1, 1)  # noqa: E731
        # Background: HSV colour with a value-modulating texture.
        ang, freq, phase = col("texture_angle"), col("texture_frequency"), col("texture_phase")
        ru = u * torch.cos(ang) + v * torch.sin(ang)
        rv = -u * torch.sin(ang) + v * torch.cos(ang)
        stripes = torch.sin(2 * math.pi * freq * ru + phase)
        checker = torch.tanh(4 * torch.sin(2 * math.pi * freq * ru + phase) * torch.sin(2 * math.pi * freq * rv))
        waves = torch.sin(2 * math.pi * freq * ru + phase) * torch.cos(2 * math.pi * freq * rv)
        texture = a["texture"].view(-1, 1, 1)
        pattern = torch.where(texture == 1, stripes, torch.where(texture == 2, checker,
                                                                 torch.where(texture == 3, waves,
                                                                             torch.zeros_like(stripes))))
        bg_value = (col("background_value") * (1 + col("texture_amplitude") * 2 * pattern)).clamp(0, 1)
        background = _hsv_to_rgb(col("background_hue"), col("background_saturation"), bg_value)
        # Object: a flat-coloured shape with a one-pixel antialiased edge.
        rot, size = col("rotation"), col("size")
        dx, dy = u - col("x"), v - col("y")
        px = (dx * torch.cos(rot) + dy * torch.sin(rot)) / size
        py = (-dx * torch.sin(rot) + dy * torch.cos(rot)) / size
        sdf_pixels = _shape_sdf(a["shape"], px, py) * size * s
        alpha = (0.5 - sdf_pixels).clamp(0, 1).unsqueeze(1)
        obj = _hsv_to_rgb(col("object_hue"), col("object_saturation"), col("object_value"))
        return (background * (1 - alpha) + obj * alpha).clamp(0, 1)

    def intervene(self, attrs: dict[str, Tensor], name: str, value: float | Tensor) -> dict[str, Tensor]:
        """A copy of ``attrs`` with one generating attribute set to ``value`` and everything else fixed."""
        if name not in attrs:
            raise KeyError(f"unknown attribute {name!r}; attributes are {sorted(attrs)}")
        changed = {k: v.clone() for k, v in attrs.items()}
        changed[name] = torch.broadcast_to(torch.as_tensor(value, dtype=attrs[name].dtype),
                                           attrs[name].shape).clone()
        return changed

    @staticmethod
    def metadata(attrs: dict[str, Tensor], aligned: Tensor | None = None) -> list[dict]:
        """Human-readable per-image metadata rows (shape and texture as names, floats rounded)."""
        names = SHAPES + (HELD_OUT_SHAPE,)
        columns = {k: v.tolist() for k, v in attrs.items()}
        rows = []
        for i in range(len(attrs["shape"])):
            row = {k: (round(vals[i], 5) if isinstance(vals[i], float) else vals[i]) for k, vals in columns.items()}
            row["shape"] = names[columns["shape"][i]]
            row["texture"] = TEXTURES[columns["texture"][i]]
            if aligned is not None:
                row["bias_aligned"] = bool(aligned[i])
            rows.append(row)
        return rows


# ---------------------------------------------------------------------------------------------- data sets

def split_indices(n: int, seed: int = 22) -> dict[str, Tensor]:
    """§A1 splits: 90/10 into train+calibration and test, then 80/20 → train 72 %, calibration 18 %, test 10 %."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * 0.10))
    n_cal = int(round((n - n_test) * 0.20))
    return {"test": perm[:n_test], "calibration": perm[n_test:n_test + n_cal], "train": perm[n_test + n_cal:]}


@dataclass
class DemoData:
    """A demo data set held in memory: images ``(N, 3, S, S)``, labels, metadata rows and the §A1 splits."""

    name: str
    images: Tensor
    labels: Tensor
    class_names: list[str]
    metadata: list[dict]
    splits: dict[str, Tensor]
    attributes: dict[str, Tensor] | None = None  # shapes world only: the generating attributes

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        if name not in self.splits:
            raise KeyError(f"unknown split {name!r}; splits are {list(self.splits)}")
        idx = self.splits[name]
        return self.images[idx], self.labels[idx]

    def source(self, split: str = "test") -> TensorSource:
        """The split as an image source whose ids are ``<name>-<index>`` and metadata the generating attributes."""
        idx = self.splits[split] if split != "all" else torch.arange(len(self.labels))
        return TensorSource(self.images[idx], self.labels[idx], ids=[f"{self.name}-{i}" for i in idx.tolist()],
                            metadata=[dict(self.metadata[i], split=split) for i in idx.tolist()],
                            class_names=self.class_names)


def shapes_data(config: WorldConfig | None = None) -> DemoData:
    """Render the shapes world of ``config`` (balanced classes, deterministic by seed)."""
    config = config or WorldConfig()
    world = ShapesWorld(config)
    labels = torch.arange(config.n_images) % len(SHAPES)
    labels = labels[torch.randperm(config.n_images, generator=torch.Generator().manual_seed(config.seed + 1))]
    attrs = world.sample_attributes(config.n_images, shapes=labels)
    images = world.render(attrs)
    name = "shapes" if config.bias_rate == 0 else f"shapes-biased{config.bias_rate:g}"
    return DemoData(name, images, labels, list(SHAPES), world.metadata(attrs, world.bias_aligned(attrs)),
                    split_indices(config.n_images, seed=22 + config.seed), attrs)


def digits_data(image_size: int = 32, seed: int = 0) -> DemoData:
    """scikit-learn's handwritten digits (real, bundled offline), upsampled bilinearly to ``image_size`` RGB."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(0, 1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    meta = [{"source": "sklearn.datasets.load_digits", "index": i} for i in range(len(labels))]
    return DemoData("digits", x.expand(-1, 3, -1, -1).contiguous(), labels, [str(i) for i in range(10)], meta,
                    split_indices(len(labels), seed=22 + seed))


# ---------------------------------------------------------------------------------------------- causes

def _luminance(images: Tensor) -> Tensor:
    """PIL's "L" conversion: ITU-R 601-2 luma in 16-bit fixed point, rounded to the 8-bit grid, as ``(N, 1, H, W)``."""
    v = torch.round(images.double() * 255.0 * 1e4) / 1e4  # inputs on the 8-bit grid map to exact integers
    lum = torch.floor((19595 * v[:, 0] + 38470 * v[:, 1] + 7471 * v[:, 2] + 32768) / 65536)
    return (lum / 255.0).to(images.dtype).unsqueeze(1)


_PHOTOS: Tensor | None = None


def _photos() -> Tensor:
    """scikit-learn's two bundled photographs, downsampled to 96×144: the unfamiliar content of the spatial cause."""
    global _PHOTOS
    if _PHOTOS is None:
        from sklearn.datasets import load_sample_images

        arrays = load_sample_images().images
        photos = torch.stack([torch.from_numpy(np.asarray(a, dtype=np.float32) / 255.0).permute(2, 0, 1)
                              for a in arrays])
        _PHOTOS = F.interpolate(photos, size=(96, 144), mode="bilinear", antialias=True, align_corners=False)
    return _PHOTOS


def apply_cause(images: Tensor, cause: str, strength: float, seed: int = 0) -> Tensor:
    """Apply one §A4 cause at ``strength`` to images ``(N, 3, H, W)`` in [0, 1]; returns new images in [0, 1].

    - brightness / contrast / saturation: ``PIL.ImageEnhance.Brightness/Contrast/Color(img).enhance(strength)``
      (blend with black / the mean grey level / the greyscale image);
    - noise: ``x + U(-k, k)`` per pixel and channel with ``k = strength`` on the 0–255 scale, clipped;
    - pixelation: resize to ``(W // k, H // k)`` with NEAREST, then back with NEAREST;
    - spatial: a square patch of a real photograph (side ``strength`` × image side) pasted at a random place.

    Deterministic given ``seed`` (noise and spatial are random).
    """
    if cause not in CAUSES:
        raise ValueError(f"unknown cause {cause!r}; causes are {list(CAUSES)}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    x = images.float()
    n, _, h, w = x.shape
    g = torch.Generator().manual_seed(seed)
    if cause == "brightness":
        out = x * strength
    elif cause == "contrast":
        mean = torch.round(_luminance(x).mean(dim=(1, 2, 3), keepdim=True) * 255.0) / 255.0
        out = mean + strength * (x - mean)
    elif cause == "saturation":
        grey = _luminance(x)
        out = grey + strength * (x - grey)
    elif cause == "noise":
        out = x + (torch.rand(x.shape, generator=g) * 2 - 1) * (strength / 255.0)
    elif cause == "pixelation":
        k = int(strength)
        small = F.interpolate(x, size=(max(1, h // k), max(1, w // k)), mode="nearest-exact")
        out = F.interpolate(small, size=(h, w), mode="nearest-exact")
    else:  # spatial
        photos = _photos()
        side = max(2, int(round(strength * min(h, w))))
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
        out = torch.where(inside.unsqueeze(1), patch, x)
    return out.clamp(0.0, 1.0)


@dataclass
class CauseExamples:
    """Images modified by one cause that really lower the score below the threshold (§A4 selection rule)."""

    cause: str
    images: Tensor
    source_index: Tensor   # index into the images given to :func:`cause_examples`
    strength: Tensor
    score_before: Tensor
    score_after: Tensor


def cause_examples(images: Tensor, labels: Tensor, classifier: Classifier, cause: str,
                   score: Callable[[Tensor], Tensor] | None = None, threshold: float = 0.9,
                   strengths: Iterable[float] | None = None, seed: int = 0) -> CauseExamples:
    """Build example images of one cause, kept only when they really lower the score (§A4).

    Sources are the images the classifier gets right with ``score ≥ threshold``; each is modified at every
    strength of the grid and kept when ``score < threshold`` afterwards. ``score`` maps images to ``(N,)`` and
    defaults to the maximum softmax probability (pass the PaRCE competency once it is fitted).
    """
    if score is None:
        def score(x: Tensor) -> Tensor:
            with torch.inference_mode():
                return torch.softmax(classifier.logits(x), dim=1).max(1).values.cpu()
    with torch.inference_mode():
        pred = classifier.predict(images)
    before = score(images)
    ok = (pred == labels) & (before >= threshold)
    src = torch.nonzero(ok).flatten()
    kept_images, kept_idx, kept_strength, kept_before, kept_after = [], [], [], [], []
    for j, k in enumerate(strengths if strengths is not None else CAUSES[cause]):
        modified = apply_cause(images[src], cause, k, seed=seed + j)
        after = score(modified)
        keep = after < threshold
        kept_images.append(modified[keep])
        kept_idx.append(src[keep])
        kept_strength.append(torch.full((int(keep.sum()),), float(k)))
        kept_before.append(before[src][keep])
        kept_after.append(after[keep])
    return CauseExamples(cause, torch.cat(kept_images), torch.cat(kept_idx), torch.cat(kept_strength),
                         torch.cat(kept_before), torch.cat(kept_after))


def cause_conditions(images: Tensor, labels: Tensor, seed: int = 0,
                     causes: Iterable[str] | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """Evaluation sets: ``clean`` and, per cause, the images under every strength of its grid (mild to strong).

    Saturation is left out for grey images, where it cannot change anything.
    """
    grey = bool((images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all())
    out = {"clean": (images, labels)}
    for cause in causes if causes is not None else CAUSES:
        if cause == "saturation" and grey:
            continue
        grid = CAUSES[cause]
        out[cause] = (torch.cat([apply_cause(images, cause, k, seed=seed + j) for j, k in enumerate(grid)]),
                      labels.repeat(len(grid)))
    return out


# ---------------------------------------------------------------------------------------------- training + cache

def default_cache_dir() -> Path:
    """``$CFX_CACHE_DIR``, else ``~/.cache/cfx``."""
    return Path(os.environ.get("CFX_CACHE_DIR") or Path.home() / ".cache" / "cfx")


@dataclass(frozen=True)
class TrainingConfig:
    classifier_epochs: int = 12
    autoencoder_epochs: int = 25
    batch_size: int = 64
    autoencoder_batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0


DATASETS = ("shapes", "shapes-biased", "digits")


def _demo_config(name: str, seed: int, bias_rate: float) -> dict:
    if name not in DATASETS:
        raise ValueError(f"unknown demo data set {name!r}; choose one of {DATASETS}")
    world = asdict(WorldConfig(seed=seed, bias_rate=bias_rate if name == "shapes-biased" else 0.0)) \
        if name.startswith("shapes") else {"image_size": 32, "seed": seed}
    train = asdict(TrainingConfig(seed=seed, classifier_epochs=20,
                                  autoencoder_epochs=60 if name == "digits" else 25))
    return {"dataset": name, "world": world, "training": train, "version": 4, "torch": torch.__version__}


@dataclass
class DemoModels:
    """A demo data set with its trained classifier and autoencoder (see :func:`load_demo`)."""

    data: DemoData
    classifier: Classifier
    autoencoder: ConvAutoencoder
    config: dict
    cache_path: Path
    training: dict = field(default_factory=dict)
    loaded_from_cache: bool = False


def load_demo(name: str = "shapes", seed: int = 0, bias_rate: float = 0.9, cache_dir: str | Path | None = None,
              retrain: bool = False, progress: bool = True) -> DemoModels:
    """The demo data set ``name`` (``shapes``, ``shapes-biased`` or ``digits``) with trained models.

    Trains on first use (a few tens of seconds on 2 CPU cores per data set) and caches the weights under
    ``cache_dir`` (default :func:`default_cache_dir`) keyed by a hash of the whole config, so a later call loads
    in about a second. ``bias_rate`` applies to ``shapes-biased`` only. Deterministic given ``seed``.
    """
    config = _demo_config(name, seed, bias_rate)
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / "demo" / f"{name}-{key}"
    if name.startswith("shapes"):
        data = shapes_data(WorldConfig(**config["world"]))
    else:
        data = digits_data(seed=seed)
    size = data.images.shape[-1]
    num_classes = len(data.class_names)
    classifier_net = SmallCNN(num_classes, image_size=size)
    autoencoder = ConvAutoencoder(image_size=size)
    files = [path / "classifier.pt", path / "autoencoder.pt", path / "training.json"]
    loaded = False
    training: dict = {}
    if not retrain and all(f.is_file() for f in files):
        try:
            classifier_net.load_state_dict(torch.load(files[0], map_location="cpu", weights_only=True))
            autoencoder.load_state_dict(torch.load(files[1], map_location="cpu", weights_only=True))
            training = json.loads(files[2].read_text())
            loaded = True
        except Exception:  # a corrupt or stale cache entry is retrained, never trusted
            loaded = False
    if not loaded:
        tc = TrainingConfig(**config["training"])
        x_train, y_train = data.split("train")
        torch.manual_seed(tc.seed)
        classifier_net = SmallCNN(num_classes, image_size=size)
        autoencoder = ConvAutoencoder(image_size=size)
        t0 = time.perf_counter()
        c_loss = train_model(classifier_net, x_train, y_train, tc.classifier_epochs, tc.batch_size, tc.lr, tc.seed,
                      f"{name}: classifier", progress)
        t1 = time.perf_counter()
        a_loss = train_model(autoencoder, x_train, None, tc.autoencoder_epochs, tc.autoencoder_batch_size, tc.lr,
                      tc.seed + 1, f"{name}: autoencoder", progress)
        t2 = time.perf_counter()
        training = {"classifier_seconds": round(t1 - t0, 2), "autoencoder_seconds": round(t2 - t1, 2),
                    "classifier_loss": c_loss, "autoencoder_loss": a_loss}
        path.mkdir(parents=True, exist_ok=True)
        for obj, target in ((classifier_net.state_dict(), files[0]), (autoencoder.state_dict(), files[1])):
            tmp = target.with_suffix(".tmp")
            torch.save(obj, tmp)
            tmp.replace(target)
        (path / "config.json").write_text(json.dumps(config, indent=2))
        files[2].write_text(json.dumps(training))
    classifier_net.eval()
    autoencoder.eval()
    classifier = Classifier.wrap(classifier_net, preprocessing=Preprocessing(size=(size, size)),
                                 class_names=data.class_names, num_classes=num_classes, source=f"demo:{name}")
    return DemoModels(data, classifier, autoencoder, config, path, training, loaded)


def demo_fitted(models: DemoModels, progress: bool = True, refit: bool = False):
    """The fitted folder of a demo data set (PaRCE, Mahalanobis, the steep-slope oracle), made with
    :func:`cfx.fitted.fit` on its train and calibration splits and cached beside the demo models."""
    from .fitted import Fitted, FittedError, TrustOracle, fit

    path = models.cache_path / "fitted"
    seed = int(models.config["training"]["seed"])
    if not refit and (path / "manifest.json").is_file():
        try:
            fitted = Fitted.load(path, models.classifier)
            current = (fitted.manifest.get("oracle") == TrustOracle(seed=seed).config()
                       and "latent_index" in fitted.manifest["counts"])  # made by this version of cfx fit
            if current:
                return fitted
        except FittedError:
            pass  # stale or corrupted: fit again
    return fit(models.classifier, models.data.source("train"), path, calibration=models.data.source("calibration"),
               autoencoder=models.autoencoder, oracle=True, seed=seed,
               progress=progress)


def demo_source(spec: str) -> TensorSource:
    """``demo:shapes[:SPLIT]``, ``demo:shapes-biased[:SPLIT]`` or ``demo:digits[:SPLIT]`` as an image source.

    SPLIT is ``train``, ``calibration``, ``test`` (default), ``all`` or ``review`` (:func:`review_set`: test
    images with injected causes and, for shapes, unfamiliar stars). Only the data is built, not the models.
    """
    parts = spec.split(":")
    name = parts[1] if len(parts) > 1 else "shapes"
    split = parts[2] if len(parts) > 2 else "test"
    if split not in ("train", "calibration", "test", "all", "review"):
        raise DataSourceError(f"unknown split {split!r} in {spec!r}; use train, calibration, test, all or review")
    if name == "shapes":
        data = shapes_data()
    elif name == "shapes-biased":
        data = shapes_data(WorldConfig(bias_rate=0.9))
    elif name == "digits":
        data = digits_data()
    else:
        raise DataSourceError(f"unknown demo data set {name!r} in {spec!r}; use shapes, shapes-biased or digits")
    return review_set(data) if split == "review" else data.source(split)


def review_set(data: "DemoData", n: int = 300, seed: int = 0, unfamiliar: int = 20) -> TensorSource:
    """A review set for the demo's main job: ``n`` test images, two thirds of them changed by one of the six causes
    (in turn, at a strength from the strong half of its grid) and, for the shapes world, ``unfamiliar`` images of the
    held-out star shape. Metadata ``injected_cause`` / ``strength`` say what was done, so a reviewer can check the
    explanations against the truth. Saturation is skipped on grey images."""
    x, y = data.split("test")
    n = min(n, len(x))
    idx = data.splits["test"][:n]
    images, labels = x[:n].clone(), y[:n].clone()
    grey = bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all())
    causes = [c for c in CAUSES if not (grey and c == "saturation")]
    g = torch.Generator().manual_seed(seed)
    meta = [dict(data.metadata[i], injected_cause="none", strength=None) for i in idx.tolist()]
    changed = torch.nonzero(torch.arange(n) % 3 != 0).flatten()
    for j, cause in enumerate(causes):
        which = changed[j::len(causes)]
        if len(which) == 0:
            continue
        grid = CAUSES[cause]
        strong = grid[len(grid) // 2:]
        k = strong[int(torch.randint(len(strong), (1,), generator=g))]
        images[which] = apply_cause(images[which], cause, k, seed=seed + j)
        for i in which.tolist():
            meta[i].update(injected_cause=cause, strength=k)
    ids = [f"{data.name}-{i}" for i in idx.tolist()]
    if data.attributes is not None and unfamiliar > 0:
        world = ShapesWorld(WorldConfig(image_size=x.shape[-1]))
        attrs = world.sample_attributes(unfamiliar, seed=seed + 99, held_out=True)
        images = torch.cat([images, world.render(attrs)])
        labels = torch.cat([labels, torch.full((unfamiliar,), -1, dtype=torch.long)])
        ids += [f"star-{i}" for i in range(unfamiliar)]
        meta += [{"shape": HELD_OUT_SHAPE, "injected_cause": "unfamiliar object (never in training)", "strength": None}
                 for _ in range(unfamiliar)]
    return TensorSource(images, labels, ids=ids, metadata=meta, class_names=data.class_names)


def explanation_benchmark(models: "DemoModels", fitted, per_cause: int = 100, seed: int = 1,
                          reporter=None, progress: bool = False) -> dict:
    """The six-cause benchmark of §A4/§A5 on a demo data set, with the offline evidence reporter by default.

    Each cause is applied at every strength of its grid to the test split (causes seeded with ``seed``); only
    modified images whose PaRCE competency falls below 0.9 are kept (§A4), up to ``per_cause`` per cause drawn at
    random; evidence is collected once with the Reco, LGD and LNN counterfactuals and explained in five views: all
    of it, without counterfactual evidence (ablation), and with each generator alone. Saturation is skipped on grey
    images. Returns ``{"causes": {cause: {"kept": n_kept, "used": n, "per_strength": {k: {"n", "accuracy"}}}},
    "views": {view: {"per_cause", "counts", "mean"}}}``.
    """
    from tqdm.auto import tqdm

    from .evidence import collect_evidence
    from .prompts import EvidenceReporter, score_explanations

    if per_cause < 1:
        raise ValueError(f"per_cause must be at least 1, got {per_cause}")
    reporter = reporter or EvidenceReporter()
    clf = models.classifier
    x, y = models.data.split("test")
    grey = bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all())
    views = {"all": ("reco", "lgd", "lnn"), "no counterfactual": (), "reco": ("reco",), "lgd": ("lgd",),
             "lnn": ("lnn",)}
    named: dict[str, list] = {v: [] for v in views}
    truth: list[str] = []
    causes: dict[str, dict] = {}
    for cause in tqdm([c for c in CAUSES if not (grey and c == "saturation")], desc="causes", disable=not progress):
        ex = cause_examples(x, y, clf, cause, score=lambda im: fitted.parce.score(clf, im), seed=seed)
        if len(ex.images) == 0:
            causes[cause] = {"kept": 0, "used": 0, "per_strength": {}}
            continue
        pick = torch.randperm(len(ex.images), generator=torch.Generator().manual_seed(seed))[:per_cause]
        evidence = collect_evidence(clf, fitted, ex.images[pick])
        strengths = ex.strength[pick].tolist()
        hits: dict[float, list[bool]] = {}
        for view, gens in views.items():
            exps = [reporter.explain(e.restricted_to(gens)) for e in evidence]
            named[view] += exps
            if view == "all":
                for k, e in zip(strengths, exps):
                    hits.setdefault(round(k, 4), []).append(e.cause == cause)
        truth += [cause] * len(evidence)
        kept_per = {round(float(k), 4): int((ex.strength == k).sum()) for k in CAUSES[cause]}
        causes[cause] = {"kept": int(len(ex.images)), "used": len(evidence),
                         "per_strength": {k: {"kept": kept_per.get(k, 0), "n": len(v), "accuracy": sum(v) / len(v)}
                                          for k, v in sorted(hits.items())}}
    results = {}
    for view in views:
        r = score_explanations(named[view], truth) if truth else {"per_cause": {}, "counts": {}, "mean": float("nan")}
        results[view] = {"per_cause": r["per_cause"], "counts": r["counts"], "mean": r["mean"]}
    return {"dataset": models.data.name, "seed": seed,
            "per_cause": per_cause, "causes": causes, "views": results}
