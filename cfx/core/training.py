"""The one small training loop cfx uses for its own networks (demo classifier, autoencoders)."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .images import as_float_images

__all__ = ["train_model"]


def train_model(model: nn.Module, inputs: Tensor, targets: Tensor | None, epochs: int, batch_size: int, lr: float,
                seed: int, desc: str, progress: bool, prepare: Callable[[Tensor], Tensor] | None = None
                ) -> list[float]:
    """Adam training: cross-entropy to ``targets`` (a classifier), or MSE to the input when ``targets`` is None
    (an autoencoder). Inputs may be uint8 (converted per batch); ``prepare`` maps each input batch first (e.g. a
    resize). The classifier gets a one-cycle schedule; the autoencoder a constant rate, as in the PaRCE paper.
    Returns the mean loss per epoch. Deterministic given ``seed``.
    """
    from tqdm.auto import tqdm

    if len(inputs) == 0:
        raise ValueError("no training images")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(inputs) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15) \
        if targets is not None else None
    device = next(model.parameters()).device
    losses = []
    model.train()
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False, unit="epoch")
    for _ in bar:
        perm = torch.randperm(len(inputs), generator=g)
        total = 0.0
        for i in range(0, len(inputs), batch_size):
            idx = perm[i:i + batch_size]
            x = as_float_images(inputs[idx]).to(device)
            if prepare is not None:
                x = prepare(x)
            out = model(x)
            loss = F.cross_entropy(out, targets[idx].to(device)) if targets is not None else F.mse_loss(out, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if schedule is not None:
                schedule.step()
            total += loss.item() * len(idx)
        losses.append(total / len(inputs))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    return losses
