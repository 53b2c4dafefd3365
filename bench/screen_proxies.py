"""Could a cheaper proxy choose which edit directions to sweep? Two proxies against the screen cfx uses.

The screened edit search (:func:`cfx.generators.sweep_edits`, ``search="screened"``) runs every restoring direction
at three strengths through the classifier, then sweeps the three best directions in full. This benchmark measures
two cheaper ways to pick the directions to sweep, on the same images:

* **low resolution**: the whole search (every direction at every strength) with the classifier fed images at half
  the side (a quarter of the pixels), its directions ranked by their best gain there;
* **one backward pass**: the trust target's gradient with respect to the image, and per direction the first-order
  gain ``gradient · (edited − original)`` at its first strength (the issue's suggestion).

For each proxy and each number ``k`` of directions swept in full at full resolution, it prints the share of images
whose restoring edit is the full search's (it is exactly when the full search's best direction is among the ``k``,
or the full search finds nothing), with the current screen's share beside it.

    python bench/screen_proxies.py --model efficientnet --images 40 --seed 3

The images are those of ``bench/explain_cost.py`` (``--seed`` draws the causes).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from pathlib import Path

import torch
from cfx.generators import TrustTarget, parametric_editors, sweep_edits

from cfx.evidence import resolve_edit_ranges

sys.path.insert(0, str(Path(__file__).resolve().parent))
from explain_cost import agreement, data_arguments, load  # noqa: E402


def first_order_gains(target, images, editors, ranges) -> list[dict[str, float]]:
    """Per image, per restoring direction, ``gradient · (edit at its first strength − image)``."""
    x = images.clone().requires_grad_(True)
    gradient = torch.autograd.grad(target(x).sum(), x)[0]
    gains: list[dict[str, float]] = [{} for _ in images]
    for editor in editors:
        if not editor.restores:
            continue
        for direction in editor.directions:
            anchor = editor.anchor(images) if hasattr(editor, "anchor") else None
            extra = {"anchor": anchor} if anchor is not None else {}
            s = ranges.strengths(editor, images, direction, 8, anchor=anchor)[:, :1]
            edited = editor.edited(images, s, **extra)[:, 0]
            linear = ((edited - images) * gradient).flatten(1).sum(1)
            for i, g in enumerate(linear.tolist()):
                gains[i][f"{editor.property}:{direction}"] = g
    return gains


def best_key(edit) -> str:
    return "none" if edit.property == "none" else f"{edit.property}:{edit.direction}"


def found_share(full, ranking: list[dict[str, float | None]], k: int) -> float:
    """Share of images whose full-search best direction is among the ``k`` ranked highest (or nothing restores)."""
    hits = 0
    for edit, gains in zip(full.restoring, ranking):
        order = sorted(gains, key=lambda key: -(gains[key] if gains[key] is not None else -float("inf")))
        hits += best_key(edit) == "none" or best_key(edit) in order[:k]
    return hits / len(ranking)


def main() -> None:
    args = data_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), images=40,
                          seed=3).parse_args()
    model, fitted, images = load(args)
    editors = parametric_editors()
    target = TrustTarget.competency(model, fitted)
    ranges = resolve_edit_ranges("reference", fitted)
    full = sweep_edits(model, target, images, editors, ranges=ranges, search="full")
    screened = sweep_edits(model, target, images, editors, ranges=ranges, search="screened")
    side = images.shape[-1]
    low_model = copy.copy(model)  # the same network, fed half-side images
    low_model.preprocessing = dataclasses.replace(model.preprocessing, size=(side // 2, side // 2))
    low = sweep_edits(low_model, TrustTarget.competency(low_model, fitted), images, editors, ranges=ranges,
                      search="full")
    gradient = first_order_gains(target, images, editors, ranges)
    n = len(images)
    current = agreement(fitted, images, [vars(r) for r in full.restoring], [vars(r) for r in screened.restoring])
    print(f"{args.model}, cause seed {args.seed}, {n} images at {side} px; full search {full.evaluated / n:.1f} "
          f"edited images per image; current screen: agreement {current:.3f} at {screened.evaluated / n:.1f}\n")
    print("| proxy | directions swept in full | agreement with the full search | passes per image (estimate) |\n"
          "|---|---|---|---|")
    low_cost = low.evaluated / n / 4
    for k in (3, 4, 6, 8):
        print(f"| low resolution ({side // 2} px) | {k} | {found_share(full, [r.all_gains for r in low.restoring], k):.3f}"
              f" | {low_cost + 8 * k:.0f} |")
    for k in (3, 4, 6, 8):
        print(f"| first-order gain, one backward pass | {k} | {found_share(full, gradient, k):.3f} | {3 + 8 * k:.0f} |")


if __name__ == "__main__":
    main()
