"""The shared property-edit sweep against the two searches it replaces, the screened search's accounting, and the
strength-free part of the denoise and sharpen edits against scipy."""

import numpy as np
import pytest
import torch
from cfx.generators import (
    Denoise,
    EditRanges,
    Pixelation,
    Sharpen,
    TrustTarget,
    parametric_editors,
    property_curve,
    restoring_edits,
    sweep_edits,
)
from factories import tiny_cnn
from scipy import ndimage

import cfx


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = cfx.Classifier.wrap(tiny_cnn().eval(), preprocessing=cfx.Preprocessing(size=(24, 24)))
    reference = torch.rand(40, 3, 24, 24) * 0.6 + 0.2
    images = torch.cat([reference[:6] * 0.3, reference[6:12]])  # half of them darkened
    msp = lambda logits, x=None: torch.softmax(logits, 1).max(1).values
    target = TrustTarget("msp", lambda x: msp(model.logits(x)), 0.9, "maximum softmax probability", msp)
    return model, images, target, EditRanges.measure(reference)


def test_full_sweep_gives_what_the_two_separate_searches_give(setup):
    model, images, target, ranges = setup
    editors = parametric_editors()
    sweeps = sweep_edits(model, target, images, editors, steps=6, ranges=ranges, search="full")
    separate = restoring_edits(lambda x: target(x), images, [e for e in editors if e.restores], steps=6,
                               ranges=ranges)
    assert [(r.property, r.direction, r.strength) for r in sweeps.restoring] == \
           [(r.property, r.direction, r.strength) for r in separate]
    np.testing.assert_allclose([r.score_after for r in sweeps.restoring], [r.score_after for r in separate],
                               atol=1e-6)
    assert [c.property for c in sweeps.curves] == [e.property for e in editors]  # one per editor, first direction
    for curve, editor in zip(sweeps.curves, editors):
        alone = property_curve(model, editor, images, ranges.strengths(editor, images, editor.directions[0], 6),
                               permutations=200)
        torch.testing.assert_close(curve.probabilities, alone.probabilities, atol=1e-6, rtol=0)
        torch.testing.assert_close(curve.p_value, alone.p_value)
        assert curve.direction == editor.directions[0] and torch.equal(curve.flips, alone.flips)
    # every image once, then each restoring direction (13) and occlusion's one at every strength, except where the
    # direction's range is empty for the image, and except edited images equal to the original or to the previous
    # strength's (pixelation's block sizes round): counted here by the distinct edited images of each sweep
    swept = [(e, d) for e in editors for d in (e.directions if e.restores else e.directions[:1])]
    live = [int((ranges.limits(e, images, d) != e.neutral).sum()) for e, d in swept]
    distinct = sum(_distinct_edits(e, images, ranges.strengths(e, images, d, 6)) for e, d in swept)
    assert sweeps.evaluated == len(images) + distinct < len(images) + 6 * sum(live)
    pixelated = _distinct_edits(Pixelation(), images, ranges.strengths(Pixelation(), images, "increase", 6))
    assert pixelated < 6 * len(images)  # block sizes 1 and repeats were skipped
    # the darkened images cannot be made darker: their gain in that direction is 0, known without a forward pass
    assert all(r.all_gains["brightness:decrease"] == 0.0 for r in sweeps.restoring[:6])


def _distinct_edits(editor, images, strengths) -> int:
    """How many edited images along each image's sweep differ from the original and from each other, over the
    images whose sweep goes anywhere (an empty range, all strengths neutral, is never edited)."""
    seq = editor.edit(images, strengths)
    count = 0
    for row, s in zip(seq, strengths):
        if (s == editor.neutral).all():
            continue
        count += len(torch.unique(row.flatten(1), dim=0)) - 1  # the original (first in the row) is among them
    return count


