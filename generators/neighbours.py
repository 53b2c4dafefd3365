"""The nearest trusted image (NN): a counterfactual that needs no autoencoder.

The most similar image of a trusted reference set (without a fitted folder: the run's most trusted images), found
through FAISS in the classifier's feature space (or in a downsampled-pixel space when the model does not expose its
features). It is a real image the model trusts, not an edit of the original: the report shows it beside the
original, and the evidence compares the two.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import Tensor

from cfx.core.images import resize
from cfx.trust.latent_index import LatentIndex

from .base import Counterfactuals, known_scores
from .gradient import check_images

__all__ = ["NearestTrustedImage"]


class NearestTrustedImage:
    """NN: the nearest image of ``index`` (built over ``embed`` of trusted images, with the images themselves).

    ``embed(images) -> (N, d)`` is the space the index was built in. ``extra`` holds ``neighbour_images``,
    ``neighbour_ids``, ``neighbour_labels`` (the class the model predicts for the neighbour) and
    ``neighbour_distance``, as for LNN.
    """

    name = "nn"

    def __init__(self, target: Callable[[Tensor], Tensor], embed: Callable[[Tensor], Tensor], index: LatentIndex,
                 threshold: float = 0.5, internal_batch_size: int = 64):
        if index is None or len(index) == 0:
            raise ValueError("NN needs a built index of trusted images (cfx.evidence.RunReference builds one)")
        self.target, self.embed, self.index = target, embed, index
        self.threshold, self.internal_batch_size = threshold, internal_batch_size

    def generate(self, images: Tensor, score_before: Tensor | None = None) -> Counterfactuals:
        """The nearest trusted image of each of ``images``. ``score_before``: the target scores of ``images`` when
        already known (saves a forward pass)."""
        images = check_images(images)
        known = known_scores(score_before, len(images))
        t0 = time.perf_counter()
        b = self.internal_batch_size
        with torch.inference_mode():
            z = torch.cat([self.embed(images[i:i + b]).float().cpu() for i in range(0, len(images), b)])
        dist, pos = self.index.search(z, 1)
        pos = pos[:, 0]
        out = resize(self.index.images_[pos].float() / 255, tuple(images.shape[-2:]))
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            before = known if known is not None else torch.cat(
                [self.target(images[i:i + b]).detach().float().cpu() for i in range(0, len(images), b)])
            after = torch.cat([self.target(out[i:i + b].to(images.device)).detach().float().cpu()
                               for i in range(0, len(out), b)])
        extra = {"neighbour_images": out, "neighbour_ids": [self.index.ids_[j] for j in pos.tolist()],
                 "neighbour_labels": self.index.labels_[pos], "neighbour_distance": dist[:, 0]}
        return Counterfactuals(self.name, out, before, after, after >= self.threshold,
                               torch.zeros(len(out), dtype=torch.long), seconds, self.threshold, extra)
