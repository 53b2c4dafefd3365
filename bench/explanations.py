"""Six-cause accuracy of the offline evidence reporter on demo data (first version of the §A4/§A5 benchmark).

For each cause: test images modified at every strength of its grid, kept only when PaRCE competency falls below
0.9 (§A4); up to N per cause; evidence from Reco/LGD/LNN, the restoring edit and the image statistics; the
cause named by `EvidenceReporter`. Prints the confusion per cause and the accuracy per cause and their mean.

    python bench/explanations.py [--dataset shapes|digits] [--per-cause 60]
"""

from __future__ import annotations

import argparse
import collections

import torch

from cfx.demo import CAUSES, cause_examples, demo_fitted, load_demo
from cfx.evidence import collect_evidence
from cfx.prompts import EvidenceReporter, score_explanations


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--per-cause", type=int, default=60)
    args = parser.parse_args()
    demo = load_demo(args.dataset, progress=False)
    fitted = demo_fitted(demo, progress=False)
    clf = demo.classifier
    x, y = demo.data.split("test")
    reporter = EvidenceReporter()
    explanations, truth = [], []
    print("| cause | kept | named causes |\n|---|---|---|")
    for cause in CAUSES:
        ex = cause_examples(x, y, clf, cause, score=lambda im: fitted.parce.score(clf, im))
        if len(ex.images) == 0:
            print(f"| {cause} | 0 | (no image fell below the competency threshold) |")
            continue
        pick = torch.randperm(len(ex.images), generator=torch.Generator().manual_seed(0))[:args.per_cause]
        evidence = collect_evidence(clf, fitted, ex.images[pick], generators=("lgd", "lnn"))
        exps = [reporter.explain(e) for e in evidence]
        named = collections.Counter(e.cause for e in exps)
        print(f"| {cause} | {len(exps)} | " + ", ".join(f"{k} {v}" for k, v in named.most_common()) + " |", flush=True)
        explanations += exps
        truth += [cause] * len(exps)
    r = score_explanations(explanations, truth)
    print("\n| cause | accuracy |\n|---|---|")
    for cause, acc in r["per_cause"].items():
        print(f"| {cause} | {acc:.3f} (n = {r['counts'][cause]}) |")
    print(f"| mean over causes | {r['mean']:.3f} |")


if __name__ == "__main__":
    main()
