"""What the jobs share: opening their inputs the same way, the scoring stage into the run store, typed results."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cfx.core.data import DataSourceError, ImageSource, iter_batches, open_source
from cfx.core.models import Classifier, load_classifier
from cfx.core.runstore import RunStore
from cfx.evidence import RunReference
from cfx.trust.fitted import Fitted
from cfx.trust.scores import SCORES, applicable_scores, default_scores, score_batch
from cfx.trust.threshold import (
    AUTO,
    FlagScoreChoice,
    Threshold,
    choose_flag_score,
    flag,
    resolve_threshold,
)

__all__ = ["AuditResult", "ExplainResult", "JobInputs", "fix_share_threshold", "json_default", "open_job_inputs",
           "run_reference", "score_into_store"]

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


def _check_readable(source: ImageSource, name: str) -> None:
    """Fail before anything is written when the source holds no readable image (reads up to the first good one)."""
    errors = []
    for record in source:
        if record.error is None:
            return
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
    source = open_source(data, classifier.class_names) if not isinstance(data, ImageSource) else data
    _check_readable(source, data_spec or str(data))
    data_name = data_spec or (data if isinstance(data, str) else f"{type(source).__name__} of {len(source)} images")
    model_name = model_spec or (model if isinstance(model, str) else type(classifier.model).__name__)
    return JobInputs(classifier, fitted, source, threshold, methods, data_name, model_name, choice)


def score_into_store(store: RunStore, classifier: Classifier, fitted: Fitted | None, source: ImageSource,
                     threshold: Threshold,
                     methods: Sequence[str], batch_size: int = 64, progress: bool = True,
                     keep_flagged_images: bool = False, annotate=None) -> None:
    """Score and flag every input of ``source`` that the store does not have yet, one transaction per batch.

    Unreadable inputs become error rows. ``keep_flagged_images`` stores the flagged images (for the explanations
    and the report); ``annotate(images) -> {name: (B,) tensor}`` adds per-image values to the metadata under
    ``"_stats"`` (the audit's binned image statistics).
    """
    done = store.scored_ids()
    total = len(source) if hasattr(source, "__len__") else None
    t0 = time.perf_counter()
    n_scored = 0
    bar = tqdm(total=total, initial=min(len(done), total or len(done)), desc="scoring", unit="img",
               disable=not progress)
    for batch in iter_batches((r for r in source if r.id not in done), batch_size,
                              size=classifier.preprocessing.size):
        rows = [{"id": r.id, "label": r.label, "prediction": None, "scores": {}, "flagged": False,
                 "error": r.error, "metadata": r.metadata} for r in batch.errors]
        flagged_images = {}
        if len(batch):
            result = score_batch(classifier, batch.images, methods, fitted=fitted)
            pred = result.logits.argmax(1)
            flags = (torch.zeros(len(batch), dtype=torch.bool) if threshold.pending  # flagged once all are scored
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
            n_scored += len(batch)
        store.add_samples(rows, flagged_images)
        bar.update(len(batch) + len(batch.errors))
    bar.close()
    if n_scored:
        with store.db:
            store.set_meta("score_seconds", time.perf_counter() - t0 + store.get_meta("score_seconds", 0.0))


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

    @classmethod
    def from_summary(cls, summary: dict[str, Any], out: Path, seconds: float) -> "ExplainResult":
        return cls(summary["config"], summary["counts"], summary["timing"], summary["metrics"], summary["samples"],
                   round(seconds, 2), summary.get("flag_score"), summary.get("reference"), out)

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
    out: Path | None = field(default=None, repr=False)

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
