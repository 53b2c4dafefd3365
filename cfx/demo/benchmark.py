"""The six-cause explanation benchmark on a demo data set."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from cfx.core.images import is_grey
from cfx.core.shifts import CAUSES, SHIFTS
from cfx.evidence import collect_evidence
from cfx.prompts import EvidenceReporter, score_explanations

from .causes import cause_examples
from .models import DemoModels

__all__ = ["explanation_benchmark"]


def explanation_benchmark(models: "DemoModels", fitted, per_cause: int = 100, seed: int = 1,
                          reporter=None, progress: bool = False, search: str = "auto") -> dict:
    """The six-cause benchmark of the explanation study on a demo data set, with the offline evidence reporter by default.

    Each cause is applied at every strength of its grid to the test split (causes seeded with ``seed``); only
    modified images whose PaRCE competency falls below 0.9 are kept, up to ``per_cause`` per cause drawn at
    random; evidence is collected once with the Reco, LGD and LNN counterfactuals (property edits searched with
    ``search``, see :func:`cfx.generators.sweep_edits`) and explained in five views: all
    of it, without counterfactual evidence (ablation), and with each generator alone. Saturation is skipped on grey
    images. Returns ``{"causes": {cause: {"kept": n_kept, "used": n, "per_strength": {k: {"n", "accuracy"}}}},
    "views": {view: {"per_cause", "counts", "mean"}}}``.
    """
    if per_cause < 1:
        raise ValueError(f"per_cause must be at least 1, got {per_cause}")
    reporter = reporter or EvidenceReporter()
    clf = models.classifier
    x, y = models.data.split("test")
    grey = is_grey(x)
    views = {"all": ("reco", "lgd", "lnn"), "no counterfactual": (), "reco": ("reco",), "lgd": ("lgd",),
             "lnn": ("lnn",)}
    named: dict[str, list] = {v: [] for v in views}
    truth: list[str] = []
    causes: dict[str, dict] = {}
    for cause in tqdm([c for c in CAUSES if not (grey and SHIFTS.get(c).colour)], desc="causes", disable=not progress):
        ex = cause_examples(x, y, clf, cause, score=lambda im: fitted.parce.score(clf, im), seed=seed)
        if len(ex.images) == 0:
            causes[cause] = {"kept": 0, "used": 0, "per_strength": {}}
            continue
        pick = torch.randperm(len(ex.images), generator=torch.Generator().manual_seed(seed))[:per_cause]
        evidence = collect_evidence(clf, fitted, ex.images[pick], search=search)
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
