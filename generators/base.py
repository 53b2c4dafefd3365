"""What every counterfactual generator returns, the target scores they raise, and weight-free image distances."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cfx.core.images import resize
from cfx.core.models import Classifier
from cfx.trust.fitted import Fitted
from cfx.trust.functional import gradtrust
from cfx.trust.scores import SCORES, LogitScore

__all__ = ["Counterfactuals", "RunRankTarget", "TargetScore", "TrustTarget", "competency_target",
           "from_autoencoder_size", "gradtrust_target", "known_scores", "ssim", "ssim_distance",
           "to_autoencoder_size"]


def known_scores(score_before: Tensor | Sequence[float] | None, n: int) -> Tensor | None:
    """The target scores of the originals ``(n,)`` when the caller already has them (e.g. from scoring the batch),
    as a float CPU tensor; None when not given (the generator then scores the originals itself)."""
    if score_before is None:
        return None
    before = torch.as_tensor(score_before).detach().float().cpu().flatten()
    if len(before) != n:
        raise ValueError(f"score_before must hold one target score per image ({n}), got {len(before)}")
    return before


class TargetScore(Protocol):
    """A differentiable trust score to raise: images ``(N, 3, H, W)`` in [0, 1] → scores ``(N,)``."""

    def __call__(self, images: Tensor) -> Tensor: ...


@dataclass
class Counterfactuals:
    """Counterfactual images for a batch, with what it took to make them.

    ``score_before``/``score_after`` are the target score of the originals and of the counterfactuals;
    ``success`` says where the counterfactual reached the threshold; ``steps`` is the optimisation steps each sample
    used (0 for one-shot generators); ``seconds`` is the wall time of the whole batch. ``extra`` carries
    generator-specific results (e.g. the latent neighbour's id, label and own image).
    """

    method: str
    images: Tensor
    score_before: Tensor
    score_after: Tensor
    success: Tensor
    steps: Tensor
    seconds: float
    threshold: float
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_steps(self) -> int:
        """Total forward/backward passes over single images: the compute the optimisation spent."""
        return int(self.steps.sum())


def competency_target(classifier: Classifier, fitted: Fitted) -> Callable[[Tensor], Tensor]:
    """PaRCE competency as the target: the generators' default."""
    return lambda images: fitted.parce.score_torch(classifier, images)


@dataclass
class TrustTarget:
    """A differentiable trust score to raise, with the level that counts as trusted and what it is.

    ``name`` is what the evidence and the report call it (``parce``, or e.g. ``gradtrust_topk rank in this run``);
    calling the target scores images ``(N, 3, H, W)`` in [0, 1] → ``(N,)``. ``from_logits(logits, images)``, when
    given, computes the same score from logits already computed, so one forward pass serves both the class
    probabilities and the score (:func:`~cfx.generators.sweep_edits` uses it).
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    threshold: float
    description: str = ""
    from_logits: Callable[[Tensor, Tensor], Tensor] | None = None

    def __call__(self, images: Tensor) -> Tensor:
        return self.fn(images)

    @classmethod
    def competency(cls, classifier: Classifier, fitted: Fitted) -> "TrustTarget":
        """PaRCE competency of the fitted folder, trusted from its threshold (0.9 by default)."""
        return cls("parce", competency_target(classifier, fitted), float(fitted.parce.threshold),
                   "PaRCE competency: the estimated probability that the prediction is right",
                   fitted.parce.competency_from)


class RunRankTarget(TrustTarget):
    """Trust without a fitted folder: a logit score's smoothed rank among the scores of this run, in (0, 1).

    ``rank(x) = mean_j Φ((s(x) − s_j) / h)`` over the run's scores ``s_j`` (at most ``max_points`` of their quantiles)
    with Silverman's bandwidth ``h``: a kernel-smoothed empirical CDF, so it is differentiable and strictly
    increasing in the score, reads the same for every score (0.5 = as trusted as the run's median image) and a gain
    of 0.3 means passing 30 % of the run. ``score`` must be a function of the logits (see
    :data:`cfx.trust.scores.SCORES`); trusted from ``threshold`` (the run's median by default).
    """

    def __init__(self, classifier: Classifier, score: str, run_scores: Tensor | Sequence[float],
                 threshold: float = 0.5, max_points: int = 2048):
        entry = SCORES.get(score) if score in SCORES else None
        if not isinstance(entry, LogitScore):
            logit_scores = [k for k, v in SCORES.items() if isinstance(v, LogitScore)]
            raise ValueError(f"a run-rank target needs a score computed from the logits alone, not {score!r}; "
                             f"choose from {', '.join(logit_scores)}")
        values = torch.as_tensor(run_scores, dtype=torch.float64).flatten()
        values = values[torch.isfinite(values)]
        if len(values) < 2:
            raise ValueError(f"a run-rank target needs the {score} scores of at least 2 images of the run, "
                             f"got {len(values)}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        values = values.sort().values
        if len(values) > max_points:
            values = torch.quantile(values, torch.linspace(0, 1, max_points, dtype=torch.float64))
        spread = float(values.std())
        iqr = float(values[int(0.75 * (len(values) - 1))] - values[int(0.25 * (len(values) - 1))]) / 1.349
        scale = min(spread, iqr) if iqr > 0 else spread
        self.bandwidth = max(0.9 * scale * len(values) ** -0.2, 1e-6 * max(1.0, float(values.abs().max())))
        self.values, self.classifier, self.score_fn = values.float(), classifier, entry.fn
        super().__init__(f"{score} rank in this run", self._rank, float(threshold),
                         f"the share of this run's images that {score} trusts less (smoothed)", self._rank_from_logits)
        self.score = score

    def _rank(self, images: Tensor) -> Tensor:
        return self._rank_from_logits(self.classifier.logits(images), images)

    def _rank_from_logits(self, logits: Tensor, images: Tensor | None = None) -> Tensor:
        s = self.score_fn(logits).float()
        v = self.values.to(s.device)
        return torch.special.ndtr((s.unsqueeze(1) - v.unsqueeze(0)) / self.bandwidth).mean(1)


def gradtrust_target(classifier: Classifier, labels: str = "all") -> Callable[[Tensor], Tensor]:
    """GradTrust normalised to (0, 1] by dividing by C, so a threshold like 0.5 reads as "half the maximum"."""
    return lambda images: gradtrust(classifier.logits(images), labels=labels) / classifier.num_classes


def to_autoencoder_size(images: Tensor, autoencoder) -> Tensor:
    """Images at the autoencoder's resolution (the same tensor when it already matches)."""
    return resize(images, tuple(autoencoder.image_size))


def from_autoencoder_size(decoded: Tensor, images: Tensor, small: Tensor) -> Tensor:
    """Carry a change made at the autoencoder's resolution back onto the full-resolution originals.

    ``decoded`` and ``small`` are at the autoencoder's size, ``images`` at the classifier's. When the sizes match the
    decoded image is the counterfactual itself; otherwise the low-resolution change ``decoded − small`` is upsampled
    and added to the original as a residual, so what the model scores and the report shows keeps the original's
    full-resolution detail wherever the counterfactual did not change it. Differentiable in ``decoded``.
    """
    if tuple(decoded.shape[-2:]) == tuple(images.shape[-2:]):
        return decoded
    change = F.interpolate(decoded - small, size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)
    return (images + change).clamp(0, 1)


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: Tensor, y: Tensor, window: int = 7, sigma: float = 1.5) -> Tensor:
    """Per-image structural similarity (Wang et al. 2004) of images in [0, 1], Gaussian window; differentiable.

    The window shrinks to the image for small inputs. Returns ``(N,)`` in [-1, 1] (1 = identical).
    """
    c = x.shape[1]
    size = min(window, x.shape[-2], x.shape[-1])
    size -= 1 - size % 2  # odd
    w = _gaussian_window(size, sigma, c, x.device, x.dtype)
    mu_x = F.conv2d(x, w, groups=c)
    mu_y = F.conv2d(y, w, groups=c)
    sxx = F.conv2d(x * x, w, groups=c) - mu_x ** 2
    syy = F.conv2d(y * y, w, groups=c) - mu_y ** 2
    sxy = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def ssim_distance(x: Tensor, y: Tensor) -> Tensor:
    """1 − SSIM per image: the weight-free perceptual distance IGD uses in place of LPIPS."""
    return 1 - ssim(x, y)
