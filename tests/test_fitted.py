import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from scipy.stats import norm
from torch import nn

import cfx
from cfx.cli import main
from cfx.core.data import TensorSource
from cfx.jobs import fit
from cfx.trust.fitted import Fitted, FittedError, Mahalanobis, PaRCE, TrustOracle, steep_slope_loss
from cfx.core.models import Classifier, load_classifier
from cfx.core.nets import ConvAutoencoder

FACTORIES = Path(__file__).parent / "factories.py"


def _parce_reference(probs, losses, mu, sigma, z_star):
    """PaRCE written out with scipy: rho = max_c p_c * sum_c p_c (1 - Phi((l - 2 mu_c) / sigma_c - z*))."""
    in_dist = 1 - norm.cdf((losses[:, None] - 2 * mu[None]) / sigma[None] - z_star)
    return probs.max(1) * (probs * in_dist).sum(1)


def test_parce_calibration_picks_the_grid_point_matching_accuracy():
    rng = np.random.default_rng(0)
    n, c = 400, 4
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 3 * np.eye(c)[labels] * (rng.random(n) < 0.8)[:, None]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    losses = rng.gamma(2.0, 0.01, n) * (1 + 0.2 * labels)
    parce = PaRCE(ConvAutoencoder(16)).fit(torch.tensor(probs), torch.tensor(losses), torch.tensor(labels))
    mu = np.array([losses[labels == k].mean() for k in range(c)])
    sigma = np.array([losses[labels == k].std() for k in range(c)])
    np.testing.assert_allclose(parce.mu_.numpy(), mu, rtol=1e-10)
    np.testing.assert_allclose(parce.sigma_.numpy(), sigma, rtol=1e-10)
    accuracy = (probs.argmax(1) == labels).mean()
    grid = np.round(np.arange(0, 5, 0.05), 2)
    gaps = [abs(_parce_reference(probs, losses, mu, sigma, z).mean() - accuracy) for z in grid]
    assert parce.z_star_ == pytest.approx(grid[int(np.argmin(gaps))])
    assert parce.calibration_gap_ == pytest.approx(min(gaps))
    assert parce.z_star_ in set(grid.tolist())
    comp = parce._competency(torch.tensor(probs), torch.tensor(losses), parce.z_star_).numpy()
    np.testing.assert_allclose(comp, _parce_reference(probs, losses, mu, sigma, parce.z_star_), rtol=1e-8)
    assert (comp >= 0).all() and (comp <= 1).all()


@pytest.fixture(scope="module")
def tiny_fitted(tmp_path_factory):
    torch.manual_seed(0)
    clf = load_classifier(f"python:{FACTORIES}:tiny_cnn")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(120, 3, 16, 16, generator=g)
    labels = torch.randint(0, 4, (120,), generator=g)
    out = tmp_path_factory.mktemp("fitted")
    fitted = fit(clf, TensorSource(images, labels), out, ae_epochs=1, progress=False)
    return clf, fitted, images, labels


def test_reference_statistics_fall_back_to_the_most_competent_of_every_reference_image(tiny_fitted):
    """Random images and labels: hardly any calibration image clears the competency threshold, so the reference the
    evidence compares with comes from the whole reference set (training split too), by competency, not from a half
    of the calibration split."""
    from cfx.evidence import image_statistics

    clf, fitted, images, _ = tiny_fitted
    stored = fitted.manifest["reference_statistics"]
    competency = fitted.parce.score(clf, images)
    clear = int((competency > fitted.parce.threshold).sum())
    assert stored["confident"] < 10
    if clear >= 10:
        assert stored["images"] == clear and "confident reference images" in stored["images_from"]
        pick = competency > fitted.parce.threshold
    else:
        assert stored["images"] == 12 and "most competent tenth" in stored["images_from"]
        pick = competency.argsort(descending=True)[:12]
    expected = image_statistics((images[pick] * 255).round() / 255)  # the fit reads images as 8-bit
    with torch.inference_mode():  # which classes the reference covers, counted here from the model's predictions
        predicted = clf.logits((images * 255).round() / 255).argmax(1)
    assert stored["classes"] == len(set(predicted[pick].tolist()))
    assert stored["classes_in_reference"] == len(set(predicted.tolist()))
    assert stored["narrow"].startswith(f"explanations compare flagged images with only {stored['images']} ")
    assert stored["mean"]["brightness"] == pytest.approx(float(expected["brightness"].mean()), rel=1e-5)
    assert stored["mean"]["contrast"] == pytest.approx(float(expected["contrast"].mean()), rel=1e-5)


