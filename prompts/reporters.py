"""Reporters turn an :class:`~cfx.evidence.Evidence` record into an :class:`Explanation`.

:class:`EvidenceReporter` is the offline default: no model, it infers the most likely cause of low competency from
the measured evidence alone and says why in one or two sentences with the numbers behind them.

Cause signals (z-scores are the original image's statistics against the confident reference images of the fitted
folder; see :func:`cfx.evidence.image_statistics`):

- brightness: |z(brightness)| ≥ 3 (too bright or too dark). Counted at half strength when a brighter image is not
  a scaled version of a familiar one: its relative contrast (contrast / brightness) or the imbalance of its border
  tiles' brightness has z ≥ 1.5 (new content brought the light, not a global change);
- saturation: z(saturation) ≥ 3 and more than twice z(high-frequency energy) (colour without new detail), not
  confined to one region (z(colour localisation) < 3);
- noise: z(high-frequency energy) ≥ 3 when the detail is spread evenly (detail localisation < 1.5), ≥ 6 otherwise;
  half strength unless the detail is abrupt (z(edge abruptness) ≥ 1: pixel-level, not natural edges); never when
  the detail sits in one region (localisation ≥ 2) or the image is blocky;
- pixelation: blockiness ≥ 0.1 (equal pixels inside nearest-neighbour blocks, not across their edges); half
  strength unless the detail is very abrupt (z(edge abruptness) ≥ 2: steps between uniform blocks);
- contrast: the image is flat: brightness ordinary but contrast, saturation and high-frequency energy all low
  (mean of their z-scores ≤ −1), or |z(contrast)| ≥ 3 without extra detail;
- spatial (unfamiliar content): the change to the counterfactual is localised (difference mass ≥ 0.27), extra fine
  detail or colour sits in one region, more (not pixel-level) detail than the brightness explains (z(relative
  detail) ≥ 1.5), the border tiles disagree (z of either border imbalance ≥ 2.5), or nothing global stands out.

The thresholds were set on the demo world's shapes (seed 0 causes) and checked on fresh causes (seed 1) and on
scikit-learn's digits, which they were not set on (``bench/explanations.py``).

A restoring edit that is the plain inverse of a cause (brightness either way, saturation down, contrast up,
denoise) and raises competency by at least 0.3 adds 0.5 to that cause. The strongest signal (each scaled to 1 at
its threshold) wins; the confidence is its share of the two strongest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from collections.abc import Callable
from typing import Any, Sequence

from torch import Tensor

from cfx.core.shifts import SHIFTS
from cfx.evidence import Evidence

__all__ = ["EvidenceReporter", "Explanation", "MAX_TEXT", "Reporter"]

MAX_TEXT = 2000  # explanation texts are capped: model output is untrusted data


@dataclass
class Explanation:
    """Why the model is not confident, in words, with a cause label and a confidence in [0, 1]."""

    text: str
    cause: str
    confidence: float
    backend: str
    prompt: str | None = None
    raw: Any = None
    signals: dict[str, float] = field(default_factory=dict)
    fallback: str | None = None  # why the configured back-end did not answer (its fallback wrote this)

    def __post_init__(self) -> None:
        self.text = str(self.text)[:MAX_TEXT]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_NAMES = {"brightness": "brightness", "contrast": "contrast", "saturation": "colour saturation",
          "high_frequency": "high-frequency energy (grain)", "blockiness": "blockiness"}


#: (property, direction) of a restoring edit → the cause it undoes, from the shifts' declarations.
_INVERSE_EDITS = {edit: shift.name for shift in SHIFTS.values() for edit in shift.inverse_edits}


class Reporter:
    """Base of every reporter. One verb: ``explain(evidence, image=None, counterfactual=None) -> Explanation``;
    ``explain_many`` explains several records at once (batched or concurrent back-ends override it)."""

    backend = "reporter"

    def explain(self, evidence: Evidence, image: Tensor | None = None,
                counterfactual: Tensor | None = None) -> Explanation:  # pragma: no cover - abstract
        raise NotImplementedError

    def explain_many(self, evidence: Sequence[Evidence], images: Sequence[Tensor | None] | None = None,
                     counterfactuals: Sequence[Tensor | None] | None = None,
                     on_result: Callable[[int, Explanation], None] | None = None) -> list[Explanation]:
        """One explanation per record; ``images`` and ``counterfactuals`` align with ``evidence`` when given.
        ``on_result(i, explanation)`` is called as each explanation is ready (to store it at once)."""
        evidence, images, counterfactuals = self._aligned(evidence, images, counterfactuals)
        out = []
        for i, (ev, im, cf) in enumerate(zip(evidence, images, counterfactuals)):
            out.append(self.explain(ev, im, cf))
            if on_result is not None:
                on_result(i, out[-1])
        return out

    @staticmethod
    def _aligned(evidence, images, counterfactuals) -> tuple[list, list, list]:
        n = len(evidence)
        images = list(images) if images is not None else [None] * n
        counterfactuals = list(counterfactuals) if counterfactuals is not None else [None] * n
        if not (len(images) == len(counterfactuals) == n):
            raise ValueError(f"give one image and one counterfactual (or None) per evidence record: {n} records, "
                             f"{len(images)} images, {len(counterfactuals)} counterfactuals")
        return list(evidence), images, counterfactuals


class EvidenceReporter(Reporter):
    """Explains from the measured evidence alone (no model, no network)."""

    backend = "evidence"

    def __init__(self, z_threshold: float = 3.0, flat_threshold: float = 1.0, block_threshold: float = 0.1,
                 mass_threshold: float = 0.27, localisation_threshold: float = 2.0, restore_gain: float = 0.3,
                 relative_threshold: float = 1.5, abrupt_threshold: float = 1.0, noise_threshold: float = 6.0,
                 spread_threshold: float = 1.5, imbalance_threshold: float = 2.5):
        self.z_threshold, self.flat_threshold = z_threshold, flat_threshold
        self.block_threshold, self.mass_threshold = block_threshold, mass_threshold
        self.localisation_threshold = localisation_threshold
        self.restore_gain = restore_gain
        self.relative_threshold, self.abrupt_threshold = relative_threshold, abrupt_threshold
        self.noise_threshold, self.spread_threshold = noise_threshold, spread_threshold
        self.imbalance_threshold = imbalance_threshold

    def signals(self, ev: Evidence) -> dict[str, float]:
        """Strength of each cause's evidence, 1 at its threshold."""
        z = ev.statistics_z or {}
        zb, zc, zs, zh = (z.get(k, 0.0) for k in ("brightness", "contrast", "saturation", "high_frequency"))
        # ratios that a global brightness change leaves alone, and how abrupt the fine detail is
        z_rel = z.get("relative_contrast", 0.0)
        z_abrupt = z.get("edge_abruptness", 0.0)
        orig = ev.statistics.get("original") or {}
        block = orig.get("blockiness", 0.0)
        localised = orig.get("detail_localisation", 1.0) >= self.localisation_threshold
        colour_localised = z.get("colour_localisation", 0.0) >= self.z_threshold  # more than in typical images
        flat = -(zc + zs + zh) / 3
        spread = orig.get("detail_localisation", 2.0) < self.spread_threshold  # detail even over the whole image
        detail = zh / self.z_threshold
        # a brighter image whose detail and contrast grew faster than its brightness holds new content
        scaled = zb < 0 or (z_rel < self.relative_threshold
                            and z.get("border_brightness_imbalance", 0.0) < self.relative_threshold)
        abrupt = z_abrupt >= self.abrupt_threshold
        out = {
            "brightness": abs(zb) / self.z_threshold * (1.0 if scaled else 0.5),
            "saturation": (abs(zs) / self.z_threshold if (zs > 0 or abs(zb) < self.z_threshold)
                           and not colour_localised and zs > 2 * zh else 0.0),
            "noise": (zh / (self.z_threshold if spread else self.noise_threshold) * (1.0 if abrupt else 0.5)
                      if block < self.block_threshold and not localised else 0.0),
            "pixelation": block / self.block_threshold * (1.0 if z_abrupt >= 2 * self.abrupt_threshold else 0.5),
            "contrast": max(flat / self.flat_threshold if abs(zb) < self.z_threshold else 0.0,
                            abs(zc) / self.z_threshold if zh < self.z_threshold else 0.0),
            # unfamiliar content: a localised change to the counterfactual, fine detail confined to one region, or
            # more (smooth, not pixel-level) detail than the image's brightness explains
            "spatial": max((ev.difference_mass or 0.0) / self.mass_threshold, detail if localised else 0.0,
                           abs(zs) / self.z_threshold if colour_localised else 0.0,
                           z.get("relative_detail", 0.0) / self.relative_threshold if not abrupt else 0.0,
                           max(z.get("border_brightness_imbalance", 0.0), z.get("border_detail_imbalance", 0.0))
                           / self.imbalance_threshold),
        }
        # The restoring edit agrees: an edit that is the plain inverse of a cause and really restores competency
        # adds to that cause (half a threshold), so mild cases that the statistics alone miss are still named.
        r = ev.restoring_edit or {}
        inverse = _INVERSE_EDITS.get((r.get("property"), r.get("direction")))
        if inverse is not None and r.get("gain", 0.0) >= self.restore_gain:
            out[inverse] += 0.5
        return {k: max(0.0, float(v)) for k, v in out.items()}

    def explain(self, evidence: Evidence, image: Tensor | None = None,
                counterfactual: Tensor | None = None) -> Explanation:
        """The cause with the strongest evidence and why (the images are not needed: the evidence has it all)."""
        ev = evidence
        s = self.signals(ev)
        ranked = sorted(s.items(), key=lambda kv: -kv[1])
        (cause, top), (_, second) = ranked[0], ranked[1]
        if top < 1.0:  # nothing stands out clearly: unfamiliar content if anything points there, else "other"
            cause = "spatial" if s["spatial"] >= 0.5 else "other"
        confidence = float(top / (top + second)) if top + second > 0 else 0.0
        return Explanation(self._text(ev, cause), cause, round(confidence, 3), self.backend, None, None, s)

    def _text(self, ev: Evidence, cause: str) -> str:
        z = ev.statistics_z or {}
        orig = ev.statistics.get("original", {})
        ref = ev.statistics.get("reference_mean", {})
        what = ev.prediction_name or f"class {ev.prediction}"
        trust = _trust_name(ev)

        def stat(key: str) -> str:
            if key in orig and key in ref and key in z:
                return f"{_NAMES[key]} {orig[key]:.3f} vs {ref[key]:.3f} typical, z = {z[key]:+.1f}"
            return _NAMES[key]

        lead = {
            "brightness": (f"The image is much {'brighter' if z.get('brightness', 0) > 0 else 'darker'} than the "
                           f"images the model is confident about ({stat('brightness')})."),
            "saturation": f"The colours are far more saturated than usual ({stat('saturation')}).",
            "noise": f"The image is grainy: it carries much more pixel noise than usual ({stat('high_frequency')}).",
            "pixelation": (f"The image is pixelated: it is made of uniform blocks (blockiness "
                           f"{orig.get('blockiness', 0):.2f}, near 0 for ordinary images)."),
            "contrast": (f"The image is washed out: contrast, colour and detail are all lower than usual "
                         f"({stat('contrast')})."),
            "spatial": ("Part of the image shows content the model has not seen in training: the most similar image "
                        f"it is confident about differs mostly in one region (difference mass "
                        f"{ev.difference_mass if ev.difference_mass is not None else float('nan'):.2f})."),
            "other": "No single image property stands out as the reason.",
        }[cause]
        r = ev.restoring_edit
        tail = ""
        if r and r.get("property") == "none":
            tail = f" No edit within the range of the reference images raises {trust}."
        elif r and r.get("gain", 0) > 0.05:
            tail = (f" Editing {r['property']} ({r['direction']}, strength {r['strength']:.2f}) raises {trust} "
                    f"from {r['score_before']:.2f} to {r['score_after']:.2f}.")
        head = (f"The model predicts {what} with competency {ev.competency:.2f}." if ev.competency is not None else
                f"The model predicts {what}, and the prediction is among the least trusted.")
        return f"{head} {lead}{tail}"[:2000]


def _trust_name(ev: Evidence) -> str:
    """What the restoring edit raised: competency (PaRCE), or the run-relative trust rank of a score."""
    if ev.target in (None, "parce"):
        return "competency"
    return f"its trust rank ({ev.target})"
