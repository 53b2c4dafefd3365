"""The explanation stage's property edits in one pass: the restoring search and the property curves share their
forward passes.

The restoring search (:func:`~cfx.generators.restoring_edits`) and the property curves
(:func:`~cfx.generators.property_curve`) edit the same images along the same strengths. :func:`sweep_edits` edits each
image once per strength, runs the classifier once on each edited image and reads both the trust target (from the
logits, when the target can: :attr:`TrustTarget.from_logits`) and the class probabilities from that one pass. Each
edit range is computed once.

Two searches (``search=``):

* ``"full"``: every restoring editor in every direction at every strength (the exhaustive search), and a curve for
  every editor's first direction, occlusion included. Gives the same answers as ``restoring_edits`` and
  ``property_curve`` run separately.
* ``"screened"``: every restoring direction at ``screen_steps`` of its strengths first (three of eight by default);
  per image, only the ``screen_top`` directions that reached the highest score are swept at every strength. Their best edit is the
  restoring edit and their sweeps are the property curves shown. Editors with ``discrete_strengths`` (pixelation,
  whose strengths round to block sizes) are swept at every strength for every image instead of being screened, and
  compete for the ``screen_top`` places with their best score. ``docs/results.md`` has how often this agrees
  with the full search and what it saves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .editors import Editor, parametric_editors
from .epgm import ContentCheck, PropertyCurve, RestoringEdit, epgm, shuffle_test
from .ranges import EditRanges

__all__ = ["SEARCHES", "EditSweeps", "sweep_edits"]

SEARCHES = ("full", "screened")


@dataclass
class EditSweeps:
    """What :func:`sweep_edits` found: one restoring edit per image, the curves swept, and the cost."""

    restoring: list[RestoringEdit]
    curves: list[PropertyCurve]
    evaluated: int  # images the classifier ran on (originals included unless their logits were given)
    score_before: Tensor | None = None  # (N,) the target score of the originals
    #: ``{"property:direction": (N, steps)}`` the target score of every restoring direction at every strength, NaN
    #: where the search did not evaluate it (screened out), −inf where the edit loses the content
    scores: dict[str, Tensor] | None = None


class _Scorer:
    """The classifier's class probabilities and the target score of images, from one forward pass."""

    def __init__(self, classifier, target: Callable[[Tensor], Tensor], batch_size: int):
        self.classifier, self.target, self.batch_size = classifier, target, batch_size
        self.from_logits = getattr(target, "from_logits", None)
        self.evaluated = 0

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        probs, scores = [], []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = images[i:i + self.batch_size]
                logits = self.classifier.logits(x)
                # an edited image the model answers with NaN or infinite logits for has no answer: it restores
                # nothing (score −inf) and its class probabilities are uniform
                finite = torch.isfinite(logits).all(1)
                if not bool(finite.all()):
                    logits = torch.where(finite.unsqueeze(1), logits, torch.zeros_like(logits))
                probs.append(torch.softmax(logits, 1).float().cpu())
                score = self.from_logits(logits, x) if self.from_logits is not None else self.target(x)
                scores.append(torch.where(finite, score.float(), torch.full_like(score.float(), -torch.inf)).cpu())
        self.evaluated += len(images)
        return torch.cat(probs), torch.cat(scores)


def _curve(editor: Editor, direction: str, strengths: Tensor, probs0: Tensor, probs: Tensor, rows: Tensor | None,
           permutations: int, seed: int) -> PropertyCurve:
    """A :class:`PropertyCurve` from probabilities already computed: ``probs0 (N, C)`` of the originals and
    ``probs (N, S, C)`` along the edit, following each original's predicted class."""
    seq = torch.cat([probs0.unsqueeze(1), probs], 1)                          # (N, S + 1, C)
    k = probs0.argmax(1)
    y = seq.gather(2, k.view(-1, 1, 1).expand(-1, seq.shape[1], 1)).squeeze(2)
    flips = (seq.argmax(2) != k.unsqueeze(1)).any(1)
    return PropertyCurve(editor.property, strengths, y, k, epgm(y).float(), shuffle_test(y, permutations, seed).float(),
                         flips, direction=direction, rows=rows)


