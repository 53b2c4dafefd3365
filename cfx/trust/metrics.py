"""Misprediction-detection metrics from ``(scores, correct)``: score-agnostic, higher score = more trusted.

Definitions (``docs/methods.md``, with the reference code's pitfalls fixed):

- **AUROC**: area under the ROC curve with *correct* predictions as positives, ranked by the score.
- **AUPR-Error**: average precision with *errors* as positives, ranked by ``-score`` (the standard convention;
  the steep-slope ImageNet code ranks by ``+score``, which rewards a worse detector).
- **AUPR-Success**: average precision with correct predictions as positives, ranked by the score.
- **FPR@95%TPR**: the share of errors still trusted when 95 % of correct predictions are trusted, linearly
  interpolated on the ROC curve, so it is never missing.
- **AURC**: area under the risk-coverage curve (risk = error rate among the samples kept, most trusted first; ties
  kept together); **e-AURC** = AURC minus the AURC of a perfect ranking.
- TPR / TNR at a threshold (trusted = ``score >= threshold``), and accuracy per score decile.

Optional percentile bootstrap confidence intervals.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = ["aurc", "fpr_at_tpr", "misprediction_metrics", "risk_coverage_curve"]

_HEADLINE = ("auroc", "aupr_error", "aupr_success", "fpr_at_95_tpr", "aurc", "e_aurc")


def _as_arrays(scores: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(torch.as_tensor(scores).detach().cpu().double() if isinstance(scores, torch.Tensor) else scores,
                   dtype=np.float64).ravel()
    c = np.asarray(correct.detach().cpu() if isinstance(correct, torch.Tensor) else correct).ravel()
    if s.shape != c.shape:
        raise ValueError(f"scores and correct must have the same length, got {s.shape[0]} and {c.shape[0]}")
    if s.size == 0:
        raise ValueError("no samples: scores and correct are empty")
    if not np.isin(c, (0, 1, True, False)).all():
        raise ValueError("correct must hold booleans or 0/1 (1 = the prediction was right)")
    if not np.isfinite(s).all():
        raise ValueError(f"{int((~np.isfinite(s)).sum())} scores are NaN or infinite; drop failed samples first")
    return s, c.astype(bool)


def risk_coverage_curve(scores: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and risk after each group of tied scores, most trusted first: ``(coverage, risk)`` arrays."""
    s, c = _as_arrays(scores, correct)
    order = np.argsort(-s, kind="stable")
    s_sorted, err_sorted = s[order], ~c[order]
    cum_err = np.cumsum(err_sorted)
    # index of the last sample of each run of tied scores
    ends = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    kept = ends + 1
    return kept / s.size, cum_err[ends] / kept


def aurc(scores: Any, correct: Any) -> float:
    """Area under the risk-coverage curve: mean risk over coverages 1/N … N/N (ties share one risk)."""
    coverage, risk = risk_coverage_curve(scores, correct)
    widths = np.diff(np.r_[0.0, coverage])
    return float(np.sum(widths * risk))


def _optimal_aurc(correct: np.ndarray) -> float:
    n, n_ok = correct.size, int(correct.sum())
    k = np.arange(n_ok + 1, n + 1, dtype=np.float64)
    return float(np.sum((k - n_ok) / k) / n)


def fpr_at_tpr(scores: Any, correct: Any, tpr: float = 0.95) -> float:
    """False-positive rate (errors trusted) at the given true-positive rate (correct trusted), interpolated."""
    s, c = _as_arrays(scores, correct)
    if c.all() or (~c).all():
        return float("nan")
    fprs, tprs, _ = roc_curve(c, s, drop_intermediate=False)
    i = int(np.searchsorted(tprs, tpr, side="left"))
    if i == 0 or tprs[i] == tpr:
        return float(fprs[i])
    t0, t1, f0, f1 = tprs[i - 1], tprs[i], fprs[i - 1], fprs[i]
    return float(f0 + (tpr - t0) / (t1 - t0) * (f1 - f0))


def _headline(s: np.ndarray, c: np.ndarray) -> dict[str, float]:
    both = c.any() and (~c).any()
    value = aurc(s, c)
    return {
        "auroc": float(roc_auc_score(c, s)) if both else float("nan"),
        "aupr_error": float(average_precision_score(~c, -s)) if both else float("nan"),
        "aupr_success": float(average_precision_score(c, s)) if both else float("nan"),
        "fpr_at_95_tpr": fpr_at_tpr(s, c, 0.95),
        "aurc": value,
        "e_aurc": value - _optimal_aurc(c),
    }


def misprediction_metrics(scores: Any, correct: Any, threshold: float | None = None, bootstrap: int = 0,
                          confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """All misprediction-detection metrics for one score.

    ``scores``: ``(N,)`` trust scores, higher = more trusted. ``correct``: ``(N,)`` booleans, the classifier's top-1
    correctness. Returns a dict with ``n``, ``accuracy``, the headline metrics (``auroc``, ``aupr_error``,
    ``aupr_success``, ``fpr_at_95_tpr``, ``aurc``, ``e_aurc``; rank metrics are NaN when every prediction is right
    or every one is wrong), ``decile_accuracy`` (lowest-score tenth first), and with ``threshold`` the ``tpr``
    (correct ones trusted, ``score >= threshold``) and ``tnr`` (errors flagged). ``bootstrap=B`` adds ``ci``:
    percentile intervals of the headline metrics over B resamples.
    """
    s, c = _as_arrays(scores, correct)
    out: dict[str, Any] = {"n": int(s.size), "accuracy": float(c.mean())}
    out.update(_headline(s, c))
    order = np.argsort(s, kind="stable")
    out["decile_accuracy"] = [float(c[idx].mean()) if idx.size else float("nan")
                              for idx in np.array_split(order, 10)]
    if threshold is not None:
        trusted = s >= threshold
        out["threshold"] = float(threshold)
        out["tpr"] = float(trusted[c].mean()) if c.any() else float("nan")
        out["tnr"] = float((~trusted[~c]).mean()) if (~c).any() else float("nan")
    if bootstrap:
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        rng = np.random.default_rng(seed)
        samples = {k: [] for k in _HEADLINE}
        for _ in range(bootstrap):
            idx = rng.integers(0, s.size, s.size)
            for k, v in _headline(s[idx], c[idx]).items():
                samples[k].append(v)
        lo, hi = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
        out["ci"] = {k: [float(np.nanpercentile(v, lo)), float(np.nanpercentile(v, hi))]
                     if np.isfinite(v).any() else [float("nan")] * 2 for k, v in samples.items()}
    return out


def metrics_table(results: dict[str, dict[str, Any]], keys: Sequence[str] = ("auroc", "aupr_error",
                                                                             "fpr_at_95_tpr", "aurc")) -> str:
    """A Markdown table of methods × metrics (arrows say which way is better)."""
    arrows = {"auroc": "AUROC ↑", "aupr_error": "AUPR-Err ↑", "aupr_success": "AUPR-Succ ↑",
              "fpr_at_95_tpr": "FPR@95 ↓", "aurc": "AURC ↓", "e_aurc": "e-AURC ↓"}
    lines = ["| method | " + " | ".join(arrows.get(k, k) for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.3f}" if m[k] == m[k] else "n/a" for k in keys) + " |")
    return "\n".join(lines)
