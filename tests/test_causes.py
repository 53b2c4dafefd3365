"""Causes in both directions, explained on data the reporter's thresholds were not set on.

scikit-learn's digits, colourised (``factories.colour_digits``), a plain CNN trained here, a fitted folder: images
darkened, brightened, made harsh or washed out and over-saturated at strengths drawn at random, kept when their
competency fell below the threshold, must be explained by the cause that was injected (the known truth).
"""

from __future__ import annotations

import pytest
import torch
from factories import colour_digits

import cfx
from cfx.core.nets import SmallCNN
from cfx.core.shifts import CAUSE_DIRECTIONS, SHIFTS
from cfx.core.training import train_model
from cfx.demo import cause_benchmark, drawn_strengths


def test_every_cause_that_has_a_direction_goes_both_ways():
    two_way = {cause for cause, _ in CAUSE_DIRECTIONS if SHIFTS.get(cause).opposite}
    assert two_way == {"brightness", "contrast", "saturation"}
    assert ("brightness", "decrease") in CAUSE_DIRECTIONS and ("saturation", "decrease") in CAUSE_DIRECTIONS
    assert ("noise", "decrease") not in CAUSE_DIRECTIONS


def test_drawn_strengths_fall_between_grid_points_not_on_them():
    g = torch.Generator().manual_seed(0)
    grid = CAUSE_DIRECTIONS[("brightness", "decrease")]
    drawn = drawn_strengths(grid, 50, g)
    assert all(min(grid) <= k <= max(grid) for k in drawn)
    assert sum(k in grid for k in drawn) <= 2
    assert all(float(k).is_integer() for k in drawn_strengths((2.0, 8.0), 10, g, integer=True))
    with pytest.raises(ValueError, match="at least two"):
        drawn_strengths((1.5,), 3, g)


@pytest.mark.slow
def test_injected_causes_are_named_in_both_directions_on_colour_digits(tmp_path):
    x, y = colour_digits(n=1797, seed=0)
    torch.manual_seed(0)
    net = SmallCNN(10, image_size=32)
    train_model(net, x[:900], y[:900], epochs=20, batch_size=64, lr=1e-3, seed=0, desc="digits", progress=False)
    clf = cfx.Classifier.wrap(net.eval(), preprocessing=cfx.Preprocessing(size=(32, 32)))
    fitted = cfx.fit(clf, cfx.TensorSource(x[900:1400], y[900:1400]), tmp_path / "fitted", ae_epochs=8,
                     progress=False)
    groups = [("brightness", "decrease"), ("brightness", "increase"), ("contrast", "decrease"),
              ("contrast", "increase"), ("saturation", "increase")]
    r = cause_benchmark(clf, fitted, x[1400:], y[1400:], causes=groups, per_cause=16, seed=3, strengths="drawn")
    accuracy = {g: r["groups"][f"{g[0]}/{g[1]}"]["accuracy"] for g in groups}
    assert all(r["groups"][f"{g[0]}/{g[1]}"]["used"] >= 10 for g in groups), r["groups"]
    assert min(accuracy.values()) >= 0.6 and r["mean"] >= 0.8, accuracy
