"""Trust scores that learn from reference data, and the fitted folder that stores them.

- :class:`PaRCE`: the reconstruction-based competency estimate of ``docs/methods.md``,
  batched and differentiable (the counterfactual generators optimise it).
- :class:`Mahalanobis`: minus the smallest Mahalanobis distance of the final-layer features to the class means,
  with a tied, shrunk covariance (Ledoit-Wolf, scikit-learn).
- :class:`TrustOracle`: a learned trust predictor trained with the steep slope loss (``docs/methods.md``) or the CE / focal / TCP baselines.
- :func:`fit` makes a fitted folder (autoencoder, PaRCE calibration, Mahalanobis, calibration score percentiles,
  optionally the oracle) with a manifest; :class:`Fitted` loads it back with integrity checks.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cfx.core.images import as_float_images, resize
from cfx.core.models import Classifier, head_input_features, model_fingerprint
from cfx.core.nets import ConvAutoencoder

from .latent_index import LatentIndex
from .threshold import Threshold

__all__ = ["FORMAT_VERSION", "Fitted", "FittedError", "Mahalanobis", "PaRCE", "TrustOracle", "file_sha256",
           "steep_slope_loss"]

FORMAT_VERSION = 2  # 2: edit ranges calibrated on the reference images (manifest["edit_ranges"])
#: Files every fitted folder has, whatever its manifest lists.
REQUIRED_FILES = ("autoencoder.pt", "parce.json", "calibration_scores.pt")


def _preprocessing_of(classifier: Classifier) -> dict[str, Any]:
    p = classifier.preprocessing
    listed = lambda v: None if v is None else [float(x) for x in v]  # noqa: E731
    return {"size": None if p.size is None else [int(v) for v in p.size], "mean": listed(p.mean),
            "std": listed(p.std)}


def check_model_for_folder(manifest: dict[str, Any], classifier: Classifier, path: str | Path) -> None:
    """Raise :class:`FittedError` unless ``classifier`` is the model a fitted folder was made for, fed the way it was
    fed then: the same weights (fingerprint), input size and normalisation. Calibration percentiles, PaRCE and the
    reference statistics hold only for that; another size or normalisation gives other scores (a 10th-percentile
    threshold flagged 46 % of a run at twice the fitted size)."""
    fp = model_fingerprint(classifier)
    if fp != manifest.get("model_fingerprint"):
        raise FittedError(f"{str(path)!r} was fitted for another model (fingerprint "
                          f"{manifest.get('model_fingerprint')}, this model {fp}); run cfx fit for this model")
    stored = (manifest.get("model") or {}).get("preprocessing")
    if not isinstance(stored, dict):
        return  # folders written before the preprocessing was recorded
    now = _preprocessing_of(classifier)
    size_differs = stored.get("size") is not None and now["size"] is not None and \
        [int(v) for v in stored["size"]] != now["size"]
    norm_differs = any((stored.get(k) is None) != (now[k] is None) or (stored.get(k) is not None and not all(
        math.isclose(float(a), b, rel_tol=1e-6) for a, b in zip(stored[k], now[k]))) for k in ("mean", "std"))
    if size_differs or norm_differs:
        show = lambda d: (f"size {'×'.join(map(str, d['size'])) if d.get('size') else 'as read'}, mean "  # noqa: E731
                          f"{d.get('mean')}, std {d.get('std')}")
        raise FittedError(f"{str(path)!r} was fitted with the model fed {show(stored)}; this run feeds it "
                          f"{show(now)}. Its calibration holds only for the first: load the model as it was fitted "
                          "(--image-size, --mean/--std) or run cfx fit again")


class FittedError(ValueError):
    """A fitted folder is missing, corrupted, or was made for another model; the message says what to do."""


# ---------------------------------------------------------------------------------------------- PaRCE

class PaRCE:
    """PaRCE competency: the estimated probability that the prediction is correct, in [0, 1].

    With reconstruction loss ℓ(x) = mean (x − D(E(x)))², per-class calibration mean μ_c and std σ_c of ℓ over
    calibration images of true class c, and classifier probabilities p(x)::

        P_c(x) = 1 − Φ((ℓ(x) − 2·μ_c) / σ_c − z*)
        ρ̂(x)   = max_c p_c(x) · Σ_c p_c(x) · P_c(x)

    ``z*`` is chosen on the grid 0, 0.05, …, 4.95 so that the mean competency on the calibration set matches the
    classifier's calibration accuracy. Images below ``threshold`` (0.9) are "low competency".
    """

    def __init__(self, autoencoder: ConvAutoencoder, threshold: float = 0.9):
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.autoencoder = autoencoder.eval()
        self.threshold = threshold

    # fitted: mu_, sigma_, z_star_, calibration_accuracy_, calibration_gap_
    def fit(self, probs: Tensor, losses: Tensor, labels: Tensor, target_accuracy: float | None = None) -> "PaRCE":
        """Calibrate from calibration-set softmax ``probs (N, C)``, reconstruction ``losses (N,)``, true ``labels``.

        ``target_accuracy`` replaces the accuracy that z* is matched to (for data without labels: pass predicted
        classes as ``labels`` and, for example, the mean top probability here; the result is then uncalibrated)."""
        if probs.dim() != 2 or losses.shape != (probs.shape[0],) or labels.shape != losses.shape:
            raise ValueError(f"probs (N, C), losses (N,) and labels (N,) must agree; got {tuple(probs.shape)}, "
                             f"{tuple(losses.shape)}, {tuple(labels.shape)}")
        if (labels < 0).any():
            raise ValueError("PaRCE calibration needs a label for every calibration image")
        c = probs.shape[1]
        losses = losses.double()
        mu = torch.empty(c, dtype=torch.float64)
        sigma = torch.empty(c, dtype=torch.float64)
        overall_mu, overall_sigma = losses.mean(), losses.std(unbiased=False).clamp_min(1e-12)
        self.missing_classes_ = []
        for k in range(c):
            lk = losses[labels == k]
            if len(lk) >= 2:
                mu[k], sigma[k] = lk.mean(), lk.std(unbiased=False).clamp_min(1e-12)
            else:  # too few calibration images of this class: fall back to the pooled statistics
                mu[k], sigma[k] = overall_mu, overall_sigma
                self.missing_classes_.append(k)
        self.mu_, self.sigma_ = mu, sigma
        accuracy = (float((probs.argmax(1) == labels).double().mean()) if target_accuracy is None
                    else float(target_accuracy))
        grid = np.round(np.arange(0.0, 5.0, 0.05), 2)
        gaps = [abs(float(self._competency(probs.double(), losses, z).mean()) - accuracy) for z in grid]
        best = int(np.argmin(gaps))
        self.z_star_ = float(grid[best])
        self.calibration_accuracy_ = accuracy
        self.calibration_gap_ = float(gaps[best])
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "z_star_"):
            raise RuntimeError("PaRCE is not calibrated: call fit() or load a fitted folder")

    def _competency(self, probs: Tensor, losses: Tensor, z_star: float) -> Tensor:
        mu = self.mu_.to(probs.device, probs.dtype)
        sigma = self.sigma_.to(probs.device, probs.dtype)
        z = (losses.to(probs.dtype).unsqueeze(1) - 2 * mu) / sigma - z_star
        in_dist = 1 - torch.special.ndtr(z)
        return probs.max(dim=1).values * (probs * in_dist).sum(dim=1)

    def reconstruction_loss(self, images: Tensor) -> Tensor:
        """Per-image MSE of the autoencoder at its own resolution (differentiable)."""
        x = resize(images, self.autoencoder.image_size)
        return (self.autoencoder(x) - x).pow(2).flatten(1).mean(1)

    def competency_from(self, logits: Tensor, images: Tensor) -> Tensor:
        """Competency from logits already computed and the images (differentiable in both)."""
        self._check_fitted()
        return self._competency(torch.softmax(logits, dim=1), self.reconstruction_loss(images), self.z_star_)

    def score_torch(self, classifier: Classifier, images: Tensor) -> Tensor:
        """Differentiable competency ``(N,)`` with gradients to ``images`` through the classifier and D∘E."""
        return self.competency_from(classifier.logits(images), images)

    def score(self, classifier: Classifier, images: Tensor, batch_size: int = 256) -> Tensor:
        """Competency ``(N,)`` in batches under ``torch.inference_mode`` (one ``(3, H, W)`` image too)."""
        images = classifier.check_images(images)
        with torch.inference_mode():
            out = [self.score_torch(classifier, images[i:i + batch_size]).cpu()
                   for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0)

    def state(self) -> dict:
        self._check_fitted()
        return {"mu": self.mu_.tolist(), "sigma": self.sigma_.tolist(), "z_star": self.z_star_,
                "threshold": self.threshold, "calibration_accuracy": self.calibration_accuracy_,
                "calibration_gap": self.calibration_gap_, "missing_classes": self.missing_classes_}

    @classmethod
    def from_state(cls, autoencoder: ConvAutoencoder, state: dict) -> "PaRCE":
        p = cls(autoencoder, state["threshold"])
        p.mu_ = torch.tensor(state["mu"], dtype=torch.float64)
        p.sigma_ = torch.tensor(state["sigma"], dtype=torch.float64)
        p.z_star_ = float(state["z_star"])
        p.calibration_accuracy_ = state["calibration_accuracy"]
        p.calibration_gap_ = state["calibration_gap"]
        p.missing_classes_ = state.get("missing_classes", [])
        return p


# ---------------------------------------------------------------------------------------------- Mahalanobis

class Mahalanobis:
    """Minus the smallest Mahalanobis distance (squared) of the final-layer features to a class mean.

    Class means and one tied covariance (Ledoit-Wolf shrinkage) of the features on reference data (Lee et al. 2018,
    without input pre-processing). Higher = closer to some class = more trusted.
    """

    def fit(self, features: Tensor, labels: Tensor) -> "Mahalanobis":
        from sklearn.covariance import LedoitWolf

        keep = labels >= 0
        f = features[keep].double().cpu()
        y = labels[keep].cpu()
        if len(f) < 2:
            raise ValueError("Mahalanobis needs at least two labelled reference samples")
        classes = torch.unique(y)
        means = torch.stack([f[y == c].mean(0) for c in classes])
        centred = f - means[torch.searchsorted(classes, y)]
        cov = LedoitWolf(assume_centered=True).fit(centred.numpy())
        self.classes_ = classes
        self.means_ = means
        self.precision_ = torch.from_numpy(cov.precision_)
        return self

    def score(self, features: Tensor) -> Tensor:
        if not hasattr(self, "precision_"):
            raise RuntimeError("Mahalanobis is not fitted: call fit() or load a fitted folder")
        h = features.double().cpu()
        p = self.precision_
        hp = h @ p
        quad = (hp * h).sum(1, keepdim=True) - 2 * hp @ self.means_.T + ((self.means_ @ p) * self.means_).sum(1)
        return -quad.min(dim=1).values.float()

    def state(self) -> dict:
        return {"classes": self.classes_, "means": self.means_, "precision": self.precision_}

    @classmethod
    def from_state(cls, state: dict) -> "Mahalanobis":
        m = cls()
        m.classes_, m.means_, m.precision_ = state["classes"], state["means"], state["precision"]
        return m


# ---------------------------------------------------------------------------------------------- trust oracle

OracleLoss = Literal["steep_slope", "ce", "focal", "tcp"]


def steep_slope_loss(z: Tensor, correct: Tensor, alpha_neg: float = 5.0, alpha_pos: float = 2.0,
                     beta_neg: float = 0.0, beta_pos: float = 0.0) -> Tensor:
    """Steep slope loss (signs as in the authors' code; the printed Eq. 8 has them flipped).

    ``mean[y (exp(−α⁺ s(z − β⁺)) − e^{−α⁺}) + (1 − y)(exp(α⁻ s(z + β⁻)) − e^{−α⁻})]`` with softsign s.
    """
    y = correct.float()
    soft = F.softsign
    pos = torch.exp(-alpha_pos * soft(z - beta_pos)) - math.exp(-alpha_pos)
    neg = torch.exp(alpha_neg * soft(z + beta_neg)) - math.exp(-alpha_neg)
    return (y * pos + (1 - y) * neg).mean()


class _OracleNet(nn.Module):
    """A copy of the classifier's feature extractor with a one-output head (signed distance for steep slope)."""

    def __init__(self, classifier: Classifier, signed_distance: bool):
        super().__init__()
        self.backbone = copy.deepcopy(classifier.model)
        self.head_name = classifier.head_name
        self.preprocessing = classifier.preprocessing
        d = classifier.head.weight.shape[1]
        self.out = nn.Linear(d, 1)
        self.signed_distance = signed_distance
        self._head = dict(self.backbone.named_modules())[self.head_name]

    def forward(self, images: Tensor) -> Tensor:
        captured: list[Tensor] = []
        handle = self._head.register_forward_pre_hook(lambda _m, inp: captured.append(inp[0]))
        try:
            self.backbone(self.preprocessing(images))
        finally:
            handle.remove()
        h = head_input_features(self._head, captured[0])
        z = self.out(h).squeeze(1)
        if self.signed_distance:
            z = z / (self.out.weight.norm() + 1e-7)
        return z


@dataclass
class TrustOracle:
    """A learned trust predictor (Luo et al. 2021): P(the classifier's top-1 prediction is correct), in [0, 1].

    The oracle is a copy of the classifier's feature extractor plus a one-output head, fine-tuned as a whole while
    the classifier stays frozen; its labels are the classifier's top-1 correctness on the training images.
    ``loss="steep_slope"`` (default) uses a signed-distance head and the steep slope loss with
    ``(α⁻, α⁺, β⁻, β⁺)``; ``ce``, ``focal`` (γ = 2) and ``tcp`` (regression on the true-class probability) are the
    baselines. Trusted iff the raw output z > 0 (score = sigmoid(z) > 0.5).

    Train it on data where the classifier makes enough errors to learn from: held-out data (never the
    classifier's training set, where it is almost always right), ideally with corrupted copies (:func:`fit` adds
    the cause transforms of the demo world to the calibration split by default).
    """

    loss: OracleLoss = "steep_slope"
    epochs: int = 10
    lr: float = 3e-4
    batch_size: int = 64
    slope: tuple[float, float, float, float] = (5.0, 2.0, 0.0, 0.0)  # (α⁻, α⁺, β⁻, β⁺), the steep-slope paper's ResNet setting
    focal_gamma: float = 2.0
    seed: int = 0
    net_: _OracleNet | None = field(default=None, repr=False)
    history_: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.loss not in ("steep_slope", "ce", "focal", "tcp"):
            raise ValueError(f"loss must be steep_slope, ce, focal or tcp, got {self.loss!r}")

    def _loss(self, z: Tensor, correct: Tensor, p_true: Tensor) -> Tensor:
        if self.loss == "steep_slope":
            return steep_slope_loss(z, correct, *self.slope)
        if self.loss == "ce":
            return F.binary_cross_entropy_with_logits(z, correct.float())
        if self.loss == "focal":
            p = torch.sigmoid(z)
            y = correct.float()
            logp, log1mp = F.logsigmoid(z), F.logsigmoid(-z)
            return -(y * (1 - p) ** self.focal_gamma * logp + (1 - y) * p ** self.focal_gamma * log1mp).mean()
        return (torch.sigmoid(z) - p_true).pow(2).mean()  # tcp

    def fit(self, classifier: Classifier, images: Tensor, labels: Tensor, progress: bool = True) -> "TrustOracle":
        """Train on ``images`` (uint8 or float in [0, 1]) with true ``labels``; the classifier stays frozen."""
        from tqdm.auto import tqdm

        if len(images) != len(labels) or len(images) == 0:
            raise ValueError(f"need as many labels as images (got {len(images)} images, {len(labels)} labels)")
        device = classifier.device
        with torch.inference_mode():
            probs = torch.cat([torch.softmax(classifier.logits(as_float_images(images[i:i + 256]).to(device)), 1)
                               .cpu() for i in range(0, len(images), 256)])
        correct = probs.argmax(1) == labels
        p_true = probs.gather(1, labels.clamp_min(0).view(-1, 1)).squeeze(1)
        if correct.all() or not correct.any():
            raise ValueError(f"the classifier is {'always' if correct.all() else 'never'} right on the oracle's "
                             "training data, so there is nothing to learn; use held-out data with errors (e.g. "
                             "corrupted copies)")
        torch.manual_seed(self.seed)
        net = _OracleNet(classifier, signed_distance=self.loss == "steep_slope").to(device)
        for p in net.parameters():
            p.requires_grad_(True)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        g = torch.Generator().manual_seed(self.seed)
        net.train()
        self.history_ = []
        for _ in tqdm(range(self.epochs), desc=f"oracle ({self.loss})", disable=not progress, leave=False,
                      unit="epoch"):
            perm = torch.randperm(len(images), generator=g)
            total = 0.0
            for i in range(0, len(images), self.batch_size):
                idx = perm[i:i + self.batch_size]
                z = net(as_float_images(images[idx]).to(device))
                loss = self._loss(z, correct[idx].to(device), p_true[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            self.history_.append(total / len(images))
        net.eval()
        self.net_ = net
        self.train_error_rate_ = float(1 - correct.float().mean())
        return self

    def raw(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """The oracle's raw output z ``(N,)``: a signed distance for steep slope; trusted iff z > 0."""
        if self.net_ is None:
            raise RuntimeError("the oracle is not trained: call fit() or load a fitted folder")
        device = next(self.net_.parameters()).device
        with torch.inference_mode():
            out = [self.net_(as_float_images(images[i:i + batch_size]).to(device)).float().cpu()
                   for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0)

    def score(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Trust score sigmoid(z) in [0, 1]; 0.5 is the decision threshold."""
        return torch.sigmoid(self.raw(images, batch_size))

    def config(self) -> dict:
        return {"loss": self.loss, "epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                "slope": list(self.slope), "focal_gamma": self.focal_gamma, "seed": self.seed}


# ---------------------------------------------------------------------------------------------- fingerprints

def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- fitted folder

@dataclass
class Fitted:
    """What :func:`fit` learned, loaded back from a fitted folder with :meth:`load`."""

    path: Path
    manifest: dict
    parce: PaRCE
    mahalanobis: Mahalanobis | None
    calibration_scores: dict[str, Tensor]
    oracle: TrustOracle | None = None
    latent_index: LatentIndex | None = None  # high-competency calibration latents (LNN counterfactuals)
    ddpm: Any = None  # diffusers UNet2DModel trained on the reference data (cfx fit --ddpm): DDPMEditor.from_fitted

    @property
    def autoencoder(self) -> ConvAutoencoder:
        return self.parce.autoencoder

    @property
    def score_names(self) -> list[str]:
        return (["parce"] + (["mahalanobis"] if self.mahalanobis is not None else [])
                + (["oracle"] if self.oracle is not None else []))

    @property
    def uncalibrated(self) -> dict[str, str]:
        """Scores fitted without labels, with what that means for their values."""
        return dict(self.manifest.get("uncalibrated") or {})

    @property
    def unavailable(self) -> dict[str, str]:
        """Scores this folder could not fit, with the reason (e.g. a model that does not expose its features)."""
        return dict(self.manifest.get("unavailable") or {})

    def threshold(self, score: str, percentile: float) -> Threshold:
        """A flag threshold at ``percentile`` of ``score`` on the stored calibration split."""
        if score not in self.calibration_scores:
            raise FittedError(f"no calibration scores for {score!r} in {self.path}; stored: "
                              f"{sorted(self.calibration_scores)}")
        return Threshold.from_percentile(score, self.calibration_scores[score], percentile)

    @classmethod
    def load(cls, path: str | Path, classifier: Classifier | None = None) -> "Fitted":
        """Load a fitted folder; checks the manifest, every file's checksum and (given) the model fingerprint."""
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not path.is_dir():
            raise FittedError(f"fitted folder {str(path)!r} does not exist; make one with cfx fit")
        if not manifest_path.is_file():
            raise FittedError(f"{str(path)!r} has no manifest.json: it is not a fitted folder (make one with cfx fit)")
        corrupted = lambda what: FittedError(f"the manifest of {str(path)!r} is corrupted ({what}); "  # noqa: E731
                                             "run cfx fit again")
        try:
            manifest = json.loads(manifest_path.read_text())
            files, version = manifest["files"], manifest["format"]
            fingerprint, ae_cfg = manifest["model_fingerprint"], manifest["autoencoder"]
            ae_size, latent_dim = tuple(int(v) for v in ae_cfg["image_size"]), int(ae_cfg["latent_dim"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise corrupted(f"{type(exc).__name__}: {exc}") from None
        if type(version) is not int or version != FORMAT_VERSION:
            raise FittedError(f"{str(path)!r} has fitted-folder format {version!r}, this cfx reads {FORMAT_VERSION}; "
                              "run cfx fit again")
        if not isinstance(files, dict) or not isinstance(fingerprint, str):
            raise corrupted("its file list or model fingerprint is not what cfx fit writes")
        if len(ae_size) != 2 or min(ae_size) < 16 or latent_dim < 1:
            raise corrupted(f"autoencoder size {ae_size} and latent size {latent_dim} are not what cfx fit writes")
        outside = [n for n in files if not isinstance(n, str) or Path(n).is_absolute() or ".." in Path(n).parts]
        missing = [n for n in REQUIRED_FILES if n not in files]
        if outside or missing:
            raise corrupted(f"files outside the folder {outside}" if outside else f"it does not list {missing}")
        for name, digest in files.items():
            f = path / name
            if not f.is_file():
                raise FittedError(f"{str(path)!r} is missing {name}; run cfx fit again")
            if file_sha256(f) != digest:
                raise FittedError(f"{name} in {str(path)!r} does not match its checksum in the manifest (corrupted "
                                  "or modified); run cfx fit again")
        if classifier is not None:
            if not isinstance(classifier, Classifier):
                raise TypeError(f"classifier must be a cfx Classifier (cfx.load_classifier(...) or "
                                f"cfx.Classifier.wrap(module)), got a {type(classifier).__name__}")
            check_model_for_folder(manifest, classifier, path)
        ae = ConvAutoencoder(ae_size, latent_dim)
        try:
            ae.load_state_dict(torch.load(path / "autoencoder.pt", map_location="cpu", weights_only=True))
            parce = PaRCE.from_state(ae, json.loads((path / "parce.json").read_text()))
            maha = (Mahalanobis.from_state(torch.load(path / "mahalanobis.pt", map_location="cpu", weights_only=True))
                    if "mahalanobis.pt" in files else None)
            cal = torch.load(path / "calibration_scores.pt", map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, ValueError, KeyError, TypeError, pickle.UnpicklingError) as exc:
            raise FittedError(f"{str(path)!r} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); run cfx fit "
                              "again") from None
        ae.eval()
        oracle = None
        if "oracle" in manifest and classifier is not None:
            oracle = TrustOracle(**{k: tuple(v) if k == "slope" else v for k, v in manifest["oracle"].items()})
            net = _OracleNet(classifier, signed_distance=oracle.loss == "steep_slope")
            net.load_state_dict(torch.load(path / "oracle.pt", map_location="cpu", weights_only=True))
            oracle.net_ = net.to(classifier.device).eval()
        latent_index = None
        if "latent_index.faiss" in files:
            latent_index = LatentIndex.load(path)
        ddpm = None
        if "ddpm/config.json" in files:
            from diffusers import UNet2DModel

            ddpm = UNet2DModel.from_pretrained(str(path / "ddpm")).eval()
        if classifier is not None:
            ae.to(classifier.device)
        return cls(path, manifest, parce, maha, cal, oracle, latent_index, ddpm)
