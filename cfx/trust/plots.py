"""Plots for trust results (matplotlib, headless): ROC curves and risk-coverage curves, one line per score."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from torch import Tensor

from .metrics import risk_coverage_curve

__all__ = ["risk_coverage_plot", "roc_plot"]


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    return plt, fig, ax


def _style(i: int, name: str) -> dict:
    """Distinct lines past matplotlib's ten colours; GradTrust variants drawn thicker (the headline score)."""
    return {"lw": 2.2 if name.startswith("gradtrust") else 1.2, "ls": ("-", "--", ":")[(i // 10) % 3]}


def roc_plot(scores: Mapping[str, Tensor], correct: Tensor, path: str | Path) -> Path:
    """ROC curves (correct predictions positive) of each score, saved as PNG."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt, fig, ax = _figure()
    c = np.asarray(correct, dtype=bool)
    if c.all() or not c.any():
        ax.text(0.5, 0.5, "ROC undefined: all predictions are right (or all wrong)", ha="center")
    else:
        for i, (name, s) in enumerate(scores.items()):
            v = np.asarray(s, dtype=np.float64)
            ok = np.isfinite(v)
            fpr, tpr, _ = roc_curve(c[ok], v[ok])
            ax.plot(fpr, tpr, label=f"{name} ({roc_auc_score(c[ok], v[ok]):.3f})", **_style(i, name))
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        ax.legend(fontsize=8, title="AUROC", loc="lower right")
    ax.set_xlabel("false-positive rate (errors trusted)")
    ax.set_ylabel("true-positive rate (correct trusted)")
    ax.set_title("Misprediction detection: ROC")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def risk_coverage_plot(scores: Mapping[str, Tensor], correct: Tensor, path: str | Path) -> Path:
    """Risk (error rate among kept samples) against coverage, most trusted first, saved as PNG."""
    plt, fig, ax = _figure()
    c = np.asarray(correct, dtype=bool)
    for i, (name, s) in enumerate(scores.items()):
        v = np.asarray(s, dtype=np.float64)
        ok = np.isfinite(v)
        coverage, risk = risk_coverage_curve(v[ok], c[ok])
        ax.step(coverage, risk, where="post", label=name, **_style(i, name))
    ax.axhline(1 - c.mean(), color="grey", lw=0.8, ls=":", label="no rejection")
    ax.set_xlabel("coverage (share of samples trusted)")
    ax.set_ylabel("risk (error rate among trusted)")
    ax.set_title("Risk-coverage")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
