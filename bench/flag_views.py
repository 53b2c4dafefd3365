"""Would GradTrust-top-5 of several views of each image (the image, its mirror, a centre zoom) flag better?

Two measurements, side by side for each variant:

* the corrupted / clean flag rate with the 20 % least trusted flagged, on the folder recipe of
  ``bench/unlabelled_flag_rates.py`` (EfficientNet-Lite0; 200 clean 224-px crops and one corrupted copy each), per
  crop seed (``--photos all`` or ``colour``);
* with ``--small``, the misprediction AUROC on the clean test splits of the small models (demo shapes, demo digits
  and the colourised digits of ``bench/explanations.py``, cached under ``--digits-cache``).

Variants: GradTrust-top-5 of the image alone (cfx's default), of the mean logits over the image and its mirror,
over the image, its mirror and an 80 % centre zoom, over the image and the zoom; the zoom alone; MSP.

    python bench/flag_views.py --photos all --seeds 0 1 2 3          # where the variants were compared first
    python bench/flag_views.py --photos all --seeds 7 8 9 10 11 12 13 14
    python bench/flag_views.py --photos colour --seeds 7 8 9 10 11 12 13 14 --small
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from unlabelled_flag_rates import COLOUR, folder  # noqa: E402
from unlabelled_photos import photographs  # noqa: E402

from cfx.trust.functional import gradtrust  # noqa: E402


def zoom(x: torch.Tensor, share: float = 0.8) -> torch.Tensor:
    """The centre ``share`` of each image, resized back to its size."""
    h, w = x.shape[-2:]
    ch, cw = int(round(h * share)), int(round(w * share))
    top, left = (h - ch) // 2, (w - cw) // 2
    return F.interpolate(x[..., top:top + ch, left:left + cw], size=(h, w), mode="bilinear", align_corners=False,
                         antialias=True)


VIEWS = {"image": lambda x: x, "mirror": lambda x: x.flip(-1), "zoom": zoom}


def variants(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each flag score from the logits of every view (higher = more trusted)."""
    mean = lambda *names: sum(logits[n] for n in names) / len(names)
    return {"gradtrust_topk (image)": gradtrust(logits["image"], "topk"),
            "image + mirror": gradtrust(mean("image", "mirror"), "topk"),
            "image + mirror + zoom": gradtrust(mean("image", "mirror", "zoom"), "topk"),
            "image + zoom": gradtrust(mean("image", "zoom"), "topk"),
            "zoom alone": gradtrust(logits["zoom"], "topk"),
            "msp (image)": torch.softmax(logits["image"], 1).max(1).values}


def view_logits(classifier, x: torch.Tensor, batch: int = 32) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return {name: torch.cat([classifier.logits(f(x[i:i + batch])) for i in range(0, len(x), batch)]).float()
                for name, f in VIEWS.items()}


def photo_ratios(photos: str, seeds: list[int]) -> None:
    from factories import efficientnet_lite0_classifier

    torch.manual_seed(0)
    model = efficientnet_lite0_classifier()
    chosen = photographs()
    if photos == "colour":
        chosen = {k: v for k, v in chosen.items() if k in COLOUR}
    ratios: dict[str, list[float]] = {}
    for seed in seeds:
        x, causes = folder(chosen, 200, seed)
        causes = np.array(causes)
        for name, v in variants(view_logits(model, x)).items():
            flagged = v.numpy() <= np.quantile(v.numpy(), 0.2)
            ratios.setdefault(name, []).append(flagged[causes != "clean"].mean()
                                               / max(flagged[causes == "clean"].mean(), 1e-9))
    print(f"{len(chosen)} photographs, crop seeds {seeds}: corrupted / clean flag rate at a 20 % share\n")
    print("| score | mean | lowest | highest | seeds at ≥ 2 | per seed |\n|---|---|---|---|---|---|")
    for name, r in ratios.items():
        r = np.array(r)
        print(f"| {name} | {r.mean():.2f} | {r.min():.2f} | {r.max():.2f} | {(r >= 2).sum()} of {len(r)} | "
              + " ".join(f"{v:.2f}" for v in r) + " |")


def small_models(digits_cache: Path) -> None:
    from explanations import colour_digits_setup

    from cfx.demo import load_demo

    rows = []
    for name in ("shapes", "digits"):
        demo = load_demo(name, progress=False)
        rows.append((f"demo {name}", demo.classifier, *demo.data.split("test")))
    clf, _, x, y = colour_digits_setup(digits_cache)
    rows.append(("colour digits", clf, x, y))
    table = {}
    for name, classifier, x, y in rows:
        logits = view_logits(classifier, x, batch=256)
        correct = (logits["image"].argmax(1) == y).numpy()
        table[name] = {score: roc_auc_score(correct, v.numpy()) for score, v in variants(logits).items()}
    scores = list(next(iter(table.values())))
    print("\nmisprediction AUROC on clean test splits\n\n| data set | " + " | ".join(scores) + " |\n|---|"
          + "---|" * len(scores))
    for name, aurocs in table.items():
        print(f"| {name} | " + " | ".join(f"{aurocs[s]:.3f}" for s in scores) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default="all", choices=["all", "colour", "none"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9, 10, 11, 12, 13, 14])
    parser.add_argument("--small", action="store_true", help="Also the small models' misprediction AUROC.")
    parser.add_argument("--digits-cache", default="/tmp/cfx-bench/colour-digits")
    args = parser.parse_args()
    if args.photos != "none":
        photo_ratios(args.photos, args.seeds)
    if args.small:
        small_models(Path(args.digits_cache))


if __name__ == "__main__":
    main()
