"""Scale-out on Ray Data: the same jobs, with the heavy work on a pool of worker processes (actors).

The driver (the process that runs ``cfx trust|explain|audit --ray``) keeps what has to be in one place: the run
store (``OUT/run.sqlite``), the flag threshold, the reporter with its request limits, and the report. What costs
forward passes goes to an actor pool: each actor loads the classifier (and the fitted folder) once and reads its
share of the images from the data source itself, by position, so decoded images are never gathered on the
driver. Work is sent in fixed chunks (a chunk of positions to score, of flagged samples to explain, of sampled
images to edit); results stream back and the driver writes each to the store as it arrives, so a killed driver
resumes where it stopped, exactly as a local run does.

Ray is an optional extra (``pip install "cfx[ray]"``); nothing here imports it until a job asks for it.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cfx.core.data import Batch, ImageSource, iter_batches
from cfx.core.models import Classifier, load_classifier, model_fingerprint
from cfx.core.runstore import png_bytes, png_tensor
from cfx.trust.fitted import Fitted

__all__ = ["RAY_MISSING", "RayEngine", "RayNotInstalled", "WorkerContext", "ray_map", "ray_session",
           "require_ray", "resolve_engine", "worker_context"]

RAY_MISSING = ('Ray is not installed, and --ray / engine="ray" needs it. Install the extra: pip install "cfx[ray]" '
               '(or pip install "ray[data]"); or run without --ray, in this process.')


class RayNotInstalled(RuntimeError):
    """``engine="ray"`` was asked for and Ray cannot be imported."""


def require_ray():
    """The ``ray`` module (with Ray Data), or :class:`RayNotInstalled` saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RayNotInstalled(RAY_MISSING) from exc
    return ray


