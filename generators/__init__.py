"""cfx.generators: counterfactuals and property edits (stage 2 of the pipeline).

For a low-trust image, make similar images the model is confident about: :class:`ImageGradientDescent` (IGD),
:class:`FeatureGradientDescent` (FGD), :class:`AutoencoderReconstruction` (Reco), :class:`LatentGradientDescent`
(LGD), :class:`LatentNearestNeighbours` (LNN, on the fitted folder's FAISS :class:`LatentIndex`) and, without a fitted
folder, :class:`NearestTrustedImage` (NN, the nearest trusted image of the run in feature space). All share one
verb, ``generate(images) -> Counterfactuals``, and raise a differentiable target score (:func:`competency_target`,
PaRCE, by default;
:class:`RunRankTarget` without a fitted folder). :func:`counterfactual_metrics` measures them.

Gradual property edits: editors with one verb, ``edit(images, strengths)`` (the parametric ones registered in
:data:`EDITORS`, diffusion editors, and :class:`AttributeEditor` for worlds registered in :data:`WORLDS`),
:func:`property_curve` (EPGM, shuffle-test p-value, prediction flips) and :func:`restoring_edits` (which edit
raises competency the most); :func:`sweep_edits` computes both from shared forward passes, exhaustively or screened. The methods are described in ``docs/methods.md``.

Installed as ``cfx.generators`` (``pyproject.toml`` maps this folder into the ``cfx`` namespace).
"""

from cfx.trust.latent_index import LatentIndex

from .base import (
                   Counterfactuals,
                   RunRankTarget,
                   TargetScore,
                   TrustTarget,
                   competency_target,
                   gradtrust_target,
                   ssim,
                   ssim_distance,
)
from .diffusion import (
                   DEFAULT_INSTRUCTIONS,
                   DDPMEditor,
                   InstructPix2PixEditor,
                   SDEditCounterfactual,
                   train_ddpm,
)
from .editors import (
                   EDITORS,
                   WORLDS,
                   AttributeEditor,
                   Blur,
                   Brightness,
                   Contrast,
                   Denoise,
                   Editor,
                   HueShift,
                   Noise,
                   Occlusion,
                   Pixelation,
                   RenderingWorld,
                   Saturation,
                   Sharpen,
                   parametric_editors,
                   restoring_editors,
                   strength_grid,
)
from .epgm import (
                   PropertyCurve,
                   RestoringEdit,
                   epgm,
                   property_curve,
                   restoring_edits,
                   shuffle_test,
)
from .gradient import (
                   FeatureGradientDescent,
                   ImageGradientDescent,
                   LatentGradientDescent,
)
from .latent import AutoencoderReconstruction, LatentNearestNeighbours
from .metrics import counterfactual_metrics, kernel_inception_distance
from .neighbours import NearestTrustedImage
from .ranges import MONOTONE_PROPERTIES, PROPERTY_STATISTICS, EditRanges
from .sweeps import SEARCHES, EditSweeps, sweep_edits

__all__ = [
    "DDPMEditor", "DEFAULT_INSTRUCTIONS", "InstructPix2PixEditor", "SDEditCounterfactual", "train_ddpm",
    "EditRanges", "MONOTONE_PROPERTIES", "PROPERTY_STATISTICS", "AttributeEditor", "Blur", "Brightness", "Contrast", "Denoise", "EDITORS", "Editor", "HueShift", "Noise",
    "Occlusion", "Pixelation", "PropertyCurve", "RenderingWorld", "RestoringEdit", "Saturation", "Sharpen", "WORLDS",
    "epgm", "parametric_editors", "property_curve", "restoring_editors", "restoring_edits", "shuffle_test",
    "strength_grid", "SEARCHES", "EditSweeps", "sweep_edits",
    "AutoencoderReconstruction", "Counterfactuals", "FeatureGradientDescent", "ImageGradientDescent",
    "LatentGradientDescent", "LatentIndex", "LatentNearestNeighbours", "NearestTrustedImage", "RunRankTarget",
    "TargetScore", "TrustTarget", "competency_target",
    "counterfactual_metrics", "gradtrust_target", "kernel_inception_distance", "ssim", "ssim_distance",
]
