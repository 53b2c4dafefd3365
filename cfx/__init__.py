"""cfx: why should I not trust this prediction, and what would have to change for the model to be confident?

The stages, each a sub-package whose imports point only down the list:

- :mod:`cfx.core`: data sources, the classifier adapter and model loaders, image operations, the known shifts,
  the run store, registries;
- :mod:`cfx.trust`: trust scores (GradTrust and the baselines, PaRCE, Mahalanobis, the trust oracle), the fitted
  folder, flag thresholds, misprediction metrics;
- :mod:`cfx.generators`: high-competency counterfactuals and gradual property edits with EPGM;
- :mod:`cfx.evidence`: the evidence record of one flagged image;
- :mod:`cfx.prompts`: reporters that turn evidence into explanations;
- :mod:`cfx.reports`: self-contained HTML review and audit reports;
- :mod:`cfx.jobs`: ``fit``, ``explain`` and ``audit``;
- :mod:`cfx.cli` and the demo plugin :mod:`cfx.demo` at the top.

The names below are importable from ``cfx`` directly; each loads its module on first use (so ``import cfx`` is
cheap and creates no import cycle), and each is the real object with its real signature.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name → module that defines it
_EXPORTS: dict[str, str] = {
    **{name: "cfx.core.data" for name in ("Batch", "DataSourceError", "FlatFolder", "ImageFolder", "ImageSource",
                                          "Manifest", "Record", "TensorSource", "decode_image", "iter_batches",
                                          "open_source")},
    **{name: "cfx.core.models" for name in ("Classifier", "ClassifierError", "InputCheck", "Preprocessing",
                                            "check_inputs", "find_head", "load_classifier", "model_fingerprint")},
    **{name: "cfx.trust.scores" for name in ("SCORES", "TrustScore", "score_batch", "applicable_scores")},
    **{name: "cfx.trust.functional" for name in ("gradtrust", "gradtrust_reference")},
    **{name: "cfx.trust.threshold" for name in ("Threshold", "flag")},
    **{name: "cfx.trust.fitted" for name in ("Fitted", "FittedError")},
    "misprediction_metrics": "cfx.trust.metrics",
    **{name: "cfx.trust.scoring" for name in ("ScoreTable", "score_source")},
    **{name: "cfx.jobs" for name in ("fit", "explain", "audit", "ExplainResult", "AuditResult")},
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ below loads lazily  # noqa: F401
    from cfx.core.data import (Batch, DataSourceError, FlatFolder, ImageFolder, ImageSource, Manifest, Record,
                               TensorSource, decode_image, iter_batches, open_source)
    from cfx.core.models import (Classifier, ClassifierError, InputCheck, Preprocessing, check_inputs, find_head,
                                 load_classifier, model_fingerprint)
    from cfx.jobs import AuditResult, ExplainResult, audit, explain, fit
    from cfx.trust.fitted import Fitted, FittedError
    from cfx.trust.functional import gradtrust, gradtrust_reference
    from cfx.trust.metrics import misprediction_metrics
    from cfx.trust.scores import SCORES, TrustScore, applicable_scores, score_batch
    from cfx.trust.scoring import ScoreTable, score_source
    from cfx.trust.threshold import Threshold, flag


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cfx' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