def test_screened_search_sweeps_only_the_most_promising_directions(setup):
    model, images, target, ranges = setup
    # photometric edits: along every non-empty sweep each strength gives its own edited image (a blur or a
    # pixelation can round to the original, and is then not run through the classifier: see the test above)
    editors = [e for e in parametric_editors() if e.property in ("brightness", "contrast", "saturation", "hue")]
    rows = sum(len(e.directions) for e in editors)
    full = sweep_edits(model, target, images, editors, steps=8, ranges=ranges, search="full")
    # screening every direction is the full search again
    everything = sweep_edits(model, target, images, editors, steps=8, ranges=ranges, search="screened",
                             screen_top=rows)
    assert [(r.property, r.direction, r.strength) for r in everything.restoring] == \
           [(r.property, r.direction, r.strength) for r in full.restoring]
    screened = sweep_edits(model, target, images, editors, steps=8, ranges=ranges, search="screened", screen_top=2,
                           screen_steps=(2, 5, 8))
    n = len(images)
    live = torch.stack([ranges.limits(e, images, d) != e.neutral for e in editors for d in e.directions], 1)
    # 3 strengths of every direction with a non-empty range, the other 5 for 2 per image (or fewer where fewer live)
    assert screened.evaluated == n + 3 * int(live.sum()) + 5 * int(live.sum(1).clamp_max(2).sum())
    assert len(screened.curves) >= 2 and all(c.rows is not None for c in screened.curves)
    per_image = torch.zeros(n, dtype=torch.long)
    for c in screened.curves:
        per_image[c.rows] += 1
        assert c.probabilities.shape == (len(c.rows), 9)
    assert per_image.tolist() == live.sum(1).clamp_max(2).tolist()  # each image's swept directions have a curve
    # the screened answer is one of the directions it swept in full, and never better than the full search's
    for r, f in zip(screened.restoring, full.restoring):
        assert r.score_after <= f.score_after + 1e-6
    # darkened images: brightening restores them, and the screen finds it as the full search does
    assert [r.property + ":" + r.direction for r in screened.restoring[:6]] == \
           [r.property + ":" + r.direction for r in full.restoring[:6]]


def test_the_score_tables_are_the_target_on_each_edited_image_and_nan_where_the_screen_skipped(setup):
    model, images, target, ranges = setup
    editors = [e for e in parametric_editors() if e.property in ("brightness", "contrast", "saturation")]
    full = sweep_edits(model, target, images, editors, steps=8, ranges=ranges, search="full")
    assert set(full.scores) == {f"{e.property}:{d}" for e in editors for d in e.directions}
    for e in editors:
        for d in e.directions:
            s = ranges.strengths(e, images, d, 8)
            with torch.inference_mode():  # the target on each edited image, computed here without the sweep
                expected = target(e.edit(images, s)[:, 1:].flatten(0, 1)).view(len(images), 8).clone()
            empty = (s == e.neutral).all(1)  # an empty range: the original's score at every strength
            expected = torch.where(empty.unsqueeze(1), full.score_before.unsqueeze(1), expected)
            got = full.scores[f"{e.property}:{d}"]
            lost = torch.isinf(got)  # edits that lose the content are −inf
            torch.testing.assert_close(got[~lost], expected[~lost].float(), atol=1e-5, rtol=0)
    screened = sweep_edits(model, target, images, editors, steps=8, ranges=ranges, search="screened", screen_top=2)
    for key, table in screened.scores.items():
        known = ~torch.isnan(table)
        assert known[:, [1, 4, 7]].all()  # the screen's strengths, for every image
        torch.testing.assert_close(table[known], full.scores[key][known])  # the same value where it was run
    swept = (~torch.isnan(torch.stack(list(screened.scores.values()), 1))).all(2).sum(1)
    assert (swept >= 2).all()  # each image swept its two best directions in full (more where ranges are empty)


def test_pixelation_is_swept_at_every_strength_not_screened(setup):
    model, images, target, _ = setup
    pixelation = Pixelation()
    editors = [e for e in parametric_editors() if e.property == "brightness"] + [pixelation]
    # over the editors' own ranges (block sizes 2 to 8), one screened strength and one direction swept per image:
    # pixelation's best gain is still the exhaustive search's, from every one of its strengths
    screened = sweep_edits(model, target, images, editors, steps=8, search="screened", screen_top=1,
                           screen_steps=(8,))
    alone = restoring_edits(lambda x: target(x), images, [pixelation], steps=8)
    for r, a in zip(screened.restoring, alone):
        assert r.all_gains["pixelation:increase"] == pytest.approx(a.all_gains["pixelation:increase"], abs=1e-5)
    curves = [c for c in screened.curves if c.property == "pixelation"]
    assert len(curves) == 1 and curves[0].rows.tolist() == list(range(len(images)))  # a curve for every image


def test_logits_already_computed_save_the_originals_forward_pass(setup):
    model, images, target, ranges = setup
    with torch.inference_mode():
        logits = model.logits(images)
    reused = sweep_edits(model, target, images, steps=4, ranges=ranges, search="screened", logits=logits,
                         screen_steps=(1, 3))
    again = sweep_edits(model, target, images, steps=4, ranges=ranges, search="screened", screen_steps=(1, 3))
    assert reused.evaluated == again.evaluated - len(images)
    assert [(r.property, r.direction, r.strength) for r in reused.restoring] == \
           [(r.property, r.direction, r.strength) for r in again.restoring]
    with pytest.raises(ValueError, match="logits must be"):
        sweep_edits(model, target, images, logits=logits[:3])


