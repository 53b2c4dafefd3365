"""Classifier adapter: one object for any PyTorch image classifier.

:class:`Classifier` wraps an ``nn.Module`` (plain PyTorch, TorchScript, Hugging Face ``*ForImageClassification``,
torchvision, timm) and gives every stage of cfx the same view of it:

- ``logits(images)``: raw pre-softmax logits, ``(N, C)``;
- ``features(images)``: the input of the final linear layer, ``(N, d)`` (captured with a forward hook);
- ``logits_and_features(images)``: both from one forward pass (one extraction serves many scores);
- ``head``: that final linear layer (``out_features == num_classes``);
- ``num_classes``, ``class_names`` and the ``preprocessing`` (size, mean, std).

Images handed to a :class:`Classifier` are always float tensors ``(N, 3, H, W)`` with pixels in ``[0, 1]``, the
convention of every cfx image source. The adapter resizes and normalises them itself with differentiable torch
operations, so gradient-based generators can work in pixel space.

:func:`load_classifier` builds one from a model spec string (``torchscript:PATH``, ``hf:LOCAL_DIR``,
``python:module:callable``, ``torchvision:NAME[:WEIGHTS]``, ``timm:NAME[:WEIGHTS]``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .images import luma
from .registry import Registry

__all__ = [
    "COMMON_NORMALISATIONS",
    "Classifier",
    "ClassifierError",
    "InputCheck",
    "Preprocessing",
    "advise_on_inputs",
    "MODEL_KINDS",
    "ModelOptions",
    "check_inputs",
    "find_head",
    "suggest_normalisation",
    "head_input_features",
    "head_weight",
    "load_classifier",
    "model_fingerprint",
    "MAX_IMAGE_SIDE",
    "parse_image_size",
    "read_class_names",
]


class ClassifierError(ValueError):
    """A model could not be loaded or adapted; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class Preprocessing:
    """How a classifier wants its input: resize to ``size`` (H, W), then ``(x - mean) / std`` per channel.

    ``None`` fields are skipped: no ``size`` keeps the image size, no ``mean``/``std`` keeps pixels in ``[0, 1]``.
    ``channels=1`` is for a model that takes grey images ``(N, 1, H, W)``: it gets the ITU-R 601 luma of each RGB
    image (what PIL's ``convert("L")`` gives), and ``mean``/``std`` then have one value each. Everything else in cfx
    (statistics, edits, counterfactuals, reports) still works on the RGB images.
    """

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.size, int) and not isinstance(self.size, bool):
            object.__setattr__(self, "size", (self.size, self.size))  # one number: a square (a frozen dataclass)
        if self.size is not None:
            if not isinstance(self.size, (tuple, list)) or len(self.size) != 2 or min(self.size) < 1:
                raise ClassifierError(f"image size must be two positive integers (H, W), got {self.size!r}")
        if self.channels not in (1, 3):
            raise ClassifierError(f"channels must be 1 (a grey model) or 3 (RGB), got {self.channels!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) not in (1, self.channels):
                raise ClassifierError(f"{name} needs 1 or 3 values (one per RGB channel), got {value!r}"
                                      if self.channels == 3 else
                                      f"{name} needs 1 value for a grey (1-channel) model, got {value!r}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ClassifierError(f"std values must be positive, got {self.std!r}")

    def __call__(self, images: Tensor) -> Tensor:
        """Resize (bilinear, antialiased when shrinking) and normalise a ``(N, 3, H, W)`` batch in ``[0, 1]``."""
        x = images
        if self.size is not None and tuple(x.shape[-2:]) != tuple(self.size):
            shrinking = x.shape[-2] > self.size[0] or x.shape[-1] > self.size[1]
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=shrinking)
        if self.channels == 1:
            x = luma(x).unsqueeze(1)
        if self.mean is not None:
            x = x - torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        if self.std is not None:
            x = x / torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x

    def to_dict(self) -> dict:
        out = {"size": list(self.size) if self.size else None,
               "mean": list(self.mean) if self.mean else None,
               "std": list(self.std) if self.std else None}
        if self.channels != 3:
            out["channels"] = self.channels
        return out


def _looks_like_probabilities(outputs: Tensor) -> bool:
    """Whether a probe batch's outputs ``(N, C)`` are probabilities (a model ending in a softmax), not logits."""
    out = outputs.detach().double()
    return bool((out >= 0).all() and torch.allclose(out.sum(1), torch.ones(len(out), dtype=out.dtype), atol=1e-4))


def _grey_preprocessing(pre: Preprocessing) -> Preprocessing | None:
    """The same preprocessing for a model that takes 1-channel images, when it can be (not with three-value
    normalisation, which says the model takes RGB)."""
    three_values = any(v is not None and len(v) != 1 for v in (pre.mean, pre.std))
    if pre.channels == 1 or three_values:
        return None
    return Preprocessing(size=pre.size, mean=pre.mean, std=pre.std, channels=1)


def _output_logits(output: object) -> Tensor:
    """Pull the logits tensor out of whatever a model returns (tensor, HF output object, tuple, dict)."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, dict) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ClassifierError(
        f"the model returned {type(output).__name__}, not logits; wrap it so that forward() returns a (N, C) tensor")


def head_weight(module: nn.Module) -> Tensor | None:
    """The weight of a final linear layer (plain or TorchScript; ``(C, d)``), or of a 1×1 convolution used as one
    (``(C, d, 1, 1)``, a classifier head followed by global average pooling); else None."""
    if isinstance(module, nn.Linear):
        return module.weight
    if (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
            and module.stride == (1, 1) and module.padding in ((0, 0), "valid")):
        return module.weight
    if isinstance(module, torch.jit.ScriptModule) and getattr(module, "original_name", "") == "Linear":
        weight = getattr(module, "weight", None)
        return weight if isinstance(weight, Tensor) and weight.dim() == 2 else None
    if isinstance(module, torch.jit.ScriptModule) and getattr(module, "original_name", "") == "Conv2d":
        weight = getattr(module, "weight", None)
        try:
            pointwise = (tuple(module.kernel_size) == (1, 1) and tuple(module.stride) == (1, 1)
                         and int(module.groups) == 1 and module.padding in ((0, 0), [0, 0], "valid"))
        except (AttributeError, RuntimeError, TypeError):  # an export that dropped the attributes
            pointwise = isinstance(weight, Tensor) and weight.dim() == 4 and tuple(weight.shape[2:]) == (1, 1)
        return weight if pointwise and isinstance(weight, Tensor) and weight.dim() == 4 else None
    return None


def head_input_features(head: nn.Module, inputs: Tensor) -> Tensor:
    """The ``(N, d)`` features from what the head received: a 1×1-convolution head's input averaged over its
    positions (the head is followed by global average pooling, so the logits are linear in that average); a linear
    head applied to ``(N, tokens, d)`` gives the first token's; ``(N, d)`` passes through."""
    if isinstance(head, nn.Conv2d):
        return inputs.mean(dim=(2, 3))
    if inputs.dim() > 2:
        return inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])[:, 0]
    return inputs


