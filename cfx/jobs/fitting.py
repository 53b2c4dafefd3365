"""``cfx fit``: fit everything the later stages need on reference data and write a fitted folder.

The folder holds the PaRCE autoencoder and calibration, the Mahalanobis class means and covariance, every
registered score on the calibration split (for percentile thresholds fixed before a run), the latent index of
confident calibration images (LNN counterfactuals), and optionally the trust oracle and a small DDPM; a manifest
with checksums and the model's fingerprint ties it to one model. :class:`cfx.trust.fitted.Fitted` loads it back.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from cfx.core.data import ImageSource, Record, iter_batches
from cfx.core.images import as_float_images, resize
from cfx.core.models import Classifier, advise_on_inputs, model_fingerprint
from cfx.core.nets import ConvAutoencoder
from cfx.core.shifts import CAUSES, apply_shift
from cfx.core.training import train_model
from cfx.evidence import STATISTICS_VERSION, RegionModel, reference_statistics
from cfx.generators.diffusion import train_ddpm
from cfx.generators.ranges import EditRanges
from cfx.trust.fitted import (FORMAT_VERSION, Fitted, Mahalanobis, OracleLoss, PaRCE, TrustOracle, file_sha256)
from cfx.trust.latent_index import LatentIndex
from cfx.trust.scores import SCORES, ScoreInputs, forward_isolating_failures

__all__ = ["fit", "oracle_training_set"]

try:
    CFX_VERSION = version("cfx")
except PackageNotFoundError:  # running from a source tree that is not installed
    CFX_VERSION = "0+unknown"


def _collect(classifier: Classifier, source: ImageSource | Iterable[Record], batch_size: int, progress: bool,
             desc: str) -> dict[str, Any]:
    """One streaming pass: uint8 images at the classifier's size, labels, ids, logits, features; errors skipped."""
    size = classifier.preprocessing.size
    with_features = classifier.has_features()
    images, labels, ids, logits, feats, errors = [], [], [], [], [], []
    total = len(source) if hasattr(source, "__len__") else None
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
    for batch in iter_batches(source, batch_size, size=size):
        errors += [(r.id, r.error) for r in batch.errors]
        if len(batch):
            with torch.inference_mode():  # an image the model fails on is skipped with its error, as unreadable ones
                z, h, failed = forward_isolating_failures(classifier, batch.images, with_features)
            finite = torch.isfinite(z).all(1).cpu()
            errors += [(i, failed.get(k, "non-finite logits")) for k, (i, ok) in enumerate(zip(batch.ids,
                                                                                         finite.tolist())) if not ok]
            images.append((batch.images[finite] * 255).round().to(torch.uint8))
            labels.append(batch.labels[finite])
            ids += [i for i, ok in zip(batch.ids, finite.tolist()) if ok]
            logits.append(z[finite.to(z.device)].float().cpu())
            if h is not None:
                feats.append(h[finite.to(h.device)].float().cpu())
        bar.update(len(batch) + len(batch.errors))
    bar.close()
    if not ids:
        raise ValueError(f"no usable images in the {desc} data ({len(errors)} errors); check the source")
    return {"images": torch.cat(images), "labels": torch.cat(labels).long(), "ids": ids,
            "logits": torch.cat(logits), "features": torch.cat(feats) if feats else None, "errors": errors}


def _data_fingerprint(ids: Sequence[str], labels: Tensor, images: Tensor) -> str:
    h = hashlib.sha256()
    h.update("\n".join(ids).encode())
    h.update(labels.numpy().tobytes())
    h.update(images.numpy().tobytes())
    return h.hexdigest()[:16]


def oracle_training_set(images: Tensor, labels: Tensor, copies: int, seed: int) -> tuple[Tensor, Tensor]:
    """Calibration images plus ``copies`` corrupted versions of each (random cause and strength per image, from the
    known shifts of :mod:`cfx.core.shifts`)."""
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
                    x = apply_shift(images[sel].float() / 255, cause, k, seed=seed + 97 * j + 7 * ci + si)
                    corrupted[sel] = (x * 255).round().to(torch.uint8)
        out_x.append(corrupted)
        out_y.append(labels)
    return torch.cat(out_x), torch.cat(out_y)


