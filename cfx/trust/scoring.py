"""Score a whole data source: the engine behind ``cfx trust`` and the demo's trust table.

:func:`score_source` streams a source in bounded batches, computes every requested score with one shared forward
pass per batch (:func:`cfx.trust.scores.score_batch`), keeps unreadable files and non-finite logits as error rows, and
returns a :class:`ScoreTable`. :func:`write_trust_outputs` writes ``scores.csv``, ``summary.json`` and the plots.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from tqdm.auto import tqdm

from cfx.core.data import ImageSource, Record, TensorSource, iter_batches, open_source
from cfx.core.models import Classifier

from .fitted import check_model_for_folder
from .metrics import misprediction_metrics
from .plots import risk_coverage_plot, roc_plot
from .scores import SCORES, applicable_scores, score_batch
from .threshold import Threshold, flag

__all__ = ["ScoreTable", "evaluate_conditions", "score_source", "write_trust_outputs"]


@dataclass
class ScoreTable:
    """Per-sample results of scoring a source. Labels and predictions are -1 where unknown or failed."""

    ids: list[str]
    labels: Tensor
    predictions: Tensor
    scores: dict[str, Tensor]
    errors: list[str | None]
    metadata: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def evaluable(self) -> Tensor:
        """Samples with a known label and no error: the ones metrics are computed on."""
        ok = torch.tensor([e is None for e in self.errors], dtype=torch.bool)
        return ok & (self.labels >= 0)

    @property
    def correct(self) -> Tensor:
        return (self.predictions == self.labels) & self.evaluable

    def metrics(self, bootstrap: int = 0, threshold: Threshold | None = None) -> dict[str, dict[str, Any]]:
        """Misprediction metrics per score, over the evaluable samples (empty when no labels are known)."""
        mask = self.evaluable
        if not bool(mask.any()):
            return {}
        correct = self.correct[mask]
        out = {}
        for name, values in self.scores.items():
            v = values[mask]
            finite = torch.isfinite(v)
            t = threshold.value if threshold is not None and threshold.score == name else None
            out[name] = misprediction_metrics(v[finite], correct[finite], threshold=t, bootstrap=bootstrap)
        return out

    def concat(self, other: "ScoreTable") -> "ScoreTable":
        return ScoreTable(self.ids + other.ids, torch.cat([self.labels, other.labels]),
                          torch.cat([self.predictions, other.predictions]),
                          {k: torch.cat([v, other.scores[k]]) for k, v in self.scores.items()},
                          self.errors + other.errors, self.metadata + other.metadata)


def score_source(classifier: Classifier, source: ImageSource | Iterable[Record], methods: Sequence[str] | None = None,
                 batch_size: int = 64, progress: bool = True, **score_options: Any) -> ScoreTable:
    """Score every sample of ``source`` with ``methods`` (default: every applicable registry score).

    Unreadable files and samples with non-finite logits become rows with an ``error`` and NaN scores; the run goes
    on. ``score_options`` go to :func:`cfx.trust.score_batch` (ODIN temperature/epsilon, MC-dropout passes).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(source, (str, Path)):  # a folder, a manifest or KIND:TARGET, as the CLI's --data
        source = open_source(source, classifier.class_names, classifier.num_classes)
    fitted = score_options.get("fitted")
    if fitted is not None:  # a folder loaded without a model (or for another) is checked against this one
        check_model_for_folder(fitted.manifest, classifier, fitted.path)
    if isinstance(methods, str):
        methods = [methods]  # one name, not its letters
    methods = list(methods) if methods is not None else applicable_scores(classifier, fitted)
    unknown = [m for m in methods if m not in SCORES]
    if unknown:
        raise ValueError(f"unknown score(s) {unknown}; known: {', '.join(SCORES)}")
    ids: list[str] = []
    labels: list[Tensor] = []
    preds: list[Tensor] = []
    errors: list[str | None] = []
    metadata: list[dict] = []
    scores: dict[str, list[Tensor]] = {m: [] for m in methods}
    total = len(source) if hasattr(source, "__len__") else None
    bar = tqdm(total=total, desc="scoring", unit="img", disable=not progress)
    size = classifier.preprocessing.size
    for batch in iter_batches(source, batch_size, size=size):
        for rec in batch.errors:
            ids.append(rec.id)
            labels.append(torch.tensor([-1 if rec.label is None else rec.label]))
            preds.append(torch.tensor([-1]))
            errors.append(rec.error)
            metadata.append(rec.metadata)
            for m in methods:
                scores[m].append(torch.tensor([float("nan")]))
        if len(batch):
            result = score_batch(classifier, batch.images, methods, **score_options)
            pred = result.logits.argmax(dim=1)
            pred[torch.tensor([e is not None for e in result.errors], dtype=torch.bool)] = -1
            ids += batch.ids
            labels.append(batch.labels)
            preds.append(pred)
            errors += result.errors
            metadata += batch.metadata
            for m in methods:
                scores[m].append(result.scores[m])
        bar.update(len(batch) + len(batch.errors))
    bar.close()
    if not ids:
        raise ValueError("the data source is empty: no images were found; check the path or manifest")
    return ScoreTable(ids, torch.cat(labels).long(), torch.cat(preds).long(),
                      {m: torch.cat(v).float() for m, v in scores.items()}, errors, metadata)


