"""Does GradTrust-top-5 flag corrupted photographs at twice the clean rate on crop seeds other than the one
`bench/unlabelled_photos.py` uses? The same folder recipe (200 clean 224-px crops of 16 of scikit-image's photographs
and one corrupted copy of each: darkened ×0.35, washed out to 30 % contrast, Gaussian noise σ 0.12, blur radius 3),
scored in memory with the logit scores of `cfx explain` without a fitted folder, for several crop seeds.

Prints, per crop seed and score, the corrupted / clean flag rate when the 20 % least trusted of the run are flagged
(the run's own quantile, as `--flag-share 20` sets it), the flag rate per cause, and the mean over seeds.

    python bench/unlabelled_flag_rates.py [--seeds 7 8 9 10 11 12] [--clean 200] [--share 20] [--colour-only]
    python bench/unlabelled_flag_rates.py --temperatures 0.5 0.75 1.5 2 3   # GradTrust-top-5 of logits / T too
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from unlabelled_photos import CAUSES, crops, folder_items, photographs  # noqa: E402

from factories import efficientnet_lite0_classifier  # noqa: E402

import cfx  # noqa: E402

#: The colour photographs among them (the rest are grey photographs, textures and a silhouette).
COLOUR = ("astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field", "immunohistochemistry", "retina",
          "motorcycle_left", "motorcycle_right")
SCORES = ("gradtrust_topk", "gradtrust", "msp", "energy", "neg_entropy", "margin")


def folder(photos, n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """The images and causes of `unlabelled_photos.write_folder`, in memory."""
    items = list(folder_items(crops(photos, n, seed), corrupt=True, seed=seed))
    images = [torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1) for *_, img in items]
    return torch.stack(images), [cause for _, cause, _, _ in items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9, 10, 11, 12])
    parser.add_argument("--clean", type=int, default=200)
    parser.add_argument("--share", type=float, default=20)
    parser.add_argument("--colour-only", action="store_true",
                        help="only the colour photographs (the issue's wording), not the grey ones and textures")
    parser.add_argument("--temperatures", type=float, nargs="*", default=[],
                        help="also GradTrust-top-5 of the logits divided by each temperature T (T = 1 is the default)")
    args = parser.parse_args()
    torch.manual_seed(0)
    from cfx.trust.functional import gradtrust

    tempered = {f"gradtrust_topk T={t:g}": t for t in args.temperatures}
    model = efficientnet_lite0_classifier()
    photos = photographs()  # the same 18 as the folder benchmark (its held-out pair included)
    if args.colour_only:
        photos = {k: v for k, v in photos.items() if k in COLOUR}
    names = (*SCORES, *tempered)
    ratios: dict[str, list[float]] = {s: [] for s in names}
    print(f"{len(photos)} photographs; {args.clean} clean crops + one corrupted copy each; the {args.share:g} % least "
          "trusted flagged\n")
    print("| crop seed | score | corrupted / clean | clean | " + " | ".join(CAUSES) + " |")
    print("|---|---|---|---|" + "---|" * len(CAUSES))
    start = time.perf_counter()
    for seed in args.seeds:
        x, causes = folder(photos, args.clean, seed)
        scores = {s: [] for s in names}
        for i in range(0, len(x), 32):
            batch = cfx.score_batch(model, x[i:i + 32], methods=list(SCORES))
            for s in SCORES:
                scores[s].append(torch.as_tensor(batch.scores[s]))
            for s, t in tempered.items():
                scores[s].append(gradtrust(batch.logits / t, labels="topk", k=5))
        causes_arr = np.array(causes)
        for s in names:
            v = torch.cat(scores[s]).numpy()
            flagged = v <= np.quantile(v, args.share / 100)
            clean = flagged[causes_arr == "clean"].mean()
            corrupted = flagged[causes_arr != "clean"].mean()
            ratio = corrupted / max(clean, 1e-9)
            ratios[s].append(ratio)
            per = " | ".join(f"{flagged[causes_arr == c].mean():.2f}" for c in CAUSES)
            print(f"| {seed} | {s} | {ratio:.2f} | {clean:.3f} | {per} |")
    print(f"\n| score | mean ratio | min | max | seeds ≥ 2 |\n|---|---|---|---|---|")
    for s in names:
        r = np.array(ratios[s])
        print(f"| {s} | {r.mean():.2f} | {r.min():.2f} | {r.max():.2f} | {(r >= 2).sum()} of {len(r)} |")
    print(f"\nruntime {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
