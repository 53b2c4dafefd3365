"""The main job: score → flag → counterfactuals → property edits → evidence → explanation → report.

:func:`explain` is ``cfx explain`` from Python. Everything goes to the run store (``OUT/run.sqlite``) as it
completes, so an interrupted run (Ctrl-C, a crash, kill -9) resumes where it stopped when the same call is made
again; the flag threshold is fixed before the run (a number, or a percentile of the calibration scores stored by
``cfx fit``) or, for a share of the run, once every sample is scored and stored, so a resumed run flags exactly as
an uninterrupted one.

Without a fitted folder the run is its own reference: its most trusted images give the statistics' z-scores and
the nearest trusted image (NN), and the trust target the counterfactuals (IGD) and restoring edits raise is the
flag score's rank in the run (:class:`cfx.generators.RunRankTarget`).
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from cfx.core.data import ImageSource
from cfx.core.models import Classifier, model_fingerprint
from cfx.core.runstore import RunStore, png_bytes, png_tensor
from cfx.evidence import (GENERATORS, Evidence, RunReference, collect_evidence, generator_availability,
                          resolve_edit_ranges)
from cfx.generators import SEARCHES, EditRanges, RunRankTarget
from cfx.prompts import make_reporter, reporter_name
from cfx.reports import render_review, write_summary
from cfx.trust.fitted import Fitted
from cfx.trust.scores import SCORES, LogitScore
from cfx.trust.threshold import AUTO, Threshold

from .distributed import (RayEngine, WorkerContext, as_stored, open_worker, ray_map, ray_session, read_batch,
                          resolve_engine, worker_context)
from .common import (
    ExplainResult,
    fix_share_threshold,
    open_job_inputs,
    run_reference,
    score_into_store,
)

__all__ = ["DEFAULT_GENERATORS", "GENERATORS", "ExplainConfigError", "explain"]

#: The counterfactual generators used when none are named: with a fitted folder, and without one.
DEFAULT_GENERATORS = {"fitted": ("reco", "lgd", "lnn"), "none": ("igd", "nn")}
#: How the restoring edit and the property curves are searched by default (see cfx.generators.sweep_edits)
DEFAULT_EDIT_SEARCH = "auto"


def explain(model: str | torch.nn.Module | Classifier, data: str | ImageSource, fitted: str | Path | Fitted | None,
            out: str | Path, reporter: Any = "evidence", generators: Sequence[str] | None = None,
            flag_score: str = AUTO, flag_below: float | None = None, flag_percentile: float | None = None,
            batch_size: int = 64, explain_batch_size: int | None = None, restart: bool = False,
            progress: bool = True,
            dataset_description: str | None = None, report: bool = True, data_spec: str | None = None,
            model_spec: str | None = None, flag_share: float | None = None,
            reporter_options: dict[str, Any] | None = None, edit_range: str = "reference",
            engine: str | RayEngine | dict | None = None, edit_search: str = DEFAULT_EDIT_SEARCH,
            **model_options: Any) -> ExplainResult:
    """Explain why predictions are untrusted, resumably; returns an :class:`ExplainResult` (the same content as
    OUT/summary.json).

    ``model``: a spec (see :func:`cfx.core.models.load_classifier`; ``model_options`` go there), a module or a
    :class:`~cfx.core.models.Classifier`. ``data``: a source spec or :class:`~cfx.core.data.ImageSource`. ``fitted``:
    the folder written by ``cfx fit`` (or a loaded :class:`~cfx.trust.fitted.Fitted`), or None: the run is then its
    own reference (see the module docstring). ``flag_score``: a score name or ``"auto"`` (the best on labelled
    calibration data in the fitted folder, else GradTrust with top-5 labels; see
    :func:`cfx.trust.threshold.choose_flag_score`). Flags are ``flag_score < flag_below``, below
    ``flag_percentile`` of the stored calibration scores (default 10 with a fitted folder), or the ``flag_share``
    percent least trusted samples of this run (default 10 without a fitted folder; the threshold is fixed once every
    sample is scored and stored, so a resumed run flags identically). ``generators``: any of
    :data:`cfx.evidence.GENERATORS` (default :data:`DEFAULT_GENERATORS`); those the situation does not allow are
    left out with a warning and listed as unavailable in the summary and the report. ``edit_range``: property
    edits sweep only as far as the reference images reach (``"reference"``, default: see
    :class:`cfx.generators.EditRanges`) or over each editor's full range (``"full"``). ``edit_search``: how the
    restoring edit and the property curves are searched (:func:`cfx.generators.sweep_edits`): ``"screened"``
    (every direction at three strengths, the three most promising swept in full), ``"full"`` (every direction at
    every strength) or ``"auto"`` (default: screened with a fitted folder, full without; see
    :func:`cfx.evidence.resolve_search`). The seconds each stage of explaining took are kept in the summary
    (``timing.explain_stages``). ``explain_batch_size``: flagged images explained together and stored when done
    (default :func:`default_explain_batch_size`: 32 small images, 5 at 224 px).
    ``reporter`` and ``reporter_options`` (e.g. ``{"model": "llava", "timeout": 20, "concurrency": 8,
    "api_key_env": "MY_KEY"}`` for ``openai:URL``): see :func:`cfx.prompts.make_reporter`. ``data_spec`` /
    ``model_spec`` name the data and model in the report when they are passed as objects. ``engine``: None or
    ``"local"`` runs in this process; ``"ray"`` (or a :class:`cfx.jobs.distributed.RayEngine`) scores and
    explains on a Ray actor pool with the same results (the run store, the threshold, the reporter and its request
    limits stay in this process; see docs/scale.md). Writes OUT/run.sqlite, OUT/summary.json and
    (``report=True``) OUT/report.html.
    """
    t_start = time.perf_counter()
    engine = resolve_engine(engine)
    generators = [generators] if isinstance(generators, str) else generators  # one name, not its letters
    if batch_size < 1 or (explain_batch_size is not None and explain_batch_size < 1):
        raise ValueError(f"batch_size and explain_batch_size must be at least 1, got {batch_size} and "
                         f"{explain_batch_size}")
    if edit_range not in ("reference", "full"):
        raise ValueError(f"edit_range must be 'reference' or 'full', got {edit_range!r}")
    if edit_search != "auto" and edit_search not in SEARCHES:
        raise ValueError(f"edit_search must be 'auto' or one of {', '.join(SEARCHES)}, got {edit_search!r}")
    if generators is not None:
        generator_availability(generators, None)  # unknown names fail before anything is loaded
    job = open_job_inputs(model, data, fitted, flag_score, flag_below, flag_percentile, data_spec, model_spec,
                          model_options, flag_share)
    fitted = job.fitted
    if generators is None:
        generators = DEFAULT_GENERATORS["fitted" if fitted is not None else "none"]
    generators, left_out = generator_availability(generators, fitted, reference=True)
    for name, why in left_out.items():
        warnings.warn(f"{name} counterfactuals are left out: {why}", RuntimeWarning, stacklevel=2)
    if edit_search == "auto":  # the screen was measured against PaRCE, the target of a fitted folder
        edit_search = "screened" if fitted is not None else "full"
    reporter = make_reporter(reporter, dataset_description, reporter_options)
    config = {"model": model_fingerprint(job.classifier), "data": job.data_identity,
              "fitted": fitted.manifest.get("config_hash") if fitted is not None else None,
              "threshold": job.threshold.to_dict(), "generators": list(generators),
              "reporter": reporter_name(reporter), "methods": job.methods, "edit_range": edit_range,
              "edit_search": edit_search}
    store = RunStore(out, config, restart=restart)
    unavailable = dict(fitted.unavailable) if fitted is not None else {}
    unavailable.update(left_out)
    if fitted is None:
        unavailable.update({name: "needs a fitted folder (cfx fit, then --fitted DIR)"
                            for name, s in SCORES.items() if s.needs_fit})
    with store.db:
        store.set_meta("unavailable", unavailable)  # shown in summary.json and the report
        store.set_meta("uncalibrated", fitted.uncalibrated if fitted is not None else {})
        store.set_meta("flag_score", job.flag_choice.to_dict())
        store.set_meta("image_size", list(job.classifier.preprocessing.size or ()) or None)  # every pass reads at it
        store.set_meta("model_notes", list(job.classifier.notes))  # e.g. the model outputs probabilities
        if store.get_meta("model_name") is None:
            store.set_meta("model_name", job.model_name)
    try:
        if engine is None:
            with store.db:
                store.set_meta("engine", {"engine": "local"})
            summary = _run(store, job.classifier, fitted, job.source, reporter, job.threshold, job.methods,
                           list(generators), batch_size, explain_batch_size, progress, report, edit_range,
                           edit_search=edit_search)
        else:
            with ray_session(engine):
                with store.db:
                    store.set_meta("engine", engine.describe())
                context = worker_context(engine, job.classifier, fitted, job.source)
                summary = _run(store, job.classifier, fitted, job.source, reporter, job.threshold, job.methods,
                               list(generators), batch_size, explain_batch_size, progress, report, edit_range,
                               engine, context, edit_search=edit_search)
    finally:
        store.close()
    return ExplainResult.from_summary(summary, Path(out), time.perf_counter() - t_start)


def _trust_target_spec(store: RunStore, score: str) -> dict[str, Any]:
    """Without a fitted folder: the flag score's rank in this run (MSP's when the flag score is not a function of
    the logits), from the scores stored for the whole run: ``RunRankTarget(classifier, **spec)``."""
    if not isinstance(SCORES.get(score), LogitScore):
        score = "msp"
    values = [s["scores"].get(score) for s in store.samples() if s["error"] is None]
    return {"score": score, "run_scores": [v for v in values if v is not None]}


def _run(store: RunStore, classifier: Classifier, fitted: Fitted | None, source: ImageSource, reporter,
         threshold: Threshold, methods, generators, batch_size, explain_batch_size, progress,
         report, edit_range: str = "reference", engine: RayEngine | None = None,
         context: WorkerContext | None = None, edit_search: str = DEFAULT_EDIT_SEARCH) -> dict[str, Any]:
    names = classifier.class_names
    with store.db:
        store.set_meta("finished", None)  # until this run ends: a report of it meanwhile says it is unfinished
        if store.get_meta("class_names") is None:
            store.set_meta("class_names", names)
    # ---- stage 1: score and flag every input (skipping what the store already has)
    score_into_store(store, classifier, fitted, source, threshold, methods, batch_size, progress,
                     keep_flagged_images=True, engine=engine, context=context)
    # (on Ray the actors read the flagged images themselves when they explain them)
    threshold = fix_share_threshold(store, threshold, source, classifier.preprocessing.size, batch_size,
                                    keep_flagged_images=engine is None)
    # ---- stage 2: explain the flagged samples not explained yet
    flagged, explained = store.flagged_ids(), store.explained_ids()
    todo = [sid for sid in flagged if sid not in explained]
    reference = target = target_spec = None
    if todo and (fitted is None or "nn" in generators):  # the run is its own reference
        reference = run_reference(store, classifier, source, threshold.score, batch_size)
        if reference is None and "nn" in generators:
            generators = [g for g in generators if g != "nn"]
            _record_unavailable(store, "nn", "fewer than 2 images of the run are trusted: no reference to search")
    if todo and fitted is None:
        target_spec = _trust_target_spec(store, threshold.score)
        target = RunRankTarget(classifier, **target_spec)
    ranges = resolve_edit_ranges(edit_range, fitted, reference) if todo else None
    if todo:
        stats = (fitted.manifest.get("reference_statistics") or {}) if fitted is not None else {}
        fitted_images = (f"the fitted folder's {stats['images']} {stats['images_from']}" if stats.get("images_from")
                         else "the fitted folder's confident calibration images")
        with store.db:  # how far the property edits went and which reference the report names
            store.set_meta("edit_ranges", ranges.to_dict() if ranges is not None else None)
            store.set_meta("reference", {
                "statistics": fitted_images if fitted is not None else
                reference.description if reference is not None else None,
                "nearest_trusted_image": (reference.to_dict() if reference is not None and "nn" in generators else
                                          {"description": fitted_images + " (latent index)"} if "lnn" in generators
                                          else None),
                "trust_target": target.name if target is not None else "parce",
                "narrow": stats.get("narrow") if fitted is not None else None})
    t1 = time.perf_counter()
    bar = tqdm(total=len(flagged), initial=len(flagged) - len(todo), desc="explaining", unit="img",
               disable=not progress)
    # fixed chunks of the flagged samples (a chunk that was partly stored is computed again and only what is
    # missing is written). On Ray they are smaller when that keeps every actor busy to the end: an image's evidence
    # does not depend on the images that share its chunk (tests/test_explain.py checks chunks of 32 against 5).
    if explain_batch_size is None:
        explain_batch_size = default_explain_batch_size(_image_size(store, classifier, flagged))
    size = explain_batch_size if engine is None else engine.chunk_size(len(flagged), explain_batch_size)
    chunks = [flagged[i:i + size] for i in range(0, len(flagged), size)]
    chunks = [c for c in chunks if any(sid not in explained for sid in c)]
    if engine is None:
        batches = (evidence_batch(classifier, fitted, ids,
                                  torch.stack([png_tensor(store.image(sid, "original")) for sid in ids]),
                                  _labels(store, ids), generators, fail_fast=k == 0, target=target,
                                  reference=reference, ranges=ranges, search=edit_search)
                   for k, ids in enumerate(chunks))
    else:
        position = {sid: p for p, sid in enumerate(source.ids())}
        worker = {"context": context, "generators": generators, "reference": reference, "target": target_spec,
                  "ranges": ranges.to_dict() if ranges is not None else None, "search": edit_search}
        items = [{"ids": ids, "positions": [position[sid] for sid in ids], "fail_fast": k == 0}
                 for k, ids in enumerate(chunks)]
        batches = (payload.decoded() for payload in _ray_results(engine, worker, items))
    for batch in batches:
        batch = batch.without(explained)
        if batch.ids:
            store.add_explanations(*report_batch(reporter, batch, store))
            now = time.perf_counter()
            with store.db:  # seconds (per stage) of explaining, summed over batches and over resumed runs
                stages = store.get_meta("explain_stages") or {}
                store.set_meta("explain_stages", {k: stages.get(k, 0.0) + batch.stages.get(k, 0.0)
                                                  for k in {**stages, **batch.stages}})
                store.set_meta("explain_seconds", now - t1 + store.get_meta("explain_seconds", 0.0))
            t1 = now
        bar.update(len(batch.ids))
    bar.close()
    store.set_meta("finished", time.strftime("%Y-%m-%d %H:%M:%S"))
    store.db.commit()
    summary = write_summary(store)
    if report:
        render_review(store, store.out / "report.html", summary=summary)
    return summary


#: Pixels of flagged images explained in one chunk by default: 32 images of 96 × 96 (32 images at 32 px, 5 at
#: 224 px). Each chunk is stored when it is done, so an interrupted run loses at most one chunk, a few seconds.
EXPLAIN_CHUNK_PIXELS = 32 * 96 * 96


def default_explain_batch_size(size: tuple[int, int]) -> int:
    """Flagged images explained together by default for images of ``size`` (H, W): at most 32, fewer for large
    images (:data:`EXPLAIN_CHUNK_PIXELS`)."""
    return max(1, min(32, EXPLAIN_CHUNK_PIXELS // max(1, size[0] * size[1])))


def _image_size(store: RunStore, classifier: Classifier, flagged: list[str]) -> tuple[int, int]:
    """The size the flagged images are explained at: the model's input size, else that of a stored original."""
    if classifier.preprocessing.size is not None:
        return tuple(classifier.preprocessing.size)
    stored = store.image(flagged[0], "original") if flagged else None
    return tuple(png_tensor(stored).shape[-2:]) if stored is not None else (32, 32)