def evaluate_conditions(classifier: Classifier, conditions: dict[str, tuple[Tensor, Tensor]],
                        methods: Sequence[str] | None = None, batch_size: int = 256, progress: bool = False,
                        **score_options: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """Misprediction metrics of every score on each named ``(images, labels)`` set: ``{condition: {score: …}}``."""
    results = {}
    for name, (images, labels) in conditions.items():
        table = score_source(classifier, TensorSource(images, labels), methods, batch_size, progress=progress,
                             **score_options)
        results[name] = table.metrics()
    return results


def _plain(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def spreadsheet_text(value: str) -> str:
    """Text for a CSV cell that a spreadsheet shows as text: one that starts with ``=``, ``+``, ``-``, ``@``, a tab
    or a carriage return would be read as a formula (a file named ``=HYPERLINK(…).png``), so it gets a leading
    apostrophe, as the report's verdict export does. Numbers are written as they are, not through this."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def write_trust_outputs(table: ScoreTable, out: str | Path, classifier: Classifier, data_description: dict,
                        threshold: Threshold | None = None, bootstrap: int = 0,
                        input_check: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``scores.csv``, ``summary.json`` and (with labels) ``roc.png`` and ``risk_coverage.png``.
    ``input_check``: the normalisation check of the run (:func:`cfx.core.models.check_inputs`), kept as it is.

    Returns the summary dict. ``summary.json`` holds per sample ``id``, ``label``, ``prediction``, ``correct``,
    ``scores``, ``flagged`` and ``error``, and the metrics per method.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    methods = list(table.scores)
    flags = flag(table.scores[threshold.score], threshold) if threshold is not None else None
    names = classifier.class_names
    correct = table.correct
    rows = []
    for i, rid in enumerate(table.ids):
        label = int(table.labels[i])
        pred = int(table.predictions[i])
        rows.append({
            "id": rid,
            "label": label if label >= 0 else None,
            "label_name": names[label] if names and 0 <= label < len(names) else None,
            "prediction": pred if pred >= 0 else None,
            "prediction_name": names[pred] if names and 0 <= pred < len(names) else None,
            "correct": bool(correct[i]) if bool(table.evaluable[i]) else None,
            "scores": {m: _plain(float(table.scores[m][i])) for m in methods},
            "flagged": bool(flags[i]) if flags is not None else None,
            "error": table.errors[i],
        })
    with (out / "scores.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "label", "prediction", "correct", "flagged", "error"] + methods)
        for r in rows:
            writer.writerow([spreadsheet_text(r["id"]), r["label"], r["prediction"], r["correct"], r["flagged"],
                             spreadsheet_text(r["error"] or "")]
                            + ["" if r["scores"][m] is None else f"{r['scores'][m]:.6g}" for m in methods])
    metrics = table.metrics(bootstrap=bootstrap, threshold=threshold)
    plots = {}
    if metrics:
        mask = table.evaluable
        finite = {m: table.scores[m][mask] for m in methods}
        roc_plot(finite, table.correct[mask], out / "roc.png")
        risk_coverage_plot(finite, table.correct[mask], out / "risk_coverage.png")
        plots = {"roc": "roc.png", "risk_coverage": "risk_coverage.png"}
    summary = {
        "command": "trust",
        "model": classifier.describe(),
        "data": data_description,
        "methods": {m: SCORES[m].to_dict() for m in methods},
        "threshold": threshold.to_dict() if threshold is not None else None,
        "input_check": input_check,
        "counts": {"samples": len(table), "errors": sum(e is not None for e in table.errors),
                   "labelled": int(table.evaluable.sum()),
                   "flagged": int(flags.sum()) if flags is not None else None},
        "metrics": json.loads(json.dumps(metrics, allow_nan=True).replace("NaN", "null")),
        "plots": plots,
        "samples": rows,
    }
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out / "summary.json")
    return summary
