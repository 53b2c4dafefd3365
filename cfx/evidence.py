"""Evidence: what cfx measured about one flagged image, as one serialisable record, and the image statistics behind it.

Everything downstream (reporters, reports) reads only :class:`Evidence`. :func:`collect_evidence` fills it from
the stages before: trust scores, counterfactuals with their competency before and after, the restoring edit,
property curves with EPGM, image statistics of the original against the confident reference images and against
its counterfactual, and the nearest confident neighbour.
"""

from __future__ import annotations

import functools
import json
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cfx.core.images import as_float_images, luma_and_detail, resize
from cfx.core.models import Classifier
from cfx.core.shifts import CAUSE_LABELS, SHIFTS
from cfx.generators import (
    AutoencoderReconstruction,
    EditRanges,
    ImageGradientDescent,
    LatentGradientDescent,
    LatentNearestNeighbours,
    SEARCHES,
    NearestTrustedImage,
    TrustTarget,
    parametric_editors,
    sweep_edits,
)
from cfx.trust.fitted import Fitted
from cfx.trust.latent_index import LatentIndex
from cfx.trust.scores import default_scores, score_batch

__all__ = ["CAUSE_LABELS", "FACTOR_CHANGES", "FACTOR_PATHS", "GENERATORS", "MIN_STATISTICS_VERSION",
           "REGION_STATISTICS", "STATISTICS", "STATISTICS_VERSION", "Evidence", "FactorModel", "RegionModel",
           "RunReference", "blockiness", "collect_evidence", "confined_to_region", "difference_mass",
           "generator_availability", "image_statistics", "reference_statistics", "resolve_edit_ranges",
           "resolve_search", "typical_core"]

STATISTICS = ("brightness", "contrast", "saturation", "high_frequency", "blockiness", "detail_localisation",
              "colour_localisation", "relative_contrast", "relative_detail", "edge_abruptness",
              "border_brightness_imbalance", "border_detail_imbalance", "two_sided_clipping")
#: The z-scores of :class:`RegionModel` (already relative to the reference), kept beside :data:`STATISTICS`'s.
REGION_STATISTICS = ("outside_region_departure", "inside_region_departure")


#: The definition of :func:`image_statistics`, :class:`FactorModel` and :class:`RegionModel`. A fitted folder whose
#: stored reference statistics are older than :data:`MIN_STATISTICS_VERSION` (or missing) has them measured again
#: from its latent index's confident images; versions 3 (before blur's path in the factor model and the two-sided
#: clipping statistic) and 4 (before the region model) are used as they are, with a warning that says what cannot be
#: read until the folder is fitted again.
STATISTICS_VERSION = 7
MIN_STATISTICS_VERSION = 3
_MISSING_BEFORE = {3: "no path for blur and no two-sided clipping, so blurred images cannot be named and clipping is "
                      "not read", 4: "no region model, so a change confined to one region is read as a global one",
                   5: "one factor model for grey and colour images together, so a colour image turned grey can look "
                      "typical and a grey image's brightness and contrast are misread",
                   6: "one region model for grey and colour images together, so a colour image turned grey or more "
                      "colourful can read as new content in one region"}

