"""Trust scores that learn from reference data, and the fitted folder that stores them.

- :class:`PaRCE`: the reconstruction-based competency estimate of ``../shared/methods/counterfactuals.md`` §A1,
  batched and differentiable (the counterfactual generators optimise it).
- :class:`Mahalanobis`: minus the smallest Mahalanobis distance of the final-layer features to the class means,
  with a tied, shrunk covariance (Ledoit-Wolf, scikit-learn).
- :class:`TrustOracle`: a learned trust predictor trained with the steep slope loss (``../shared/methods/trust.md``
  §2) or the CE / focal / TCP baselines.
- :func:`fit` makes a fitted folder (autoencoder, PaRCE calibration, Mahalanobis, calibration score percentiles,
  optionally the oracle) with a manifest; :class:`Fitted` loads it back with integrity checks.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import ImageSource, Record, iter_batches
from .models import Classifier
from .nets import ConvAutoencoder
from .training import as_float_images, train_model

__all__ = ["Fitted", "FittedError", "Mahalanobis", "PaRCE", "TrustOracle", "fit", "model_fingerprint"]

FORMAT_VERSION = 1


class FittedError(ValueError):
    """A fitted folder is missing, corrupted, or was made for another model; the message says what to do."""


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


# ---------------------------------------------------------------------------------------------- PaRCE

class PaRCE:
    """PaRCE competency (§A1): the estimated probability that the prediction is correct, in [0, 1].

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
    def fit(self, probs: Tensor, losses: Tensor, labels: Tensor) -> "PaRCE":
        """Calibrate from calibration-set softmax ``probs (N, C)``, reconstruction ``losses (N,)``, true ``labels``."""
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
        accuracy = float((probs.argmax(1) == labels).double().mean())
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
        x = _resize(images, self.autoencoder.image_size)
        return (self.autoencoder(x) - x).pow(2).flatten(1).mean(1)

    def competency_from(self, logits: Tensor, images: Tensor) -> Tensor:
        """Competency from logits already computed and the images (differentiable in both)."""
        self._check_fitted()
        return self._competency(torch.softmax(logits, dim=1), self.reconstruction_loss(images), self.z_star_)

    def score_torch(self, classifier: Classifier, images: Tensor) -> Tensor:
        """Differentiable competency ``(N,)`` with gradients to ``images`` through the classifier and D∘E."""
        return self.competency_from(classifier.logits(images), images)

    def score(self, classifier: Classifier, images: Tensor, batch_size: int = 256) -> Tensor:
        """Competency ``(N,)`` in batches under ``torch.inference_mode``."""
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
    """Steep slope loss (trust.md §2.2, signs as in the authors' code; seed 003's printed Eq. 8 has them flipped).

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
        h = captured[0]
        z = self.out(h).squeeze(1)
        if self.signed_distance:
            z = z / (self.out.weight.norm() + 1e-7)
        return z


@dataclass
class TrustOracle:
    """A learned trust predictor (trust.md §2): P(the classifier's top-1 prediction is correct), in [0, 1].

    The oracle is a copy of the classifier's feature extractor plus a one-output head, fine-tuned as a whole while
    the classifier stays frozen; its labels are the classifier's top-1 correctness on the training images.
    ``loss="steep_slope"`` (default) uses a signed-distance head and the steep slope loss with
    ``(α⁻, α⁺, β⁻, β⁺)``; ``ce``, ``focal`` (γ = 2) and ``tcp`` (regression on the true-class probability) are the
    baselines. Trusted iff the raw output z > 0 (score = sigmoid(z) > 0.5).

    Train it on data where the classifier makes enough errors to learn from: held-out data (never the
    classifier's training set, where it is almost always right), ideally with corrupted copies (:func:`fit` adds
    the six cause transforms of the demo world to the calibration split by default).
    """

    loss: OracleLoss = "steep_slope"
    epochs: int = 10
    lr: float = 3e-4
    batch_size: int = 64
    slope: tuple[float, float, float, float] = (5.0, 2.0, 0.0, 0.0)  # (α⁻, α⁺, β⁻, β⁺), trust.md §2.2 ResNet
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

def model_fingerprint(classifier: Classifier) -> str:
    """SHA-256 over the classifier's parameter and buffer names, shapes and values (first 16 hex digits)."""
    h = hashlib.sha256()
    h.update(f"{classifier.num_classes}|{classifier.head_name}".encode())
    for name, tensor in classifier.model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _sha256(path: Path) -> str:
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
    mahalanobis: Mahalanobis
    calibration_scores: dict[str, Tensor]
    oracle: TrustOracle | None = None
    latent_index: Any = None  # cfx.generators.LatentIndex over high-competency calibration latents
    ddpm: Any = None  # diffusers UNet2DModel trained on the reference data (cfx fit --ddpm), for SDEdit edits

    def ddpm_editor(self, **kwargs):
        """A :class:`cfx.generators.DDPMEditor` on the fitted DDPM (``cfx fit --ddpm``)."""
        from cfx.generators.diffusion import DDPMEditor

        if self.ddpm is None:
            raise FittedError(f"{self.path} has no DDPM; run cfx fit with --ddpm")
        return DDPMEditor(self.ddpm, **kwargs)

    @property
    def autoencoder(self) -> ConvAutoencoder:
        return self.parce.autoencoder

    @property
    def score_names(self) -> list[str]:
        return ["parce", "mahalanobis"] + (["oracle"] if self.oracle is not None else [])

    def threshold(self, score: str, percentile: float):
        """A flag threshold at ``percentile`` of ``score`` on the stored calibration split."""
        from .trust import Threshold

        if score not in self.calibration_scores:
            raise FittedError(f"no calibration scores for {score!r} in {self.path}; stored: "
                              f"{sorted(self.calibration_scores)}")
        return Threshold.from_percentile(score, self.calibration_scores[score], percentile)

    def scores(self, classifier: Classifier, images: Tensor, logits: Tensor, features: Tensor | None,
               names: Iterable[str]) -> dict[str, Tensor]:
        """Fitted scores for one batch whose logits (and features) are already computed."""
        out = {}
        for name in names:
            if name == "parce":
                with torch.inference_mode():
                    out[name] = self.parce.competency_from(logits.to(images.device), images).float().cpu()
            elif name == "mahalanobis":
                if features is None:
                    raise ValueError("the Mahalanobis score needs the final-layer features")
                out[name] = self.mahalanobis.score(features)
            elif name == "oracle":
                if self.oracle is None:
                    raise FittedError(f"{self.path} has no trust oracle; run cfx fit with --oracle")
                out[name] = self.oracle.score(images)
            else:
                raise ValueError(f"{name!r} is not a fitted score")
        return out

    @classmethod
    def load(cls, path: str | Path, classifier: Classifier | None = None) -> "Fitted":
        """Load a fitted folder; checks the manifest, every file's checksum and (given) the model fingerprint."""
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not path.is_dir():
            raise FittedError(f"fitted folder {str(path)!r} does not exist; make one with cfx fit")
        if not manifest_path.is_file():
            raise FittedError(f"{str(path)!r} has no manifest.json: it is not a fitted folder (make one with cfx fit)")
        try:
            manifest = json.loads(manifest_path.read_text())
            files = manifest["files"]
            version = manifest["format"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise FittedError(f"the manifest of {str(path)!r} is corrupted ({type(exc).__name__}: {exc}); "
                              "run cfx fit again") from None
        if version != FORMAT_VERSION:
            raise FittedError(f"{str(path)!r} has fitted-folder format {version}, this cfx reads {FORMAT_VERSION}; "
                              "run cfx fit again")
        for name, digest in files.items():
            f = path / name
            if not f.is_file():
                raise FittedError(f"{str(path)!r} is missing {name}; run cfx fit again")
            if _sha256(f) != digest:
                raise FittedError(f"{name} in {str(path)!r} does not match its checksum in the manifest (corrupted "
                                  "or modified); run cfx fit again")
        if classifier is not None:
            fp = model_fingerprint(classifier)
            if fp != manifest["model_fingerprint"]:
                raise FittedError(f"{str(path)!r} was fitted for another model (fingerprint "
                                  f"{manifest['model_fingerprint']}, this model {fp}); run cfx fit for this model")
        ae_cfg = manifest["autoencoder"]
        ae = ConvAutoencoder(tuple(ae_cfg["image_size"]), ae_cfg["latent_dim"])
        ae.load_state_dict(torch.load(path / "autoencoder.pt", map_location="cpu", weights_only=True))
        ae.eval()
        parce = PaRCE.from_state(ae, json.loads((path / "parce.json").read_text()))
        maha = Mahalanobis.from_state(torch.load(path / "mahalanobis.pt", map_location="cpu", weights_only=True))
        cal = torch.load(path / "calibration_scores.pt", map_location="cpu", weights_only=True)
        oracle = None
        if "oracle" in manifest and classifier is not None:
            oracle = TrustOracle(**{k: tuple(v) if k == "slope" else v for k, v in manifest["oracle"].items()})
            net = _OracleNet(classifier, signed_distance=oracle.loss == "steep_slope")
            net.load_state_dict(torch.load(path / "oracle.pt", map_location="cpu", weights_only=True))
            oracle.net_ = net.to(classifier.device).eval()
        latent_index = None
        if "latent_index.faiss" in files:
            from cfx.generators.latent import LatentIndex

            latent_index = LatentIndex.load(path)
        ddpm = None
        if "ddpm/config.json" in files:
            from diffusers import UNet2DModel

            ddpm = UNet2DModel.from_pretrained(str(path / "ddpm")).eval()
        if classifier is not None:
            ae.to(classifier.device)
        return cls(path, manifest, parce, maha, cal, oracle, latent_index, ddpm)


def _collect(classifier: Classifier, source: ImageSource | Iterable[Record], batch_size: int, progress: bool,
             desc: str) -> dict[str, Any]:
    """One streaming pass: uint8 images at the classifier's size, labels, ids, logits, features; errors skipped."""
    from tqdm.auto import tqdm

    size = classifier.preprocessing.size
    images, labels, ids, logits, feats, errors = [], [], [], [], [], []
    total = len(source) if hasattr(source, "__len__") else None
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
    for batch in iter_batches(source, batch_size, size=size):
        errors += [(r.id, r.error) for r in batch.errors]
        if len(batch):
            with torch.inference_mode():
                z, h = classifier.logits_and_features(batch.images)
            finite = torch.isfinite(z).all(1).cpu()
            errors += [(i, "non-finite logits") for i, ok in zip(batch.ids, finite.tolist()) if not ok]
            images.append((batch.images[finite] * 255).round().to(torch.uint8))
            labels.append(batch.labels[finite])
            ids += [i for i, ok in zip(batch.ids, finite.tolist()) if ok]
            logits.append(z[finite.to(z.device)].float().cpu())
            feats.append(h[finite.to(h.device)].float().cpu())
        bar.update(len(batch) + len(batch.errors))
    bar.close()
    if not ids:
        raise ValueError(f"no usable images in the {desc} data ({len(errors)} errors); check the source")
    return {"images": torch.cat(images), "labels": torch.cat(labels).long(), "ids": ids,
            "logits": torch.cat(logits), "features": torch.cat(feats), "errors": errors}


def _data_fingerprint(ids: Sequence[str], labels: Tensor, images: Tensor) -> str:
    h = hashlib.sha256()
    h.update("\n".join(ids).encode())
    h.update(labels.numpy().tobytes())
    h.update(images.numpy().tobytes())
    return h.hexdigest()[:16]


def _oracle_training_set(images: Tensor, labels: Tensor, copies: int, seed: int) -> tuple[Tensor, Tensor]:
    """Calibration images plus ``copies`` corrupted versions of each (random cause and strength per image)."""
    from .demo import CAUSES, apply_cause

    if copies <= 0:
        return images, labels
    g = torch.Generator().manual_seed(seed)
    causes = list(CAUSES)
    out_x, out_y = [images], [labels]
    for j in range(copies):
        which = torch.randint(len(causes), (len(images),), generator=g)
        strength = torch.randint(6, (len(images),), generator=g)
        corrupted = torch.empty_like(images)
        for ci, cause in enumerate(causes):
            for si, k in enumerate(CAUSES[cause]):
                sel = torch.nonzero((which == ci) & (strength == si)).flatten()
                if len(sel):
                    x = apply_cause(images[sel].float() / 255, cause, k, seed=seed + 97 * j + 7 * ci + si)
                    corrupted[sel] = (x * 255).round().to(torch.uint8)
        out_x.append(corrupted)
        out_y.append(labels)
    return torch.cat(out_x), torch.cat(out_y)


def fit(classifier: Classifier, train: ImageSource | Iterable[Record], out: str | Path,
        calibration: ImageSource | Iterable[Record] | None = None, calibration_fraction: float = 0.2,
        ae_size: int | tuple[int, int] | None = None, ae_epochs: int = 25, ae_batch_size: int = 64,
        ae_lr: float = 1e-3, latent_dim: int = 256, autoencoder: ConvAutoencoder | None = None,
        oracle: bool = False, oracle_loss: OracleLoss = "steep_slope", oracle_epochs: int = 10,
        oracle_copies: int = 2, competency_threshold: float = 0.9, index_metric: str = "l1", ddpm: bool = False,
        ddpm_steps: int = 600, batch_size: int = 64, seed: int = 0, progress: bool = True) -> Fitted:
    """Fit everything the later stages need on reference data and write a fitted folder to ``out``.

    ``train`` is labelled reference data. Give held-out ``calibration`` data, or a ``calibration_fraction`` of
    ``train`` is split off (seeded). The reference data should not be the classifier's own training set, or the
    calibration accuracy (and so PaRCE) will be over-confident. Steps: train the autoencoder (unless one is given)
    at ``ae_size`` (default: the images' size, capped at 64 px); calibrate PaRCE on the calibration split; fit
    Mahalanobis on the train split; store every score on the calibration split (for percentile thresholds);
    optionally train the trust oracle on the calibration split plus ``oracle_copies`` corrupted copies.
    With ``ddpm``, a small DDPM (``ddpm_steps`` training steps, images capped at 64 px) is trained on the train
    split for SDEdit-style edits (:meth:`Fitted.ddpm_editor`). The latent index of LNN counterfactuals (``index_metric``: l1, l2 or cos) holds the calibration images whose
    competency exceeds ``competency_threshold``. Bad images are skipped and listed in the manifest. Returns the
    loaded :class:`Fitted`.
    """

    if not 0 < calibration_fraction < 1:
        raise ValueError(f"calibration_fraction must be in (0, 1), got {calibration_fraction}")
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ref = _collect(classifier, train, batch_size, progress, "reference")
    if (ref["labels"] < 0).any():
        raise ValueError("cfx fit needs labelled reference data (ImageFolder or a manifest with a label column)")
    if calibration is not None:
        cal = _collect(classifier, calibration, batch_size, progress, "calibration")
        if (cal["labels"] < 0).any():
            raise ValueError("the calibration data needs labels")
        tr_idx = torch.arange(len(ref["ids"]))
    else:
        perm = torch.randperm(len(ref["ids"]), generator=torch.Generator().manual_seed(seed))
        n_cal = max(2, int(round(len(perm) * calibration_fraction)))
        cal_idx, tr_idx = perm[:n_cal], perm[n_cal:]
        cal = {k: (v[cal_idx] if isinstance(v, Tensor) else [v[i] for i in cal_idx.tolist()])
               for k, v in ref.items() if k != "errors"}
        cal["errors"] = []
    train_images = ref["images"][tr_idx]
    if len(train_images) < 2:
        raise ValueError("too few reference images left for training the autoencoder")
    image_hw = tuple(train_images.shape[-2:])
    if autoencoder is None:
        if ae_size is None:
            ae_hw = tuple(min(s, 64) for s in image_hw)
        else:
            ae_hw = (ae_size, ae_size) if isinstance(ae_size, int) else tuple(ae_size)
        torch.manual_seed(seed)
        autoencoder = ConvAutoencoder(ae_hw, latent_dim).to(classifier.device)
        losses = train_model(autoencoder, train_images, None, ae_epochs, ae_batch_size, ae_lr, seed,
                             "autoencoder", progress, prepare=lambda x: _resize(x, ae_hw))
    else:
        losses = []
    autoencoder.eval()
    parce = PaRCE(autoencoder, competency_threshold)
    cal_float = cal["images"]
    with torch.inference_mode():
        rec = torch.cat([parce.reconstruction_loss(as_float_images(cal_float[i:i + 256]).to(classifier.device))
                         .cpu() for i in range(0, len(cal_float), 256)])
    parce.fit(torch.softmax(cal["logits"].double(), 1), rec, cal["labels"])
    maha = Mahalanobis().fit(ref["features"][tr_idx], ref["labels"][tr_idx])

    trained_oracle = None
    if oracle:
        ox, oy = _oracle_training_set(cal["images"], cal["labels"], oracle_copies, seed)
        trained_oracle = TrustOracle(loss=oracle_loss, epochs=oracle_epochs, seed=seed).fit(classifier, ox, oy,
                                                                                             progress=progress)
    # Every score on the calibration split, for percentile thresholds fixed before a run.
    from .trust import _LOGIT_SCORES, gradnorm

    cal_scores = {name: fn(cal["logits"]).float() for name, fn in _LOGIT_SCORES.items()}
    cal_scores["gradnorm"] = gradnorm(cal["logits"], cal["features"]).float()
    with torch.inference_mode():
        cal_scores["parce"] = torch.cat([
            parce.competency_from(cal["logits"][i:i + 256].to(classifier.device),
                                  as_float_images(cal_float[i:i + 256]).to(classifier.device)).float().cpu()
            for i in range(0, len(cal_float), 256)])
    cal_scores["mahalanobis"] = maha.score(cal["features"])
    # The latent index of LNN counterfactuals: high-competency calibration images (§A2).
    from cfx.generators.latent import LatentIndex

    confident = torch.nonzero(cal_scores["parce"] > competency_threshold).flatten()
    latent_index = None
    if len(confident):
        ae_images = torch.cat([_resize(as_float_images(cal_float[confident[i:i + 256]]), autoencoder.image_size)
                               for i in range(0, len(confident), 256)])
        with torch.inference_mode():
            latents = torch.cat([autoencoder.encode(ae_images[i:i + 256].to(classifier.device)).cpu()
                                 for i in range(0, len(ae_images), 256)])
        latent_index = LatentIndex(index_metric).build(latents, [cal["ids"][i] for i in confident.tolist()],
                                                       cal["labels"][confident], ae_images)
    if trained_oracle is not None:
        cal_scores["oracle"] = trained_oracle.score(cal["images"])
    cal_scores["correct"] = (cal["logits"].argmax(1) == cal["labels"]).float()

    # Write the folder: weights as state dicts (loaded back with weights_only=True), then the manifest last.
    torch.save(autoencoder.state_dict(), out / "autoencoder.pt")
    (out / "parce.json").write_text(json.dumps(parce.state(), indent=1))
    torch.save(maha.state(), out / "mahalanobis.pt")
    torch.save(cal_scores, out / "calibration_scores.pt")
    files = ["autoencoder.pt", "parce.json", "mahalanobis.pt", "calibration_scores.pt"]
    if trained_oracle is not None:
        torch.save(trained_oracle.net_.state_dict(), out / "oracle.pt")
        files.append("oracle.pt")
    if latent_index is not None:
        files += latent_index.save(out)
    ddpm_info = None
    if ddpm:
        from cfx.generators.diffusion import train_ddpm

        unet, ddpm_losses = train_ddpm(train_images, steps=ddpm_steps, seed=seed, progress=progress,
                                       image_size=min(64, int(train_images.shape[-1])))
        unet.save_pretrained(str(out / "ddpm"))
        files += ["ddpm/config.json", "ddpm/diffusion_pytorch_model.safetensors"]
        ddpm_info = {"steps": ddpm_steps, "image_size": int(unet.config.sample_size),
                     "final_loss": float(np.mean(ddpm_losses[-20:]))}
    config = {"calibration_fraction": None if calibration is not None else calibration_fraction,
              "separate_calibration": calibration is not None, "ae_size": list(autoencoder.image_size),
              "ae_epochs": ae_epochs if losses else None, "latent_dim": autoencoder.latent_dim,
              "competency_threshold": competency_threshold, "index_metric": index_metric, "seed": seed,
              "oracle": oracle}
    from . import __version__

    percentiles = {name: np.percentile(v[torch.isfinite(v)].numpy(), np.arange(0, 101)).round(8).tolist()
                   for name, v in cal_scores.items() if name != "correct" and torch.isfinite(v).any()}
    manifest = {
        "format": FORMAT_VERSION, "cfx_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": config,
        "config_hash": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16],
        "model": classifier.describe(), "model_fingerprint": model_fingerprint(classifier),
        "data_fingerprint": _data_fingerprint(ref["ids"], ref["labels"], ref["images"]),
        "counts": {"reference": len(ref["ids"]), "train": len(tr_idx), "calibration": len(cal["ids"]),
                   "latent_index": len(latent_index) if latent_index is not None else 0,
                   "errors": len(ref["errors"]) + len(cal["errors"])},
        "errors": [{"id": i, "error": e} for i, e in ref["errors"] + cal["errors"]][:1000],
        "autoencoder": {"image_size": list(autoencoder.image_size), "latent_dim": autoencoder.latent_dim,
                        "final_loss": losses[-1] if losses else None},
        "parce": {k: v for k, v in parce.state().items() if k in ("z_star", "calibration_accuracy",
                                                                   "calibration_gap", "threshold")},
        "calibration_percentiles": percentiles,
        "seconds": round(time.perf_counter() - t0, 1),
        "files": {name: _sha256(out / name) for name in files},
    }
    if ddpm_info is not None:
        manifest["ddpm"] = ddpm_info
    if trained_oracle is not None:
        manifest["oracle"] = trained_oracle.config()
        manifest["oracle_training"] = {"images": len(ox), "error_rate": trained_oracle.train_error_rate_}
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / "manifest.json")
    return Fitted.load(out, classifier)
