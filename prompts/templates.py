"""Prompt templates (Jinja2 files in ``templates/``) and the side-by-side image shown to vision-language models.

Templates: ``free_form`` (one image), ``free_form_counterfactual`` (original left, counterfactual right),
``multiple_choice`` and ``grounded`` (the counterfactual question plus the measured evidence in plain words). The
dataset description is the caller's: one or two first-person sentences on what the classifier was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from PIL import Image
from torch import Tensor

from cfx.core.shifts import SHIFTS
from cfx.evidence import Evidence, confined_to_region

__all__ = ["PROMPTS", "evidence_facts", "render_prompt", "side_by_side"]

PROMPTS = ("free_form", "free_form_counterfactual", "multiple_choice", "grounded")
DEFAULT_CHOICES = tuple(shift.choice for shift in SHIFTS.values())  # the multiple-choice answers, one per cause
_ENV = Environment(loader=FileSystemLoader(str(Path(__file__).parent / "templates")), undefined=StrictUndefined,
                   autoescape=False, keep_trailing_newline=False)  # plain-text prompts, not HTML


def evidence_facts(ev: Evidence) -> list[str]:
    """The measured evidence as short plain sentences for the grounded prompt."""
    facts = []
    if ev.competency is not None:
        facts.append(f"competency of the original: {ev.competency:.2f}")
    names = {"brightness": "brightness", "contrast": "contrast", "saturation": "colour saturation",
             "high_frequency": "fine detail / noise", "blockiness": "blockiness"}
    for key, label in names.items():
        z = (ev.statistics_z or {}).get(key)
        if z is not None and abs(z) >= 2:
            facts.append(f"{label} is {'far above' if z > 0 else 'far below'} that of trusted images (z = {z:+.1f})")
    changes = {"brightness": ("brighter", "darker"),
               "contrast": ("more contrast (harsh)", "less contrast (washed out)"),
               "saturation": ("more saturated", "less saturated"), "detail": ("more fine detail", "less fine detail")}
    confined = confined_to_region(ev.statistics_z)
    for key, (up, down) in changes.items():
        z = (ev.shift_z or {}).get(key)
        if z is not None and abs(z) >= 2:
            facts.append(f"the image looks {up if z > 0 else down} than trusted images (z = {z:+.1f})" if confined else
                         f"the whole image looks {up if z > 0 else down} than trusted images, as if changed globally "
                         f"(z = {z:+.1f})")
    if confined:
        z = ev.statistics_z
        area = (ev.statistics.get("region") or {}).get("area")
        facts.append("outside one region" + (f" (about {area:.0%} of the image)" if area is not None else "")
                     + " the image looks like trusted images: what departs from them is confined to that region "
                     f"(z = {z.get('inside_region_departure', 0.0):+.1f} inside it, "
                     f"{z.get('outside_region_departure', 0.0):+.1f} outside)")
    clipped = (ev.statistics_z or {}).get("two_sided_clipping")
    if clipped is not None and clipped >= 2:
        facts.append(f"far more pixels than in trusted images are clipped to pure black and to pure white at once "
                     f"(z = {clipped:+.1f})")
    r = ev.restoring_edit
    if r and r.get("property") == "none":
        facts.append("no edit that stays within the range of the reference images raises the trust score")
    elif r and r.get("gain", 0) > 0.05:
        raised = "competency" if ev.target in (None, "parce") else f"the trust rank among this data set ({ev.target})"
        facts.append(f"changing {r['property']} ({r['direction']}) raises {raised} from {r['score_before']:.2f} to "
                     f"{r['score_after']:.2f}")
    if ev.difference_mass is not None:
        facts.append(f"{'the change to the confident image is concentrated in one region' if ev.difference_mass >= 0.27 else 'the change to the confident image is spread over the whole image'}")
    return facts


def render_prompt(kind: str, dataset: str, evidence: Evidence | None = None,
                  choices: Sequence[str] = DEFAULT_CHOICES, with_counterfactual: bool = True) -> str:
    """Render one of :data:`PROMPTS` with a dataset description (and, for ``grounded``, the evidence)."""
    if kind not in PROMPTS:
        raise ValueError(f"unknown prompt {kind!r}; choose one of {PROMPTS}")
    if not dataset or not dataset.strip():
        raise ValueError("give a dataset description, e.g. 'I trained a classifier to tell six shapes apart.'")
    if kind == "grounded" and evidence is None:
        raise ValueError("the grounded prompt needs the evidence record")
    template = _ENV.get_template(f"{kind}.jinja")
    return template.render(dataset=dataset.strip(), choices=list(choices), with_counterfactual=with_counterfactual,
                           facts=evidence_facts(evidence) if evidence is not None else []).strip()


def _to_pil(image: Tensor) -> Image.Image:
    arr = (image.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def side_by_side(original: Tensor, counterfactual: Tensor | None, padding: int = 10, scale: int = 1) -> Image.Image:
    """Original left, counterfactual right, on white with ``padding`` pixels around and between (as in the explanation study).
    Without a counterfactual: the original alone, padded the same way."""
    if counterfactual is None:
        a = _to_pil(original)
        if scale > 1:
            a = a.resize((a.width * scale, a.height * scale), Image.NEAREST)
        canvas = Image.new("RGB", (a.width + 2 * padding, a.height + 2 * padding), "white")
        canvas.paste(a, (padding, padding))
        return canvas
    if original.dim() != 3 or counterfactual.dim() != 3:
        raise ValueError("give two single images (3, H, W)")
    if counterfactual.shape[-2:] != original.shape[-2:]:
        counterfactual = torch.nn.functional.interpolate(counterfactual[None], size=original.shape[-2:],
                                                         mode="bilinear")[0]
    a, b = _to_pil(original), _to_pil(counterfactual)
    if scale > 1:
        a, b = (im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in (a, b))
    canvas = Image.new("RGB", (a.width + b.width + 3 * padding, max(a.height, b.height) + 2 * padding), "white")
    canvas.paste(a, (padding, padding))
    canvas.paste(b, (2 * padding + a.width, padding))
    return canvas
