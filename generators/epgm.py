"""Expected property gradient magnitude (EPGM), its shuffle test, and the "restoring" view.

EPGM (``docs/methods.md``, as the authors' code computes it): along a gradual intervention
x⁽⁰⁾ = x, x⁽¹⁾, …, x⁽ᴺ⁾ with class probabilities y_i = softmax(f(x⁽ⁱ⁾))_k,
``EPGM = mean_i |np.gradient(y)_i|`` with the index as the step (``strengths=`` gives gradients per strength unit
instead). The shuffle test compares it with 1000 random permutations of y, two-sided around the null mean, as in
the code: a smooth response has a *lower* mean |gradient| than its shuffles.

:func:`restoring_edits` answers the explanation stage's main question: for a low-competency image, which editor
and strength raise competency the most, and by how much.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .editors import restoring_editors
from .ranges import PROPERTY_STATISTICS, EditRanges, within_band

__all__ = ["ContentCheck", "PropertyCurve", "RestoringEdit", "epgm", "property_curve", "restoring_edits", "shuffle_test"]


def epgm(y: Tensor | np.ndarray, strengths: Sequence[float] | None = None) -> Tensor:
    """Mean absolute gradient of ``y (..., S + 1)`` along its last axis (np.gradient: central inside, one-sided at
    the ends). With ``strengths`` (``S + 1`` values, the original's first) the gradient is per strength unit."""
    arr = np.asarray(y.detach().cpu() if isinstance(y, Tensor) else y, dtype=np.float64)
    if arr.shape[-1] < 2:
        raise ValueError("EPGM needs at least two points along the intervention (the original and one edit)")
    g = np.gradient(arr, axis=-1) if strengths is None else np.gradient(arr, np.asarray(strengths, float), axis=-1)
    return torch.as_tensor(np.abs(g).mean(axis=-1))


def shuffle_test(y: Tensor | np.ndarray, permutations: int = 1000, seed: int = 0) -> Tensor:
    """Two-sided permutation p-value of EPGM for each curve in ``y (..., S + 1)``:
    ``p = mean(|T_π − mean T_π| ≥ |T − mean T_π|)`` over random permutations π of the sequence."""
    arr = np.asarray(y.detach().cpu() if isinstance(y, Tensor) else y, dtype=np.float64)
    flat = arr.reshape(-1, arr.shape[-1])
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((permutations, arr.shape[-1])), axis=1)   # (P, S + 1)
    t = np.abs(np.gradient(flat, axis=-1)).mean(-1)                          # (M,)
    shuffled = flat[:, perms]                                                # (M, P, S + 1)
    t_pi = np.abs(np.gradient(shuffled, axis=-1)).mean(-1)                   # (M, P)
    m = t_pi.mean(1, keepdims=True)
    p = (np.abs(t_pi - m) >= np.abs(t[:, None] - m) - 1e-15).mean(1)
    return torch.as_tensor(p.reshape(arr.shape[:-1]))


@dataclass
class PropertyCurve:
    """How one property moves the prediction, per image: the probability of ``class_index`` along the edit."""

    property: str
    strengths: Tensor            # (S,) or per image (N, S) edit strengths (the original, x⁽⁰⁾, comes before them)
    probabilities: Tensor        # (N, S + 1) class probability along the intervention, original first
    class_index: Tensor          # (N,) the class followed (the original prediction by default)
    epgm: Tensor                 # (N,)
    p_value: Tensor              # (N,)
    flips: Tensor                # (N,) whether the argmax changes anywhere along the sequence
    scores: Tensor | None = None  # (N, S + 1) optional trust score (e.g. competency) along the sequence
    direction: str = ""          # the editor's direction swept ("" when not recorded)
    rows: Tensor | None = None   # which images of the batch the N curves belong to (None: all, in order)

    def to_dict(self, i: int) -> dict:
        """One image's curve as plain JSON-ready values."""
        strengths = self.strengths[i] if self.strengths.dim() == 2 else self.strengths
        return {"property": self.property, "direction": self.direction, "strengths": strengths.tolist(),
                "probabilities": self.probabilities[i].tolist(), "class_index": int(self.class_index[i]),
                "epgm": float(self.epgm[i]), "p_value": float(self.p_value[i]), "flips": bool(self.flips[i]),
                "scores": self.scores[i].tolist() if self.scores is not None else None}


