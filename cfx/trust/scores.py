"""Trust scores as objects, one registry, one verb: every score says what it needs and has ``score(inputs)``.

A :class:`TrustScore` has a ``name``, a ``description``, what it ``needs`` (any of ``logits``, ``features``,
``model`` for extra passes through the classifier, ``fitted`` for a fitted folder), ``fit(reference) -> self``
(a no-op for scores computed from logits alone) and ``score(inputs) -> (N,)`` on a :class:`ScoreInputs`; higher
means more trusted. :data:`SCORES` registers every score by name, and :func:`score_batch` computes any set of them
with one shared forward pass.

A new score is one file with a :class:`TrustScore` subclass plus one line, ``SCORES.register(...)``; the CLI, the
fitted folder's calibration percentiles, the metrics and the reports pick it up from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import Tensor

from cfx.core.models import Classifier, ClassifierError
from cfx.core.registry import Registry

from .functional import (dropout_modules, energy, gradnorm, gradtrust, log_prob, margin, max_logit, mc_dropout,
                         msp, neg_entropy, odin)

if TYPE_CHECKING:  # the fitted folder is a sibling module; only its type is named here
    from .fitted import Fitted

__all__ = ["BatchScores", "LogitScore", "SCORES", "ScoreInputs", "ScoreOptions", "TrustScore", "applicable_scores",
           "default_scores", "forward_isolating_failures", "score_batch"]

NEEDS = ("logits", "features", "model", "fitted")


@dataclass(frozen=True)
class ScoreOptions:
    """Settings of the scores that take any (ODIN's temperature and step, the MC-dropout passes)."""

    odin_temperature: float = 1000.0
    odin_epsilon: float = 0.0014
    mc_passes: int = 10


@dataclass
class ScoreInputs:
    """What one batch offers a score: images on the classifier's device, logits and (when a score needs them)
    features on the CPU in float32, the fitted folder (or None) and the options."""

    classifier: Classifier
    images: Tensor
    logits: Tensor
    features: Tensor | None = None
    fitted: "Fitted | None" = None
    options: ScoreOptions = field(default_factory=ScoreOptions)


class TrustScore:
    """Base of every trust score. Subclasses set the class attributes and implement :meth:`score`."""

    name: str = ""
    description: str = ""
    needs: frozenset[str] = frozenset({"logits"})
    reference: str = ""  # the paper it comes from, or the docs section that defines it
    extra_passes: bool = False  # costs more passes through a network than the shared forward pass (on request)

    @property
    def needs_fit(self) -> bool:
        return "fitted" in self.needs

    def fit(self, reference: object = None) -> "TrustScore":
        """Learn from reference data. Scores computed from logits alone learn nothing (a no-op); the fitted
        scores (PaRCE, Mahalanobis, the oracle) are fitted by ``cfx fit`` into a fitted folder, which is handed
        over here to check it holds this score."""
        if self.needs_fit:
            names = getattr(reference, "score_names", None)
            if names is None or self.name not in names:
                raise ValueError(f"score {self.name!r} needs a fitted folder that has it (cfx fit"
                                 f"{' --oracle' if self.name == 'oracle' else ''}); got {reference!r}")
        return self

    def applies_to(self, classifier: Classifier, fitted: "Fitted | None" = None) -> bool:
        """Whether this score can be computed for ``classifier`` (and ``fitted``)."""
        if self.needs_fit and (fitted is None or self.name not in fitted.score_names):
            return False
        if "features" in self.needs and not classifier.has_features():
            return False
        return True

    def score(self, inputs: ScoreInputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict:
        needs = sorted(self.needs - {"fitted"}, key=NEEDS.index)
        return {"name": self.name, "description": self.description, "needs": needs[-1] if needs else "logits",
                "needs_fit": self.needs_fit, "extra_passes": self.extra_passes, "reference": self.reference}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class LogitScore(TrustScore):
    """A score that is a function of the logits alone (the fitted folder stores its calibration percentiles)."""

    def __init__(self, name: str, fn: Callable[[Tensor], Tensor], description: str, reference: str = "",
                 min_classes: int = 2):
        self.name, self.fn, self.description, self.reference = name, fn, description, reference
        self.min_classes = min_classes  # below it the score cannot vary (it is the same number for every image)

    def applies_to(self, classifier: Classifier, fitted: "Fitted | None" = None) -> bool:
        return classifier.num_classes >= self.min_classes and super().applies_to(classifier, fitted)

    def score(self, inputs: ScoreInputs) -> Tensor:
        return self.fn(inputs.logits)


class GradNormScore(TrustScore):
    name = "gradnorm"
    description = "L1 norm of the final-layer gradient of KL(uniform || softmax)"
    needs = frozenset({"logits", "features"})
    reference = "Huang et al. 2021"

    def score(self, inputs: ScoreInputs) -> Tensor:
        return gradnorm(inputs.logits, inputs.features)


class OdinScore(TrustScore):
    name = "odin"
    description = "max softmax at temperature 1000 after an input perturbation of 0.0014"
    needs = frozenset({"logits", "model"})
    reference = "Liang et al. 2018"
    extra_passes = True

    def score(self, inputs: ScoreInputs) -> Tensor:
        o = inputs.options
        return odin(inputs.classifier, inputs.images, o.odin_temperature, o.odin_epsilon)


class MCDropoutScore(TrustScore):
    name = "mc_dropout"
    description = "negative entropy of the mean softmax over 10 dropout passes"
    needs = frozenset({"logits", "model"})
    reference = "Gal & Ghahramani 2016"
    extra_passes = True

    def applies_to(self, classifier: Classifier, fitted: "Fitted | None" = None) -> bool:
        return bool(dropout_modules(classifier.model))

    def score(self, inputs: ScoreInputs) -> Tensor:
        return mc_dropout(inputs.classifier, inputs.images, inputs.options.mc_passes)


class ParceScore(TrustScore):
    name = "parce"
    description = ("PaRCE competency: estimated probability the prediction is correct, from the softmax and the "
                   "autoencoder's reconstruction loss (cfx fit)")
    needs = frozenset({"logits", "model", "fitted"})
    reference = "Pohland & Tomlin 2025 (docs/methods.md#parce-competency)"

    def score(self, inputs: ScoreInputs) -> Tensor:
        with torch.inference_mode():
            return inputs.fitted.parce.competency_from(inputs.logits.to(inputs.images.device), inputs.images)


class MahalanobisScore(TrustScore):
    name = "mahalanobis"
    description = "minus the smallest Mahalanobis distance of the features to a class mean (cfx fit)"
    needs = frozenset({"logits", "features", "fitted"})
    reference = "Lee et al. 2018"

    def score(self, inputs: ScoreInputs) -> Tensor:
        if inputs.features is None:
            raise ValueError("the Mahalanobis score needs the final-layer features")
        return inputs.fitted.mahalanobis.score(inputs.features)


class OracleScore(TrustScore):
    name = "oracle"
    description = "learned trust oracle trained with the steep slope loss (cfx fit --oracle)"
    needs = frozenset({"logits", "model", "fitted"})
    reference = "Luo et al. 2021 (docs/methods.md#trust-oracle-steep-slope-loss)"
    extra_passes = True

    def score(self, inputs: ScoreInputs) -> Tensor:
        return inputs.fitted.oracle.score(inputs.images)


#: Every trust score by name, in a fixed order (the order of tables and reports).
SCORES: Registry[TrustScore] = Registry("trust score")
for _score in (
    LogitScore("gradtrust", gradtrust, "GradTrust: max/mean over classes of the variance of counterfactual "
               "final-layer gradients, all C labels (closed form)", "Prabhushankar & AlRegib 2024"),
    LogitScore("gradtrust_topk", lambda z: gradtrust(z, labels="topk", k=5), "GradTrust with cross-entropy "
               "counterfactuals for the top-5 labels (closed form; 3 classes or more: with two, both classes' terms are "
               "equal and the score is 1 for every image)", "Prabhushankar & AlRegib 2024, general form",
               min_classes=3),
    LogitScore("msp", msp, "maximum softmax probability", "Hendrycks & Gimpel 2017"),
    LogitScore("max_logit", max_logit, "maximum raw logit", "Hendrycks et al. 2022"),
    LogitScore("log_prob", log_prob, "log-softmax of the predicted class (minus its NLL)"),
    LogitScore("margin", margin, "difference of the two highest softmax probabilities"),
    LogitScore("neg_entropy", neg_entropy, "negative entropy of the softmax"),
    LogitScore("energy", energy, "negative free energy, logsumexp of the logits (T = 1)", "Liu et al. 2020"),
    GradNormScore(), OdinScore(), MCDropoutScore(), ParceScore(), MahalanobisScore(), OracleScore(),
):
    SCORES.register(_score.name, _score)


def default_scores(classifier: Classifier, fitted: "Fitted | None" = None) -> list[str]:
    """The scores computed when none are named: every applicable score that costs no pass beyond the shared forward
    pass (and the autoencoder): the logit scores, both GradTrust variants, GradNorm, PaRCE and Mahalanobis. ODIN,
    MC dropout and the oracle (a second backbone) are computed on request."""
    return [name for name in applicable_scores(classifier, fitted) if not SCORES.get(name).extra_passes]


def applicable_scores(classifier: Classifier, fitted: "Fitted | None" = None) -> list[str]:
    """Registry names that apply to this classifier (MC dropout only with dropout; features only with hooks;
    fitted scores only with a fitted folder that has them)."""
    return [name for name, s in SCORES.items() if s.applies_to(classifier, fitted)]


@dataclass
class BatchScores:
    """Scores of one batch: ``scores[name]`` is ``(N,)``; ``errors[i]`` is the reason sample i failed, or None."""

    logits: Tensor
    scores: dict[str, Tensor]
    errors: list[str | None]


def forward_isolating_failures(classifier: Classifier, images: Tensor, need_features: bool
                                ) -> tuple[Tensor, Tensor | None, dict[int, str]]:
    """Logits (and features) of ``images`` on the CPU in float32, and ``{position: error}`` for the images the model
    raised an exception on. When the batch fails, its halves are tried in turn until the failing images are found,
    so one bad image costs a few extra passes and the rest of the batch is scored; their rows get NaN. An image that
    fails alone is tried once more as a batch of two copies of itself: models that cannot take a batch of one (or
    of an odd size) are not blamed on the image. cfx's own
    input errors (:class:`ClassifierError`) and a model that fails on every image of a batch of several stop the
    run instead: that is not one bad sample."""

    def forward(x: Tensor) -> tuple[Tensor, Tensor | None]:
        if need_features:
            logits, features = classifier.logits_and_features(x)
            return logits.float().cpu(), features.float().cpu()
        return classifier.logits(x).float().cpu(), None

    def isolate(x: Tensor, offset: int) -> list[tuple[int, Tensor, Tensor | None] | tuple[int, BaseException]]:
        try:
            return [(offset, *forward(x))]
        except ClassifierError:
            raise
        except Exception as exc:  # noqa: BLE001 - the model's own failure on this input
            if len(x) == 1:
                try:  # a model that cannot take a batch of one (or of an odd size) is not failing on the image
                    logits, features = forward(x.expand(2, *x.shape[1:]))
                    return [(offset, logits[:1], None if features is None else features[:1])]
                except ClassifierError:
                    raise
                except Exception:  # noqa: BLE001 - the image itself: its first error is the one reported
                    return [(offset, exc)]
            half = len(x) // 2
            return isolate(x[:half], offset) + isolate(x[half:], offset + half)

    parts = isolate(images, 0)
    if len(parts) == 1 and len(parts[0]) == 3:  # the whole batch at once: the usual case
        return parts[0][1], parts[0][2], {}
    done = [p for p in parts if len(p) == 3]
    if not done:
        first = parts[0][1]
        if len(images) > 1:
            raise ClassifierError(f"the model failed on every one of {len(images)} images of a batch "
                                  f"({type(first).__name__}: {first}); check that the model accepts these images "
                                  "(size, channels, normalisation: cfx inspect shows what it is fed)") from first
        # one image, and it failed: an error row (nothing is scored, so no features are needed)
        return torch.full((1, classifier.num_classes), float("nan")), None, {0: _failure_message(first)}
    n = len(images)
    logits = torch.full((n, done[0][1].shape[1]), float("nan"))
    features = None if done[0][2] is None else torch.full((n, done[0][2].shape[1]), float("nan"))
    failed: dict[int, str] = {}
    for part in parts:
        if len(part) == 3:
            start, part_logits, part_features = part
            logits[start:start + len(part_logits)] = part_logits
            if features is not None:
                features[start:start + len(part_logits)] = part_features
        else:
            failed[part[0]] = _failure_message(part[1])
    return logits, features, failed


def _failure_message(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # a TorchScript model's error carries its serialised code; the model's own message is the last line
    text = lines[-1] if len(lines) > 1 and "TorchScript" in lines[0] else " ".join(lines)
    return f"the model failed on this image ({type(exc).__name__}: {text[:300]})"


def score_batch(classifier: Classifier, images: Tensor, methods: Sequence[str] | None = None,
                odin_temperature: float = 1000.0, odin_epsilon: float = 0.0014, mc_passes: int = 10,
                fitted: "Fitted | None" = None) -> BatchScores:
    """Compute the named scores for a batch of images ``(N, 3, H, W)`` in [0, 1].

    All scores share one forward pass under ``torch.inference_mode`` (features only when a score needs them); ODIN
    and MC dropout make their own passes. A sample whose logits are not finite gets NaN scores and an error message
    instead of stopping the batch.
    """
    if isinstance(methods, str):
        methods = [methods]  # one name, not its letters
    methods = list(methods) if methods is not None else applicable_scores(classifier, fitted)
    unknown = [m for m in methods if m not in SCORES]
    if unknown:
        raise ValueError(f"unknown score(s) {unknown}; known: {list(SCORES)}")
    scores = [SCORES.get(m) for m in methods]
    needs_fit = [s.name for s in scores if s.needs_fit]
    if needs_fit and fitted is None:
        raise ValueError(f"score(s) {needs_fit} need a fitted folder: run cfx fit, then pass it (--fitted DIR, "
                         "fitted=cfx.Fitted.load(DIR, classifier))")
    missing = [name for name in needs_fit if fitted is not None and name not in fitted.score_names]
    if missing:
        raise ValueError(f"score(s) {missing} are not in the fitted folder {fitted.path}: fit it again with what they "
                         f"need (cfx fit{' --oracle' if 'oracle' in missing else ''}; Mahalanobis needs labelled "
                         "reference data and the model's features)")
    need_features = any("features" in s.needs for s in scores)
    images = classifier.check_images(images)  # a caller's mistake is said as such, before any model failure is isolated
    with torch.inference_mode():
        logits, features, failed = forward_isolating_failures(classifier, images, need_features)
    finite = torch.isfinite(logits).all(dim=1)
    errors: list[str | None] = [failed.get(i, None if ok else "the model returned NaN or infinite logits")
                                for i, ok in enumerate(finite.tolist())]
    n = len(logits)
    out: dict[str, Tensor] = {}
    good = torch.nonzero(finite).flatten()
    inputs = ScoreInputs(classifier, images[good.to(images.device)], logits[good],
                         None if features is None else features[good], fitted,
                         ScoreOptions(odin_temperature, odin_epsilon, mc_passes))
    for s in scores:
        value = torch.full((n,), float("nan"))
        if len(good):
            value[good] = s.score(inputs).float().cpu()
        out[s.name] = value
    return BatchScores(logits.cpu(), out, errors)
