"""Does the audit find a planted bias, and stay quiet on a fair model? Ten seeds, biased model against its control.

Two worlds (``--world shapes``, ``--world digits``, or ``both``, the default):

For each seed: train the demo classifier on the biased world (90 % of images have the background hue tied to their
class) and on the unbiased control (same seed, no tie); measure the property sensitivity (EPGM) of both on
the same test images of the biased world, with every re-rendered generating attribute except the shape (and the
rotation) named a nuisance; report the nuisance rank of background_hue for the biased model and its effect against
the control's. Acceptance (issue 9): rank 1 and ratio ≥ 3 for ≥ 9 of 10 seeds. The parametric hue shift, which
moves the background hue together with the object's, is measured beside them and its rank shown.

**Digits** (real images): scikit-learn's handwritten digits, white strokes on a coloured background (hue, saturation
0.6, value 0.45; the colourisation was fixed before any tuning). The biased model's training images have the
background hue tied to the class (hue = class / 10 ± 0.02) for 90 % of images and a random hue otherwise; the
control's are all random. Both are audited on the same 300 held-out digits with a random background hue, with
brightness, contrast, saturation and hue named nuisances (the planted one is hue); the parametric sweeps stay
inside the range of the audited images, and every nuisance is compared with its matched-size null. Acceptance:
hue flagged and first among nuisances for the biased model with a raw effect ≥ 3× the control's, and no nuisance
flagged for the control, each in ≥ 9 of 10 seeds.

    python bench/audit_bias.py [--world both|shapes|digits] [--seeds 10] [--images 300]
"""

from __future__ import annotations

import argparse
import colorsys
import time

import numpy as np
import torch
import torch.nn.functional as F

from cfx.generators import EditRanges
from cfx.jobs.auditing import property_sensitivity, rank_properties
from cfx.demo import BANDS, TrainingConfig, WorldConfig, demo_config, shapes_data
from cfx.core.models import Classifier, Preprocessing
from cfx.core.nets import SmallCNN
from cfx.core.training import train_model

NUISANCE = [k for k in BANDS if k != "rotation"]


def classifier_for(data, seed: int) -> Classifier:
    tc = TrainingConfig(**demo_config("shapes-biased", seed, 0.9)["training"])
    x, y = data.split("train")
    torch.manual_seed(tc.seed)
    net = SmallCNN(len(data.class_names), image_size=x.shape[-1])
    train_model(net, x, y, tc.classifier_epochs, tc.batch_size, tc.lr, tc.seed, "classifier", False)
    net.eval()
    return Classifier.wrap(net, preprocessing=Preprocessing(size=tuple(x.shape[-2:])), class_names=data.class_names,
                           num_classes=len(data.class_names))


def shapes_world(args) -> None:
    print("\n### shapes: background hue tied to the class (biased) or not (control)\n")
    print("| seed | biased acc (aligned / broken) | control acc | bg-hue EPGM biased | control | ratio | "
          "nuisance rank (biased) | flagged (biased / control) | hue shift: rank, EPGM biased / control | "
          "nuisances flagged for the control |\n|---|---|---|---|---|---|---|---|---|---|")
    passed = quiet = 0
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        t0 = time.perf_counter()
        biased_data = shapes_data(WorldConfig(seed=seed, bias_rate=0.9))
        control_data = shapes_data(WorldConfig(seed=seed, bias_rate=0.0))
        biased, control = classifier_for(biased_data, seed), classifier_for(control_data, seed)
        source = biased_data.source("test")
        x = source.images[:args.images]
        meta = source.metadata[:args.images]
        aligned = torch.tensor([bool(m["bias_aligned"]) for m in meta])
        y = torch.as_tensor(source.labels[:args.images])
        rows = {}
        for name, clf in (("biased", biased), ("control", control)):
            with torch.inference_mode():
                ok = clf.logits(x).argmax(1) == y
            effects = property_sensitivity(clf, x, meta, properties=NUISANCE + ["hue"], steps=8, permutations=200)
            ranking = rank_properties(effects, NUISANCE, clf.class_names)
            rows[name] = ({r["property"]: r for r in ranking}, ok, aligned)
        b, c = rows["biased"][0]["background_hue"], rows["control"][0]["background_hue"]
        hb, hc = rows["biased"][0]["hue"], rows["control"][0]["hue"]
        ratio = b["mean_epgm"] / max(c["mean_epgm"], 1e-12)
        ok_b = rows["biased"][1]
        good = b["nuisance_rank"] == 1 and ratio >= 3 and b["flagged"]
        passed += good
        control_flags = [k for k, r in rows["control"][0].items() if r["flagged"] and r["nuisance"]]
        quiet += not control_flags
        print(f"| {seed} | {float(ok_b[aligned].float().mean()):.3f} / {float(ok_b[~aligned].float().mean()):.3f} | "
              f"{float(rows['control'][1].float().mean()):.3f} | {b['mean_epgm']:.4f} | {c['mean_epgm']:.4f} | "
              f"{ratio:.1f} | {b['nuisance_rank']} | {b['flagged']} / {c['flagged']} | "
              f"{hb['rank']}, {hb['mean_epgm']:.4f} / {hc['mean_epgm']:.4f} | {control_flags} |"
              f"{'' if good and not control_flags else ' ✗'}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nbackground_hue flagged, top-ranked nuisance, >= 3x the control's effect: {passed} of {args.seeds} "
          f"seeds; control with no nuisance flagged: {quiet} of {args.seeds} seeds")