def sweep_edits(classifier, target: Callable[[Tensor], Tensor], images: Tensor, editors: Sequence[Editor] | None = None,
                steps: int = 8, ranges: EditRanges | None = None, *, search: Literal["full", "screened"] = "full",
                screen_top: int = 3, screen_steps: Sequence[int] = (2, 5, 8), permutations: int = 200, seed: int = 0,
                min_contrast_kept: float = 0.25, batch_size: int = 256, logits: Tensor | None = None) -> EditSweeps:
    """Restoring edits and property curves of ``images (N, 3, H, W)`` in [0, 1] from shared forward passes.

    ``target`` is the trust score to raise (a :class:`~cfx.generators.TrustTarget`, or any callable images → (N,)).
    ``editors`` defaults to every parametric editor; those with ``restores = False`` (occlusion) only get a curve.
    ``ranges``, ``steps`` and ``min_contrast_kept`` mean what they mean for
    :func:`~cfx.generators.restoring_edits`; ``search`` is ``"full"`` or ``"screened"`` (see the module docs);
    ``screen_steps`` are 1-based positions among the ``steps`` strengths. ``logits``: the classifier's logits
    ``(N, C)`` of ``images`` when they are already computed (e.g. while scoring), which saves one forward pass.

    A direction whose range is empty for an image (the first step would already leave the reference band, so
    every strength is the neutral one and the edit changes nothing) is not run through the classifier: its scores
    are the original's, its gain is 0 and the screen never picks it. Nor is an edited image equal to the original
    or to the previous strength's: it reuses that result.
    """
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    if images.dim() != 4 or images.shape[1] != 3 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, 3, H, W) tensor in [0, 1], got {tuple(images.shape)}")
    if steps < 1 or screen_top < 1:
        raise ValueError(f"steps and screen_top must be at least 1, got {steps} and {screen_top}")
    screen = sorted({int(s) - 1 for s in screen_steps})
    if search == "screened" and (not screen or screen[0] < 0 or screen[-1] >= steps):
        raise ValueError(f"screen_steps must be positions 1..{steps} among the strengths, got {list(screen_steps)}")
    if logits is not None and (logits.dim() != 2 or len(logits) != len(images)):
        raise ValueError(f"logits must be (N, C) for the N = {len(images)} images, got {tuple(logits.shape)}")
    editors = list(editors) if editors is not None else parametric_editors()
    n = len(images)
    scorer = _Scorer(classifier, target, batch_size)
    if logits is not None and scorer.from_logits is not None:
        with torch.inference_mode():
            probs0 = torch.softmax(logits.float(), 1).cpu()
            before = scorer.from_logits(logits, images).float().cpu()
    else:
        probs0, before = scorer(images)
    kept = ContentCheck(images, ranges, min_contrast_kept) if ranges is not None else None

    anchors: dict[int, Tensor | None] = {}  # each editor's strength-free part (median, blur), computed once

    def anchor_of(editor: Editor) -> Tensor | None:
        if id(editor) not in anchors:
            has = hasattr(editor, "anchor")  # re-rendering editors have none
            parts = [editor.anchor(images[i:i + 16]) for i in range(0, n, 16)] if has else [None]
            anchors[id(editor)] = None if parts[0] is None else torch.cat(parts)  # per image: chunks bound memory
        return anchors[id(editor)]

    def strengths_of(editor: Editor, direction: str) -> Tensor:
        if ranges is not None:
            return ranges.strengths(editor, images, direction, steps, anchor=anchor_of(editor))
        return editor.sweep(direction, steps).unsqueeze(0).expand(n, -1)

    def evaluate(editor: Editor, s: Tensor, rows: Tensor, restores: bool) -> tuple[Tensor, Tensor]:
        """Scores ``(len(rows), S)`` (−inf where the edit loses the content) and probabilities
        ``(len(rows), S, C)`` of the images at ``rows`` edited at their strengths ``s (len(rows), S)``."""
        m = s.shape[1]
        if len(rows) == 0:
            return torch.empty(0, m), torch.empty(0, m, probs0.shape[1])
        anchor = anchor_of(editor)
        extra = {"anchor": anchor[rows]} if anchor is not None else {}
        seq = (editor.edited(images[rows], s, **extra) if hasattr(editor, "edited")   # re-rendering editors: edit
               else editor.edit(images[rows], s, **extra)[:, 1:])
        # an edit that leaves the image as it was (pixelation's block sizes round to 1 near neutral), or as the
        # previous strength left it (two strengths rounding to the same block), is not run through the classifier
        original, repeated = _unchanged_edits(images[rows], seq)
        fresh = ~original & ~repeated
        p, a = (scorer(seq[fresh.to(seq.device)]) if fresh.any()
                else (torch.empty(0, probs0.shape[1]), torch.empty(0)))
        after = before[rows].unsqueeze(1).repeat(1, m)
        probs = probs0[rows].unsqueeze(1).repeat(1, m, 1)
        after[fresh], probs[fresh] = a, p
        for k in range(1, m):  # a repeat reads its predecessor's result
            copy = repeated[:, k] & ~original[:, k]
            after[copy, k], probs[copy, k] = after[copy, k - 1], probs[copy, k - 1]
        if restores and kept is not None:
            after = torch.where(kept.subset(rows)(seq), after, torch.full_like(after, -torch.inf))
        return after, probs

    def unchanged(editor: Editor, s: Tensor) -> Tensor:
        """Per image, whether every strength of ``s (N, S)`` is the editor's neutral one (an empty range)."""
        neutral = getattr(editor, "neutral", None)  # re-rendering editors that set a value have none
        if neutral is None:
            return torch.zeros(len(s), dtype=torch.bool)
        return (s == float(neutral)).all(1)

    directions = [(e, d) for e in editors if e.restores for d in e.directions]   # the restoring search's
    sweeps: dict[tuple[int, str], tuple[Tensor, Tensor, Tensor | None]] = {}  # (editor #, direction) → s, after, probs
    if search == "full":
        for j, e in enumerate(editors):
            for d in (e.directions if e.restores else e.directions[:1]):
                s = strengths_of(e, d)
                live = torch.nonzero(~unchanged(e, s)).flatten()
                after = before.unsqueeze(1).repeat(1, steps)          # an empty range: the original, unchanged
                probs = probs0.unsqueeze(1).repeat(1, steps, 1)
                after[live], probs[live] = evaluate(e, s[live], live, e.restores)
                sweeps[(j, d)] = (s, after, probs)
        swept = list(sweeps)
    else:
        position = {id(e): j for j, e in enumerate(editors)}
        screened, live_of = {}, {}
        for e, d in directions:
            s = strengths_of(e, d)
            live = ~unchanged(e, s)
            rows = torch.nonzero(live).flatten()
            # an editor whose strengths round to a few distinct edits is not screened but swept at every strength:
            # its score jumps between neighbouring strengths, so three of them say little about the rest
            cols = list(range(steps)) if getattr(e, "discrete_strengths", False) else screen
            after = torch.full((n, len(cols)), -torch.inf)               # never picked when nothing changes
            probs = probs0.unsqueeze(1).repeat(1, len(cols), 1)
            after[rows], probs[rows] = evaluate(e, s[rows][:, cols], rows, True)
            screened[(position[id(e)], d)] = (s, after, probs, cols)
            live_of[(position[id(e)], d)] = live
        keys = list(screened)
        best = torch.stack([screened[k][1].max(1).values for k in keys], 1)     # (N, E) best screened score
        # per image the screen_top most promising directions; each direction is swept for the images that chose it
        top = torch.argsort(best, dim=1, descending=True, stable=True)[:, :screen_top]
        swept_mask = {}
        for c, key in enumerate(keys):
            s, after_screen, probs_screen, cols = screened[key]
            rest = [i for i in range(steps) if i not in cols]
            live = live_of[key]
            chosen = ((top == c).any(1) if rest else torch.ones(n, dtype=torch.bool)) & live
            after = before.unsqueeze(1).repeat(1, steps)
            after[live] = -torch.inf
            after[:, cols] = torch.where(live.unsqueeze(1), after_screen, after[:, cols])
            probs = probs0.unsqueeze(1).repeat(1, steps, 1)
            probs[:, cols] = probs_screen
            if chosen.any() and rest:
                idx = torch.nonzero(chosen).flatten()
                a, p = evaluate(editors[key[0]], s[idx][:, rest], idx, True)
                after[idx.unsqueeze(1), torch.tensor(rest).unsqueeze(0)] = a
                probs[idx.unsqueeze(1), torch.tensor(rest).unsqueeze(0)] = p
            sweeps[key] = (s, after, probs)
            swept_mask[key] = chosen
        swept = [k for k in keys if swept_mask[k].any()]

    restoring = _best_edits([(editors[j], d) for j, d in sweeps if editors[j].restores],
                            [sweeps[k] for k in sweeps if editors[k[0]].restores], before, kept is not None)
    curves = []
    for key in swept:
        e = editors[key[0]]
        if search == "full" and key[1] != e.directions[0]:
            continue  # one curve per editor, along its first direction, as property_curve draws it
        s, _, probs = sweeps[key]
        if search == "screened":
            members = torch.nonzero(swept_mask[key]).flatten()  # the images that swept this direction in full
            curves.append(_curve(e, key[1], s[members], probs0[members], probs[members], members, permutations,
                                 seed))
        else:
            curves.append(_curve(e, key[1], s, probs0, probs, None, permutations, seed))
    tables = {}
    for (j, d), (_, after, _) in sweeps.items():
        if editors[j].restores:
            table = after.clone()
            if search == "screened":  # the strengths the screen skipped for images that did not sweep the direction
                _, _, _, cols = screened[(j, d)]
                skipped = [i for i in range(steps) if i not in cols]
                unswept = live_of[(j, d)] & ~swept_mask[(j, d)]
                table[unswept.unsqueeze(1) & torch.isin(torch.arange(steps), torch.tensor(skipped, dtype=torch.long))
                      .unsqueeze(0)] = float("nan")
            tables[f"{editors[j].property}:{d}"] = table
    return EditSweeps(restoring, curves, scorer.evaluated, before, tables)


