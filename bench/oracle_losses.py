"""Trust oracle: steep slope vs CE (and focal, TCP) on the demo world, several seeds.

Each oracle is trained on the calibration split plus two corrupted copies of each image (cfx fit's default) and
evaluated on the test split clean and under every cause at every strength (pooled). Prints AUROC, TNR and TPR at
the oracle's own decision threshold (z > 0), per loss and seed, and the means.

    python bench/oracle_losses.py [--seeds 3] [--epochs 10] [--losses steep_slope,ce,focal,tcp]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cfx.demo import cause_conditions, load_demo
from cfx.jobs.fitting import oracle_training_set
from cfx.trust.fitted import TrustOracle
from cfx.trust.metrics import misprediction_metrics


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--losses", default="steep_slope,ce,focal,tcp")
    parser.add_argument("--dataset", default="shapes")
    args = parser.parse_args()
    demo = load_demo(args.dataset, progress=False)
    clf = demo.classifier
    xc, yc = demo.data.split("calibration")
    xc = (xc * 255).round().to(torch.uint8)
    x, y = demo.data.split("test")
    cond = cause_conditions(x, y)
    px, py = torch.cat([c[0] for c in cond.values()]), torch.cat([c[1] for c in cond.values()])
    correct = clf.predict(px) == py
    print(f"{args.dataset}: evaluation on {len(px)} images, classifier accuracy {correct.float().mean():.3f}")
    rows = {}
    for loss in args.losses.split(","):
        for seed in range(args.seeds):
            ox, oy = oracle_training_set(xc, yc, 2, seed)
            t0 = time.perf_counter()
            oracle = TrustOracle(loss=loss, epochs=args.epochs, seed=seed).fit(clf, ox, oy, progress=False)
            m = misprediction_metrics(oracle.score(px), correct, threshold=0.5)
            rows.setdefault(loss, []).append(m)
            print(f"{loss:12s} seed {seed}: AUROC {m['auroc']:.3f}  TNR@z>0 {m['tnr']:.3f}  TPR@z>0 {m['tpr']:.3f}  "
                  f"FPR@95 {m['fpr_at_95_tpr']:.3f}  ({time.perf_counter() - t0:.1f} s)")
    print("\n| loss | AUROC | TNR at z > 0 | TPR at z > 0 | FPR@95 |\n|---|---|---|---|---|")
    for loss, ms in rows.items():
        mean = lambda k: statistics.mean(m[k] for m in ms)  # noqa: E731
        print(f"| {loss} | {mean('auroc'):.3f} | {mean('tnr'):.3f} | {mean('tpr'):.3f} | {mean('fpr_at_95_tpr'):.3f} |")


if __name__ == "__main__":
    main()
