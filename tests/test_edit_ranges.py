"""Property edits within the data's range: calibrated sweeps, and restoring edits that keep the image's content.

The data are scikit-learn's handwritten digits, colourised on dark backgrounds (``colour_digits``): the world where
an unbounded brightness decrease turned flagged images black and called that "restoring". The references are
independent of the code under test: PIL's ImageStat and ImageEnhance, and numpy percentiles.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageStat

import cfx
from cfx.core.data import TensorSource
from cfx.core.models import Classifier, Preprocessing
from cfx.core.runstore import RunStore
from cfx.generators import EDITORS, Brightness, EditRanges, parametric_editors, restoring_edits

from test_zoo import PlainBNCNN, _trained, colour_digits


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def test_bands_are_the_reference_percentiles_and_sweeps_end_inside_them():
    x, _ = colour_digits(200)
    ranges = EditRanges.measure(x, source="digits")
    pil_brightness = np.array([ImageStat.Stat(_pil(im).convert("L")).mean[0] / 255 for im in x])
    lo, hi = ranges.bands["brightness"]
    assert abs(lo - np.percentile(pil_brightness, 1)) < 3e-3 and abs(hi - np.percentile(pil_brightness, 99)) < 3e-3
    dark = x[:8] * 0.3  # far below the band
    up = ranges.limits(Brightness(), dark, "increase")
    down = ranges.limits(Brightness(), dark, "decrease")
    assert (down == 1.0).all()  # never darker than an already too dark image
    brightened = np.array([ImageStat.Stat(ImageEnhance.Brightness(_pil(im)).enhance(float(k)).convert("L")).mean[0]
                           / 255 for im, k in zip(dark, up)])
    assert (brightened <= hi + 0.01).all() and (brightened >= lo - 0.01).all()  # PIL's edit lands in the band
    inside = x[8:16]
    s = ranges.strengths(EDITORS.get("contrast")(), inside, "decrease", 6)
    assert s.shape == (8, 6) and (s[:, -1] > 0).all()  # contrast never reaches flat grey
    assert EditRanges.from_dict(json.loads(json.dumps(ranges.to_dict()))).bands == ranges.bands


def test_binary_search_for_the_sweeps_end_agrees_with_the_full_scan_on_photographs():
    from factories import photo_tiles

    from cfx.core.images import resize
    from cfx.demo.causes import CAUSES, apply_cause
    from cfx.generators import MONOTONE_PROPERTIES

    tiles = resize(photo_tiles(36, seed=4), (64, 64))
    ranges = EditRanges.measure(tiles[:18])
    incoming = torch.cat([tiles[18:]] + [apply_cause(tiles[18:], cause, CAUSES[cause][3], seed=2)
                                         for cause in ("brightness", "contrast", "saturation", "noise",
                                                       "pixelation")])
    checked = 0
    for name in sorted(MONOTONE_PROPERTIES):
        editor = next(e for e in parametric_editors() if e.property == name)
        for direction in editor.directions:
            scan = ranges.limits(editor, incoming, direction, search="scan")
            bisect = ranges.limits(editor, incoming, direction)
            assert torch.equal(scan, bisect), (name, direction)
            checked += int((scan != editor.neutral).sum())
    assert checked > 100  # most sweeps go somewhere: the search has boundaries to find
    with pytest.raises(ValueError, match="'bisect' or 'scan'"):
        ranges.limits(Brightness(), incoming, "increase", search="binary")


@pytest.fixture(scope="module")
def digits_model():
    x, y = colour_digits(400)
    torch.manual_seed(0)
    net = PlainBNCNN()
    return Classifier.wrap(_trained(net, x[:300], y[:300]), preprocessing=Preprocessing(size=(32, 32))), x, y


def test_restoring_edits_keep_the_content_on_dark_digits(digits_model):
    model, x, _ = digits_model
    reference = x[:300]
    ranges = EditRanges.measure(reference)
    incoming = torch.cat([x[300:340] * 0.35, 0.5 + 0.3 * (x[340:380] - 0.5)])  # darkened and washed out
    score = lambda im: torch.softmax(model.logits(im), 1).amax(1)  # noqa: E731  (any trust score will do)
    unbounded = restoring_edits(score, incoming, steps=8)
    bounded = restoring_edits(score, incoming, steps=8, ranges=ranges)
    # independent band: numpy percentiles of PIL's brightness of the reference images
    ref_brightness = np.array([ImageStat.Stat(_pil(im).convert("L")).mean[0] / 255 for im in reference])
    lo, hi = np.percentile(ref_brightness, 1), np.percentile(ref_brightness, 99)

    def broken(edits) -> int:
        bad = 0
        for image, r in zip(incoming, edits):
            if r.property == "none":
                continue
            edited = EDITORS.get(r.property)().apply(image.unsqueeze(0), r.strength)[0]
            if r.property == "brightness":  # our edit against PIL's
                pil = np.asarray(ImageEnhance.Brightness(_pil(image)).enhance(r.strength), dtype=np.float32) / 255
                assert np.abs(pil - edited.permute(1, 2, 0).numpy()).max() < 2.5 / 255
            mean = ImageStat.Stat(_pil(edited).convert("L")).mean[0] / 255
            original = ImageStat.Stat(_pil(image).convert("L")).mean[0] / 255
            out_of_band = max(lo - mean, mean - hi, 0.0) > max(lo - original, original - hi, 0.0) + 0.01
            bad += int(edited.std() < 0.25 * image.std() or out_of_band)
        return bad

    assert broken(bounded) == 0
    assert sum(r.property != "none" for r in bounded) >= len(incoming) // 2  # most images still get an edit
    # the darkened ones are restored by brightening, never by darkening further
    assert all(not (r.property == "brightness" and r.direction == "decrease") for r in bounded[:40])
    print("unbounded restoring edits that break the bound:", broken(unbounded), "of", len(incoming))


@pytest.mark.slow
def test_explain_keeps_edits_in_range_and_says_so(digits_model, tmp_path):
    model, x, y = digits_model
    fitted = cfx.fit(model, TensorSource(x[:300], y[:300]), tmp_path / "fitted", ae_epochs=2, progress=False)
    assert fitted.manifest["edit_ranges"]["bands"]["brightness"][0] > 0
    incoming = torch.cat([x[300:330], x[330:345] * 0.35])
    run = cfx.explain(model, TensorSource(incoming), fitted, tmp_path / "review", flag_score="msp", flag_share=30,
                      generators=["reco"], progress=False)
    summary = json.loads((tmp_path / "review" / "summary.json").read_text())
    assert summary["edit_ranges"]["bands"] == fitted.manifest["edit_ranges"]["bands"]
    assert "property edits stay within the range" in (tmp_path / "review" / "report.html").read_text()
    store = RunStore(tmp_path / "review")
    explained = store.explanations()
    store.close()
    lo, hi = fitted.manifest["edit_ranges"]["bands"]["brightness"]
    for sid in (s["id"] for s in run.samples if s["flagged"]):
        ev = explained[sid]["evidence"]
        r = ev["restoring_edit"]
        text = explained[sid]["explanation"]["text"]
        if r["property"] == "none":
            assert "No edit within the range of the reference images" in text
        for curve in ev["property_curves"]:  # brightness curves never leave the band (PIL measures the end)
            if curve["property"] == "brightness":
                image = incoming[int(sid)] if sid.isdigit() else None
                if image is not None:
                    end = ImageEnhance.Brightness(_pil(image)).enhance(curve["strengths"][-1])
                    mean = ImageStat.Stat(end.convert("L")).mean[0] / 255
                    start = ImageStat.Stat(_pil(image).convert("L")).mean[0] / 255
                    assert max(lo - mean, mean - hi, 0) <= max(lo - start, start - hi, 0) + 0.02
    with pytest.raises(ValueError, match="edit_range"):
        cfx.explain(model, TensorSource(incoming), fitted, tmp_path / "other", edit_range="wide", progress=False)