def _record_unavailable(store: RunStore, name: str, why: str) -> None:
    with store.db:
        store.set_meta("unavailable", {**(store.get_meta("unavailable") or {}), name: why})


class ExplainConfigError(RuntimeError):
    """Every sample fails the same way: the set-up is wrong (sizes, model, fitted folder), not one image."""


@dataclass
class EvidenceBatch:
    """The evidence half of explaining a batch of flagged samples (what a worker process computes): per sample its
    :class:`~cfx.evidence.Evidence` or the error that stopped it, the counterfactual shown to the reporter, and the
    pictures for the report keyed by ``(sample id, kind)``."""

    ids: list[str]
    images: list[Tensor]
    evidence: list[Evidence | None]
    errors: list[str | None]
    counterfactuals: list[Tensor | None]
    pictures: dict[tuple[str, str], Any]
    seconds: float  # per sample
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage of collect_evidence, whole batch

    def without(self, ids: set[str]) -> "EvidenceBatch":
        """The same batch less the samples in ``ids`` (already stored by an earlier, interrupted run)."""
        keep = [i for i, sid in enumerate(self.ids) if sid not in ids]
        if len(keep) == len(self.ids):
            return self
        kept = {self.ids[i] for i in keep}
        return EvidenceBatch([self.ids[i] for i in keep], [self.images[i] for i in keep],
                             [self.evidence[i] for i in keep], [self.errors[i] for i in keep],
                             [self.counterfactuals[i] for i in keep],
                             {k: v for k, v in self.pictures.items() if k[0] in kept}, self.seconds, self.stages)

    def encoded(self) -> "EvidenceBatch":
        """Every image as PNG bytes, to send between processes (:meth:`decoded` reverses it exactly: the images
        are 8-bit already or are stored as 8-bit PNG anyway)."""
        def enc(x):
            return png_bytes(x) if isinstance(x, Tensor) else x
        return EvidenceBatch(self.ids, [enc(x) for x in self.images], self.evidence, self.errors,
                             [enc(x) for x in self.counterfactuals], {k: enc(v) for k, v in self.pictures.items()},
                             self.seconds, self.stages)

    def decoded(self) -> "EvidenceBatch":
        def dec(x):
            return png_tensor(x) if isinstance(x, bytes) else x
        return EvidenceBatch(self.ids, [dec(x) for x in self.images], self.evidence, self.errors,
                             [dec(x) for x in self.counterfactuals], self.pictures, self.seconds, self.stages)


