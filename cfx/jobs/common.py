"""What the jobs share: opening their inputs the same way, the scoring stage into the run store, typed results."""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cfx.core.data import Batch, DataSourceError, ImageSource, Record, iter_batches, open_source
from cfx.core.models import MAX_IMAGE_SIDE, Classifier, advise_on_inputs, checks_inputs, load_classifier
from cfx.core.runstore import RunStore, png_bytes
from cfx.evidence import RunReference
from cfx.trust.scoring import ScoreTable
from cfx.trust.fitted import Fitted, check_model_for_folder
from cfx.trust.scores import SCORES, applicable_scores, default_scores, score_batch
from cfx.trust.threshold import (
    AUTO,
    FlagScoreChoice,
    Threshold,
    choose_flag_score,
    flag,
    resolve_threshold,
)

from .distributed import RayEngine, WorkerContext, open_worker, ray_map, read_batch, worker_context

__all__ = ["AuditResult", "ExplainResult", "JobInputs", "fix_share_threshold", "json_default", "open_job_inputs",
           "run_reference", "score_into_store", "score_rows", "score_table_on_ray", "ScoringWorker"]

DEFAULT_FLAG_PERCENTILE = 10.0  # with a fitted folder: of its calibration scores
DEFAULT_FLAG_SHARE = 10.0       # without one: of this run


@dataclass
class JobInputs:
    """A job's classifier, fitted folder (or None), data source, flag threshold (fixed before the run, or a share of
    the run fixed once it is scored), the scores to compute and which score flags, and why."""

    classifier: Classifier
    fitted: Fitted | None
    source: ImageSource
    threshold: Threshold
    methods: list[str]
    data_name: str
    model_name: str
    flag_choice: FlagScoreChoice
    data_identity: str = ""  # what a resumed run must find again (see :func:`data_identity`)


def with_run_size(classifier: Classifier, fitted: Fitted | None, first: Record) -> Classifier:
    """The classifier with the one input size (H, W) every image of the run is read at, scored and explained at.

    A model with an input size keeps it. A model that takes any size (no ``--image-size``) gets the size its fitted
    folder's reference images were measured at, else the size of the source's first readable image, so that the
    scoring pass and every later pass (explanations, a resumed run) read each image at the same size, whatever
    order they meet the images in (``first``: that image, as :func:`_check_readable` found it). The original
    classifier is not changed; images of another size are resized."""
    if classifier.preprocessing.size is not None:
        return classifier
    stored = (fitted.manifest.get("reference_statistics") or {}).get("image_size") if fitted is not None else None
    size = tuple(int(v) for v in (stored or first.image.shape[-2:]))
    if max(size) > MAX_IMAGE_SIDE:  # a huge first photograph: the run is read at a size that fits in memory
        scale = MAX_IMAGE_SIDE / max(size)
        shrunk = tuple(max(1, int(v * scale)) for v in size)
        warnings.warn(f"the first image ({first.id}) is {size[0]}x{size[1]} px, larger than cfx takes "
                      f"({MAX_IMAGE_SIDE} px a side); every image of this run is read at {shrunk[0]}x{shrunk[1]}. "
                      "Give the size the model was trained at with --image-size (image_size=...)", stacklevel=2)
        size = shrunk
    return replace(classifier, preprocessing=replace(classifier.preprocessing, size=size))


def _check_readable(source: ImageSource, name: str) -> Record:
    """The source's first readable image; fail before anything is written when there is none (reads up to it)."""
    errors = []
    for record in source:
        if record.error is None:
            return record
        errors.append(f"{record.id}: {record.error}")
    if not errors:
        raise DataSourceError(f"the data source {name!r} holds no images")
    raise DataSourceError(f"the data source {name!r} holds no readable image ({len(errors)} unreadable, e.g. "
                          f"{'; '.join(errors[:3])}); nothing was written")


