"""The review report: one self-contained HTML file rendered from a run store alone.

Inline CSS, images as data-URI thumbnails, plots as inline SVG, a content security policy that forbids any
request, and a few lines of inline script for the reviewer's verdicts. Every value that comes from a model, a
file or an LLM goes through Jinja2's autoescaping; nothing is marked safe except the SVG plots, which are drawn
here from numbers.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from cfx.core.runstore import RunStore
from cfx.trust.metrics import risk_coverage_curve

from .html import data_uri, environment, fmt, svg
from .summary import write_summary

__all__ = ["render_review", "review_context"]

THUMB = 96  # displayed size of image thumbnails in CSS pixels


def _stages(summary: dict) -> dict | None:
    """Seconds per flagged image of each stage of explaining, largest first, for the report's header."""
    stages = (summary.get("timing") or {}).get("explain_stages") or {}
    explained = summary["counts"].get("explained") or 0
    if not stages or not explained:
        return None
    parts = sorted(stages.items(), key=lambda kv: -kv[1])
    return {"total": f"{sum(stages.values()) / explained:.3g}",
            "parts": [(name, f"{seconds / explained:.2g}") for name, seconds in parts]}


def _heat_map(original: bytes | None, counterfactual: bytes | None) -> str | None:
    """|original − counterfactual| summed over channels, as a colour-mapped PNG data URI (at the original's size)."""
    if original is None or counterfactual is None:
        return None
    import matplotlib
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(original)).convert("RGB"), dtype=np.float32) / 255
    b_img = Image.open(io.BytesIO(counterfactual)).convert("RGB")
    if b_img.size != (a.shape[1], a.shape[0]):
        b_img = b_img.resize((a.shape[1], a.shape[0]), Image.BILINEAR)
    b = np.asarray(b_img, dtype=np.float32) / 255
    d = np.abs(a - b).sum(2)
    d = d / max(float(d.max()), 1e-6)
    rgb = (matplotlib.colormaps["magma"](d)[..., :3] * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return data_uri(buf.getvalue())


def _plots(samples: list[dict], score: str, threshold: float) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt


    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9})
    out = {}
    values = np.array([s["scores"].get(score) for s in samples if s["scores"].get(score) is not None], dtype=float)
    values = values[np.isfinite(values)]
    if len(values):
        fig, ax = plt.subplots(figsize=(4.6, 2.6))
        ax.hist(values, bins=40, color="#4a7bb7")
        ax.axvline(threshold, color="#c0392b", lw=1.5, label=f"flag below {threshold:.3g}")
        ax.set_xlabel(score)
        ax.set_ylabel("samples")
        ax.legend(frameon=False)
        out["histogram"] = svg(fig)
    labelled = [s for s in samples if s["label"] is not None and s["prediction"] is not None
                and s["scores"].get(score) is not None]
    if len(labelled) >= 2:
        correct = np.array([s["label"] == s["prediction"] for s in labelled])
        if correct.any() and not correct.all():
            cov, risk = risk_coverage_curve(np.array([s["scores"][score] for s in labelled]), correct)
            fig, ax = plt.subplots(figsize=(4.6, 2.6))
            ax.plot(cov, risk, color="#4a7bb7")
            ax.set_xlabel("coverage (most trusted first)")
            ax.set_ylabel("risk (error rate)")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, max(0.05, float(np.max(risk)) * 1.1))
            out["risk_coverage"] = svg(fig)
    return out


def _sparkline(values: list[float], width: int = 90, height: int = 24) -> str:
    """Points of an SVG polyline for a curve of probabilities in [0, 1] (numbers only)."""
    if len(values) < 2:
        return ""
    xs = np.linspace(1, width - 1, len(values))
    return " ".join(f"{x:.1f},{(height - 1) - (height - 2) * min(max(float(v), 0.0), 1.0):.1f}"
                    for x, v in zip(xs, values))


