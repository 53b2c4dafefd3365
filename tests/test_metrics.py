import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from cfx.trust.metrics import aurc, fpr_at_tpr, metrics_table, misprediction_metrics, risk_coverage_curve


def test_tiny_example_by_hand():
    scores = [0.9, 0.8, 0.7, 0.6]
    correct = [1, 1, 0, 1]
    m = misprediction_metrics(scores, correct)
    # correct scores {0.9, 0.8, 0.6} vs the error's 0.7: 2 of 3 pairs ranked right
    assert m["auroc"] == pytest.approx(2 / 3)
    # errors positive, ranked by -score: order 0.6 (ok), 0.7 (error) → precision 1/2 at the only error
    assert m["aupr_error"] == pytest.approx(0.5)
    # success AP: ranks 1, 2 correct (precision 1, 1), rank 4 correct (precision 3/4) → mean = (1 + 1 + 0.75) / 3
    assert m["aupr_success"] == pytest.approx((1 + 1 + 0.75) / 3)
    # risks at coverage 1..4: 0, 0, 1/3, 1/4
    assert m["aurc"] == pytest.approx((0 + 0 + 1 / 3 + 1 / 4) / 4)
    # perfect ranking: risks 0, 0, 0, 1/4
    assert m["e_aurc"] == pytest.approx((1 / 3 + 1 / 4) / 4 - (1 / 4) / 4)
    # one error only: when 95 % of the correct ones are trusted, the error (0.7 > 0.6) is trusted too
    assert m["fpr_at_95_tpr"] == pytest.approx(1.0)
    assert m["accuracy"] == 0.75 and m["n"] == 4


def test_fpr_at_95_is_interpolated_on_the_roc_curve():
    scores = [6, 5, 4, 3, 2, 1]
    correct = [1, 1, 1, 0, 1, 0]
    # ROC (fpr, tpr): (0,.25) (0,.5) (0,.75) (.5,.75) (.5,1) (1,1): TPR .95 lies on the vertical segment at FPR .5
    assert fpr_at_tpr(scores, correct, 0.95) == pytest.approx(0.5)
    # TPR 0.6 lies on (0, .5) → (0, .75): FPR 0
    assert fpr_at_tpr(scores, correct, 0.6) == pytest.approx(0.0)
    # A slanted segment: one tied group holding one correct and one error
    scores = [3, 2, 2, 1]
    correct = [1, 1, 0, 0]
    # ROC: (0, .5) → (.5, 1) through the tie: TPR .95 → FPR .45
    assert fpr_at_tpr(scores, correct, 0.95) == pytest.approx(0.45)


def test_against_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    correct = rng.random(500) < 0.7
    scores = rng.normal(size=500) + correct * 1.0
    m = misprediction_metrics(torch.tensor(scores), torch.tensor(correct))
    assert m["auroc"] == pytest.approx(roc_auc_score(correct, scores))
    assert m["aupr_success"] == pytest.approx(average_precision_score(correct, scores))
    assert m["aupr_error"] == pytest.approx(average_precision_score(~correct, -scores))


def test_aurc_matches_the_definition_without_ties():
    rng = np.random.default_rng(1)
    correct = rng.random(200) < 0.6
    scores = rng.random(200)
    order = np.argsort(-scores)
    errors = ~correct[order]
    risks = [errors[:k].mean() for k in range(1, 201)]
    assert aurc(scores, correct) == pytest.approx(np.mean(risks))


def test_aurc_treats_ties_as_one_group():
    # All tied: the only operating point keeps everything, risk = error rate.
    assert aurc([0.5] * 4, [1, 0, 1, 1]) == pytest.approx(0.25)
    coverage, risk = risk_coverage_curve([0.5] * 4, [1, 0, 1, 1])
    assert coverage.tolist() == [1.0] and risk.tolist() == [0.25]


def test_perfect_and_reversed_scores():
    correct = np.array([1, 1, 1, 0, 0])
    perfect = misprediction_metrics(correct * 1.0 + np.arange(5) * 0.01, correct)
    assert perfect["auroc"] == 1.0 and perfect["e_aurc"] == pytest.approx(0.0) and perfect["fpr_at_95_tpr"] == 0.0
    reversed_ = misprediction_metrics(-correct * 1.0, correct)
    assert reversed_["auroc"] == 0.0 and reversed_["e_aurc"] > 0


def test_threshold_rates_and_deciles():
    scores = np.arange(20, dtype=float)
    correct = scores >= 5
    m = misprediction_metrics(scores, correct, threshold=5)
    assert m["tpr"] == 1.0 and m["tnr"] == 1.0
    assert len(m["decile_accuracy"]) == 10
    assert m["decile_accuracy"][:2] == [0.0, 0.0] and m["decile_accuracy"][2] == 0.5 and m["decile_accuracy"][-1] == 1


def test_bootstrap_intervals_surround_the_estimate():
    rng = np.random.default_rng(2)
    correct = rng.random(300) < 0.8
    scores = rng.normal(size=300) + correct
    m = misprediction_metrics(scores, correct, bootstrap=100, seed=0)
    for key in ("auroc", "aurc", "fpr_at_95_tpr"):
        lo, hi = m["ci"][key]
        assert lo <= m[key] <= hi and hi - lo > 0


def test_degenerate_and_bad_inputs():
    m = misprediction_metrics([0.1, 0.2], [1, 1])
    assert np.isnan(m["auroc"]) and m["aurc"] == 0.0
    with pytest.raises(ValueError, match="same length"):
        misprediction_metrics([0.1], [1, 0])
    with pytest.raises(ValueError, match="NaN"):
        misprediction_metrics([np.nan, 0.1], [1, 0])
    with pytest.raises(ValueError, match="empty"):
        misprediction_metrics([], [])
    with pytest.raises(ValueError, match="0/1"):
        misprediction_metrics([0.1, 0.2], [2, 1])


def test_markdown_table():
    table = metrics_table({"msp": misprediction_metrics([0.9, 0.1], [1, 0])})
    assert table.splitlines()[0].startswith("| method | AUROC") and "| msp | 1.000" in table