def test_sweep_edits_refuses_bad_settings(setup):
    model, images, target, _ = setup
    with pytest.raises(ValueError, match="search must be one of"):
        sweep_edits(model, target, images, search="fast")
    with pytest.raises(ValueError, match="screen_steps must be positions 1..8"):
        sweep_edits(model, target, images, steps=8, search="screened", screen_steps=(0, 9))
    with pytest.raises(ValueError, match="non-empty"):
        sweep_edits(model, target, images[:0])


def test_denoise_and_sharpen_sweeps_match_scipy_filters():
    x = torch.rand(3, 3, 20, 17)
    median = torch.from_numpy(ndimage.median_filter(x.numpy(), size=(1, 1, 3, 3), mode="nearest"))
    seq = Denoise().edit(x, [0.5, 1.0])
    torch.testing.assert_close(seq[:, 2], median.clamp(0, 1))
    torch.testing.assert_close(seq[:, 1], (x + 0.5 * (median - x)).clamp(0, 1))
    # unsharp mask with a sigma-1 Gaussian (truncated at 3 sigma, reflected at the border as scipy's "mirror")
    blurred = torch.from_numpy(ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 1, 1), mode="mirror", truncate=3.0))
    seq = Sharpen().edit(x, [2.0])
    torch.testing.assert_close(seq[:, 1], (x + 2.0 * (x - blurred)).clamp(0, 1), atol=1e-5, rtol=0)


def test_an_anchor_computed_once_gives_the_same_edits_and_ranges():
    torch.manual_seed(1)
    x = torch.rand(5, 3, 20, 17)
    ranges = EditRanges.measure(torch.rand(30, 3, 20, 17) * 0.5 + 0.25)
    for editor in (Denoise(), Sharpen()):
        anchor = editor.anchor(x)
        s = torch.linspace(0.1, 1.0, 5)
        torch.testing.assert_close(editor.apply(x, s, anchor=anchor), editor.apply(x, s))
        torch.testing.assert_close(editor.edit(x, [0.3, 0.9], anchor=anchor), editor.edit(x, [0.3, 0.9]))
        for search in ("scan", "bisect"):
            torch.testing.assert_close(ranges.limits(editor, x, editor.directions[0], search=search, anchor=anchor),
                                       ranges.limits(editor, x, editor.directions[0], search=search))
        with pytest.raises(ValueError, match="anchor must be"):
            editor.apply(x, 0.5, anchor=anchor[:2])


def test_unchanged_edits_are_exactly_the_equal_images_even_when_sums_tie():
    from cfx.generators.sweeps import _unchanged_edits

    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 8, 8, generator=g)
    seq = torch.rand(4, 5, 3, 8, 8, generator=g)
    seq[0, 0] = images[0]                                   # the original
    seq[1, 2] = seq[1, 1]                                   # the previous strength's
    seq[2, 0] = images[2].flip(-1)                          # same pixel sum, a different image
    seq[3, 3] = seq[3, 2].roll(1, -1)                       # same pixel sum as its predecessor, different
    original, repeated = _unchanged_edits(images, seq)
    naive_original = (seq == images.unsqueeze(1)).flatten(2).all(2)
    naive_repeated = torch.zeros_like(naive_original)
    naive_repeated[:, 1:] = (seq[:, 1:] == seq[:, :-1]).flatten(2).all(2)
    assert original.tolist() == naive_original.tolist() and repeated.tolist() == naive_repeated.tolist()
    assert original.sum() == 1 and repeated.sum() == 1


def test_edits_the_model_answers_with_nan_for_restore_nothing_and_the_rest_is_searched(setup):
    # a model that returns NaN logits for any image brighter than 0.6 on average: brightening edits reach it
    from cfx.trust.functional import msp

    model, images, _, ranges = setup

    class NaNBright(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, x):
            out = self.base(x)
            return torch.where((x.mean((1, 2, 3)) > 0.6).unsqueeze(1), torch.full_like(out, float("nan")), out)

    flaky = cfx.Classifier.wrap(NaNBright(model.model), preprocessing=model.preprocessing)
    target = TrustTarget("msp", lambda x: msp(flaky.logits(x)), 0.9, "maximum softmax probability",
                         lambda logits, x=None: msp(logits))  # cfx's msp refuses non-finite logits
    sweeps = sweep_edits(flaky, target, images, steps=6, search="full")   # no ranges: brightening goes far
    table = sweeps.scores["brightness:increase"]
    bright = torch.stack([(e.clamp(0, 1).mean((1, 2, 3)) > 0.6) for e in
                          [cfx.generators.parametric_editors()[0].edit(images, s.view(1, 1).expand(len(images), 1))[:, 1]
                           for s in cfx.generators.parametric_editors()[0].sweep("increase", 6)]], 1)
    assert bright.any() and torch.isneginf(table[bright]).all() and torch.isfinite(table[~bright]).all()
    for r in sweeps.restoring:  # what was chosen is never an edit the model had no answer for
        assert r.property == "none" or np.isfinite(r.score_after)
