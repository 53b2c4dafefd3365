"""How often the screened edit search finds the full search's restoring edit, with pixelation screened like every
other editor (the previous setting) and swept at every strength (``Editor.discrete_strengths``, the current one).

Runs :func:`cfx.generators.sweep_edits` on the same images three ways (full, screened with pixelation screened,
screened with pixelation swept) and prints, for each screen, the share of images whose restoring edit agrees with the
full search's (same property and direction with the strength within one grid step, or both find nothing) and the
edited images run through the classifier per image.

    python bench/screen_agreement.py --model efficientnet --images 100 --seed 11
    python bench/screen_agreement.py --model demo:shapes --images 150 --seed 23

The images are those of ``bench/explain_cost.py`` (the least competent of a pool with causes applied; ``--seed``
draws the causes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cfx.generators import Pixelation, TrustTarget, parametric_editors, sweep_edits

from cfx.evidence import resolve_edit_ranges

sys.path.insert(0, str(Path(__file__).resolve().parent))
from explain_cost import agreement, data_arguments, load  # noqa: E402


def main() -> None:
    args = data_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), images=100,
                          seed=11).parse_args()
    model, fitted, images = load(args)
    target = TrustTarget.competency(model, fitted)
    ranges = resolve_edit_ranges("reference", fitted)
    run = lambda search: sweep_edits(model, target, images, parametric_editors(), ranges=ranges, search=search)
    full = run("full")
    rows = []
    for name, swept in (("pixelation screened (previous)", False), ("pixelation swept (current)", True)):
        Pixelation.discrete_strengths = swept
        try:
            screened = run("screened")
        finally:
            Pixelation.discrete_strengths = True
        rows.append((name, agreement(fitted, images, [vars(r) for r in full.restoring],
                                     [vars(r) for r in screened.restoring]),
                     screened.evaluated / len(images)))
    print(f"{args.model}, cause seed {args.seed}, {len(images)} images; the full search ran "
          f"{full.evaluated / len(images):.1f} edited images per image\n")
    print("| screen | agreement with the full search | edited images per image |\n|---|---|---|")
    for name, share, cost in rows:
        print(f"| {name} | {share:.3f} | {cost:.1f} |")


if __name__ == "__main__":
    main()