class EvidenceWorker:
    """A Ray actor's half of explaining: reads a chunk of flagged images from the data source (as the run store
    would give them back), and returns their :class:`EvidenceBatch` with the originals, encoded."""

    def __init__(self, context: WorkerContext, generators: list[str], reference: RunReference | None,
                 target: dict[str, Any] | None, ranges: dict | None, search: str = DEFAULT_EDIT_SEARCH):
        self.classifier, self.fitted, self.source = open_worker(context)
        self.size = context.extra.get("size")  # what every image is read at, as in a local run
        self.generators = list(generators)
        self.reference = reference.bind(self.classifier) if reference is not None else None
        self.target = RunRankTarget(self.classifier, **target) if target is not None else None
        self.ranges = EditRanges.from_dict(ranges) if ranges is not None else None
        self.search = search

    def run(self, item: dict[str, Any]) -> EvidenceBatch:
        batch = read_batch(self.source, item["positions"], self.size)
        if batch.errors or batch.ids != list(item["ids"]):
            raise RuntimeError(f"the data source changed since it was scored: expected {item['ids'][:3]}..., read "
                               f"{batch.ids[:3]}... ({len(batch.errors)} unreadable); rerun with --restart")
        images = as_stored(batch.images)
        labels = [int(v) for v in batch.labels]
        result = evidence_batch(self.classifier, self.fitted, batch.ids, images, labels, self.generators,
                                fail_fast=item["fail_fast"], target=self.target, reference=self.reference,
                                ranges=self.ranges, search=self.search)
        result.pictures.update({(sid, "original"): images[i] for i, sid in enumerate(batch.ids)})
        return result.encoded()


