"""The ``cfx`` command line.

Every command takes ``--out DIR`` where it writes results, shows progress on long work and writes a
machine-readable ``summary.json``. Model options (``--model``, ``--image-size``, ``--mean``, ``--std``,
``--classes``, ``--head``, ``--device``) are shared by every command that loads a classifier.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import click
from click.core import ParameterSource
import torch

from tqdm.auto import tqdm

from .core.data import DataSourceError, iter_batches, open_source
from .core.images import is_grey
from .core.models import ClassifierError, advise_on_inputs, check_device, load_classifier, suggest_normalisation
from .core.registry import load_plugins
from .core.runstore import RunStore, RunStoreError
from .core.shifts import CAUSES, SHIFTS, apply_shift
from .demo import cause_conditions, cause_examples, demo_fitted, demo_source, explanation_benchmark, load_demo
from .jobs import AuditResult, ExplainResult
from .jobs import audit as run_audit
from .jobs import explain as run_explain
from .jobs import fit as fit_folder
from .jobs.common import input_check, score_table_on_ray
from .jobs.distributed import RayEngine, RayNotInstalled, ray_session, resolve_engine
from .jobs.explaining import ExplainConfigError
from .reports import render_audit, render_review
from .trust.fitted import Fitted, FittedError
from .trust.metrics import metrics_table
from .trust.scores import SCORES, applicable_scores, default_scores
from .trust.scoring import evaluate_conditions, score_source, write_trust_outputs
from .trust.threshold import Threshold, resolve_threshold

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def _floats(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers like 0.485,0.456,0.406, got {text!r}") from None


def model_options(func: Callable) -> Callable:
    """The classifier options every model-loading command shares."""
    options = [
        click.option("--model", "model_spec", required=True, metavar="SPEC",
                     help="torchscript:PATH, hf:LOCAL_DIR, python:module:callable (or python:file.py:callable), "
                          "torchvision:NAME[:WEIGHTS], timm:NAME[:WEIGHTS], or demo:shapes / demo:digits."),
        click.option("--image-size", metavar="H[xW]", help="Input size for specs without preprocessing metadata "
                     "(TorchScript, python factories). Default for a model that takes any size: one size per run, the "
                     "fitted folder's, else the first readable image's; other images are resized to it."),
        click.option("--mean", metavar="M1,M2,M3", help="Normalisation mean (default: none, pixels in [0, 1])."),
        click.option("--std", metavar="S1,S2,S3", help="Normalisation std (default: none)."),
        click.option("--classes", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Class names, one per line or a JSON list (default: the model's, else the data's)."),
        click.option("--head", metavar="NAME", help="Name of the final linear layer when it is ambiguous."),
        click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cpu, cuda, cuda:1, mps."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def ray_options(func: Callable) -> Callable:
    """--ray and its resource settings, shared by trust, explain and audit."""
    options = [
        click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                     help="Run the heavy work on a Ray actor pool (pip install \"cfx[ray]\"): --ray alone starts a "
                          "local Ray on this machine, --ray auto joins the running cluster (ray start), or give "
                          "HOST:PORT. Same results as without it (docs/scale.md)."),
        click.option("--ray-actors", type=int, default=None,
                     help="Actors per pool (default: the cluster's CPUs / --ray-cpus-per-actor)."),
        click.option("--ray-cpus-per-actor", type=float, default=1.0, show_default=True,
                     help="CPUs per actor (also its torch threads)."),
        click.option("--ray-gpus-per-actor", type=float, default=0.0, show_default=True,
                     help="GPUs per actor (> 0 puts each actor's model on its GPU)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _engine(ray_address: str | None, actors: int | None, cpus: float, gpus: float) -> RayEngine | None:
    """The Ray engine the options ask for, or None (this process); a clear error when Ray is not installed."""
    if ray_address is None:
        return None
    try:
        return resolve_engine(RayEngine(address=None if ray_address == "local" else ray_address, actors=actors,
                                        cpus_per_actor=cpus, gpus_per_actor=gpus))
    except RayNotInstalled as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ray-*") from None


def _check_out(out: str | Path) -> None:
    """Fail at once, before any work, when ``--out`` cannot be written (a file in the way, a read-only folder)."""
    path = Path(out)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise click.BadParameter(f"{existing} is a file, not a folder: the output cannot go under it",
                                 param_hint="--out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{existing} is not writable: choose an output folder you can write to",
                                 param_hint="--out")
    try:  # what access() cannot tell (a root user, a file system that refuses files): write a file where it goes
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise click.BadParameter(f"cannot write under {existing} ({exc.strerror or exc}): choose an output folder "
                                 "you can write to", param_hint="--out") from None


def _check_device(device: str) -> None:
    try:
        check_device(device)
    except ClassifierError as exc:
        raise click.BadParameter(str(exc).replace("use device cpu", "use --device cpu"), param_hint="--device") \
            from None


def _load_model(model_spec: str, image_size: str | None, mean: str | None, std: str | None, classes: str | None,
                head: str | None, device: str):
    _check_device(device)
    mean_values, std_values = _floats(mean), _floats(std)
    if (mean is None) != (std is None):
        raise click.UsageError("give --mean and --std together: normalisation is (x - mean) / std")
    try:
        return load_classifier(model_spec, image_size=image_size, mean=mean_values, std=std_values,
                               classes=classes, head=head, device=device)
    except (ClassifierError, DataSourceError) as exc:
        raise click.ClickException(str(exc)) from None


def _open_data(spec: str, classifier):
    """Open a data source; a model without class names adopts the ImageFolder's sorted sub-folder names."""
    source = open_source(spec, class_names=classifier.class_names, num_classes=classifier.num_classes)
    if source.note:
        click.echo(f"data      {source.note}")
    if classifier.class_names is None and source.class_names and len(source.class_names) == classifier.num_classes:
        classifier.class_names = list(source.class_names)
        click.echo(f"classes   {', '.join(source.class_names[:10])} (from the data's folder names)")
    return source


