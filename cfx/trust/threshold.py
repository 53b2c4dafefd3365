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
from torch import Tensor

__all__ = ["Threshold", "flag", "resolve_threshold"]


@dataclass(frozen=True)
class Threshold:
    """A flag threshold fixed before a run: samples with ``score < value`` are flagged (not trusted).

    Build with :meth:`fixed` or :meth:`from_percentile` (a percentile of the score on calibration data); store it
    with :meth:`to_dict` so a resumed or distributed run flags exactly as a single one would.
    """

    score: str
    value: float
    percentile: float | None = None
    calibration_size: int | None = None

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
        return cls(**data)


def resolve_threshold(score: str, below: float | None = None, percentile: float | None = None, *,
                      calibration: Callable[[str, float], Threshold] | Tensor | np.ndarray | None = None,
                      default_percentile: float | None = None) -> Threshold | None:
    """The one threshold rule: ``below`` (a number) or ``percentile`` (0 < p < 100 of the flag score on
    calibration data), not both; with neither, ``default_percentile`` (or no threshold at all when that is None).

    ``calibration`` is where a percentile is taken: a tensor of calibration scores of ``score``, or a callable
    ``(score, percentile) -> Threshold`` such as :meth:`cfx.trust.fitted.Fitted.threshold` (the calibration split
    stored by ``cfx fit``).
    """
    if below is not None and percentile is not None:
        raise ValueError("give either a flag threshold (flag_below / --flag-below) or a percentile "
                         "(flag_percentile / --flag-percentile), not both")
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
    s = torch.as_tensor(scores, dtype=torch.float64)
    value = threshold.value if isinstance(threshold, Threshold) else float(threshold)
    return ~(s >= value)
