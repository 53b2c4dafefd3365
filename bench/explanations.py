"""Six-cause benchmark of the offline evidence reporter on demo data (the explanation study), see
:func:`cfx.demo.explanation_benchmark`.

Prints, per cause and strength, how many modified test images were kept (PaRCE competency < 0.9) and the accuracy
of the named cause; the accuracy per cause and the unweighted mean; the ablation without counterfactual evidence;
and each generator alone (Reco, LGD, LNN).

    python bench/explanations.py [--dataset shapes|digits] [--per-cause 100] [--seed 1] [--edit-search full]
"""

from __future__ import annotations

import argparse
import time

from cfx.demo import demo_fitted, explanation_benchmark, load_demo


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--per-cause", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1, help="Seed of the cause application and the sample drawn.")
    parser.add_argument("--edit-search", default="auto", choices=["auto", "screened", "full"],
                        help="How the restoring edit and the property curves are searched.")
    args = parser.parse_args()
    demo = load_demo(args.dataset, progress=False)
    fitted = demo_fitted(demo, progress=False)
    t0 = time.perf_counter()
    r = explanation_benchmark(demo, fitted, per_cause=args.per_cause, seed=args.seed, progress=True,
                              search=args.edit_search)
    seconds = time.perf_counter() - t0
    print(f"\n{args.dataset}: up to {args.per_cause} images per cause, seed {args.seed}, edit search "
          f"{args.edit_search}, {seconds:.0f} s\n")
    print("| cause | strength | kept (competency < 0.9) | explained | accuracy |\n|---|---|---|---|---|")
    for cause, c in r["causes"].items():
        for k, s in c["per_strength"].items():
            print(f"| {cause} | {k:g} | {s['kept']} | {s['n']} | {s['accuracy']:.3f} |")
    views = r["views"]
    print("\n| cause | " + " | ".join(views) + " |\n|---|" + "---|" * len(views))
    for cause in views["all"]["per_cause"]:
        print(f"| {cause} (n = {views['all']['counts'][cause]}) | "
              + " | ".join(f"{v['per_cause'][cause]:.3f}" for v in views.values()) + " |")
    print("| **mean over causes** | " + " | ".join(f"**{v['mean']:.3f}**" for v in views.values()) + " |")


if __name__ == "__main__":
    main()
