"""Counterfactual generators on the demo world's six causes, per-sample vs batch-level stopping, and LNN search.

1. For each cause: up to N low-competency examples (the explanation study's selection, with PaRCE), every generator, the counterfactual paper's metrics.
2. Image-steps of LGD / IGD / FGD with per-sample stopping vs the paper's batch-level stopping, at equal success.
3. Latent nearest-neighbour query time: FAISS exact L1 (and L2) vs exhaustive torch search, at 10k and 100k
   latents of the demo's latent size, queries in batches of 256; measured side by side in one run.

    python bench/generators.py [--per-cause 100] [--skip-search]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cfx.demo import CAUSES, cause_examples, demo_fitted, load_demo
from cfx.generators import (AutoencoderReconstruction, FeatureGradientDescent, ImageGradientDescent, LatentIndex,
                            LatentGradientDescent, LatentNearestNeighbours, competency_target,
                            counterfactual_metrics)


def generator_table(per_cause: int) -> None:
    demo = load_demo("shapes", progress=False)
    fitted = demo_fitted(demo, progress=False)
    clf = demo.classifier
    x, y = demo.data.split("test")
    target = competency_target(clf, fitted)
    ref = torch.cat([fitted.autoencoder.encode(demo.data.split("calibration")[0][i:i + 512]).detach()
                     for i in range(0, 1620, 512)])
    gens = {"IGD": lambda: ImageGradientDescent(target), "FGD": lambda: FeatureGradientDescent(target, clf),
            "Reco": lambda: AutoencoderReconstruction(target, fitted.autoencoder),
            "LGD": lambda: LatentGradientDescent(target, fitted.autoencoder),
            "LNN": lambda: LatentNearestNeighbours(target, fitted.autoencoder, fitted.latent_index)}
    print("| cause | n | " + " | ".join(gens) + " |  (success rate)\n|---|---|" + "---|" * len(gens))
    overall: dict[str, list] = {g: [] for g in gens}
    steps = {g: {"sample": [0, 0.0], "batch": [0, 0.0]} for g in ("IGD", "FGD", "LGD")}
    for cause in CAUSES:
        ex = cause_examples(x, y, clf, cause, score=lambda im: fitted.parce.score(clf, im))
        perm = torch.randperm(len(ex.images), generator=torch.Generator().manual_seed(0))[:per_cause]
        images = ex.images[perm]
        if len(images) == 0:
            print(f"| {cause} | 0 | " + " | ".join("-" for _ in gens) + " |")
            continue
        row = []
        for name, make in gens.items():
            cf = make().generate(images)
            m = counterfactual_metrics(cf, images, clf, fitted.autoencoder, reference_latents=ref)
            overall[name].append((len(images), m))
            row.append(f"{m['success_rate']:.2f}")
            if name in steps:
                steps[name]["sample"][0] += cf.image_steps
                steps[name]["sample"][1] += float(cf.success.float().sum())
                gen = make()
                gen.stopping = "batch"
                cb = gen.generate(images)
                steps[name]["batch"][0] += cb.image_steps
                steps[name]["batch"][1] += float(cb.success.float().sum())
        print(f"| {cause} | {len(images)} | " + " | ".join(row) + " |", flush=True)
    print("\n| generator | success | latent cos | feature cos | pixel L1 | SSIM | KID (AE latents) | s/image |")
    print("|---|---|---|---|---|---|---|---|")
    for name, parts in overall.items():
        n = sum(k for k, _ in parts)
        avg = lambda key: sum(k * m[key] for k, m in parts if m[key] == m[key]) / n  # noqa: E731
        print(f"| {name} | {avg('success_rate'):.3f} | {avg('latent_similarity'):.3f} | "
              f"{avg('feature_similarity'):.3f} | {avg('pixel_l1'):.3f} | {avg('ssim'):.3f} | "
              f"{avg('kid_latent'):.4f} | {avg('seconds_per_image'):.4f} |")
    print("\n| generator | image-steps, per-sample stopping | image-steps, batch-level | ratio | successes (sample / batch) |")
    print("|---|---|---|---|---|")
    for name, s in steps.items():
        print(f"| {name} | {s['sample'][0]} | {s['batch'][0]} | {s['batch'][0] / max(1, s['sample'][0]):.1f}x | "
              f"{s['sample'][1]:.0f} / {s['batch'][1]:.0f} |")


def search_speed() -> None:
    """Real latents: shapes-world images rendered afresh and encoded by the demo autoencoder (256-d)."""
    from cfx.demo import WorldConfig, shapes_data

    demo = load_demo("shapes", progress=False)
    ae = demo.autoencoder
    t0 = time.perf_counter()
    world = shapes_data(WorldConfig(n_images=102_048, seed=11))
    with torch.inference_mode():
        z_all = torch.cat([ae.encode(world.images[i:i + 2048]) for i in range(0, len(world.images), 2048)])
    print(f"\nLNN search on demo-autoencoder latents ({z_all.shape[1]}-d; rendered and encoded in "
          f"{time.perf_counter() - t0:.0f} s), 2048 held-out queries in batches of 256, "
          f"{torch.get_num_threads()} threads, L1:")
    print("| latents | index | ms/query | torch exhaustive ms/query | speed-up | recall@1 vs exact |")
    print("|---|---|---|---|---|---|")
    q = z_all[-2048:]
    for n in (10_000, 100_000):
        z = z_all[:n]
        imgs = torch.zeros(n, 3, 1, 1, dtype=torch.uint8)
        exact = torch.cat([torch.cdist(q[i:i + 256], z, p=1).argmin(1) for i in range(0, len(q), 256)])
        for kind in ("flat", "ivf"):
            index = LatentIndex("l1", kind=kind).build(z, [""] * n, torch.zeros(n), imgs)
            faiss_t, torch_t = [], []
            for _ in range(3):  # interleaved repeats, same queries
                t0 = time.perf_counter()
                pos = torch.cat([index.search(q[i:i + 256])[1][:, 0] for i in range(0, len(q), 256)])
                faiss_t.append((time.perf_counter() - t0) / len(q) * 1e3)
                t0 = time.perf_counter()
                torch.cat([torch.cdist(q[i:i + 256], z, p=1).argmin(1) for i in range(0, len(q), 256)])
                torch_t.append((time.perf_counter() - t0) / len(q) * 1e3)
            a, b = statistics.median(faiss_t), statistics.median(torch_t)
            print(f"| {n:,} | {kind} | {a:.3f} | {b:.3f} | {b / a:.1f}x | {float((pos == exact).float().mean()):.3f} |",
                  flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-cause", type=int, default=100)
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--skip-generators", action="store_true")
    args = parser.parse_args()
    if not args.skip_generators:
        generator_table(args.per_cause)
    if not args.skip_search:
        search_speed()


if __name__ == "__main__":
    main()
