"""``summary.json`` of a run, computed from the run store alone (so ``cfx report`` can rewrite it without the model)."""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from cfx.core.runstore import RunStore
from cfx.trust.metrics import misprediction_metrics

__all__ = ["write_summary"]


def write_summary(store: RunStore) -> dict[str, Any]:
    """``summary.json`` from the store alone: per sample ``id, label, prediction, flagged, scores, cause,
    explanation, backend`` (which back-end wrote the explanation), ``fallback`` (why the configured one did not, or
    None) and ``error``, plus counts (with explanations per back-end), the threshold, misprediction metrics per
    score and ``status`` ("complete", or how far an interrupted run got)."""
    samples = store.samples()
    explained = store.explanations()
    rows = []
    for s in samples:
        e = explained.get(s["id"], {})
        exp = e.get("explanation") or {}
        rows.append({"id": s["id"], "label": s["label"], "prediction": s["prediction"], "flagged": s["flagged"],
                     "scores": s["scores"], "cause": e.get("cause"), "explanation": exp.get("text"),
                     "backend": exp.get("backend"), "fallback": exp.get("fallback"),
                     "error": s["error"] or e.get("error")})
    labelled = [s for s in samples if s["label"] is not None and s["error"] is None and s["prediction"] is not None]
    metrics: dict[str, Any] = {}
    if labelled:
        correct = torch.tensor([s["label"] == s["prediction"] for s in labelled])
        for name in store.config.get("methods", []):
            values = torch.tensor([s["scores"].get(name) if s["scores"].get(name) is not None else float("nan")
                                   for s in labelled], dtype=torch.float64)
            ok = torch.isfinite(values)
            if ok.sum() >= 2:
                m = misprediction_metrics(values[ok], correct[ok])
                metrics[name] = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                 for k, v in m.items() if isinstance(v, (int, float))}
    causes: dict[str, int] = {}
    backends: dict[str, int] = {}
    for r in rows:
        if r["cause"]:
            causes[r["cause"]] = causes.get(r["cause"], 0) + 1
        if r["backend"]:
            key = r["backend"]  # as each sample says it, e.g. "evidence (fallback from openai)"
            backends[key] = backends.get(key, 0) + 1
    flagged = sum(r["flagged"] for r in rows)
    done = sum(1 for e in explained.values() if e.get("explanation") or e.get("error"))
    status = ("complete" if store.get_meta("finished") else
              f"unfinished: {done} of {flagged} flagged images explained so far; run the same command again to "
              "resume")
    summary = {
        "config": store.config,
        "status": status,  # "complete", or how far an interrupted (or still running) run got
        "counts": {"samples": len(rows), "errors": sum(s["error"] is not None for s in samples),
                   "flagged": sum(r["flagged"] for r in rows),
                   "explained": sum(1 for e in explained.values() if e.get("explanation")),
                   "explain_errors": sum(1 for e in explained.values() if e.get("error")), "causes": causes,
                   "backends": backends},
        "timing": {"score_seconds": store.get_meta("score_seconds"), "explain_seconds": store.get_meta("explain_seconds"),
                   "explain_stages": store.get_meta("explain_stages")},
        "threshold": store.get_meta("flag_threshold") or store.config.get("threshold"),
        "unavailable": store.get_meta("unavailable") or {},
        "uncalibrated": store.get_meta("uncalibrated") or {},
        "flag_score": store.get_meta("flag_score"),    # which score flagged, and why
        "image_size": store.get_meta("image_size"),    # (H, W) every image was read at, scored and explained at
        "model_notes": store.get_meta("model_notes") or [],  # what is wrong with the model's outputs, if anything
        "input_check": store.get_meta("input_check") or None,  # the normalisation against the first batch norm
        "engine": store.get_meta("engine") or {"engine": "local"},  # this process, or Ray actors
        "reference": store.get_meta("reference"),      # what the evidence compares with
        "edit_ranges": store.get_meta("edit_ranges"),  # how far the property edits went (None: full ranges)
        "metrics": metrics,
        "samples": rows,
    }
    path = store.out / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    tmp.replace(path)
    return summary
