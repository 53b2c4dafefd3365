"""The main job: score → flag → counterfactuals → property edits → evidence → explanation → report.

:func:`explain` is ``cfx explain`` from Python. Everything goes to the run store (``OUT/run.sqlite``) as it
completes, so an interrupted run (Ctrl-C, a crash, kill -9) resumes where it stopped when the same call is made
again; the flag threshold is fixed before the run (a number, or a percentile of the calibration scores stored by
``cfx fit``), so a resumed run flags exactly as an uninterrupted one.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .data import ImageSource, iter_batches, open_source
from .fitted import Fitted, model_fingerprint
from .models import Classifier, load_classifier
from .runstore import RunStore, png_tensor
from .trust import SCORES, Threshold, applicable_scores, flag, score_batch

__all__ = ["GENERATORS", "explain", "make_reporter", "score_into_store", "write_summary"]

GENERATORS = ("reco", "lgd", "lnn")


def make_reporter(spec: Any = "evidence", dataset: str | None = None):
    """A reporter from a spec: ``evidence`` (offline default), ``transformers:PATH`` (a local multimodal chat model)
    or ``openai:URL`` (an OpenAI-compatible endpoint; model from ``CFX_OPENAI_MODEL``). Objects with an
    ``explain`` method are returned as they are."""
    from .prompts import EvidenceReporter, OpenAIReporter, TransformersReporter

    if hasattr(spec, "explain"):
        return spec
    text = str(spec)
    options = {"dataset": dataset} if dataset else {}
    if text == "evidence":
        return EvidenceReporter()
    if text.startswith("transformers:"):
        return TransformersReporter(text.split(":", 1)[1], **options)
    if text.startswith("openai:"):
        return OpenAIReporter(base_url=text.split(":", 1)[1], **options)
    raise ValueError(f"unknown reporter {text!r}; use evidence, transformers:PATH or openai:URL")


def _reporter_name(reporter: Any) -> str:
    backend = getattr(reporter, "backend", type(reporter).__name__)
    model = getattr(reporter, "model", None)
    return f"{backend}:{model}" if isinstance(model, str) and model else str(backend)


def _takes_images(reporter: Any) -> bool:
    """Whether ``reporter.explain`` takes the image and its counterfactual after the evidence."""
    try:
        params = inspect.signature(reporter.explain).parameters
    except (TypeError, ValueError):
        return False
    return len(params) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params.values())


def _threshold(fitted: Fitted, flag_score: str, flag_below: float | None, flag_percentile: float | None
               ) -> Threshold:
    if flag_below is not None and flag_percentile is not None:
        raise ValueError("give either flag_below or flag_percentile, not both")
    if flag_below is not None:
        if not math.isfinite(flag_below):
            raise ValueError(f"flag_below must be a finite number, got {flag_below}")
        return Threshold.fixed(flag_score, float(flag_below))
    percentile = 10.0 if flag_percentile is None else float(flag_percentile)
    if not 0 < percentile < 100:
        raise ValueError(f"flag_percentile must be between 0 and 100, got {percentile}")
    return fitted.threshold(flag_score, percentile)


def explain(model: str | torch.nn.Module | Classifier, data: str | ImageSource, fitted: str | Path | Fitted,
            out: str | Path, reporter: Any = "evidence", generators: Sequence[str] = GENERATORS,
            flag_score: str = "parce", flag_below: float | None = None, flag_percentile: float | None = None,
            batch_size: int = 64, explain_batch_size: int = 32, restart: bool = False, progress: bool = True,
            dataset_description: str | None = None, report: bool = True, data_spec: str | None = None,
            model_spec: str | None = None, **model_options: Any) -> dict[str, Any]:
    """Explain why predictions are untrusted, resumably; returns the summary (also written to OUT/summary.json).

    ``model``: a spec (see :func:`cfx.models.load_classifier`; ``model_options`` go there), a module or a
    :class:`~cfx.models.Classifier`. ``data``: a source spec or :class:`~cfx.data.ImageSource`. ``fitted``: the
    folder written by ``cfx fit`` (or a loaded :class:`~cfx.fitted.Fitted`). Flags are ``flag_score < flag_below``,
    or below ``flag_percentile`` (default 10) of the stored calibration scores. ``reporter``: see
    :func:`make_reporter`. ``data_spec`` / ``model_spec`` name the data and model in the report when they are passed as objects.
    Writes OUT/run.sqlite, OUT/summary.json and (``report=True``) OUT/report.html.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    classifier = load_classifier(model, **model_options) if not isinstance(model, Classifier) else model
    fitted = fitted if isinstance(fitted, Fitted) else Fitted.load(fitted, classifier)
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown generator(s) {unknown}; choose from {', '.join(GENERATORS)}")
    if flag_score not in SCORES:
        raise ValueError(f"unknown flag score {flag_score!r}; choose from {', '.join(SCORES)}")
    threshold = _threshold(fitted, flag_score, flag_below, flag_percentile)
    source = open_source(data, classifier.class_names) if not isinstance(data, ImageSource) else data
    reporter = make_reporter(reporter, dataset_description)
    methods = applicable_scores(classifier, fitted)
    if flag_score not in methods:
        raise ValueError(f"flag score {flag_score!r} is not available for this model and fitted folder; "
                         f"available: {', '.join(methods)}")
    data_name = data_spec or (data if isinstance(data, str) else f"{type(source).__name__} of {len(source)} images")
    config = {"model": model_fingerprint(classifier), "data": data_name, "fitted": fitted.manifest.get("config_hash"),
              "threshold": threshold.to_dict(), "generators": list(generators),
              "reporter": _reporter_name(reporter),
              "methods": methods}
    store = RunStore(out, config, restart=restart)
    if store.get_meta("model_name") is None:
        with store.db:
            store.set_meta("model_name", model_spec or (model if isinstance(model, str) else
                                                        type(classifier.model).__name__))
    try:
        return _run(store, classifier, fitted, source, reporter, threshold, methods, list(generators), batch_size,
                    explain_batch_size, progress, report, tqdm, t_start)
    finally:
        store.close()


