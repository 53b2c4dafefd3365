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
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cfx.core.data import ImageSource
from cfx.core.models import Classifier, model_fingerprint
from cfx.core.runstore import RunStore, png_tensor
from cfx.evidence import (GENERATORS, RunReference, collect_evidence, generator_availability,
                          resolve_edit_ranges)
from cfx.generators import EditRanges, RunRankTarget
from cfx.prompts import make_reporter, reporter_name
from cfx.reports import render_review, write_summary
from cfx.trust.fitted import Fitted
from cfx.trust.scores import SCORES, LogitScore
from cfx.trust.threshold import AUTO, Threshold

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


def explain(model: str | torch.nn.Module | Classifier, data: str | ImageSource, fitted: str | Path | Fitted | None,
            out: str | Path, reporter: Any = "evidence", generators: Sequence[str] | None = None,
            flag_score: str = AUTO, flag_below: float | None = None, flag_percentile: float | None = None,
            batch_size: int = 64, explain_batch_size: int = 32, restart: bool = False, progress: bool = True,
            dataset_description: str | None = None, report: bool = True, data_spec: str | None = None,
            model_spec: str | None = None, flag_share: float | None = None,
            reporter_options: dict[str, Any] | None = None, edit_range: str = "reference",
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
    :class:`cfx.generators.EditRanges`) or over each editor's full range (``"full"``).
    ``reporter`` and ``reporter_options`` (e.g. ``{"model": "llava", "timeout": 20, "concurrency": 8,
    "api_key_env": "MY_KEY"}`` for ``openai:URL``): see :func:`cfx.prompts.make_reporter`. ``data_spec`` /
    ``model_spec`` name the data and model in the report when they are passed as objects. Writes OUT/run.sqlite,
    OUT/summary.json and (``report=True``) OUT/report.html.
    """
    t_start = time.perf_counter()
    if edit_range not in ("reference", "full"):
        raise ValueError(f"edit_range must be 'reference' or 'full', got {edit_range!r}")
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
    reporter = make_reporter(reporter, dataset_description, reporter_options)
    config = {"model": model_fingerprint(job.classifier), "data": job.data_name,
              "fitted": fitted.manifest.get("config_hash") if fitted is not None else None,
              "threshold": job.threshold.to_dict(), "generators": list(generators),
              "reporter": reporter_name(reporter), "methods": job.methods, "edit_range": edit_range}
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
        if store.get_meta("model_name") is None:
            store.set_meta("model_name", job.model_name)
    try:
        summary = _run(store, job.classifier, fitted, job.source, reporter, job.threshold, job.methods,
                       list(generators), batch_size, explain_batch_size, progress, report, edit_range)
    finally:
        store.close()
    return ExplainResult.from_summary(summary, Path(out), time.perf_counter() - t_start)


def _trust_target(store: RunStore, classifier: Classifier, score: str) -> RunRankTarget:
    """Without a fitted folder: the flag score's rank in this run (MSP's when the flag score is not a function of
    the logits), from the scores stored for the whole run."""
    if not isinstance(SCORES.get(score), LogitScore):
        score = "msp"
    values = [s["scores"].get(score) for s in store.samples() if s["error"] is None]
    return RunRankTarget(classifier, score, [v for v in values if v is not None])


def _run(store: RunStore, classifier: Classifier, fitted: Fitted | None, source: ImageSource, reporter,
         threshold: Threshold, methods, generators, batch_size, explain_batch_size, progress,
         report, edit_range: str = "reference") -> dict[str, Any]:
    names = classifier.class_names
    if store.get_meta("class_names") is None:
        with store.db:
            store.set_meta("class_names", names)
    # ---- stage 1: score and flag every input (skipping what the store already has)
    score_into_store(store, classifier, fitted, source, threshold, methods, batch_size, progress,
                     keep_flagged_images=True)
    threshold = fix_share_threshold(store, threshold, source, classifier.preprocessing.size, batch_size,
                                    keep_flagged_images=True)
    # ---- stage 2: explain the flagged samples not explained yet
    flagged, explained = store.flagged_ids(), store.explained_ids()
    todo = [sid for sid in flagged if sid not in explained]
    reference = target = None
    if todo and (fitted is None or "nn" in generators):  # the run is its own reference
        reference = run_reference(store, classifier, source, threshold.score, batch_size)
        if reference is None and "nn" in generators:
            generators = [g for g in generators if g != "nn"]
            _record_unavailable(store, "nn", "fewer than 2 images of the run are trusted: no reference to search")
    if todo and fitted is None:
        target = _trust_target(store, classifier, threshold.score)
    ranges = resolve_edit_ranges(edit_range, fitted, reference) if todo else None
    if todo:
        fitted_images = "the fitted folder's confident calibration images"
        with store.db:  # how far the property edits went and which reference the report names
            store.set_meta("edit_ranges", ranges.to_dict() if ranges is not None else None)
            store.set_meta("reference", {
                "statistics": fitted_images if fitted is not None else
                reference.description if reference is not None else None,
                "nearest_trusted_image": (reference.to_dict() if reference is not None and "nn" in generators else
                                          {"description": fitted_images + " (latent index)"} if "lnn" in generators
                                          else None),
                "trust_target": target.name if target is not None else "parce"})
    t1 = time.perf_counter()
    bar = tqdm(total=len(flagged), initial=len(flagged) - len(todo), desc="explaining", unit="img",
               disable=not progress)
    for start in range(0, len(todo), explain_batch_size):
        ids = todo[start:start + explain_batch_size]
        images = torch.stack([png_tensor(store.image(sid, "original")) for sid in ids])
        rows, pictures = _explain_batch(classifier, fitted, reporter, ids, images, generators, store,
                                        fail_fast=start == 0, target=target, reference=reference, ranges=ranges)
        store.add_explanations(rows, pictures)
        bar.update(len(ids))
    bar.close()
    if todo:
        store.set_meta("explain_seconds", time.perf_counter() - t1 + store.get_meta("explain_seconds", 0.0))
        store.db.commit()
    store.set_meta("finished", time.strftime("%Y-%m-%d %H:%M:%S"))
    store.db.commit()
    summary = write_summary(store)
    if report:
        render_review(store, store.out / "report.html", summary=summary)
    return summary


def _record_unavailable(store: RunStore, name: str, why: str) -> None:
    with store.db:
        store.set_meta("unavailable", {**(store.get_meta("unavailable") or {}), name: why})


class ExplainConfigError(RuntimeError):
    """Every sample fails the same way: the set-up is wrong (sizes, model, fitted folder), not one image."""


def _explain_batch(classifier: Classifier, fitted: Fitted | None, reporter, ids: list[str], images: torch.Tensor,
                   generators: list[str], store: RunStore, fail_fast: bool = False, target: RunRankTarget | None = None,
                   reference: RunReference | None = None, ranges: EditRanges | None = None
                   ) -> tuple[list[dict], dict]:
    """Evidence and explanations for one batch; when the batch fails, each sample alone, so one bad sample becomes
    an error row and the others are explained. With ``fail_fast`` (the run's first batch), when the first two
    samples alone fail exactly as the whole batch did, the cause is the set-up: stop with one message instead of
    writing an error row for every sample."""
    labels = []
    for sid in ids:
        row = store.db.execute("SELECT label FROM samples WHERE id = ?", (sid,)).fetchone()
        labels.append(-1 if row is None or row[0] is None else int(row[0]))
    t = time.perf_counter()
    try:
        evidence, pictures = collect_evidence(classifier, fitted, images, ids=ids, labels=labels,
                                              generators=generators, return_images=True, target=target,
                                              reference=reference, ranges=ranges)
    except Exception as exc:  # noqa: BLE001 - isolate the bad sample, keep the run going
        message = f"evidence failed: {type(exc).__name__}: {exc}"
        if len(ids) == 1:
            return [{"id": ids[0], "error": message}], {}
        rows, pics = [], {}
        for i, sid in enumerate(ids):
            r, p = _explain_batch(classifier, fitted, reporter, [sid], images[i:i + 1], generators, store,
                                  target=target, reference=reference, ranges=ranges)
            same = [row for row in rows + r if row.get("error") == message]  # explained rows may be stored already
            if fail_fast and i == 1 and len(same) == 2:
                raise ExplainConfigError(f"the first flagged samples all fail the same way, so the set-up is wrong "
                                         f"rather than one image ({message}); nothing more was attempted. Scores "
                                         "and flags are stored: fix the cause and run the same command to resume")
            rows += r
            pics.update(p)
        return rows, pics
    seconds = (time.perf_counter() - t) / len(ids)
    main = next((g for g in ("lgd", "reco", "lnn", "igd", "nn") if g in pictures), None)
    counterfactuals = [pictures[main][i] if main else None for i in range(len(ids))]

    def row(i: int, exp: Any) -> tuple[dict, dict]:
        sid, ev = ids[i], evidence[i]
        if isinstance(exp, Exception):
            out = {"id": sid, "evidence": ev.to_dict(), "error": f"explanation failed: {type(exp).__name__}: {exp}",
                   "seconds": seconds}
        else:
            out = {"id": sid, "evidence": ev.to_dict(), "explanation": exp.to_dict(), "cause": exp.cause,
                   "seconds": seconds}
        return out, {(sid, kind): tensor[i] for kind, tensor in pictures.items()}

    stored: set[int] = set()

    def store_now(i: int, exp: Any) -> None:  # each explanation is stored as it arrives
        r, p = row(i, exp)
        store.add_explanations([r], p)
        stored.add(i)

    explanations: list[Any] = [None] * len(ids)
    try:  # one call for the batch (batched or concurrent back-ends); if it fails, each remaining sample alone
        if "on_result" in inspect.signature(reporter.explain_many).parameters:
            reporter.explain_many(evidence, list(images), counterfactuals, on_result=store_now)
        else:
            explanations = list(reporter.explain_many(evidence, list(images), counterfactuals))
    except Exception:  # noqa: BLE001
        for i, (ev, image, cf) in enumerate(zip(evidence, images, counterfactuals)):
            if i in stored:
                continue
            try:
                explanations[i] = reporter.explain(ev, image, cf)
            except Exception as exc:  # noqa: BLE001 - one bad sample is an error row, the run goes on
                explanations[i] = exc
    rows, pics = [], {}
    for i in range(len(ids)):
        if i not in stored:
            r, p = row(i, explanations[i])
            rows.append(r)
            pics.update(p)
    return rows, pics
