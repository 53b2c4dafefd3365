"""GradTrust speed: plain forward vs forward + closed-form GradTrust vs the per-image autograd reference.

Same classifier and images in one run, measurements interleaved and repeated (machines are noisy); prints
throughputs and the ratios b/a (closed form over plain forward, want >= 0.95) and b/c (closed form over the
reference loop, want >= 4 on CPU).

    python bench/trust_speed.py [--repeats 5] [--reference-images 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _resnet import ResNet18Shape  # noqa: E402

from cfx.core.models import Classifier, Preprocessing  # noqa: E402
from cfx.trust import gradtrust, gradtrust_reference  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(name, clf, images, batch, repeats, n_ref, device):
    """(a) and (b) alternate batch by batch, so drifts in machine load hit both equally; (c) runs per round."""
    batches = [images[i:i + batch] for i in range(0, len(images), batch)]

    def plain(x):
        return clf.logits(x)

    def closed(x):
        return gradtrust(clf.logits(x))

    def timed(fn, x):
        _sync(device)
        t0 = time.perf_counter()
        fn(x)
        _sync(device)
        return time.perf_counter() - t0

    with torch.inference_mode():  # warm-up
        plain(batches[0]), closed(batches[0])
    gradtrust_reference(clf, images[:2])
    a, b, c = [], [], []
    for _ in range(repeats):
        ta = tb = 0.0
        with torch.inference_mode():
            for x in batches:
                ta += timed(plain, x)
                tb += timed(closed, x)
        a.append(len(images) / ta)
        b.append(len(images) / tb)
        t0 = time.perf_counter()
        gradtrust_reference(clf, images[:n_ref])
        _sync(device)
        c.append(n_ref / (time.perf_counter() - t0))
    a, b, c = statistics.median(a), statistics.median(b), statistics.median(c)
    print(f"{name:28s} forward {a:8.1f} img/s | forward+GradTrust {b:8.1f} img/s | reference loop {c:7.1f} img/s"
          f" | b/a = {b / a:.3f} | b/c = {b / c:.1f}")
    return {"model": name, "a": a, "b": b, "c": c, "b/a": b / a, "b/c": b / c}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-images", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    resnet = Classifier.wrap(ResNet18Shape(1000).eval(), preprocessing=Preprocessing(size=(112, 112)),
                             device=device)
    x = torch.rand(128, 3, 112, 112, device=device)
    measure("ResNet-18 shape, 112x112", resnet, x, 64, args.repeats, args.reference_images, device)
    from cfx.demo import load_demo

    demo = load_demo("shapes", progress=False).classifier.to(device)
    xs = load_demo("shapes", progress=False).data.split("test")[0].repeat(3, 1, 1, 1).to(device)
    measure("demo CNN, 32x32", demo, xs, 64, args.repeats, args.reference_images * 4, device)


if __name__ == "__main__":
    main()
