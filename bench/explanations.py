"""The cause benchmark of the offline evidence reporter: which cause it names for images changed by a known cause in
a known direction, on four data sets (see :func:`cfx.demo.cause_benchmark`).

Data sets:

- ``shapes`` / ``digits``: the demo world's test split and the demo CNN (the reporter's thresholds were set on
  ``shapes`` with seed 0 and grid strengths);
- ``colour-digits``: scikit-learn's handwritten digits, colourised (white strokes on a dark background of random
  hue, ``tests/factories.colour_digits``, fixed before any tuning), a plain CNN (the demo's) trained on 900 of them,
  a fitted folder on 500 others, the test on the remaining 397;
- ``photos``: EfficientNet-Lite0 (real ImageNet weights) at 224 px on crops of scikit-image's photographs: a fitted
  folder on 400 crops (labelled with the model's prediction on the whole photograph) and 1000 other crops as sources.

Prints, per cause and direction, how many changed images were kept (competency fell below the threshold), how
many were explained and the accuracy, per strength and overall; the mean over causes and directions; and the
views (all evidence, no counterfactual, each generator alone). "No single cause" counts as wrong.

    python bench/explanations.py --dataset shapes --seed 0 --strengths grid       # where the thresholds were set
    python bench/explanations.py --dataset shapes --seed 11 --strengths drawn     # a fresh seed, drawn strengths
    python bench/explanations.py --dataset colour-digits|photos --seed 11 --strengths drawn
    python bench/explanations.py ... --save ev.pt   # keep the evidence; --load ev.pt re-scores it (reporter work)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import cfx  # noqa: E402
from cfx.demo import cause_benchmark, demo_fitted, load_demo, score_cause_evidence  # noqa: E402


def colour_digits_setup(cache: Path):
    from factories import colour_digits

    from cfx.core.nets import SmallCNN
    from cfx.core.training import train_model

    x, y = colour_digits(n=1797, seed=0)
    net = SmallCNN(10, image_size=32)
    weights = cache / "classifier.pt"
    if weights.is_file():
        net.load_state_dict(torch.load(weights, weights_only=True))
    else:
        torch.manual_seed(0)
        train_model(net, x[:900], y[:900], epochs=20, batch_size=64, lr=1e-3, seed=0, desc="colour digits",
                    progress=True)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), weights)
    clf = cfx.Classifier.wrap(net.eval(), preprocessing=cfx.Preprocessing(size=(32, 32)),
                              class_names=[str(i) for i in range(10)])
    try:
        fitted = cfx.Fitted.load(cache / "fitted", clf)
    except Exception:
        fitted = cfx.fit(clf, cfx.TensorSource(x[900:1400], y[900:1400]), cache / "fitted", ae_epochs=25,
                         progress=True)
    return clf, fitted, x[1400:], y[1400:]


def photos_setup(cache: Path, sources: int, references: int = 400):
    import numpy as np
    from PIL import Image

    from factories import efficientnet_lite0_classifier
    from real_224 import crops, photographs

    clf = efficientnet_lite0_classifier()
    photos = photographs()

    def tiles(n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
        picked = crops(photos, n, np.random.default_rng(seed))
        return (torch.stack([torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
                             for _, img in picked]), [name for name, _ in picked])

    try:
        fitted = cfx.Fitted.load(cache / "fitted", clf)
    except Exception:
        # reference crops (seed 0) labelled with the model's prediction on the whole photograph (pseudo-labels: no
        # ImageNet labels exist for these photographs), as in bench/real_224.py
        with torch.inference_mode():
            whole = torch.stack([torch.from_numpy(np.asarray(Image.fromarray(p).resize((224, 224))))
                                 .permute(2, 0, 1) for p in photos.values()]).float() / 255
            label_of = dict(zip(photos, clf.logits(whole).argmax(1).tolist()))
        x, names = tiles(references, 0)
        fitted = cfx.fit(clf, cfx.TensorSource(x, torch.tensor([label_of[n] for n in names])), cache / "fitted",
                         ae_epochs=25, progress=True)
    x, _ = tiles(sources, 1234)  # crops the reference did not draw
    return clf, fitted, x, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="shapes", choices=["shapes", "digits", "colour-digits", "photos"])
    parser.add_argument("--per-cause", type=int, default=100, help="Images per cause and direction.")
    parser.add_argument("--seed", type=int, default=1, help="Seed of the cause application and the sample drawn.")
    parser.add_argument("--strengths", default="grid", choices=["grid", "drawn"])
    parser.add_argument("--edit-search", default="auto", choices=["auto", "screened", "full"],
                        help="How the restoring edit and the property curves are searched.")
    parser.add_argument("--cache", default="/tmp/cfx-bench",
                        help="Where the colour-digits model and the fitted folders are kept (made if missing).")
    parser.add_argument("--sources", type=int, default=1000,
                        help="Photograph crops to change (photos): about one in 15 is competent enough to be a source.")
    parser.add_argument("--save", default=None, help="Save the evidence here (torch.save).")
    parser.add_argument("--load", default=None, help="Re-score evidence saved with --save (no model needed).")
    args = parser.parse_args()
    t0 = time.perf_counter()
    if args.load:
        saved = torch.load(args.load, weights_only=False)
        records = {tuple(k): (v[0], v[1]) for k, v in saved["records"].items()}
        r = score_cause_evidence(records)
        r.update({k: saved[k] for k in ("seed", "strengths", "dataset")})
        for g, n in saved.get("kept", {}).items():
            r["groups"][g]["kept"] = n
    else:
        if args.dataset in ("shapes", "digits"):
            demo = load_demo(args.dataset, progress=False)
            clf, fitted = demo.classifier, demo_fitted(demo, progress=False)
            x, y = demo.data.split("test")
        elif args.dataset == "colour-digits":
            clf, fitted, x, y = colour_digits_setup(Path(args.cache) / "colour-digits")
        else:
            clf, fitted, x, y = photos_setup(Path(args.cache) / "photos", args.sources)
        torch.manual_seed(0)
        stored: dict = {}
        r = cause_benchmark(clf, fitted, x, y, per_cause=args.per_cause, seed=args.seed, strengths=args.strengths,
                            search=args.edit_search, progress=True,
                            on_evidence=lambda g, ev, ks, im: stored.__setitem__(
                                g, (ev, ks, (im * 255).round().to(torch.uint8))))
        r["dataset"] = args.dataset
        if args.save:
            torch.save({"records": stored, "seed": args.seed, "strengths": args.strengths, "dataset": args.dataset,
                        "kept": {g: v["kept"] for g, v in r["groups"].items()}}, args.save)
    seconds = time.perf_counter() - t0
    print(f"\n{r['dataset']}: up to {args.per_cause} images per cause and direction, seed {r['seed']}, "
          f"{r['strengths']} strengths, edit search {args.edit_search}, {seconds:.0f} s\n")
    print("| cause / direction | kept | explained | accuracy | per strength (n: accuracy) | named |\n"
          "|---|---|---|---|---|---|")
    for group, c in r["groups"].items():
        per = ", ".join(f"{k:g} ({s['n']}: {s['accuracy']:.2f})" for k, s in c["per_strength"].items() if s["n"])
        named = ", ".join(f"{k} {v}" for k, v in sorted(c.get("named", {}).items(), key=lambda kv: -kv[1]))
        print(f"| {group} | {c.get('kept', '')} | {c['used']} | {c['accuracy']:.3f} | {per} | {named} |")
    print(f"| **mean over causes and directions** | | | **{r['mean']:.3f}** (lowest {r['min_group']:.3f}) | | |")
    views = r["views"]
    print("\n| cause | " + " | ".join(views) + " |\n|---|" + "---|" * len(views))
    for cause in views["all"]["per_cause"]:
        print(f"| {cause} (n = {views['all']['counts'][cause]}) | "
              + " | ".join(f"{v['per_cause'][cause]:.3f}" for v in views.values()) + " |")
    print("| **mean over causes** | " + " | ".join(f"**{v['mean']:.3f}**" for v in views.values()) + " |")


if __name__ == "__main__":
    main()
