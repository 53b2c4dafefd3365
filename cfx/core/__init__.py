"""cfx.core: what every stage stands on.

- :mod:`~cfx.core.data`: image sources (folders, manifests, tensors), batching, and the source-kind registry;
- :mod:`~cfx.core.models`: the :class:`Classifier` adapter for any PyTorch classifier, model spec loaders and their
  registry, the model fingerprint;
- :mod:`~cfx.core.images`: image operations shared by every stage;
- :mod:`~cfx.core.shifts`: the known causes of low competency, declared once;
- :mod:`~cfx.core.runstore`: the resumable run store (SQLite) of the jobs;
- :mod:`~cfx.core.nets` and :mod:`~cfx.core.training`: the small networks cfx trains itself;
- :mod:`~cfx.core.registry`: the :class:`Registry` every extensible family uses, and plugin loading.
"""

from .data import (SOURCE_KINDS, Batch, DataSourceError, FlatFolder, ImageFolder, ImageSource, Manifest, Record,
                   TensorSource, decode_image, iter_batches, open_source)
from .models import (MODEL_KINDS, Classifier, ClassifierError, InputCheck, ModelOptions, Preprocessing, check_inputs,
                     find_head, load_classifier, model_fingerprint)
from .registry import Registry, load_plugins
from .runstore import RunStore, RunStoreError
from .shifts import CAUSES, SHIFTS, Shift, apply_shift

__all__ = [
    "Batch", "CAUSES", "Classifier", "ClassifierError", "DataSourceError", "FlatFolder", "ImageFolder", "ImageSource",
    "InputCheck", "check_inputs",
    "MODEL_KINDS", "Manifest", "ModelOptions", "Preprocessing", "Record", "Registry", "RunStore", "RunStoreError",
    "SHIFTS", "SOURCE_KINDS", "Shift", "TensorSource", "apply_shift", "decode_image", "find_head", "iter_batches",
    "load_classifier", "load_plugins", "model_fingerprint", "open_source",
]