def open_job_inputs(model: Any, data: Any, fitted: Any, flag_score: str, flag_below: float | None,
                    flag_percentile: float | None, data_spec: str | None, model_spec: str | None,
                    model_options: dict[str, Any], flag_share: float | None = None) -> JobInputs:
    """Load what ``cfx explain`` and ``cfx audit`` both need, validating it with messages that say what to do.

    ``fitted`` may be None: the scores that need no fitting are computed. ``flag_score="auto"`` is chosen by
    :func:`cfx.trust.threshold.choose_flag_score`. The flag threshold follows the one rule of
    :func:`cfx.trust.threshold.resolve_threshold`: a number, a percentile (default 10) of the flag score on the
    calibration split stored in the fitted folder, or a share of the run (default 10 % without a fitted folder).
    """
    classifier = load_classifier(model, **model_options) if not isinstance(model, Classifier) else model
    if fitted is not None and not isinstance(fitted, Fitted):
        fitted = Fitted.load(fitted, classifier)
    elif fitted is not None:  # loaded without a model, or for another one: checked against this one
        check_model_for_folder(fitted.manifest, classifier, fitted.path)
    if flag_score != AUTO and flag_score not in SCORES:
        raise ValueError(f"unknown flag score {flag_score!r}; choose from auto, {', '.join(SCORES)}")
    if fitted is None and flag_percentile is not None:
        raise ValueError("a flag percentile is taken of the calibration scores a fitted folder stores, and there is "
                         "no fitted folder: flag a share of this run instead (flag_share / --flag-share P), give a "
                         "number (--flag-below X), or fit one with cfx fit (--fitted DIR)")
    methods = default_scores(classifier, fitted)
    if flag_score not in methods and flag_score in applicable_scores(classifier, fitted):
        methods.append(flag_score)  # an expensive flag score is computed because it was asked for
    if flag_score != AUTO and flag_score not in methods:
        raise ValueError(f"flag score {flag_score!r} is not available for this model"
                         f"{' and fitted folder' if fitted is not None else ' without a fitted folder'}; "
                         f"available: auto, {', '.join(methods)}")
    choice = choose_flag_score(flag_score, methods, fitted.calibration_scores if fitted is not None else None)
    threshold = resolve_threshold(choice.score, flag_below, flag_percentile,
                                  calibration=fitted.threshold if fitted is not None else None,
                                  default_percentile=DEFAULT_FLAG_PERCENTILE if fitted is not None else None,
                                  share=flag_share)
    if threshold is None:  # no fitted folder and no threshold given: the least trusted share of this run
        threshold = Threshold.of_run_share(choice.score, DEFAULT_FLAG_SHARE)
    source = (open_source(data, classifier.class_names, classifier.num_classes) if not isinstance(data, ImageSource)
              else data)
    first = _check_readable(source, data_spec or str(data))
    classifier = with_run_size(classifier, fitted, first)
    data_name = data_spec or (data if isinstance(data, str) else f"{type(source).__name__} of {len(source)} images")
    model_name = model_spec or (model if isinstance(model, str) else type(classifier.model).__name__)
    return JobInputs(classifier, fitted, source, threshold, methods, data_name, model_name, choice,
                     data_identity(data_name, source))


def data_identity(name: str, source: ImageSource) -> str:
    """What a run's data is, for resuming: a path as its absolute, resolved form (``inc/``, ``./inc`` and
    ``/tmp/inc`` from any working folder are one folder), and a digest of the source's ids, so a folder whose images
    were added or removed since the run began is not resumed as if it were the same."""
    path = Path(name)
    where = str(path.resolve()) if path.exists() else name
    ids = source.ids() if hasattr(source, "ids") else None
    if ids is None:
        return where
    digest = hashlib.sha256("\n".join(ids).encode("utf-8", "backslashreplace")).hexdigest()[:16]
    return f"{where} ({len(ids)} images, ids {digest})"


