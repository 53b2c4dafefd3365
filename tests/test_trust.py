import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cfx.core.models import Classifier
from cfx.trust import (SCORES, Threshold, applicable_scores, check_logits, energy, flag, gradnorm, gradtrust,
                       gradtrust_reference, log_prob, margin, max_logit, mc_dropout, msp, neg_entropy, odin,
                       score_batch)


# ---------------------------------------------------------------------------------------------- models

class CNN(nn.Module):
    def __init__(self, c, bias):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 24), nn.ReLU())
        self.fc = nn.Linear(24, c, bias=bias)

    def forward(self, x):
        return self.fc(self.body(x))


class MLP(nn.Module):
    def __init__(self, c, bias):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.Tanh(), nn.Linear(32, 20), nn.ReLU())
        self.out = nn.Linear(20, c, bias=bias)

    def forward(self, x):
        return self.out(self.body(x))


def vit(c, bias):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, num_labels=c)
    model = ViTForImageClassification(cfg)
    if not bias:
        model.classifier = nn.Linear(16, c, bias=False)
    return model


def make(kind, c, bias):
    torch.manual_seed(c + 7 * bias)
    model = {"cnn": CNN, "mlp": MLP, "vit": vit}[kind](c, bias).eval()
    head = {"cnn": model.fc if kind == "cnn" else None, "mlp": None, "vit": None}[kind]
    head = model.fc if kind == "cnn" else model.out if kind == "mlp" else model.classifier
    with torch.no_grad():
        head.weight.mul_(3.0)
        # Make one class's logit hugely negative for most inputs, so that argmax_c |z_c - 1/C| is not the
        # predicted class there (the max in GradTrust must run over all classes; see the closed form).
        if bias:
            head.bias[c - 1] = -40.0
        elif kind in ("cnn", "mlp"):  # ReLU features are non-negative
            head.weight[c - 1] = -head.weight[c - 1].abs() * 20
    return Classifier.wrap(model, example_size=(16, 16), num_classes=c)


@pytest.mark.parametrize("labels", ["all", "topk"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind, c", [(kind, c) if kind != "vit" or c == 2 else
                                     pytest.param(kind, c, marks=pytest.mark.slow)  # the ViT backward is slow
                                     for kind in ("cnn", "mlp", "vit") for c in (2, 10, 1000)])
def test_gradtrust_closed_form_matches_autograd_reference(kind, c, bias, labels):
    clf = make(kind, c, bias)
    x = torch.rand(6, 3, 16, 16)
    ref = gradtrust_reference(clf, x, labels=labels, k=5).double()
    with torch.no_grad():
        logits = clf.logits(x)
    fast = gradtrust(logits, labels=labels, k=5).double()
    # the closed form in a batch equals the per-image reference
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=0)
    assert ((fast >= 1 - 1e-6) & (fast <= c + 1e-6)).all()
    if labels == "all" and (bias or kind != "vit"):
        u = logits - 1.0 / c
        assert (u.abs().argmax(1) != logits.argmax(1)).any(), "the batch must contain the non-predicted max case"


def test_gradtrust_closed_form_by_hand():
    z = torch.tensor([[2.0, 0.0, -1.0]])  # C = 3, u = z - 1/3
    u = z - 1 / 3
    expected = (u ** 4).max() / (u ** 4).mean()
    torch.testing.assert_close(gradtrust(z), expected.view(1))
    # top-k with k = 1: g = p - e_top, m = g^2, r = max m^2 / mean m^2
    p = torch.softmax(z, 1)[0]
    m = (p - torch.tensor([1.0, 0, 0])) ** 2
    torch.testing.assert_close(gradtrust(z, labels="topk", k=1), (m.pow(2).max() / m.pow(2).mean()).view(1))
    # k is capped at C
    torch.testing.assert_close(gradtrust(z, labels="topk", k=50), gradtrust(z, labels="topk", k=3))
    # not shift-invariant (centred at 1/C), unlike softmax scores
    assert not torch.allclose(gradtrust(z), gradtrust(z + 5))
    with pytest.raises(ValueError, match="'all' or 'topk'"):
        gradtrust(z, labels="some")


def test_gradtrust_is_per_sample_at_any_batch_size():
    z = torch.randn(50, 10)
    torch.testing.assert_close(gradtrust(z)[7:9], gradtrust(z[7:9]))


# ---------------------------------------------------------------------------------------------- baselines

