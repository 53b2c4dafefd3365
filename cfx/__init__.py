"""cfx: why should I not trust this prediction, and what would have to change for the model to be confident?

The public API of the foundation stage:

- :mod:`cfx.models`: :class:`Classifier` (adapter for any PyTorch classifier) and :func:`load_classifier` (specs);
- :mod:`cfx.data`: image sources (:class:`ImageFolder`, :class:`FlatFolder`, :class:`Manifest`,
  :class:`TensorSource`), :func:`open_source` and :func:`iter_batches`;
- :mod:`cfx.demo`: the embedded demo world (shapes, digits, the six causes) and :func:`load_demo`;
- :mod:`cfx.trust`: GradTrust and the baseline trust scores (registry :data:`SCORES`), :func:`flag`, :class:`Threshold`;
- :mod:`cfx.metrics`: :func:`misprediction_metrics`; :mod:`cfx.scoring`: :func:`score_source` for whole data sources;
- :mod:`cfx.pipeline`: :func:`explain`, the main job (score → flag → counterfactuals → evidence → explanation →
  report), resumable through :class:`cfx.runstore.RunStore`;
- :mod:`cfx.dataset_audit`: :func:`audit`, the dataset bias audit (property sensitivity, slices, trust link).

The later stages import as ``cfx.generators``, ``cfx.prompts`` and ``cfx.reports``.
"""

from .data import (Batch, DataSourceError, FlatFolder, ImageFolder, ImageSource, Manifest, Record, TensorSource,
                   decode_image, iter_batches, open_source)
from .metrics import misprediction_metrics
from .models import Classifier, ClassifierError, Preprocessing, find_head, load_classifier
from .scoring import ScoreTable, score_source
from .trust import SCORES, Threshold, flag, gradtrust, gradtrust_reference, score_batch


def explain(*args, **kwargs):
    """The main job; see :func:`cfx.pipeline.explain` (imported lazily: it pulls in the generators)."""
    from .pipeline import explain as _explain

    return _explain(*args, **kwargs)


def audit(*args, **kwargs):
    """The dataset bias audit; see :func:`cfx.dataset_audit.audit` (imported lazily)."""
    from .dataset_audit import audit as _audit

    return _audit(*args, **kwargs)

__version__ = "0.1.0"

__all__ = [
    "Batch", "Classifier", "ClassifierError", "DataSourceError", "FlatFolder", "ImageFolder", "ImageSource",
    "Manifest", "Preprocessing", "Record", "TensorSource", "decode_image", "find_head", "iter_batches",
    "load_classifier", "open_source", "__version__",
    "SCORES", "ScoreTable", "Threshold", "flag", "gradtrust", "gradtrust_reference", "misprediction_metrics",
    "score_batch", "score_source", "explain", "audit",
]