def score_into_store(store: RunStore, classifier: Classifier, fitted: Fitted | None, source: ImageSource,
                     threshold: Threshold,
                     methods: Sequence[str], batch_size: int = 64, progress: bool = True,
                     keep_flagged_images: bool = False, annotate=None, engine: RayEngine | None = None,
                     context: WorkerContext | None = None) -> None:
    """Score and flag every input of ``source`` that the store does not have yet, one transaction per batch.

    Unreadable inputs become error rows. ``keep_flagged_images`` stores the flagged images (for the explanations
    and the report); ``annotate(images) -> {name: (B,) tensor}`` adds per-image values to the metadata under
    ``"_stats"`` (the audit's binned image statistics). With a Ray ``engine`` (and the actors' ``context``) the
    batches are scored by an actor pool and written here, in input order, as they come back.
    """
    done = store.scored_ids()
    total = len(source) if hasattr(source, "__len__") else None
    if store.get_meta("input_check") is None:
        store.set_meta("input_check", input_check(classifier, source) or {})
    t0 = time.perf_counter()
    n_scored = 0
    bar = tqdm(total=total, initial=min(len(done), total or len(done)), desc="scoring", unit="img",
               disable=not progress)
    if engine is not None:
        todo = [p for p, sid in enumerate(source.ids()) if sid not in done]
        chunk = engine.chunk_size(len(todo), engine.batch_size or batch_size)
        items = [{"positions": todo[i:i + chunk]} for i in range(0, len(todo), chunk)]
        worker = {"context": context, "methods": list(methods), "threshold": threshold.to_dict(),
                  "keep_flagged_images": keep_flagged_images, "annotate": annotate}
        results = ray_map(engine, ScoringWorker, worker, items)
    else:
        results = (score_rows(classifier, fitted, batch, threshold, methods, keep_flagged_images, annotate)
                   for batch in iter_batches((r for r in source if r.id not in done), batch_size,
                                             size=classifier.preprocessing.size))
    for rows, flagged_images in results:
        n_scored += sum(r["error"] is None for r in rows)
        store.add_samples(rows, flagged_images)
        now = time.perf_counter()  # seconds stored with each batch: an interrupted run's count and time stay together
        with store.db:
            store.set_meta("score_seconds", now - t0 + store.get_meta("score_seconds", 0.0))
        t0 = now
        bar.update(len(rows))
    bar.close()


def input_check(classifier: Classifier, source: ImageSource, images: int = 32) -> dict[str, Any] | None:
    """:func:`cfx.core.models.check_inputs` on the first readable ``images`` of ``source``, with a warning when the
    normalisation looks wrong; ``None`` when the model has nothing to check against (or no image is readable)."""
    if not checks_inputs(classifier):  # no batch norm, or TorchScript: nothing is read
        return None
    for batch in iter_batches(source, images, size=classifier.preprocessing.size):
        if len(batch):  # a batch the model rejects becomes error rows when it is scored
            check = advise_on_inputs(classifier, batch.images)
            return None if check is None else check.to_dict()
    return None


def score_table_on_ray(engine: RayEngine, classifier: Classifier, source: ImageSource, methods: Sequence[str],
                       batch_size: int = 64, progress: bool = True, **score_options: Any) -> ScoreTable:
    """``cfx trust --ray``: :func:`cfx.trust.scoring.score_source` on a Ray actor pool (in the open
    :func:`~cfx.jobs.distributed.ray_session`), the same table in input order. ``score_options`` as there (a
    ``fitted`` folder is loaded by each actor from its path)."""
    fitted = score_options.get("fitted")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    unknown = [m for m in methods if m not in SCORES]
    if unknown:
        raise ValueError(f"unknown score(s) {unknown}; known: {', '.join(SCORES)}")
    context = worker_context(engine, classifier, fitted, source)
    positions = list(range(len(source)))
    chunk = engine.chunk_size(len(positions), engine.batch_size or batch_size)
    items = [{"positions": positions[i:i + chunk]} for i in range(0, len(positions), chunk)]
    options = {k: v for k, v in score_options.items() if k != "fitted"}  # each actor loads the fitted folder
    worker = {"context": context, "methods": list(methods), "threshold": None, "score_options": options}
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(positions), desc="scoring", unit="img", disable=not progress)
    for part, _ in ray_map(engine, ScoringWorker, worker, items):
        rows += part
        bar.update(len(part))
    bar.close()
    if not rows:
        raise ValueError("the data source is empty: no images were found; check the path or manifest")
    nan = float("nan")
    return ScoreTable([r["id"] for r in rows],
                      torch.tensor([-1 if r["label"] is None else r["label"] for r in rows], dtype=torch.long),
                      torch.tensor([-1 if r["prediction"] is None else r["prediction"] for r in rows],
                                   dtype=torch.long),
                      {m: torch.tensor([r["scores"].get(m, nan) for r in rows], dtype=torch.float32)
                       for m in methods},
                      [r["error"] for r in rows], [r["metadata"] for r in rows])


