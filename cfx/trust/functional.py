"""Trust scores as plain functions: GradTrust and the baselines people compare it with (higher = more trusted).

GradTrust (Prabhushankar & AlRegib 2024, see ``docs/methods.md``) is the headline score, in two forms with the same
numbers: :func:`gradtrust_reference` (per image, with autograd, the way the authors' code computes it) and
:func:`gradtrust` (the closed form: one ordinary forward pass, logits only, any batch size).

Baselines, each as its original paper defines it: maximum softmax probability, maximum logit, log-probability of
the predicted class (log-softmax, not raw logits), top-two probability margin, negative entropy, energy, ODIN, MC
dropout and GradNorm.

The registry of scores as objects (:data:`cfx.trust.scores.SCORES`) wraps these functions.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cfx.core.models import Classifier, head_weight

__all__ = [
    "check_logits",
    "dropout_modules",
    "energy",
    "gradnorm",
    "gradtrust",
    "gradtrust_reference",
    "log_prob",
    "margin",
    "max_logit",
    "mc_dropout",
    "msp",
    "neg_entropy",
    "odin",
]

Labels = Literal["all", "topk"]


def check_logits(logits: Tensor) -> Tensor:
    """Validate a ``(N, C)`` logits tensor: finite, floating point, at least two classes."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}; for one sample use "
                         "logits.unsqueeze(0)")
    if logits.shape[1] < 2:
        raise ValueError(f"logits need at least 2 classes, got C = {logits.shape[1]}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    bad = ~torch.isfinite(logits).all(dim=1)
    if bad.any():
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        raise ValueError(f"logits contain NaN or infinite values in {int(bad.sum())} of {len(logits)} samples "
                         f"(rows {rows}...); check the model and its input (score_batch records such samples as "
                         "errors instead)")
    return logits


# ---------------------------------------------------------------------------------------------- GradTrust

def _gradtrust_ratio(row_energy: Tensor) -> Tensor:
    """max_c E_c / mean_c E_c for per-class row statistics ``(N, C)``."""
    return row_energy.max(dim=1).values / row_energy.mean(dim=1)


def gradtrust(logits: Tensor, labels: Labels = "all", k: int = 5) -> Tensor:
    """GradTrust from logits alone (closed form), per sample at any batch size; higher = more trusted.

    ``labels="all"`` (default, the reference semantics): with u = z - 1/C,
    ``r = max_c u_c^4 / mean_c u_c^4`` in [1, C]. The max runs over all classes, not just the predicted one.

    ``labels="topk"``: counterfactual cross-entropy labels y among the ``k`` highest logits (k capped at C),
    g^(y) = softmax(z) - e_y, m_c = mean_y (g_c^(y))^2, ``r = max_c m_c^2 / mean_c m_c^2`` (the general closed form).
    """
    z = check_logits(logits)
    if z.dtype not in (torch.float32, torch.float64):
        z = z.float()  # half precision overflows u^4 quickly
    c = z.shape[1]
    if labels == "all":
        energy = (z - 1.0 / c).pow(4)  # float32 is ample: the ratio is scale-free
    elif labels == "topk":
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        kk = min(k, c)
        p = torch.softmax(z, dim=1)
        top = z.topk(kk, dim=1).indices                                # (N, k)
        onehot = F.one_hot(top, c).to(z.dtype)                          # (N, k, C)
        m = (p.unsqueeze(1) - onehot).pow(2).mean(dim=1)                # (N, C)
        energy = m.pow(2)
    else:
        raise ValueError(f"labels must be 'all' or 'topk', got {labels!r}")
    return _gradtrust_ratio(energy).to(logits.dtype)


def gradtrust_reference(classifier: Classifier, images: Tensor, labels: Labels = "all", k: int = 5) -> Tensor:
    """GradTrust the way the reference code computes it: one image at a time, with autograd.

    For each image: the loss (mean-reduced MSE of the raw logits against a target filled with 1/C for
    ``labels="all"``; cross-entropy for each of the top-``k`` labels for ``labels="topk"``), the gradient of the
    final linear layer's weight through a full backward pass, squared element-wise (averaged over the labels for
    top-k), the unbiased variance of each class row over the features, then max over classes / mean over classes.
    Slow by design (one full backward per image and label); use :func:`gradtrust` in practice.
    """
    weight = head_weight(classifier.head)
    if weight is None:
        raise ValueError("the classifier head has no weight matrix")
    was_frozen = not weight.requires_grad
    weight.requires_grad_(True)  # a frozen head still has a gradient to measure
    params = [p for p in classifier.model.parameters() if p.requires_grad]
    w_index = next(i for i, p in enumerate(params) if p is weight)
    scores = []
    try:
        scores = _reference_loop(classifier, images, labels, k, params, w_index, weight)
    finally:
        if was_frozen:
            weight.requires_grad_(False)
    return torch.stack(scores).to(images.dtype).cpu() if scores else torch.empty(0)


def _reference_loop(classifier: Classifier, images: Tensor, labels: Labels, k: int, params: list[Tensor],
                    w_index: int, weight: Tensor) -> list[Tensor]:
    scores = []
    with torch.enable_grad():
        for x in images:
            logits = classifier.logits(x.unsqueeze(0))
            check_logits(logits.detach())
            c = logits.shape[1]
            if labels == "all":
                loss = F.mse_loss(logits, torch.full_like(logits, 1.0 / c))
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                fisher = grads[w_index].pow(2)
            elif labels == "topk":
                top = logits.detach().topk(min(k, c), dim=1).indices[0]
                fisher = torch.zeros_like(weight)
                for j, y in enumerate(top):
                    loss = F.cross_entropy(logits, y.view(1))
                    grads = torch.autograd.grad(loss, params, retain_graph=j < len(top) - 1, allow_unused=True)
                    fisher = fisher + grads[w_index].pow(2)
                fisher = fisher / len(top)
            else:
                raise ValueError(f"labels must be 'all' or 'topk', got {labels!r}")
            row_var = fisher.double().flatten(1).var(dim=1, unbiased=True)  # (C,); a 1x1-conv head's (C, d, 1, 1) too
            scores.append(_gradtrust_ratio(row_var.unsqueeze(0))[0])
    return scores


# ---------------------------------------------------------------------------------------------- baselines (logits)

def msp(logits: Tensor) -> Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel 2017)."""
    return torch.softmax(check_logits(logits), dim=1).max(dim=1).values


def max_logit(logits: Tensor) -> Tensor:
    """Maximum raw logit (Hendrycks et al. 2022). The reference code's "NLL" is this score."""
    return check_logits(logits).max(dim=1).values


