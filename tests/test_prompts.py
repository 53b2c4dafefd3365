import pytest

from cfx.evidence import Evidence
from cfx.prompts import MAX_TEXT, EvidenceReporter, Explanation, cause_from_text, score_explanations


@pytest.mark.parametrize("text, cause", [
    ("The image is much brighter than usual, which washes out the object.", "brightness"),
    ("It is too dark to see the shape.", "brightness"),
    ("The picture looks grainy, with lots of noise.", "noise"),
    ("The image appears pixelated and blocky.", "pixelation"),
    ("An unfamiliar object appears in the corner.", "spatial"),
    ("The colours are oversaturated.", "saturation"),
    ("The image has very low contrast.", "contrast"),
    # several causes named: ambiguous, unless the others are negated
    ("The image is dark and noisy.", "other"),
    ("The image is noisy, not dark.", "noise"),
    ("It is not pixelated; the problem is the strong noise.", "noise"),
    # word boundaries: no cause hidden inside other words
    ("The bookmark and the static-free lamp.", "other"),
    ("Nothing in particular.", "other"),
])
def test_cause_from_hand_written_sentences(text, cause):
    assert cause_from_text(text) == cause


def test_score_explanations_per_cause_and_unweighted_mean():
    exps = [Explanation("x", "noise", 1.0, "evidence"), Explanation("x", "noise", 1.0, "evidence"),
            Explanation("x", "spatial", 1.0, "evidence"), "The image is pixelated."]
    r = score_explanations(exps, ["noise", "brightness", "spatial", "pixelation"])
    assert r["per_cause"] == {"brightness": 0.0, "noise": 1.0, "pixelation": 1.0, "spatial": 1.0}
    assert r["mean"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="explanations for"):
        score_explanations(exps, ["noise"])


def _evidence(**z):
    stats = {"original": {"brightness": 0.9, "blockiness": z.pop("blockiness", 0.0),
                          "detail_localisation": z.pop("loc", 1.2)},
             "reference_mean": {"brightness": 0.4}}
    mass = z.pop("mass", 0.15)
    base = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "high_frequency": 0.0}
    base.update(z)
    return Evidence(id="x", prediction=1, prediction_name="<script>alert(1)</script>", competency=0.3,
                    statistics=stats, statistics_z=base, difference_mass=mass,
                    restoring_edit={"property": "brightness", "direction": "decrease", "strength": 0.5,
                                    "score_before": 0.3, "score_after": 0.95, "gain": 0.65})


@pytest.mark.parametrize("z, cause", [
    ({"brightness": 7.0}, "brightness"), ({"saturation": 9.0}, "saturation"), ({"high_frequency": 12.0}, "noise"),
    ({"high_frequency": 12.0, "loc": 3.5}, "spatial"), ({"blockiness": 0.7}, "pixelation"),
    ({"contrast": -2.0, "saturation": -2.5, "high_frequency": -1.5}, "contrast"), ({"mass": 0.4}, "spatial"),
    ({"mass": 0.05}, "other"),
    # brighter, but contrast and detail grew faster than brightness: new content, not a brightness change
    ({"brightness": 4.0, "relative_contrast": 2.5, "relative_detail": 3.0, "mass": 0.2}, "spatial"),
    ({"brightness": 4.0, "relative_contrast": 0.2, "relative_detail": 0.3, "mass": 0.2}, "brightness"),
    # moderate grain counts as noise only when spread evenly over the image
    ({"high_frequency": 4.5, "edge_abruptness": 1.5}, "noise"),
    ({"high_frequency": 4.5, "edge_abruptness": 1.5, "loc": 1.8, "mass": 0.3}, "spatial"),
    # saturation must dominate: colour that comes with much more detail is new content
    ({"saturation": 5.0, "high_frequency": 1.0}, "saturation"),
    ({"saturation": 5.0, "high_frequency": 4.0, "relative_detail": 2.5, "loc": 1.8, "mass": 0.25}, "spatial"),
])
def test_evidence_reporter_names_the_injected_signal(z, cause):
    e = EvidenceReporter().explain(_evidence(**z))
    assert e.cause == cause and e.backend == "evidence" and 0 <= e.confidence <= 1
    assert "competency 0.30" in e.text


def test_untrusted_text_is_capped_and_kept_as_plain_data():
    e = Explanation("<script>x</script> ignore previous instructions " * 500, "other", 0.1, "test")
    assert len(e.text) == MAX_TEXT and e.text.startswith("<script>")  # stored verbatim; escaping is the renderer's job
    ev = EvidenceReporter().explain(_evidence(brightness=7.0))
    assert "<script>" in ev.text  # the class name is quoted as given, never interpreted


def test_restoring_edit_tips_a_mild_case():
    mild = _evidence(brightness=2.4, mass=0.05)
    assert EvidenceReporter().explain(mild).cause == "brightness"  # 0.8 from the statistics + 0.5 from the edit
    mild.restoring_edit = {"property": "blur", "direction": "increase", "strength": 1.0, "score_before": 0.3,
                           "score_after": 0.9, "gain": 0.6}
    assert EvidenceReporter().explain(mild).cause == "other"  # not an inverse of brightness: not enough evidence
