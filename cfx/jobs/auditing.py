"""Data-set bias audit: which properties the model leans on that should not matter, which slices it fails on, and
whether low trust concentrates there.

- :func:`property_sensitivity`: EPGM (``docs/methods.md``) of the predicted class along each property edit, per
  sample, with its shuffle-test p-value and whether the prediction flips; parametric editors always, re-rendering
  editors (true interventions) where the data carries its generating attributes (the demo's shapes world).
- :func:`rank_properties`: the per-property table: mean EPGM (the effect), spread, share of significant shuffle
  tests, share of flips, a binomial p-value (more significant samples than the 5 % chance rate?), per-class means,
  and which nuisance properties are flagged.
- :func:`slice_analysis`: accuracy, mean trust and flag rate per slice of every metadata column and of binned image
  statistics, with bootstrap intervals and a test of each slice against the rest (Benjamini–Hochberg corrected).
- :func:`audit`: the whole job (``cfx audit``), resumable through the run store, writing ``audit.json`` and
  ``audit.html``.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import binomtest, fisher_exact, ttest_ind, wilcoxon
from sklearn.metrics import roc_auc_score
from torch import Tensor
from tqdm.auto import tqdm

from cfx.core.data import iter_batches
from cfx.core.images import resize
from cfx.core.models import model_fingerprint
from cfx.core.runstore import RunStore
from cfx.generators import (
    PROPERTY_STATISTICS,
    WORLDS,
    AttributeEditor,
    EditRanges,
    epgm,
    parametric_editors,
    property_curve,
)
from cfx.reports import render_audit
from cfx.trust.threshold import AUTO

from .distributed import (RayEngine, WorkerContext, open_worker, ray_map, ray_session, read_batch, resolve_engine,
                          worker_context)
from .common import (
    AuditResult,
    fix_share_threshold,
    json_default,
    open_job_inputs,
    run_reference,
    score_into_store,
)

__all__ = ["PropertyEffect", "audit", "property_sensitivity", "rank_properties", "rendering_world",
           "slice_analysis"]

ALPHA = 0.05
MIN_SPAN = 0.02  # a curve counts as significant only if it also moves the probability this much somewhere
MIN_MEAN_SPAN = 0.05  # a nuisance is flagged only if its edits move the probability this much on average
NULL_CHUNK = 64  # images per draw of the matched-size null's random fields (and per chunk on Ray)


@dataclass
class PropertyEffect:
    """Per-sample sensitivity of the prediction to one property."""

    property: str
    kind: str                 # "parametric" or "re-rendering"
    epgm: Tensor              # (N,) the larger of the two directions' EPGM (code units: per edit step)
    p_value: Tensor           # (N,) shuffle-test p-value (Bonferroni over the directions)
    flips: Tensor             # (N,) the prediction changes somewhere along the edit
    predicted: Tensor         # (N,) the class followed (the original prediction)
    ids: list[str] = field(default_factory=list)
    span: Tensor | None = None  # (N,) largest max − min of the probability along the edit
    null_epgm: Tensor | None = None  # (N,) EPGM along a matched-size random smooth change (see null_sequence)


def rendering_world(metadata: Sequence[dict[str, Any]], image_size: int):
    """The first registered re-rendering world (:data:`cfx.generators.WORLDS`) that can rebuild the generating
    attributes from these metadata rows, as ``(world, attributes)``; ``(None, None)`` when none can."""
    for world_type in WORLDS.values():
        attributes = world_type.attributes_from_metadata(metadata)
        if attributes is not None:
            return world_type.for_image_size(image_size), attributes
    return None, None


def _editors(world, re_render: Sequence[str] | None = None):
    """The parametric editors, then (given a re-rendering world) one re-rendering editor per attribute."""
    editors = [(e, "parametric") for e in parametric_editors()]
    if world is not None:
        for name in re_render if re_render is not None else world.default_edits:
            band = world.bands[name]
            span = 0.5 if name.endswith("hue") else 0.5 * (band[1] - band[0])
            editors.append((AttributeEditor(world, name, range=(-span, span)), "re-rendering"))
    return editors


def property_sensitivity(classifier, images: Tensor, metadata: Sequence[dict[str, Any]] | None = None,
                         properties: Sequence[str] | None = None, steps: int = 8, permutations: int = 200,
                         ids: Sequence[str] | None = None, progress: bool = False, ranges: EditRanges | None = None,
                         null: bool = True, seed: int = 0, offset: int = 0) -> list[PropertyEffect]:
    """EPGM of the predicted class along every property edit, per sample (for parametric edits both directions
    where there are two, the larger kept; re-rendered attributes go up by half their training band, hues half way
    round). ``metadata`` rows that carry a registered world's generating attributes (see :func:`rendering_world`)
    add the re-rendering editors; ``properties`` keeps only the named ones. With ``ranges`` the parametric sweeps
    stay inside the reference data's range (:class:`~cfx.generators.EditRanges`).

    ``null=True`` also measures, per sample and property, the EPGM of a **matched-size null**: the same number of
    steps, each changing the image by exactly as much (pixel L2) as the property edit does, along a random field
    instead of the property (:func:`null_sequence`: smooth for parametric edits, with the edit's own spatial
    frequencies for re-rendered attributes). It is what the same model does for a change of
    that size that carries no particular property; a property counts only by how far it exceeds it. The null's
    random fields are drawn per chunk of 64 images from ``seed`` and the chunk's position; ``offset`` (a multiple
    of 64) is the position of ``images[0]`` in a larger sample split across workers, so each image gets the same
    field as when the sample is measured whole."""
    if offset % NULL_CHUNK:
        raise ValueError(f"offset must be a multiple of {NULL_CHUNK}, got {offset}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W) in [0, 1], got {tuple(images.shape)}")
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    if metadata is not None and len(metadata) != len(images):
        raise ValueError(f"{len(metadata)} metadata rows for {len(images)} images")
    world, attributes = rendering_world(metadata, images.shape[-1]) if metadata is not None else (None, None)
    editors = _editors(world)
    if properties is not None:
        known = {e.property for e, _ in editors}
        missing = sorted(set(properties) - known)
        if missing:
            raise ValueError(f"unknown properties {missing}; available here: {', '.join(sorted(known))}")
        editors = [(e, k) for e, k in editors if e.property in set(properties)]
    with torch.inference_mode():
        predicted = torch.cat([classifier.logits(images[i:i + 256]).argmax(1).cpu()
                               for i in range(0, len(images), 256)])
    out = []
    for number, (editor, kind) in enumerate(tqdm(editors, desc="property edits", disable=not progress)):
        values, ps, flips, spans, nulls = [], [], [], [], []
        # re-rendered attributes move one way: up by half their training band (hues: half way round the circle)
        for d, direction in enumerate(editor.directions if kind == "parametric" else editor.directions[:1]):
            strengths = (ranges.strengths(editor, images, direction, steps)
                         if ranges is not None and kind == "parametric" else editor.sweep(direction, steps=steps))
            rendered = attributes if kind == "re-rendering" else None
            curve = property_curve(classifier, editor, images, strengths, class_index=predicted,
                                   permutations=permutations, attributes=rendered)
            values.append(curve.epgm)
            ps.append(curve.p_value)
            flips.append(curve.flips)
            spans.append(curve.probabilities.amax(1) - curve.probabilities.amin(1))
            if null:
                nulls.append(_null_epgm(classifier, editor, images, strengths, predicted, rendered,
                                        seed=seed * 1000 + number * 10 + d, offset=offset))
        out.append(PropertyEffect(editor.property, kind, torch.stack(values).amax(0),
                                  (torch.stack(ps).amin(0) * len(ps)).clamp(max=1.0), torch.stack(flips).any(0),
                                  predicted, list(ids) if ids is not None else [str(i) for i in range(len(images))],
                                  torch.stack(spans).amax(0), torch.stack(nulls).amax(0) if nulls else None))
    return out


def null_sequence(sequence: Tensor, seed: int = 0, cells: int = 4, kind: str = "smooth") -> Tensor:
    """A matched-size null for an edit ``sequence (N, S + 1, 3, H, W)`` (original first): the original plus
    ``a_k · F``, where ``a_k`` is the L2 distance of step ``k`` of the edit from the original and ``F`` a random field
    of unit L2 norm per image. Clipped to [0, 1].

    ``kind="smooth"`` (for global edits such as brightness or hue): ``cells × cells`` Gaussian values per channel,
    bilinearly upsampled, a smooth change like the edit's. ``kind="spectral"`` (for re-rendered attributes, which
    move edges: an object's position, a texture): the edit's own full change with its mean removed and its Fourier
    phases randomised, so the null has the same spatial frequencies as the edit but none of its layout."""
    if kind not in ("smooth", "spectral"):
        raise ValueError(f"kind must be smooth or spectral, got {kind!r}")
    n, steps = sequence.shape[:2]
    g = torch.Generator().manual_seed(seed)
    size_hw = tuple(sequence.shape[-2:])
    if kind == "smooth":
        field = torch.randn(n, 3, cells, cells, generator=g)
        field = F.interpolate(field, size=size_hw, mode="bilinear", align_corners=False)
    else:
        change = (sequence[:, -1] - sequence[:, 0]).float().cpu()
        change = change - change.mean((2, 3), keepdim=True)
        phase = torch.angle(torch.fft.rfft2(torch.randn(change.shape, generator=g)))  # a real field's phases
        field = torch.fft.irfft2(torch.fft.rfft2(change).abs() * torch.exp(1j * phase), s=size_hw)
    field = field / field.flatten(1).norm(dim=1).clamp_min(1e-12).view(n, 1, 1, 1)
    original = sequence[:, :1]
    size = (sequence - original).flatten(2).norm(dim=2)                          # (N, S + 1)
    return (original + size.view(n, steps, 1, 1, 1) * field.unsqueeze(1).to(sequence.dtype)).clamp(0, 1)


def _null_epgm(classifier, editor, images: Tensor, strengths: Tensor, predicted: Tensor, attributes, seed: int,
               offset: int = 0) -> Tensor:
    """EPGM ``(N,)`` of the predicted class along the matched-size null of one edit, in chunks of images."""
    out, chunk = [], NULL_CHUNK
    s = torch.as_tensor(strengths, dtype=torch.float32)
    for i in range(0, len(images), chunk):
        part = s[i:i + chunk] if s.dim() == 2 else s
        if attributes is not None:
            sub = {k: v[i:i + chunk] for k, v in attributes.items()}
            seq = editor.edit(None, part, attributes=sub)
        else:
            seq = editor.edit(images[i:i + chunk], part)
        noise = null_sequence(seq, seed + offset + i, kind="spectral" if attributes is not None else "smooth")
        n, steps = noise.shape[:2]
        with torch.inference_mode():
            probs = torch.softmax(classifier.logits(noise.reshape(n * steps, *noise.shape[2:])), 1).float().cpu()
        k = predicted[i:i + chunk].view(n, 1, 1).expand(n, steps, 1)
        out.append(epgm(probs.view(n, steps, -1).gather(2, k).squeeze(2)))
    return torch.cat(out).float()


def _binomial_p(k: int, n: int, alpha: float = ALPHA) -> float:
    return float(binomtest(k, n, alpha, alternative="greater").pvalue) if n else float("nan")


def rank_properties(effects: Sequence[PropertyEffect], nuisance: Sequence[str] = (), class_names=None,
                    large: float = 0.5, null_ratio: float = 1.25) -> list[dict[str, Any]]:
    """One row per property, largest mean EPGM first. A sample counts as significant when its shuffle test gives
    p < 0.05 and the edit moves the probability by at least 0.02.

    A nuisance property is flagged when its samples are significant far more often than chance (binomial
    p < 0.01) and, when the effects carry their matched-size null (:func:`property_sensitivity`), its EPGM exceeds
    the null's: a one-sided paired Wilcoxon test over the samples at p < 0.01 **and** a mean EPGM at least
    ``null_ratio`` × the null's mean (the model leans on this property clearly more than on any change of that size;
    1.25 was set on the digits world, seed 0) **and** a material effect: its edits move the predicted class's
    probability by at least 0.05 on average (max − min along the edit).
    Without a null (effects made by hand) the older rule applies: a mean EPGM at least ``large`` × that of the most
    influential property that is not a nuisance."""
    nuisance = set(nuisance)
    unknown = nuisance - {e.property for e in effects}
    if unknown:
        raise ValueError(f"nuisance properties {sorted(unknown)} were not measured; measured: "
                         f"{', '.join(e.property for e in effects)}")
    rows = []
    for e in effects:
        # a sample whose edits the model gave NaN or infinite logits for has no EPGM: it is left out and counted
        measured = torch.isfinite(e.epgm)
        if e.null_epgm is not None:
            measured &= torch.isfinite(e.null_epgm)
        if not bool(measured.all()):
            keep = torch.nonzero(measured).flatten()
            e = replace(e, epgm=e.epgm[keep], p_value=e.p_value[keep], flips=e.flips[keep],
                        predicted=e.predicted[keep], ids=[e.ids[i] for i in keep.tolist()] if e.ids else e.ids,
                        span=e.span[keep] if e.span is not None else None,
                        null_epgm=e.null_epgm[keep] if e.null_epgm is not None else None)
        if len(e.epgm) == 0:
            continue  # nothing measurable along this property's edits
        v = e.epgm.double()
        sig = e.p_value < ALPHA
        if e.span is not None:  # a smooth but negligible trend also beats its shuffles; it does not count
            sig = sig & (e.span >= MIN_SPAN)
        per_class = {}
        for c in torch.unique(e.predicted).tolist():
            m = e.predicted == c
            name = class_names[c] if class_names and c < len(class_names) else str(c)
            per_class[name] = float(v[m].mean())
        row = {"property": e.property, "kind": e.kind, "nuisance": e.property in nuisance, "n": len(v),
               "unmeasured": int((~measured).sum()),
               "mean_epgm": float(v.mean()), "std_epgm": float(v.std()) if len(v) > 1 else 0.0,
               "median_epgm": float(v.median()), "share_significant": float(sig.float().mean()),
               "share_flips": float(e.flips.float().mean()),
               "p_value": _binomial_p(int(sig.sum()), len(v)), "per_class": per_class}
        if e.span is not None:
            row["mean_span"] = float(e.span.double().mean())
        if e.null_epgm is not None:
            null = e.null_epgm.double()
            row["null_epgm"] = float(null.mean())
            row["null_ratio"] = (float(v.mean() / null.mean()) if null.mean() > 0
                                 else float("inf") if v.mean() > 0 else float("nan"))
            row["null_p_value"] = _paired_greater(v.numpy(), null.numpy())
        rows.append(row)
    rows.sort(key=lambda r: -r["mean_epgm"])
    relevant = [r["mean_epgm"] for r in rows if not r["nuisance"]]
    reference = max(relevant) if relevant else max((r["mean_epgm"] for r in rows), default=0.0)
    nuisance_rank = 0
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
        if r["nuisance"]:
            nuisance_rank += 1
            r["nuisance_rank"] = nuisance_rank
        r["relative_effect"] = r["mean_epgm"] / reference if reference > 0 else float("nan")
        if "null_epgm" in r:
            beyond = bool(r["null_p_value"] < 0.01 and r["null_ratio"] >= null_ratio  # NaN (0 / 0) never is
                          and r.get("mean_span", 1.0) >= MIN_MEAN_SPAN)
        else:
            beyond = r["relative_effect"] >= large
        r["flagged"] = bool(r["nuisance"] and r["p_value"] < 0.01 and beyond)
    return rows


def _paired_greater(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided paired Wilcoxon signed-rank p-value that ``a`` exceeds ``b`` (1.0 when they never differ)."""
    diff = a - b
    if len(diff) < 2 or not np.any(diff != 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(wilcoxon(a, b, alternative="greater", zero_method="wilcox").pvalue)


# ---------------------------------------------------------------------------------------------- slices

def _bootstrap_ci(values: np.ndarray, resamples: int, rng: np.random.Generator) -> tuple[float, float]:
    if len(values) < 2:
        return (float("nan"), float("nan"))
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[idx].mean(1)
    return (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def _two_sample_p(a: np.ndarray, b: np.ndarray, binary: bool = False) -> float:
    """Two-sided p-value that ``a`` and ``b`` have the same mean. For 0/1 values (``binary``: accuracy, flag rate)
    Fisher's exact test of the 2×2 table: a normal-theory test badly overstates significance there (a slice that
    is right 41 times out of 41 has zero variance, and Welch's t-test gives it p = 0.00003 against a rest right
    342 times out of 359, where the exact p is 0.24). Otherwise Welch's t-test of the means."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    if binary:
        table = [[int(a.sum()), int(len(a) - a.sum())], [int(b.sum()), int(len(b) - b.sum())]]
        return float(fisher_exact(table).pvalue)
    if np.var(a) == 0 and np.var(b) == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    with warnings.catch_warnings():  # near-constant slices: scipy warns about precision
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_ind(a, b, equal_var=False).pvalue)


def _benjamini_hochberg(p: list[float]) -> list[float]:
    arr = np.array([1.0 if not math.isfinite(v) else v for v in p])
    if not len(arr):
        return []
    order = np.argsort(arr)
    ranked = arr[order] * len(arr) / (np.arange(len(arr)) + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out.tolist()


MAX_CATEGORIES = 40  # a text column with more distinct values is an identifier, not a slice


def _slices_of(values: list[Any], bins: int) -> tuple[list[str], str] | str:
    """Slice labels per row for one column: categories, or quantile bins of a numeric column; or, when the column
    cannot be sliced, why (a sentence). An empty cell (a CSV writes a missing value so) is missing, as JSON's null
    is."""
    values = [None if isinstance(v, str) and not v.strip() else v for v in values]
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not present:
        return "every value is missing"
    if isinstance(present[0], (dict, list)):
        return "its values are nested (lists or objects), not categories or numbers"
    distinct = sorted({str(v) for v in present})
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    if numeric and len(distinct) > 12:
        arr = np.array([float(v) if v is not None else np.nan for v in values])
        edges = np.unique(np.nanquantile(arr, np.linspace(0, 1, bins + 1)))
        if len(edges) < 3:
            return "its numbers are nearly all the same value: no two bins to compare"
        which = np.clip(np.searchsorted(edges, arr, side="right") - 1, 0, len(edges) - 2)
        labels = [f"{edges[w]:.3g}–{edges[w + 1]:.3g}" if not np.isnan(a) else "missing" for w, a in zip(which, arr)]
        return labels, "binned"
    if len(distinct) < 2:
        missing = len(values) - len(present)
        return (f"one value ({distinct[0][:40]!r})" + (f", missing for {missing} images" if missing else
                                                      " for every image") + ": nothing to compare it with")
    if len(distinct) > MAX_CATEGORIES:
        return (f"{len(distinct)} distinct values, more than {MAX_CATEGORIES}: an identifier rather than a group "
                "(group its values into a coarser column to audit them)")
    return ["missing" if v is None else str(v) for v in values], "category"


def columns_left_out(metadata: Sequence[dict[str, Any]], bins: int = 4) -> dict[str, str]:
    """The metadata columns :func:`slice_analysis` cannot slice, each with why; not ``path``, which image folders
    add to every image themselves (a file path is never a group)."""
    columns = [k for k in dict.fromkeys(k for row in metadata for k in row) if k != "path"]
    reasons = {k: _slices_of([row.get(k) for row in metadata], bins) for k in columns}
    return {k: why for k, why in reasons.items() if isinstance(why, str)}


def slice_analysis(metadata: Sequence[dict[str, Any]], correct: Sequence[bool | None], trust: Sequence[float],
                   flagged: Sequence[bool], statistics: dict[str, Sequence[float]] | None = None, bins: int = 4,
                   resamples: int = 500, min_size: int = 10, seed: int = 0) -> list[dict[str, Any]]:
    """Per slice of every metadata column (categories, or ``bins`` quantile bins of numeric columns) and of each
    image statistic: n, accuracy, mean trust and flag rate, each with a 95 % bootstrap interval, and p-values of the
    slice against the rest (Fisher's exact test for accuracy and flag rate, Welch's t-test for mean trust;
    Benjamini–Hochberg over all slices and measures). A slice is flagged when its accuracy or flag rate differs from
    the rest's at adjusted p < 0.05."""
    n = len(trust)
    if not (len(metadata) == len(correct) == len(flagged) == n):
        raise ValueError("metadata, correct, trust and flagged must have one entry per sample")
    rng = np.random.default_rng(seed)
    columns: dict[str, list[Any]] = {}
    for row in metadata:
        for k in row:
            columns.setdefault(k, None)
    table = {k: [row.get(k) for row in metadata] for k in columns}
    for k, v in (statistics or {}).items():
        table[f"image {k}"] = [float(x) for x in v]
    acc = np.array([np.nan if c is None else float(c) for c in correct])
    tr = np.array([float(t) if t is not None else np.nan for t in trust])
    fl = np.array([float(f) for f in flagged])
    rows, pvals = [], []
    for column, values in table.items():
        sliced = _slices_of(values, bins)
        if isinstance(sliced, str):  # cannot be sliced (columns_left_out says why)
            continue
        labels, how = sliced
        labels_arr = np.array(labels)
        for label in sorted(set(labels)):
            inside = labels_arr == label
            if inside.sum() < min_size or (~inside).sum() < min_size:
                continue
            entry = {"column": column, "slice": label, "binning": how, "n": int(inside.sum())}
            for name, arr in (("accuracy", acc), ("trust", tr), ("flag_rate", fl)):
                a, b = arr[inside], arr[~inside]
                a, b = a[~np.isnan(a)], b[~np.isnan(b)]
                entry[name] = float(a.mean()) if len(a) else None
                entry[f"{name}_rest"] = float(b.mean()) if len(b) else None
                entry[f"{name}_ci"] = _bootstrap_ci(a, resamples, rng) if len(a) else (None, None)
                entry[f"{name}_p"] = _two_sample_p(a, b, binary=name != "trust")
                pvals.append((len(rows), name, entry[f"{name}_p"]))
            rows.append(entry)
    adjusted = _benjamini_hochberg([p for _, _, p in pvals])
    for (i, name, _), q in zip(pvals, adjusted):
        rows[i][f"{name}_q"] = q
    for r in rows:
        r["flagged"] = bool(min(r.get("accuracy_q", 1.0), r.get("flag_rate_q", 1.0)) < 0.05)
    rows.sort(key=lambda r: (not r["flagged"], min(r.get("accuracy_q", 1), r.get("flag_rate_q", 1))))
    return rows


def _flag_link(effect: PropertyEffect, flagged: np.ndarray) -> float | None:
    """AUROC of the per-sample EPGM for telling flagged from trusted samples (0.5: no link)."""
    epgm = effect.epgm.numpy()
    finite = np.isfinite(epgm)  # samples whose edits gave non-finite logits have no EPGM
    flagged, epgm = flagged[finite], epgm[finite]
    if flagged.all() or not flagged.any():
        return None
    return float(roc_auc_score(flagged, epgm))


# ---------------------------------------------------------------------------------------------- the job

def audit(model, data, fitted, out: str | Path, nuisance: Sequence[str] = (), sample: int | None = 2000,
          properties: Sequence[str] | None = None, flag_score: str = AUTO, flag_below: float | None = None,
          flag_percentile: float | None = None, steps: int = 8, permutations: int = 200, batch_size: int = 64,
          restart: bool = False, progress: bool = True, seed: int = 0, data_spec: str | None = None,
          model_spec: str | None = None, flag_share: float | None = None,
          engine: str | RayEngine | dict | None = None, **model_options: Any) -> AuditResult:
    """Audit ``data`` and ``model`` for bias; writes OUT/audit.json, OUT/audit.html and OUT/run.sqlite and returns
    an :class:`AuditResult` (the content of audit.json). ``sample`` images (drawn at random with ``seed``; ``None``
    = all) get the property edits; every image gets scores, flags and slices. ``nuisance`` names the properties
    that should not matter. ``fitted`` may be None (flags then come from a share of the run, 10 % by default, and
    the nearest trusted images of flagged samples from the run's most trusted images); ``flag_score="auto"`` is
    chosen as in :func:`cfx.explain`. ``engine="ray"`` (or a :class:`cfx.jobs.distributed.RayEngine`) scores
    and edits on a Ray actor pool, with the same results (see docs/scale.md)."""
    t0 = time.perf_counter()
    engine = resolve_engine(engine)
    nuisance = [nuisance] if isinstance(nuisance, str) else nuisance  # one name, not its letters
    properties = [properties] if isinstance(properties, str) else properties
    if sample is not None and sample < 1:
        raise ValueError(f"sample must be a positive number of images (or None for all), got {sample}")
    if steps < 2 or batch_size < 1:
        raise ValueError(f"steps must be at least 2 and batch_size at least 1, got {steps} and {batch_size}")
    _check_property_names(properties, nuisance)  # before the run store exists: a typo must not block the rerun
    job = open_job_inputs(model, data, fitted, flag_score, flag_below, flag_percentile, data_spec, model_spec,
                          model_options, flag_share)
    config = {"job": "audit", "model": model_fingerprint(job.classifier), "data": job.data_identity,
              "fitted": job.fitted.manifest.get("config_hash") if job.fitted is not None else None,
              "threshold": job.threshold.to_dict(),
              "methods": job.methods, "nuisance": sorted(nuisance), "sample": sample,
              "properties": list(properties) if properties else None, "steps": steps,
              "permutations": permutations, "seed": seed}
    store = RunStore(out, config, restart=restart)
    with store.db:
        store.set_meta("flag_score", job.flag_choice.to_dict())
        store.set_meta("image_size", list(job.classifier.preprocessing.size or ()) or None)  # every pass reads at it
        store.set_meta("model_notes", list(job.classifier.notes))  # e.g. the model outputs probabilities
    try:
        if engine is None:
            with store.db:
                store.set_meta("engine", {"engine": "local"})
            result = _audit(store, job.classifier, job.fitted, job.source, job.threshold, job.methods,
                            list(nuisance), sample, properties, steps, permutations, batch_size, progress, seed,
                            job.model_name, t0)
        else:
            with ray_session(engine):
                with store.db:
                    store.set_meta("engine", engine.describe())
                context = worker_context(engine, job.classifier, job.fitted, job.source)
                result = _audit(store, job.classifier, job.fitted, job.source, job.threshold, job.methods,
                                list(nuisance), sample, properties, steps, permutations, batch_size, progress, seed,
                                job.model_name, t0, engine, context)
    finally:
        store.close()
    return AuditResult(**result, out=Path(out))


def _audit(store, classifier, fitted, source, threshold, methods, nuisance, sample, properties, steps,
           permutations, batch_size, progress, seed, model_name, t0, engine: RayEngine | None = None,
           context: WorkerContext | None = None) -> dict[str, Any]:
    if store.get_meta("model_name") is None:
        with store.db:
            store.set_meta("model_name", model_name)
            store.set_meta("class_names", classifier.class_names)
    # ---- every image: scores, flags, image statistics (resumable by id)
    score_into_store(store, classifier, fitted, source, threshold, methods, batch_size, progress,
                     annotate=_basic_statistics, engine=engine, context=context)
    threshold = fix_share_threshold(store, threshold, source, classifier.preprocessing.size, batch_size,
                                    keep_flagged_images=False)
    size = classifier.preprocessing.size
    samples = store.samples()
    good = [s for s in samples if s["error"] is None]
    flagged_by_id = {s["id"]: bool(s["flagged"]) for s in good}
    if not good:
        raise ValueError("no readable images in the data source; nothing to audit")
    # ---- property sensitivity on a sample (resumable: stored once computed)
    effects_json = store.get_meta("audit_effects")
    picked_ids = store.get_meta("audit_sample")
    if effects_json is None:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(good))
        chosen = [good[i] for i in sorted(order[:sample] if sample is not None else order)]
        picked_ids = [s["id"] for s in chosen]
        flagged_picked = [flagged_by_id[sid] for sid in picked_ids]
        statistics = _stored_statistics(chosen)
        t1 = time.perf_counter()
        if engine is None:
            wanted = set(picked_ids)
            images, meta = {}, {}
            for batch in iter_batches((r for r in source if r.id in wanted), batch_size, size=size):
                for i, sid in enumerate(batch.ids):
                    images[sid] = batch.images[i]
                    meta[sid] = batch.metadata[i]
            picked_ids = [sid for sid in picked_ids if sid in images]
            x = torch.stack([images[sid] for sid in picked_ids])
            rows = [meta[sid] for sid in picked_ids]
            world, attributes = rendering_world(rows, x.shape[-1])
            _check_properties(world, properties, nuisance)
            ranges = _audit_ranges(fitted, flagged_picked, statistics, x)
            effects = property_sensitivity(classifier, x, rows, properties, steps, permutations, picked_ids,
                                           progress, ranges=ranges, seed=seed)
            effects_json = [_effect_json(e) for e in effects]
            images_of = lambda index: x[torch.as_tensor(index)]  # noqa: E731
        else:
            position = {sid: p for p, sid in enumerate(source.ids())}
            first = read_batch(source, [position[picked_ids[0]]], size)
            image_size = tuple(size) if size is not None else tuple(first.images.shape[-2:])
            rows = [{k: v for k, v in s["metadata"].items() if not k.startswith("_")} for s in chosen]
            world, attributes = rendering_world(rows, image_size[-1])
            _check_properties(world, properties, nuisance)
            if statistics is None:
                raise ValueError("this run was scored without the image statistics the audit's edit ranges need "
                                 "on Ray: run it again with --restart")
            ranges = _audit_ranges(fitted, flagged_picked, statistics)
            effects_json = _ray_property_effects(store, engine, context, picked_ids, position, image_size, properties,
                                                 steps, permutations, ranges, seed, progress, world is not None)
            images_of = lambda index: read_batch(source, [position[picked_ids[i]] for i in index],  # noqa: E731
                                                 image_size).images
        with store.db:
            store.set_meta("audit_effects", effects_json)
            store.set_meta("audit_sample", picked_ids)
            store.set_meta("edit_ranges", ranges.to_dict() if ranges is not None else None)
            store.set_meta("audit_property_seconds", time.perf_counter() - t1)
        _store_examples(store, effects_json, picked_ids, images_of, world, attributes)
    effects = [PropertyEffect(e["property"], e["kind"], torch.tensor(e["epgm"]), torch.tensor(e["p_value"]),
                              torch.tensor(e["flips"]), torch.tensor(e["predicted"]), picked_ids,
                              torch.tensor(e["span"]) if e.get("span") is not None else None,
                              torch.tensor(e["null_epgm"]) if e.get("null_epgm") is not None else None)
               for e in effects_json]
    names = classifier.class_names
    ranking = rank_properties(effects, nuisance, names)
    by_id = {s["id"]: s for s in good}
    flagged_in_sample = np.array([by_id[sid]["flagged"] for sid in picked_ids])
    by_property = {e.property: e for e in effects}
    for row in ranking:
        row["flag_link_auroc"] = _flag_link(by_property[row["property"]], flagged_in_sample)
    # ---- slices over every image
    meta_rows = [{k: v for k, v in s["metadata"].items() if not k.startswith("_")} for s in good]
    stats = {k: [s["metadata"].get("_stats", {}).get(k, float("nan")) for s in good]
             for k in ("brightness", "saturation")}
    correct = [None if s["label"] is None else s["label"] == s["prediction"] for s in good]
    slices = slice_analysis(meta_rows, correct, [s["scores"].get(threshold.score) for s in good],
                            [s["flagged"] for s in good], stats, seed=seed)
    # ---- trust link: nearest confident neighbours of flagged samples
    neighbours = _neighbours(store, classifier, fitted, source, [s for s in good if s["flagged"]], batch_size,
                             threshold.score)
    result = {
        "config": store.config,
        "counts": {"samples": len(samples), "errors": len(samples) - len(good),
                   "flagged": sum(s["flagged"] for s in good), "property_sample": len(picked_ids),
                   "accuracy": float(np.mean([c for c in correct if c is not None])) if any(
                       c is not None for c in correct) else None},
        "properties": ranking, "slices": slices, "columns_left_out": columns_left_out(meta_rows),
        "neighbours": neighbours,
        "errors": [{"id": s["id"], "reason": s["error"]} for s in samples if s["error"]],
        "flag_score": store.get_meta("flag_score"),
        "image_size": store.get_meta("image_size"),  # (H, W) every image was read at
        "model_notes": store.get_meta("model_notes") or [],  # what is wrong with the model's outputs, if anything
        "input_check": store.get_meta("input_check") or None,
        "edit_ranges": store.get_meta("edit_ranges"),
        "engine": store.get_meta("engine"),
        "timing": {"property_seconds": store.get_meta("audit_property_seconds"),
                   "total_seconds": round(time.perf_counter() - t0, 2)},
    }
    path = store.out / "audit.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=json_default))
    tmp.replace(path)
    render_audit(store, result)
    return result


def _audit_ranges(fitted, flagged: Sequence[bool], statistics: dict[str, Tensor] | None = None,
                  sample: Tensor | None = None) -> EditRanges | None:
    """How far the audit's parametric edits go: the fitted folder's edit ranges, else those of the sample's trusted
    (unflagged) images (all of them when fewer than 10 are trusted), from their ``statistics`` stored while
    scoring (else measured on the ``sample`` images)."""
    stored = fitted.manifest.get("edit_ranges") if fitted is not None else None
    if stored:
        return EditRanges.from_dict(stored)
    n = len(flagged)
    trusted = ~torch.as_tensor(list(flagged), dtype=torch.bool) if n else torch.zeros(0, dtype=torch.bool)
    keep = trusted if int(trusted.sum()) >= 10 else torch.ones(n, dtype=torch.bool)
    if int(keep.sum()) < 2:
        return None
    source = f"{int(keep.sum())} {'trusted ' if int(trusted.sum()) >= 10 else ''}images of the audited sample"
    if statistics is not None:
        return EditRanges.from_values({k: v[keep] for k, v in statistics.items()}, source=source)
    return EditRanges.measure(sample[keep], source=source)


def _stored_statistics(samples: Sequence[dict[str, Any]]) -> dict[str, Tensor] | None:
    """Every :data:`PROPERTY_STATISTICS` value of ``samples``, as stored while scoring; None if any is missing (a
    run scored by an older cfx)."""
    try:
        return {name: torch.tensor([float(s["metadata"]["_stats"][name]) for s in samples])
                for name in PROPERTY_STATISTICS}
    except (KeyError, TypeError):
        return None


def _check_property_names(properties, nuisance) -> None:
    """Refuse names that no editor measures on any data (parametric editors and every re-rendering world's
    attributes); :func:`_check_properties` then checks them against what this data supports."""
    known = {e.property for e in parametric_editors()} | {name for world in WORLDS.values()
                                                          for name in getattr(world, "bands", {})}
    unknown = sorted((set(properties or ()) | set(nuisance)) - known)
    if unknown:
        raise ValueError(f"unknown properties {unknown}; cfx measures: {', '.join(sorted(known))}")
    if properties and set(nuisance) - set(properties):
        raise ValueError(f"nuisance properties {sorted(set(nuisance) - set(properties))} are not among the measured "
                         f"properties {sorted(properties)}; add them to --properties")


def _check_properties(world, properties, nuisance) -> None:
    available = {e.property for e, _ in _editors(world)}
    measured = set(properties) if properties else available
    missing = sorted((set(nuisance) | measured) - available) or sorted(set(nuisance) - measured)
    if missing:
        raise ValueError(f"unknown or unmeasured properties {missing}; this data supports: "
                         f"{', '.join(sorted(available))}")


def _effect_json(e: PropertyEffect) -> dict[str, Any]:
    return {"property": e.property, "kind": e.kind, "epgm": e.epgm.tolist(), "p_value": e.p_value.tolist(),
            "flips": e.flips.tolist(), "predicted": e.predicted.tolist(),
            "span": e.span.tolist() if e.span is not None else None,
            "null_epgm": e.null_epgm.tolist() if e.null_epgm is not None else None}


class PropertyWorker:
    """A Ray actor's share of the audit's property edits: one chunk of the sample, measured as
    :func:`property_sensitivity` measures the whole (the chunk's offset keeps the null's random fields)."""

    def __init__(self, context: WorkerContext, image_size: tuple[int, int], properties, steps: int,
                 permutations: int, ranges: dict | None, seed: int, re_render: bool):
        self.classifier, _, self.source = open_worker(context)
        self.re_render = re_render  # whether the whole sample can be re-rendered (decided on the driver)
        self.size, self.properties, self.steps, self.permutations = image_size, properties, steps, permutations
        self.ranges = EditRanges.from_dict(ranges) if ranges is not None else None
        self.seed = seed

    def run(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        batch = read_batch(self.source, item["positions"], self.size)
        if batch.errors or batch.ids != list(item["ids"]):
            raise RuntimeError("the data source changed since it was scored; rerun the audit with --restart")
        metadata = batch.metadata if self.re_render else None
        effects = property_sensitivity(self.classifier, batch.images, metadata, self.properties, self.steps,
                                       self.permutations, batch.ids, ranges=self.ranges, seed=self.seed,
                                       offset=item["offset"])
        return [_effect_json(e) for e in effects]


def _ray_property_effects(store, engine, context, ids, position, image_size, properties, steps, permutations,
                          ranges, seed, progress, re_render: bool) -> list[dict[str, Any]]:
    """The property edits of the sample on an actor pool, in chunks of :data:`NULL_CHUNK` images; each chunk's
    result is stored as it arrives (a resumed audit sends only the missing chunks), then they are joined."""
    chunks = [ids[i:i + NULL_CHUNK] for i in range(0, len(ids), NULL_CHUNK)]
    done = store.get_meta("audit_chunks") or {}
    if done and done.get("ids") != ids:
        done = {}
    parts = dict(done.get("parts", {}))
    items = [{"ids": c, "positions": [position[sid] for sid in c], "offset": k * NULL_CHUNK, "chunk": k}
             for k, c in enumerate(chunks) if str(k) not in parts]
    worker = {"context": context, "image_size": image_size, "properties": properties, "steps": steps,
              "permutations": permutations, "ranges": ranges.to_dict() if ranges is not None else None, "seed": seed,
              "re_render": re_render}
    bar = tqdm(total=len(ids), initial=len(ids) - sum(len(i["ids"]) for i in items), desc="property edits",
               unit="img", disable=not progress)
    for item, effects in zip(items, ray_map(engine, PropertyWorker, worker, items)):
        parts[str(item["chunk"])] = effects
        with store.db:
            store.set_meta("audit_chunks", {"ids": ids, "parts": parts})
        bar.update(len(item["ids"]))
    bar.close()
    ordered = [parts[str(k)] for k in range(len(chunks))]
    joined = []
    for j, first in enumerate(ordered[0]):
        entry = dict(first)
        for key in ("epgm", "p_value", "flips", "predicted", "span", "null_epgm"):
            entry[key] = None if first[key] is None else [v for part in ordered for v in part[j][key]]
        joined.append(entry)
    return joined


def _basic_statistics(images: Tensor) -> dict[str, Tensor]:
    """Per image, every statistic of :data:`cfx.generators.PROPERTY_STATISTICS` (brightness, contrast, saturation
    and high-frequency energy, each computed once): the binned slices use the first three, the audit's edit
    ranges all of them."""
    computed: dict[Any, Tensor] = {}
    return {name: computed.setdefault(fn, fn(images)) for name, fn in PROPERTY_STATISTICS.items()}


def _store_examples(store, effects_json, ids, images_of, world, attributes, per_property: int = 3) -> None:
    """For each property, the samples it moves most, with the original and its most-edited version
    (``images_of(indices)`` reads those samples' images)."""
    editors = {e.property: (e, k) for e, k in _editors(world)}
    images = {}
    for entry in effects_json:
        editor, kind = editors[entry["property"]]
        top = np.argsort(-np.array(entry["epgm"]))[:per_property]
        x_top = images_of(top.tolist())
        direction = editor.directions[0]
        end = editor.sweep(direction, steps=2)[-1:]
        if kind == "re-rendering":
            sub = {k: v[torch.as_tensor(top)] for k, v in attributes.items()}
            seq = editor.edit(None, end, attributes=sub)
        else:
            seq = editor.edit(x_top, end)
        for j, i in enumerate(top.tolist()):
            images[(ids[i], "original")] = x_top[j]
            images[(ids[i], f"edit:{entry['property']}")] = seq[j, -1]
    store.add_explanations([], images)


def _neighbours(store, classifier, fitted, source, flagged: list[dict], batch_size: int, score: str) -> dict[str, Any]:
    """For flagged samples: the class of the nearest trusted image and whether it agrees with the prediction and
    with the true label. With a fitted folder, in its latent index (confident calibration images, the label is
    theirs); without one, among the run's most trusted images in feature space (the class is the model's
    prediction for them)."""
    if fitted is not None:
        index = fitted.latent_index
        if index is None or not flagged:
            return {"available": index is not None, "n": 0}
        size = tuple(fitted.autoencoder.image_size)
        embed = lambda x: fitted.autoencoder.encode(resize(x, size))  # noqa: E731
        searched = "the fitted folder's confident calibration images (autoencoder latents)"
    else:
        reference = run_reference(store, classifier, source, score, batch_size) if flagged else None
        if reference is None:
            return {"available": False, "n": 0}
        index, embed = reference.index, reference.embed
        searched = f"{reference.description}, in {reference.to_dict()['search_space']}"
    wanted = {s["id"] for s in flagged[:500]}
    rows = []
    by_id = {s["id"]: s for s in flagged}
    for batch in iter_batches((r for r in source if r.id in wanted), batch_size, size=classifier.preprocessing.size):
        with torch.inference_mode():
            z = embed(batch.images)
        dist, pos = index.search(z, 1)
        for i, sid in enumerate(batch.ids):
            p = int(pos[i, 0])
            s = by_id[sid]
            nl = int(index.labels_[p])
            rows.append({"id": sid, "prediction": s["prediction"], "label": s["label"], "neighbour_id": index.ids_[p],
                         "neighbour_label": nl, "distance": float(dist[i, 0])})
    agree_pred = [r["neighbour_label"] == r["prediction"] for r in rows]
    agree_label = [r["neighbour_label"] == r["label"] for r in rows if r["label"] is not None]
    return {"available": True, "n": len(rows), "searched": searched,
            "share_agreeing_with_prediction": float(np.mean(agree_pred)) if rows else None,
            "share_agreeing_with_label": float(np.mean(agree_label)) if agree_label else None,
            "examples": rows[:50]}
