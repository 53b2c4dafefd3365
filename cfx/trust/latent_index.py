"""The latent index of a fitted folder: FAISS over the autoencoder latents of confident reference images.

``cfx fit`` builds it from the calibration images whose PaRCE competency clears the threshold; LNN counterfactuals
(:class:`cfx.generators.LatentNearestNeighbours`) and the audit's neighbour check search it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["LatentIndex", "Metric"]

Metric = Literal["l1", "l2", "cos"]


class LatentIndex:
    """A FAISS index over autoencoder latents of high-competency reference images, with their ids, labels, images
    and the latents themselves (LNN decodes the neighbour's latent).

    ``metric``: ``l1`` (the paper's default), ``l2`` or ``cos``. ``kind``: ``flat`` (exact), ``ivf`` (inverted
    lists, ``nprobe`` of about 4·√M lists searched: approximate, fast at 10⁵ and more), ``hnsw`` (graph,
    approximate), or ``auto`` (default: exact up to ``exact_limit`` latents, ``ivf`` beyond).
    """

    def __init__(self, metric: Metric = "l1", kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto",
                 nprobe: int = 16, hnsw_m: int = 32, exact_limit: int = 20_000):
        if metric not in ("l1", "l2", "cos"):
            raise ValueError(f"metric must be l1, l2 or cos, got {metric!r}")
        if kind not in ("auto", "flat", "ivf", "hnsw"):
            raise ValueError(f"kind must be auto, flat, ivf or hnsw, got {kind!r}")
        self.metric, self.kind, self.nprobe, self.hnsw_m, self.exact_limit = metric, kind, nprobe, hnsw_m, exact_limit

    def _prepare(self, z: Tensor) -> np.ndarray:
        x = np.ascontiguousarray(z.detach().float().cpu().numpy())
        if self.metric == "cos":
            import faiss

            faiss.normalize_L2(x)
        return x

    def build(self, latents: Tensor, ids: list[str], labels: Tensor, images: Tensor) -> "LatentIndex":
        """Index ``latents (M, d)`` with the matching ids, labels and images (uint8 or float)."""
        import faiss

        if len(latents) == 0:
            raise ValueError("no latents to index: no reference image reached the competency threshold")
        if not (len(latents) == len(ids) == len(labels) == len(images)):
            raise ValueError("latents, ids, labels and images must have the same length")
        n, d = latents.shape
        metric = {"l1": faiss.METRIC_L1, "l2": faiss.METRIC_L2, "cos": faiss.METRIC_INNER_PRODUCT}[self.metric]
        kind = self.kind if self.kind != "auto" else ("flat" if n <= self.exact_limit else "ivf")
        data = self._prepare(latents)
        if kind == "flat":
            index = faiss.IndexFlat(d, metric)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, self.hnsw_m, metric)
        else:
            nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlat(d, metric), d, nlist, metric)
            rng = np.random.default_rng(0)
            index.train(data[rng.permutation(n)[:max(nlist * 39, min(n, 50_000))]])
            index.nprobe = min(self.nprobe, nlist)
        index.add(data)
        self.index_, self.built_kind_ = index, kind
        self.latents_ = latents.detach().float().cpu()
        self.ids_ = list(ids)
        self.labels_ = torch.as_tensor(labels).long().cpu()
        self.images_ = (images * 255).round().to(torch.uint8).cpu() if images.is_floating_point() else images.cpu()
        return self

    def __len__(self) -> int:
        return self.index_.ntotal if hasattr(self, "index_") else 0

    def search(self, latents: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
        """Nearest indexed entries: ``(distances, positions)``, each ``(N, k)``; cosine returns similarities."""
        if not hasattr(self, "index_"):
            raise RuntimeError("the latent index is empty: build() it or load it from a fitted folder")
        dist, pos = self.index_.search(self._prepare(latents), k)
        return torch.from_numpy(dist), torch.from_numpy(pos).long()

    def save(self, folder: str | Path) -> list[str]:
        """Write ``latent_index.faiss`` and ``latent_index.pt`` into ``folder``; returns the file names."""
        import faiss

        folder = Path(folder)
        faiss.write_index(self.index_, str(folder / "latent_index.faiss"))
        torch.save({"ids": self.ids_, "labels": self.labels_, "images": self.images_, "latents": self.latents_,
                    "metric": self.metric, "kind": self.kind, "built_kind": self.built_kind_, "nprobe": self.nprobe,
                    "hnsw_m": self.hnsw_m, "exact_limit": self.exact_limit}, folder / "latent_index.pt")
        return ["latent_index.faiss", "latent_index.pt"]

    @classmethod
    def load(cls, folder: str | Path) -> "LatentIndex":
        import faiss

        folder = Path(folder)
        if not (folder / "latent_index.faiss").is_file():
            raise FileNotFoundError(f"{str(folder)!r} has no latent index; run cfx fit again (it builds one)")
        meta = torch.load(folder / "latent_index.pt", map_location="cpu", weights_only=True)
        out = cls(meta["metric"], meta["kind"], meta["nprobe"], meta["hnsw_m"], meta["exact_limit"])
        out.index_ = faiss.read_index(str(folder / "latent_index.faiss"))
        out.built_kind_ = meta["built_kind"]
        out.ids_, out.labels_, out.images_, out.latents_ = meta["ids"], meta["labels"], meta["images"], meta["latents"]
        return out
