"""Does blur earn a place as a seventh cause? How often each cause makes a competent image untrusted, and what the
evidence reporter names for blurred images. (It did: blur is now the registered cause ``SHIFTS["blur"]``.)

For each data set of ``bench/explanations.py`` (shapes, colour digits, photographs with EfficientNet-Lite0): the
sources are the images the classifier gets right with competency at least the fitted threshold. Each registered
cause in each direction is applied at every strength of its grid, and Gaussian blur at σ = 1, 2, 3, 5 and 8 % of
the image side. Prints the share of (source, strength) pairs whose competency fell below the threshold, and, for up
to ``--explain`` kept blurred images, the causes the evidence reporter names.

    python bench/blur_cause.py [--datasets shapes,colour-digits,photos] [--explain 40]
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from explanations import colour_digits_setup, photos_setup  # noqa: E402

from cfx.core.images import is_grey  # noqa: E402
from cfx.core.shifts import CAUSE_DIRECTIONS, SHIFTS, apply_shift  # noqa: E402
from cfx.demo import demo_fitted, load_demo  # noqa: E402
from cfx.evidence import collect_evidence  # noqa: E402
from cfx.generators import parametric_editors  # noqa: E402
from cfx.prompts import EvidenceReporter  # noqa: E402

BLUR = (0.01, 0.02, 0.03, 0.05, 0.08)  # σ as a share of the image side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="shapes,colour-digits,photos")
    parser.add_argument("--explain", type=int, default=40)
    parser.add_argument("--cache", default="/tmp/cfx-bench")
    parser.add_argument("--sources", type=int, default=400)
    args = parser.parse_args()
    blur = next(e for e in parametric_editors() if e.property == "blur")
    for name in args.datasets.split(","):
        if name == "shapes":
            demo = load_demo("shapes", progress=False)
            clf, fitted = demo.classifier, demo_fitted(demo, progress=False)
            x, y = demo.data.split("test")
        elif name == "colour-digits":
            clf, fitted, x, y = colour_digits_setup(Path(args.cache) / "colour-digits")
        else:
            clf, fitted, x, y = photos_setup(Path(args.cache) / "photos", args.sources)
        x = x.float()
        with torch.inference_mode():
            pred = clf.predict(x).cpu()
            score = fitted.parce.score(clf, x)
        threshold = fitted.parce.threshold
        ok = (score >= threshold) & (pred == (pred if y is None else y))
        src = x[ok]
        grey = is_grey(x)
        rows = []
        for (cause, direction), grid in CAUSE_DIRECTIONS.items():
            if (grey and SHIFTS.get(cause).colour) or cause == "blur":  # blur: measured below, on the σ list that
                continue                                                  # led to registering it as a cause
            with torch.inference_mode():
                fell = [float((fitted.parce.score(clf, apply_shift(src, cause, k, seed=j)) < threshold).float().mean())
                        for j, k in enumerate(grid)]
            rows.append((f"{cause}/{direction}", sum(fell) / len(fell)))
        side = x.shape[-1]
        kept = []
        fell = []
        for s in BLUR:
            blurred = blur.apply(src, torch.full((len(src),), s * side))
            with torch.inference_mode():
                low = fitted.parce.score(clf, blurred) < threshold
            fell.append(float(low.float().mean()))
            kept.append(blurred[low])
        rows.append(("blur (σ 1-8 % of the side)", sum(fell) / len(fell)))
        print(f"\n{name}: {int(ok.sum())} competent sources; share of changed images whose competency fell below "
              f"{threshold:g}, over the grid:")
        for group, share in rows:
            print(f"  {group:28s} {share:.2f}")
        pool = torch.cat(kept)
        if len(pool):
            pick = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:args.explain]]
            evidence = []
            for i in range(0, len(pick), 16):
                evidence += collect_evidence(clf, fitted, pick[i:i + 16])
            named = collections.Counter(EvidenceReporter().explain(e).cause for e in evidence)
            print(f"  blurred images explained as: {dict(named.most_common())}")


if __name__ == "__main__":
    main()