#: A reference for explanations with fewer images than this, or covering fewer than a quarter of the classes the
#: model predicts on the reference set, is reported as narrow by ``cfx fit``.
NARROW_REFERENCE_IMAGES = 30


def reference_coverage(trusted_predicted: Tensor, all_predicted: Tensor) -> dict[str, Any]:
    """How much of the reference set the images the explanations compare with cover: ``classes`` (distinct
    predicted classes among them), ``classes_in_reference`` (among every reference image) and ``narrow``, a
    sentence saying why the reference is narrow (None when it is not). A narrow reference makes a changed image
    look ordinary: against crops of two photographs, one grey and one in colour, a photograph made grey is
    typical."""
    classes, seen = int(trusted_predicted.unique().numel()), int(all_predicted.unique().numel())
    few_images = len(trusted_predicted) < NARROW_REFERENCE_IMAGES
    few_classes = seen >= 4 and classes * 4 < seen
    narrow = None
    if few_images or few_classes:
        narrow = (f"explanations compare flagged images with {'only ' if few_images else ''}"
                  f"{len(trusted_predicted)} trusted reference images"
                  + (f", predicted as only {classes} of the {seen} classes the model predicts on the reference set"
                     if few_classes else "")
                  + ": against so narrow a reference a changed image can look typical. Fit on more, and more "
                  "varied, reference images the model is confident about")
    return {"classes": classes, "classes_in_reference": seen, "narrow": narrow}



def _warn_if_parce_is_msp(parce: PaRCE, probs: Tensor, losses: Tensor) -> None:
    """Warn when PaRCE's competency on the calibration images is their top probability (the autoencoder's term has
    no weight at the chosen z*) and misses their accuracy: the model is less confident than it is accurate, no z*
    on the grid can bring competency up to the accuracy, and PaRCE then adds nothing to msp."""
    competency = parce._competency(probs, losses.double(), parce.z_star_)
    top = probs.max(1).values
    if float((competency - top).abs().max()) < 0.01 and parce.calibration_gap_ > 0.05:
        warnings.warn(f"PaRCE's competency on the calibration images is their top probability (z* = "
                      f"{parce.z_star_:.2f}; the autoencoder's term has no weight) and its mean misses the calibration "
                      f"accuracy by {parce.calibration_gap_:.3f}: the model is less confident than it is accurate, "
                      "and PaRCE ranks images as msp does. Its values are not probabilities of being right",
                      RuntimeWarning, stacklevel=3)