def _ray_results(engine: RayEngine, worker: dict[str, Any], items: list[dict[str, Any]]):
    """The actor pool's evidence batches, in order; a set-up error in an actor stops the run as it would locally."""
    try:
        yield from ray_map(engine, EvidenceWorker, worker, items)
    except Exception as exc:  # Ray wraps the actor's exception: surface the set-up error as itself
        if "ExplainConfigError" in f"{type(exc).__name__}: {exc}":
            message = str(exc).split("ExplainConfigError: ", 1)[-1].strip().splitlines()[0]
            raise ExplainConfigError(message) from exc
        raise


def evidence_batch(classifier: Classifier, fitted: Fitted | None, ids: list[str], images: Tensor,
                   labels: list[int], generators: list[str], fail_fast: bool = False,
                   target: RunRankTarget | None = None, reference: RunReference | None = None,
                   ranges: EditRanges | None = None, search: str = DEFAULT_EDIT_SEARCH) -> EvidenceBatch:
    """Evidence for one batch; when the batch fails, each sample alone, so one bad sample becomes an error and the
    others get their evidence. With ``fail_fast`` (the run's first batch), when the first two samples alone fail
    exactly as the whole batch did, the cause is the set-up: stop with one message instead of an error per sample."""
    t = time.perf_counter()
    stages: dict[str, float] = {}
    try:
        evidence, pictures = collect_evidence(classifier, fitted, images, ids=ids, labels=labels,
                                              generators=generators, return_images=True, target=target,
                                              reference=reference, ranges=ranges, search=search, timings=stages)
    except Exception as exc:  # noqa: BLE001 - isolate the bad sample, keep the run going
        message = f"evidence failed: {type(exc).__name__}: {exc}"
        if len(ids) == 1:
            return EvidenceBatch(ids, list(images), [None], [message], [None], {}, time.perf_counter() - t)
        parts = []
        for i in range(len(ids)):
            parts.append(evidence_batch(classifier, fitted, ids[i:i + 1], images[i:i + 1], labels[i:i + 1],
                                        generators, target=target, reference=reference, ranges=ranges,
                                        search=search))
            if fail_fast and i == 1 and all(p.errors[0] == message for p in parts):
                raise ExplainConfigError(f"the first flagged samples all fail the same way, so the set-up is wrong "
                                         f"rather than one image ({message}); nothing more was attempted. Scores "
                                         "and flags are stored: fix the cause and run the same command to resume")
        return EvidenceBatch(ids, list(images), [e for p in parts for e in p.evidence],
                             [e for p in parts for e in p.errors], [c for p in parts for c in p.counterfactuals],
                             {k: v for p in parts for k, v in p.pictures.items()},
                             sum(p.seconds for p in parts) / len(parts),
                             {k: sum(p.stages.get(k, 0.0) for p in parts) for p in parts for k in p.stages})
    seconds = (time.perf_counter() - t) / len(ids)
    main = next((g for g in ("lgd", "reco", "lnn", "igd", "nn") if g in pictures), None)
    return EvidenceBatch(ids, list(images), list(evidence), [None] * len(ids),
                         [pictures[main][i] if main else None for i in range(len(ids))],
                         {(sid, kind): tensor[i] for kind, tensor in pictures.items() for i, sid in enumerate(ids)},
                         seconds, stages)