_RING = torch.tensor([i for i in range(16) if i // 4 in (0, 3) or i % 4 in (0, 3)])  # border tiles of a 4×4 grid


def _spread(tiles: Tensor) -> Tensor:
    return tiles.max(1).values - tiles.min(1).values


def _imbalance(tiles: Tensor) -> Tensor:
    return _spread(tiles) / tiles.mean(1).clamp_min(1e-3)


def _chroma(x: Tensor) -> Tensor:
    """Max − min over channels after a 3×3 box blur ``(N, H, W)``: the colour of regions, not per-pixel speckle."""
    smooth = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return smooth.max(1).values - smooth.min(1).values


#: The side (px) at which :func:`coarse_saturation` reads colour.
COARSE_SIDE = 32


def coarse_saturation(x: Tensor) -> Tensor:
    """Mean saturation ``(N,)`` of images ``(N, 3, H, W)`` area-downsampled to at most :data:`COARSE_SIDE` px a side:
    the colour of regions. Colour noise on a grey image averages away at that scale (σ 0.1 leaves about 0.01), while a
    colour image desaturated to a tenth keeps its regions' colour. It decides which images are grey."""
    h, w = x.shape[-2:]
    if max(h, w) > COARSE_SIDE:
        scale = COARSE_SIDE / max(h, w)
        x = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    return _chroma(x).mean((1, 2))


def image_statistics(images: Tensor) -> dict[str, Tensor]:
    """Per-image statistics ``(N,)`` of images ``(N, 3, H, W)`` in [0, 1]:

    brightness (mean luma), contrast (std of luma), saturation (mean of max − min over channels after a 3×3 box
    blur, so per-pixel colour speckle does not count), colour localisation (the most colourful of 4×4 tiles over the
    mean tile), high-frequency
    energy (mean |Laplacian| of luma), :func:`blockiness` (the signature of nearest-neighbour pixelation) and
    detail localisation (the most detailed of 4×4 tiles over the mean tile: ≈ 1 for noise spread everywhere, high
    when fine detail sits in one region).

    Three ratios do not change when the whole image is scaled brighter or darker: relative contrast (contrast /
    brightness); relative detail (high-frequency energy / contrast, which a contrast change leaves alone too: more
    detail than the image's contrast explains), and edge abruptness (mean |Laplacian| over mean |gradient|: high for
    isolated pixel changes and the steps between uniform blocks, lower for smooth gradients and natural edges).

    Two-sided clipping is the share of pixels clipped at *both* ends, ``min(share black, share white)`` (black: every
    channel ≤ 2/255; white: every channel ≥ 253/255): harsh contrast drives the darks to black and the lights to
    white at once, while over-exposure clips only whites, under-exposure only blacks, and noise or over-saturation
    rarely clip all three channels together.

    Two imbalances tell a change to part of the image from one to all of it: over the 12 border tiles of a 4×4 grid,
    the tiles' brightness range (max − min) over the image's contrast, and their high-frequency energy's range over
    its mean. A global change of brightness, contrast or detail keeps both ratios; new content over part of the
    border sets the tiles apart.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    x = images.float()
    y, lap = luma_and_detail(x)
    tiles = F.adaptive_avg_pool2d(lap.unsqueeze(1), 4).flatten(1)
    tiles_full = F.adaptive_avg_pool2d(F.pad(lap, (1, 1, 1, 1)).unsqueeze(1), 4).flatten(1)  # aligned with y
    chroma = _chroma(x)
    chroma_tiles = F.adaptive_avg_pool2d(chroma.unsqueeze(1), 4).flatten(1)
    brightness, contrast, detail = y.mean((1, 2)), y.std((1, 2)), lap.mean((1, 2))
    gradient = (y[:, :, 1:] - y[:, :, :-1]).abs().mean((1, 2)) + (y[:, 1:] - y[:, :-1]).abs().mean((1, 2))
    return {"brightness": brightness, "contrast": contrast, "saturation": chroma.mean((1, 2)),
            "colour_localisation": chroma_tiles.max(1).values / chroma_tiles.mean(1).clamp_min(1e-3),
            "high_frequency": detail, "blockiness": blockiness(x),
            "detail_localisation": tiles.max(1).values / tiles.mean(1).clamp_min(1e-6),
            "relative_contrast": contrast / brightness.clamp_min(1e-3),
            "relative_detail": detail / contrast.clamp_min(1e-3),
            "edge_abruptness": detail / gradient.clamp_min(1e-4),
            "border_brightness_imbalance": _spread(F.adaptive_avg_pool2d(y.unsqueeze(1), 4).flatten(1)[:, _RING])
            / contrast.clamp_min(1e-3),
            "border_detail_imbalance": _imbalance(tiles_full[:, _RING]),
            "two_sided_clipping": torch.minimum((x.amax(1) <= 2 / 255).float().mean((1, 2)),
                                                (x.amin(1) >= 253 / 255).float().mean((1, 2))),
            "coarse_saturation": coarse_saturation(x)}


def reference_statistics(reference: Tensor, factors: bool = False):
    """Mean and spread of :func:`image_statistics` over confident reference images, for z-scores; with ``factors``
    also their :class:`FactorModel` (``(mean, std, factors)``).

    The spread has a floor (5 % of the mean, at least 0.01) so z stays finite where the reference barely varies
    (e.g. the saturation of grey digits).
    """
    if len(reference) < 2:
        raise ValueError("reference statistics need at least 2 images")
    # in chunks: a few thousand 224-px images do not fit in memory as float at once
    parts = [image_statistics(as_float_images(reference[i:i + 256])) for i in range(0, len(reference), 256)]
    stats = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    mean = {k: float(v.mean()) for k, v in stats.items()}
    std = {k: max(float(v.std()), 0.05 * abs(mean[k]), 0.01) for k, v in stats.items()}
    if factors:
        return mean, std, FactorModel.measure(reference, stats) if len(reference) >= 5 else None
    return mean, std


#: The global changes an image can undergo, each way, and the known cause (:data:`cfx.core.shifts.SHIFTS`) and
#: direction that makes it: ``{(change, direction): (cause, cause direction)}``. Brightness, contrast and saturation
#: go both ways by their own causes; fine detail goes up by noise and down by blur.
FACTOR_PATHS: dict[tuple[str, str], tuple[str, str]] = {
    ("brightness", "increase"): ("brightness", "increase"), ("brightness", "decrease"): ("brightness", "decrease"),
    ("contrast", "increase"): ("contrast", "increase"), ("contrast", "decrease"): ("contrast", "decrease"),
    ("saturation", "increase"): ("saturation", "increase"), ("saturation", "decrease"): ("saturation", "decrease"),
    ("detail", "increase"): ("noise", "increase"), ("detail", "decrease"): ("blur", "increase")}
#: The global changes, in order.
FACTOR_CHANGES: tuple[str, ...] = tuple(dict.fromkeys(change for change, _ in FACTOR_PATHS))
_FACTORS = ("brightness", "contrast", "saturation", "high_frequency")
_FLOORS = (1e-3, 1e-3, 1e-3, 1e-4)


def _factor_statistics(x: Tensor) -> dict[str, Tensor]:
    """Brightness, contrast, saturation and high-frequency energy alone (see :func:`image_statistics`)."""
    y, lap = luma_and_detail(x)
    chroma = _chroma(x)
    return {"brightness": y.mean((1, 2)), "contrast": y.std((1, 2)), "saturation": chroma.mean((1, 2)),
            "high_frequency": lap.mean((1, 2)), "coarse_saturation": coarse_saturation(x)}


def _log_factors(stats: dict[str, Tensor]) -> Tensor:
    return torch.stack([torch.log(stats[k].double().clamp_min(f)) for k, f in zip(_FACTORS, _FLOORS)], 1)


def _path_strengths(neutral: float, strong: float, steps: int) -> list[float]:
    """``steps`` strengths from just past ``neutral`` to ``strong``: geometric for factors (neutral 1), linear for
    amounts (neutral 0)."""
    if neutral == 0:
        return [strong * (j + 1) / steps for j in range(steps)]
    strong = max(strong, 0.02)  # a factor of 0 (all grey) has no logarithm: its path ends just short of it
    return [float(strong ** ((j + 1) / steps)) for j in range(steps)]


#: Mean saturation of regions (:func:`coarse_saturation`) under which an image counts as grey: no colour shows.
GREY_SATURATION = 0.02
#: Images a reference needs in each kind (and the share of grey ones) before grey and colour images are modelled
#: apart; fewer, and that part would itself be a narrow reference (the size under which ``cfx fit`` calls one narrow).
GREY_MIN, GREY_SHARE = 30, 0.05


def _grey_signal(stats: dict[str, Tensor]) -> Tensor:
    return stats["coarse_saturation"] if "coarse_saturation" in stats else stats["saturation"]


def grey_images(stats: dict[str, Tensor]) -> Tensor:
    """Which images ``(N,)`` are grey, from their statistics (:func:`image_statistics`): the saturation of their
    regions (:func:`coarse_saturation`) under :data:`GREY_SATURATION`; records without it, their mean saturation."""
    return _grey_signal(stats).double() < GREY_SATURATION


def grey_and_colour_parts(stats: dict[str, Tensor]) -> Tensor | None:
    """The grey images of a reference ``(N,)`` bool when it holds enough of both kinds to model each apart (at least
    :data:`GREY_MIN` of each and :data:`GREY_SHARE` grey), else None: one model for all. The factor model and the
    region model split a reference by this one rule, so an image is measured against the same kind by both."""
    grey = grey_images(stats)
    n_grey, n_colour = int(grey.sum()), int((~grey).sum())
    if min(n_grey, n_colour) >= GREY_MIN and n_grey >= GREY_SHARE * len(grey):
        return grey
    return None


@dataclass
class FactorModel:
    """How an image's global look departs from the reference images, one z-score per global change.

    An image's log factors are its log brightness, contrast, saturation and high-frequency energy. Over the reference
    images they have a mean and a covariance. Each global change, applied to the reference images by its known cause
    (:data:`FACTOR_PATHS`: more detail by noise, less by blur) at strengths from mild to the strong end of the
    cause's grid, moves the log factors along a *path* (the mean displacement per strength; a straight line while
    nothing clips, bent where highlights or shadows clip): measured once, on up to 32 reference images, at 8
    strengths per direction.

    An image's departure ``v`` (its log factors minus the reference mean) is explained by a change at strength ``k``
    as far as ``v - p_k`` is shorter than ``v`` in the reference's Mahalanobis metric. The change's z-score is the
    root of the best reduction of the squared distance along its path, ``max_k 2 p_kᵀ Σ⁻¹ v − p_kᵀ Σ⁻¹ p_k`` (for a
    straight path, the projection ``dᵀ Σ⁻¹ v / √(dᵀ Σ⁻¹ d)``), signed by the direction that explains it best:
    brighter, more contrast, more saturated and more detail are positive. On grey references saturation is left out.

    **Grey and colour images in one reference** (photographs, say, some of them black and white). The log
    saturation of such a reference is two clusters, one at the floor, and a Gaussian over both makes a colour image
    turned grey look typical and a grey image's other factors unreadable. When the reference holds enough of both
    kinds (:func:`grey_and_colour_parts`: at least :data:`GREY_MIN` of each, the size below which ``cfx fit`` calls a
    reference narrow, since a part of ten crops of one photograph makes every other photograph's colour look
    unusual), the model is two: one fitted on the colour images (``mean``, ``covariance``, ``paths``) and one on the
    grey ones (``grey_part``, saturation left out). Each image is measured against the part of its own kind
    (:func:`grey_images`: the colour of its regions, so colour noise on a grey image keeps it grey): a grey image by
    its brightness, contrast and detail among grey images, a colour image among colour ones, where desaturation and
    over-saturation stand out. :class:`RegionModel` splits by the same rule.
    """

    mean: list[float]
    covariance: list[list[float]]
    paths: dict[str, list[list[float]]]  # "change:direction" → displacement of the log factors per strength
    grey: bool = False
    grey_part: dict[str, Any] | None = None  # the model of the reference's grey images, when it also holds colour

    STEPS = 8
    SAMPLE = 32

    @classmethod
    def measure(cls, images: Tensor, stats: dict[str, Tensor] | None = None, seed: int = 0) -> "FactorModel":
        """Fit on reference images ``(N, 3, H, W)`` (at least 5; uint8 or float in [0, 1]). ``stats``: their
        statistics when already measured (the four factors and, when there, ``coarse_saturation`` are read)."""
        if len(images) < 5:
            raise ValueError(f"a factor model needs at least 5 reference images, got {len(images)}")
        if stats is None:
            parts = [_factor_statistics(as_float_images(images[i:i + 256])) for i in range(0, len(images), 256)]
            stats = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        grey = grey_and_colour_parts(stats)
        if grey is not None:
            colour_rows, grey_rows = torch.nonzero(~grey).flatten(), torch.nonzero(grey).flatten()
            part = lambda rows: {k: v[rows] for k, v in stats.items()}  # noqa: E731
            model = cls._measure_one(images[colour_rows.to(images.device)], part(colour_rows), seed)
            model.grey_part = cls._measure_one(images[grey_rows.to(images.device)], part(grey_rows), seed).to_dict()
            return model
        return cls._measure_one(images, stats, seed)

    @classmethod
    def _measure_one(cls, images: Tensor, stats: dict[str, Tensor], seed: int) -> "FactorModel":
        x = _log_factors(stats)
        cov = torch.cov(x.T) + torch.eye(4, dtype=x.dtype) * 1e-4  # a floor: no direction is ever exactly fixed
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:cls.SAMPLE]
        sample = as_float_images(images[pick])
        base = _log_factors(_factor_statistics(sample))
        paths = {}
        for (change, direction), (cause, cause_direction) in FACTOR_PATHS.items():
            shift = SHIFTS.get(cause)
            path = []
            for j, k in enumerate(_path_strengths(shift.neutral, shift.grids[cause_direction][-1], cls.STEPS)):
                moved = shift.transform(sample, k, torch.Generator().manual_seed(seed + j)).clamp(0, 1)
                path.append((_log_factors(_factor_statistics(moved)) - base).mean(0).tolist())
            paths[f"{change}:{direction}"] = path
        grey = bool(_grey_signal(stats).double().mean() < GREY_SATURATION)
        return cls(x.mean(0).tolist(), cov.tolist(), paths, grey=grey)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FactorModel":
        return cls(list(data["mean"]), [list(r) for r in data["covariance"]],
                   {k: [list(p) for p in v] for k, v in data["paths"].items()}, bool(data.get("grey", False)),
                   data.get("grey_part"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def shifts(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{change: z (N,)}`` for each change of :data:`FACTOR_CHANGES` (see the class doc)."""
        if self.grey_part is None:
            return self._shifts(stats)
        grey = grey_images(stats)
        out = self._shifts(stats)
        if bool(grey.any()):
            rows = torch.nonzero(grey).flatten()
            among_grey = FactorModel.from_dict(self.grey_part)._shifts({k: stats[k][rows] for k in _FACTORS})
            for change, z in among_grey.items():
                out[change][rows] = z
        return out

    def _shifts(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        keep = [0, 1, 3] if self.grey else [0, 1, 2, 3]
        v = (_log_factors(stats) - torch.tensor(self.mean, dtype=torch.float64))[:, keep]
        precision = torch.linalg.inv(torch.tensor(self.covariance, dtype=torch.float64)[keep][:, keep])
        out = {}
        for change in FACTOR_CHANGES:
            best = torch.zeros(len(v), dtype=torch.float64)
            signed = torch.zeros(len(v), dtype=torch.float64)
            for key, path in self.paths.items():
                if not key.startswith(change + ":") or (self.grey and change == "saturation"):
                    continue
                p = torch.tensor(path, dtype=torch.float64)[:, keep]                    # (K, D)
                gain = 2 * v @ precision @ p.T - torch.einsum("kd,de,ke->k", p, precision, p)  # (N, K)
                reduction = gain.max(1).values.clamp_min(0)
                better = reduction > best
                best = torch.where(better, reduction, best)
                sign = 1.0 if key.endswith(":increase") else -1.0
                signed = torch.where(better, sign * reduction.sqrt(), signed)
            out[change] = signed.float()
        return out


def _region_windows(grid: int, sizes: Sequence[int]) -> Tensor:
    """Every square window of ``k × k`` tiles (``k`` in ``sizes``) of a ``grid × grid`` tiling, as boolean masks
    ``(W, grid, grid)`` (True inside)."""
    return _region_windows_cached(grid, tuple(int(k) for k in sizes)).clone()


@functools.lru_cache(maxsize=8)
def _region_windows_cached(grid: int, sizes: tuple[int, ...]) -> Tensor:
    masks = []
    for k in sizes:
        for r in range(grid - k + 1):
            for c in range(grid - k + 1):
                m = torch.zeros(grid, grid, dtype=torch.bool)
                m[r:r + k, c:c + k] = True
                masks.append(m)
    return torch.stack(masks)


@dataclass
class RegionModel:
    """Is an image's departure from the reference confined to one region? A global change (brightness, contrast,
    saturation, grain, blur) moves every part of the image; new content pasted over part of it leaves the rest as it
    was.

    The image (area-downsampled to at most :attr:`SIDE` px) is tiled :attr:`GRID` × :attr:`GRID`. For every square
    window of 2–7 tiles a side (a sixteenth to 77 % of the image; 139 windows), the log brightness, contrast,
    saturation and fine detail of the image *outside* the window and *inside* it are compared, in the Mahalanobis
    metric, with the same window's outside and inside over the reference images (one mean and covariance per window
    and side, so a reference whose objects sit in the centre is compared with itself). The window whose removal
    leaves the image most typical is the image's *region*. Two z-scores against the reference images' own values:

    - ``outside_region_departure``: how far the image departs outside its region (low: the rest of the image is
      typical);
    - ``inside_region_departure``: how far the region itself departs from the reference's same window.

    A reference of grey and colour images is modelled as two parts by the rule of :class:`FactorModel`
    (:func:`grey_and_colour_parts`). One Gaussian over both would hold colour anywhere between none and full, so a
    colour image turned grey, or more colourful, would look typical outside one region and read as new content there.
    Each image is measured against the part it is closer to *outside its region*: a grey photograph with a colour
    patch pasted on it is grey outside the patch, so among grey images, where the patch's colour stands out inside.
    """

    outside_mean: list[list[float]]            # (W, 4)
    outside_precision: list[list[list[float]]]  # (W, 4, 4)
    inside_mean: list[list[float]]
    inside_precision: list[list[list[float]]]
    outside_spread: list[float]                # mean and std of outside departure over the reference
    inside_spread: list[float]
    sizes: list[int] = field(default_factory=lambda: list(RegionModel.SIZES))  # window sides, in tiles
    grey_part: dict[str, Any] | None = None  # the model of the reference's grey images, when it also holds colour

    GRID = 8
    SIZES = (2, 3, 4, 5, 6, 7)
    SIDE = 64
    MIN_IMAGES = 10

    @classmethod
    def _tiles(cls, images: Tensor) -> Tensor:
        """Per-tile means of luma, luma², chroma and detail ``(N, 4, GRID, GRID)`` (float64)."""
        x = as_float_images(images)
        if max(x.shape[-2:]) > cls.SIDE:
            h, w = x.shape[-2:]
            scale = cls.SIDE / max(h, w)
            x = F.interpolate(x, size=(max(cls.GRID, round(h * scale)), max(cls.GRID, round(w * scale))),
                              mode="area")
        y, lap = luma_and_detail(x)
        lap = F.pad(lap, (1, 1, 1, 1))  # aligned with y (the border pixels have no Laplacian: 0)
        maps = torch.stack([y, y * y, _chroma(x), lap], 1)
        return F.adaptive_avg_pool2d(maps, cls.GRID).double()

    @classmethod
    def _sides(cls, tiles: Tensor, sizes: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Log factors outside and inside every window of ``sizes`` tiles a side ``(N, W, 4)`` each."""
        inside = _region_windows(cls.GRID, sizes).double()
        outside = 1.0 - inside

        def factors(mask: Tensor) -> Tensor:
            m = torch.einsum("nsgh,wgh->nws", tiles, mask) / mask.sum((1, 2)).view(1, -1, 1)
            brightness, spread = m[..., 0], (m[..., 1] - m[..., 0] ** 2).clamp_min(0).sqrt()
            return torch.stack([brightness.clamp_min(1e-3).log(), spread.clamp_min(1e-3).log(),
                                m[..., 2].clamp_min(1e-3).log(), m[..., 3].clamp_min(1e-4).log()], -1)

        return factors(outside), factors(inside)

    @staticmethod
    def _region_distances(out: Tensor, ins: Tensor, outside: tuple[Tensor, Tensor],
                          inside: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Mahalanobis distances outside and inside each image's region ``(N,)`` each, and the region's window
        index ``(N,)``: the window whose outside is closest to the reference (``(mean, precision)`` per window)."""

        def distance(v: Tensor, mean: Tensor, precision: Tensor) -> Tensor:
            d = v - mean
            return torch.einsum("nwi,wij,nwj->nw", d, precision, d).clamp_min(0).sqrt()

        d_out = distance(out, *outside)
        best = d_out.argmin(1, keepdim=True)
        return d_out.gather(1, best).squeeze(1), distance(ins, *inside).gather(1, best).squeeze(1), best.squeeze(1)

    @classmethod
    def usable(cls, images: Tensor) -> bool:
        """Whether the images are large enough to tile (at least 2 px per tile) and numerous enough to measure."""
        return len(images) >= cls.MIN_IMAGES and min(images.shape[-2:]) >= 2 * cls.GRID

    @classmethod
    def measure(cls, images: Tensor) -> "RegionModel":
        """Fit on reference images ``(N, 3, H, W)`` (at least :attr:`MIN_IMAGES`, at least 16 px a side; uint8 or
        float in [0, 1])."""
        if len(images) < cls.MIN_IMAGES:
            raise ValueError(f"a region model needs at least {cls.MIN_IMAGES} reference images, got {len(images)}")
        if min(images.shape[-2:]) < 2 * cls.GRID:
            raise ValueError(f"a region model needs images of at least {2 * cls.GRID} px a side, got "
                             f"{tuple(images.shape[-2:])}")
        tiles, saturation = cls._tiles_and_saturation(images)
        grey = grey_and_colour_parts({"coarse_saturation": saturation})
        if grey is None:
            return cls._measure_tiles(tiles)
        model = cls._measure_tiles(tiles[~grey])
        model.grey_part = cls._measure_tiles(tiles[grey]).to_dict()  # colour kept: a colour patch stands out there
        return model

    @classmethod
    def _tiles_and_saturation(cls, images: Tensor, saturation: bool = True) -> tuple[Tensor, Tensor | None]:
        """:meth:`_tiles` and (with ``saturation``) each image's :func:`coarse_saturation`, as
        :func:`image_statistics` measures it, so the factor model and this one call the same images grey; in chunks."""
        tiles, sat = [], []
        for i in range(0, len(images), 256):
            x = as_float_images(images[i:i + 256])
            tiles.append(cls._tiles(x))
            if saturation:
                sat.append(coarse_saturation(x.float()))
        return torch.cat(tiles), (torch.cat(sat) if saturation else None)

    @classmethod
    def _measure_tiles(cls, tiles: Tensor) -> "RegionModel":
        out, ins = cls._sides(tiles, cls.SIZES)
        floor = torch.eye(4, dtype=torch.float64) * 1e-4  # no direction is ever exactly fixed

        def fit(v: Tensor) -> tuple[Tensor, Tensor]:
            cov = torch.stack([torch.cov(v[:, w].T) for w in range(v.shape[1])]) + floor
            return v.mean(0), torch.linalg.inv(cov)

        (om, op), (im, ip) = fit(out), fit(ins)
        d_out, d_in, _ = cls._region_distances(out, ins, (om, op), (im, ip))
        spread = lambda d: [float(d.mean()), max(float(d.std()), 1e-3)]  # noqa: E731
        return cls(om.tolist(), op.tolist(), im.tolist(), ip.tolist(), spread(d_out), spread(d_in), list(cls.SIZES))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RegionModel":
        return cls(**{k: data[k] for k in ("outside_mean", "outside_precision", "inside_mean", "inside_precision",
                                           "outside_spread", "inside_spread", "sizes")},
                   grey_part=data.get("grey_part"))  # older folders: one part

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def departures(self, images: Tensor) -> dict[str, Tensor]:
        """``{"outside_region_departure": z, "inside_region_departure": z, "region_area": share}`` ``(N,)`` for
        images ``(N, 3, H, W)`` (see the class doc); ``region_area`` is the share of the image the region covers."""
        if min(images.shape[-2:]) < 2 * self.GRID:
            raise ValueError(f"images must be at least {2 * self.GRID} px a side, got {tuple(images.shape[-2:])}")
        tiles, _ = self._tiles_and_saturation(images, saturation=False)
        result = self._departures(tiles)
        if self.grey_part is not None:  # each image among the kind it is closest to outside its region
            among_grey = RegionModel.from_dict(self.grey_part)._departures(tiles)
            closer = among_grey["outside_region_departure"] < result["outside_region_departure"]
            result = {k: torch.where(closer, among_grey[k], v) for k, v in result.items()}
        return result

    def _departures(self, tiles: Tensor) -> dict[str, Tensor]:
        out, ins = self._sides(tiles, self.sizes)
        as64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        d_out, d_in, best = self._region_distances(out, ins, (as64(self.outside_mean), as64(self.outside_precision)),
                                                   (as64(self.inside_mean), as64(self.inside_precision)))
        area = _region_windows(self.GRID, self.sizes).flatten(1).float().mean(1)[best]
        return {"outside_region_departure": ((d_out - self.outside_spread[0]) / self.outside_spread[1]).float(),
                "inside_region_departure": ((d_in - self.inside_spread[0]) / self.inside_spread[1]).float(),
                "region_area": area}


def confined_to_region(statistics_z: dict[str, float] | None, threshold: float = 1.0) -> bool:
    """Whether an image's departure from the reference is confined to one region (:class:`RegionModel`): outside its
    most departing region it is as typical as the reference images, z(outside-region departure) ≤ ``threshold``.
    Evidence without the region statistics (folders fitted before them) is never confined."""
    outside = (statistics_z or {}).get("outside_region_departure")
    return outside is not None and outside <= threshold


def blockiness(images: Tensor, block_sizes: Sequence[int] = range(2, 9)) -> Tensor:
    """Signature of nearest-neighbour pixelation ``(N,)`` in [-1, 1]: for the best block size k, the share of equal
    neighbouring pixels *inside* the k-blocks minus the share *across* block edges (rows and columns averaged).
    About 0 for photos and flat areas alike (both sides equal), near 1 for a pixelated image."""
    q = torch.round(images.float() * 255)
    eq_h = (q[..., 1:] == q[..., :-1]).all(1).float()          # (N, H, W-1)
    eq_v = (q[..., 1:, :] == q[..., :-1, :]).all(1).float()    # (N, H-1, W)
    h, w = q.shape[-2:]
    best = torch.full((len(q),), -1.0)

    def split(eq: Tensor, size: int, k: int, dim: int) -> Tensor | None:
        m = size // k
        if m < 1 or m >= size:
            return None
        src = torch.floor((torch.arange(size) + 0.5) * m / size)
        inside = src[1:] == src[:-1]
        if inside.all() or not inside.any():
            return None
        a, b = (eq[..., inside], eq[..., ~inside]) if dim == -1 else (eq[:, inside], eq[:, ~inside])
        return a.flatten(1).mean(1) - b.flatten(1).mean(1)

    for k in block_sizes:
        parts = [p for p in (split(eq_h, w, k, -1), split(eq_v, h, k, -2)) if p is not None]
        if parts:
            best = torch.maximum(best, torch.stack(parts).mean(0).cpu())
    return best.clamp_min(-1.0)


def difference_mass(original: Tensor, counterfactual: Tensor, share: float = 0.1) -> Tensor:
    """How localised the change is: the share of the total |difference| carried by the ``share`` most-changed
    pixels (≈ ``share`` for a change spread evenly, → 1 for a change confined to a patch)."""
    if counterfactual.shape[-2:] != original.shape[-2:]:
        counterfactual = F.interpolate(counterfactual, size=original.shape[-2:], mode="bilinear")
    d = (original - counterfactual).abs().sum(1).flatten(1)
    k = max(1, int(round(d.shape[1] * share)))
    return d.topk(k, dim=1).values.sum(1) / d.sum(1).clamp_min(1e-12)


@dataclass
class Evidence:
    """One flagged sample's evidence. Plain data: ``to_json`` / ``from_json`` round-trip exactly."""

    id: str
    prediction: int
    prediction_name: str | None = None
    label: int | None = None
    label_name: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    competency: float | None = None
    counterfactuals: list[dict[str, Any]] = field(default_factory=list)
    property_curves: list[dict[str, Any]] = field(default_factory=list)
    restoring_edit: dict[str, Any] | None = None
    statistics: dict[str, dict[str, float]] = field(default_factory=dict)   # original / counterfactual / reference
    statistics_z: dict[str, float] = field(default_factory=dict)            # original vs confident reference images
    shift_z: dict[str, float] = field(default_factory=dict)  # z of each global change (FactorModel) vs the reference
    difference_mass: float | None = None
    neighbour: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    target: str | None = None       # the trust score the counterfactuals and restoring edits raise
    reference: str | None = None    # what the statistics' z-scores and the nearest trusted image compare against

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def restricted_to(self, generators: Sequence[str]) -> "Evidence":
        """A copy that keeps only the counterfactuals of ``generators`` (``[]``: none, for the ablation without
        counterfactual evidence); the difference mass and counterfactual statistics then come from the first kept one
        in the order LGD, Reco, LNN."""
        keep = [c for c in self.counterfactuals if c["method"] in set(generators)]
        data = self.to_dict()
        data["counterfactuals"] = keep
        data["statistics"].pop("counterfactual", None)
        data["difference_mass"] = None
        if not any(c["method"] in ("lnn", "nn") for c in keep):
            data["neighbour"] = None
        main = next((c for g in _PRIMARY for c in keep if c["method"] == g), None)
        if main is not None:
            data["difference_mass"] = main.get("difference_mass")
            if "statistics" in main:
                data["statistics"]["counterfactual"] = dict(main["statistics"])
        return Evidence.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Evidence":
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "Evidence":
        return cls.from_dict(json.loads(text))


#: LGD in the evidence stage: 2 Adam steps of 1/20, the same path length as the generator's default 100 steps of
#: 0.001 at a fiftieth of the forward and backward passes. Measured to end at the same competency as 10 steps of
#: 0.01 (photographs 0.1926 against 0.1921, shapes 0.971 against 0.967) and to name the same causes
#: (docs/results.md, "Cost of explaining"); cfx.generators.LatentGradientDescent keeps the paper's schedule.
LGD_SCHEDULE = {"steps": 2, "lr": 1 / 20}


def _lgd_batch(images: Tensor) -> int:
    """Images per LGD step: 16 at 224 px (a larger batch's backward pass runs slower per image on the CPU: 0.083 s
    against 0.070 s per image for 40 against 16 EfficientNet-Lite0 images), more at lower resolutions."""
    return max(16, 16 * 224 * 224 // max(1, images.shape[-2] * images.shape[-1]))


_INDEX_REFERENCES: list[tuple[LatentIndex, tuple[int, int], tuple]] = []  # the last few, newest last


def _index_reference(index: LatentIndex, size: tuple[int, int]) -> tuple:
    """:func:`reference_statistics` (with the factor model) and the :class:`RegionModel` (None when the images are
    too few or too small) of a latent index's confident images at ``size``: the
    reference of a folder fitted before the factor model (or without statistics), at the autoencoder's size
    (comparable only when it is the classifier's). Measured once per index and size, not once per batch."""
    for cached, cached_size, result in _INDEX_REFERENCES:
        if cached is index and cached_size == size:
            return result
    images = resize(index.images_.float() / 255, size)
    result = (*reference_statistics(images, factors=True),
              RegionModel.measure(images) if RegionModel.usable(images) else None)
    _INDEX_REFERENCES.append((index, size, result))
    del _INDEX_REFERENCES[:-4]
    return result


_PRIMARY = ("lgd", "reco", "lnn", "igd", "nn")  # the counterfactual whose statistics stand for the sample: first wins

#: Every counterfactual generator the evidence can use, with what it needs: ``fitted`` (the autoencoder and latent
#: index of a fitted folder), ``target`` (a differentiable trust target) or ``reference`` (trusted images to search).
GENERATORS: dict[str, str] = {"reco": "fitted", "lgd": "fitted", "lnn": "fitted", "igd": "target",
                              "nn": "reference"}


def generator_availability(generators: Sequence[str], fitted: Fitted | None,
                           reference: "RunReference | bool | None" = None) -> tuple[list[str], dict[str, str]]:
    """Which of ``generators`` this situation allows, and why each other one cannot run; unknown names raise.
    ``reference``: the :class:`RunReference` (or whether there will be one)."""
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown generator(s) {unknown}; choose from {', '.join(GENERATORS)}")
    usable, reasons = [], {}
    for g in generators:
        if GENERATORS[g] == "fitted" and fitted is None:
            reasons[g] = "needs the autoencoder of a fitted folder (cfx fit, then --fitted DIR)"
        elif g == "lnn" and fitted is not None and fitted.latent_index is None:
            reasons[g] = ("the fitted folder has no latent index (no reference image reached the competency "
                          "threshold)")
        elif GENERATORS[g] == "reference" and (reference is None or reference is False):
            reasons[g] = "needs trusted images to search: fewer than 2 images of the run are trusted"
        else:
            usable.append(g)
    return usable, reasons


def resolve_search(search: str, target: TrustTarget) -> str:
    """``"auto"`` → ``"screened"`` for PaRCE competency (agreement with the full search 0.95–1.00 on shapes, digits
    and photographs), ``"full"`` for any other target (a run-rank target agreed 0.85 on photographs; docs/results.md);
    ``"screened"`` and ``"full"`` stay."""
    if search == "auto":
        return "screened" if target.name == "parce" else "full"
    if search not in SEARCHES:
        raise ValueError(f"search must be 'auto' or one of {', '.join(SEARCHES)}, got {search!r}")
    return search


def resolve_edit_ranges(ranges: EditRanges | str | None, fitted: Fitted | None,
                        reference: "RunReference | None" = None) -> EditRanges | None:
    """The edit ranges to use: ``"reference"`` → the fitted folder's (else the run reference's, else none),
    ``"full"``/None → none (every editor's full range), or the :class:`~cfx.generators.EditRanges` given."""
    if ranges is None or isinstance(ranges, EditRanges):
        return ranges
    if ranges == "full":
        return None
    if ranges != "reference":
        raise ValueError(f"edit ranges must be 'reference', 'full' or an EditRanges, got {ranges!r}")
    stored = fitted.manifest.get("edit_ranges") if fitted is not None else None
    if stored:
        return EditRanges.from_dict(stored)
    return reference.edit_ranges if reference is not None else None


def typical_core(images: Tensor, share: float = 0.5, minimum: int = 20) -> Tensor:
    """Which of ``images`` ``(N, 3, H, W)`` form the typical core of their look: a boolean mask ``(N,)`` of the
    ``share`` whose log brightness, contrast and fine detail are closest to the rest by a robust (minimum covariance
    determinant) Mahalanobis distance. Saturation is left out, so grey and colour images count alike. With fewer than
    ``minimum`` images every image is kept."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    n = len(images)
    if n < minimum or share == 1:
        return torch.ones(n, dtype=torch.bool)
    from sklearn.covariance import MinCovDet  # lazy: only runs without a fitted folder need it

    parts = [_factor_statistics(as_float_images(images[i:i + 256])) for i in range(0, n, 256)]
    stats = {k: torch.cat([p[k] for p in parts]) for k in _FACTORS}
    x = _log_factors(stats)[:, [0, 1, 3]].numpy()
    mcd = MinCovDet(support_fraction=share, random_state=0).fit(x)
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.as_tensor(mcd.mahalanobis(x)).argsort()[:max(2, int(round(share * n)))]] = True
    return keep


class RunReference:
    """Trusted reference images from the run itself, for when there is no fitted folder (or for NN).

    Holds the images (uint8), their ids and predicted classes, a FAISS index over their final-layer features (cosine;
    without features: 16×16 downsampled pixels, L2), and their :func:`reference_statistics` for z-scores.
    ``description`` says in words which images they are (shown in the report).
    """

    PIXEL_SIZE = 16

    def __init__(self, classifier: Classifier, images: Tensor, ids: Sequence[str], predictions: Tensor | Sequence[int],
                 description: str, batch_size: int = 64):
        if len(images) < 2 or len(images) != len(ids) or len(ids) != len(predictions):
            raise ValueError(f"a run reference needs at least 2 images with one id and prediction each; got "
                             f"{len(images)} images, {len(ids)} ids, {len(predictions)} predictions")
        self.classifier, self.description, self.batch_size = classifier, description, batch_size
        self.embedding = "features" if classifier.has_features() else "pixels"
        images = as_float_images(images)
        vectors = torch.cat([self.embed(images[i:i + batch_size]).float().cpu()
                             for i in range(0, len(images), batch_size)])
        self.index = LatentIndex("cos" if self.embedding == "features" else "l2").build(
            vectors, list(ids), torch.as_tensor(predictions), images)
        # the run's trusted images are only as clean as the flag score can tell: take the statistics over the
        # typical core of their look, so that a run with many degraded images does not count them as normal
        core = typical_core(images)
        self.statistics_images = int(core.sum())
        self.mean, self.std, self.factors = reference_statistics(images[core], factors=True)
        self.regions = RegionModel.measure(images[core]) if RegionModel.usable(images[core]) else None
        self.edit_ranges = EditRanges.measure(images, source=description)

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        # sent to worker processes without the classifier (a TorchScript model cannot be pickled, and each worker
        # holds its own): bind the worker's classifier after unpickling
        return {**self.__dict__, "classifier": None}

    def bind(self, classifier: Classifier) -> "RunReference":
        """Attach ``classifier`` (the same model) to a reference that was sent to another process."""
        self.classifier = classifier
        return self

    def embed(self, images: Tensor) -> Tensor:
        """The space the nearest trusted image is searched in: final-layer features, else downsampled pixels."""
        with torch.inference_mode():
            if self.embedding == "features":
                return self.classifier.features(images.to(self.classifier.device))
            return resize(images, (self.PIXEL_SIZE, self.PIXEL_SIZE)).flatten(1)

    def to_dict(self) -> dict[str, Any]:
        space = ("the classifier's final-layer features (cosine)" if self.embedding == "features" else
                 f"{self.PIXEL_SIZE}×{self.PIXEL_SIZE} downsampled pixels (the model does not expose its features)")
        return {"kind": "run", "images": len(self), "description": self.description, "search_space": space,
                "statistics_images": getattr(self, "statistics_images", len(self))}


class _Clock:
    """Adds the seconds of each ``with clock(stage):`` block to ``timings[stage]`` (nothing when timings is None)."""

    def __init__(self, timings: dict[str, float] | None):
        self.timings = timings

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.timings is not None:
                self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start


def _row(stats: dict[str, Tensor], i: int) -> dict[str, float]:
    return {k: float(v[i]) for k, v in stats.items()}


def collect_evidence(classifier: Classifier, fitted: Fitted | None, images: Tensor, ids: Sequence[str] | None = None,
                     labels: Sequence[int] | Tensor | None = None, editors: Sequence | None = None,
                     generators: Sequence[str] = ("reco", "lgd", "lnn"), steps: int = 8,
                     with_counterfactuals: bool = True, return_images: bool = False,
                     target: TrustTarget | None = None, reference: RunReference | None = None,
                     ranges: EditRanges | str | None = "reference", search: str = "auto",
                     timings: dict[str, float] | None = None):
    """Build one :class:`Evidence` per image (images ``(N, 3, H, W)`` in [0, 1] at the classifier's input size).

    With a fitted folder the trust target is PaRCE competency and the statistics compare with its confident
    reference images. Without one (``fitted=None``) pass ``target`` (e.g. :class:`cfx.generators.RunRankTarget`)
    and ``reference`` (a :class:`RunReference` of the run's most trusted images); ``generators`` then come from
    igd and nn (see :data:`GENERATORS`). ``ranges``: how far the property edits go: ``"reference"`` (default) the
    :class:`~cfx.generators.EditRanges` of the fitted folder (else of ``reference``), ``"full"`` (or None) every
    editor's full range, or an :class:`~cfx.generators.EditRanges`. ``with_counterfactuals=False`` leaves out the
    counterfactual evidence (for ablations). ``return_images=True`` returns ``(evidence, images)`` with ``images``
    mapping each generator name (and ``"neighbour"`` for the nearest trusted image of LNN or NN) to its
    ``(N, 3, h, w)`` images, for reports. ``search``: how the restoring edit and the property curves are searched
    (:func:`~cfx.generators.sweep_edits`: ``"screened"`` or ``"full"``; ``"auto"``, the default, screens when the
    target is PaRCE competency, where the screen was measured to agree with the full search, and searches in full
    otherwise). ``timings``: a dict that receives the seconds each stage took (added to what it holds, so one dict
    can sum over batches).
    """
    n = len(images)
    if n == 0:
        raise ValueError("no images to collect evidence for")
    if search != "auto" and search not in SEARCHES:
        raise ValueError(f"search must be 'auto' or one of {', '.join(SEARCHES)}, got {search!r}")
    if fitted is None and target is None:
        raise ValueError("without a fitted folder, pass the trust target to raise (target=RunRankTarget(...)); "
                         "or fit one with cfx fit")
    usable, reasons = generator_availability(generators if with_counterfactuals else [], fitted, reference)
    if reasons:
        raise ValueError("generator(s) not available here: " + "; ".join(f"{g}: {r}" for g, r in reasons.items()))
    ids = list(ids) if ids is not None else [str(i) for i in range(n)]
    labels_list = [None if labels is None or int(v) < 0 else int(v) for v in
                   (labels if labels is not None else [-1] * n)]
    editors = list(editors) if editors is not None else parametric_editors()
    names = classifier.class_names
    clock = _Clock(timings)
    with clock("scores"):
        batch = score_batch(classifier, images, default_scores(classifier, fitted), fitted=fitted)
    pred = batch.logits.argmax(1)
    if target is None:
        target = TrustTarget.competency(classifier, fitted)
    ranges = resolve_edit_ranges(ranges, fitted, reference)
    search = resolve_search(search, target)
    with clock("property edits"):  # the restoring search and the property curves, from shared forward passes
        sweeps = sweep_edits(classifier, target, images, editors, steps=steps, ranges=ranges, search=search,
                             logits=batch.logits)
    restoring, curves = sweeps.restoring, sweeps.curves
    with clock("statistics"):
        orig_stats = image_statistics(images)
    ref_mean = ref_std = reference_name = factors = regions = None
    stored = fitted.manifest.get("reference_statistics") if fitted is not None else None
    if (stored and tuple(stored["image_size"]) == tuple(images.shape[-2:]) and stored.get("factors")
            and int(stored.get("version") or 0) >= MIN_STATISTICS_VERSION):
        # measured by cfx fit on the confident reference images at the classifier's resolution
        ref_mean, ref_std, factors = stored["mean"], stored["std"], FactorModel.from_dict(stored["factors"])
        if stored.get("regions"):
            regions = RegionModel.from_dict(stored["regions"])
        if int(stored["version"]) < STATISTICS_VERSION:
            missing = "; ".join(_MISSING_BEFORE[v] for v in range(int(stored["version"]), STATISTICS_VERSION))
            warnings.warn(f"the fitted folder's reference statistics are version {stored['version']}, older than "
                          f"this cfx's {STATISTICS_VERSION}: they have {missing}; run cfx fit again to add them",
                          RuntimeWarning, stacklevel=2)
    elif fitted is not None and fitted.latent_index is not None and len(fitted.latent_index) > 1:
        ref_mean, ref_std, factors, regions = _index_reference(fitted.latent_index, tuple(images.shape[-2:]))
    elif reference is not None:
        ref_mean, ref_std, reference_name = reference.mean, reference.std, reference.description
        factors, regions = getattr(reference, "factors", None), getattr(reference, "regions", None)
    shifts = factors.shifts(orig_stats) if factors is not None else None
    with clock("statistics"):
        local = (regions.departures(images) if regions is not None and min(images.shape[-2:]) >= 2 * RegionModel.GRID
                 else None)
    if ref_mean is not None and reference_name is None:
        reference_name = "the fitted folder's confident calibration images"
    cfs: dict[str, Any] = {}
    level = target.threshold
    makers = {"reco": lambda: AutoencoderReconstruction(target, fitted.autoencoder, threshold=level),
              "lgd": lambda: LatentGradientDescent(target, fitted.autoencoder, threshold=level, **LGD_SCHEDULE,
                                                   internal_batch_size=_lgd_batch(images)),
              "lnn": lambda: LatentNearestNeighbours(target, fitted.autoencoder, fitted.latent_index, threshold=level),
              "igd": lambda: ImageGradientDescent(target, threshold=level),
              "nn": lambda: NearestTrustedImage(target, reference.embed, reference.index, threshold=level)}
    for name in usable:
        with clock(name):
            cfs[name] = makers[name]().generate(images, score_before=sweeps.score_before)
    main_name = next((g for g in _PRIMARY if g in cfs), None)
    with clock("statistics"):
        cf_stats = {name: image_statistics(cf.images.to(images.device)) for name, cf in cfs.items()}
        masses = {name: difference_mass(images, cf.images.to(images.device)) for name, cf in cfs.items()}
    position = [{} for _ in range(n)]  # per image: which row of each curve is its own
    for c, curve in enumerate(curves):
        for row, i in enumerate(range(n) if curve.rows is None else curve.rows.tolist()):
            position[i][c] = row
    out = []
    for i in range(n):
        ev = Evidence(id=ids[i], prediction=int(pred[i]),
                      prediction_name=names[int(pred[i])] if names else None, label=labels_list[i],
                      label_name=names[labels_list[i]] if names and labels_list[i] is not None else None,
                      scores={k: float(v[i]) for k, v in batch.scores.items()},
                      competency=float(batch.scores["parce"][i]) if "parce" in batch.scores else None,
                      target=target.name, reference=reference_name)
        for name, cf in cfs.items():
            entry = {"method": name, "score_before": float(cf.score_before[i]), "score_after": float(cf.score_after[i]),
                     "success": bool(cf.success[i]), "steps": int(cf.steps[i]),
                     "difference_mass": float(masses[name][i]), "statistics": _row(cf_stats[name], i)}
            if name in ("lnn", "nn"):
                entry.update({"neighbour_id": cf.extra["neighbour_ids"][i],
                              "neighbour_label": int(cf.extra["neighbour_labels"][i]),
                              "neighbour_distance": float(cf.extra["neighbour_distance"][i])})
                if ev.neighbour is None:  # LNN's when both ran
                    ev.neighbour = {k: entry[k] for k in ("neighbour_id", "neighbour_label", "neighbour_distance")}
            ev.counterfactuals.append(entry)
        r = restoring[i]
        ev.restoring_edit = {"property": r.property, "direction": r.direction, "strength": r.strength,
                             "score_before": r.score_before, "score_after": r.score_after, "gain": r.gain,
                             "all_gains": r.all_gains}
        ev.property_curves = [{"property": c.property, "direction": c.direction, "epgm": float(c.epgm[row]),
                               "p_value": float(c.p_value[row]), "flips": bool(c.flips[row]),
                               "strengths": [round(float(v), 4) for v in
                                             (c.strengths[row] if c.strengths.dim() == 2 else c.strengths)],
                               "probabilities": [round(float(v), 4) for v in c.probabilities[row]]}
                              for c, row in ((curves[k], row) for k, row in position[i].items())]
        ev.statistics = {"original": _row(orig_stats, i)}
        if main_name is not None:
            ev.statistics["counterfactual"] = _row(cf_stats[main_name], i)
            ev.difference_mass = float(masses[main_name][i])
        if ref_mean is not None:
            ev.statistics["reference_mean"] = ref_mean
            ev.statistics_z = {k: (ev.statistics["original"][k] - ref_mean[k]) / ref_std[k] for k in STATISTICS
                               if k in ref_mean}  # a version-3 folder has no two-sided clipping
        if shifts is not None:
            ev.shift_z = {k: round(float(v[i]), 4) for k, v in shifts.items()}
        if local is not None and ev.statistics_z:
            ev.statistics_z.update({k: float(local[k][i]) for k in REGION_STATISTICS})
            ev.statistics["region"] = {"area": float(local["region_area"][i])}
        out.append(ev)
    if return_images:
        pictures = {name: cf.images.detach().cpu() for name, cf in cfs.items()}
        for name in ("lnn", "nn"):  # the nearest trusted image itself, LNN's first
            if name in cfs and "neighbour_images" in cfs[name].extra and "neighbour" not in pictures:
                pictures["neighbour"] = cfs[name].extra["neighbour_images"].detach().cpu()
        return out, pictures
    return out