def find_head(model: nn.Module, num_classes: int, name: str | None = None) -> tuple[str, nn.Module]:
    """Find the final linear layer of ``model``: the linear layer whose ``out_features == num_classes``.

    With ``name`` given, that submodule is used (and checked). When several linear layers have ``num_classes``
    outputs the choice is ambiguous and a :class:`ClassifierError` lists them so the user can pass ``head=NAME``.
    """
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            linears = [n for n, m in modules.items() if head_weight(m) is not None]
            raise ClassifierError(f"the model has no submodule named {name!r}; its linear layers are: {linears}")
        weight = head_weight(modules[name])
        if weight is None:
            raise ClassifierError(f"submodule {name!r} is a {type(modules[name]).__name__}, not a linear layer; "
                                  "name the final nn.Linear of the classifier")
        if weight.shape[0] != num_classes:
            raise ClassifierError(f"submodule {name!r} has {weight.shape[0]} outputs but the model gives "
                                  f"{num_classes} logits; name the layer that produces the logits")
        return name, modules[name]
    candidates = [(n, m) for n, m in modules.items()
                  if (w := head_weight(m)) is not None and w.shape[0] == num_classes]
    if not candidates:
        linears = {n: tuple(w.shape) for n, m in modules.items() if (w := head_weight(m)) is not None}
        raise ClassifierError(
            f"no linear layer with {num_classes} outputs (the number of logits) was found; linear layers: "
            f"{linears or 'none'}. cfx needs the final layer to be an nn.Linear (or a 1x1 convolution before global "
            "average pooling); wrap the model or pass head=NAME")
    if len(candidates) > 1:
        raise ClassifierError(
            f"{len(candidates)} linear layers have {num_classes} outputs: {[n for n, _ in candidates]}; "
            "say which one produces the logits with head=NAME (--head NAME on the command line)")
    return candidates[0]


