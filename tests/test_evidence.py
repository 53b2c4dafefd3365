import pytest
import torch

from cfx.evidence import Evidence, collect_evidence, difference_mass, image_statistics


def test_image_statistics_by_hand():
    flat = torch.full((1, 3, 8, 8), 0.4)
    s = image_statistics(flat)
    assert float(s["brightness"]) == pytest.approx(0.4, abs=1e-6) and float(s["contrast"]) == pytest.approx(0, abs=1e-6)
    assert float(s["saturation"]) == pytest.approx(0, abs=1e-6) and float(s["high_frequency"]) == pytest.approx(0, abs=1e-6)
    assert float(s["blockiness"]) == pytest.approx(0.0)  # flat: as many equal pairs across block edges as inside
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1.0
    assert float(image_statistics(red)["saturation"]) == pytest.approx(1.0)
    noise = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ns = image_statistics(noise)
    assert abs(float(ns["blockiness"])) < 0.05 and float(ns["high_frequency"]) > 0.1
    blocky = noise[:, :, ::4, ::4].repeat_interleave(4, 2).repeat_interleave(4, 3)
    assert float(image_statistics(blocky)["blockiness"]) > 0.95  # all pairs inside blocks equal, none across


def test_difference_mass_tells_local_from_global_changes():
    x = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    patch = x.clone()
    patch[0, :, 2:8, 2:8] = 1 - patch[0, :, 2:8, 2:8]
    patch[1] = (x[1] + 0.1).clamp(0, 1)
    mass = difference_mass(x, patch)
    assert mass[0] > 0.9 and mass[1] < 0.2


def test_evidence_json_round_trip():
    ev = Evidence(id="a", prediction=2, prediction_name="cat", scores={"msp": 0.5}, competency=0.4,
                  counterfactuals=[{"method": "lgd", "score_after": 0.95}], statistics_z={"brightness": 7.1},
                  restoring_edit={"property": "brightness", "direction": "decrease", "gain": 0.4})
    again = Evidence.from_json(ev.to_json())
    assert again == ev


@pytest.mark.slow
def test_collect_evidence_on_demo_cause_images(shapes_models):
    from cfx.demo import apply_cause, demo_fitted

    clf = shapes_models.classifier
    fitted = demo_fitted(shapes_models, progress=False)
    x, y = shapes_models.data.split("test")
    bright = apply_cause(x[:20], "brightness", 4.0)
    evs = collect_evidence(clf, fitted, bright, ids=[f"b{i}" for i in range(20)], labels=y[:20])
    assert len(evs) == 20 and evs[0].id == "b0" and evs[0].label == int(y[0])
    assert {c["method"] for c in evs[0].counterfactuals} == {"reco", "lgd", "lnn"} and evs[0].neighbour
    assert {c["property"] for c in evs[0].property_curves} >= {"brightness", "noise"}
    # the measured statistics point at the injected cause: far brighter than the confident reference images
    assert sum(e.statistics_z["brightness"] > 3 for e in evs) >= 15
    assert Evidence.from_json(evs[0].to_json()) == evs[0]