def log_prob(logits: Tensor) -> Tensor:
    """Log-probability of the predicted class: ``max_c log_softmax(z)_c`` = minus the NLL of the prediction."""
    return torch.log_softmax(check_logits(logits), dim=1).max(dim=1).values


def margin(logits: Tensor) -> Tensor:
    """Difference between the two highest softmax probabilities."""
    top2 = torch.softmax(check_logits(logits), dim=1).topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def neg_entropy(logits: Tensor) -> Tensor:
    """Negative Shannon entropy of the softmax, ``sum_c p_c log p_c`` (0 for a one-hot prediction)."""
    logp = torch.log_softmax(check_logits(logits), dim=1)
    return (logp.exp() * logp).sum(dim=1)


def energy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Negative free energy ``T * logsumexp(z / T)`` (Liu et al. 2020), T = 1 by default."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return temperature * torch.logsumexp(check_logits(logits) / temperature, dim=1)


def gradnorm(logits: Tensor, features: Tensor) -> Tensor:
    """GradNorm (Huang et al. 2021): L1 norm of the final-layer weight gradient of KL(uniform || softmax).

    The gradient of the cross-entropy to the uniform target with respect to the logits is ``softmax(z) - 1/C``, so
    the weight gradient is that vector times the features, and its L1 norm is
    ``||softmax(z) - 1/C||_1 * ||h||_1``. Larger means in-distribution (the original paper's convention), so it is
    already a trust score.
    """
    z = check_logits(logits)
    if features.dim() != 2 or features.shape[0] != z.shape[0]:
        raise ValueError(f"features must be (N, d) with N = {z.shape[0]}, got {tuple(features.shape)}")
    g = torch.softmax(z, dim=1) - 1.0 / z.shape[1]
    return g.abs().sum(dim=1) * features.abs().sum(dim=1)


# ---------------------------------------------------------------------------------------------- baselines (model)

def odin(classifier: Classifier, images: Tensor, temperature: float = 1000.0, epsilon: float = 0.0014) -> Tensor:
    """ODIN (Liang et al. 2018): temperature-scaled max softmax after a small input perturbation.

    ``x' = x - epsilon * sign(-grad_x log S_yhat(x; T))`` (the step that raises the temperature-scaled softmax of the
    predicted class), then ``max softmax(f(x') / T)``. The step is taken on the [0, 1] pixels, which equals the
    original code's step on normalised inputs divided by the per-channel std. ``epsilon=0`` gives temperature
    scaling alone.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    x = images.detach().to(classifier.device)
    if epsilon:
        with torch.enable_grad():
            x = x.clone().requires_grad_(True)
            logits = classifier.logits(x) / temperature
            loss = F.cross_entropy(logits, logits.argmax(dim=1), reduction="sum")  # -log S_yhat
            (grad,) = torch.autograd.grad(loss, x)
        x = (x - epsilon * grad.sign()).clamp(0, 1).detach()
    with torch.no_grad():
        return msp(classifier.logits(x) / temperature)


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


def mc_dropout(classifier: Classifier, images: Tensor, passes: int = 10, seed: int | None = 0) -> Tensor:
    """MC dropout (Gal & Ghahramani 2016): negative entropy of the mean softmax over ``passes`` dropout passes.

    Only dropout layers are switched to training mode (batch norm stays in eval mode). Raises ``ValueError`` for a
    model without dropout, where the score would silently equal the plain entropy.
    """
    if passes < 1:
        raise ValueError(f"passes must be at least 1, got {passes}")
    drops = dropout_modules(classifier.model)
    if not drops:
        scripted = [m for m in classifier.model.modules() if "Dropout" in str(getattr(m, "original_name", ""))]
        if scripted:
            raise ValueError(f"this TorchScript model has {len(scripted)} dropout layer(s), but cfx cannot switch "
                             "dropout on inside a compiled graph reliably; load the model as python:module:factory "
                             "(the nn.Module) for MC dropout, or use neg_entropy")
        raise ValueError("MC dropout needs dropout layers with p > 0, and this model has none; use neg_entropy "
                         "or choose a model trained with dropout")
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        for m in drops:
            m.train()
        with torch.no_grad():
            mean_p = torch.stack([torch.softmax(classifier.logits(images), dim=1) for _ in range(passes)]).mean(0)
    finally:
        for m in drops:
            m.eval()
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    return (mean_p * torch.log(mean_p.clamp_min(1e-12))).sum(dim=1)
