"""Evidence: what cfx measured about one flagged image, as one serialisable record, and the image statistics behind it.

Everything downstream (reporters, reports) reads only :class:`Evidence`. :func:`collect_evidence` fills it from
the stages before: trust scores, counterfactuals with their competency before and after, the restoring edit,
property curves with EPGM, image statistics of the original against the confident reference images and against
its counterfactual, and the nearest confident neighbour.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CAUSE_LABELS", "STATISTICS", "Evidence", "blockiness", "collect_evidence", "difference_mass",
           "image_statistics"]

STATISTICS = ("brightness", "contrast", "saturation", "high_frequency", "blockiness", "detail_localisation",
              "colour_localisation")
CAUSE_LABELS = ("spatial", "brightness", "contrast", "saturation", "noise", "pixelation", "other")


def _luma(x: Tensor) -> Tensor:
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def image_statistics(images: Tensor) -> dict[str, Tensor]:
    """Per-image statistics ``(N,)`` of images ``(N, 3, H, W)`` in [0, 1]:

    brightness (mean luma), contrast (std of luma), saturation (mean of max − min over channels after a 3×3 box
    blur, so per-pixel colour speckle does not count), colour localisation (the most colourful of 4×4 tiles over the
    mean tile), high-frequency
    energy (mean |Laplacian| of luma), :func:`blockiness` (the signature of nearest-neighbour pixelation) and
    detail localisation (the most detailed of 4×4 tiles over the mean tile: ≈ 1 for noise spread everywhere, high
    when fine detail sits in one region).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    x = images.float()
    y = _luma(x)
    lap = (4 * y[:, 1:-1, 1:-1] - y[:, :-2, 1:-1] - y[:, 2:, 1:-1] - y[:, 1:-1, :-2] - y[:, 1:-1, 2:]).abs()
    tiles = F.adaptive_avg_pool2d(lap.unsqueeze(1), 4).flatten(1)
    smooth = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)  # colour of regions, not speckle
    chroma = smooth.max(1).values - smooth.min(1).values
    chroma_tiles = F.adaptive_avg_pool2d(chroma.unsqueeze(1), 4).flatten(1)
    return {"brightness": y.mean((1, 2)), "contrast": y.std((1, 2)), "saturation": chroma.mean((1, 2)),
            "colour_localisation": chroma_tiles.max(1).values / chroma_tiles.mean(1).clamp_min(1e-3),
            "high_frequency": lap.mean((1, 2)), "blockiness": blockiness(x),
            "detail_localisation": tiles.max(1).values / tiles.mean(1).clamp_min(1e-6)}


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
    difference_mass: float | None = None
    neighbour: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Evidence":
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "Evidence":
        return cls.from_dict(json.loads(text))


def _row(stats: dict[str, Tensor], i: int) -> dict[str, float]:
    return {k: float(v[i]) for k, v in stats.items()}


