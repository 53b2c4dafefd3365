"""The cost of `cfx trust`'s default scores at 224 px, against a plain forward pass, with EfficientNet-Lite0.

Both are measured in the same run on the same batches, interleaved and repeated (machines are noisy): (a) the plain
forward pass, (b) `score_batch` with the default scores (logit scores, both GradTrust variants, GradNorm, PaRCE and
Mahalanobis from a fitted folder), (c) every applicable score (adds ODIN, the oracle when fitted, MC dropout with
dropout). Prints images/s and the ratio b/a (want ≥ 0.8) and c/a.

    python bench/trust_default_224.py --fitted /tmp/cfx-real224/fitted [--repeats 3] [--batch 32]

The fitted folder comes from ``python bench/real_224.py`` (same model).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import cfx
from cfx.trust.scores import applicable_scores, default_scores, score_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from factories import efficientnet_lite0_classifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fitted", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = efficientnet_lite0_classifier()
    fitted = cfx.Fitted.load(args.fitted, model)
    default, every = default_scores(model, fitted), applicable_scores(model, fitted)
    images = torch.rand(args.batch, 3, 224, 224)

    def plain():
        with torch.inference_mode():
            model.logits(images)

    runs = {"a: plain forward": plain,
            "b: default scores": lambda: score_batch(model, images, default, fitted=fitted),
            "c: every score": lambda: score_batch(model, images, every, fitted=fitted)}
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
    print(f"default scores: {', '.join(default)}\nevery score: {', '.join(every)}")
    for name, r in rate.items():
        print(f"{name:20s} {r:6.1f} images/s")
    a = rate["a: plain forward"]
    print(f"ratio b/a = {rate['b: default scores'] / a:.2f} (want >= 0.8); c/a = {rate['c: every score'] / a:.2f}")


if __name__ == "__main__":
    main()
