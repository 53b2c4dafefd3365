import numpy as np
import pytest
import torch

from cfx.generators import (AttributeEditor, Blur, Brightness, Contrast, Denoise, HueShift, Noise, Occlusion,
                            Pixelation, Saturation, Sharpen, epgm, parametric_editors, property_curve,
                            restoring_edits, shuffle_test)


def test_epgm_by_hand():
    y = torch.tensor([0.0, 1.0, 3.0, 6.0])
    # np.gradient: ends one-sided (1, 3), inside central ((3-0)/2, (6-1)/2) → |g| = 1, 1.5, 2.5, 3 → mean 2
    assert float(epgm(y)) == pytest.approx(2.0)
    # in strength units with t = 0, 0.5, 1, 1.5 every gradient doubles
    assert float(epgm(y, [0, 0.5, 1.0, 1.5])) == pytest.approx(4.0)
    batch = epgm(torch.stack([y, -y]))
    assert batch.tolist() == pytest.approx([2.0, 2.0])


def test_shuffle_test_small_for_monotone_large_for_noise():
    smooth = torch.linspace(0, 1, 21)
    assert float(shuffle_test(smooth)) < 0.01
    rng = np.random.default_rng(3)
    noise = torch.tensor(rng.random(21))
    assert float(shuffle_test(noise)) > 0.05
    assert shuffle_test(torch.stack([smooth, noise])).shape == (2,)


def _stats(x):
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    lap = (4 * luma[:, 1:-1, 1:-1] - luma[:, :-2, 1:-1] - luma[:, 2:, 1:-1] - luma[:, 1:-1, :-2]
           - luma[:, 1:-1, 2:]).abs().mean((1, 2))
    return {
        "brightness": x.mean((1, 2, 3)),
        "contrast": luma.std((1, 2)),
        "saturation": (x.max(1).values - x.min(1).values).mean((1, 2)),
        "hf": lap,
        "blockiness": (x[:, :, :, 1:] == x[:, :, :, :-1]).float().mean((1, 2, 3)),
        "grey": ((x - 0.5).abs() < 1e-6).all(1).float().mean((1, 2)),
    }


@pytest.mark.parametrize("editor, stat, sign", [
    (Brightness(), "brightness", -1),       # first direction: decrease
    (Contrast(), "contrast", +1),
    (Saturation(), "saturation", -1),
    (Noise(), "hf", +1),
    (Denoise(), "hf", -1),
    (Pixelation(), "blockiness", +1),
    (Sharpen(), "hf", +1),
    (Blur(), "hf", -1),
    (Occlusion(), "grey", +1),
])
def test_parametric_editor_identity_and_monotone(editor, stat, sign):
    torch.manual_seed(0)
    x = torch.rand(3, 3, 24, 24) * 0.6 + 0.2
    torch.testing.assert_close(editor.apply(x, editor.neutral), x)
    seq = editor.edit(x, editor.sweep(steps=6))
    assert seq.shape == (3, 7, 3, 24, 24) and torch.equal(seq[:, 0], x)
    assert 0 <= seq.min() and seq.max() <= 1
    values = torch.stack([_stats(seq[:, i])[stat] for i in range(7)], 1)  # (3, 7)
    diffs = sign * (values[:, 1:] - values[:, :-1])
    assert (diffs >= -1e-6).all(), (editor.property, values)
    assert (values[:, -1] - values[:, 0]).abs().min() > 1e-3


def test_hue_shift_rotates_hue_and_keeps_luma():
    x = torch.zeros(1, 3, 4, 4)
    x[:, 0] = 0.8
    x[:, 1] = 0.3
    x[:, 2] = 0.2
    editor = HueShift()
    torch.testing.assert_close(editor.apply(x, 0.0), x)
    full = editor.apply(x, 0.5)
    assert not torch.allclose(full, x)
    luma = lambda t: 0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]  # noqa: E731
    torch.testing.assert_close(luma(editor.apply(x, 0.1)), luma(x), atol=1e-5, rtol=0)
    # a full turn is the identity
    torch.testing.assert_close(editor._apply(x, torch.tensor([1.0])), x, atol=1e-5, rtol=0)


def test_editor_validation():
    with pytest.raises(ValueError, match="must lie in"):
        Brightness().edit(torch.rand(1, 3, 8, 8), [10.0])
    with pytest.raises(ValueError, match="not 'sideways'"):
        Blur().sweep("sideways")
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        Blur().apply(torch.rand(3, 8, 8), 1.0)
    assert len(parametric_editors()) == 10
    from cfx.generators import restoring_editors

    assert "occlusion" not in {e.property for e in restoring_editors()} and len(restoring_editors()) == 9


def test_attribute_editor_is_a_true_intervention():
    from cfx.demo import ShapesWorld, WorldConfig, shapes_data

    data = shapes_data(WorldConfig(n_images=60, seed=2))
    world = ShapesWorld(WorldConfig(n_images=60, seed=2))
    attrs = {k: v[:4] for k, v in data.attributes.items()}
    editor = AttributeEditor(world, "background_hue")
    seq = editor.edit(None, [0.0, 0.25, 0.5], attributes=attrs)
    assert seq.shape == (4, 4, 3, 32, 32)
    torch.testing.assert_close(seq[:, 0], data.images[:4])
    torch.testing.assert_close(seq[:, 1], data.images[:4])  # offset 0 re-renders the same image
    assert not torch.allclose(seq[:, 3], seq[:, 0])
    with pytest.raises(ValueError, match="attribute must be"):
        AttributeEditor(world, "mood")


@pytest.mark.slow
def test_property_curve_and_restoring_view_on_the_demo_world(shapes_models):
    from cfx.demo import apply_cause, demo_fitted

    clf = shapes_models.classifier
    fitted = demo_fitted(shapes_models, progress=False)
    x, _ = shapes_models.data.split("test")
    curve = property_curve(clf, Brightness(), x[:16], torch.linspace(1, 5, 20))
    assert curve.probabilities.shape == (16, 21) and curve.epgm.shape == (16,)
    torch.testing.assert_close(curve.epgm, epgm(curve.probabilities).float())
    # brightening drives the demo classifier off its training band: strong, significant effects
    assert (curve.p_value < 0.05).float().mean() > 0.5
    score = lambda im: fitted.parce.competency_from(clf.logits(im), im)  # noqa: E731
    darkened_needed = apply_cause(x[:40], "brightness", 4.0)
    low = darkened_needed[fitted.parce.score(clf, darkened_needed) < 0.9]
    assert len(low) >= 10
    best = restoring_edits(score, low, steps=8)  # default: restoring_editors(), no occlusion
    named = [f"{b.property}:{b.direction}" for b in best]
    assert named.count("brightness:decrease") / len(named) > 0.6
    assert all(b.score_after >= b.score_before for b in best)
