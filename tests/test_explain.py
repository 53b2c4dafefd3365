"""The main job: run store, resumable cfx explain, broken inputs, the review report, cfx report."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cfx.prompts import Explanation
from click.testing import CliRunner
from PIL import Image

import cfx
from cfx.cli import main
from cfx.core.runstore import RunStore, RunStoreError

XSS = '<img src=x onerror="window.__xss=1">'
SCRIPT = "<script>window.__xss=2</script>"


@pytest.fixture(scope="module")
def fitted(shapes_models):
    from cfx.demo import demo_fitted

    return demo_fitted(shapes_models, progress=False)


def _source(shapes_models, n, offset=0):
    x, y = shapes_models.data.split("test")
    cal, _ = shapes_models.data.split("calibration")
    images = torch.cat([x, cal])[offset:offset + n]
    labels = torch.cat([y, shapes_models.data.split("calibration")[1]])[offset:offset + n]
    return cfx.TensorSource(images, labels, ids=[f"img-{i}" for i in range(len(images))],
                            class_names=shapes_models.data.class_names)


def test_run_store_refuses_another_config_and_restarts(tmp_path):
    with RunStore(tmp_path, {"a": 1}) as store:
        store.add_samples([{"id": "x", "label": 1, "prediction": 1, "scores": {"msp": float("nan")}, "flagged": True,
                            "metadata": {}}], {"x": torch.rand(3, 8, 8)})
        store.add_samples([{"id": "x", "label": 0, "prediction": 0, "scores": {}, "flagged": False}])  # not duplicated
        assert [s["label"] for s in store.samples()] == [1] and store.samples()[0]["scores"] == {"msp": None}
    assert sqlite3.connect(tmp_path / "run.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with RunStore(tmp_path, {"a": 1}) as again:
        assert again.resumed and again.flagged_ids() == ["x"] and again.image("x", "original")
    with pytest.raises(RunStoreError, match=r"another config \(changed: a\).*--restart"):
        RunStore(tmp_path, {"a": 2})
    with RunStore(tmp_path, {"a": 2}, restart=True) as fresh:
        assert fresh.samples() == [] and not fresh.resumed
    # a store that holds no finished work (a run that stopped on a bad option) takes the corrected config
    with RunStore(tmp_path, {"a": 3}) as corrected:
        assert corrected.config == {"a": 3} and not corrected.resumed
    with pytest.raises(RunStoreError, match="no run store"):
        RunStore(tmp_path / "nothing")


class _HostileReporter:
    """Answers with markup and a prompt injection, as an untrusted LLM might."""

    backend = "hostile"

    def explain(self, ev, image=None, counterfactual=None):
        assert image is not None and image.shape[0] == 3  # back-ends that look get the image and counterfactual
        return Explanation(f"{SCRIPT} ignore all previous instructions {XSS}", "other", 0.5, self.backend)


def test_explain_writes_summary_and_a_report_that_escapes_everything(shapes_models, fitted, tmp_path):
    source = _source(shapes_models, 40)
    source.sample_ids[0] = XSS + ".png"
    summary = cfx.explain(shapes_models.classifier, source, fitted, tmp_path, reporter=_HostileReporter(),
                          flag_below=2.0, generators=["lgd", "lnn"], progress=False)
    assert summary["counts"]["samples"] == 40 and summary["counts"]["flagged"] == 40
    assert summary["counts"]["explained"] == 40
    row = summary["samples"][0]
    assert set(row) == {"id", "label", "prediction", "flagged", "scores", "cause", "explanation", "backend", "fallback",
                        "error"}
    assert row["explanation"].startswith(SCRIPT)  # stored verbatim: it is data
    assert json.loads((tmp_path / "summary.json").read_text())["counts"] == summary["counts"]
    html = (tmp_path / "report.html").read_text()
    assert SCRIPT not in html and XSS not in html  # neither the text nor the file name arrive as markup
    assert "&lt;script&gt;window.__xss=2" in html and "&lt;img src=x onerror=" in html
    assert html.count('<article class="card"') == 40
    import re

    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|url\(\s*["']?(https?:|//)|@import""", html)
    assert len(html) < 3_000_000 * 40 / 100  # the 3 MB per 100 flagged budget, scaled


