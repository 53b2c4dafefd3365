"""cfx.trust: score every prediction and flag the untrusted ones (stage 1 of the pipeline).

- :mod:`~cfx.trust.functional`: GradTrust (closed form and the autograd reference) and the baseline scores as
  plain functions of logits, features or the model;
- :mod:`~cfx.trust.scores`: the same scores as objects in one registry, :data:`SCORES`, and :func:`score_batch`;
- :mod:`~cfx.trust.fitted`: the scores that learn from reference data (PaRCE, Mahalanobis, the steep-slope trust
  oracle) and the fitted folder (:class:`Fitted`) that stores them; :mod:`~cfx.trust.latent_index` its FAISS index;
- :mod:`~cfx.trust.threshold`: the one flag-threshold rule;
- :mod:`~cfx.trust.metrics` and :mod:`~cfx.trust.plots`: misprediction-detection metrics and their plots;
- :mod:`~cfx.trust.scoring`: scoring a whole data source (``cfx trust``).
"""

from .fitted import Fitted, FittedError, Mahalanobis, PaRCE, TrustOracle
from .functional import (check_logits, energy, gradnorm, gradtrust, gradtrust_reference, log_prob, margin,
                         max_logit, mc_dropout, msp, neg_entropy, odin)
from .metrics import misprediction_metrics
from .scores import SCORES, ScoreInputs, TrustScore, applicable_scores, score_batch
from .scoring import ScoreTable, score_source
from .threshold import Threshold, flag, resolve_threshold

__all__ = [
    "Fitted", "FittedError", "Mahalanobis", "PaRCE", "SCORES", "ScoreInputs", "ScoreTable", "Threshold",
    "TrustOracle", "TrustScore", "applicable_scores", "check_logits", "energy", "flag", "gradnorm", "gradtrust",
    "gradtrust_reference", "log_prob", "margin", "max_logit", "mc_dropout", "misprediction_metrics", "msp",
    "neg_entropy", "odin", "resolve_threshold", "score_batch", "score_source",
]
