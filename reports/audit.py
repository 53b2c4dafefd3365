"""The dataset-audit report: ``audit.html``, self-contained like the review report (same escaping rules)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .html import data_uri, environment, fmt, svg

__all__ = ["render_audit"]


def _epgm_plot(effects: dict[str, list[float]], order: list[str], nuisance: set[str]) -> str | None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 8})
    names = [p for p in order if p in effects][:16]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.28 * len(names) + 0.8))
    data = [np.asarray(effects[p], dtype=float) for p in names][::-1]
    parts = ax.boxplot(data, orientation="horizontal", showfliers=False, patch_artist=True)
    for patch, name in zip(parts["boxes"], names[::-1]):
        patch.set_facecolor("#e8a33d" if name in nuisance else "#8fb3dd")
    ax.set_yticks(range(1, len(names) + 1), names[::-1])
    ax.set_xlabel("EPGM per sample (predicted class, per edit step)")
    return svg(fig)


def _slice_plot(slices: list[dict[str, Any]], column: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = [r for r in slices if r["column"] == column and r.get("accuracy") is not None]
    if not rows:
        return None
    rows.sort(key=lambda r: r["slice"])
    fig, ax = plt.subplots(figsize=(4.6, 2.4))
    x = np.arange(len(rows))
    acc = np.array([r["accuracy"] for r in rows])
    lo = np.array([r["accuracy_ci"][0] if r["accuracy_ci"][0] is not None else r["accuracy"] for r in rows])
    hi = np.array([r["accuracy_ci"][1] if r["accuracy_ci"][1] is not None else r["accuracy"] for r in rows])
    ax.bar(x, acc, color=["#c0392b" if r["flagged"] else "#8fb3dd" for r in rows])
    ax.errorbar(x, acc, yerr=[acc - lo, hi - acc], fmt="none", ecolor="#1d232b", capsize=3)
    ax.set_xticks(x, [r["slice"][:14] for r in rows], rotation=20)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title(column, fontsize=9)
    return svg(fig)


def _ci(ci) -> str:
    if not ci or ci[0] is None or (isinstance(ci[0], float) and math.isnan(ci[0])):
        return ""
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def render_audit(store, result: dict[str, Any], path: str | Path | None = None) -> Path:
    """Render ``audit.html`` from an audit result and its run store (for the example images)."""
    cfg = result["config"]
    nuisance = set(cfg.get("nuisance") or [])
    effects = {e["property"]: e["epgm"] for e in store.get_meta("audit_effects") or []}
    props = result["properties"]
    examples = []
    sample_ids = store.get_meta("audit_sample") or []
    for row in [r for r in props if r["flagged"]] or props[:1]:
        values = np.asarray(effects.get(row["property"], []))
        top = [sample_ids[i] for i in np.argsort(-values)[:3]] if len(values) else []
        pairs = [{"id": sid, "original": data_uri(store.image(sid, "original")),
                  "edited": data_uri(store.image(sid, f"edit:{row['property']}"))} for sid in top]
        examples.append({"property": row["property"], "pairs": [p for p in pairs if p["original"] and p["edited"]]})
    flagged_slices = [r for r in result["slices"] if r["flagged"]]
    plots = {"epgm": _epgm_plot(effects, [r["property"] for r in props], nuisance),
             "slices": [p for p in (_slice_plot(result["slices"], c)
                                    for c in dict.fromkeys(r["column"] for r in flagged_slices)) if p][:6]}
    context = {
        "title": "cfx audit", "model": f"{store.get_meta('model_name') or 'model'} ({cfg.get('model')})",
        "data": cfg.get("data"), "counts": result["counts"], "threshold": store.get_meta("flag_threshold") or cfg["threshold"],
        "nuisance": sorted(nuisance), "plots": plots, "examples": examples,
        "properties": [{**r, "mean": fmt(r["mean_epgm"], 4), "std": fmt(r["std_epgm"], 4),
                        "sig": fmt(r["share_significant"], 2), "flips": fmt(r["share_flips"], 2),
                        "p": f"{r['p_value']:.1e}" if math.isfinite(r["p_value"]) else "–",
                        "relative": fmt(r["relative_effect"], 2), "link": fmt(r.get("flag_link_auroc"), 2),
                        "null": fmt(r.get("null_epgm"), 4), "null_ratio": fmt(r.get("null_ratio"), 2),
                        "null_p": f"{r['null_p_value']:.1e}" if r.get("null_p_value") is not None else "–"}
                       for r in props],
        "slices": [{**r, "acc": fmt(r.get("accuracy"), 3), "acc_ci": _ci(r.get("accuracy_ci")),
                    "acc_rest": fmt(r.get("accuracy_rest"), 3), "trust": fmt(r.get("trust"), 3),
                    "flag": fmt(r.get("flag_rate"), 3), "flag_ci": _ci(r.get("flag_rate_ci")),
                    "flag_rest": fmt(r.get("flag_rate_rest"), 3),
                    "q": f"{min(r.get('accuracy_q', 1.0), r.get('flag_rate_q', 1.0)):.1e}"}
                   for r in result["slices"][:60]],
        "hidden_slices": max(0, len(result["slices"]) - 60), "neighbours": result["neighbours"],
        "columns_left_out": result.get("columns_left_out") or {},
        "flag_score": result.get("flag_score") or {},
        "errors": result["errors"], "timing": result["timing"],
    }
    html = environment().get_template("audit.html.j2").render(**context)
    path = Path(path) if path is not None else store.out / "audit.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path
