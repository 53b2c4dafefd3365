"""The main job: score → flag → counterfactuals → property edits → evidence → explanation → report.

:func:`explain` is ``cfx explain`` from Python. Everything goes to the run store (``OUT/run.sqlite``) as it
completes, so an interrupted run (Ctrl-C, a crash, kill -9) resumes where it stopped when the same call is made
again; the flag threshold is fixed before the run (a number, or a percentile of the calibration scores stored by
``cfx fit``), so a resumed run flags exactly as an uninterrupted one.
"""

from __future__ import annotations

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
from cfx.evidence import collect_evidence
from cfx.prompts import make_reporter, reporter_name
from cfx.reports import render_review, write_summary
from cfx.trust.fitted import Fitted
from cfx.trust.threshold import Threshold

from .common import ExplainResult, fix_share_threshold, open_job_inputs, score_into_store

__all__ = ["GENERATORS", "ExplainConfigError", "explain"]

GENERATORS = ("reco", "lgd", "lnn")


def explain(model: str | torch.nn.Module | Classifier, data: str | ImageSource, fitted: str | Path | Fitted,
            out: str | Path, reporter: Any = "evidence", generators: Sequence[str] = GENERATORS,
            flag_score: str = "parce", flag_below: float | None = None, flag_percentile: float | None = None,
            batch_size: int = 64, explain_batch_size: int = 32, restart: bool = False, progress: bool = True,
            dataset_description: str | None = None, report: bool = True, data_spec: str | None = None,
            model_spec: str | None = None, flag_share: float | None = None, **model_options: Any) -> ExplainResult:
    """Explain why predictions are untrusted, resumably; returns an :class:`ExplainResult` (the same content as
    OUT/summary.json).

    ``model``: a spec (see :func:`cfx.core.models.load_classifier`; ``model_options`` go there), a module or a
    :class:`~cfx.core.models.Classifier`. ``data``: a source spec or :class:`~cfx.core.data.ImageSource`. ``fitted``:
    the folder written by ``cfx fit`` (or a loaded :class:`~cfx.trust.fitted.Fitted`). Flags are
    ``flag_score < flag_below``, below ``flag_percentile`` (default 10) of the stored calibration scores, or the
    ``flag_share`` percent least trusted samples of this run (the threshold is fixed once every sample is scored and
    stored, so a resumed run flags identically).
    ``reporter``: see :func:`cfx.prompts.make_reporter`. ``data_spec`` / ``model_spec`` name the data and model in
    the report when they are passed as objects. Writes OUT/run.sqlite, OUT/summary.json and (``report=True``)
    OUT/report.html.
    """
    t_start = time.perf_counter()
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown generator(s) {unknown}; choose from {', '.join(GENERATORS)}")
    job = open_job_inputs(model, data, fitted, flag_score, flag_below, flag_percentile, data_spec, model_spec,
                          model_options, flag_share)
    requested, generators = list(generators), list(generators)
    if "lnn" in generators and job.fitted.latent_index is None:
        warnings.warn(f"LNN counterfactuals are left out: the fitted folder {job.fitted.path} has no latent index (no "
                      "reference image reached the competency threshold in cfx fit)", RuntimeWarning, stacklevel=2)
        generators.remove("lnn")
    reporter = make_reporter(reporter, dataset_description)
    if flag_score not in job.methods:
        raise ValueError(f"flag score {flag_score!r} is not available for this model and fitted folder; "
                         f"available: {', '.join(job.methods)}")
    config = {"model": model_fingerprint(job.classifier), "data": job.data_name,
              "fitted": job.fitted.manifest.get("config_hash"), "threshold": job.threshold.to_dict(),
              "generators": list(generators), "reporter": reporter_name(reporter), "methods": job.methods}
    store = RunStore(out, config, restart=restart)
    unavailable = dict(job.fitted.unavailable)
    if "lnn" in requested and "lnn" not in generators:
        unavailable["lnn"] = ("the fitted folder has no latent index (no reference image reached the competency "
                              "threshold)")
    with store.db:
        store.set_meta("unavailable", unavailable)  # shown in summary.json and the report
        store.set_meta("uncalibrated", job.fitted.uncalibrated)
        if store.get_meta("model_name") is None:
            store.set_meta("model_name", job.model_name)
    try:
        summary = _run(store, job.classifier, job.fitted, job.source, reporter, job.threshold, job.methods,
                       list(generators), batch_size, explain_batch_size, progress, report)
    finally:
        store.close()
    return ExplainResult.from_summary(summary, Path(out), time.perf_counter() - t_start)


