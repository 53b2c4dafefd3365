"""The embedded demo world, a plugin at the top of cfx: data and models cfx makes itself, so nothing is downloaded.

- :mod:`cfx.demo.world`: the procedural shapes world (with a biased variant and its control) and the digits;
- :mod:`cfx.demo.models`: the demo classifier and autoencoder per data set, trained once and cached
  (:func:`load_demo`), and their fitted folder (:func:`demo_fitted`);
- :mod:`cfx.demo.causes`: images changed by the known causes (:mod:`cfx.core.shifts`), the review set and
  ``demo:`` data specs;
- :mod:`cfx.demo.benchmark`: the cause explanation benchmark (every cause, both ways).

No core module imports the demo. It plugs into cfx by registering its kinds (:func:`register`): the ``demo:`` model
spec (``demo:shapes``), the ``demo:`` data source (``demo:shapes:test``) and the shapes world's re-rendering
editors. cfx finds it through the ``cfx.plugins`` entry point when a ``demo:`` spec is first asked for, so
``cfx.load_classifier("demo:shapes")`` works without importing this package first.
"""

from __future__ import annotations

from cfx.core.data import SOURCE_KINDS
from cfx.core.models import MODEL_KINDS, ClassifierError, Classifier, ModelOptions
from cfx.core.shifts import CAUSES
from cfx.generators.editors import WORLDS

from .benchmark import VIEWS, cause_benchmark, drawn_strengths, explanation_benchmark, score_cause_evidence
from .causes import CauseExamples, apply_cause, cause_conditions, cause_examples, demo_source, review_set
from .models import DATASETS, DemoModels, TrainingConfig, default_cache_dir, demo_config, demo_fitted, load_demo
from .world import (BANDS, BIAS_BAND, HELD_OUT_SHAPE, SHAPES, TEXTURES, DemoData, ShapesWorld, WorldConfig,
                    digits_data, shapes_data, split_indices, world_attributes)

__all__ = [
    "BANDS", "BIAS_BAND", "CAUSES", "CauseExamples", "DATASETS", "DemoData", "DemoModels", "HELD_OUT_SHAPE",
    "SHAPES", "ShapesWorld", "TEXTURES", "TrainingConfig", "WorldConfig", "apply_cause", "cause_conditions",
    "VIEWS", "cause_benchmark", "cause_examples", "default_cache_dir", "demo_config", "demo_fitted", "demo_source",
    "digits_data", "drawn_strengths", "explanation_benchmark", "load_demo", "register", "review_set",
    "score_cause_evidence", "shapes_data", "split_indices", "world_attributes",
]


def _demo_model(target: str, options: ModelOptions) -> Classifier:
    """``demo:shapes``, ``demo:shapes-biased`` or ``demo:digits``: the embedded demo classifier (trained once)."""
    if target not in DATASETS:
        raise ClassifierError(f"unknown demo model {target!r}; choose one of {', '.join(DATASETS)}")
    return load_demo(target).classifier.to(options.device)


def register() -> None:
    """Register the demo's kinds (the ``cfx.plugins`` entry point calls this; importing the package does too)."""
    MODEL_KINDS.register("demo", _demo_model, replace=True)
    SOURCE_KINDS.register("demo", demo_source, replace=True)
    WORLDS.register(ShapesWorld.name, ShapesWorld, replace=True)


register()