DIGIT_NUISANCE = ["brightness", "contrast", "saturation", "hue"]


def coloured_digits(seed: int, biased_share: float, n_train: int = 1300):
    """Colourised digits: (train x, train y, test x, test y); the train hues tied to the class for ``biased_share``
    of the images, the test hues random."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(d.target))
    strokes = torch.from_numpy(d.images[order].astype(np.float32) / 16).unsqueeze(1)
    strokes = F.interpolate(strokes, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    labels = torch.from_numpy(d.target[order]).long()
    hue = rng.random(len(labels))
    tied = np.zeros(len(labels), dtype=bool)
    tied[:n_train] = rng.random(n_train) < biased_share
    hue[tied] = (labels.numpy()[tied] / 10 + rng.uniform(-0.02, 0.02, tied.sum())) % 1.0
    colour = torch.tensor([colorsys.hsv_to_rgb(h, 0.6, 0.45) for h in hue], dtype=torch.float32).view(-1, 3, 1, 1)
    x = (colour * (1 - strokes) + strokes).clamp(0, 1)
    return x[:n_train], labels[:n_train], x[n_train:], labels[n_train:]


def digits_world(args) -> None:
    print("\n### digits: background hue tied to the class (biased) or random (control)\n")
    print("| seed | acc biased / control | hue EPGM biased / control (ratio) | hue × null (biased) | "
          "nuisance ranking (biased) | flagged biased | flagged control |\n|---|---|---|---|---|---|---|")
    hits = quiet = 0
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        t0 = time.perf_counter()
        rows, accuracy = {}, {}
        for name, share in (("biased", 0.9), ("control", 0.0)):
            xtr, ytr, xte, yte = coloured_digits(seed, share)
            torch.manual_seed(seed)
            net = SmallCNN(10, image_size=32)
            train_model(net, xtr, ytr, 12, 64, 1e-3, seed, "classifier", False)
            clf = Classifier.wrap(net.eval(), preprocessing=Preprocessing(size=(32, 32)))
            x, y = xte[:args.images], yte[:args.images]
            with torch.inference_mode():
                accuracy[name] = float((clf.logits(x).argmax(1) == y).float().mean())
            ranges = EditRanges.measure(x, source="the audited digits")
            effects = property_sensitivity(clf, x, properties=DIGIT_NUISANCE, steps=8, permutations=200,
                                           ranges=ranges, seed=seed)
            rows[name] = {r["property"]: r for r in rank_properties(effects, DIGIT_NUISANCE)}
        b, c = rows["biased"]["hue"], rows["control"]["hue"]
        ratio = b["mean_epgm"] / max(c["mean_epgm"], 1e-12)
        hit = b["flagged"] and b["nuisance_rank"] == 1 and ratio >= 3
        flagged_control = [k for k, r in rows["control"].items() if r["flagged"]]
        hits += hit
        quiet += not flagged_control
        ranking = ", ".join(k for k, _ in sorted(rows["biased"].items(), key=lambda kv: kv[1]["rank"]))
        print(f"| {seed} | {accuracy['biased']:.3f} / {accuracy['control']:.3f} | {b['mean_epgm']:.4f} / "
              f"{c['mean_epgm']:.4f} ({ratio:.1f}) | {b['null_ratio']:.1f} | {ranking} | "
              f"{[k for k, r in rows['biased'].items() if r['flagged']]} | {flagged_control} |"
              f"{'' if hit and not flagged_control else ' ✗'}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nhue flagged and first among nuisances with >= 3x the control's effect: {hits} of {args.seeds} seeds; "
          f"control with no nuisance flagged: {quiet} of {args.seeds} seeds")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=["both", "shapes", "digits"], default="both")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    if args.world in ("both", "digits"):
        digits_world(args)
    if args.world in ("both", "shapes"):
        shapes_world(args)


if __name__ == "__main__":
    main()
