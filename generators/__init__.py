"""cfx.generators: counterfactual generators (stage 2 of the pipeline).

For a low-trust image, make similar images the model is confident about (``../shared/methods/counterfactuals.md``
§A2): :class:`ImageGradientDescent` (IGD), :class:`FeatureGradientDescent` (FGD),
:class:`AutoencoderReconstruction` (Reco), :class:`LatentGradientDescent` (LGD) and
:class:`LatentNearestNeighbours` (LNN, on a FAISS :class:`LatentIndex`). All share one verb,
``generate(images) -> Counterfactuals``, and raise a differentiable target score (:func:`competency_target`,
PaRCE, by default). :func:`counterfactual_metrics` measures them (§A3).

Gradual property edits (§B): editors with one verb, ``edit(images, strengths)`` (parametric ones and the demo
world's :class:`AttributeEditor`), :func:`property_curve` (EPGM, shuffle-test p-value, prediction flips) and
:func:`restoring_edits` (which edit raises competency the most).

Installed as ``cfx.generators`` (``pyproject.toml`` maps this folder into the ``cfx`` namespace).
"""

from .base import Counterfactuals, TargetScore, competency_target, gradtrust_target, ssim, ssim_distance
from .gradient import FeatureGradientDescent, ImageGradientDescent, LatentGradientDescent
from .latent import AutoencoderReconstruction, LatentIndex, LatentNearestNeighbours
from .diffusion import (DEFAULT_INSTRUCTIONS, DDPMEditor, InstructPix2PixEditor, SDEditCounterfactual,
                        train_ddpm)
from .editors import (AttributeEditor, Blur, Brightness, Contrast, Denoise, Editor, HueShift, Noise, Occlusion,
                      Pixelation, Saturation, Sharpen, parametric_editors, restoring_editors)
from .epgm import PropertyCurve, RestoringEdit, epgm, property_curve, restoring_edits, shuffle_test
from .metrics import counterfactual_metrics, kernel_inception_distance

__all__ = [
    "DDPMEditor", "DEFAULT_INSTRUCTIONS", "InstructPix2PixEditor", "SDEditCounterfactual", "train_ddpm",
    "AttributeEditor", "Blur", "Brightness", "Contrast", "Denoise", "Editor", "HueShift", "Noise", "Occlusion",
    "Pixelation", "PropertyCurve", "RestoringEdit", "Saturation", "Sharpen", "epgm", "parametric_editors",
    "property_curve", "restoring_editors", "restoring_edits", "shuffle_test",
    "AutoencoderReconstruction", "Counterfactuals", "FeatureGradientDescent", "ImageGradientDescent",
    "LatentGradientDescent", "LatentIndex", "LatentNearestNeighbours", "TargetScore", "competency_target",
    "counterfactual_metrics", "gradtrust_target", "kernel_inception_distance", "ssim", "ssim_distance",
]