def test_a_fitted_score_the_folder_lacks_is_refused_with_what_to_do(tiny_fitted):
    from cfx.trust import score_source

    clf, fitted, images, labels = tiny_fitted
    assert "oracle" not in fitted.score_names  # fitted without --oracle
    with pytest.raises(ValueError, match=r"\['oracle'\] are not in the fitted folder .*cfx fit --oracle"):
        score_source(clf, TensorSource(images[:8], labels[:8]), ["msp", "oracle"], fitted=fitted, progress=False)


def test_a_reference_of_few_images_or_few_classes_is_called_narrow():
    from cfx.jobs.fitting import reference_coverage

    everything = torch.arange(40) % 20                                  # the model predicts 20 classes
    wide = reference_coverage(torch.arange(60) % 10, everything)        # 60 images of 10 classes
    assert wide == {"classes": 10, "classes_in_reference": 20, "narrow": None}
    few_classes = reference_coverage(torch.arange(60) % 4, everything)  # 4 of 20 classes: under a quarter
    assert "only 4 of the 20 classes" in few_classes["narrow"] and "only 60" not in few_classes["narrow"]
    few_images = reference_coverage(torch.arange(17) % 10, everything)
    assert "only 17 trusted reference images" in few_images["narrow"] and "classes" not in few_images["narrow"]
    assert reference_coverage(torch.zeros(40), torch.arange(3))["narrow"] is None  # 3 classes: too few to judge


def test_torch_competency_equals_batched_and_has_input_gradients(tiny_fitted):
    clf, fitted, images, _ = tiny_fitted
    x = images[:8].clone().requires_grad_(True)
    comp = fitted.parce.score_torch(clf, x)
    batched = fitted.parce.score(clf, images[:8], batch_size=3)
    torch.testing.assert_close(comp.detach(), batched)
    assert ((batched >= 0) & (batched <= 1)).all()
    comp.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # directional derivative against central finite differences (float64 copies of both networks)
    d = torch.randn_like(images[:8])
    clf64 = Classifier.wrap(__import__("copy").deepcopy(clf.model).double(), num_classes=4)
    parce64 = PaRCE.from_state(__import__("copy").deepcopy(fitted.autoencoder).double(), fitted.parce.state())
    x64 = images[:8].double().requires_grad_(True)
    parce64.score_torch(clf64, x64).sum().backward()
    eps = 1e-5
    with torch.no_grad():
        fd = (parce64.score_torch(clf64, x64 + eps * d.double()).sum()
              - parce64.score_torch(clf64, x64 - eps * d.double()).sum()) / (2 * eps)
    assert float((x64.grad * d).sum()) == pytest.approx(float(fd), rel=1e-4, abs=1e-8)


def test_mahalanobis_matches_brute_force_and_ranks_far_points_low():
    rng = np.random.default_rng(1)
    means = np.array([[0.0, 0, 0], [5, 0, 0], [0, 5, 0]])
    labels = rng.integers(0, 3, 300)
    feats = means[labels] + rng.normal(size=(300, 3)) * [1.0, 0.5, 2.0]
    m = Mahalanobis().fit(torch.tensor(feats), torch.tensor(labels))
    queries = np.array([[0.1, 0.2, 0.0], [5.2, 0.1, 0.3], [30.0, 30.0, 30.0]])
    p = m.precision_.numpy()
    mu = m.means_.numpy()
    brute = [-min((q - mu[k]) @ p @ (q - mu[k]) for k in range(3)) for q in queries]
    np.testing.assert_allclose(m.score(torch.tensor(queries)).numpy(), brute, rtol=1e-5)
    np.testing.assert_allclose(mu, [feats[labels == k].mean(0) for k in range(3)])
    s = m.score(torch.tensor(queries))
    assert s[2] < s[0] and s[2] < s[1]