def test_logit_baselines_by_hand():
    z = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    p = np.exp([1.0, 2.0, 0.0]) / np.exp([1.0, 2.0, 0.0]).sum()
    torch.testing.assert_close(msp(z), torch.tensor([p.max(), 1 / 3], dtype=torch.float32))
    torch.testing.assert_close(max_logit(z), torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(log_prob(z), torch.tensor([math.log(p.max()), math.log(1 / 3)], dtype=torch.float32))
    torch.testing.assert_close(margin(z), torch.tensor([p[1] - p[0], 0.0], dtype=torch.float32))
    torch.testing.assert_close(neg_entropy(z), torch.tensor([(p * np.log(p)).sum(), math.log(1 / 3)],
                                                            dtype=torch.float32))
    torch.testing.assert_close(energy(z), torch.tensor([math.log(np.exp([1.0, 2.0, 0.0]).sum()), math.log(3)],
                                                       dtype=torch.float32))


def test_gradnorm_matches_autograd_of_kl_to_uniform():
    clf = make("cnn", 10, True)
    x = torch.rand(5, 3, 16, 16)
    expected = []
    for xi in x:
        logits = clf.logits(xi[None])
        # KL(u || softmax) up to a constant = cross-entropy of the softmax to the uniform target
        loss = -(torch.log_softmax(logits, 1) / 10).sum()
        (g,) = torch.autograd.grad(loss, clf.head.weight)
        expected.append(g.abs().sum())
    with torch.no_grad():
        logits, feats = clf.logits_and_features(x)
    torch.testing.assert_close(gradnorm(logits, feats), torch.stack(expected), rtol=1e-5, atol=1e-6)


def test_odin_without_perturbation_is_temperature_scaled_msp():
    clf = make("mlp", 10, True)
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        z = clf.logits(x)
    torch.testing.assert_close(odin(clf, x, temperature=1000, epsilon=0), msp(z / 1000))


def test_odin_perturbation_raises_the_scaled_softmax_of_the_prediction():
    clf = make("cnn", 10, True)
    x = torch.rand(8, 3, 16, 16) * 0.8 + 0.1
    base = odin(clf, x, temperature=1000, epsilon=0)
    moved = odin(clf, x, temperature=1000, epsilon=0.01)
    assert (moved >= base - 1e-7).all() and (moved > base).any()


def test_mc_dropout_needs_dropout_and_keeps_batchnorm_in_eval():
    with pytest.raises(ValueError, match="dropout"):
        mc_dropout(make("cnn", 4, True), torch.rand(2, 3, 16, 16))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(32, 4))
    clf = Classifier.wrap(net, example_size=(16, 16))
    x = torch.rand(6, 3, 16, 16)
    s = mc_dropout(clf, x, passes=20)
    assert not net[2].training and not net[4].training  # restored
    # Independent: average 20 dropout masks by hand with the same seed
    torch.manual_seed(0)
    with torch.no_grad():
        h = torch.relu(net[2](net[1](x.flatten(1))))
        probs = torch.stack([torch.softmax(net[5](F.dropout(h, 0.5, training=True)), 1) for _ in range(20)]).mean(0)
    torch.testing.assert_close(s, (probs * probs.log()).sum(1))
    assert not torch.allclose(s, neg_entropy(clf.logits(x).detach()))
    scripted = Classifier.wrap(torch.jit.script(net.eval()), example_size=(16, 16))
    with pytest.raises(ValueError, match=r"TorchScript model has 1 dropout layer\(s\).*python:module:factory"):
        mc_dropout(scripted, x)


def test_bad_logits_errors():
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        gradtrust(torch.randn(10))
    with pytest.raises(ValueError, match="NaN or infinite"):
        msp(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        check_logits(torch.randn(3, 1))


def test_registry_lists_every_score_and_score_batch_computes_them(shapes_models):
    clf = shapes_models.classifier
    names = applicable_scores(clf)
    assert set(names) == {n for n, s in SCORES.items() if not s.needs_fit}  # the demo CNN has dropout and hooks
    for spec in SCORES.values():
        assert spec.description and spec.to_dict()["needs"] in ("logits", "features", "model")
    x, _ = shapes_models.data.split("test")
    out = score_batch(clf, x[:32], names)
    assert set(out.scores) == set(names)
    for name, value in out.scores.items():
        assert value.shape == (32,) and torch.isfinite(value).all(), name
    torch.testing.assert_close(out.scores["gradtrust"], gradtrust(clf.logits(x[:32]).detach()))
    with pytest.raises(ValueError, match="unknown score"):
        score_batch(clf, x[:2], ["vibes"])


def test_score_batch_records_nan_logits_as_errors():
    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            z = self.fc(x.mean(dim=(2, 3)))
            return torch.where(x[:, :1, 0, 0] > 0.5, torch.full_like(z, float("nan")), z)

    clf = Classifier.wrap(Flaky(), num_classes=3)
    x = torch.zeros(4, 3, 8, 8)
    x[1] = 1.0
    out = score_batch(clf, x, ["gradtrust", "msp", "gradnorm"])
    assert out.errors[1] and all(out.errors[i] is None for i in (0, 2, 3))
    assert torch.isnan(out.scores["msp"][1]) and torch.isfinite(out.scores["msp"][[0, 2, 3]]).all()


def test_threshold_and_flags():
    cal = torch.arange(100, dtype=torch.float32)
    t = Threshold.from_percentile("msp", cal, 10)
    assert t.value == pytest.approx(9.9) and t.calibration_size == 100
    flags = flag(cal, t)
    assert int(flags.sum()) == 10
    assert Threshold.from_dict(t.to_dict()) == t
    assert flag(torch.tensor([float("nan"), 5.0]), 1.0).tolist() == [True, False]
    with pytest.raises(ValueError, match="percentile"):
        Threshold.from_percentile("msp", cal, 120)
    with pytest.raises(ValueError, match="finite"):
        Threshold.fixed("msp", float("inf"))