@dataclass(frozen=True)
class RayEngine:
    """Where and how wide a job runs on Ray.

    ``address``: None starts a local Ray on this machine for the job (and stops it afterwards); ``"auto"`` joins the
    cluster this machine belongs to (``ray start --head`` / ``ray start --address``); or a ``HOST:PORT`` /
    ``ray://HOST:PORT`` address. ``actors``: the size of each actor pool (default: the cluster's CPUs divided by
    ``cpus_per_actor``). ``cpus_per_actor`` also sets each actor's torch threads; ``gpus_per_actor`` > 0 puts the
    model on the actor's GPU. ``batch_size``: images per scoring chunk (default: the job's ``batch_size``).
    ``local_cpus``: the CPUs a local Ray may use (default: all of this machine's).
    """

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    batch_size: int | None = None
    local_cpus: int | None = None

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors must be at least 1, got {self.actors}")
        if self.cpus_per_actor <= 0:
            raise ValueError(f"cpus_per_actor must be positive, got {self.cpus_per_actor}")
        if self.gpus_per_actor < 0:
            raise ValueError(f"gpus_per_actor must be 0 or more, got {self.gpus_per_actor}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.local_cpus is not None and self.local_cpus < 1:
            raise ValueError(f"local_cpus must be at least 1, got {self.local_cpus}")

    def pool_size(self) -> int:
        """Actors per pool: as asked, else as many as the cluster's CPUs hold."""
        if self.actors is not None:
            return self.actors
        ray = require_ray()
        cpus = float(ray.cluster_resources().get("CPU", 1))
        return max(1, int(cpus // self.cpus_per_actor))

    def chunk_size(self, n: int, at_most: int) -> int:
        """Items per task for ``n`` items: at most ``at_most`` (the job's batch size), and small enough that every
        actor gets about four tasks, so the pool stays busy to the end."""
        return max(1, min(at_most, math.ceil(n / (4 * self.pool_size()))))

    def describe(self) -> dict[str, Any]:
        return {"engine": "ray", "address": self.address or "local", "actors": self.pool_size(),
                "cpus_per_actor": self.cpus_per_actor, "gpus_per_actor": self.gpus_per_actor}


def resolve_engine(engine: str | RayEngine | dict | None) -> RayEngine | None:
    """``None`` / ``"local"``: this process (None). ``"ray"``: a :class:`RayEngine` with its defaults; a dict: its
    fields; a :class:`RayEngine` as it is. Ray must be importable for anything but local."""
    if engine is None or engine == "local":
        return None
    if engine == "ray":
        engine = RayEngine()
    elif isinstance(engine, dict):
        unknown = sorted(set(engine) - set(RayEngine.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown engine settings {unknown}; RayEngine takes "
                             f"{', '.join(RayEngine.__dataclass_fields__)}")
        engine = RayEngine(**engine)
    elif not isinstance(engine, RayEngine):
        raise ValueError(f"engine must be 'local', 'ray', a RayEngine or a dict of its fields; got {engine!r}")
    require_ray()
    return engine


@contextmanager
def ray_session(engine: RayEngine) -> Iterator[Any]:
    """Ray connected for one job: joins ``engine.address`` or starts a local Ray, and disconnects (stopping the
    local Ray it started) at the end, errors included. An already connected Ray is used as it is and left running."""
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                   "logging_level": logging.WARNING}
        if engine.address is None:
            options["num_cpus"] = engine.local_cpus or os.cpu_count() or 1
        else:
            options["address"] = engine.address
        ray.init(**options)
        started = True
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the job shows its own progress bar on the driver
    context.execution_options.preserve_order = True  # results arrive in the order of the chunks
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": by us
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


@dataclass
class WorkerContext:
    """What an actor needs to rebuild the job's inputs in its own process: the model (a spec with its options,
    or the classifier itself when it can be pickled), the fitted folder's path, the data source (in Ray's object
    store) and the torch threads to use."""

    model: Any
    model_options: dict[str, Any]
    fitted: str | None
    source: Any
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def worker_context(engine: RayEngine, classifier: Classifier, fitted: Fitted | None, source: ImageSource
                   ) -> WorkerContext:
    """Package the job's inputs for the actors: a classifier made by :func:`~cfx.core.models.load_classifier`
    travels as its spec and options (each actor loads it: TorchScript included); any other travels pickled."""
    ray = require_ray()
    if classifier.origin is not None:
        spec, options = classifier.origin
        model: Any = spec
        options = dict(options, classes=None)  # the names travel as a list (a --classes file may not be there)
        # Weights changed after loading (fine-tuned, edited) would not reach the workers, which load the spec: found
        # here, before any actor starts (an actor that fails to start is restarted by Ray, and can outlive the run)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the load's own warnings were shown when the driver loaded it
            fresh = load_classifier(spec, **dict(options, device="cpu"))
        if model_fingerprint(fresh) != model_fingerprint(classifier):
            raise ValueError(f"the model loaded from {spec!r} was changed after loading (its weights differ from a "
                             "fresh load): Ray workers load the spec, so they would compute with a model that is "
                             "not the driver's; pass the model object itself (cfx.Classifier.wrap) or save the "
                             "changed weights and load those")
        del fresh
    else:
        try:
            ray.cloudpickle.dumps(classifier)  # what Ray itself sends (classes defined in a function included)
        except Exception as exc:  # noqa: BLE001 - say what to do instead
            raise ValueError(f"the model cannot be sent to Ray workers ({type(exc).__name__}: {exc}); pass it as a "
                             "spec string (e.g. torchscript:model.pt or python:module:function) so that each "
                             "worker loads it") from None
        model, options = classifier, {}
    if engine.gpus_per_actor > 0:
        options["device"] = "cuda"
    elif isinstance(model, str):
        options["device"] = "cpu"  # an actor without a GPU
    return WorkerContext(model, options, str(fitted.path) if fitted is not None else None, ray.put(source),
                         threads=max(1, int(engine.cpus_per_actor)),
                         extra={"class_names": classifier.class_names, "size": _input_size(classifier, source),
                                "fingerprint": model_fingerprint(classifier) if isinstance(model, str) else None})


def _input_size(classifier: Classifier, source: ImageSource) -> tuple[int, int] | None:
    """The (H, W) every image is read at: the model's input size, else (as a local run does) the size of the
    source's first readable image."""
    if classifier.preprocessing.size is not None:
        return tuple(classifier.preprocessing.size)
    first = next((r for r in source if r.error is None and r.image is not None), None)
    return tuple(first.image.shape[-2:]) if first is not None else None


def open_worker(context: WorkerContext) -> tuple[Classifier, Fitted | None, ImageSource]:
    """In an actor: load the classifier, the fitted folder and the data source once."""
    import ray

    torch.set_num_threads(context.threads)
    if isinstance(context.model, Classifier):
        classifier = context.model
    else:
        classifier = load_classifier(context.model, **context.model_options)
        classifier.class_names = context.extra.get("class_names") or classifier.class_names  # as on the driver
        expected = context.extra.get("fingerprint")
        if expected is not None and model_fingerprint(classifier) != expected:
            raise RuntimeError(f"the model {context.model!r} loaded by a Ray worker is not the driver's (its weights "
                               "differ: changed after loading, or another file at that path on this node); pass "
                               "the model object itself, or make the spec load the same weights everywhere")
    fitted = Fitted.load(context.fitted, classifier) if context.fitted else None
    source = ray.get(context.source) if isinstance(context.source, ray.ObjectRef) else context.source
    return classifier, fitted, source


def read_batch(source: ImageSource, positions: Iterable[int], size) -> Batch:
    """The records at ``positions`` as one :class:`~cfx.core.data.Batch` (unreadable ones in ``errors``)."""
    positions = [int(p) for p in positions]
    batches = list(iter_batches(source.take(positions), max(1, len(positions)), size=size))
    return batches[0]


def as_stored(images: torch.Tensor) -> torch.Tensor:
    """Images exactly as the run store gives them back (8-bit PNG), so a worker computes on what a local run
    reads from ``run.sqlite``."""
    return torch.stack([png_tensor(png_bytes(x)) for x in images]) if len(images) else images


def ray_map(engine: RayEngine, worker: type, constructor: dict[str, Any], items: Sequence[dict[str, Any]]
            ) -> Iterator[Any]:
    """Send each item (one chunk of work, a dict of plain values) through a pool of ``worker`` actors
    (``worker(**constructor)`` once per actor, then ``worker.run(item) -> result`` per item) and yield the results
    in the order of ``items`` as they stream back. Results travel pickled."""
    ray = require_ray()
    if not items:
        return
    dataset = ray.data.from_items([{"item": pickle.dumps(item)} for item in items],
                                  override_num_blocks=min(len(items), 200))
    mapped = dataset.map_batches(_Actor, fn_constructor_kwargs={"worker": worker, "constructor": constructor},
                                 batch_size=1, batch_format="numpy",
                                 compute=ray.data.ActorPoolStrategy(size=min(engine.pool_size(), len(items))),
                                 num_cpus=engine.cpus_per_actor, num_gpus=engine.gpus_per_actor or None)
    for row in mapped.iter_rows():
        yield pickle.loads(row["result"])


class _Actor:
    """The Ray Data callable class around a worker: builds it once, runs it on one item per call."""

    def __init__(self, worker: type, constructor: dict[str, Any]):
        self.worker = worker(**constructor)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [pickle.dumps(self.worker.run(pickle.loads(item))) for item in batch["item"]]
        return {"result": np.array(results, dtype=object)}
