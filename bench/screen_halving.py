"""Could a screen in rounds (successive halving) choose the directions to sweep with fewer edited images?

The screened edit search (:func:`cfx.generators.sweep_edits`, ``search="screened"``) runs every restoring direction
at its 2nd, 5th and 8th strengths, then sweeps the three best directions at every strength. A screen in rounds
runs every direction at one strength first, keeps the best few, runs those at more strengths, and sweeps the best
three. This benchmark runs the full search once (``EditSweeps.scores``: the trust target at every direction and
strength), then replays each screen on that table. It prints, per screen, the share of images whose restoring edit
is the full search's (same direction, strength within one grid step, or both find nothing) and the edited images
run through the classifier per image, counting every strength run (pixelation is swept at every strength in every
screen, as cfx does; cfx skips its repeated block sizes, so its own counts are a few lower).

    python bench/screen_halving.py --model efficientnet --images 40 --seed 3
    python bench/screen_halving.py --model demo:shapes --images 150 --seed 23

The images are those of ``bench/explain_cost.py`` (``--seed`` draws the causes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from cfx.generators import TrustTarget, parametric_editors, sweep_edits

from cfx.evidence import resolve_edit_ranges

sys.path.insert(0, str(Path(__file__).resolve().parent))
from explain_cost import data_arguments, load  # noqa: E402

#: Screens as rounds of (0-based strengths run, directions kept after the round; None: all go to the final sweep).
SCREENS = {
    "2, 5, 8 → sweep 3 (cfx)": [((1, 4, 7), None)],
    "5 → keep 6 → 2, 8 → sweep 3": [((4,), 6), ((1, 7), None)],
    "5 → keep 7 → 2, 8 → sweep 3": [((4,), 7), ((1, 7), None)],
    "5 → keep 8 → 2, 8 → sweep 3": [((4,), 8), ((1, 7), None)],
    "2, 8 → keep 6 → 5 → sweep 3": [((1, 7), 6), ((4,), None)],
    "3, 6 → keep 6 → 1, 8 → sweep 3": [((2, 5), 6), ((0, 7), None)],
    "5 → keep 6 → 2, 8 → keep 4 → 3, 7 → sweep 3": [((4,), 6), ((1, 7), 4), ((2, 6), None)],
}


def replay(table: torch.Tensor, live: torch.Tensor, discrete: torch.Tensor, before: torch.Tensor, rounds,
           sweep: int = 3) -> tuple[float, float]:
    """Agreement with the full search and edited images per image of a screen replayed on ``table (N, K, S)``
    (the target at every direction and strength; ``live (N, K)``: the direction's range is not empty;
    ``discrete (K,)``: swept at every strength from the start)."""
    n, k, steps = table.shape
    neg = torch.full_like(table, -torch.inf)
    known = (live & discrete).unsqueeze(2).expand(-1, -1, steps).clone()
    active = live.clone()
    for cols, keep in rounds:
        run = torch.zeros(steps, dtype=torch.bool)
        run[list(cols)] = True
        known |= active.unsqueeze(2) & run.view(1, 1, -1)
        if keep is not None:
            best = torch.where(active, torch.where(known, table, neg).amax(2), -torch.inf)
            kept = torch.zeros_like(active)
            kept.scatter_(1, torch.argsort(best, dim=1, descending=True, stable=True)[:, :keep], True)
            active &= kept
    best = torch.where(live, torch.where(known, table, neg).amax(2), -torch.inf)
    final = torch.zeros_like(active)
    final.scatter_(1, torch.argsort(best, dim=1, descending=True, stable=True)[:, :sweep], True)
    known |= (final & live).unsqueeze(2)
    cost = float((known & live.unsqueeze(2)).sum()) / n
    full = torch.where(live.unsqueeze(2), table, before.view(-1, 1, 1).expand_as(table))

    def answer(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        top, where = values.max(2)
        gains = top - before.unsqueeze(1)
        direction = gains.argmax(1)   # the first maximum, as the product's search breaks ties
        return direction, where.gather(1, direction.view(-1, 1)).squeeze(1), gains.gather(1, direction.view(-1, 1))

    d_full, s_full, g_full = answer(full)
    screened = torch.where(known, table, neg)
    screened = torch.where(live.unsqueeze(2), screened, before.view(-1, 1, 1).expand_as(table))
    d_scr, s_scr, g_scr = answer(screened)
    none_full, none_scr = ~(g_full.squeeze(1) > 0), ~(g_scr.squeeze(1) > 0)
    same = torch.where(none_full | none_scr, none_full == none_scr,
                       (d_full == d_scr) & ((s_full - s_scr).abs() <= 1))
    return float(same.float().mean()), cost


def main() -> None:
    args = data_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), images=40,
                          seed=3).parse_args()
    model, fitted, images = load(args)
    ranges = resolve_edit_ranges("reference", fitted)
    editors = parametric_editors()
    full = sweep_edits(model, TrustTarget.competency(model, fitted), images, editors, ranges=ranges, search="full")
    keys = list(full.scores)
    directions = {f"{e.property}:{d}": (e, d) for e in editors if e.restores for d in e.directions}
    table = torch.stack([full.scores[k] for k in keys], 1)
    live = torch.stack([ranges.limits(directions[k][0], images, directions[k][1]) != directions[k][0].neutral
                        for k in keys], 1)
    discrete = torch.tensor([bool(getattr(directions[k][0], "discrete_strengths", False)) for k in keys])
    print(f"{args.model}, {len(images)} images, cause seed {args.seed}: agreement with the full search, edited "
          "images per image\n")
    print("| screen | agreement | edited images per image |\n|---|---|---|")
    for name, rounds in SCREENS.items():
        share, cost = replay(table, live, discrete, full.score_before, rounds)
        print(f"| {name} | {share:.3f} | {cost:.1f} |")


if __name__ == "__main__":
    main()