def collect_evidence(classifier, fitted, images: Tensor, ids: Sequence[str] | None = None,
                     labels: Sequence[int] | Tensor | None = None, editors: Sequence | None = None,
                     generators: Sequence[str] = ("reco", "lgd", "lnn"), steps: int = 8,
                     with_counterfactuals: bool = True) -> list[Evidence]:
    """Build one :class:`Evidence` per image (images at the fitted autoencoder's size, in [0, 1]).

    ``with_counterfactuals=False`` leaves out the counterfactual evidence (for ablations).
    """
    from cfx.generators import (AutoencoderReconstruction, LatentGradientDescent, LatentNearestNeighbours,
                                Occlusion, competency_target, parametric_editors, property_curve, restoring_edits)
    from cfx.trust import applicable_scores, score_batch

    n = len(images)
    if n == 0:
        raise ValueError("no images to collect evidence for")
    ids = list(ids) if ids is not None else [str(i) for i in range(n)]
    labels_list = [None if labels is None or int(v) < 0 else int(v) for v in
                   (labels if labels is not None else [-1] * n)]
    editors = list(editors) if editors is not None else parametric_editors()
    names = classifier.class_names
    batch = score_batch(classifier, images, applicable_scores(classifier, fitted), fitted=fitted)
    pred = batch.logits.argmax(1)
    target = competency_target(classifier, fitted)
    score_fn = lambda x: fitted.parce.competency_from(classifier.logits(x), x)  # noqa: E731
    # occlusion probes spatial reliance but restores nothing (see cfx.generators.restoring_editors)
    restoring = restoring_edits(score_fn, images, [e for e in editors if not isinstance(e, Occlusion)], steps=steps)
    curves = [property_curve(classifier, e, images, e.sweep(steps=steps), permutations=200) for e in editors]
    reference = fitted.latent_index.images_.float() / 255 if fitted.latent_index is not None else None
    orig_stats = image_statistics(images)
    ref_mean = ref_std = None
    if reference is not None and len(reference) > 1:
        ref_stats = image_statistics(reference)
        ref_mean = {k: float(v.mean()) for k, v in ref_stats.items()}
        # a floor keeps z finite where the reference barely varies (e.g. saturation of grey digits)
        ref_std = {k: max(float(v.std()), 0.05 * abs(float(v.mean())), 0.01) for k, v in ref_stats.items()}
    cfs: dict[str, Any] = {}
    if with_counterfactuals:
        makers = {"reco": lambda: AutoencoderReconstruction(target, fitted.autoencoder),
                  "lgd": lambda: LatentGradientDescent(target, fitted.autoencoder),
                  "lnn": lambda: LatentNearestNeighbours(target, fitted.autoencoder, fitted.latent_index)}
        for name in generators:
            if name not in makers:
                raise ValueError(f"unknown generator {name!r}; use reco, lgd or lnn")
            cfs[name] = makers[name]().generate(images)
    main_cf = cfs.get("lgd") or cfs.get("reco") or (next(iter(cfs.values())) if cfs else None)
    cf_stats = image_statistics(main_cf.images) if main_cf is not None else None
    mass = difference_mass(images, main_cf.images.to(images.device)) if main_cf is not None else None
    out = []
    for i in range(n):
        ev = Evidence(id=ids[i], prediction=int(pred[i]),
                      prediction_name=names[int(pred[i])] if names else None, label=labels_list[i],
                      label_name=names[labels_list[i]] if names and labels_list[i] is not None else None,
                      scores={k: float(v[i]) for k, v in batch.scores.items()},
                      competency=float(batch.scores["parce"][i]) if "parce" in batch.scores else None)
        for name, cf in cfs.items():
            entry = {"method": name, "score_before": float(cf.score_before[i]), "score_after": float(cf.score_after[i]),
                     "success": bool(cf.success[i]), "steps": int(cf.steps[i])}
            if name == "lnn":
                entry.update({"neighbour_id": cf.extra["neighbour_ids"][i],
                              "neighbour_label": int(cf.extra["neighbour_labels"][i]),
                              "neighbour_distance": float(cf.extra["neighbour_distance"][i])})
                ev.neighbour = {k: entry[k] for k in ("neighbour_id", "neighbour_label", "neighbour_distance")}
            ev.counterfactuals.append(entry)
        r = restoring[i]
        ev.restoring_edit = {"property": r.property, "direction": r.direction, "strength": r.strength,
                             "score_before": r.score_before, "score_after": r.score_after, "gain": r.gain,
                             "all_gains": r.all_gains}
        ev.property_curves = [{"property": c.property, "epgm": float(c.epgm[i]), "p_value": float(c.p_value[i]),
                               "flips": bool(c.flips[i])} for c in curves]
        ev.statistics = {"original": _row(orig_stats, i)}
        if cf_stats is not None:
            ev.statistics["counterfactual"] = _row(cf_stats, i)
            ev.difference_mass = float(mass[i])
        if ref_mean is not None:
            ev.statistics["reference_mean"] = ref_mean
            ev.statistics_z = {k: (ev.statistics["original"][k] - ref_mean[k]) / ref_std[k] for k in STATISTICS}
        out.append(ev)
    return out