def property_curve(classifier, editor, images: Tensor, strengths: Sequence[float] | Tensor | None = None,
                   class_index: Tensor | None = None, score: Callable[[Tensor], Tensor] | None = None,
                   permutations: int = 1000, seed: int = 0, batch_size: int = 256, attributes=None) -> PropertyCurve:
    """Edit ``images`` gradually with ``editor`` and measure EPGM, its shuffle-test p-value and prediction flips.

    ``class_index`` defaults to each original's predicted class. ``score`` (e.g. PaRCE competency) is also
    recorded along the sequence when given. For an :class:`~cfx.generators.AttributeEditor` pass the generating
    ``attributes`` instead of relying on pixels.
    """
    s = torch.as_tensor(strengths if strengths is not None else editor.sweep(), dtype=torch.float32)
    if s.dim() != 2:
        s = s.flatten()  # shared (S,); an (N, S) grid gives each image its own strengths
    n = len(images) if images is not None else len(next(iter(attributes.values())))
    # in chunks of images: the edited sequences of a large sample at 224 px do not fit in memory at once
    chunk = max(1, batch_size // (s.shape[-1] + 1))
    prob_parts, score_parts = [], []
    for start in range(0, n, chunk):
        part = s[start:start + chunk] if s.dim() == 2 else s
        if attributes is not None:
            sub = {key: value[start:start + chunk] for key, value in attributes.items()}
            seq = editor.edit(images[start:start + chunk] if images is not None else None, part, attributes=sub)
        else:
            seq = editor.edit(images[start:start + chunk], part)
        m, steps = seq.shape[:2]
        flat = seq.reshape(m * steps, *seq.shape[2:])
        with torch.inference_mode():
            prob_parts.append(torch.cat([torch.softmax(classifier.logits(flat[i:i + batch_size]), 1).float().cpu()
                                         for i in range(0, len(flat), batch_size)]).view(m, steps, -1))
            if score is not None:
                score_parts.append(torch.cat([score(flat[i:i + batch_size]).float().cpu()
                                              for i in range(0, len(flat), batch_size)]).view(m, steps))
    probs = torch.cat(prob_parts)
    steps = probs.shape[1]
    scores = torch.cat(score_parts) if score_parts else None
    k = probs[:, 0].argmax(1) if class_index is None else torch.as_tensor(class_index).long()
    y = probs.gather(2, k.view(n, 1, 1).expand(n, steps, 1)).squeeze(2)
    flips = (probs.argmax(2) != probs[:, :1].argmax(2)).any(1)
    return PropertyCurve(getattr(editor, "property", "property"), s, y, k, epgm(y).float(),
                         shuffle_test(y, permutations, seed).float(), flips, scores)


@dataclass
class RestoringEdit:
    """The edit that raises an image's score the most."""

    property: str
    direction: str
    strength: float
    score_before: float
    score_after: float
    all_gains: dict[str, float] = field(default_factory=dict)  # best gain per "property:direction"

    @property
    def gain(self) -> float:
        return self.score_after - self.score_before


def restoring_edits(score: Callable[[Tensor], Tensor], images: Tensor, editors: Sequence | None = None,
                    steps: int = 10, batch_size: int = 256, ranges: EditRanges | None = None,
                    min_contrast_kept: float = 0.25) -> list[RestoringEdit]:
    """For each image, the editor, direction and strength that raise ``score`` (competency) the most.

    ``editors`` defaults to :func:`~cfx.generators.restoring_editors` (the parametric editors without occlusion).
    With ``ranges`` (:class:`~cfx.generators.ranges.EditRanges`) every sweep stays inside the reference data's range
    and an edit counts as restoring only when the edited image keeps the original's content: its pixel standard
    deviation is at least ``min_contrast_kept`` × the original's and its mean brightness lies inside the reference
    band (or, for an original outside it, no further out). An image that no such edit improves gets
    ``RestoringEdit("none", ...)`` with zero gain instead of the least bad edit.
    """
    if editors is None:
        editors = restoring_editors()
    n = len(images)
    with torch.inference_mode():
        before = torch.cat([score(images[i:i + batch_size]).float().cpu() for i in range(0, n, batch_size)])
    kept = ContentCheck(images, ranges, min_contrast_kept) if ranges is not None else None
    names, top_scores, top_strengths = [], [], []   # one entry per (editor, direction): best over its strengths
    for editor in editors:
        for direction in editor.directions:
            s = (ranges.strengths(editor, images, direction, steps) if ranges is not None
                 else editor.sweep(direction, steps).unsqueeze(0).expand(n, -1))   # (N, S)
            seq = editor.edit(images, s)[:, 1:]                       # (N, S, 3, H, W)
            flat = seq.reshape(n * s.shape[1], *seq.shape[2:])
            with torch.inference_mode():
                after = torch.cat([score(flat[i:i + batch_size]).float().cpu()
                                   for i in range(0, len(flat), batch_size)]).view(n, s.shape[1])
            if kept is not None:
                after = torch.where(kept(seq), after, torch.full_like(after, -torch.inf))
            top, where = after.max(1)
            names.append((editor.property, direction))
            top_scores.append(top)
            top_strengths.append(s.float().cpu().gather(1, where.view(-1, 1)).squeeze(1))
    if not names:
        return [RestoringEdit("none", "", 0.0, float(b), float(b)) for b in before]
    tops = torch.stack(top_scores, 1)                                 # (N, E)
    strengths = torch.stack(top_strengths, 1)
    gains = tops - before.unsqueeze(1)
    best = gains.argmax(1)                                            # first maximum wins ties, as before
    keys = [f"{p}:{d}" for p, d in names]
    out = []
    for i, j in enumerate(best.tolist()):
        finite = {k: (float(g) if torch.isfinite(g) else None) for k, g in zip(keys, gains[i])}
        if kept is not None and not gains[i, j] > 0:  # nothing inside the data's range restores this image
            out.append(RestoringEdit("none", "", 0.0, float(before[i]), float(before[i]), finite))
        else:
            out.append(RestoringEdit(names[j][0], names[j][1], float(strengths[i, j]), float(before[i]),
                                     float(tops[i, j]), finite))
    return out


class ContentCheck:
    """Whether edited images keep the original's content (see :func:`restoring_edits`): called on edits ``(N, S, 3, H, W)``
    of the N images it was made for, it returns ``(N, S)`` booleans."""

    def __init__(self, images: Tensor | None, ranges: EditRanges | None, min_contrast_kept: float):
        if images is None:  # filled by subset()
            return
        self.std = images.float().flatten(1).std(1).cpu()                       # (N,)
        self.band = ranges.bands.get("brightness")
        self.brightness = PROPERTY_STATISTICS["brightness"](images.float()).cpu()
        self.min_contrast_kept = min_contrast_kept

    def subset(self, rows: Tensor) -> "ContentCheck":
        """The same check for the images at ``rows``."""
        out = ContentCheck(None, None, self.min_contrast_kept)
        out.std, out.brightness, out.band = self.std[rows], self.brightness[rows], self.band
        out.min_contrast_kept = self.min_contrast_kept
        return out

    def __call__(self, seq: Tensor) -> Tensor:
        n, s = seq.shape[:2]
        flat = seq.reshape(n * s, *seq.shape[2:]).float()
        ok = flat.flatten(1).std(1).cpu().view(n, s) >= self.min_contrast_kept * self.std.unsqueeze(1)
        if self.band is not None:
            lo, hi = self.band
            mean = PROPERTY_STATISTICS["brightness"](flat).cpu().view(n, s)
            ok &= within_band(mean, self.brightness.unsqueeze(1), lo, hi, 1e-6)
        return ok