class ScoringWorker:
    """A Ray actor's scoring: chunks of positions of the data source, read in the actor, scored as
    :func:`score_rows` does; the flagged images come back as PNG bytes."""

    def __init__(self, context: WorkerContext, methods: Sequence[str], threshold: dict | None,
                 keep_flagged_images: bool = False, annotate=None, score_options: dict | None = None):
        self.classifier, self.fitted, self.source = open_worker(context)
        self.size = context.extra.get("size")  # what every image is read at, as in a local run
        self.methods, self.keep, self.annotate = list(methods), keep_flagged_images, annotate
        self.threshold = Threshold.from_dict(threshold) if threshold is not None else None
        # the fitted folder is the actor's own (loaded from its path); the other options go to score_batch
        self.options = {k: v for k, v in (score_options or {}).items() if k != "fitted"}

    def run(self, item: dict[str, Any]) -> tuple[list[dict], dict[str, bytes]]:
        batch = read_batch(self.source, item["positions"], self.size)
        rows, images = score_rows(self.classifier, self.fitted, batch, self.threshold, self.methods, self.keep,
                                  self.annotate, self.options)
        return rows, {sid: png_bytes(x) for sid, x in images.items()}


def score_rows(classifier: Classifier, fitted: Fitted | None, batch: Batch, threshold: Threshold | None,
               methods: Sequence[str], keep_flagged_images: bool = False, annotate=None,
               score_options: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """The run-store rows of one batch (error records included) and, with ``keep_flagged_images``, the flagged
    images by id: what :func:`score_into_store` writes, and what a distributed scoring worker sends back. Without
    a ``threshold`` (or while it is pending) nothing is flagged."""
    rows = [{"id": r.id, "label": r.label, "prediction": None, "scores": {}, "flagged": False,
             "error": r.error, "metadata": r.metadata} for r in batch.errors]
    flagged_images = {}
    if len(batch):
        result = score_batch(classifier, batch.images, methods, fitted=fitted, **(score_options or {}))
        pred = result.logits.argmax(1)
        flags = (torch.zeros(len(batch), dtype=torch.bool) if threshold is None or threshold.pending
                 else flag(result.scores[threshold.score], threshold))
        extra = annotate(batch.images) if annotate is not None else None
        for i, sid in enumerate(batch.ids):
            err = result.errors[i]
            is_flagged = bool(flags[i]) and err is None
            meta = batch.metadata[i]
            if extra is not None:
                meta = dict(meta, _stats={k: float(v[i]) for k, v in extra.items()})
            rows.append({"id": sid, "label": int(batch.labels[i]) if int(batch.labels[i]) >= 0 else None,
                         "prediction": None if err else int(pred[i]),
                         "scores": {m: float(v[i]) for m, v in result.scores.items()}, "flagged": is_flagged,
                         "error": err, "metadata": meta})
            if is_flagged and keep_flagged_images:
                flagged_images[sid] = batch.images[i]
    return rows, flagged_images


def fix_share_threshold(store: RunStore, threshold: Threshold, source: ImageSource, size, batch_size: int,
                        keep_flagged_images: bool) -> Threshold:
    """For a share of the run: once every sample is scored, fix the threshold on the run's own scores (once: a
    resumed run reads it back), flag the samples below it and, for the explanations, store their images (read
    again from the source). Any other threshold passes through."""
    if not threshold.pending:
        return threshold
    stored = store.get_meta("flag_threshold")
    if stored is None:
        samples = [s for s in store.samples() if s["error"] is None]
        values = [s["scores"].get(threshold.score) for s in samples]
        fixed = threshold.fixed_on([v for v in values if v is not None])
        flags = {s["id"]: bool(v is None or v < fixed.value) for s, v in zip(samples, values)}
        if samples and not any(flags.values()):
            warnings.warn(f"flag share {threshold.share:g} %: none of this run's {len(samples)} scored images lies "
                          f"below the {threshold.share:g}th percentile of their {threshold.score} scores (too few "
                          "images, or equal scores), so none is flagged", RuntimeWarning, stacklevel=2)
        with store.db:
            store.db.executemany("UPDATE samples SET flagged = ? WHERE id = ?",
                                 [(int(f), sid) for sid, f in flags.items()])
            store.set_meta("flag_threshold", fixed.to_dict())
        stored = fixed.to_dict()
    if keep_flagged_images:
        missing = {sid for sid in store.flagged_ids() if store.image(sid, "original") is None}
        for batch in [] if not missing else iter_batches((r for r in source if r.id in missing), batch_size, size=size):
            store.add_explanations([], {(sid, "original"): batch.images[i] for i, sid in enumerate(batch.ids)})
    return Threshold.from_dict(stored)


REFERENCE_MAX = 512  # the run reference: the most trusted half of the run, at most this many images


def run_reference(store: RunStore, classifier: Classifier, source: ImageSource, score: str,
                  batch_size: int = 64) -> RunReference | None:
    """The run's most trusted images as a :class:`~cfx.evidence.RunReference`: the unflagged half of the run with
    the highest ``score`` (at most :data:`REFERENCE_MAX`), read again from the source. Their ids are stored on first
    use, so a resumed run compares with the same images. None when fewer than 2 images qualify."""
    ids = store.get_meta("reference_ids")
    samples = {s["id"]: s for s in store.samples() if s["error"] is None}
    if ids is None:
        trusted = [s for s in samples.values() if not s["flagged"] and s["scores"].get(score) is not None
                   and math.isfinite(s["scores"][score])]
        trusted.sort(key=lambda s: (-s["scores"][score], s["id"]))
        ids = [s["id"] for s in trusted[:min(REFERENCE_MAX, max(2, len(samples) // 2))]]
        with store.db:
            store.set_meta("reference_ids", ids)
    if len(ids) < 2:
        return None
    wanted, images = set(ids), {}
    for batch in iter_batches((r for r in source if r.id in wanted), batch_size, size=classifier.preprocessing.size):
        images.update(zip(batch.ids, batch.images))
    ids = [sid for sid in ids if sid in images]
    if len(ids) < 2:
        return None
    return RunReference(classifier, torch.stack([images[sid] for sid in ids]), ids,
                        [samples[sid]["prediction"] for sid in ids],
                        f"the {len(ids)} most trusted images of this run (by {score})", batch_size=batch_size)


class _Result:
    """Typed job results: fields, ``to_dict()``/``to_json()``, and dict-style reading of the same keys."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("out", None)
        return out

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=json_default)

    def __getitem__(self, key: str) -> Any:
        if key == "out" or key not in self.__dataclass_fields__:  # the same keys as to_dict(), without copying
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key != "out" and key in self.__dataclass_fields__


@dataclass
class ExplainResult(_Result):
    """What ``cfx explain`` did: the run's config, counts, timing, metrics per score and one row per sample (the
    same content as ``OUT/summary.json``), and where it wrote its files."""

    config: dict[str, Any]
    counts: dict[str, Any]
    timing: dict[str, Any]
    metrics: dict[str, Any]
    samples: list[dict[str, Any]]
    seconds: float = 0.0
    flag_score: dict[str, Any] | None = None  # which score flagged, and why
    reference: dict[str, Any] | None = None   # what the evidence compared with
    out: Path | None = field(default=None, repr=False)
    input_check: dict[str, Any] | None = None  # the normalisation against the model's first batch norm
    image_size: list[int] | None = None  # (H, W) every image was read at, scored and explained at
    model_notes: list[str] = field(default_factory=list)  # what is wrong with the model's outputs, if anything

    @classmethod
    def from_summary(cls, summary: dict[str, Any], out: Path, seconds: float) -> "ExplainResult":
        return cls(summary["config"], summary["counts"], summary["timing"], summary["metrics"], summary["samples"],
                   round(seconds, 2), summary.get("flag_score"), summary.get("reference"), out,
                   summary.get("input_check"), summary.get("image_size"), summary.get("model_notes") or [])

    @property
    def report_path(self) -> Path | None:
        return None if self.out is None else self.out / "report.html"


@dataclass
class AuditResult(_Result):
    """What ``cfx audit`` found (the content of ``OUT/audit.json``): the property ranking, the slices, the
    neighbours of flagged samples, unreadable inputs and timing."""

    config: dict[str, Any]
    counts: dict[str, Any]
    properties: list[dict[str, Any]]
    slices: list[dict[str, Any]]
    neighbours: dict[str, Any]
    errors: list[dict[str, Any]]
    timing: dict[str, Any]
    flag_score: dict[str, Any] | None = None  # which score flagged, and why
    edit_ranges: dict[str, Any] | None = None  # how far the parametric edits went (None: each editor's full range)
    engine: dict[str, Any] | None = None  # where it ran: this process or Ray actors
    out: Path | None = field(default=None, repr=False)
    input_check: dict[str, Any] | None = None  # the normalisation against the model's first batch norm
    image_size: list[int] | None = None  # (H, W) every image was read at
    model_notes: list[str] = field(default_factory=list)  # what is wrong with the model's outputs, if anything
    columns_left_out: dict[str, str] = field(default_factory=dict)  # metadata columns not sliced, and why

    @property
    def report_path(self) -> Path | None:
        return None if self.out is None else self.out / "audit.html"


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for job results: numpy and torch scalars as numbers, tuples and sets as lists."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)
