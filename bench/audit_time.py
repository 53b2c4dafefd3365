"""Time `cfx.audit` on 2000 images of the demo world's biased variant at 32×32 (issue 9: ≤ 5 minutes on 2 cores).

Every image is scored, flagged and sliced, and all 2000 get the property edits: 10 parametric editors plus 13
re-rendered generating attributes (both directions for the parametric ones, 8 steps, 200 shuffles). Prints the
time of each part, the top of the property ranking and the flagged slices.

    python bench/audit_time.py [--images 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

import cfx
from cfx.demo import BANDS, demo_fitted, load_demo


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    models = load_demo("shapes-biased", progress=False)
    fitted = demo_fitted(models, progress=False)
    data = models.data
    idx = torch.cat([data.splits["test"], data.splits["calibration"]])[:args.images]
    source = cfx.TensorSource(data.images[idx], data.labels[idx], ids=[f"{data.name}-{i}" for i in idx.tolist()],
                              metadata=[data.metadata[i] for i in idx.tolist()], class_names=data.class_names)
    nuisance = [k for k in BANDS if k != "rotation"]
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = cfx.audit(models.classifier, source, fitted, out, nuisance=nuisance, sample=args.images,
                           progress=False)
        seconds = time.perf_counter() - t0
    print(f"audit of {len(source)} images ({result['counts']['property_sample']} edited): {seconds:.1f} s "
          f"(property edits {result['timing']['property_seconds']:.1f} s)")
    print("| rank | property | edit | mean EPGM | nuisance rank | flagged |\n|---|---|---|---|---|---|")
    for r in result["properties"][:8]:
        print(f"| {r['rank']} | {r['property']} | {r['kind']} | {r['mean_epgm']:.4f} | {r.get('nuisance_rank', '')} | "
              f"{r['flagged']} |")
    print("\nflagged slices:")
    for s in [s for s in result["slices"] if s["flagged"]][:10]:
        print(f"  {s['column']} = {s['slice']}: n {s['n']}, accuracy {s['accuracy']:.3f} (rest "
              f"{s['accuracy_rest']:.3f}), flag rate {s['flag_rate']:.3f} (rest {s['flag_rate_rest']:.3f})")


if __name__ == "__main__":
    main()