def review_context(store, max_cards: int = 200, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the review template shows, read from a :class:`~cfx.runstore.RunStore` (``summary``: the one
    :func:`cfx.reports.summary.write_summary` just wrote, else it is written again)."""
    if isinstance(max_cards, bool) or not isinstance(max_cards, int) or max_cards < 0:
        raise ValueError(f"max_cards must be a whole number of at least 0, got {max_cards!r}")
    config = store.config
    summary = summary if summary is not None else write_summary(store)
    samples = store.samples()
    explained = store.explanations()
    threshold = store.get_meta("flag_threshold") or config["threshold"]  # a share of the run: fixed after scoring
    score = threshold["score"]
    class_names = (store.get_meta("class_names") or None)

    def name(idx):
        if idx is None:
            return "–"
        return class_names[idx] if class_names and 0 <= idx < len(class_names) else str(idx)

    flagged = [s for s in samples if s["flagged"]]
    flagged.sort(key=lambda s: (s["scores"].get(score) is None, s["scores"].get(score) or 0.0))
    cards = []
    for s in flagged[:max_cards]:
        e = explained.get(s["id"], {})
        ev = e.get("evidence") or {}
        exp = e.get("explanation") or {}
        original = store.image(s["id"], "original")
        cfs = []
        for c in ev.get("counterfactuals", []):
            png = store.image(s["id"], c["method"])
            cfs.append({"method": c["method"].upper() if c["method"] != "reco" else "Reco", "image": data_uri(png),
                        "heat": _heat_map(original, png), "before": fmt(c.get("score_before")),
                        "after": fmt(c.get("score_after")), "success": c.get("success")})
        restoring = ev.get("restoring_edit") or {}
        gains = sorted(((k, v) for k, v in (restoring.get("all_gains") or {}).items() if v is not None),
                       key=lambda kv: -kv[1])[:4]  # None: no edit of that kind kept the content
        curves = sorted(ev.get("property_curves", []), key=lambda c: -c.get("epgm", 0.0))[:4]
        neighbour = ev.get("neighbour") or None
        cards.append({
            "id": s["id"], "label": name(s["label"]), "prediction": name(s["prediction"]),
            "wrong": s["label"] is not None and s["label"] != s["prediction"],
            "score": fmt(s["scores"].get(score)), "competency": fmt(ev.get("competency")),
            "original": data_uri(original), "counterfactuals": cfs,
            "cause": e.get("cause") or "–", "confidence": fmt(exp.get("confidence"), 2),
            "text": exp.get("text") or "", "backend": exp.get("backend") or "", "error": e.get("error"),
            "fallback": exp.get("fallback") or "",
            "pending": not e,
            "restoring": {"property": restoring.get("property"), "direction": restoring.get("direction"),
                          "strength": fmt(restoring.get("strength"), 2), "before": fmt(restoring.get("score_before")),
                          "after": fmt(restoring.get("score_after"))} if restoring else None,
            "gains": [{"edit": k, "gain": fmt(v), "width": max(0.0, min(1.0, v)) * 100} for k, v in gains],
            "curves": [{"property": c["property"], "direction": c.get("direction") or "", "epgm": fmt(c.get("epgm")),
                        "p": fmt(c.get("p_value")),
                        "flips": c.get("flips"), "points": _sparkline(c.get("probabilities", []))} for c in curves],
            "neighbour": {"id": neighbour.get("neighbour_id"), "label": name(neighbour.get("neighbour_label")),
                          "distance": fmt(neighbour.get("neighbour_distance")),
                          "image": data_uri(store.image(s["id"], "neighbour"))} if neighbour else None,
            "metadata": {k: v for k, v in (s.get("metadata") or {}).items() if not isinstance(v, (dict, list))},
        })
    errors = [{"id": s["id"], "reason": s["error"]} for s in samples if s["error"]]
    errors += [{"id": sid, "reason": e["error"]} for sid, e in explained.items() if e.get("error")]
    metrics = [{"score": k, **{m: fmt(v.get(m)) for m in ("auroc", "aupr_error", "aupr_success", "fpr_at_95_tpr",
                                                           "aurc")}}
               for k, v in sorted(summary["metrics"].items(), key=lambda kv: -(kv[1].get("auroc") or 0))
               if v.get("auroc") is not None]  # undefined when every labelled prediction is right (or wrong)
    counts = summary["counts"]
    return {"title": "cfx review", "config": config, "counts": counts, "threshold": threshold,
            "model": f"{store.get_meta('model_name') or 'model'} ({config.get('model')})", "data": config.get("data"),
            "metrics": metrics, "plots": _plots(samples, score, threshold["value"]), "cards": cards,
            "hidden": max(0, len(flagged) - max_cards), "errors": errors, "thumb": THUMB,
            "causes": sorted(counts["causes"].items(), key=lambda kv: -kv[1]),
            "timing": summary["timing"], "stages": _stages(summary), "unavailable": summary.get("unavailable") or {},
            "uncalibrated": summary.get("uncalibrated") or {},
            "flag_score": summary.get("flag_score") or {}, "reference": summary.get("reference") or {},
            "edit_ranges": summary.get("edit_ranges") or {},
            "target": (summary.get("reference") or {}).get("trust_target") or "parce",
            "finished": store.get_meta("finished"), "created": store.get_meta("created"),
            "status": summary.get("status", "complete"), "model_notes": summary.get("model_notes") or []}


def render_review(store_or_dir, path: str | Path | None = None, max_cards: int = 200,
                  summary: dict[str, Any] | None = None) -> Path:
    """Render ``report.html`` from a run store (a :class:`~cfx.runstore.RunStore` or its folder); also refreshes
    ``summary.json`` unless the caller passes the summary it just wrote."""

    own = not hasattr(store_or_dir, "samples")
    store = RunStore(store_or_dir) if own else store_or_dir
    try:
        context = review_context(store, max_cards=max_cards, summary=summary)
        path = Path(path) if path is not None else store.out / "report.html"
    finally:
        if own:
            store.close()
    html = environment().get_template("review.html.j2").render(**context)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path