def test_steep_slope_loss_values_and_directions():
    a_neg, a_pos = 5.0, 2.0
    z = torch.tensor([0.0, 0.0])
    y = torch.tensor([1, 0])
    # at z = 0 each term is 1 - e^{-alpha}
    per = [1 - math.exp(-a_pos), 1 - math.exp(-a_neg)]
    assert steep_slope_loss(z, y, a_neg, a_pos).item() == pytest.approx(sum(per) / 2)
    # the good extremes cost nothing: correct with z -> +inf, wrong with z -> -inf
    assert steep_slope_loss(torch.tensor([1e6]), torch.tensor([1]), a_neg, a_pos).item() == pytest.approx(0, abs=1e-5)
    assert steep_slope_loss(torch.tensor([-1e6]), torch.tensor([0]), a_neg, a_pos).item() == pytest.approx(0, abs=1e-5)
    # the gradient pushes correct samples up and wrong ones down (seed 003's printed Eq. 8 would do the opposite)
    zz = torch.zeros(2, requires_grad=True)
    steep_slope_loss(zz, torch.tensor([1, 0]), a_neg, a_pos).backward()
    assert zz.grad[0] < 0 < zz.grad[1]


def test_too_few_reference_images_says_how_many_are_needed(tiny_fitted, tmp_path):
    clf, _, images, labels = tiny_fitted
    with pytest.raises(ValueError, match=r"3 readable; .* 1 remain .* at least 4 reference images"):
        fit(clf, TensorSource(images[:3], labels[:3]), tmp_path / "few", ae_epochs=1, progress=False)


def test_oracle_needs_errors_to_learn_from(tiny_fitted):
    clf, _, images, _ = tiny_fitted
    right = clf.predict(images)
    with pytest.raises(ValueError, match="nothing to learn"):
        TrustOracle(epochs=1).fit(clf, images, right, progress=False)
    with pytest.raises(ValueError, match="loss must be"):
        TrustOracle(loss="hinge")


def test_fitted_folder_round_trip_and_integrity_errors(tiny_fitted, tmp_path):
    clf, fitted, images, labels = tiny_fitted
    again = Fitted.load(fitted.path, clf)
    torch.testing.assert_close(again.parce.score(clf, images), fitted.parce.score(clf, images))
    assert again.manifest["counts"]["calibration"] == 24 and again.score_names == ["parce", "mahalanobis"]
    assert set(again.calibration_scores) >= {"gradtrust", "msp", "parce", "mahalanobis", "correct"}
    t = again.threshold("parce", 10)
    assert t.percentile == 10 and t.calibration_size == 24

    import shutil

    def copy():
        target = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(fitted.path, target)
        return target

    broken = copy()
    (broken / "manifest.json").write_text("{ not json")
    with pytest.raises(FittedError, match="corrupted"):
        Fitted.load(broken, clf)
    missing = copy()
    (missing / "mahalanobis.pt").unlink()
    with pytest.raises(FittedError, match="missing mahalanobis.pt"):
        Fitted.load(missing, clf)
    modified = copy()
    with (modified / "autoencoder.pt").open("ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(FittedError, match="checksum"):
        Fitted.load(modified, clf)
    torch.manual_seed(99)
    other = Classifier.wrap(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                          nn.Flatten(), nn.Linear(32, 4)))
    with pytest.raises(FittedError, match="another model"):
        Fitted.load(fitted.path, other)
    with pytest.raises(FittedError, match="does not exist"):
        Fitted.load(tmp_path / "nope", clf)
    # the same weights fed another way: the calibration does not hold (it flagged 46 % at a "10th percentile")
    with pytest.raises(FittedError, match="fitted with the model fed size as read, mean None"):
        Fitted.load(fitted.path, load_classifier(f"python:{FACTORIES}:tiny_cnn", mean=(0.5,) * 3, std=(0.5,) * 3))
    # a folder loaded without a model is checked against the model it is used with
    unchecked = Fitted.load(fitted.path)
    with pytest.raises(FittedError, match="another model"):
        cfx.score_source(other, TensorSource(images[:4]), ["msp"], fitted=unchecked, progress=False)
    with pytest.raises(FittedError, match="another model"):
        cfx.explain(other, TensorSource(images[:4]), unchecked, tmp_path / "ex", progress=False)

    # a manifest edited by hand: one line saying so, never a traceback or a check switched off
    def edited(change):
        target = copy()
        manifest = json.loads((target / "manifest.json").read_text())
        change(manifest)
        (target / "manifest.json").write_text(json.dumps(manifest))
        return target

    for change, message in ((lambda m: m.pop("model_fingerprint"), "corrupted"),
                            (lambda m: m["autoencoder"].update(latent_dim=-1), "latent size -1"),
                            (lambda m: m.update(files={}), "does not list"),
                            (lambda m: m["files"].update({"../elsewhere.pt": "00"}), "outside the folder"),
                            (lambda m: m.update(format=str(m["format"])), "format '2'")):
        with pytest.raises(FittedError, match=message):
            Fitted.load(edited(change), clf)