def _unchanged_edits(images: Tensor, seq: Tensor) -> tuple[Tensor, Tensor]:
    """Which edits ``seq (N, S, 3, H, W)`` of ``images (N, 3, H, W)`` equal the original, and which equal the previous
    strength's: two ``(N, S)`` boolean tensors, exact. Pixel sums pick the candidates (one pass, no full-size
    comparison); only those are compared pixel by pixel."""
    sums = seq.flatten(2).sum(2)                                            # (N, S)
    close = lambda a, b: torch.isclose(a, b, rtol=1e-5, atol=1e-3)  # summation order may differ between shapes
    original = close(sums, images.flatten(1).sum(1).unsqueeze(1))
    repeated = torch.zeros_like(original)
    repeated[:, 1:] = close(sums[:, 1:], sums[:, :-1])
    i, k = torch.nonzero(original, as_tuple=True)
    original[i, k] = (seq[i, k] == images[i]).flatten(1).all(1)
    i, k = torch.nonzero(repeated, as_tuple=True)
    repeated[i, k] = (seq[i, k] == seq[i, k - 1]).flatten(1).all(1)
    return original.cpu(), repeated.cpu()


def _best_edits(names: list[tuple[Editor, str]], sweeps: list[tuple[Tensor, Tensor, Tensor]], before: Tensor,
                ranged: bool) -> list[RestoringEdit]:
    """Per image, the (editor, direction, strength) with the highest score; ``"none"`` when nothing inside the
    ranges raises it (as :func:`~cfx.generators.restoring_edits`)."""
    if not names:
        return [RestoringEdit("none", "", 0.0, float(b), float(b)) for b in before]
    tops, strengths = [], []
    for s, after, _ in sweeps:
        top, where = after.max(1)
        tops.append(top)
        strengths.append(s.float().cpu().gather(1, where.view(-1, 1)).squeeze(1))
    tops_t, strengths_t = torch.stack(tops, 1), torch.stack(strengths, 1)
    gains = tops_t - before.unsqueeze(1)
    best = gains.argmax(1)   # the first maximum wins ties, in the editors' order
    keys = [f"{e.property}:{d}" for e, d in names]
    out = []
    for i, j in enumerate(best.tolist()):
        finite = {k: (float(g) if torch.isfinite(g) else None) for k, g in zip(keys, gains[i])}
        if ranged and not gains[i, j] > 0:
            out.append(RestoringEdit("none", "", 0.0, float(before[i]), float(before[i]), finite))
        else:
            out.append(RestoringEdit(names[j][0].property, names[j][1], float(strengths_t[i, j]), float(before[i]),
                                     float(tops_t[i, j]), finite))
    return out