def _list_methods(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        for name, spec in SCORES.items():
            notes = ("  [needs cfx fit]" if spec.needs_fit else "") + ("  [extra passes: on request]"
                                                                      if spec.extra_passes else "")
            click.echo(f"{name:15s} {spec.description}{notes}")
        ctx.exit()


def _friendly_errors(func: Callable) -> Callable:
    """Turn cfx's own validation errors into one-line CLI errors instead of tracebacks."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ClassifierError, DataSourceError, FittedError, RunStoreError, ExplainConfigError) as exc:
            _close_progress_bars()
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            _close_progress_bars()
            click.echo("interrupted; finished work was written (re-run the same command to resume)", err=True)
            sys.exit(130)
        except BaseException:  # click's own errors and anything unexpected: start them on a line of their own
            _close_progress_bars()
            raise

    return wrapper


def _close_progress_bars() -> None:
    """Close the progress bars an error left open, so the error starts on its own line, not after a bar."""
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the error
            pass


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="cfx", prog_name="cfx")
def main() -> None:
    """cfx: why should I not trust this prediction, and what would have to change for the model to be confident?

    \b
    Start with the embedded demo (nothing is downloaded):
        cfx demo --out cfx-demo
    Check how cfx sees your own classifier and data:
        cfx inspect --model torchscript:model.pt --image-size 224 --data images/
    """
    load_plugins()  # installed plugins register their kinds (scores, editors, reporters, ...) before any option is read
    warnings.showwarning = _show_warning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line: one line that says what is wrong, not the cfx source line that raised it."""
    print(f"warning: {message}", file=file if file is not None else sys.stderr)


@main.command(context_settings=CONTEXT)
@click.option("--out", type=click.Path(file_okay=False), default="cfx-demo", show_default=True,
              help="Folder for summary.json.")
@click.option("--datasets", default="shapes,digits", show_default=True,
              help="Comma-separated demo data sets: shapes, shapes-biased, digits.")
@click.option("--seed", default=0, show_default=True, help="Seed of the demo world and of training.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where trained demo models are cached (default: $CFX_CACHE_DIR or ~/.cache/cfx).")
@click.option("--retrain", is_flag=True, help="Train the demo models again even if cached.")
@click.option("--explain-per-cause", default=20, show_default=True,
              help="Images per cause and direction in the explanation table (0 to skip it).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_friendly_errors
def demo(out: str, datasets: str, seed: int, cache_dir: str | None, retrain: bool, explain_per_cause: int,
         quiet: bool) -> None:
    """The whole pipeline on the embedded demo world: train (or load), fit, measure, explain, report.

    \b
    Data sets: the procedural shapes world (6 shape classes; colour, texture, background, size, position and
    rotation vary) and scikit-learn's handwritten digits. Each gets a small CNN classifier and the convolutional
    autoencoder PaRCE needs, trained on first use (about 1-2 minutes on 2 CPU cores) and cached, then fitted.
    Prints accuracy and mean max-softmax per split and per cause strength, AUROC of every trust score, and (for the
    first data set) the explanation accuracy per cause and direction; then runs the main job (cfx explain) on a
    review set with injected causes and writes OUT/<dataset>/report.html. Writes OUT/summary.json.
    """
    names = [n.strip() for n in datasets.split(",") if n.strip()]
    out_dir = Path(out)
    summary: dict[str, Any] = {"command": "demo", "seed": seed, "datasets": {}}
    for name in names:
        t0 = time.perf_counter()
        try:
            models = load_demo(name, seed=seed, cache_dir=cache_dir, retrain=retrain, progress=not quiet)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--datasets") from None
        seconds = time.perf_counter() - t0
        clf = models.classifier
        result: dict[str, Any] = {"classes": models.data.class_names, "cache": str(models.cache_path),
                                  "loaded_from_cache": models.loaded_from_cache, "seconds": round(seconds, 2),
                                  "training": {k: v for k, v in models.training.items() if k.endswith("seconds")},
                                  "splits": {}, "causes": {}}

        def evaluate(images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
            with torch.inference_mode():
                probs = torch.softmax(clf.logits(images), dim=1)
            return (float((probs.argmax(1) == labels).float().mean()), float(probs.max(1).values.mean()))

        rows = []
        for split in ("train", "calibration", "test"):
            x, y = models.data.split(split)
            acc, msp = evaluate(x, y)
            result["splits"][split] = {"n": len(y), "accuracy": acc, "mean_msp": msp}
            rows.append([split, len(y), acc, msp])
        how = "loaded from cache" if models.loaded_from_cache else "trained"
        click.echo(f"\n{name}: {len(models.data.class_names)} classes, models {how} in {seconds:.1f} s "
                   f"({models.cache_path})")
        click.echo(_table(["split", "n", "accuracy", "mean MSP"], rows))

        x_test, y_test = models.data.split("test")
        rows = []
        grey = is_grey(x_test)
        for cause, grid in CAUSES.items():
            if grey and SHIFTS.get(cause).colour:  # a colour change cannot act on grey images
                result["causes"][cause] = {"grid": list(grid), "test": None,
                                           "note": "not applicable: the images are grey"}
                rows.append([cause, "n/a (grey images)", "", "", "", ""])
                continue
            per_strength = []
            for j, k in enumerate(grid):
                acc, msp = evaluate(apply_shift(x_test, cause, k, seed=seed + j), y_test)
                per_strength.append({"strength": k, "accuracy": acc, "mean_msp": msp})
            examples = cause_examples(x_test, y_test, clf, cause, seed=seed)
            result["causes"][cause] = {"grid": list(grid), "test": per_strength,
                                       "examples_kept": int(len(examples.images))}
            strong = per_strength[-1]
            rows.append([cause, f"{grid[0]:g} .. {grid[-1]:g}", per_strength[0]["accuracy"], strong["accuracy"],
                         strong["mean_msp"], len(examples.images)])
        click.echo(f"test split under each cause (clean accuracy {result['splits']['test']['accuracy']:.3f}, "
                   f"mean MSP {result['splits']['test']['mean_msp']:.3f}):")
        click.echo(_table(["cause", "grid", "acc (mild)", "acc (strong)", "MSP (strong)", "examples MSP<0.9"], rows))
        t1 = time.perf_counter()
        fitted = demo_fitted(models, progress=not quiet, refit=retrain)
        result["fitted"] = {"path": str(fitted.path), "seconds": round(time.perf_counter() - t1, 2),
                            "parce": fitted.manifest["parce"]}
        conditions = cause_conditions(x_test, y_test, seed=seed)
        methods = applicable_scores(clf, fitted)
        trust = evaluate_conditions(clf, conditions, methods, fitted=fitted)
        result["trust"] = json.loads(json.dumps(trust).replace("NaN", "null"))
        click.echo("misprediction detection, AUROC per trust score (test split clean, and under each cause at "
                   "every strength):")
        click.echo(_table(["score"] + list(conditions),
                          [[m] + [trust[c][m]["auroc"] for c in conditions] for m in methods]))
        if name == names[0] and explain_per_cause > 0:
            bench = explanation_benchmark(models, fitted, per_cause=explain_per_cause, seed=seed + 1)
            result["explanations"] = bench
            click.echo(f"explanation accuracy of the evidence reporter, each cause in each direction (up to "
                       f"{explain_per_cause} images each whose competency fell below the threshold; "
                       "bench/explanations.py runs the full benchmark):")
            click.echo(_table(["cause / direction", "n", "accuracy", "named"],
                              [[g, c["used"], c["accuracy"],
                                ", ".join(f"{k} {v}" for k, v in sorted(c["named"].items(), key=lambda kv: -kv[1]))]
                               for g, c in bench["groups"].items() if c["used"]]
                              + [["mean", "", bench["mean"], ""]]))
        if name == names[0]:
            review_dir = out_dir / name
            click.echo(f"\nthe main job on demo:{name}:review (test images with injected causes"
                       + (", and unfamiliar stars" if name.startswith("shapes") else "") + "):")
            run = run_explain(clf, demo_source(f"demo:{name}:review"), fitted, review_dir, progress=not quiet,
                              data_spec=f"demo:{name}:review", model_spec=f"demo:{name}", restart=True)
            result["review"] = {"out": str(review_dir), "counts": run.counts, "timing": run.timing}
            _print_explain_summary(run, review_dir)
        summary["datasets"][name] = result
    _write_json(out_dir / "summary.json", summary)
    click.echo(f"\nwrote {out_dir / 'summary.json'}")
    if (out_dir / names[0] / "report.html").exists():
        click.echo(f"open the review report: {(out_dir / names[0] / 'report.html').resolve()}")


@main.command(context_settings=CONTEXT)
@model_options
@click.option("--data", "data_spec", default=None, metavar="SOURCE",
              help="Optional data source to check: a folder, a .csv/.jsonl manifest, or demo:shapes / demo:digits.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Also write OUT/summary.json.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@_friendly_errors
def inspect(model_spec: str, image_size: str | None, mean: str | None, std: str | None, classes: str | None,
            head: str | None, device: str, data_spec: str | None, out: str | None, batch_size: int) -> None:
    """Show how cfx sees a classifier (head, classes, preprocessing) and, with --data, a data source.

    With --data, every image is decoded and classified; unreadable files are listed as errors (the run goes on).
    """
    if out is not None:
        _check_out(out)
    classifier = _load_model(model_spec, image_size, mean, std, classes, head, device)
    info: dict[str, Any] = {"command": "inspect", "model": classifier.describe()}
    d = info["model"]
    click.echo(f"model     {model_spec}\nhead      {d['head']} ({d['feature_dim']} features -> {d['num_classes']} "
               f"classes)\nclasses   {', '.join(d['class_names'][:10]) + (' ...' if len(d['class_names']) > 10 else '') if d['class_names'] else '(none: give --classes FILE)'}"
               f"\npreproc   size={d['preprocessing']['size']} mean={d['preprocessing']['mean']} "
               f"std={d['preprocessing']['std']}"
               + (" channels=1 (a grey model: it gets the luma of each image)"
                  if d["preprocessing"].get("channels") == 1 else ""))
    if data_spec:
        source = _open_data(data_spec, classifier)
        info["model"] = classifier.describe()
        size = classifier.preprocessing.size
        counts = {"images": 0, "errors": 0, "labelled": 0, "correct": 0}
        errors = []
        check = None
        with torch.inference_mode():
            for batch in tqdm(iter_batches(source, batch_size, size=size), total=-(-len(source) // batch_size),
                              desc="classifying", unit="batch"):
                errors += [{"id": r.id, "error": r.error} for r in batch.errors]
                if len(batch) and check is None and counts["images"] == 0:
                    check = advise_on_inputs(classifier, batch.images[:32], warn=False)  # printed below
                    candidates = suggest_normalisation(classifier, batch.images[:32]) if (
                        check is not None and check.suspicious) else []
                if len(batch):
                    pred = classifier.logits(batch.images).argmax(1).cpu()
                    known = batch.labels >= 0
                    counts["labelled"] += int(known.sum())
                    counts["correct"] += int((pred[known] == batch.labels[known]).sum())
                    counts["images"] += len(batch)
        counts["errors"] = len(errors)
        info["data"] = {"source": data_spec, **counts, "error_records": errors}
        acc = f", accuracy {counts['correct'] / counts['labelled']:.3f}" if counts["labelled"] else ""
        click.echo(f"data      {data_spec}: {counts['images']} images, {counts['errors']} unreadable{acc}")
        for e in errors[:10]:
            click.echo(f"  error   {e['id']}: {e['error']}")
        if check is not None:
            info["data"]["input_check"] = check.to_dict()
            click.echo(f"inputs    {'WARNING: ' if check.suspicious else ''}{check.message}")
            if candidates:
                info["data"]["input_check"]["candidates"] = candidates
                best = candidates[0]
                if not best["suspicious"]:
                    flags = " ".join(f"--{k} {','.join(f'{v:g}' for v in best[k])}" for k in ("mean", "std")
                                     if best[k] is not None) or "no --mean/--std"
                    click.echo(f"          the {best['name']} normalisation gives a spread ratio of "
                               f"{best['spread_ratio']:.2g}: try {flags}")
    if out:
        _write_json(Path(out) / "summary.json", info)


@main.command(context_settings=CONTEXT)
@model_options
@click.option("--train", "train_spec", required=True, metavar="SOURCE",
              help="Reference data, ideally not the classifier's own training set. Labelled: everything is fitted; "
                   "unlabelled: what needs no labels (PaRCE uncalibrated, no Mahalanobis or oracle).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="The fitted folder to write.")
@click.option("--calibration", "calibration_spec", default=None, metavar="SOURCE",
              help="Held-out labelled calibration data (default: split --calibration-fraction off --train).")
@click.option("--calibration-fraction", default=0.2, show_default=True, help="Share of --train used to calibrate.")
@click.option("--ae-size", type=int, default=None, help="Autoencoder resolution (default: image size, max 64).")
@click.option("--ae-epochs", default=25, show_default=True, help="Autoencoder training epochs.")
@click.option("--oracle", is_flag=True, help="Also train the steep-slope trust oracle.")
@click.option("--oracle-loss", type=click.Choice(["steep_slope", "ce", "focal", "tcp"]), default="steep_slope",
              show_default=True)
@click.option("--oracle-epochs", default=10, show_default=True)
@click.option("--oracle-copies", default=2, show_default=True,
              help="Corrupted copies of each calibration image added to the oracle's training data.")
@click.option("--ddpm", is_flag=True, help="Also train a small DDPM for SDEdit edits toward the training data.")
@click.option("--ddpm-steps", default=600, show_default=True, help="DDPM training steps (about 0.25 s each at 32 px).")
@click.option("--index-metric", type=click.Choice(["l1", "l2", "cos"]), default="l1", show_default=True,
              help="Distance of the latent nearest-neighbour index (LNN counterfactuals).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_friendly_errors
def fit(model_spec: str, image_size: str | None, mean: str | None, std: str | None, classes: str | None,
        head: str | None, device: str, train_spec: str, out: str, calibration_spec: str | None,
        calibration_fraction: float, ae_size: int | None, ae_epochs: int, oracle: bool, oracle_loss: str,
        oracle_epochs: int, oracle_copies: int, ddpm: bool, ddpm_steps: int, index_metric: str, batch_size: int,
        seed: int, quiet: bool) -> None:
    """Fit the trust scores that learn from reference data and write a fitted folder.

    \b
    Trains the PaRCE autoencoder, calibrates PaRCE competency, fits the Mahalanobis score, stores every score's
    calibration percentiles (for --flag-percentile without calibration data) and, with --oracle, trains the
    steep-slope trust oracle. Builds the FAISS latent index of confident calibration images for LNN
    counterfactuals. Use the folder with cfx trust --fitted DIR.
    \b
    Example:
        cfx fit --model demo:shapes --train demo:shapes:train --calibration demo:shapes:calibration \\
                --out fitted/ --oracle
    """
    _check_out(out)
    classifier = _load_model(model_spec, image_size, mean, std, classes, head, device)
    train_source = _open_data(train_spec, classifier)
    cal_source = _open_data(calibration_spec, classifier) if calibration_spec else None
    try:
        fitted = fit_folder(classifier, train_source, out, calibration=cal_source,
                            calibration_fraction=calibration_fraction, ae_size=ae_size, ae_epochs=ae_epochs,
                            oracle=oracle, oracle_loss=oracle_loss, oracle_epochs=oracle_epochs,
                            oracle_copies=oracle_copies, index_metric=index_metric, ddpm=ddpm,
                            ddpm_steps=ddpm_steps, batch_size=batch_size,
                            seed=seed, progress=not quiet)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    m = fitted.manifest
    click.echo(f"fitted {m['counts']['train']} train / {m['counts']['calibration']} calibration images "
               f"({m['counts']['errors']} unreadable or failed) in {m['seconds']:.1f} s")
    click.echo(f"PaRCE: z* = {m['parce']['z_star']:.2f}, "
               + (f"calibration accuracy {m['parce']['calibration_accuracy']:.3f}, mean competency off by "
                  f"{m['parce']['calibration_gap']:.3f}" if m.get("labelled", True) else
                  "matched to the model's mean top probability (no labels)")
               + "; autoencoder "
               f"{m['autoencoder']['image_size']} latent {m['autoencoder']['latent_dim']}")
    if "oracle" in m:
        click.echo(f"oracle ({m['oracle']['loss']}): trained on {m['oracle_training']['images']} images, "
                   f"classifier error rate there {m['oracle_training']['error_rate']:.3f}")
    if "ddpm" in m:
        click.echo(f"DDPM: {m['ddpm']['steps']} steps at {m['ddpm']['image_size']} px, final loss "
                   f"{m['ddpm']['final_loss']:.3f}")
    stats = m.get("reference_statistics") or {}
    if stats:
        click.echo(f"reference for explanations: {stats['images']} {stats['images_from']}"
                   + (f", {stats['classes']} predicted classes" if "classes" in stats else ""))
        if stats.get("narrow"):
            click.echo(f"warning: {stats['narrow']}")
    for name, reason in (m.get("uncalibrated") or {}).items():
        click.echo(f"uncalibrated: {name}: {reason}")
    for name, reason in (m.get("unavailable") or {}).items():
        click.echo(f"not available: {name}: {reason}")
    summary = {"command": "fit", "fitted": str(Path(out).resolve()),
               **{k: v for k, v in m.items() if k not in ("files", "calibration_percentiles")}}
    _write_json(Path(out) / "summary.json", summary)
    click.echo(f"wrote {Path(out) / 'manifest.json'}")


@main.command(context_settings=CONTEXT)
@model_options
@click.option("--data", "data_spec", required=True, metavar="SOURCE",
              help="Images to score: a folder, a .csv/.jsonl manifest, or demo:shapes[:SPLIT] / demo:digits[:SPLIT].")
@click.option("--out", type=click.Path(file_okay=False), default="cfx-trust", show_default=True,
              help="Folder for scores.csv, summary.json, roc.png and risk_coverage.png.")
@click.option("--methods", default="default", show_default=True,
              help="Comma-separated score names (see --list-methods); 'default': every applicable score that costs "
                   "no extra pass (logit scores, GradTrust, GradNorm, PaRCE, Mahalanobis); 'all': ODIN, MC dropout "
                   "and the oracle too.")
@click.option("--list-methods", is_flag=True, is_eager=True, expose_value=False, callback=_list_methods,
              help="List the trust scores and exit.")
@click.option("--fitted", "fitted_dir", type=click.Path(file_okay=False), default=None,
              help="Fitted folder from cfx fit: adds PaRCE, Mahalanobis and the oracle, and stored percentiles.")
@click.option("--flag-score", default="gradtrust_topk", show_default=True,
              help="Score that decides the flags (the default is the one measured best without labels: "
                   "docs/results.md).")
@click.option("--flag-below", type=float, default=None, help="Flag samples whose flag score is below this number.")
@click.option("--flag-percentile", type=float, default=None,
              help="Flag below this percentile (0-100) of the flag score on --calibration data, or on the "
                   "calibration split stored by cfx fit (--fitted).")
@click.option("--calibration", "calibration_spec", default=None, metavar="SOURCE",
              help="Calibration data for --flag-percentile (e.g. demo:shapes:calibration).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--bootstrap", default=0, show_default=True, help="Bootstrap resamples for confidence intervals.")
@click.option("--odin-temperature", default=1000.0, show_default=True)
@click.option("--odin-epsilon", default=0.0014, show_default=True)
@click.option("--mc-passes", default=10, show_default=True, help="Dropout passes for mc_dropout.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@ray_options
@_friendly_errors
def trust(model_spec: str, image_size: str | None, mean: str | None, std: str | None, classes: str | None,
          head: str | None, device: str, data_spec: str, out: str, methods: str, fitted_dir: str | None,
          flag_score: str,
          flag_below: float | None, flag_percentile: float | None, calibration_spec: str | None, batch_size: int,
          bootstrap: int, odin_temperature: float, odin_epsilon: float, mc_passes: int, ray_address: str | None,
          ray_actors: int | None, ray_cpus_per_actor: float, ray_gpus_per_actor: float, quiet: bool) -> None:
    """Score every prediction with every trust score, flag the untrusted ones, and measure the scores.

    \b
    Writes OUT/scores.csv (one row per image), OUT/summary.json (per sample: id, label, prediction, correct,
    scores, flagged, error; metrics per method) and, when labels are known, OUT/roc.png and
    OUT/risk_coverage.png, and prints AUROC, AUPR-Error, FPR@95%TPR and AURC per score.
    Every score is "higher = more trusted". Unreadable images are error rows; the run goes on.
    \b
    Example:
        cfx trust --model demo:shapes --data demo:shapes:test --flag-percentile 10 \\
                  --calibration demo:shapes:calibration
    """
    _check_out(out)
    engine = _engine(ray_address, ray_actors, ray_cpus_per_actor, ray_gpus_per_actor)
    classifier = _load_model(model_spec, image_size, mean, std, classes, head, device)
    fitted = None
    if fitted_dir:
        fitted = Fitted.load(fitted_dir, classifier)
    keyword = methods.strip()
    chosen = (applicable_scores(classifier, fitted) if keyword == "all" else default_scores(classifier, fitted)
              if keyword == "default" else [m.strip() for m in methods.split(",") if m.strip()])
    unknown = [m for m in chosen if m not in SCORES]
    if unknown:
        raise click.BadParameter(f"unknown score(s) {unknown}; choose from {', '.join(SCORES)}",
                                 param_hint="--methods")
    if flag_below is not None and flag_percentile is not None:
        raise click.UsageError("give either --flag-below or --flag-percentile, not both")
    if flag_percentile is not None and not calibration_spec and fitted is None:
        raise click.UsageError("--flag-percentile needs --calibration SOURCE or --fitted DIR to take the "
                               "percentile on")
    needs_fit = [m for m in chosen if SCORES[m].needs_fit and (fitted is None or m not in fitted.score_names)]
    if needs_fit:
        raise click.BadParameter(f"score(s) {needs_fit} need a fitted folder that has them (cfx fit"
                                 f"{' --oracle' if 'oracle' in needs_fit else ''}; then --fitted DIR)",
                                 param_hint="--methods")
    if flag_score not in SCORES:
        raise click.BadParameter(f"unknown score {flag_score!r}; choose from {', '.join(SCORES)}",
                                 param_hint="--flag-score")
    if not SCORES[flag_score].applies_to(classifier, fitted):
        default = click.get_current_context().get_parameter_source("flag_score") == ParameterSource.DEFAULT
        if not default:
            raise click.BadParameter(f"{flag_score} does not apply to this model ({SCORES[flag_score].description})",
                                     param_hint="--flag-score")
        flag_score = "msp"  # the default, GradTrust-top-5, is one number for every image of a two-class model
        if flag_below is not None or flag_percentile is not None:
            click.echo("flag score msp: gradtrust_topk, the default, is the same for every image of a "
                       f"{classifier.num_classes}-class model")
    if (flag_below is not None or flag_percentile is not None) and flag_score not in chosen:
        chosen.append(flag_score)
    options = {"odin_temperature": odin_temperature, "odin_epsilon": odin_epsilon, "mc_passes": mc_passes,
               "fitted": fitted}
    def calibration(score: str, percentile: float) -> Threshold:
        if not calibration_spec:  # the calibration split stored by cfx fit
            return fitted.threshold(score, percentile)
        cal = score_source(classifier, _open_data(calibration_spec, classifier), [score], batch_size,
                           progress=not quiet, **options)
        return Threshold.from_percentile(score, cal.scores[score], percentile)

    try:
        threshold = resolve_threshold(flag_score, flag_below, flag_percentile, calibration=calibration)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if threshold is not None and threshold.percentile is not None:
        where = f"stored in {fitted_dir}" if not calibration_spec else f"of {calibration_spec}"
        click.echo(f"threshold {flag_score} < {threshold.value:.6g} (percentile {flag_percentile:g} of the "
                   f"{threshold.calibration_size} calibration samples {where})")
    source = _open_data(data_spec, classifier)
    checked = input_check(classifier, source)
    try:
        if engine is None:
            table = score_source(classifier, source, chosen, batch_size, progress=not quiet, **options)
        else:
            with ray_session(engine):
                table = score_table_on_ray(engine, classifier, source, chosen, batch_size, progress=not quiet,
                                           **options)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    summary = write_trust_outputs(table, out, classifier, {"source": data_spec, **source.describe()},
                                  threshold=threshold, bootstrap=bootstrap, input_check=checked)
    counts = summary["counts"]
    click.echo(f"scored {counts['samples']} samples ({counts['errors']} errors, {counts['labelled']} labelled)"
               + (f", flagged {counts['flagged']}" if counts["flagged"] is not None else ""))
    if counts["errors"] == counts["samples"]:
        first = next((f"{i}: {e}" for i, e in zip(table.ids, table.errors) if e), "")
        raise click.ClickException(f"none of the {counts['samples']} inputs could be scored (the first: {first}); "
                                   f"every row and its error is in {Path(out) / 'scores.csv'}")
    metrics = table.metrics()
    if metrics:
        ranked = dict(sorted(metrics.items(), key=lambda kv: -(kv[1]["auroc"] if kv[1]["auroc"] == kv[1]["auroc"]
                                                              else -1)))
        accuracy = next(iter(metrics.values()))["accuracy"]
        if all(m["auroc"] != m["auroc"] for m in metrics.values()):  # every AUROC is NaN: one outcome only
            click.echo(f"accuracy {accuracy:.3f}; misprediction detection needs both right and wrong predictions "
                       f"among the labelled samples, and {'every' if accuracy >= 0.5 else 'no'} prediction is right: "
                       "no detection metrics")
        else:
            click.echo(f"accuracy {accuracy:.3f}; misprediction detection:")
            click.echo(metrics_table(ranked))
    else:
        click.echo("no labels: metrics need labelled data (ImageFolder or a manifest with a label column)")
    written = ["summary.json", "scores.csv"] + (["roc.png", "risk_coverage.png"] if metrics else [])
    click.echo("wrote " + ", ".join(str(Path(out) / name) for name in written))


@main.command(context_settings=CONTEXT)
@model_options
@click.option("--data", "data_spec", required=True, metavar="SOURCE",
              help="Images: a folder (ImageFolder or flat), a CSV/JSONL manifest, or demo:shapes[:split].")
@click.option("--fitted", "fitted_dir", default=None, type=click.Path(file_okay=False),
              help="The folder written by cfx fit for this model. Without it the run is its own reference: flags "
                   "from a share of the run (10 %), counterfactuals from IGD and the nearest trusted image (NN).")
@click.option("--out", type=click.Path(file_okay=False), default="cfx-explain", show_default=True,
              help="Output folder: run.sqlite, summary.json, report.html.")
@click.option("--reporter", default="evidence", show_default=True,
              help="evidence (offline), transformers:PATH (local multimodal model) or openai:URL (endpoint; model "
                   "from $CFX_OPENAI_MODEL, key from $CFX_OPENAI_API_KEY).")
@click.option("--reporter-model", default=None, help="openai:URL: the model name (else $CFX_OPENAI_MODEL).")
@click.option("--reporter-key-env", default=None, metavar="VAR",
              help="openai:URL: the name of the environment variable that holds the key (the key itself is never "
                   "stored or printed). Default: $CFX_OPENAI_API_KEY, then $OPENAI_API_KEY, if set.")
@click.option("--reporter-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="openai:URL: seconds by which a whole answer must have arrived (default 20).")
@click.option("--reporter-concurrency", type=click.IntRange(min=1), default=None,
              help="openai:URL: requests in flight at once (default 4).")
@click.option("--generators", default=None,
              help="Counterfactual generators, any of reco, lgd, lnn (these need --fitted), igd, nn. Default: "
                   "reco,lgd,lnn with --fitted, igd,nn without. Those that cannot run here are listed in the report.")
@click.option("--flag-score", default="auto", show_default=True,
              help="Score that decides the flags. auto: the best on the fitted folder's labelled calibration data "
                   "(with at least 30 errors), else gradtrust_topk.")
@click.option("--flag-below", type=float, default=None, help="Flag samples whose flag score is below this number.")
@click.option("--flag-percentile", type=float, default=None,
              help="Flag below this percentile of the calibration scores stored by cfx fit (default 10 with "
                   "--fitted).")
@click.option("--flag-share", type=float, default=None,
              help="Flag the P percent least trusted samples of this run (fixed once all are scored; a resumed run "
                   "flags the same). Default 10 without --fitted.")
@click.option("--dataset-description", default=None, help="One sentence about the data, for LLM prompts.")
@click.option("--edit-search", type=click.Choice(["auto", "screened", "full"]), default="auto", show_default=True,
              help="How the restoring edit and the property curves are searched: screened (every direction at three "
                   "strengths, pixelation and the 3 most promising at every strength), full (every direction at "
                   "every strength), or auto: screened with --fitted, full without.")
@click.option("--edit-range", type=click.Choice(["reference", "full"]), default="reference", show_default=True,
              help="How far property edits go: as far as the reference images reach (the fitted folder's, else the "
                   "run's most trusted), or each editor's full range.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--explain-batch-size", default=None, type=click.IntRange(min=1),
              help="Flagged images explained together (one chunk of work, stored when done; on Ray, one actor "
                   "task). Default: 32 for small images, fewer for large ones (5 at 224 px), so an interrupted run "
                   "loses seconds of work.")
@click.option("--restart", is_flag=True, help="Discard the run in --out and start over.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@ray_options
@_friendly_errors
def explain(model_spec: str, image_size: str | None, mean: str | None, std: str | None, classes: str | None,
            head: str | None, device: str, data_spec: str, fitted_dir: str | None, out: str, reporter: str,
            reporter_model: str | None, reporter_key_env: str | None, reporter_timeout: float | None,
            reporter_concurrency: int | None, generators: str | None, flag_score: str, flag_below: float | None,
            flag_percentile: float | None,
            flag_share: float | None, dataset_description: str | None, edit_range: str, edit_search: str,
            batch_size: int,
            explain_batch_size: int | None, restart: bool, ray_address: str | None, ray_actors: int | None, ray_cpus_per_actor: float,
            ray_gpus_per_actor: float, quiet: bool) -> None:
    """Explain why predictions are untrusted, and write a review report.

    \b
    score → flag (threshold fixed before the run) → counterfactuals → property edits → evidence → explanation.
    Writes OUT/run.sqlite (everything, as it completes), OUT/summary.json and OUT/report.html. Unreadable inputs
    are listed in the report; the run goes on. Ctrl-C (or a crash) loses nothing: run the same command again to
    resume. A changed command on the same --out is refused unless --restart.
    \b
    Example:
        cfx explain --model demo:shapes --data demo:shapes:test --fitted fitted/ --out review/
        cfx explain --model python:mymodels:net --data photos/ --flag-share 20 --out review/
    """
    if flag_below is not None and flag_percentile is not None:
        raise click.UsageError("give either --flag-below or --flag-percentile, not both")
    _check_out(out)
    engine = _engine(ray_address, ray_actors, ray_cpus_per_actor, ray_gpus_per_actor)
    classifier = _load_model(model_spec, image_size, mean, std, classes, head, device)
    source = _open_data(data_spec, classifier)
    gens = [g.strip() for g in generators.split(",") if g.strip()] if generators else None
    try:
        run = run_explain(classifier, source, fitted_dir, out, reporter=reporter, generators=gens,
                              flag_score=flag_score, flag_below=flag_below, flag_percentile=flag_percentile,
                              flag_share=flag_share, batch_size=batch_size, restart=restart, progress=not quiet,
                              dataset_description=dataset_description, data_spec=data_spec,
                              model_spec=model_spec,
                              reporter_options={"model": reporter_model, "api_key_env": reporter_key_env,
                                                "timeout": reporter_timeout, "concurrency": reporter_concurrency},
                              edit_range=edit_range, edit_search=edit_search, engine=engine,
                              explain_batch_size=explain_batch_size)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    _print_explain_summary(run, Path(out))


def _print_explain_summary(result: ExplainResult, out: Path) -> None:
    c = result.counts
    t = result.timing
    if result.flag_score:
        click.echo(f"flag score {result.flag_score['score']}: {result.flag_score['reason']}")
    click.echo(f"scored {c['samples']} inputs ({c['errors']} unreadable or failed), flagged {c['flagged']}, "
               f"explained {c['explained']}" + (f" ({c['explain_errors']} failed)" if c["explain_errors"] else ""))
    if t.get("score_seconds") and t.get("explain_seconds"):
        click.echo(f"throughput: {c['samples'] / t['score_seconds']:.0f} images/s scored, "
                   f"{c['explained'] / t['explain_seconds']:.1f} flagged images/s explained")
    stages = t.get("explain_stages") or {}
    if stages and c["explained"]:
        click.echo("per flagged image: " + ", ".join(f"{name} {seconds / c['explained']:.2g} s" for name, seconds in
                                                     sorted(stages.items(), key=lambda kv: -kv[1])))
    if c["causes"]:
        click.echo("causes: " + ", ".join(f"{k} {v}" for k, v in sorted(c["causes"].items(), key=lambda kv: -kv[1])))
    if c.get("backends"):
        click.echo("explained by: " + ", ".join(f"{k} {v}" for k, v in sorted(c["backends"].items())))
    click.echo(f"wrote {out / 'report.html'}, {out / 'summary.json'}, {out / 'run.sqlite'}")


@main.command(context_settings=CONTEXT)
@model_options
@click.option("--data", "data_spec", required=True, metavar="SOURCE",
              help="Images with metadata: a folder, a CSV/JSONL manifest (extra columns become slices), or demo data "
                   "such as demo:shapes-biased:test.")
@click.option("--fitted", "fitted_dir", default=None, type=click.Path(file_okay=False),
              help="The folder written by cfx fit for this model (optional: without it, flags come from a share of "
                   "the run, 10 % by default).")
@click.option("--out", type=click.Path(file_okay=False), default="cfx-audit", show_default=True,
              help="Output folder: audit.html, audit.json, run.sqlite.")
@click.option("--nuisance", multiple=True, metavar="PROPERTY",
              help="A property that should not matter (repeat, or comma-separate): brightness, contrast, saturation, "
                   "hue, noise, denoise, pixelation, sharpness, blur, occlusion, or (demo world) a generating "
                   "attribute such as background_hue.")
@click.option("--sample", default=2000, show_default=True, type=click.IntRange(min=0),
              help="Images that get the property edits (0 = all).")
@click.option("--properties", default=None, help="Only these properties (comma-separated); default all.")
@click.option("--flag-score", default="auto", show_default=True,
              help="Trust score that decides the flags (auto: as for cfx explain).")
@click.option("--flag-below", type=float, default=None, help="Flag samples whose flag score is below this number.")
@click.option("--flag-percentile", type=float, default=None,
              help="Flag below this percentile of the stored calibration scores (default 10).")
@click.option("--flag-share", type=float, default=None, help="Flag the P percent least trusted images of this run.")
@click.option("--steps", default=8, show_default=True, type=click.IntRange(min=2),
              help="Edit steps per property and direction (at least 2; with fewer than 5 the shuffle test can "
                   "hardly reach significance).")
@click.option("--seed", default=0, show_default=True, help="Seed of the property sample.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--restart", is_flag=True, help="Discard the run in --out and start over.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@ray_options
@_friendly_errors
def audit(model_spec: str, image_size: str | None, mean: str | None, std: str | None, classes: str | None,
          head: str | None, device: str, data_spec: str, fitted_dir: str | None, out: str, nuisance: tuple[str, ...],
          sample: int, properties: str | None, flag_score: str, flag_below: float | None,
          flag_percentile: float | None, flag_share: float | None, steps: int, seed: int, batch_size: int,
          restart: bool, ray_address: str | None, ray_actors: int | None, ray_cpus_per_actor: float,
          ray_gpus_per_actor: float, quiet: bool) -> None:
    """Audit a data set and a model for bias: properties it leans on, slices it fails on, and where trust is low.

    \b
    Property sensitivity: EPGM of the predicted class along every parametric edit (brightness, contrast, hue, …)
    and, for the demo world, every re-rendered generating attribute, on --sample images; ranked, with the
    nuisance properties you name flagged when the model leans on them. Slices: accuracy, mean trust and flag rate
    per metadata value (and binned brightness / saturation) with bootstrap intervals, tested against the rest.
    Writes OUT/audit.html, OUT/audit.json and OUT/run.sqlite (re-run to resume).
    \b
    Example:
        cfx audit --model demo:shapes-biased --data demo:shapes-biased:test --fitted fitted/ \\
                  --nuisance background_hue,background_value,object_hue
    """
    if flag_below is not None and flag_percentile is not None:
        raise click.UsageError("give either --flag-below or --flag-percentile, not both")
    names = [p.strip() for n in nuisance for p in n.split(",") if p.strip()]
    _check_out(out)
    engine = _engine(ray_address, ray_actors, ray_cpus_per_actor, ray_gpus_per_actor)
    classifier = _load_model(model_spec, image_size, mean, std, classes, head, device)
    source = _open_data(data_spec, classifier)
    try:
        result: AuditResult = run_audit(classifier, source, fitted_dir, out, nuisance=names, sample=sample or None,
                           properties=[p.strip() for p in properties.split(",")] if properties else None,
                           flag_score=flag_score, flag_below=flag_below, flag_percentile=flag_percentile,
                           flag_share=flag_share, steps=steps, batch_size=batch_size, restart=restart,
                           progress=not quiet, seed=seed,
                           data_spec=data_spec, model_spec=model_spec, engine=engine)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    c = result.counts
    click.echo(f"audited {c['samples']} images ({c['errors']} unreadable or failed, {c['flagged']} flagged); property edits on "
               f"{c['property_sample']}")
    click.echo(_table(["property", "edit", "mean EPGM", "significant", "flips", "nuisance", "flagged"],
                      [[r["property"], r["kind"], round(r["mean_epgm"], 4), r["share_significant"], r["share_flips"],
                        "yes" if r["nuisance"] else "", "FLAGGED" if r["flagged"] else ""]
                       for r in result.properties[:12]]))
    bad = [s for s in result.slices if s["flagged"]]
    click.echo(f"{len(bad)} slices differ from the rest" + (":" if bad else ""))
    for s in bad[:8]:
        click.echo(f"  {s['column']} = {s['slice']}: n {s['n']}, accuracy {s['accuracy'] if s['accuracy'] is None else round(s['accuracy'], 3)} "
                   f"(rest {s['accuracy_rest'] if s['accuracy_rest'] is None else round(s['accuracy_rest'], 3)}), "
                   f"flag rate {s['flag_rate']:.3f} (rest {s['flag_rate_rest']:.3f})")
    if len(bad) > 8:
        click.echo(f"  … and {len(bad) - 8} more (every slice is in audit.html and audit.json)")
    for column, why in result.columns_left_out.items():
        click.echo(f"metadata column {column!r} not sliced: {why}")
    click.echo(f"wrote {Path(out) / 'audit.html'}, {Path(out) / 'audit.json'}")


@main.command(context_settings=CONTEXT)
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="An output folder of cfx explain (it holds run.sqlite).")
@click.option("--max-cards", default=200, show_default=True, type=click.IntRange(min=0),
              help="Flagged samples shown as cards.")
@_friendly_errors
def report(run_dir: str, max_cards: int) -> None:
    """Re-render RUN/report.html and RUN/summary.json from the run store, without recomputing anything.

    For a cfx audit folder (RUN/audit.json), re-render RUN/audit.html from it instead."""
    audit_json = Path(run_dir) / "audit.json"
    if audit_json.exists():  # an audit: its report comes from audit.json, not from explanations
        with RunStore(run_dir) as store:
            path = render_audit(store, json.loads(audit_json.read_text()))
        click.echo(f"an audit run: wrote {path}")
        return
    if (Path(run_dir) / "run.sqlite").exists():
        with RunStore(run_dir) as store:
            job = (store.config or {}).get("job")
        if job == "audit":  # an audit that stopped before writing audit.json: nothing to render yet
            raise click.ClickException(f"{run_dir} holds an audit that has not finished (no audit.json yet); run the "
                                       "same cfx audit command again to finish it, then its audit.html is written")
    path = render_review(run_dir, max_cards=max_cards)
    status = json.loads((Path(run_dir) / "summary.json").read_text()).get("status", "complete")
    if status != "complete":
        click.echo(f"this run is {status}")
    click.echo(f"wrote {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