def test_fit_wants_every_label_or_none(tmp_path):
    clf = load_classifier(f"python:{FACTORIES}:tiny_cnn")
    with pytest.raises(ValueError, match="3 of 10 reference images have no label; give every image a label, or none"):
        fit(clf, TensorSource(torch.rand(10, 3, 16, 16), [0, 1, 0, 1, 0, 1, 0, -1, -1, -1]), tmp_path, ae_epochs=1,
            progress=False)


@pytest.mark.slow
def _random_class_folder(data: Path, per_class: int) -> Path:
    """Classes a–d, ``per_class`` random 16-px images each."""
    rng = np.random.default_rng(0)
    for cls in "abcd":
        (data / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(data / cls / f"{i}.png")
    return data


def test_cli_fit_then_trust_with_fitted_scores(tmp_path):
    data = _random_class_folder(tmp_path / "data", 12)
    (data / "a" / "bad.png").write_bytes(b"")
    out = tmp_path / "fitted"
    r = CliRunner().invoke(main, ["fit", "--model", f"python:{FACTORIES}:tiny_cnn", "--train", str(data),
                                  "--out", str(out), "--ae-epochs", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["errors"] == 1 and manifest["errors"][0]["id"] == "a/bad.png"
    assert "z* =" in r.output
    assert "reference for explanations: " in r.output and "warning: explanations compare flagged images with only" \
        in r.output  # 48 reference images of 4 classes: the trusted few are a narrow reference
    r = CliRunner().invoke(main, ["trust", "--model", f"python:{FACTORIES}:tiny_cnn", "--data", str(data),
                                  "--fitted", str(out), "--flag-score", "parce", "--flag-percentile", "20",
                                  "--out", str(tmp_path / "t"), "--quiet"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert {"parce", "mahalanobis"} <= set(summary["methods"]) and summary["threshold"]["calibration_size"] == 10
    r = CliRunner().invoke(main, ["trust", "--model", f"python:{FACTORIES}:tiny_cnn", "--data", str(data),
                                  "--fitted", str(out), "--methods", "oracle", "--quiet", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--oracle" in r.output
    r = CliRunner().invoke(main, ["trust", "--model", f"python:{FACTORIES}:tiny_cnn", "--data", str(data),
                                  "--methods", "parce", "--quiet", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "fitted folder" in r.output
    (out / "parce.json").write_text("{}")  # tampered: a one-line error, not a traceback
    r = CliRunner().invoke(main, ["trust", "--model", f"python:{FACTORIES}:tiny_cnn", "--data", str(data),
                                  "--fitted", str(out), "--quiet", "--out", str(tmp_path / "t2")])
    assert r.exit_code == 1 and "checksum" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_demo_fitted_oracle_and_table(shapes_models):
    from cfx.demo import cause_conditions, demo_fitted
    from cfx.trust.metrics import misprediction_metrics

    fitted = demo_fitted(shapes_models, progress=False)
    assert fitted.oracle is not None and fitted.score_names == ["parce", "mahalanobis", "oracle"]
    x, y = shapes_models.data.split("test")
    cond = cause_conditions(x, y)
    px = torch.cat([c[0] for c in cond.values()])
    py = torch.cat([c[1] for c in cond.values()])
    correct = shapes_models.classifier.predict(px) == py
    raw = fitted.oracle.raw(px)
    torch.testing.assert_close(fitted.oracle.score(px), torch.sigmoid(raw))
    m = misprediction_metrics(fitted.oracle.score(px), correct, threshold=0.5)
    assert m["auroc"] > 0.6 and m["tnr"] > 0.3


def test_a_float64_model_is_scored_and_explained_with_its_fitted_folder(tmp_path):
    # The autoencoder is float32. A float64 classifier's images reached it as float64 and every use of the folder
    # stopped with "Input type (double) and bias type (float) should be the same".
    data = _random_class_folder(tmp_path / "data", 8)
    model = f"python:{FACTORIES}:tiny_cnn_float64"
    out = tmp_path / "fitted"
    r = CliRunner().invoke(main, ["fit", "--model", model, "--train", str(data), "--out", str(out), "--ae-epochs", "1",
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["trust", "--model", model, "--data", str(data), "--fitted", str(out), "--methods",
                                  "parce,msp", "--quiet", "--out", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    # against the competency computed by hand with the images cast to the autoencoder's float32
    clf = load_classifier(model)
    fitted = Fitted.load(out, clf)
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(data / "a" / f"{i}.png"), dtype=np.float64) / 255)
                     .permute(2, 0, 1) for i in range(8)])
    with torch.inference_mode():
        logits = clf.logits(x)
        loss = (fitted.autoencoder(x.float()) - x.float()).pow(2).flatten(1).mean(1)
        by_hand = fitted.parce._competency(torch.softmax(logits, 1), loss, fitted.parce.z_star_)
        got = fitted.parce.score(clf, x)
    assert logits.dtype == torch.float64 and torch.allclose(got.double(), by_hand.double(), atol=1e-6)
    r = CliRunner().invoke(main, ["explain", "--model", model, "--data", str(data), "--fitted", str(out),
                                  "--generators", "reco,lgd,lnn", "--flag-share", "25", "--quiet",
                                  "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["counts"]["explained"] == 8 and not summary["counts"].get("errors"), summary["counts"]


def test_an_under_confident_model_is_told_that_parce_is_its_top_probability(tmp_path):
    # Competency is at most the top probability: for a model less sure than it is right, no z* brings its mean up
    # to the accuracy, the autoencoder's term has no weight and competency ranks as msp does. cfx fit said nothing.
    clf = load_classifier(f"python:{FACTORIES}:tiny_cnn")
    with torch.no_grad():
        clf.model.fc.weight.mul_(0.01)
        clf.model.fc.bias.mul_(0.01)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(60, 3, 16, 16, generator=g)
    with torch.inference_mode():
        labels = clf.logits(images).argmax(1)  # always right, never sure: top probability about 1/4
    with pytest.warns(RuntimeWarning, match="less confident than it is accurate"):
        fitted = fit(clf, TensorSource(images, labels), tmp_path / "f", ae_epochs=1, progress=False)
    with torch.inference_mode():
        top = torch.softmax(clf.logits(images), 1).max(1).values  # the independent reference: msp
    assert torch.allclose(fitted.parce.score(clf, images).double(), top.double(), atol=0.01)
