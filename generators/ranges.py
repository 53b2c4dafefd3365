"""Edit ranges calibrated on reference data: sweep a property only as far as the reference images reach.

A parametric editor's full range runs to destruction (brightness ×0 is a black image, contrast ×0 a grey one). For
each property with an image statistic that the edit moves (brightness: mean luma; contrast: std of luma;
saturation: mean chroma; noise, denoise, sharpness, blur and pixelation: mean |Laplacian| of luma), the band
``[q_lo, q_hi]`` (the 1st and 99th percentiles by default) of that statistic over reference images is the range the
data reaches. :meth:`EditRanges.strengths` gives each image its own sweep, in each direction, ending at the last
strength whose edit keeps the statistic inside the band, or, for an image already outside it, no further from the
band than the original and on the same side (so an edit can bring a dark image back, never push it darker or
overshoot to too bright). Hue rotation keeps its full
range (a rotation stays in the gamut; no scalar statistic bounds it); occlusion is a probe and keeps its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from cfx.core.images import as_float_images, luma, luma_and_detail

from .editors import Editor, strength_grid

__all__ = ["MONOTONE_PROPERTIES", "PROPERTY_STATISTICS", "EditRanges", "high_frequency_energy", "within_band"]


def within_band(values: Tensor, original: Tensor, lo: float, hi: float, tolerance: float = 0.0) -> Tensor:
    """Whether edited ``values`` are acceptable for images whose statistic was ``original`` (broadcast): inside the
    band ``[lo, hi]``, or still on the original's side of it and no further out (an edit may bring an image back
    toward the band, never push it further out or across to the other side)."""
    inside = (values >= lo - tolerance) & (values <= hi + tolerance)
    below = (original < lo) & (values < lo) & (values >= original - tolerance)
    above = (original > hi) & (values > hi) & (values <= original + tolerance)
    return inside | below | above


def high_frequency_energy(images: Tensor) -> Tensor:
    """Mean |Laplacian| of luma per image ``(N,)``: grain, sharpness and fine detail."""
    return luma_and_detail(images)[1].mean((1, 2))


def _chroma(images: Tensor) -> Tensor:
    return (images.amax(1) - images.amin(1)).mean((1, 2))


#: The statistic each range-limited property moves, per image ``(N, 3, H, W)`` → ``(N,)``.
PROPERTY_STATISTICS: dict[str, Callable[[Tensor], Tensor]] = {
    "brightness": lambda x: luma(x).mean((1, 2)),
    "contrast": lambda x: luma(x).std((1, 2)),
    "saturation": _chroma,
    "noise": high_frequency_energy,
    "denoise": high_frequency_energy,
    "sharpness": high_frequency_energy,
    "blur": high_frequency_energy,
    "pixelation": high_frequency_energy,
}


#: Properties whose statistic moves one way as the edit's strength grows, so where the sweep leaves the reference band
#: can be found by binary search (:meth:`EditRanges.limits`). Against the full scan (shapes, digits and photographs
#: with the six causes applied, ``docs/results.md``): the same end for every image, except contrast on 1 of 300
#: shapes images (clipping makes its statistic bend back). Blur, denoise and sharpness joined once the search reused
#: their anchor (the same end for all of 150 shapes, 120 digits and 40 photographs; 5–30× faster at 224 px).
#: Pixelation's block sizes round, so its statistic does not move one way (0.85–0.97 the same): it is scanned.
MONOTONE_PROPERTIES = frozenset({"brightness", "contrast", "saturation", "noise", "blur", "denoise", "sharpness"})


@dataclass
class EditRanges:
    """Per property, the band of its statistic over reference images; sweeps that stay inside it."""

    bands: dict[str, tuple[float, float]]
    quantiles: tuple[float, float] = (1.0, 99.0)
    images: int = 0
    source: str = ""  # what the reference images were, for the report
    grid: int = field(default=16, repr=False)  # strengths tried per direction when finding where a sweep ends

    @classmethod
    def measure(cls, reference: Tensor, quantiles: tuple[float, float] = (1.0, 99.0), source: str = "",
                batch_size: int = 256) -> EditRanges:
        """Bands of every statistic in :data:`PROPERTY_STATISTICS` over ``reference (M, 3, H, W)`` (uint8 or [0, 1])."""
        if reference.dim() != 4 or reference.shape[1] != 3 or len(reference) < 2:
            raise ValueError(f"edit ranges need at least 2 reference images (M, 3, H, W), got "
                             f"{tuple(reference.shape)}")
        lo, hi = quantiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"quantiles must satisfy 0 <= low < high <= 100, got {quantiles}")
        values: dict[str, list[Tensor]] = {}
        for i in range(0, len(reference), batch_size):
            x = as_float_images(reference[i:i + batch_size]).float()
            for name, statistic in PROPERTY_STATISTICS.items():
                values.setdefault(name, []).append(statistic(x).cpu())
        return cls.from_values({name: torch.cat(parts) for name, parts in values.items()}, quantiles, source)

    @classmethod
    def from_values(cls, values: dict[str, Tensor | Sequence[float]], quantiles: tuple[float, float] = (1.0, 99.0),
                    source: str = "") -> EditRanges:
        """Bands from per-image values of the statistics (``{property: (M,)}``, as :data:`PROPERTY_STATISTICS`
        computes them), e.g. values stored while scoring, without the images."""
        lo, hi = quantiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"quantiles must satisfy 0 <= low < high <= 100, got {quantiles}")
        bands, count = {}, 0
        for name, v in values.items():
            arr = torch.as_tensor(v).double().numpy()
            if len(arr) < 2 or not np.isfinite(arr).all():
                raise ValueError(f"edit ranges need finite values of {name!r} for at least 2 images, got {len(arr)}")
            bands[name] = (float(np.percentile(arr, lo)), float(np.percentile(arr, hi)))
            count = len(arr)
        return cls(bands, (float(lo), float(hi)), count, source)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["bands"] = {k: list(v) for k, v in self.bands.items()}
        out.pop("grid")
        return out

    @classmethod
    def from_dict(cls, data: dict) -> EditRanges:
        return cls({k: (float(v[0]), float(v[1])) for k, v in data["bands"].items()},
                   tuple(data.get("quantiles", (1.0, 99.0))), int(data.get("images", 0)), data.get("source", ""))

    def limits(self, editor: Editor, images: Tensor, direction: str, batch_size: int = 16,
               search: str = "bisect", anchor: Tensor | None = None) -> Tensor:
        """Per image ``(N,)``: the strength where the sweep in ``direction`` ends (the editor's neutral strength when
        the first step already leaves the band; the editor's own end for properties without a band).

        ``search="scan"`` edits every one of the :attr:`grid` strengths and keeps those before the first one that
        leaves the band. ``"bisect"`` (default) looks for that place by binary search, at most 5 edits per image
        instead of 16, for the properties in :data:`MONOTONE_PROPERTIES`, whose statistic moves one way along the
        edit (so the allowed strengths are the ones before a single boundary); others are always scanned.
        ``anchor``: the editor's :meth:`~cfx.generators.Editor.anchor` of ``images``, when already computed."""
        if search not in ("bisect", "scan"):
            raise ValueError(f"search must be 'bisect' or 'scan', got {search!r}")
        full = editor.sweep(direction, self.grid)  # (G,) from just past neutral to the editor's end
        band = self.bands.get(editor.property)
        if band is None or editor.property not in PROPERTY_STATISTICS:
            return torch.full((len(images),), float(full[-1]))
        statistic = PROPERTY_STATISTICS[editor.property]
        lo, hi = band
        tolerance = 1e-3 * max(hi - lo, 1e-6)
        if search == "bisect" and editor.property in MONOTONE_PROPERTIES:
            return self._bisect(editor, images, full, statistic, lo, hi, tolerance, batch_size, anchor)

        ends = []
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].float()
            a = anchor[i:i + batch_size].to(x.dtype) if anchor is not None else None
            seq = editor.edit(x, full, **({"anchor": a} if a is not None else {}))  # (n, G + 1, ...), original first
            n, g = seq.shape[:2]
            stats = statistic(seq.reshape(n * g, *seq.shape[2:])).view(n, g).cpu()
            ok = within_band(stats[:, 1:], stats[:, :1], lo, hi, tolerance)
            allowed = ok.long().cumprod(1).sum(1)  # how many grid steps from neutral stay allowed
            end = torch.where(allowed > 0, full[(allowed - 1).clamp_min(0)],
                              torch.full((n,), float(editor.neutral)))
            ends.append(end)
        return torch.cat(ends)

    @staticmethod
    def _bisect(editor: Editor, images: Tensor, full: Tensor, statistic, lo: float, hi: float, tolerance: float,
                batch_size: int, anchor: Tensor | None = None) -> Tensor:
        """:meth:`limits` by binary search over the grid, all images of a batch at once (each at its own strength);
        an editor's strength-free part (its anchor) is computed once per batch, not once per probe."""
        ends = []
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].float()
            a = anchor[i:i + batch_size].to(x.dtype) if anchor is not None else editor.anchor(x)
            n, g = len(x), len(full)
            original = statistic(x).cpu()
            known = torch.zeros(n, dtype=torch.long)   # grid steps known to stay allowed
            upper = torch.full((n,), g)                # grid steps that may stay allowed, at most
            while True:
                active = torch.nonzero(known < upper).flatten()
                if len(active) == 0:
                    break
                probe = (known[active] + upper[active] + 1) // 2   # test the probe-th grid step
                s = full[probe - 1].to(x.dtype)
                edited = editor.apply(x[active], s, anchor=a[active] if a is not None else None)
                ok = within_band(statistic(edited).cpu(), original[active], lo, hi, tolerance)
                known[active] = torch.where(ok, probe, known[active])
                upper[active] = torch.where(ok, upper[active], probe - 1)
            ends.append(torch.where(known > 0, full[(known - 1).clamp_min(0)],
                                    torch.full((n,), float(editor.neutral))))
        return torch.cat(ends)

    def strengths(self, editor: Editor, images: Tensor, direction: str, steps: int,
                  anchor: Tensor | None = None) -> Tensor:
        """Per-image strengths ``(N, steps)`` from just past neutral to where the calibrated sweep ends (``anchor``
        as for :meth:`limits`)."""
        end = self.limits(editor, images, direction, anchor=anchor)
        t = torch.linspace(0, 1, steps + 1)[1:]
        return strength_grid(editor.neutral + (end.unsqueeze(1) - editor.neutral) * t, len(images))

    def describe(self) -> dict[str, str]:
        """The bands as short text per property, for reports."""
        return {k: f"{lo:.3g}–{hi:.3g}" for k, (lo, hi) in self.bands.items()}