def _run(store: RunStore, classifier: Classifier, fitted: Fitted, source: ImageSource, reporter, threshold,
         methods, generators, batch_size, explain_batch_size, progress, report, tqdm, t_start) -> dict[str, Any]:
    from .evidence import collect_evidence

    names = classifier.class_names
    if store.get_meta("class_names") is None:
        with store.db:
            store.set_meta("class_names", names)
    # ---- stage 1: score and flag every input (skipping what the store already has)
    score_into_store(store, classifier, fitted, source, threshold, methods, batch_size, progress,
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
        rows, pictures = _explain_batch(collect_evidence, classifier, fitted, reporter, ids, images,
                                        generators, store, names)
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
        from .reports import render_review

        render_review(store, store.out / "report.html", summary=summary)
    summary["seconds"] = round(time.perf_counter() - t_start, 2)
    return summary


def score_into_store(store: RunStore, classifier: Classifier, fitted: Fitted, source: ImageSource, threshold: Threshold,
                     methods: Sequence[str], batch_size: int = 64, progress: bool = True,
                     keep_flagged_images: bool = False, annotate=None) -> None:
    """Score and flag every input of ``source`` that the store does not have yet, one transaction per batch.

    Unreadable inputs become error rows. ``keep_flagged_images`` stores the flagged images (for the explanations
    and the report); ``annotate(images) -> {name: (B,) tensor}`` adds per-image values to the metadata under
    ``"_stats"`` (the audit's binned image statistics).
    """
    from tqdm.auto import tqdm

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
            flags = flag(result.scores[threshold.score], threshold)
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


def _explain_batch(collect_evidence, classifier, fitted, reporter, ids, images, generators, store, names):
    """Evidence and explanations for one batch; when the batch fails, each sample alone, so one bad sample becomes
    an error row and the others are explained."""
    labels = []
    for sid in ids:
        row = store.db.execute("SELECT label FROM samples WHERE id = ?", (sid,)).fetchone()
        labels.append(-1 if row is None or row[0] is None else int(row[0]))
    t = time.perf_counter()
    try:
        evidence, pictures = collect_evidence(classifier, fitted, images, ids=ids, labels=labels,
                                              generators=generators, return_images=True)
    except Exception as exc:  # noqa: BLE001 - isolate the bad sample, keep the run going
        if len(ids) == 1:
            return [{"id": ids[0], "error": f"evidence failed: {type(exc).__name__}: {exc}"}], {}
        rows, pics = [], {}
        for i, sid in enumerate(ids):
            r, p = _explain_batch(collect_evidence, classifier, fitted, reporter, [sid], images[i:i + 1],
                                  generators, store, names)
            rows += r
            pics.update(p)
        return rows, pics
    seconds = (time.perf_counter() - t) / len(ids)
    main = next((g for g in ("lgd", "reco", "lnn") if g in pictures), None)
    rows, pics = [], {}
    for i, (sid, ev) in enumerate(zip(ids, evidence)):
        cf = pictures[main][i] if main else None
        try:
            exp = reporter.explain(ev, images[i], cf) if _takes_images(reporter) else reporter.explain(ev)
            rows.append({"id": sid, "evidence": ev.to_dict(), "explanation": exp.to_dict(), "cause": exp.cause,
                         "seconds": seconds})
        except Exception as exc:  # noqa: BLE001
            rows.append({"id": sid, "evidence": ev.to_dict(), "error": f"explanation failed: {type(exc).__name__}: "
                                                                          f"{exc}", "seconds": seconds})
        for kind, tensor in pictures.items():
            pics[(sid, kind)] = tensor[i]
    return rows, pics


def write_summary(store: RunStore) -> dict[str, Any]:
    """``summary.json`` from the store alone: per sample ``id, label, prediction, flagged, scores, cause,
    explanation, error``, plus counts, the threshold and misprediction metrics per score."""
    from .metrics import misprediction_metrics

    samples = store.samples()
    explained = store.explanations()
    rows = []
    for s in samples:
        e = explained.get(s["id"], {})
        exp = e.get("explanation") or {}
        rows.append({"id": s["id"], "label": s["label"], "prediction": s["prediction"], "flagged": s["flagged"],
                     "scores": s["scores"], "cause": e.get("cause"), "explanation": exp.get("text"),
                     "error": s["error"] or e.get("error")})
    labelled = [s for s in samples if s["label"] is not None and s["error"] is None and s["prediction"] is not None]
    metrics: dict[str, Any] = {}
    if labelled:
        correct = torch.tensor([s["label"] == s["prediction"] for s in labelled])
        for name in store.config.get("methods", []):
            values = torch.tensor([s["scores"].get(name) if s["scores"].get(name) is not None else float("nan")
                                   for s in labelled], dtype=torch.float64)
            ok = torch.isfinite(values)
            if ok.sum() >= 2:
                m = misprediction_metrics(values[ok], correct[ok])
                metrics[name] = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                 for k, v in m.items() if isinstance(v, (int, float))}
    causes: dict[str, int] = {}
    for r in rows:
        if r["cause"]:
            causes[r["cause"]] = causes.get(r["cause"], 0) + 1
    summary = {
        "config": store.config,
        "counts": {"samples": len(rows), "errors": sum(s["error"] is not None for s in samples),
                   "flagged": sum(r["flagged"] for r in rows),
                   "explained": sum(1 for e in explained.values() if e.get("explanation")),
                   "explain_errors": sum(1 for e in explained.values() if e.get("error")), "causes": causes},
        "timing": {"score_seconds": store.get_meta("score_seconds"), "explain_seconds": store.get_meta("explain_seconds")},
        "metrics": metrics,
        "samples": rows,
    }
    path = store.out / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    tmp.replace(path)
    return summary
