"""The shapes world and the demo data sets: data cfx makes itself, so the demo and the tests need no download.

- **Shapes world** (:class:`ShapesWorld`): procedurally rendered RGB images (32×32 by default) of six shape
  families. The class lives in the shape only; colour, background hue, texture, size, position and rotation vary.
  Rendering is a pure function of the generating attributes, which every image carries as metadata, so any image
  can be re-rendered with one attribute changed and everything else fixed (:meth:`ShapesWorld.intervene`: a true
  intervention). A *biased variant* ties the background hue (the nuisance attribute) to the class at a configurable
  rate; ``bias_rate=0`` is its unbiased control.
- **Digits**: scikit-learn's bundled handwritten digits (1797 real 8×8 images, 10 classes), upsampled to 32×32 RGB.

The training bands of brightness and saturation are narrow, so the strong end of each cause grid
(:mod:`cfx.core.shifts`) leaves the training distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cfx.core.data import TensorSource

__all__ = ["BANDS", "BIAS_BAND", "DemoData", "HELD_OUT_SHAPE", "SHAPES", "ShapesWorld", "TEXTURES", "WorldConfig",
           "digits_data", "shapes_data", "split_indices", "world_attributes"]

SHAPES = ("circle", "square", "triangle", "plus", "ring", "crescent")
HELD_OUT_SHAPE = "star"  # never in training data: an unfamiliar object
TEXTURES = ("flat", "stripes", "checker", "waves")

# Training bands of the shapes world: (low, high) of uniform draws.
BANDS = {
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
    name = "shapes"
    bands = BANDS  # the generating attributes a re-rendering editor may change, with their training bands

    def __init__(self, config: WorldConfig | None = None):
        self.config = config or WorldConfig()

    @classmethod
    def for_image_size(cls, image_size: int) -> "ShapesWorld":
        """The world rendering at ``image_size`` (what re-rendering editors need)."""
        return cls(WorldConfig(image_size=image_size))

    @property
    def image_size(self) -> int:
        return self.config.image_size

    # the re-rendered attributes the audit edits by default (rotation is a symmetry of most shapes)
    default_edits = tuple(k for k in BANDS if k != "rotation")

    @staticmethod
    def attributes_from_metadata(metadata: Sequence[dict[str, Any]]) -> dict[str, Tensor] | None:
        """The generating attributes rebuilt from source metadata rows; ``None`` when a row lacks them."""
        return world_attributes(metadata)

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
        for name, (lo, hi) in BANDS.items():
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


def world_attributes(metadata: Sequence[dict[str, Any]]) -> dict[str, Tensor] | None:
    """The shapes world's generating attributes rebuilt from source metadata (``None`` when a row lacks them):
    what the re-rendering editors need to intervene on one attribute with everything else fixed."""
    keys = list(BANDS) + ["shape", "texture"]
    if not metadata or any(any(k not in row for k in keys) for row in metadata):
        return None
    shapes = list(SHAPES) + [HELD_OUT_SHAPE]
    try:
        out = {k: torch.tensor([float(row[k]) for row in metadata]) for k in BANDS}
        out["shape"] = torch.tensor([shapes.index(row["shape"]) if isinstance(row["shape"], str) else int(row["shape"])
                                     for row in metadata])
        out["texture"] = torch.tensor([TEXTURES.index(row["texture"]) if isinstance(row["texture"], str)
                                       else int(row["texture"]) for row in metadata])
    except (ValueError, TypeError):
        return None
    return out


# ---------------------------------------------------------------------------------------------- data sets

def split_indices(n: int, seed: int = 22) -> dict[str, Tensor]:
    """The PaRCE paper's splits: 90/10 into train+calibration and test, then 80/20 → train 72 %, calibration 18 %, test 10 %."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * 0.10))
    n_cal = int(round((n - n_test) * 0.20))
    return {"test": perm[:n_test], "calibration": perm[n_test:n_test + n_cal], "train": perm[n_test + n_cal:]}


@dataclass
class DemoData:
    """A demo data set held in memory: images ``(N, 3, S, S)``, labels, metadata rows and the PaRCE paper's splits."""

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
