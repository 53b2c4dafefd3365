"""The cause benchmark of the explanations: images changed by a known cause in a known direction, explained, and
the named cause checked against the truth.

:func:`cause_benchmark` runs on any classifier with a fitted folder (the demo's models, a CNN on colourised digits,
EfficientNet-Lite0 on photographs); :func:`explanation_benchmark` runs it on a demo data set's test split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from cfx.core.images import is_grey
from cfx.core.models import Classifier
from cfx.core.shifts import CAUSE_DIRECTIONS, SHIFTS
from cfx.evidence import Evidence, collect_evidence
from cfx.prompts import EvidenceReporter, score_explanations

from .causes import cause_examples
from .models import DemoModels

__all__ = ["VIEWS", "cause_benchmark", "drawn_strengths", "explanation_benchmark", "score_cause_evidence"]

#: The views of the evidence the benchmark explains: all of it, no counterfactual (ablation), each generator alone.
VIEWS: dict[str, tuple[str, ...]] = {"all": ("reco", "lgd", "lnn"), "no counterfactual": (), "reco": ("reco",),
                                     "lgd": ("lgd",), "lnn": ("lnn",)}


def drawn_strengths(grid: Sequence[float], count: int, generator: torch.Generator,
                    integer: bool = False) -> list[float]:
    """``count`` strengths drawn at random inside the span of ``grid`` (a random pair of neighbouring grid points,
    a uniform point between them): strengths the thresholds were not set on. ``integer`` rounds them (pixelation)."""
    if len(grid) < 2:
        raise ValueError(f"a grid needs at least two strengths to draw between, got {list(grid)}")
    pair = torch.randint(len(grid) - 1, (count,), generator=generator)
    t = torch.rand(count, generator=generator)
    lo, hi = torch.tensor(grid, dtype=torch.float64)[pair], torch.tensor(grid, dtype=torch.float64)[pair + 1]
    out = (lo + t * (hi - lo)).tolist()
    return [float(round(v)) for v in out] if integer else [round(v, 4) for v in out]


def cause_benchmark(classifier: Classifier, fitted, images: Tensor, labels: Tensor | None = None,
                    causes: Sequence[tuple[str, str]] | None = None, per_cause: int = 100, seed: int = 1,
                    strengths: str = "grid", reporter=None, search: str = "auto", chunk: int = 32,
                    progress: bool = False,
                    on_evidence: Callable[[tuple[str, str], list[Evidence], list[float], Tensor], None] | None = None
                    ) -> dict:
    """Explain images changed by each cause in each direction and score the named cause.

    Sources are the ``images`` the classifier gets right (``labels``; without labels, every image counts as its own
    prediction) with PaRCE competency at least the fitted folder's threshold. Each cause and direction of
    :data:`cfx.core.shifts.CAUSE_DIRECTIONS` (or ``causes``) is applied to every source at six strengths: the grid
    (``strengths="grid"``) or six drawn at random inside it (``"drawn"``, :func:`drawn_strengths`: the honest test
    of thresholds set on the grid); a changed image is kept when its competency fell below the threshold. Up to
    ``per_cause`` kept images per cause and direction, drawn at random, get evidence (Reco, LGD and LNN, property
    edits searched with ``search``) in chunks of ``chunk``, and are explained in the views of :data:`VIEWS` by
    ``reporter`` (default :class:`~cfx.prompts.EvidenceReporter`). Colour causes are skipped on grey images.
    ``on_evidence(group, evidence, strengths, images)`` receives each group's records and changed images (to store
    them and re-score later with :func:`score_cause_evidence`).

    Returns ``{"groups": {"cause/direction": {"kept", "used", "accuracy", "per_strength": {k: {"n", "accuracy"}}}},
    "views": {view: {"per_cause", "counts", "mean"}}, "mean": mean over groups of the "all" view,
    "min_group": the lowest group accuracy}``. "No single cause" counts as wrong.
    """
    if per_cause < 1:
        raise ValueError(f"per_cause must be at least 1, got {per_cause}")
    if strengths not in ("grid", "drawn"):
        raise ValueError(f"strengths must be 'grid' or 'drawn', got {strengths!r}")
    if fitted is None or fitted.parce is None:
        raise ValueError("the cause benchmark needs a fitted folder with PaRCE (cfx fit): competency selects the "
                         "images a cause really made untrusted")
    groups = list(causes) if causes is not None else list(CAUSE_DIRECTIONS)
    unknown = [g for g in groups if g not in CAUSE_DIRECTIONS]
    if unknown:
        raise ValueError(f"unknown cause/direction {unknown}; known: {list(CAUSE_DIRECTIONS)}")
    images = images.float()
    with torch.inference_mode():
        predicted = classifier.predict(images).cpu()
    labels = predicted if labels is None else torch.as_tensor(labels).long()
    grey = is_grey(images)
    threshold = float(fitted.parce.threshold)
    score = lambda im: fitted.parce.score(classifier, im)  # noqa: E731
    g = torch.Generator().manual_seed(seed)
    records: dict[tuple[str, str], tuple[list[Evidence], list[float]]] = {}
    kept: dict[tuple[str, str], tuple[int, dict[float, int]]] = {}
    for group in tqdm(groups, desc="causes", disable=not progress):
        cause, direction = group
        if grey and SHIFTS.get(cause).colour:
            continue
        grid = CAUSE_DIRECTIONS[group]
        ks = grid if strengths == "grid" else drawn_strengths(grid, len(grid), g, integer=cause == "pixelation")
        ex = cause_examples(images, labels, classifier, cause, score=score, threshold=threshold, strengths=ks,
                            seed=seed)
        kept[group] = (len(ex.images), {round(float(k), 4): int((ex.strength == k).sum()) for k in ks})
        if len(ex.images) == 0:
            records[group] = ([], [])
            continue
        pick = torch.randperm(len(ex.images), generator=g)[:per_cause]
        evidence: list[Evidence] = []
        for i in range(0, len(pick), chunk):
            evidence += collect_evidence(classifier, fitted, ex.images[pick[i:i + chunk]], search=search)
        strengths_used = [round(float(k), 4) for k in ex.strength[pick]]
        records[group] = (evidence, strengths_used)
        if on_evidence is not None:
            on_evidence(group, evidence, strengths_used, ex.images[pick])
    result = score_cause_evidence(records, reporter)
    for group, (n_kept, per_k) in kept.items():
        entry = result["groups"].setdefault(f"{group[0]}/{group[1]}", {"used": 0, "accuracy": float("nan"),
                                                                      "per_strength": {}})
        entry["kept"] = n_kept
        for k, n in per_k.items():
            entry["per_strength"].setdefault(k, {"n": 0, "accuracy": float("nan")})["kept"] = n
    result.update(strengths=strengths, seed=seed, per_cause=per_cause, threshold=threshold)
    return result


def score_cause_evidence(records: dict[tuple[str, str], tuple[list[Evidence], list[float]]], reporter=None) -> dict:
    """Explain stored benchmark evidence (``{(cause, direction): (evidence, strengths)}``) and score it, per group
    and strength and per view (see :func:`cause_benchmark`)."""
    reporter = reporter or EvidenceReporter()
    named: dict[str, list] = {v: [] for v in VIEWS}
    truth: list[str] = []
    groups: dict[str, dict] = {}
    for (cause, direction), (evidence, strengths) in records.items():
        if not evidence:
            continue
        for view, gens in VIEWS.items():
            named[view] += [reporter.explain(e.restricted_to(gens)) for e in evidence]
        named_causes = [e.cause for e in named["all"][len(truth):]]  # this group's answers from all the evidence
        hits: dict[float, list[bool]] = {}
        for k, c in zip(strengths, named_causes):
            hits.setdefault(k, []).append(c == cause)
        truth += [cause] * len(evidence)
        right = [c == cause for c in named_causes]
        groups[f"{cause}/{direction}"] = {
            "used": len(evidence), "accuracy": sum(right) / len(right),
            "named": {c: named_causes.count(c) for c in sorted(set(named_causes))},
            "per_strength": {k: {"n": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(hits.items())}}
    views = {}
    for view in VIEWS:
        r = score_explanations(named[view], truth) if truth else {"per_cause": {}, "counts": {}, "mean": float("nan")}
        views[view] = {"per_cause": r["per_cause"], "counts": r["counts"], "mean": r["mean"]}
    accs = [g["accuracy"] for g in groups.values()]
    return {"groups": groups, "views": views, "mean": sum(accs) / len(accs) if accs else float("nan"),
            "min_group": min(accs) if accs else float("nan")}


def explanation_benchmark(models: "DemoModels", fitted, per_cause: int = 100, seed: int = 1,
                          reporter=None, progress: bool = False, search: str = "auto",
                          causes: Sequence[tuple[str, str]] | None = None, strengths: str = "grid") -> dict:
    """:func:`cause_benchmark` on a demo data set's test split (its labels), every cause in every direction."""
    x, y = models.data.split("test")
    out = cause_benchmark(models.classifier, fitted, x, y, causes=causes, per_cause=per_cause, seed=seed,
                          strengths=strengths, reporter=reporter, search=search, progress=progress)
    out["dataset"] = models.data.name
    return out