def report_batch(reporter, batch: EvidenceBatch, store: RunStore) -> tuple[list[dict], dict]:
    """The explanation half: the reporter on every sample with evidence (one call for the batch, so batched and
    concurrent back-ends work at their best; each explanation is stored as it arrives when the reporter supports
    it; if the call fails, each remaining sample alone). Returns the rows and pictures not stored yet."""
    good = [i for i, e in enumerate(batch.evidence) if e is not None]
    ids = batch.ids

    def row(i: int, exp: Any) -> tuple[dict, dict]:
        sid, ev = ids[i], batch.evidence[i]
        if isinstance(exp, Exception):
            out = {"id": sid, "evidence": ev.to_dict(), "error": f"explanation failed: {type(exp).__name__}: {exp}",
                   "seconds": batch.seconds}
        else:
            out = {"id": sid, "evidence": ev.to_dict(), "explanation": exp.to_dict(), "cause": exp.cause,
                   "seconds": batch.seconds}
        return out, {key: value for key, value in batch.pictures.items() if key[0] == sid}

    stored: set[int] = set()

    def store_now(j: int, exp: Any) -> None:  # each explanation is stored as it arrives
        r, p = row(good[j], exp)
        store.add_explanations([r], p)
        stored.add(good[j])

    explanations: dict[int, Any] = {}
    evidence = [batch.evidence[i] for i in good]
    images = [batch.images[i] for i in good]
    counterfactuals = [batch.counterfactuals[i] for i in good]
    try:  # one call for the batch (batched or concurrent back-ends); if it fails, each remaining sample alone
        if not good:
            pass
        elif "on_result" in inspect.signature(reporter.explain_many).parameters:
            reporter.explain_many(evidence, images, counterfactuals, on_result=store_now)
        else:
            explanations = dict(zip(good, reporter.explain_many(evidence, images, counterfactuals)))
    except Exception:  # noqa: BLE001
        for j, i in enumerate(good):
            if i in stored:
                continue
            try:
                explanations[i] = reporter.explain(evidence[j], images[j], counterfactuals[j])
            except Exception as exc:  # noqa: BLE001 - one bad sample is an error row, the run goes on
                explanations[i] = exc
    rows, pics = [], {}
    for i in range(len(ids)):
        if batch.errors[i] is not None:
            rows.append({"id": ids[i], "error": batch.errors[i]})
        elif i not in stored:
            r, p = row(i, explanations[i])
            rows.append(r)
            pics.update(p)
    return rows, pics


def _labels(store: RunStore, ids: list[str]) -> list[int]:
    labels = []
    for sid in ids:
        row = store.db.execute("SELECT label FROM samples WHERE id = ?", (sid,)).fetchone()
        labels.append(-1 if row is None or row[0] is None else int(row[0]))
    return labels
