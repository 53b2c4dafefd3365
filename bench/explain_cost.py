"""What explaining one flagged image costs, per stage, in seconds and in plain forward passes of the same model.

Runs the stages of `cfx.evidence.collect_evidence` one by one on the same images (scores, the restoring search,
property curves, image statistics, each counterfactual generator, the evidence reporter), for a fitted folder and
its model, and divides each stage's time per image by a plain forward pass per image measured in the same run.

    python bench/explain_cost.py --fitted /tmp/cfx-real224/fitted --model efficientnet [--images 4]
    python bench/explain_cost.py --model demo:shapes [--images 16]        # the demo CNN at 32 px, its own folder

``--model efficientnet`` is the real EfficientNet-Lite0 at 224 px; the folder comes from ``bench/real_224.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import cfx
from cfx.evidence import image_statistics, reference_statistics
from cfx.generators import (AutoencoderReconstruction, LatentGradientDescent, LatentNearestNeighbours, Occlusion,
                            competency_target, parametric_editors, property_curve, restoring_edits)
from cfx.prompts import EvidenceReporter
from cfx.trust.scores import default_scores, score_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def load(args):
    if args.model == "efficientnet":
        from factories import efficientnet_lite0

        model = cfx.Classifier.wrap(efficientnet_lite0(), preprocessing=cfx.Preprocessing(
            size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
        fitted = cfx.Fitted.load(args.fitted, model)
        source = cfx.open_source(Path(args.fitted).parent / "incoming.csv")
    else:
        from cfx.demo import demo_fitted, load_demo, review_set

        demo = load_demo(args.model.split(":", 1)[1], progress=False)
        model, fitted = demo.classifier, demo_fitted(demo, progress=False)
        source = review_set(demo.data, n=60)
    batch = next(iter(cfx.iter_batches(source, 256, size=model.preprocessing.size)))
    with torch.inference_mode():
        competency = fitted.parce.competency_from(model.logits(batch.images), batch.images)
    order = competency.argsort()[:args.images]  # the least competent: what gets flagged
    return model, fitted, batch.images[order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet")
    parser.add_argument("--fitted", default="/tmp/cfx-real224/fitted")
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, fitted, images = load(args)
    n = len(images)
    with torch.inference_mode():
        model.logits(images[:2])
        t = time.perf_counter()
        model.logits(images)
        forward = (time.perf_counter() - t) / n
    target = competency_target(model, fitted)
    editors = parametric_editors()
    score_fn = lambda x: fitted.parce.competency_from(model.logits(x), x)  # noqa: E731
    stages = {
        "scores": lambda: score_batch(model, images, default_scores(model, fitted), fitted=fitted),
        "restoring search": lambda: restoring_edits(score_fn, images, [e for e in editors
                                                                        if not isinstance(e, Occlusion)], steps=8),
        "property curves": lambda: [property_curve(model, e, images, e.sweep(steps=8), permutations=200)
                                    for e in editors],
        "statistics": lambda: (image_statistics(images), reference_statistics(images)),
        "reco": lambda: AutoencoderReconstruction(target, fitted.autoencoder).generate(images),
        "lgd": lambda: LatentGradientDescent(target, fitted.autoencoder).generate(images),
    }
    if fitted.latent_index is not None:
        stages["lnn"] = lambda: LatentNearestNeighbours(target, fitted.autoencoder, fitted.latent_index).generate(images)
    evidence = cfx.evidence.collect_evidence(model, fitted, images[:1], generators=("reco",))
    stages["reporter"] = lambda: EvidenceReporter().explain_many(evidence * n)
    print(f"{args.model}: {n} images at {tuple(images.shape[-2:])}, plain forward {forward * 1000:.1f} ms/image")
    print("| stage | s per image | forward passes |\n|---|---|---|")
    total = 0.0
    for name, fn in stages.items():
        t = time.perf_counter()
        fn()
        per = (time.perf_counter() - t) / n
        total += per
        print(f"| {name} | {per:.3f} | {per / forward:.0f} |")
    print(f"| **total** | **{total:.2f}** | **{total / forward:.0f}** |")


if __name__ == "__main__":
    main()
