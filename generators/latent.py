"""Autoencoder-based counterfactuals: reconstruction (Reco) and latent nearest neighbours (LNN) on a FAISS
:class:`~cfx.trust.latent_index.LatentIndex` of confident reference images (built by ``cfx fit``)."""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import Tensor

from cfx.trust.latent_index import LatentIndex

from .base import Counterfactuals, from_autoencoder_size, known_scores, to_autoencoder_size
from .gradient import check_images

__all__ = ["AutoencoderReconstruction", "LatentIndex", "LatentNearestNeighbours"]

def _score(target: Callable[[Tensor], Tensor], images: Tensor, batch: int) -> Tensor:
    with torch.no_grad():
        return torch.cat([target(images[i:i + batch]).detach().float().cpu() for i in range(0, len(images), batch)])


class AutoencoderReconstruction:
    """Reco: the counterfactual is the autoencoder's reconstruction ``D(E(x))``; no optimisation."""

    name = "reco"

    def __init__(self, target: Callable[[Tensor], Tensor], autoencoder, threshold: float = 0.9,
                 internal_batch_size: int = 256):
        self.target, self.autoencoder, self.threshold = target, autoencoder.eval(), threshold
        self.internal_batch_size = internal_batch_size

    def generate(self, images: Tensor, score_before: Tensor | None = None) -> Counterfactuals:
        """Counterfactuals at the images' own resolution (see :func:`from_autoencoder_size`). ``score_before``: the
        target scores of ``images`` when already known (saves a forward pass)."""
        images = check_images(images)
        known = known_scores(score_before, len(images))
        t0 = time.perf_counter()
        b = self.internal_batch_size
        with torch.no_grad():
            out = []
            for i in range(0, len(images), b):
                small = to_autoencoder_size(images[i:i + b], self.autoencoder)
                out.append(from_autoencoder_size(self.autoencoder(small), images[i:i + b], small).cpu())
            out = torch.cat(out)
        seconds = time.perf_counter() - t0
        before = known if known is not None else _score(self.target, images, self.internal_batch_size)
        after = _score(self.target, out.to(images.device), self.internal_batch_size)
        return Counterfactuals(self.name, out, before, after, after >= self.threshold,
                               torch.zeros(len(out), dtype=torch.long), seconds, self.threshold)


class LatentNearestNeighbours:
    """LNN: the decoded latent of the nearest high-competency reference image, ``D(Z_j)``.

    ``extra`` also holds the neighbour itself (``neighbour_images``, ``neighbour_ids``, ``neighbour_labels``,
    ``neighbour_distance``): the most similar example the model is confident about, for reports.
    """

    name = "lnn"

    def __init__(self, target: Callable[[Tensor], Tensor], autoencoder, index: LatentIndex, threshold: float = 0.9,
                 internal_batch_size: int = 256):
        if index is None or len(index) == 0:
            raise ValueError("LNN needs a built latent index (cfx fit builds one into the fitted folder)")
        self.target, self.autoencoder, self.index = target, autoencoder.eval(), index
        self.threshold, self.internal_batch_size = threshold, internal_batch_size

    def generate(self, images: Tensor, score_before: Tensor | None = None) -> Counterfactuals:
        """Counterfactuals at the images' own resolution: at another size than the autoencoder's, the change from
        the image's reconstruction to the neighbour's is carried onto the original (:func:`from_autoencoder_size`).
        ``score_before``: the target scores of ``images`` when already known (saves a forward pass)."""
        images = check_images(images)
        known = known_scores(score_before, len(images))
        t0 = time.perf_counter()
        b = self.internal_batch_size
        with torch.no_grad():
            small = to_autoencoder_size(images, self.autoencoder)
            z = torch.cat([self.autoencoder.encode(small[i:i + b]).cpu() for i in range(0, len(images), b)])
            dist, pos = self.index.search(z, 1)
            pos = pos[:, 0]
            stored = self.index.latents_[pos]
            out = torch.cat([from_autoencoder_size(self.autoencoder.decode(stored[i:i + b].to(images.device)),
                                                   images[i:i + b], small[i:i + b]).cpu()
                             for i in range(0, len(stored), b)])
        seconds = time.perf_counter() - t0
        before = known if known is not None else _score(self.target, images, b)
        after = _score(self.target, out.to(images.device), b)
        extra = {"neighbour_images": self.index.images_[pos].float() / 255,
                 "neighbour_ids": [self.index.ids_[j] for j in pos.tolist()],
                 "neighbour_labels": self.index.labels_[pos], "neighbour_distance": dist[:, 0]}
        return Counterfactuals(self.name, out, before, after, after >= self.threshold,
                               torch.zeros(len(out), dtype=torch.long), seconds, self.threshold, extra)
