"""Property edits on the demo world.

1. EPGM of re-rendered attribute interventions (true interventions) for a classifier trained on the biased shapes
   world (background hue tied to the class for 90 % of images) and for its unbiased control, over several seeds:
   is the nuisance attribute's EPGM at least 3x the control's?
2. The restoring view per cause: which parametric edit raises PaRCE competency the most for cause images.

3. A 20-strength InstructPix2Pix sweep as one batched call vs one pipeline call per strength (tiny pipeline).

    python bench/property_edits.py [--seeds 10] [--images 200] [--skip-restoring] [--skip-diffusion] [--full-range]

The restoring table uses the fitted folder's edit ranges (only in-range edits that keep the content count);
``--full-range`` gives the editors' own ranges, as before edit ranges existed.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch

from cfx.demo import CAUSES, ShapesWorld, WorldConfig, cause_examples, demo_fitted, load_demo, shapes_data
from cfx.generators import AttributeEditor, EditRanges, property_curve, restoring_editors, restoring_edits
from cfx.core.models import Classifier, Preprocessing
from cfx.core.nets import SmallCNN
from cfx.core.training import train_model

ATTRIBUTES = ("background_hue", "object_hue", "texture_frequency", "size", "rotation")


def _train(data, seed: int) -> Classifier:
    x, y = data.split("train")
    torch.manual_seed(seed)
    net = SmallCNN(6)
    train_model(net, x, y, epochs=20, batch_size=64, lr=1e-3, seed=seed, desc="", progress=False)
    return Classifier.wrap(net.eval(), preprocessing=Preprocessing(size=(32, 32)), num_classes=6)


def bias_table(seeds: int, n_images: int) -> None:
    print("| seed | biased acc (aligned / broken test) | control acc | background-hue EPGM biased | control | ratio | "
          "top attribute (biased) |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    for seed in range(seeds):
        t0 = time.perf_counter()
        biased_data = shapes_data(WorldConfig(seed=seed, bias_rate=0.9))
        control_data = shapes_data(WorldConfig(seed=seed, bias_rate=0.0))
        biased, control = _train(biased_data, seed), _train(control_data, seed)
        world = ShapesWorld(WorldConfig(seed=seed))
        idx = control_data.splits["test"][:n_images]  # the same unbiased test images for both models
        attrs = {k: v[idx] for k, v in control_data.attributes.items()}
        x, y = control_data.images[idx], control_data.labels[idx]
        aligned = world.bias_aligned(attrs)
        acc = lambda clf, m: float((clf.predict(x[m]) == y[m]).float().mean())  # noqa: E731
        e = {}
        for name, clf in (("biased", biased), ("control", control)):
            for attr in ATTRIBUTES:
                editor = AttributeEditor(world, attr, range=(-0.5, 0.5) if attr.endswith("hue") else
                                         ((0.20, 0.32) if attr == "size" else (0.0, 6.283)), mode="offset"
                                         if attr.endswith("hue") else "set")
                s = torch.linspace(0, 0.5, 21)[1:] if attr.endswith("hue") else editor.sweep(steps=20)
                curve = property_curve(clf, editor, x, s, class_index=y, attributes=attrs, permutations=200)
                e[(name, attr)] = float(curve.epgm.mean())
        ratio = e[("biased", "background_hue")] / e[("control", "background_hue")]
        ratios.append(ratio)
        top = max(ATTRIBUTES, key=lambda a: e[("biased", a)])
        print(f"| {seed} | {acc(biased, aligned):.3f} / {acc(biased, ~aligned):.3f} | {acc(control, ~aligned):.3f} | "
              f"{e[('biased', 'background_hue')]:.4f} | {e[('control', 'background_hue')]:.4f} | {ratio:.1f}x | "
              f"{top} |  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nratio >= 3 for {sum(r >= 3 for r in ratios)} of {len(ratios)} seeds; "
          f"median {statistics.median(ratios):.1f}x")


def restoring_table(per_cause: int, full_range: bool = False) -> None:
    demo = load_demo("shapes", progress=False)
    fitted = demo_fitted(demo, progress=False)
    clf = demo.classifier
    x, y = demo.data.split("test")
    score = lambda im: fitted.parce.competency_from(clf.logits(im), im)  # noqa: E731
    print("\n| cause | n | best restoring edits (share) | mean competency gain |\n|---|---|---|---|")
    for cause in CAUSES:
        ex = cause_examples(x, y, clf, cause, score=lambda im: fitted.parce.score(clf, im))
        images = ex.images[torch.randperm(len(ex.images), generator=torch.Generator().manual_seed(0))[:per_cause]]
        ranges = None if full_range else EditRanges.from_dict(fitted.manifest["edit_ranges"])
        best = restoring_edits(score, images, restoring_editors(), steps=8, ranges=ranges)
        counts = collections.Counter(f"{b.property}:{b.direction}" for b in best)
        top = ", ".join(f"{k} {v / len(best):.0%}" for k, v in counts.most_common(3))
        print(f"| {cause} | {len(best)} | {top} | {statistics.mean(b.gain for b in best):.3f} |", flush=True)


def diffusion_sweep(strengths: int = 20, repeats: int = 3) -> None:
    """A 20-step text-guidance sweep on the tiny InstructPix2Pix pipeline: one batched call vs one call per strength."""
    from cfx.generators import InstructPix2PixEditor
    from cfx.generators.diffusion import tiny_instruct_pix2pix

    pipe = tiny_instruct_pix2pix()
    image = torch.rand(1, 3, 32, 32)
    editor = InstructPix2PixEditor(pipe, "brightness", steps=10, batch_size=strengths)
    scales = editor.sweep(steps=strengths)
    editor.edit(image, scales[:2])  # warm-up
    batched, per_call = [], []
    for _ in range(repeats):  # interleaved
        t0 = time.perf_counter()
        editor.edit(image, scales)
        batched.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for g in scales.tolist():
            pipe(prompt=editor.instruction, image=image, num_inference_steps=10, guidance_scale=g,
                 image_guidance_scale=2.5, generator=torch.Generator().manual_seed(0), output_type="pt")
        per_call.append(time.perf_counter() - t0)
    a, b = statistics.median(batched), statistics.median(per_call)
    print(f"\nInstructPix2Pix sweep, {strengths} guidance scales x 10 denoising steps, tiny pipeline, 32x32: batched "
          f"{a:.2f} s, one pipeline call per strength {b:.2f} s, speed-up {b / a:.1f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--per-cause", type=int, default=100)
    parser.add_argument("--skip-restoring", action="store_true")
    parser.add_argument("--skip-bias", action="store_true")
    parser.add_argument("--skip-diffusion", action="store_true")
    parser.add_argument("--full-range", action="store_true",
                        help="restoring edits over each editor's full range (the behaviour before edit ranges)")
    args = parser.parse_args()
    if not args.skip_restoring:
        restoring_table(args.per_cause, args.full_range)
    if not args.skip_diffusion:
        diffusion_sweep()
    if not args.skip_bias:
        bias_table(args.seeds, args.images)


if __name__ == "__main__":
    main()
