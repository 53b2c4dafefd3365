"""How good are counterfactuals? The metrics of ``docs/methods.md#counterfactual-generators``, weight-free.

Success rate; latent and feature cosine similarity and pixel proximity (L1, SSIM) over successful pairs; realism as
the kernel inception distance computed on the autoencoder's latents (Inception weights are not available
offline, so "KID" here is KID's estimator on another feature space: compare generators with each other, not with
published numbers); seconds per image; optimisation image-steps.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Counterfactuals, ssim

__all__ = ["counterfactual_metrics", "kernel_inception_distance"]


def kernel_inception_distance(a: Tensor, b: Tensor) -> float:
    """Unbiased MMD² with the cubic polynomial kernel ``k(x, y) = (xᵀy / d + 1)³`` between feature sets."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    a, b = a.double().flatten(1), b.double().flatten(1)
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    m, n = len(a), len(b)
    return float((kaa.sum() - kaa.diag().sum()) / (m * (m - 1)) + (kbb.sum() - kbb.diag().sum()) / (n * (n - 1))
                 - 2 * kab.mean())


def _mean_std(x: Tensor) -> tuple[float, float]:
    if len(x) == 0:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std()) if len(x) > 1 else 0.0


def counterfactual_metrics(cf: Counterfactuals, originals: Tensor, classifier, autoencoder,
                           reference_latents: Tensor | None = None) -> dict[str, Any]:
    """Metrics of one generator's counterfactuals for ``originals`` (same order), as in the counterfactual paper.

    Similarities are over *successful* pairs (original below the threshold, counterfactual above), like the paper.
    ``reference_latents`` (autoencoder latents of real reference images) enable the KID realism score.
    """
    if len(cf) != len(originals):
        raise ValueError(f"{len(cf)} counterfactuals for {len(originals)} originals")
    ok = (cf.score_before < cf.threshold) & cf.success
    device = originals.device
    x, xc = originals, cf.images.to(device)
    with torch.no_grad():
        size = tuple(autoencoder.image_size)
        za = autoencoder.encode(F.interpolate(x, size=size, mode="bilinear") if tuple(x.shape[-2:]) != size else x)
        zb = autoencoder.encode(F.interpolate(xc, size=size, mode="bilinear") if tuple(xc.shape[-2:]) != size else xc)
        fa, fb = classifier.features(x), classifier.features(xc)
        if xc.shape[-2:] != x.shape[-2:]:
            xc = F.interpolate(xc, size=x.shape[-2:], mode="bilinear")
        latent = F.cosine_similarity(za, zb, dim=1).cpu()
        feature = F.cosine_similarity(fa, fb, dim=1).cpu()
        l1 = (x - xc).abs().flatten(1).mean(1).cpu()
        structural = ssim(x, xc).cpu()
    out = {
        "method": cf.method, "n": len(cf), "success_rate": float(cf.success.float().mean()),
        "successful_pairs": int(ok.sum()),
        "score_before": float(cf.score_before.mean()), "score_after": float(cf.score_after.mean()),
        "seconds_per_image": cf.seconds / len(cf), "image_steps": cf.image_steps,
    }
    for name, values in (("latent_similarity", latent), ("feature_similarity", feature), ("pixel_l1", l1),
                         ("ssim", structural)):
        out[name], out[name + "_std"] = _mean_std(values[ok])
    out["kid_latent"] = kernel_inception_distance(zb.cpu(), reference_latents) if reference_latents is not None \
        else None
    return out