@dataclass
class Classifier:
    """A PyTorch image classifier seen the way cfx needs it.

    Build with :meth:`Classifier.wrap` (any ``nn.Module``) or :func:`load_classifier` (a spec string).
    All methods take images ``(N, 3, H, W)`` in ``[0, 1]`` and apply :attr:`preprocessing` themselves.
    """

    model: nn.Module
    head: nn.Module
    head_name: str
    num_classes: int
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    class_names: list[str] | None = None
    source: str = "module"
    probe_size: tuple[int, int] = (32, 32)  # the (H, W) a probe forward pass uses when preprocessing has no size
    # cached once per classifier: the verified children route of a scripted model (a list, or False), or whether a
    # 1x1-convolution head checked out as linear in its pooled input (a bool)
    _feature_route: object = field(default=None, init=False, repr=False, compare=False)
    # how load_classifier made it (the spec and its options), so another process can load the same model
    origin: tuple[str, dict] | None = field(default=None, repr=False, compare=False)
    #: what the probe pass found wrong with the model (e.g. it outputs probabilities), kept for summaries and reports
    notes: list[str] = field(default_factory=list, repr=False, compare=False)
    #: On the CPU, forward passes run in chunks of at most this many input pixels (4 images at 224 × 224): CPU caches
    #: make large batches of large images several times slower per image (EfficientNet-Lite0 at 224 px on 2 cores:
    #: 10.7 ms/image in batches of 4, 38 ms in batches of 64). Results do not depend on it; 0 turns chunking off.
    cpu_chunk_pixels: ClassVar[int] = 4 * 224 * 224

    # ------------------------------------------------------------------ construction
    @classmethod
    def wrap(cls, model: nn.Module, *, preprocessing: Preprocessing | None = None, head: str | None = None,
             class_names: Sequence[str] | None = None, num_classes: int | None = None,
             example_size: tuple[int, int] | None = None, device: str | torch.device | None = None,
             source: str = "module") -> "Classifier":
        """Adapt ``model``. The number of classes is read from one probe forward pass unless given.

        ``example_size`` is the (H, W) of the probe image when the preprocessing has no size (default 32×32).
        """
        if not isinstance(model, nn.Module):
            raise ClassifierError(f"expected a torch.nn.Module, got {type(model).__name__}")
        preprocessing = preprocessing or Preprocessing()
        model = model.eval()
        if device is not None:
            model = model.to(device)
        notes: list[str] = []
        if num_classes is None:
            size = preprocessing.size or example_size or (32, 32)
            param = next(iter(model.parameters()), None)
            probe = torch.rand(2, 3, *size, device=param.device if param is not None else "cpu",
                               dtype=param.dtype if param is not None and param.is_floating_point() else None)
            try:
                with torch.inference_mode():
                    logits = _output_logits(model(preprocessing(probe)))
            except ClassifierError:
                raise
            except Exception as exc:  # the model rejects the probe input: a grey model, or say how to give the size
                grey = _grey_preprocessing(preprocessing)
                logits = None
                if grey is not None:
                    try:
                        with torch.inference_mode():
                            logits = _output_logits(model(grey(probe)))
                        preprocessing = grey  # a model that takes 1-channel images: fed the luma of each image
                    except Exception:
                        logits = None
                if logits is None:
                    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
                    reason = lines[-1] if lines else type(exc).__name__  # TorchScript puts its traceback first
                    raise ClassifierError(
                        f"a probe forward pass on a (2, {preprocessing.channels}, {size[0]}, {size[1]}) batch failed "
                        f"({reason}); give the model's input size with --image-size H[xW] (image_size=...)"
                        + ("" if grey is None else "; a 1-channel (grey) batch failed too")) from exc
            if logits.dim() != 2:
                raise ClassifierError(f"the model returns shape {tuple(logits.shape)}; a classifier must return "
                                      "(N, C) logits")
            if not logits.is_floating_point():
                raise ClassifierError(f"the model returns {logits.dtype} outputs; cfx needs floating-point logits "
                                      "(class indices or rounded scores carry no trust and no gradient): give it the "
                                      "model before the outputs are turned into integers")
            num_classes = int(logits.shape[1])
            if _looks_like_probabilities(logits):
                notes.append("the model's outputs look like probabilities (every row is non-negative and sums to "
                             "1): cfx reads them as logits, so MSP, margin, entropy, energy and GradTrust see a "
                             "softmax of probabilities. Give cfx the model without its final softmax")
                warnings.warn(notes[-1], UserWarning, stacklevel=2)
        if num_classes < 2:
            raise ClassifierError(f"a classifier needs at least 2 classes, this one has {num_classes}")
        head_name, head_module = find_head(model, num_classes, head)
        names = list(class_names) if class_names is not None else None
        if names is not None and len(names) != num_classes:
            raise ClassifierError(f"{len(names)} class names were given but the model has {num_classes} classes")
        return cls(model=model, head=head_module, head_name=head_name, num_classes=num_classes,
                   preprocessing=preprocessing, class_names=names, source=source,
                   probe_size=tuple(preprocessing.size or example_size or (32, 32)), notes=notes)

    # ------------------------------------------------------------------ device
    @property
    def device(self) -> torch.device:
        param = next(iter(self.model.parameters()), None)
        return param.device if param is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> "Classifier":
        """Move the model to ``device`` (in place) and return self."""
        check_device(device)
        self.model.to(device)
        return self

    # ------------------------------------------------------------------ forward passes
    def check_images(self, images: Tensor) -> Tensor:
        """``images`` as this classifier takes them: ``(N, 3, H, W)`` (one ``(3, H, W)`` image gets its batch
        dimension), floating point on the classifier's device, in the dtype of its weights. Raises ``TypeError`` or
        ``ValueError`` saying what to change for anything else (uint8, channels last, grey, pixels in 0–255)."""
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() == 4 and images.shape[1] != 3 and images.shape[-1] == 3:
            raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}, which looks like "
                             "channels last (N, H, W, 3): use x.permute(0, 3, 1, 2)")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (N, 3, H, W) with RGB pixels in [0, 1], got "
                             f"{tuple(images.shape)}; grey images: repeat the channel (x.expand(-1, 3, -1, -1))")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}; divide uint8 by 255")
        top = float(images.detach().amax()) if images.numel() else 0.0
        if top > 1.5:
            raise ValueError(f"images must have pixels in [0, 1], got values up to {top:.4g}; divide 0-255 images by 255")
        weight = next(iter(self.model.parameters()), None) if isinstance(self.model, nn.Module) else None
        dtype = weight.dtype if weight is not None and weight.is_floating_point() else torch.float32
        return images.to(device=self.device, dtype=dtype)

    _check_images = check_images  # the name the rest of this module uses

    def _chunk_size(self, images: Tensor) -> int:
        """How many of ``images`` one forward pass takes (see :attr:`cpu_chunk_pixels`)."""
        if self.cpu_chunk_pixels <= 0 or images.device.type != "cpu":
            return max(1, len(images))
        h, w = self.preprocessing.size or tuple(images.shape[-2:])
        return max(1, self.cpu_chunk_pixels // (h * w))

    def logits(self, images: Tensor) -> Tensor:
        """Raw logits ``(N, C)`` for images ``(N, 3, H, W)`` in ``[0, 1]``. Gradients flow if enabled."""
        images = self._check_images(images)
        size = self._chunk_size(images)
        if len(images) <= size:
            return _output_logits(self.model(self.preprocessing(images)))
        return torch.cat([_output_logits(self.model(self.preprocessing(images[i:i + size])))
                          for i in range(0, len(images), size)])

    def logits_and_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Logits ``(N, C)`` and final-layer input features ``(N, d)`` from one forward pass."""
        images = self._check_images(images)
        size = self._chunk_size(images)
        if len(images) <= size:
            return self._logits_and_features(images)
        parts = [self._logits_and_features(images[i:i + size]) for i in range(0, len(images), size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _logits_and_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(self.head, torch.jit.ScriptModule):
            return self._scripted_logits_and_features(images)
        captured: list[Tensor] = []

        def hook(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            captured.append(inputs[0])

        handle = self.head.register_forward_pre_hook(hook)
        try:
            logits = _output_logits(self.model(self.preprocessing(images)))
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ClassifierError(f"the head {self.head_name!r} ran {len(captured)} times in one forward pass; "
                                  "name the final classification layer with head=NAME")
        return logits, head_input_features(self.head, captured[0])

    def _scripted_logits_and_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        # TorchScript modules do not support hooks: use an exported features() method when the model has one, else
        # the model's children run in order up to the head, once verified against the model's own logits.
        x = self.preprocessing(images)
        method = self._features_method()
        if method is not None:
            feats = getattr(self.model, method)(x)
            if feats.dim() != 2:
                raise ClassifierError(f"the TorchScript model's {method}() returned shape {tuple(feats.shape)}; "
                                      "it must return the (N, d) input of the final linear layer")
            return self.head(feats), feats
        route = self._children_route()
        if route is None:
            raise ClassifierError(self.features_unavailable_reason())
        feats = x
        for module in route:
            feats = module(feats)
        if feats.dim() > 2:
            feats = feats.flatten(1)
        return self.head(feats), feats

    def _features_method(self) -> str | None:
        for method in ("features", "forward_features"):
            attr = getattr(self.model, method, None)
            if attr is not None and not isinstance(attr, nn.Module):  # a method, not a submodule named "features"
                return method
        return None

    def _children_route(self) -> list[nn.Module] | None:
        """The model's direct children before the head, when running them in order (flattening before the head)
        reproduces the model's logits on a probe batch; None otherwise. Decided once per classifier."""
        if self._feature_route is None:
            self._feature_route = False
            children = list(self.model.named_children())
            if children and children[-1][0] == self.head_name:
                route = [m for _, m in children[:-1]]
                probe = torch.rand(2, 3, *(self.preprocessing.size or self.probe_size), device=self.device)
                try:
                    with torch.inference_mode():
                        x = self.preprocessing(probe)
                        feats = x
                        for module in route:
                            feats = module(feats)
                        if feats.dim() > 2:
                            feats = feats.flatten(1)
                        ok = torch.allclose(self.head(feats), _output_logits(self.model(x)), rtol=1e-4, atol=1e-5)
                except Exception:  # noqa: BLE001 - the children do not compose into the forward pass
                    ok = False
                if ok:
                    self._feature_route = route
        return self._feature_route or None

    def has_features(self) -> bool:
        """Whether the penultimate features can be had: with hooks for a linear head, and for a 1×1-convolution
        head when the logits are linear in its input's spatial mean (checked once on a probe batch); for
        TorchScript through an exported ``features()`` or the verified children route."""
        if isinstance(self.head, nn.Conv2d):
            return self._conv_head_pooled()
        if not isinstance(self.head, torch.jit.ScriptModule):
            return True
        return self._features_method() is not None or self._children_route() is not None

    def _conv_head_pooled(self) -> bool:
        if self._feature_route is None:
            probe = torch.rand(2, 3, *(self.preprocessing.size or self.probe_size), device=self.device)
            try:
                with torch.inference_mode():
                    logits, feats = self.logits_and_features(probe)
                    weight = self.head.weight.flatten(1)
                    bias = self.head.bias if self.head.bias is not None else 0.0
                    self._feature_route = bool(torch.allclose(feats @ weight.T + bias, logits, rtol=1e-4, atol=1e-5))
            except Exception:  # noqa: BLE001
                self._feature_route = False
        return bool(self._feature_route)

    def features_unavailable_reason(self) -> str:
        if isinstance(self.head, nn.Conv2d):
            return ("the 1x1-convolution head is not followed by global average pooling (the logits are not linear "
                    "in the mean of its input), so its penultimate features are not defined. Scores that need only "
                    "logits still work.")
        return ("this TorchScript model does not expose its penultimate features: TorchScript modules do not support "
                "hooks, it has no features() method, and running its children in order does not reproduce its "
                "logits. Export a method with @torch.jit.export def features(self, x) returning the input of the "
                "final linear layer, or load the model as python:module:callable. Scores that need only logits "
                "still work.")

    def features(self, images: Tensor) -> Tensor:
        """Final-layer input features ``(N, d)``."""
        return self.logits_and_features(images)[1]

    def predict(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Predicted class indices ``(N,)`` under ``torch.inference_mode``, in batches."""
        with torch.inference_mode():
            out = [self.logits(images[i:i + batch_size]).argmax(1).cpu() for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

    def describe(self) -> dict:
        """A JSON-serialisable summary: source, head, classes, preprocessing."""
        return {"source": self.source, "head": self.head_name, "num_classes": self.num_classes,
                "feature_dim": int(head_weight(self.head).shape[1]) if head_weight(self.head) is not None
                else None,
                "class_names": self.class_names, "preprocessing": self.preprocessing.to_dict(),
                "notes": list(self.notes)}


@dataclass(frozen=True)
class InputCheck:
    """How the inputs of a model's first batch-norm layer compare with the running statistics it kept in training.

    ``spread_ratio`` is the median over channels of the inputs' standard deviation over the running one, and
    ``mean_offset`` the median of ``|mean − running mean| / running std``. With the preprocessing the model was
    trained with, natural images give a spread ratio near 1 (EfficientNet-Lite0 on photographs: 0.86–0.89); a wrong
    ``--mean/--std`` moves it by about the ratio of the two stds (ImageNet's std on that model: 1.8–2.0), and a missing
    normalisation by far more. A data set far from the training data (all images darkened, say) moves it too.
    """

    layer: str
    channels: int
    images: int
    spread_ratio: float
    mean_offset: float

    #: The spread ratio beyond which (either way) :attr:`suspicious` is true.
    LIMIT: ClassVar[float] = 1.6

    @property
    def suspicious(self) -> bool:
        return not (1 / self.LIMIT <= self.spread_ratio <= self.LIMIT)

    @property
    def message(self) -> str:
        head = (f"the first batch-norm layer ({self.layer}) sees inputs with {self.spread_ratio:.2g}x the spread it "
                f"kept in training (mean off by {self.mean_offset:.2g} sd, {self.images} images)")
        if not self.suspicious:
            return head + ": the preprocessing looks right"
        return (head + ": check --mean/--std (mean=/std=) against the normalisation the model was trained with; "
                "a data set far from the training data does this too")

    def to_dict(self) -> dict:
        return {"layer": self.layer, "channels": self.channels, "images": self.images,
                "spread_ratio": self.spread_ratio, "mean_offset": self.mean_offset, "suspicious": self.suspicious}


class _SeenFirstNorm(Exception):
    """Raised by :func:`check_inputs`'s hook to stop the forward pass at the first batch-norm layer."""


def _batch_norms(classifier: "Classifier") -> list[tuple[str, nn.Module]]:
    """The model's 2-D batch-norm layers with running statistics (none for TorchScript, which takes no hooks)."""
    if isinstance(classifier.model, torch.jit.ScriptModule):
        return []
    return [(name, m) for name, m in classifier.model.named_modules()
            if isinstance(m, nn.BatchNorm2d) and m.running_var is not None]


def checks_inputs(classifier: "Classifier") -> bool:
    """Whether :func:`check_inputs` has anything to check this model against (no images needed)."""
    return bool(_batch_norms(classifier))


def check_inputs(classifier: "Classifier", images: Tensor) -> InputCheck | None:
    """Compare what the model's first batch-norm layer (the first to run) sees on ``images`` ``(N, 3, H, W)`` in
    [0, 1] with its running statistics (:class:`InputCheck`): a check of ``--mean/--std``, whose mistakes are silent
    otherwise. ``None`` when the model has no batch-norm layer with running statistics, or is TorchScript (which
    takes no hooks)."""
    if not isinstance(classifier, Classifier):
        raise TypeError(f"classifier must be a cfx.Classifier, got {type(classifier).__name__}")
    images = classifier._check_images(images)
    if len(images) == 0:
        raise ValueError("check_inputs needs at least one image")
    norms = _batch_norms(classifier)
    if not norms:
        return None
    seen: list[tuple[str, nn.Module, Tensor]] = []

    def hook(name: str, module: nn.Module):
        def record(_module: nn.Module, inputs: tuple) -> None:
            if not seen and isinstance(inputs[0], Tensor):
                seen.append((name, module, inputs[0].detach()))
                raise _SeenFirstNorm  # the rest of the forward pass is not needed
        return record

    handles = [m.register_forward_pre_hook(hook(name, m)) for name, m in norms]
    try:
        with torch.inference_mode():
            classifier.model(classifier.preprocessing(images))
    except _SeenFirstNorm:
        pass
    finally:
        for h in handles:
            h.remove()
    if not seen:
        return None
    name, module, x = seen[0]
    x = x.double()
    live = module.running_var.double() > 1e-6  # channels the model never uses keep a zero variance
    if not bool(live.any()):
        return None
    std = x.std((0, 2, 3))[live]
    running_std = module.running_var.double()[live].sqrt()
    offset = (x.mean((0, 2, 3))[live] - module.running_mean.double()[live]).abs() / running_std
    return InputCheck(layer=name, channels=int(live.sum()), images=len(images),
                      spread_ratio=float((std / running_std).median()), mean_offset=float(offset.median()))


def advise_on_inputs(classifier: "Classifier", images: Tensor, warn: bool = True) -> InputCheck | None:
    """:func:`check_inputs` as advice: a warning when the check is suspicious (with ``warn``), and ``None`` instead
    of an error when the model rejects ``images`` (the caller's own pass reports that)."""
    try:
        check = check_inputs(classifier, images)
    except Exception:
        return None
    if warn and check is not None and check.suspicious:
        warnings.warn(check.message, UserWarning, stacklevel=3)
    return check


#: Normalisations models are commonly trained with, as (mean, std) on pixels in [0, 1]: what
#: :func:`suggest_normalisation` tries.
COMMON_NORMALISATIONS: dict[str, tuple[tuple[float, ...] | None, tuple[float, ...] | None]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception (x - 0.5) / 0.5": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none (pixels in [0, 1])": (None, None),
    "clip": ((0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)),
}


def suggest_normalisation(classifier: "Classifier", images: Tensor) -> list[dict]:
    """:func:`check_inputs` under each of :data:`COMMON_NORMALISATIONS` (the classifier's own size and channels
    kept), best first (spread ratio closest to 1 on a log scale): ``[{"name", "mean", "std", "spread_ratio",
    "mean_offset", "suspicious"}]``. Empty when the model has nothing to check against."""
    out = []
    for name, (mean, std) in COMMON_NORMALISATIONS.items():
        pre = classifier.preprocessing
        trial = Preprocessing(size=pre.size, mean=mean, std=std, channels=pre.channels) if pre.channels == 3 else \
            Preprocessing(size=pre.size, mean=None if mean is None else mean[:1], std=None if std is None else std[:1],
                          channels=1)
        check = check_inputs(replace(classifier, preprocessing=trial), images)
        if check is None:
            return []
        out.append({"name": name, "mean": trial.mean, "std": trial.std, "spread_ratio": check.spread_ratio,
                    "mean_offset": check.mean_offset, "suspicious": check.suspicious})
    return sorted(out, key=lambda r: abs(math.log(max(r["spread_ratio"], 1e-12))))


# ---------------------------------------------------------------------------------------------- spec loading

#: The largest image side cfx takes (pixels): one float image of 8192 × 8192 already holds 805 MB.
MAX_IMAGE_SIDE = 8192


def parse_image_size(text: str | int | Sequence[int] | None) -> tuple[int, int] | None:
    """``"224"`` → (224, 224); ``"240x320"`` → (240, 320); ints and pairs are checked the same way."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = text.lower().replace("×", "x").split("x")
        try:
            values: tuple[int, ...] = tuple(int(p) for p in parts)
        except ValueError:
            raise ClassifierError(f"image size must look like 224 or 240x320, got {text!r}") from None
    else:
        try:
            values = (int(text),) if isinstance(text, int) else tuple(int(v) for v in text)
        except (TypeError, ValueError):
            raise ClassifierError(f"image size must be an int or an (H, W) pair, got {text!r}") from None
    if len(values) == 1:
        values = (values[0], values[0])
    if len(values) != 2 or min(values) < 1:
        raise ClassifierError(f"image size must look like 224 or 240x320 (positive sides), got {text!r}")
    if max(values) > MAX_IMAGE_SIDE:
        gigabytes = 3 * 4 * values[0] * values[1] / 1e9
        raise ClassifierError(f"image size {values[0]}x{values[1]} is too large: one image would take "
                              f"{gigabytes:.3g} GB as float32, and cfx takes sides up to {MAX_IMAGE_SIDE} px; give "
                              "the size the model was trained at (224 for most ImageNet models)")
    return values  # type: ignore[return-value]


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a file: one per line (text), a JSON list, or a JSON ``{index: name}`` object."""
    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"class-names file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ClassifierError(f"class-names file {str(path)!r} is not valid JSON: {exc}") from None
        if isinstance(data, dict):
            try:
                index = {int(k): str(v) for k, v in data.items()}
            except ValueError:
                raise ClassifierError(f"class-names file {str(path)!r}: the keys of a JSON object must be class "
                                      f"indices, got {sorted(data)[:5]}") from None
            missing = sorted(set(range(len(index))) - set(index))
            if missing:
                raise ClassifierError(f"class-names file {str(path)!r}: the indices must run 0 to {len(index) - 1} "
                                      f"without gaps; missing {missing[:5]}, and {sorted(set(index) - set(range(len(index))))[:5]} "
                                      "are beyond them")
            names = [index[i] for i in range(len(index))]
        elif isinstance(data, list):
            names = [str(v) for v in data]
        else:
            raise ClassifierError(f"class-names file {str(path)!r} must hold a JSON list or an {{index: name}} object")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    repeated = sorted(n for n, c in counts.items() if c > 1)
    if repeated:  # ImageNet's own list has two "crane"s and two "maillot"s: allowed, but said
        warnings.warn(f"class-names file {str(path)!r} names {repeated[:5]} more than once; reports show the same "
                      "name for those classes, and a label given by such a name is read as its first class",
                      UserWarning, stacklevel=2)
    return names


def _load_python_factory(target: str) -> Callable[[], object]:
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise ClassifierError(f"python spec must be python:module:callable or python:path/file.py:callable, "
                              f"got python:{target}")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ClassifierError(f"python file {module_name!r} does not exist")
        spec = importlib.util.spec_from_file_location(f"cfx_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[spec.name] = module  # type: ignore[union-attr]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ClassifierError(f"cannot import module {module_name!r} ({exc}); is it installed or on "
                                  "PYTHONPATH?") from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise ClassifierError(f"module {module_name!r} has no attribute {attr!r}")
    return factory


def _hf_preprocessing(directory: Path) -> Preprocessing:
    config_path = directory / "preprocessor_config.json"
    if not config_path.is_file():
        return Preprocessing()
    cfg = json.loads(config_path.read_text())
    size = cfg.get("crop_size") if cfg.get("do_center_crop") else cfg.get("size")
    hw: tuple[int, int] | None = None
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            hw = (int(size["height"]), int(size["width"]))
        elif "shortest_edge" in size:
            hw = (int(size["shortest_edge"]),) * 2
    elif isinstance(size, int):
        hw = (size, size)
    normalize = cfg.get("do_normalize", True)
    mean = tuple(cfg["image_mean"]) if normalize and cfg.get("image_mean") is not None else None
    std = tuple(cfg["image_std"]) if normalize and cfg.get("image_std") is not None else None
    return Preprocessing(size=hw, mean=mean, std=std)


@dataclass(frozen=True)
class ModelOptions:
    """What the user said about a model besides its spec: preprocessing, class names, head, device."""

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: list[str] | None = None
    head: str | None = None
    device: str | torch.device = "cpu"

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(size=self.size, mean=self.mean, std=self.std)


#: Model spec kinds: ``KIND:TARGET`` → ``loader(target, options) -> Classifier``. Plugins add theirs (the demo adds
#: ``demo:``); see :mod:`cfx.core.registry`.
MODEL_KINDS: Registry[Callable[[str, ModelOptions], "Classifier"]] = Registry("model spec kind")


def _load_torchscript(target: str, o: ModelOptions) -> Classifier:
    """``torchscript:PATH``: a ``torch.jit.save`` file."""
    path = Path(target)
    if path.is_dir():
        raise ClassifierError(f"{target!r} is a folder; torchscript: takes the file torch.jit.save wrote (e.g. "
                              "model.pt); a Hugging Face folder is hf:DIR")
    if not path.is_file():
        raise ClassifierError(f"TorchScript file {target!r} does not exist")
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ClassifierError(f"{target!r} is not a TorchScript file ({exc}); save with torch.jit.save") from exc
    return Classifier.wrap(model, preprocessing=o.preprocessing, head=o.head, class_names=o.class_names,
                           device=o.device, source=f"torchscript:{target}")


def _load_hf(target: str, o: ModelOptions) -> Classifier:
    """``hf:LOCAL_DIR``: a Hugging Face ``AutoModelForImageClassification`` folder (its preprocessor config and
    ``id2label`` are used)."""
    directory = Path(target)
    if not (directory / "config.json").is_file():
        raise ClassifierError(f"{target!r} is not a Hugging Face model folder (no config.json); save one with "
                              "model.save_pretrained(DIR). cfx never downloads models")
    from transformers import AutoModelForImageClassification  # lazy: heavy import

    model = AutoModelForImageClassification.from_pretrained(str(directory), local_files_only=True)
    pre = _hf_preprocessing(directory)
    if o.size is not None or o.mean or o.std:  # explicit options win over the folder's config
        pre = Preprocessing(size=o.size or pre.size, mean=o.mean or pre.mean, std=o.std or pre.std)
    id2label = getattr(model.config, "id2label", None) or {}
    hf_names = [str(id2label[i]) for i in sorted(id2label)] if id2label else None
    if hf_names and all(n == f"LABEL_{i}" for i, n in enumerate(hf_names)):
        hf_names = None  # transformers' placeholder names carry no information
    return Classifier.wrap(model, preprocessing=pre, head=o.head, class_names=o.class_names or hf_names,
                           device=o.device, source=f"hf:{target}")


def _load_python(target: str, o: ModelOptions) -> Classifier:
    """``python:module:callable`` or ``python:path/to/file.py:callable``: a factory returning an ``nn.Module`` (or
    a ready :class:`Classifier`)."""
    factory = _load_python_factory(target)
    model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    if isinstance(model, Classifier):
        return model.to(o.device)
    if not isinstance(model, nn.Module):
        raise ClassifierError(f"python:{target} returned {type(model).__name__}; it must return a "
                              "torch.nn.Module or a cfx.Classifier")
    return Classifier.wrap(model, preprocessing=o.preprocessing, head=o.head, class_names=o.class_names,
                           device=o.device, source=f"python:{target}")


def _load_torchvision(target: str, o: ModelOptions) -> Classifier:
    """``torchvision:NAME[:WEIGHTS]``: only when a working torchvision is installed (cfx never installs it)."""
    try:
        import torchvision  # noqa: F401
        from torchvision.models import get_model, get_model_weights
    except Exception as exc:  # ImportError, or the operator-registration error of a mismatched build
        raise ClassifierError(f"torchvision specs need a working torchvision ({type(exc).__name__}: {exc}). "
                              "Install the torchvision that matches your torch, or export the model with "
                              "torch.jit.save and use torchscript:PATH") from exc
    name, _, weights_name = target.partition(":")
    weights = get_model_weights(name)[weights_name] if weights_name and weights_name != "DEFAULT" else (
        get_model_weights(name).DEFAULT if weights_name == "DEFAULT" else None)
    model = get_model(name, weights=weights)
    pre = o.preprocessing
    tv_names = None
    if weights is not None:
        tf = weights.transforms()
        crop = list(getattr(tf, "crop_size", None) or [])
        crop_hw = (int(crop[0]), int(crop[-1])) if crop else None
        pre = Preprocessing(size=o.size or crop_hw,
                            mean=tuple(getattr(tf, "mean", ())) or None, std=tuple(getattr(tf, "std", ())) or None)
        tv_names = list(weights.meta.get("categories") or []) or None
    return Classifier.wrap(model, preprocessing=pre, head=o.head, class_names=o.class_names or tv_names,
                           device=o.device, source=f"torchvision:{target}", example_size=(224, 224))


def _load_timm(target: str, o: ModelOptions) -> Classifier:
    """``timm:NAME[:WEIGHTS]``: only when timm is installed."""
    try:
        import timm
    except Exception as exc:
        raise ClassifierError(f"timm specs need timm installed ({type(exc).__name__}: {exc}); "
                              "pip install timm (it needs torchvision)") from exc
    name, _, weights_name = target.partition(":")
    model = timm.create_model(f"{name}.{weights_name}" if weights_name else name, pretrained=bool(weights_name))
    cfg = timm.data.resolve_data_config({}, model=model)
    in_size = cfg.get("input_size", (3, 224, 224))
    pre = Preprocessing(size=o.size or (int(in_size[1]), int(in_size[2])), mean=tuple(cfg.get("mean", ())) or None,
                        std=tuple(cfg.get("std", ())) or None)
    return Classifier.wrap(model, preprocessing=pre, head=o.head, class_names=o.class_names, device=o.device,
                           source=f"timm:{target}")


for _kind, _loader in (("torchscript", _load_torchscript), ("hf", _load_hf), ("python", _load_python),
                       ("torchvision", _load_torchvision), ("timm", _load_timm)):
    MODEL_KINDS.register(_kind, _loader)


def check_device(device: str | torch.device) -> None:
    """Raise :class:`ClassifierError` unless ``device`` names a device this torch can use, saying what to use."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ClassifierError(f"{device!r} is not a device; use cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ClassifierError("no CUDA GPU is available to this torch; use device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ClassifierError("no Apple GPU (MPS) is available to this torch; use device cpu")


def load_classifier(spec: str | nn.Module | Classifier, *, image_size: str | tuple[int, int] | None = None,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    classes: str | Path | Sequence[str] | None = None, head: str | None = None,
                    device: str | torch.device = "cpu") -> Classifier:
    """Load a classifier from a spec ``KIND:TARGET`` and adapt it.

    Kinds (:data:`MODEL_KINDS`; plugins add more):
      - ``torchscript:PATH``: a ``torch.jit.save`` file;
      - ``hf:LOCAL_DIR``: a Hugging Face ``AutoModelForImageClassification`` folder (uses its preprocessor config
        and ``id2label``);
      - ``python:module:callable`` or ``python:path/to/file.py:callable``: a factory returning an ``nn.Module``
        (or a ready :class:`Classifier`);
      - ``torchvision:NAME[:WEIGHTS]`` and ``timm:NAME[:WEIGHTS]``: only when those packages are importable;
      - ``demo:shapes``, ``demo:shapes-biased``, ``demo:digits``: the embedded demo classifiers (trained on first
        use), registered by the demo plugin.

    ``image_size``/``mean``/``std`` set the preprocessing of specs that carry none (TorchScript, python factories);
    default: no resizing and no normalisation (pixels in [0, 1]). ``classes`` is a list of names or a file
    (one per line, or JSON). The model is loaded on CPU and moved to ``device``.
    """
    size = parse_image_size(image_size)
    if (mean is None) != (std is None):
        raise ClassifierError("give mean and std together (the normalisation is (x - mean) / std), or neither")
    check_device(device)
    names = read_class_names(classes) if isinstance(classes, (str, Path)) else (list(classes) if classes else None)
    options = ModelOptions(size=size, mean=tuple(mean) if mean else None, std=tuple(std) if std else None,
                           class_names=names, head=head, device=device)
    if isinstance(spec, Classifier):
        return spec.to(device)
    if isinstance(spec, nn.Module):
        return Classifier.wrap(spec, preprocessing=options.preprocessing, head=head, class_names=names,
                               device=device)
    if not isinstance(spec, str) or ":" not in spec:
        raise ClassifierError(f"model spec must look like KIND:TARGET (one of {', '.join(MODEL_KINDS)}: e.g. "
                              f"torchscript:PATH, hf:DIR, python:module:callable), got {spec!r}")
    kind, target = spec.split(":", 1)
    loader = MODEL_KINDS.find(kind.lower())
    if loader is None:
        raise ClassifierError(f"unknown model spec kind {kind.lower()!r}; use one of "
                              f"{', '.join(k + ':' for k in MODEL_KINDS)}")
    classifier = loader(target, options)
    classifier.origin = (spec, {"image_size": image_size, "mean": mean, "std": std,
                                "classes": list(classes) if isinstance(classes, (list, tuple)) else classes,
                                "head": head, "device": str(device)})
    return classifier


def model_fingerprint(classifier: Classifier) -> str:
    """SHA-256 over the classifier's parameter and buffer names, shapes and values (first 16 hex digits).

    Every tensor counts, 0-d buffers included (BatchNorm's ``num_batches_tracked``)."""
    h = hashlib.sha256()
    h.update(f"{classifier.num_classes}|{classifier.head_name}".encode())
    for name, tensor in classifier.model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
