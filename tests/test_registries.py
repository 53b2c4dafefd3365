"""Registries instead of special cases: kinds register by name, plugins register from the top, one verb per family."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from cfx.core.registry import Registry
from cfx.generators import EDITORS, Brightness, Contrast, parametric_editors
from cfx.trust.scores import SCORES, ScoreInputs, TrustScore, applicable_scores, score_batch
from cfx.trust.threshold import Threshold, resolve_threshold


def test_registry_names_order_and_errors():
    reg: Registry[int] = Registry("widget")
    reg.register("a", 1)

    @reg.register("b")
    def b():
        return 2

    assert reg.names() == ["a", "b"] and reg["a"] == 1 and "b" in reg and reg.find("zz") is None
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 3)
    reg.register("a", 3, replace=True)
    assert reg["a"] == 3
    with pytest.raises(KeyError, match="unknown widget 'zz'; known: a, b"):
        reg.get("zz")


class _LogitSpread(TrustScore):
    """A toy score: the spread of the logits (max − min)."""

    name = "toy_spread"
    description = "max minus min logit"

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        return inputs.logits.max(1).values - inputs.logits.min(1).values


def test_a_new_score_is_one_class_and_one_registration():
    from cfx.core.models import Classifier

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()
    clf = Classifier.wrap(net, num_classes=5)
    SCORES.register("toy_spread", _LogitSpread())
    try:
        assert "toy_spread" in applicable_scores(clf)
        x = torch.rand(4, 3, 16, 16)
        out = score_batch(clf, x, ["toy_spread", "msp"])
        with torch.inference_mode():
            z = clf.logits(x)
        torch.testing.assert_close(out.scores["toy_spread"], (z.max(1).values - z.min(1).values).float())
        assert _LogitSpread().fit(None) is not None  # logit scores learn nothing: fit is a no-op
    finally:
        SCORES.unregister("toy_spread")
    assert "toy_spread" not in SCORES


def test_fitted_scores_say_what_they_need():
    parce = SCORES["parce"]
    assert parce.needs_fit and "fitted" in parce.needs
    with pytest.raises(ValueError, match="needs a fitted folder"):
        parce.fit(None)
    assert not SCORES["msp"].needs_fit and SCORES["gradnorm"].needs == {"logits", "features"}


def test_editors_registry_holds_the_parametric_editors_in_order():
    assert [type(e) for e in parametric_editors()] == list(EDITORS.values())
    assert EDITORS.names()[:3] == ["brightness", "contrast", "saturation"]


@pytest.mark.parametrize("editor", [Brightness(), Contrast()])
def test_edit_takes_shared_or_per_image_strengths(editor):
    x = torch.rand(3, 3, 8, 8)
    per_image = torch.tensor([[0.5, 1.5], [1.0, 2.0], [0.25, 3.0]])
    seq = editor.edit(x, per_image)
    assert seq.shape == (3, 3, 3, 8, 8)
    for i in range(3):  # independent reference: each image alone with its own strengths
        torch.testing.assert_close(seq[i], editor.edit(x[i:i + 1], per_image[i])[0])
    torch.testing.assert_close(editor.edit(x, per_image[0]), editor.edit(x, per_image[0].expand(3, -1)))
    with pytest.raises(ValueError, match=r"per image \(N, S\) with N = 3"):
        editor.edit(x, torch.ones(2, 2))


def test_one_threshold_rule():
    cal = torch.arange(100, dtype=torch.float32)
    assert resolve_threshold("msp", 0.3) == Threshold("msp", 0.3)
    t = resolve_threshold("msp", percentile=10, calibration=cal)
    assert t.percentile == 10 and abs(t.value - 9.9) < 1e-6
    assert resolve_threshold("msp", default_percentile=20, calibration=cal).percentile == 20
    assert resolve_threshold("msp") is None
    with pytest.raises(ValueError, match="not several"):
        resolve_threshold("msp", 0.3, 10, calibration=cal)
    with pytest.raises(ValueError, match="between 0 and 100"):
        resolve_threshold("msp", percentile=100, calibration=cal)
    with pytest.raises(ValueError, match="needs calibration data"):
        resolve_threshold("msp", percentile=10)
    with pytest.raises(ValueError, match="finite"):
        resolve_threshold("msp", float("nan"))


def test_the_demo_plugin_is_found_through_its_entry_point_without_being_imported():
    code = ("import sys, cfx\n"
            "from cfx.core.models import ClassifierError\n"
            "assert 'cfx.demo' not in sys.modules\n"
            "try:\n    cfx.load_classifier('demo:no-such-world')\nexcept ClassifierError as exc:\n    print(exc)\n"
            "assert 'cfx.demo' in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "unknown demo model 'no-such-world'" in result.stdout


def test_core_never_pulls_in_the_upper_layers(tmp_path):
    code = ("import sys\nimport cfx.core, cfx.trust\n"
            "upper = sorted(m for m in sys.modules if m.startswith(('cfx.jobs', 'cfx.demo', 'cfx.cli', 'cfx.prompts',"
            " 'cfx.reports', 'cfx.generators', 'cfx.evidence')))\nprint(upper)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_reporters_share_one_verb():
    from cfx.evidence import Evidence
    from cfx.prompts import REPORTERS, EvidenceReporter, Reporter, make_reporter

    ev = Evidence(id="a", prediction=0, statistics_z={"brightness": 6.0}, statistics={"original": {}})
    rep = make_reporter("evidence")
    assert isinstance(rep, EvidenceReporter) and isinstance(rep, Reporter)
    one = rep.explain(ev, torch.rand(3, 8, 8), None)
    many = rep.explain_many([ev, ev])
    assert one.cause == "brightness" and [e.cause for e in many] == ["brightness", "brightness"]
    assert set(REPORTERS.names()) >= {"evidence", "transformers", "openai"}
    with pytest.raises(ValueError, match="unknown reporter"):
        make_reporter("carrier-pigeon")


def test_default_scores_cost_no_extra_pass():
    from cfx.core.models import Classifier
    from cfx.trust.scores import default_scores

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Dropout(0.1), torch.nn.Linear(4, 5)).eval()
    clf = Classifier.wrap(net, num_classes=5)
    assert "mc_dropout" in applicable_scores(clf) and "odin" in applicable_scores(clf)
    chosen = default_scores(clf)
    assert {"gradtrust", "gradtrust_topk", "msp", "gradnorm"} <= set(chosen)
    assert not {"odin", "mc_dropout", "oracle"} & set(chosen)
    assert all(not SCORES[name].extra_passes for name in chosen)


def test_a_share_of_the_run_is_fixed_on_the_run_scores():
    pending = resolve_threshold("msp", share=20)
    assert pending.pending and pending.value is None and pending.to_dict()["share"] == 20
    with pytest.raises(ValueError, match="fix it on the run's scores first"):
        from cfx.trust.threshold import flag

        flag(torch.rand(5), pending)
    scores = torch.arange(50, dtype=torch.float32)
    fixed = pending.fixed_on(scores)
    assert not fixed.pending and fixed.share == 20
    assert abs(fixed.value - float(np.percentile(scores.double().numpy(), 20))) < 1e-9
    with pytest.raises(ValueError, match="not several"):
        resolve_threshold("msp", percentile=10, share=20, calibration=scores)
    with pytest.raises(ValueError, match="between 0 and 100"):
        resolve_threshold("msp", share=0)
