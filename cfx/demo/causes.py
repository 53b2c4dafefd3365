"""Images changed by the known causes, for the demo's tables, its review set and the explanation benchmark.

The causes themselves (transforms and strength grids) live in :mod:`cfx.core.shifts`; this module picks the
examples that really lower a score (:func:`cause_examples`), builds evaluation sets (:func:`cause_conditions`) and
the review set of the demo's main job (:func:`review_set`), and opens ``demo:`` data specs (:func:`demo_source`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor

from cfx.core.data import DataSourceError, TensorSource
from cfx.core.images import is_grey
from cfx.core.models import Classifier
from cfx.core.shifts import CAUSES, SHIFTS, apply_shift

from .world import HELD_OUT_SHAPE, DemoData, ShapesWorld, WorldConfig, digits_data, shapes_data

__all__ = ["CauseExamples", "apply_cause", "cause_conditions", "cause_examples", "demo_source", "review_set"]

#: The demo's name for :func:`cfx.core.shifts.apply_shift`.
apply_cause = apply_shift


@dataclass
class CauseExamples:
    """Images modified by one cause that really lower the score below the threshold (the explanation study's selection rule)."""

    cause: str
    images: Tensor
    source_index: Tensor   # index into the images given to :func:`cause_examples`
    strength: Tensor
    score_before: Tensor
    score_after: Tensor


def cause_examples(images: Tensor, labels: Tensor, classifier: Classifier, cause: str,
                   score: Callable[[Tensor], Tensor] | None = None, threshold: float = 0.9,
                   strengths: Iterable[float] | None = None, seed: int = 0) -> CauseExamples:
    """Build example images of one cause, kept only when they really lower the score.

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
    grey = is_grey(images)
    out = {"clean": (images, labels)}
    for cause in causes if causes is not None else CAUSES:
        if grey and SHIFTS.get(cause).colour:
            continue
        grid = CAUSES[cause]
        out[cause] = (torch.cat([apply_cause(images, cause, k, seed=seed + j) for j, k in enumerate(grid)]),
                      labels.repeat(len(grid)))
    return out


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
    """A review set for the demo's main job: ``n`` test images, two thirds of them changed by one of the seven causes
    (in turn, at a strength from the strong half of its grid) and, for the shapes world, ``unfamiliar`` images of the
    held-out star shape. Metadata ``injected_cause`` / ``strength`` say what was done, so a reviewer can check the
    explanations against the truth. Saturation is skipped on grey images."""
    x, y = data.split("test")
    n = min(n, len(x))
    idx = data.splits["test"][:n]
    images, labels = x[:n].clone(), y[:n].clone()
    grey = is_grey(x)
    causes = [c for c in CAUSES if not (grey and SHIFTS.get(c).colour)]
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
