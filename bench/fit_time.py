"""Time `cfx fit` (autoencoder, PaRCE, Mahalanobis, calibration percentiles; no oracle) on N demo images.

    python bench/fit_time.py [--n 4000] [--oracle]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from cfx.core.data import TensorSource
from cfx.demo import load_demo
from cfx.jobs import fit


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--oracle", action="store_true")
    args = parser.parse_args()
    demo = load_demo("shapes", progress=False)
    idx = torch.cat([demo.data.splits["train"], demo.data.splits["calibration"]])[:args.n]
    source = TensorSource(demo.data.images[idx], demo.data.labels[idx])
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        fitted = fit(demo.classifier, source, out, oracle=args.oracle, progress=False)
        seconds = time.perf_counter() - t0
    m = fitted.manifest
    print(f"cfx fit on {args.n} images of 32x32 ({torch.get_num_threads()} threads, oracle={args.oracle}): "
          f"{seconds:.1f} s; autoencoder loss {m['autoencoder']['final_loss']:.4f}, PaRCE z* {m['parce']['z_star']}")


if __name__ == "__main__":
    main()
