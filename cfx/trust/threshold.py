"""Flag thresholds: one rule, fixed before a run, used by every command.

A sample is flagged (not trusted) when its flag score is below the threshold. The threshold is either a number
(``--flag-below``) or a percentile of the flag score on calibration data (``--flag-percentile``), never both, and it
is fixed before the run starts, so a resumed or distributed run flags exactly as an uninterrupted one.
:func:`resolve_threshold` applies that rule; :class:`Threshold` stores the result.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

__all__ = ["AUTO", "MIN_CALIBRATION_ERRORS", "UNLABELLED_FLAG_SCORE", "FlagScoreChoice", "Threshold",
           "choose_flag_score", "flag", "resolve_threshold"]

#: ``flag_score="auto"``: chosen by :func:`choose_flag_score`.
AUTO = "auto"
#: The flag score without labelled calibration data to judge by: the GradTrust variant that separated untrusted
#: predictions best across the data sets measured in ``docs/results.md`` (``bench/flag_score_variants.py``).
UNLABELLED_FLAG_SCORE = "gradtrust_topk"
#: Without labels, the first of these the model has (GradTrust-top-5 needs three classes or more).
UNLABELLED_FALLBACKS = (UNLABELLED_FLAG_SCORE, "msp")
#: Labelled calibration data must hold at least this many misclassified images before a score is chosen on it.
MIN_CALIBRATION_ERRORS = 30
#: Calibration AUROCs this close to the best are a tie (with tens of errors such differences are noise); ties go to
#: the first of :data:`TIE_PREFERENCE` among them, else to the best.
AUROC_TIE = 0.01
TIE_PREFERENCE = ("parce", UNLABELLED_FLAG_SCORE)


@dataclass(frozen=True)
class FlagScoreChoice:
    """Which score decides the flags, and why (shown in ``summary.json`` and the report)."""

    score: str
    reason: str
    calibration_auroc: dict[str, float] | None = None  # misprediction AUROC of each candidate, when judged

    def to_dict(self) -> dict:
        return asdict(self)


def choose_flag_score(requested: str, available: Sequence[str],
                      calibration: dict[str, Tensor] | None = None,
                      min_errors: int = MIN_CALIBRATION_ERRORS) -> FlagScoreChoice:
    """The flag score: ``requested`` itself, or for ``"auto"`` the available score with the best misprediction AUROC
    on labelled calibration scores (``calibration``: score name → ``(N,)``, with ``"correct"`` 1/0 per image, as
    a fitted folder stores them) holding at least ``min_errors`` errors; otherwise :data:`UNLABELLED_FLAG_SCORE`."""
    if requested != AUTO:
        if requested not in available:
            raise ValueError(f"flag score {requested!r} is not available here; available: {', '.join(available)} "
                             "(or auto)")
        return FlagScoreChoice(requested, "asked for")
    if not available:
        raise ValueError("no trust score is available to flag with")
    fallback = next((s for s in UNLABELLED_FALLBACKS if s in available), available[0])
    measured = ("the score measured to separate untrusted predictions best without labels (docs/results.md)"
                if fallback == UNLABELLED_FLAG_SCORE else
                f"as {UNLABELLED_FLAG_SCORE}, the score measured best without labels, is not available for this model "
                "(with two classes it is the same for every image)")
    correct = None if calibration is None else calibration.get("correct")
    if correct is None:
        why = "no fitted folder" if calibration is None else "the fitted folder's calibration data has no labels"
        return FlagScoreChoice(fallback, f"{why}: {fallback}, {measured}")
    correct = torch.as_tensor(correct).bool()
    errors = int((~correct).sum())
    if errors < min_errors or bool((~correct).all()):
        plural = "" if errors == 1 else "s"
        return FlagScoreChoice(fallback, f"the labelled calibration data holds {errors} error{plural} (fewer than "
                                         f"{min_errors} to judge by): {fallback}, {measured}")
    aurocs = {}
    for name in available:
        values = calibration.get(name)
        if values is None or len(values) != len(correct):
            continue
        v = torch.as_tensor(values, dtype=torch.float64)
        ok = torch.isfinite(v)
        if ok.sum() < 2 or correct[ok].all() or not correct[ok].any():
            continue
        aurocs[name] = round(float(roc_auc_score(correct[ok].numpy(), v[ok].numpy())), 4)
    if not aurocs:
        return FlagScoreChoice(fallback, f"no available score has calibration scores: {fallback}")
    best = max(aurocs, key=lambda k: (aurocs[k], -list(available).index(k)))
    where = f"on the fitted folder's {len(correct)} labelled calibration images ({errors} error{'' if errors == 1 else 's'})"
    tied = [k for k in TIE_PREFERENCE if k in aurocs and aurocs[k] >= aurocs[best] - AUROC_TIE]
    if tied and tied[0] != best:
        return FlagScoreChoice(tied[0], f"misprediction AUROC {aurocs[tied[0]]:.3f} {where}, within {AUROC_TIE} of "
                                        f"the best ({best}, {aurocs[best]:.3f}): a tie, which goes to {tied[0]}",
                               aurocs)
    return FlagScoreChoice(best, f"the best misprediction AUROC ({aurocs[best]:.3f}) {where}", aurocs)


@dataclass(frozen=True)
class Threshold:
    """A flag threshold fixed before a run: samples with ``score < value`` are flagged (not trusted).

    Build with :meth:`fixed` or :meth:`from_percentile` (a percentile of the score on calibration data); store it
    with :meth:`to_dict` so a resumed or distributed run flags exactly as a single one would.
    """

    score: str
    value: float | None
    percentile: float | None = None
    calibration_size: int | None = None
    share: float | None = None  # flag this percent of the run's own samples: value fixed once they are all scored

    @property
    def pending(self) -> bool:
        """A share of the run whose value is not fixed yet (it is, once every sample of the run is scored)."""
        return self.value is None

    @classmethod
    def of_run_share(cls, score: str, share: float) -> "Threshold":
        """Flag the ``share`` percent least trusted samples of this run (value fixed after scoring them all)."""
        if not 0 < share < 100:
            raise ValueError(f"flag_share must be between 0 and 100, got {share}")
        return cls(score, None, share=float(share))

    def fixed_on(self, run_scores: Tensor | np.ndarray | Sequence[float]) -> "Threshold":
        """The pending share fixed on the run's scores: their ``share``-th percentile."""
        t = Threshold.from_percentile(self.score, run_scores, self.share)
        return Threshold(self.score, t.value, t.percentile, t.calibration_size, self.share)

    @classmethod
    def fixed(cls, score: str, value: float) -> "Threshold":
        if not math.isfinite(value):
            raise ValueError(f"a threshold must be a finite number, got {value}")
        return cls(score, float(value))

    @classmethod
    def from_percentile(cls, score: str, calibration_scores: Tensor | np.ndarray | Sequence[float],
                        percentile: float) -> "Threshold":
        """Threshold at the ``percentile`` (0-100) of the calibration scores: about that share gets flagged."""
        if not 0 <= percentile <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}")
        values = np.asarray(torch.as_tensor(calibration_scores, dtype=torch.float64).cpu(), dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError("no finite calibration scores to take a percentile of; check the calibration data")
        return cls(score, float(np.percentile(values, percentile)), float(percentile), int(values.size))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Threshold":
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"not a threshold as Threshold.to_dict writes it ({exc}); needs at least 'score' and "
                             "'value'") from None