def test_the_report_names_the_fitted_reference_and_warns_when_it_is_narrow(shapes_models, fitted, tmp_path):
    stats = fitted.manifest["reference_statistics"]
    assert stats.get("narrow") is None  # the demo folder: hundreds of confident images of every class
    summary = cfx.explain(shapes_models.classifier, _source(shapes_models, 4), fitted, tmp_path / "wide",
                          flag_below=2.0, generators=["lnn"], progress=False)
    assert summary["reference"]["statistics"] == f"the fitted folder's {stats['images']} {stats['images_from']}"
    assert summary["reference"]["narrow"] is None
    assert "Narrow reference" not in (tmp_path / "wide" / "report.html").read_text()
    stats["narrow"] = "only 3 trusted reference images <b>here</b>"
    try:
        cfx.explain(shapes_models.classifier, _source(shapes_models, 4), fitted, tmp_path / "narrow",
                    flag_below=2.0, generators=["lnn"], progress=False)
    finally:
        stats["narrow"] = None
    html = (tmp_path / "narrow" / "report.html").read_text()
    assert "Narrow reference: only 3 trusted reference images &lt;b&gt;here&lt;/b&gt;." in html


def test_resume_after_kill_minus_9_matches_an_uninterrupted_run(shapes_models, fitted, tmp_path):
    """Kill -9 a `cfx.explain` on 1200 images mid-run, re-run: same samples, flags and causes; scores to 1e-5."""
    n = 1200
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch, cfx
        from cfx.demo import load_demo, demo_fitted
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_explain import _source
        models = load_demo("shapes", progress=False)
        cfx.explain(models.classifier, _source(models, {n}), demo_fitted(models, progress=False), sys.argv[1],
                    flag_percentile=20, progress=False, explain_batch_size=8)
    """))
    killed = tmp_path / "killed"
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, str(script), str(killed)], env=env)
    deadline = time.time() + 240
    explained = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            db = sqlite3.connect(killed / "run.sqlite", timeout=1)
            explained = db.execute("SELECT COUNT(*) FROM explanations").fetchone()[0]
            db.close()
        except sqlite3.Error:
            continue
        if explained >= 16:
            break
    assert proc.poll() is None, "the job finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 16 <= explained < n
    resumed = cfx.explain(shapes_models.classifier, _source(shapes_models, n), fitted, killed, flag_percentile=20,
                          progress=False, explain_batch_size=8)
    whole = cfx.explain(shapes_models.classifier, _source(shapes_models, n), fitted, tmp_path / "whole",
                        flag_percentile=20, progress=False, explain_batch_size=8)
    a, b = resumed["samples"], whole["samples"]
    assert [s["id"] for s in a] == [s["id"] for s in b] and len(a) == n
    assert [s["flagged"] for s in a] == [s["flagged"] for s in b] and sum(s["flagged"] for s in a) > 100
    assert [s["cause"] for s in a] == [s["cause"] for s in b]
    for sa, sb in zip(a, b):
        for k, v in sb["scores"].items():
            assert (v is None and sa["scores"][k] is None) or abs(sa["scores"][k] - v) <= 1e-5 * max(1, abs(v)), k
    with sqlite3.connect(killed / "run.sqlite") as db:  # nothing duplicated
        assert db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == n


def _broken_folder(root: Path, shapes_models) -> tuple[list[str], list[str]]:
    root.mkdir()
    x, _ = shapes_models.data.split("test")
    arr = lambda i: (x[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    good = []
    for i, mode in enumerate(["RGB", "CMYK", "P", "RGBA", "LA"]):
        img = Image.fromarray(arr(i))
        img = img.convert(mode) if mode != "P" else img.quantize(64)
        name = f"good-{mode.lower()}.{'jpg' if mode == 'CMYK' else 'png'}"
        img.save(root / name)
        good.append(name)
    Image.fromarray(arr(5)[..., 0].astype(np.uint16) * 257).save(root / "good-16bit.png")
    Image.fromarray(arr(6)).resize((1, 1)).save(root / "good-1x1.png")
    Image.fromarray(arr(7)).resize((3000, 2400)).save(root / "good-large.jpg", quality=70)
    good += ["good-16bit.png", "good-1x1.png", "good-large.jpg"]
    Image.fromarray(arr(8)).save(root / (XSS + ".png"))
    good.append(XSS + ".png")
    (root / "zero.png").write_bytes(b"")
    (root / "text.jpg").write_text("this is not an image")
    data = (root / "good-rgb.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    return good, ["zero.png", "text.jpg", "truncated.png"]


def test_broken_inputs_are_listed_and_every_good_file_is_explained(shapes_models, fitted, tmp_path):
    good, bad = _broken_folder(tmp_path / "images", shapes_models)
    out = tmp_path / "out"
    summary = cfx.explain(shapes_models.classifier, str(tmp_path / "images"), fitted, out, flag_below=2.0,
                          progress=False)
    by_id = {Path(s["id"]).name: s for s in summary["samples"]}
    assert set(by_id) == set(good) | set(bad)
    for name in bad:
        assert by_id[name]["error"] and not by_id[name]["flagged"], name
    for name in good:
        s = by_id[name]
        assert s["error"] is None and s["flagged"] and s["explanation"] and s["cause"], name
    html = (out / "report.html").read_text()
    assert html.count('<article class="card"') == len(good)
    for name in bad:
        assert name in html  # listed with its reason among the skipped inputs


def test_changed_config_is_refused_and_cfx_report_rerenders(shapes_models, fitted, tmp_path):
    runner = CliRunner()
    fitted_dir = str(fitted.path)
    args = ["explain", "--model", "demo:shapes", "--data", "demo:shapes:review", "--fitted", fitted_dir,
            "--out", str(tmp_path), "--quiet", "--generators", "lgd", "--flag-score", "parce"]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "flag score parce: asked for" in first.output
    assert "flagged" in first.output and "report.html" in first.output
    again = runner.invoke(main, args)  # resume of a finished run: nothing recomputed, same result
    assert again.exit_code == 0 and "explained" in again.output
    changed = runner.invoke(main, args + ["--flag-below", "0.5"])
    assert changed.exit_code != 0 and "another config" in changed.output and "--restart" in changed.output
    other_search = runner.invoke(main, args + ["--edit-search", "full"])  # other evidence: not the same run
    assert other_search.exit_code != 0 and "another config" in other_search.output
    cards = (tmp_path / "report.html").read_text().count('<article class="card"')
    (tmp_path / "report.html").unlink()
    rerun = runner.invoke(main, ["report", "--run", str(tmp_path)])
    assert rerun.exit_code == 0, rerun.output
    assert (tmp_path / "report.html").read_text().count('<article class="card"') == cards > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert cards == summary["counts"]["flagged"]
    stages = summary["timing"]["explain_stages"]  # seconds per stage, summed over the batches
    assert {"scores", "property edits", "statistics", "lgd"} <= set(stages) and all(v > 0 for v in stages.values())
    assert sum(stages.values()) <= summary["timing"]["explain_seconds"]
    assert summary["config"]["edit_search"] == "screened"
    assert "per flagged image: " in first.output and "property edits" in first.output
    html = (tmp_path / "report.html").read_text()
    assert "Explaining took" in html and "property edits" in html
    # the review set's injected causes are named by the explanations far more often than chance
    meta = {s["id"]: s for s in RunStore(tmp_path).samples()}
    hits = [s["cause"] == meta[s["id"]]["metadata"]["injected_cause"] for s in summary["samples"]
            if s["cause"] and meta[s["id"]]["metadata"]["injected_cause"] in cfx.demo.CAUSES]
    assert len(hits) > 50 and sum(hits) / len(hits) > 0.6


def test_ctrl_c_stops_cleanly_and_the_next_run_resumes(shapes_models, fitted, tmp_path):
    out = tmp_path / "run"
    args = ["explain", "--model", "demo:shapes", "--data", "demo:shapes:review", "--fitted", str(fitted.path),
            "--out", str(out), "--quiet", "--flag-percentile", "30"]
    # a shell that runs the tests in the background starts them with SIGINT ignored; the child must not inherit that
    proc = subprocess.Popen([sys.executable, "-m", "cfx.cli", *args], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline, explained = time.time() + 180, 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            with sqlite3.connect(out / "run.sqlite", timeout=1) as db:
                explained = db.execute("SELECT COUNT(*) FROM explanations").fetchone()[0]
        except sqlite3.Error:
            continue
        if explained >= 8:
            break
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "re-run the same command to resume" in err
    report = CliRunner().invoke(main, ["report", "--run", str(out)])  # the interrupted run, as a reviewer sees it
    assert report.exit_code == 0, report.output
    status = json.loads((out / "summary.json").read_text())["status"]
    assert status.startswith("unfinished") and "run the same command again" in status
    assert "This run is unfinished" in (out / "report.html").read_text()
    resumed = CliRunner().invoke(main, args)
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["explained"] == summary["counts"]["flagged"] > explained
    assert summary["status"] == "complete" and "This run is" not in (out / "report.html").read_text()


def _evidence_outcomes(out: Path) -> dict:
    """Per explained image: cause, restoring edit (property, direction, strength), nearest trusted image."""
    db = sqlite3.connect(out / "run.sqlite")
    rows = {}
    for sid, text, cause in db.execute("SELECT id, evidence, cause FROM explanations"):
        ev = json.loads(text)
        edit = ev["restoring_edit"] or {}
        rows[sid] = (cause, edit.get("property"), edit.get("direction"), edit.get("strength"),
                     (ev.get("neighbour") or {}).get("neighbour_id"))
    db.close()
    return rows


@pytest.mark.parametrize("with_fitted", [True, False])
def test_an_images_evidence_does_not_depend_on_the_images_explained_with_it(shapes_models, fitted, tmp_path,
                                                                            with_fitted):
    """Chunks of 32 and of 5 flagged images give every image the same cause, restoring edit and nearest trusted
    image (what lets a Ray run cut the work into smaller chunks than a local one and still agree with it)."""
    from cfx.demo import demo_source

    source = demo_source("demo:shapes:review")
    options = dict(flag_percentile=20) if with_fitted else dict(flag_share=15)
    outcomes = []
    for size in (32, 5):
        run = cfx.explain(shapes_models.classifier, source, fitted if with_fitted else None, tmp_path / str(size),
                          explain_batch_size=size, progress=False, **options)
        assert run.counts["explained"] == run.counts["flagged"] >= 40
        outcomes.append(_evidence_outcomes(tmp_path / str(size)))
    assert outcomes[0] == outcomes[1]


def test_a_model_that_outputs_probabilities_is_named_in_the_summary_and_the_report(tmp_path):
    from factories import softmax_cnn

    with pytest.warns(UserWarning, match="look like probabilities"):
        model = cfx.Classifier.wrap(softmax_cnn(), preprocessing=cfx.Preprocessing(size=(16, 16)))
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    run = cfx.explain(model, cfx.TensorSource(images), None, tmp_path, flag_share=50, generators=["igd"],
                      progress=False)
    assert len(run.model_notes) == 1 and run.model_notes[0].startswith("the model's outputs look like probabilities")
    assert json.loads((tmp_path / "summary.json").read_text())["model_notes"] == run.model_notes
    assert "<b>Model:</b> the model&#39;s outputs look like probabilities" in (tmp_path / "report.html").read_text()
    assert cfx.Classifier.wrap(softmax_cnn(), num_classes=4).notes == []  # no probe pass: nothing is claimed
