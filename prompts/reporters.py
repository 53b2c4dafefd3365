"""Reporters turn an :class:`~cfx.evidence.Evidence` record into an :class:`Explanation`.

:class:`EvidenceReporter` is the offline default: no model, it infers the most likely cause of low competency from
the measured evidence alone and says why in one or two sentences with the numbers behind them.

Every threshold is a z-score against the reference images (the fitted folder's confident calibration images, or
the run's most trusted images without one), so the same rules hold on data whose typical look differs: one
threshold ``z_threshold`` (2) for the global changes, twice it for blockiness, and a few z thresholds for the
signs of new content. Cause signals (each 1 at its threshold):

- brightness, contrast, saturation: the z-score of the image's departure along that global change
  (:class:`cfx.evidence.FactorModel`: the path the change's known cause moves the reference images along in log
  brightness, contrast, saturation and detail, in the reference's Mahalanobis metric), in either direction (too
  dark or too bright, washed out or harsh, desaturated or over-saturated). Full strength for the change that explains
  the image best, half for the others. The paths are measured on the reference, so over-exposure that clips the
  highlights (and with them contrast and colour) still reads as brightness. Saturation never counts when the colour
  sits in one region (z(colour localisation) ≥ T). Harsh contrast has a second sign: pixels clipped to black and
  to white at once (z(two-sided clipping) / T counts for contrast when contrast went up), which no other cause makes;
- noise: the z-score along the detail change (more fine detail than the image's contrast explains), halved unless
  detail is what explains the image best, halved unless the detail is abrupt (z(edge abruptness) ≥ 1: pixel-level,
  not natural edges), halved unless it is spread evenly (detail localisation < 1.5); never when the image is blocky
  or the detail sits in one region (z(detail localisation) ≥ T);
- blur: the z-score along the detail change the other way (less fine detail than the image's look explains),
  halved unless detail is what explains the image best, halved unless the edges are smooth (z(edge abruptness) ≤
  −1: darkening or flattening an image scales its Laplacian and gradient alike, blur lowers the first more); never
  when the image is blocky;
- pixelation: z(blockiness) over twice the threshold (equal pixels inside nearest-neighbour blocks, not across their
  edges), halved unless the detail is very abrupt (z(edge abruptness) ≥ 2: steps between uniform blocks);
- spatial (unfamiliar content): the change to the counterfactual is localised (difference mass ≥ 0.27, the share of
  the change carried by a tenth of the pixels: 0.1 for a change spread evenly), fine detail sits in one region
  (z(detail localisation) ≥ T), more smooth detail than the image's contrast explains (z(relative detail) ≥ 1.5 when
  the detail is not abrupt), or the border tiles disagree (z of either border imbalance ≥ 2.5). Colour in one
  region is not counted: brightening an image until its channels clip moves it as well.

A departure confined to one region (:class:`cfx.evidence.RegionModel`: outside its most departing square region
the image is as typical as the reference, z(outside-region departure) ≤ 1) is not a global change: brightness,
contrast and saturation are halved (two-sided clipping still counts in full), and their strength, or the region's
own departure z / T (not for blocky images), counts for unfamiliar content. This comes before the restoring edit:
an edit that undoes a cause counts for that cause, not for the content.

A restoring edit that undoes a cause in the direction measured (brighter for a dark image, less contrast for a
harsh one, denoise for extra detail, sharpen for missing detail) and raises the trust score by at least 0.3 adds 0.5 to that cause. The
strongest signal wins; when none reaches 1 the explanation is "other" (no single cause), with the evidence. The
confidence is the winner's share of the two strongest (0 for "other", which names no cause). The thresholds were set
on the demo world's shapes (seed 0, grid strengths) and are reported on fresh shapes, colourised digits and
photographs (``bench/explanations.py``, ``docs/results.md``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from collections.abc import Callable
from typing import Any, Sequence

from torch import Tensor

from cfx.core.shifts import SHIFTS
from cfx.evidence import FACTOR_PATHS, Evidence, confined_to_region

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


_REGIONAL = ("brightness", "contrast", "saturation")  # the global changes that content over one region also makes
_NAMES = {"brightness": "brightness", "contrast": "contrast", "saturation": "colour saturation",
          "high_frequency": "high-frequency energy (grain)", "blockiness": "blockiness"}


#: (property, direction) of a restoring edit → the cause it undoes, from the shifts' declarations.
_INVERSE_EDITS = {edit: shift.name for shift in SHIFTS.values() for edit in shift.inverse_edits}
#: cause → the global changes it makes, as (change, +1 more / −1 less): brightness both ways, noise more detail, blur
#: less detail.
_CHANGES_OF_CAUSE: dict[str, list[tuple[str, float]]] = {}
for (_change, _direction), (_cause, _) in FACTOR_PATHS.items():
    _CHANGES_OF_CAUSE.setdefault(_cause, []).append((_change, 1.0 if _direction == "increase" else -1.0))


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
    """Explains from the measured evidence alone (no model, no network). Every threshold is a z-score against the
    reference images (see the module doc)."""

    backend = "evidence"

    def __init__(self, z_threshold: float = 2.0, mass_threshold: float = 0.27, restore_gain: float = 0.3,
                 relative_threshold: float = 1.5, abrupt_threshold: float = 1.0, spread_threshold: float = 1.5,
                 imbalance_threshold: float = 2.5, local_threshold: float = 1.0):
        for name, value in (("z_threshold", z_threshold), ("mass_threshold", mass_threshold),
                            ("relative_threshold", relative_threshold), ("spread_threshold", spread_threshold),
                            ("imbalance_threshold", imbalance_threshold)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.z_threshold, self.mass_threshold = z_threshold, mass_threshold
        self.restore_gain = restore_gain
        self.relative_threshold, self.abrupt_threshold = relative_threshold, abrupt_threshold
        self.spread_threshold, self.imbalance_threshold = spread_threshold, imbalance_threshold
        self.local_threshold = float(local_threshold)

    @staticmethod
    def shifts(ev: Evidence) -> dict[str, float]:
        """The z-score of each global change (brightness, contrast, saturation, detail): the evidence's own
        (:class:`cfx.evidence.FactorModel`), else, for records made before it, the plain z-scores."""
        if ev.shift_z:
            return {k: float(ev.shift_z.get(k, 0.0)) for k in ("brightness", "contrast", "saturation", "detail")}
        z = ev.statistics_z or {}
        return {"brightness": z.get("brightness", 0.0), "contrast": z.get("contrast", 0.0),
                "saturation": z.get("saturation", 0.0), "detail": z.get("high_frequency", 0.0)}

    def signals(self, ev: Evidence) -> dict[str, float]:
        """Strength of each cause's evidence, 1 at its threshold."""
        t = self.shifts(ev)
        z = ev.statistics_z or {}
        T = self.z_threshold
        best = max(t, key=lambda k: abs(t[k]))  # the one global change that explains the image's look best
        z_abrupt = z.get("edge_abruptness", 0.0)
        abrupt = z_abrupt >= self.abrupt_threshold
        orig = ev.statistics.get("original") or {}
        localised = z.get("detail_localisation", 0.0) >= T  # fine detail in one region, more than typical images
        spread = orig.get("detail_localisation", 2.0) < self.spread_threshold  # detail even over the whole image
        colour_localised = z.get("colour_localisation", 0.0) >= T
        blocky = z.get("blockiness", 0.0) / (2 * T)  # twice the threshold: flat regions are blocky by nature

        def global_change(name: str) -> float:  # full strength when it is the best explanation, half otherwise
            return abs(t[name]) / T * (1.0 if best == name else 0.5)

        # harsh contrast's signature: pixels clipped to black and to white at once, far more than in the reference
        clipped = z.get("two_sided_clipping", 0.0) / T if t["contrast"] > 0 else 0.0
        out = {
            "brightness": global_change("brightness"),
            "contrast": max(global_change("contrast"), clipped),
            "saturation": 0.0 if colour_localised else global_change("saturation"),
            "noise": (max(t["detail"], 0.0) / T * (1.0 if best == "detail" else 0.5) * (1.0 if abrupt else 0.5)
                      * (1.0 if spread else 0.5) if blocky < 1 and not localised else 0.0),
            # blur: less fine detail than the image's look explains, halved unless detail explains it best, halved
            # unless the edges are smooth (z(edge abruptness) ≤ −1: a dimmer or flatter image keeps its abruptness)
            "blur": (max(-t["detail"], 0.0) / T * (1.0 if best == "detail" else 0.5)
                     * (1.0 if z_abrupt <= -self.abrupt_threshold else 0.5) if blocky < 1 else 0.0),
            "pixelation": blocky * (1.0 if z_abrupt >= 2 * self.abrupt_threshold else 0.5),
            # unfamiliar content: a localised change to the counterfactual, fine detail confined to one region, more
            # (smooth, not pixel-level) detail than the contrast explains, or border tiles that disagree
            "spatial": max((ev.difference_mass or 0.0) / self.mass_threshold,
                           z.get("detail_localisation", 0.0) / T,
                           z.get("relative_detail", 0.0) / self.relative_threshold if not abrupt else 0.0,
                           max(z.get("border_brightness_imbalance", 0.0), z.get("border_detail_imbalance", 0.0))
                           / self.imbalance_threshold),
        }
        if self.confined(ev):
            # Outside one region the image is typical: its change of brightness, contrast or saturation is not
            # global. Those signals are halved (not two-sided clipping, which no content change makes) and their
            # strength counts for new content, as does the region's own departure (unless the image is blocky:
            # pixelation's blocks are not new content).
            moved = max(out["brightness"], global_change("contrast"), out["saturation"])
            out["brightness"] *= 0.5
            out["saturation"] *= 0.5
            out["contrast"] = max(0.5 * global_change("contrast"), clipped)  # clipping at both ends stays global
            inside = z.get("inside_region_departure", 0.0) / T if blocky < 1 else 0.0
            out["spatial"] = max(out["spatial"], moved, inside)
        # The restoring edit agrees: an edit that undoes the measured change (brighter for a dark image, less
        # contrast for a harsh one, ...) and really restores the trust score adds half a threshold to that cause.
        r = ev.restoring_edit or {}
        inverse = _INVERSE_EDITS.get((r.get("property"), r.get("direction")))
        if inverse is not None and r.get("gain", 0.0) >= self.restore_gain:
            changes = _CHANGES_OF_CAUSE.get(inverse, [])
            if not changes:  # a cause outside the global changes (unfamiliar content, pixelation)
                agrees = True
            elif len(changes) == 1:  # one way only: denoising undoes more detail, sharpening less
                change, sign = changes[0]
                agrees = sign * t[change] > 0
            else:  # both ways: the edit goes against the change it undoes (brightening undoes darkening)
                agrees = (1.0 if r.get("direction") == "decrease" else -1.0) * t[changes[0][0]] > 0
            if agrees:
                out[inverse] += 0.5
        return {k: max(0.0, float(v)) for k, v in out.items()}

    def confined(self, ev: Evidence) -> bool:
        """Whether the image's departure from the reference is confined to one region: outside its most departing
        region the image is as typical as the reference images (z(outside-region departure) ≤ ``local_threshold``).
        Records without the region statistics (older folders) are never confined."""
        return confined_to_region(ev.statistics_z, self.local_threshold)

    def explain(self, evidence: Evidence, image: Tensor | None = None,
                counterfactual: Tensor | None = None) -> Explanation:
        """The cause with the strongest evidence and why (the images are not needed: the evidence has it all);
        "other" (no single cause) when no cause reaches its threshold."""
        ev = evidence
        s = self.signals(ev)
        ranked = sorted(s.items(), key=lambda kv: -kv[1])
        (cause, top), (_, second) = ranked[0], ranked[1]
        if top < 1.0:  # no cause reaches its threshold: "no single cause", asserted with no confidence in a cause
            cause = "other"
        confidence = float(top / (top + second)) if top + second > 0 and cause != "other" else 0.0
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

        t = self.shifts(ev)

        def more(name: str, up: str, down: str) -> str:
            return up if t.get(name, 0.0) > 0 else down

        lead = {
            "brightness": (f"The image is much {more('brightness', 'brighter', 'darker')} than the images the model "
                           f"is confident about ({stat('brightness')}; z = {t['brightness']:+.1f} for a global "
                           "brightness change)."),
            "saturation": (f"The colours are far {more('saturation', 'more', 'less')} saturated than usual "
                           f"({stat('saturation')}; z = {t['saturation']:+.1f} for a global saturation change)."),
            "noise": (f"The image is grainy: it carries more fine detail, pixel noise, than its look explains "
                      f"({stat('high_frequency')}; z = {t['detail']:+.1f} for a global gain of fine detail)."),
            "blur": (f"The image is blurred, as if out of focus: it carries much less fine detail than usual "
                     f"({stat('high_frequency')}; z = {t['detail']:+.1f} for a global loss of detail)."),
            "pixelation": (f"The image is pixelated: it is made of uniform blocks (blockiness "
                           f"{orig.get('blockiness', 0):.2f}, near 0 for ordinary images)."),
            "contrast": (more("contrast", "The image is harsh: its contrast is much higher than usual",
                              "The image is washed out: its contrast is much lower than usual")
                         + f" ({stat('contrast')}; z = {t['contrast']:+.1f} for a global contrast change)"
                         + (f", and {orig.get('two_sided_clipping', 0.0):.0%} of its pixels are clipped to black and "
                            "to white at once." if t["contrast"] > 0 and z.get("two_sided_clipping", 0.0)
                            >= self.z_threshold else ".")),
            "spatial": ("Part of the image shows content the model has not seen in training: "
                        + (f"outside one region (about {ev.statistics.get('region', {}).get('area', 0.0):.0%} of the "
                           "image) it looks like the images the model is confident about (z = "
                           f"{z.get('outside_region_departure', 0.0):+.1f}), so what changed is confined to that region"
                           + (f", which departs from the same part of those images (z = "
                              f"{z['inside_region_departure']:+.1f})" if z.get("inside_region_departure", 0.0)
                              >= self.z_threshold else "") + "." if self.confined(ev) else
                           "the most similar image it is confident about differs mostly in one region (difference "
                           f"mass {ev.difference_mass if ev.difference_mass is not None else float('nan'):.2f}).")),
            "other": ("No single image property stands out as the reason (global changes against the reference: "
                      + ", ".join(f"{k} z = {v:+.1f}" for k, v in t.items()) + ")."
                      if ev.shift_z or ev.statistics_z else
                      "No single image property stands out as the reason; there were no reference images to compare "
                      "its image statistics with."),
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