def fit(classifier: Classifier, train: ImageSource | Iterable[Record], out: str | Path,
        calibration: ImageSource | Iterable[Record] | None = None, calibration_fraction: float = 0.2,
        ae_size: int | tuple[int, int] | None = None, ae_epochs: int = 25, ae_batch_size: int = 64,
        ae_lr: float = 1e-3, latent_dim: int = 256, autoencoder: ConvAutoencoder | None = None,
        oracle: bool = False, oracle_loss: OracleLoss = "steep_slope", oracle_epochs: int = 10,
        oracle_copies: int = 2, competency_threshold: float = 0.9, index_metric: str = "l1", ddpm: bool = False,
        ddpm_steps: int = 600, batch_size: int = 64, seed: int = 0, progress: bool = True) -> Fitted:
    """Fit everything the later stages need on reference data and write a fitted folder to ``out``.

    ``train`` is reference data, labelled or not: without labels, PaRCE is calibrated on the predicted classes
    (uncalibrated, listed in the manifest) and Mahalanobis and the oracle are unavailable. Give held-out
    ``calibration`` data, or a ``calibration_fraction`` of
    ``train`` is split off (seeded). The reference data should not be the classifier's own training set, or the
    calibration accuracy (and so PaRCE) will be over-confident. Steps: train the autoencoder (unless one is given)
    at ``ae_size`` (default: the images' size, capped at 64 px); calibrate PaRCE on the calibration split; fit
    Mahalanobis on the train split; store every score on the calibration split (for percentile thresholds);
    optionally train the trust oracle on the calibration split plus ``oracle_copies`` corrupted copies.
    With ``ddpm``, a small DDPM (``ddpm_steps`` training steps, images capped at 64 px) is trained on the train
    split for SDEdit-style edits (:meth:`cfx.generators.DDPMEditor.from_fitted`). The latent index of LNN counterfactuals (``index_metric``: l1, l2 or cos) holds the calibration images whose
    competency exceeds ``competency_threshold``. Bad images are skipped and listed in the manifest. Returns the
    loaded :class:`Fitted`.
    """

    if not 0 < calibration_fraction < 1:
        raise ValueError(f"calibration_fraction must be in (0, 1), got {calibration_fraction}")
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ref = _collect(classifier, train, batch_size, progress, "reference")
    checked = advise_on_inputs(classifier, as_float_images(ref["images"][:32])) if len(ref["images"]) else None
    labelled = bool((ref["labels"] >= 0).all())
    if not labelled and (ref["labels"] >= 0).any():
        raise ValueError(f"{int((ref['labels'] < 0).sum())} of {len(ref['labels'])} reference images have no label; "
                         "give every image a label, or none (cfx fit then fits what needs no labels)")
    if calibration is not None:
        cal = _collect(classifier, calibration, batch_size, progress, "calibration")
        if labelled and (cal["labels"] < 0).any():
            raise ValueError("the calibration data needs labels when the reference data has them")
        labelled = labelled and bool((cal["labels"] >= 0).all())
        tr_idx = torch.arange(len(ref["ids"]))
    else:
        perm = torch.randperm(len(ref["ids"]), generator=torch.Generator().manual_seed(seed))
        n_cal = max(2, int(round(len(perm) * calibration_fraction)))
        cal_idx, tr_idx = perm[:n_cal], perm[n_cal:]
        cal = {k: (v[cal_idx] if isinstance(v, Tensor) else None if v is None else [v[i] for i in cal_idx.tolist()])
               for k, v in ref.items() if k != "errors"}
        cal["errors"] = []
    train_images = ref["images"][tr_idx]
    if len(train_images) < 2:
        raise ValueError(f"too few reference images: {len(ref['ids'])} readable; once the calibration split is "
                         f"taken, {len(train_images)} remain for training the autoencoder, which needs at least 2 "
                         "(give at least 4 reference images, or a separate --calibration set)")
    image_hw = tuple(train_images.shape[-2:])
    if autoencoder is None:
        if ae_size is None:
            ae_hw = tuple(min(s, 64) for s in image_hw)
        else:
            ae_hw = (ae_size, ae_size) if isinstance(ae_size, int) else tuple(ae_size)
        torch.manual_seed(seed)
        autoencoder = ConvAutoencoder(ae_hw, latent_dim).to(classifier.device)
        losses = train_model(autoencoder, train_images, None, ae_epochs, ae_batch_size, ae_lr, seed,
                             "autoencoder", progress, prepare=lambda x: resize(x, ae_hw))
    else:
        losses = []
    autoencoder.eval()
    parce = PaRCE(autoencoder, competency_threshold)
    cal_float = cal["images"]
    with torch.inference_mode():
        rec = torch.cat([parce.reconstruction_loss(as_float_images(cal_float[i:i + 256]).to(classifier.device))
                         .cpu() for i in range(0, len(cal_float), 256)])
    unavailable: dict[str, str] = {}
    uncalibrated: dict[str, str] = {}
    cal_probs = torch.softmax(cal["logits"].double(), 1)
    if labelled:
        parce.fit(cal_probs, rec, cal["labels"])
        _warn_if_parce_is_msp(parce, cal_probs, rec)
    else:
        # Without labels: per-class reconstruction statistics by predicted class, and z* matched to the model's own
        # mean top probability instead of its (unknown) accuracy. The ranking holds; the values are not
        # probabilities of being right.
        parce.fit(cal_probs, rec, cal_probs.argmax(1), target_accuracy=float(cal_probs.max(1).values.mean()))
        uncalibrated["parce"] = ("no labels: z* matches the model's mean top probability, not its accuracy, so "
                                 "competency ranks images but is not a calibrated probability of being right")
        for name in ("mahalanobis", "oracle"):
            unavailable[name] = "needs labelled reference data (class means / the classifier's errors)"
        if oracle:
            warnings.warn("the trust oracle is not trained: it needs labelled reference data", RuntimeWarning,
                          stacklevel=2)
            oracle = False
    if ref["features"] is None:
        reason = ("needs the penultimate features, which this model does not expose (" +
                  classifier.features_unavailable_reason().split(":")[0] + ")")
        unavailable.update({"mahalanobis": reason, "gradnorm": reason})
        if oracle:
            unavailable["oracle"] = reason
            warnings.warn(f"the trust oracle is not trained: it {reason}", RuntimeWarning, stacklevel=2)
            oracle = False
    maha = (Mahalanobis().fit(ref["features"][tr_idx], ref["labels"][tr_idx])
            if labelled and ref["features"] is not None else None)

    trained_oracle = None
    if oracle:
        ox, oy = oracle_training_set(cal["images"], cal["labels"], oracle_copies, seed)
        trained_oracle = TrustOracle(loss=oracle_loss, epochs=oracle_epochs, seed=seed).fit(classifier, ox, oy,
                                                                                             progress=progress)
    # Every score on the calibration split, for percentile thresholds fixed before a run: the registered scores
    # that need only logits and features, then the fitted ones.
    cal_inputs = ScoreInputs(classifier, torch.empty(0), cal["logits"], cal["features"])
    cal_scores = {name: s.score(cal_inputs).float() for name, s in SCORES.items()
                  if s.needs <= ({"logits", "features"} if cal["features"] is not None else {"logits"})}

    def competency(logits: Tensor, images: Tensor) -> Tensor:
        with torch.inference_mode():
            return torch.cat([parce.competency_from(logits[i:i + 256].to(classifier.device),
                                                    as_float_images(images[i:i + 256]).to(classifier.device))
                              .float().cpu() for i in range(0, len(images), 256)])

    cal_scores["parce"] = competency(cal["logits"], cal_float)
    if maha is not None:
        cal_scores["mahalanobis"] = maha.score(cal["features"])
    # The latent index of LNN counterfactuals: high-competency calibration images.
    confident = torch.nonzero(cal_scores["parce"] > competency_threshold).flatten()
    if not labelled and len(confident) < 10:  # uncalibrated competency: the most competent half stands in
        confident = cal_scores["parce"].argsort(descending=True)[:max(2, len(cal_float) // 2)]
    latent_index = None
    if len(confident):
        ae_images = torch.cat([resize(as_float_images(cal_float[confident[i:i + 256]]), autoencoder.image_size)
                               for i in range(0, len(confident), 256)])
        with torch.inference_mode():
            latents = torch.cat([autoencoder.encode(ae_images[i:i + 256].to(classifier.device)).cpu()
                                 for i in range(0, len(ae_images), 256)])
        latent_index = LatentIndex(index_metric).build(latents, [cal["ids"][i] for i in confident.tolist()],
                                                       cal["labels"][confident], ae_images)
    # Image statistics of the same confident images at the classifier's resolution: the reference the evidence
    # compares a flagged image with (the index keeps them only at the autoencoder's size). When fewer than 10
    # calibration images clear the competency threshold (a handful of images is no reference for a spread), the
    # confident images of the whole reference set stand in, the autoencoder's training split included: statistics
    # need images the model is confident about, not held-out ones. With fewer than 10 there either, the most
    # competent tenth of the whole set (at least 10).
    reference_stats = None
    clear = torch.nonzero(cal_scores["parce"] > competency_threshold).flatten()
    trusted_images, trusted_from = cal_float[clear], "trusted calibration images"
    trusted_predicted = cal["logits"][clear].argmax(1)
    if len(clear) < 10:
        train_float = ref["images"][tr_idx]
        every_competency = torch.cat([cal_scores["parce"], competency(ref["logits"][tr_idx], train_float)])
        over = torch.nonzero(every_competency > competency_threshold).flatten()
        pick = over if len(over) >= 10 else every_competency.argsort(descending=True)[
            :max(10, len(every_competency) // 10)]
        n_cal = len(cal_float)  # index each split apart: no copy of the whole reference set
        trusted_images = torch.cat([cal_float[pick[pick < n_cal]], train_float[pick[pick >= n_cal] - n_cal]])
        trusted_predicted = torch.cat([cal["logits"][pick[pick < n_cal]],
                                       ref["logits"][tr_idx][pick[pick >= n_cal] - n_cal]]).argmax(1)
        trusted_from = ("confident reference images (calibration and training splits)" if len(over) >= 10 else
                        "most competent reference images (the most competent tenth of the calibration and "
                        "training splits, at least 10)")
    edit_ranges = None
    if len(trusted_images) > 1:
        # how far property edits may go: the band of each edited statistic over the same trusted images
        edit_ranges = EditRanges.measure(trusted_images, source=f"{len(trusted_images)} {trusted_from} of the "
                                         "fitted folder").to_dict()
        ref_mean, ref_std, factors = reference_statistics(trusted_images, factors=True)
        reference_stats = {"mean": ref_mean, "std": ref_std, "images": int(len(trusted_images)),
                           "images_from": trusted_from,
                           "factors": factors.to_dict() if factors is not None else None,
                           "regions": (RegionModel.measure(trusted_images).to_dict()
                                       if RegionModel.usable(trusted_images) else None),
                           "version": STATISTICS_VERSION,
                           "confident": int(len(confident)), "image_size": list(cal_float.shape[-2:]),
                           **reference_coverage(trusted_predicted, torch.cat([ref["logits"][tr_idx],
                                                                              cal["logits"]]).argmax(1))}
    if trained_oracle is not None:
        cal_scores["oracle"] = trained_oracle.score(cal["images"])
    if labelled:
        cal_scores["correct"] = (cal["logits"].argmax(1) == cal["labels"]).float()

    # Write the folder: weights as state dicts (loaded back with weights_only=True), then the manifest last.
    torch.save(autoencoder.state_dict(), out / "autoencoder.pt")
    (out / "parce.json").write_text(json.dumps(parce.state(), indent=1))
    files = ["autoencoder.pt", "parce.json"]
    if maha is not None:
        torch.save(maha.state(), out / "mahalanobis.pt")
        files.append("mahalanobis.pt")
    torch.save(cal_scores, out / "calibration_scores.pt")
    files.append("calibration_scores.pt")
    if trained_oracle is not None:
        torch.save(trained_oracle.net_.state_dict(), out / "oracle.pt")
        files.append("oracle.pt")
    if latent_index is not None:
        files += latent_index.save(out)
    ddpm_info = None
    if ddpm:
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
    percentiles = {name: np.percentile(v[torch.isfinite(v)].numpy(), np.arange(0, 101)).round(8).tolist()
                   for name, v in cal_scores.items() if name != "correct" and torch.isfinite(v).any()}
    manifest = {
        "format": FORMAT_VERSION, "cfx_version": CFX_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
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
        "labelled": labelled,
        "unavailable": unavailable,
        "uncalibrated": uncalibrated,
        "input_check": checked.to_dict() if checked is not None else None,
        "reference_statistics": reference_stats,
        "edit_ranges": edit_ranges,
        "seconds": round(time.perf_counter() - t0, 1),
        "files": {name: file_sha256(out / name) for name in files},
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