def resolve_threshold(score: str, below: float | None = None, percentile: float | None = None, *,
                      calibration: Callable[[str, float], Threshold] | Tensor | np.ndarray | None = None,
                      default_percentile: float | None = None, share: float | None = None) -> Threshold | None:
    """The one threshold rule: ``below`` (a number), ``percentile`` (0 < p < 100 of the flag score on calibration
    data) or ``share`` (the p percent least trusted of the run itself, fixed once the run is scored), one of them;
    with none, ``default_percentile`` (or no threshold at all when that is None).

    ``calibration`` is where a percentile is taken: a tensor of calibration scores of ``score``, or a callable
    ``(score, percentile) -> Threshold`` such as :meth:`cfx.trust.fitted.Fitted.threshold` (the calibration split
    stored by ``cfx fit``).
    """
    if sum(v is not None for v in (below, percentile, share)) > 1:
        raise ValueError("give one of a flag threshold (flag_below / --flag-below), a percentile of the calibration "
                         "scores (flag_percentile / --flag-percentile) or a share of the run (flag_share / "
                         "--flag-share), not several")
    if share is not None:
        return Threshold.of_run_share(score, share)
    if below is not None:
        if not math.isfinite(below):
            raise ValueError(f"flag_below must be a finite number, got {below}")
        return Threshold.fixed(score, float(below))
    if percentile is None:
        percentile = default_percentile
    if percentile is None:
        return None
    percentile = float(percentile)
    if not 0 < percentile < 100:
        raise ValueError(f"flag_percentile must be between 0 and 100, got {percentile}")
    if calibration is None:
        raise ValueError(f"a percentile threshold needs calibration data to take the percentile of {score!r} on "
                         "(--calibration SOURCE, or a fitted folder from cfx fit: --fitted DIR)")
    if callable(calibration):
        return calibration(score, percentile)
    return Threshold.from_percentile(score, calibration, percentile)


def flag(scores: Tensor | np.ndarray, threshold: Threshold | float) -> Tensor:
    """Boolean flags ``scores < threshold``: True = do not trust. NaN scores (failed samples) are flagged."""
    if isinstance(threshold, Threshold) and threshold.pending:
        raise ValueError("this threshold is a share of the run: fix it on the run's scores first (fixed_on)")
    s = torch.as_tensor(scores, dtype=torch.float64)
    value = threshold.value if isinstance(threshold, Threshold) else float(threshold)
    return ~(s >= value)