def _run(store: RunStore, classifier: Classifier, fitted: Fitted, source: ImageSource, reporter, threshold: Threshold,
         methods, generators, batch_size, explain_batch_size, progress, report) -> dict[str, Any]:
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
    t1 = time.perf_counter()
    bar = tqdm(total=len(flagged), initial=len(flagged) - len(todo), desc="explaining", unit="img",
               disable=not progress)
    for start in range(0, len(todo), explain_batch_size):
        ids = todo[start:start + explain_batch_size]
        images = torch.stack([png_tensor(store.image(sid, "original")) for sid in ids])
        rows, pictures = _explain_batch(classifier, fitted, reporter, ids, images, generators, store,
                                        fail_fast=start == 0)
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


class ExplainConfigError(RuntimeError):
    """Every sample fails the same way: the set-up is wrong (sizes, model, fitted folder), not one image."""


def _explain_batch(classifier: Classifier, fitted: Fitted, reporter, ids: list[str], images: torch.Tensor,
                   generators: list[str], store: RunStore, fail_fast: bool = False) -> tuple[list[dict], dict]:
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
                                              generators=generators, return_images=True)
    except Exception as exc:  # noqa: BLE001 - isolate the bad sample, keep the run going
        message = f"evidence failed: {type(exc).__name__}: {exc}"
        if len(ids) == 1:
            return [{"id": ids[0], "error": message}], {}
        rows, pics = [], {}
        for i, sid in enumerate(ids):
            r, p = _explain_batch(classifier, fitted, reporter, [sid], images[i:i + 1], generators, store)
            if fail_fast and i == 1 and all(row.get("error") == message for row in rows + r):
                raise ExplainConfigError(f"the first flagged samples all fail the same way, so the set-up is wrong "
                                         f"rather than one image ({message}); nothing more was attempted. Scores "
                                         "and flags are stored: fix the cause and run the same command to resume")
            rows += r
            pics.update(p)
        return rows, pics
    seconds = (time.perf_counter() - t) / len(ids)
    main = next((g for g in ("lgd", "reco", "lnn") if g in pictures), None)
    counterfactuals = [pictures[main][i] if main else None for i in range(len(ids))]
    try:  # one call for the batch (batched or concurrent back-ends); if it fails, each sample alone
        explanations: list[Any] = reporter.explain_many(evidence, list(images), counterfactuals)
    except Exception:  # noqa: BLE001
        explanations = []
        for ev, image, cf in zip(evidence, images, counterfactuals):
            try:
                explanations.append(reporter.explain(ev, image, cf))
            except Exception as exc:  # noqa: BLE001 - one bad sample is an error row, the run goes on
                explanations.append(exc)
    rows, pics = [], {}
    for i, (sid, ev, exp) in enumerate(zip(ids, evidence, explanations)):
        if isinstance(exp, Exception):
            rows.append({"id": sid, "evidence": ev.to_dict(), "error": f"explanation failed: {type(exp).__name__}: "
                                                                          f"{exp}", "seconds": seconds})
        else:
            rows.append({"id": sid, "evidence": ev.to_dict(), "explanation": exp.to_dict(), "cause": exp.cause,
                         "seconds": seconds})
        for kind, tensor in pictures.items():
            pics[(sid, kind)] = tensor[i]
    return rows, pics
