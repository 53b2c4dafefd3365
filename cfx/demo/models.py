"""The demo's trained models: a small CNN and the PaRCE autoencoder per demo data set, trained once and cached.

:func:`load_demo` trains (on first use) and caches, keyed by a hash of the config, a
:class:`~cfx.core.nets.SmallCNN` classifier and a :class:`~cfx.core.nets.ConvAutoencoder` (the reconstruction model
PaRCE needs), with the splits train 72 % / calibration 18 % / test 10 %. :func:`demo_fitted` makes (or loads) the
fitted folder of a demo data set with :func:`cfx.jobs.fit`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cfx.core.models import Classifier, ClassifierError, Preprocessing
from cfx.core.nets import ConvAutoencoder, SmallCNN
from cfx.core.training import train_model
from cfx.evidence import STATISTICS_VERSION
from cfx.jobs.fitting import fit
from cfx.trust.fitted import Fitted, FittedError, TrustOracle

from .world import DemoData, WorldConfig, digits_data, shapes_data

__all__ = ["DATASETS", "DemoModels", "TrainingConfig", "default_cache_dir", "demo_config", "demo_fitted",
           "load_demo"]


class DemoCacheError(ClassifierError):
    """The demo's model cache cannot be written (before any training starts)."""


def default_cache_dir() -> Path:
    """``$CFX_CACHE_DIR``, else ``~/.cache/cfx``."""
    return Path(os.environ.get("CFX_CACHE_DIR") or Path.home() / ".cache" / "cfx")


@dataclass(frozen=True)
class TrainingConfig:
    classifier_epochs: int = 12
    autoencoder_epochs: int = 25
    batch_size: int = 64
    autoencoder_batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0


DATASETS = ("shapes", "shapes-biased", "digits")


def demo_config(name: str, seed: int, bias_rate: float) -> dict:
    if name not in DATASETS:
        raise ValueError(f"unknown demo data set {name!r}; choose one of {DATASETS}")
    world = asdict(WorldConfig(seed=seed, bias_rate=bias_rate if name == "shapes-biased" else 0.0)) \
        if name.startswith("shapes") else {"image_size": 32, "seed": seed}
    train = asdict(TrainingConfig(seed=seed, classifier_epochs=20,
                                  autoencoder_epochs=60 if name == "digits" else 25))
    return {"dataset": name, "world": world, "training": train, "version": 4, "torch": torch.__version__}


@dataclass
class DemoModels:
    """A demo data set with its trained classifier and autoencoder (see :func:`load_demo`)."""

    data: DemoData
    classifier: Classifier
    autoencoder: ConvAutoencoder
    config: dict
    cache_path: Path
    training: dict = field(default_factory=dict)
    loaded_from_cache: bool = False


def load_demo(name: str = "shapes", seed: int = 0, bias_rate: float = 0.9, cache_dir: str | Path | None = None,
              retrain: bool = False, progress: bool = True) -> DemoModels:
    """The demo data set ``name`` (``shapes``, ``shapes-biased`` or ``digits``) with trained models.

    Trains on first use (a few tens of seconds on 2 CPU cores per data set) and caches the weights under
    ``cache_dir`` (default :func:`default_cache_dir`) keyed by a hash of the whole config, so a later call loads
    in about a second. ``bias_rate`` applies to ``shapes-biased`` only. Deterministic given ``seed``.
    """
    config = demo_config(name, seed, bias_rate)
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / "demo" / f"{name}-{key}"
    if name.startswith("shapes"):
        data = shapes_data(WorldConfig(**config["world"]))
    else:
        data = digits_data(seed=seed)
    size = data.images.shape[-1]
    num_classes = len(data.class_names)
    classifier_net = SmallCNN(num_classes, image_size=size)
    autoencoder = ConvAutoencoder(image_size=size)
    files = [path / "classifier.pt", path / "autoencoder.pt", path / "training.json"]
    loaded = False
    training: dict = {}
    if not retrain and all(f.is_file() for f in files):
        try:
            classifier_net.load_state_dict(torch.load(files[0], map_location="cpu", weights_only=True))
            autoencoder.load_state_dict(torch.load(files[1], map_location="cpu", weights_only=True))
            training = json.loads(files[2].read_text())
            loaded = True
        except Exception:  # a corrupt or stale cache entry is retrained, never trusted
            loaded = False
    if not loaded:
        try:  # before minutes of training: the models must be kept somewhere
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            raise DemoCacheError(f"the demo models are cached in {path}, which cannot be written "
                                 f"({exc.strerror or exc}); set CFX_CACHE_DIR to a folder you can write to") from None
        if progress:
            print(f"training the {name} demo models once (cached in {path})", file=sys.stderr)
        tc = TrainingConfig(**config["training"])
        x_train, y_train = data.split("train")
        torch.manual_seed(tc.seed)
        classifier_net = SmallCNN(num_classes, image_size=size)
        autoencoder = ConvAutoencoder(image_size=size)
        t0 = time.perf_counter()
        c_loss = train_model(classifier_net, x_train, y_train, tc.classifier_epochs, tc.batch_size, tc.lr, tc.seed,
                      f"{name}: classifier", progress)
        t1 = time.perf_counter()
        a_loss = train_model(autoencoder, x_train, None, tc.autoencoder_epochs, tc.autoencoder_batch_size, tc.lr,
                      tc.seed + 1, f"{name}: autoencoder", progress)
        t2 = time.perf_counter()
        training = {"classifier_seconds": round(t1 - t0, 2), "autoencoder_seconds": round(t2 - t1, 2),
                    "classifier_loss": c_loss, "autoencoder_loss": a_loss}
        path.mkdir(parents=True, exist_ok=True)
        for obj, target in ((classifier_net.state_dict(), files[0]), (autoencoder.state_dict(), files[1])):
            tmp = target.with_suffix(".tmp")
            torch.save(obj, tmp)
            tmp.replace(target)
        (path / "config.json").write_text(json.dumps(config, indent=2))
        files[2].write_text(json.dumps(training))
    classifier_net.eval()
    autoencoder.eval()
    classifier = Classifier.wrap(classifier_net, preprocessing=Preprocessing(size=(size, size)),
                                 class_names=data.class_names, num_classes=num_classes, source=f"demo:{name}")
    return DemoModels(data, classifier, autoencoder, config, path, training, loaded)


def demo_fitted(models: DemoModels, progress: bool = True, refit: bool = False):
    """The fitted folder of a demo data set (PaRCE, Mahalanobis, the steep-slope oracle), made with
    :func:`cfx.jobs.fit` on its train and calibration splits and cached beside the demo models."""
    path = models.cache_path / "fitted"
    seed = int(models.config["training"]["seed"])
    if not refit and (path / "manifest.json").is_file():
        try:
            fitted = Fitted.load(path, models.classifier)
            current = (fitted.manifest.get("oracle") == TrustOracle(seed=seed).config()
                       and "latent_index" in fitted.manifest["counts"]  # made by this version of cfx fit
                       and (fitted.manifest.get("reference_statistics") or {}).get("version") == STATISTICS_VERSION)
            if current:
                return fitted
        except FittedError:
            pass  # stale or corrupted: fit again
    return fit(models.classifier, models.data.source("train"), path, calibration=models.data.source("calibration"),
               autoencoder=models.autoencoder, oracle=True, seed=seed,
               progress=progress)
