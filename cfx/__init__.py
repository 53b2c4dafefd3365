"""cfx: why should I not trust this prediction, and what would have to change for the model to be confident?

The public API of the foundation stage:

- :mod:`cfx.models`: :class:`Classifier` (adapter for any PyTorch classifier) and :func:`load_classifier` (specs);
- :mod:`cfx.data`: image sources (:class:`ImageFolder`, :class:`FlatFolder`, :class:`Manifest`,
  :class:`TensorSource`), :func:`open_source` and :func:`iter_batches`;
- :mod:`cfx.demo`: the embedded demo world (shapes, digits, the six causes) and :func:`load_demo`.

The later stages import as ``cfx.generators``, ``cfx.prompts`` and ``cfx.reports``.
"""

from .data import (Batch, DataSourceError, FlatFolder, ImageFolder, ImageSource, Manifest, Record, TensorSource,
                   decode_image, iter_batches, open_source)
from .models import Classifier, ClassifierError, Preprocessing, find_head, load_classifier

__version__ = "0.1.0"

__all__ = [
    "Batch", "Classifier", "ClassifierError", "DataSourceError", "FlatFolder", "ImageFolder", "ImageSource",
    "Manifest", "Preprocessing", "Record", "TensorSource", "decode_image", "find_head", "iter_batches",
    "load_classifier", "open_source", "__version__",
]
