"""What explaining one flagged image costs, per stage, in seconds and in plain forward passes of the same model, and
whether the screened edit search gives the exhaustive search's answers.

Runs :func:`cfx.evidence.collect_evidence` (generators Reco, LGD and LNN, a fitted folder) on the same images three
ways, side by side in one run (LGD, which the search does not change, once on ``--lgd-images`` of them): the property edits as the first build made them (the restoring search and the curves
as separate passes, ``restoring_edits`` + ``property_curve``), ``search="full"`` (one shared pass, every direction
at every strength) and ``search="screened"``. Each stage's seconds per image are divided by a plain forward pass
per image measured in the same run ("forward-pass equivalents"). Then: how often the screened restoring edit agrees
with the full one (same property and direction with the strength within one grid step, or both find nothing), and
the evidence reporter's causes under both (from the evidence of Reco and LNN: LGD is the same under both). Last, on
the ``--lgd-images``, the causes named with the evidence stage's LGD schedule against the 10-step one it replaced.

    python bench/explain_cost.py --model efficientnet [--fitted /tmp/cfx-real224/fitted] [--images 40]
    python bench/explain_cost.py --model demo:shapes [--images 150]     # the demo CNN at 32 px, the causes of cfx.core.shifts applied
    python bench/explain_cost.py --model demo:shapes --against-previous 5   # throughput against the previous settings

``--against-previous N`` times the whole evidence stage (generators Reco, LGD and LNN, screened search) N times
under the current settings and N times under the previous ones (pixelation screened like every editor; LGD in 3
steps of 1/30), alternating in one process, and prints the ratio of images explained per second.

``--model efficientnet`` is the real EfficientNet-Lite0 at 224 px; the folder comes from ``bench/real_224.py``. Its
images are the incoming crops and reference crops with one of the causes applied, the least competent kept.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from cfx.generators import parametric_editors, property_curve, restoring_edits
from cfx.prompts import EvidenceReporter

import cfx
from cfx.demo.causes import CAUSES, apply_cause, cause_examples
from cfx.evidence import collect_evidence, resolve_edit_ranges

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def load(args):
    torch.manual_seed(0)
    if args.model == "efficientnet":
        from factories import efficientnet_lite0_classifier

        model = efficientnet_lite0_classifier()
        fitted = cfx.Fitted.load(args.fitted, model)
        folder = Path(args.fitted).parent
        incoming, reference = (next(iter(cfx.iter_batches(cfx.open_source(folder / f), 512, size=(224, 224)))).images
                               for f in ("incoming.csv", "reference.csv"))
        g = torch.Generator().manual_seed(args.seed)
        causes = list(CAUSES)
        changed = []
        for i in range(len(reference)):
            cause = causes[i % len(causes)]
            k = CAUSES[cause][int(torch.randint(len(CAUSES[cause]), (1,), generator=g))]
            changed.append(apply_cause(reference[i:i + 1], cause, k, seed=args.seed + i))
        pool = torch.cat([incoming, *changed])
    else:
        from cfx.demo import demo_fitted, load_demo

        demo = load_demo(args.model.split(":", 1)[1], progress=False)
        model, fitted = demo.classifier, demo_fitted(demo, progress=False)
        x, y = demo.data.split("test")
        parts = []
        for cause in CAUSES:
            ex = cause_examples(x, y, model, cause, score=lambda im: fitted.parce.score(model, im), seed=args.seed)
            parts.append(ex.images[torch.randperm(len(ex.images))[:max(1, args.images // len(CAUSES))]])
        pool = torch.cat(parts)
    with torch.inference_mode():
        competency = fitted.parce.score(model, pool)
    return model, fitted, pool[competency.argsort()[:args.images]].float()  # the least competent: what gets flagged


def legacy_edits(model, fitted, images, ranges, steps=8):
    """The property edits as the first build made them: two separate searches."""
    score_fn = lambda x: fitted.parce.competency_from(model.logits(x), x)
    editors = parametric_editors()
    restoring_edits(score_fn, images, [e for e in editors if e.restores], steps=steps, ranges=ranges)
    [property_curve(model, e, images, ranges.strengths(e, images, e.directions[0], steps), permutations=200)
     for e in editors]


def agrees(full: dict, screened: dict, end: float, neutral: float, steps: int = 8) -> bool:
    """Whether a screened restoring edit is the full one (``{"property", "direction", "strength"}`` each): the same
    property and direction with the strength within one grid step (``end``: where the direction's range ends for
    the image), or both find nothing."""
    if full["property"] == "none" or screened["property"] == "none":
        return full["property"] == screened["property"]
    return ((full["property"], full["direction"]) == (screened["property"], screened["direction"])
            and abs(full["strength"] - screened["strength"]) <= abs(end - neutral) / steps + 1e-6)


def agreement(fitted, images, full: list[dict], screened: list[dict], steps: int = 8) -> float:
    """Share of images whose screened restoring edit is the full one (:func:`agrees`)."""
    ranges = resolve_edit_ranges("reference", fitted)
    editors = {e.property: e for e in parametric_editors()}
    same = 0
    for i, (a, b) in enumerate(zip(full, screened)):
        e = editors.get(a["property"])
        end = float(ranges.limits(e, images[i:i + 1], a["direction"])[0]) if e is not None else 0.0
        same += agrees(a, b, end, e.neutral if e is not None else 0.0, steps)
    return same / len(full)


def data_arguments(parser: argparse.ArgumentParser, images: int, seed: int) -> argparse.ArgumentParser:
    """The options :func:`load` reads."""
    parser.add_argument("--model", default="efficientnet")
    parser.add_argument("--fitted", default="/tmp/cfx-real224/fitted")
    parser.add_argument("--images", type=int, default=images)
    parser.add_argument("--seed", type=int, default=seed)
    return parser


def lgd_after(evidence) -> float:
    return next(c["score_after"] for c in evidence.counterfactuals if c["method"] == "lgd")


def against_previous(model, fitted, images, pairs: int) -> None:
    """Images explained per second under the current settings and the previous ones, alternating in one run."""
    from cfx.generators import Pixelation

    current = dict(cfx.evidence.LGD_SCHEDULE)

    def timed(previous: bool) -> float:
        Pixelation.discrete_strengths = not previous
        cfx.evidence.LGD_SCHEDULE.update(dict(steps=3, lr=1 / 30) if previous else current)
        try:
            t = time.perf_counter()
            collect_evidence(model, fitted, images, generators=("reco", "lgd", "lnn"), search="screened")
            return len(images) / (time.perf_counter() - t)
        finally:
            Pixelation.discrete_strengths = True
            cfx.evidence.LGD_SCHEDULE.update(current)

    timed(False)  # warm-up
    rates = {"current": [], "previous": []}
    for _ in range(pairs):
        rates["current"].append(timed(False))
        rates["previous"].append(timed(True))
    ratios = sorted(c / p for c, p in zip(rates["current"], rates["previous"]))
    median = lambda v: sorted(v)[len(v) // 2]
    print(f"{len(images)} images, {pairs} alternating pairs: images explained per second, current "
          f"{median(rates['current']):.1f} against previous {median(rates['previous']):.1f}; ratio of pairs median "
          f"{median(ratios):.3f} (range {ratios[0]:.3f}-{ratios[-1]:.3f})")


def main() -> None:
    parser = data_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), images=40, seed=3)
    parser.add_argument("--lgd-images", type=int, default=8,
                        help="LGD's cost, and its causes against the 10-step schedule, are measured on this many.")
    parser.add_argument("--no-first-build", action="store_true",
                        help="Skip the first build's property edits (the slowest part; for agreement runs).")
    parser.add_argument("--against-previous", type=int, default=0, metavar="N",
                        help="Only time the evidence stage N times under the current and the previous settings.")
    args = parser.parse_args()
    model, fitted, images = load(args)
    if args.against_previous:
        return against_previous(model, fitted, images, args.against_previous)
    n = len(images)
    ranges = resolve_edit_ranges("reference", fitted)
    def plain_forward() -> float:
        with torch.inference_mode():
            t = time.perf_counter()
            for i in range(0, n, 64):
                model.logits(images[i:i + 64])
            return (time.perf_counter() - t) / n

    with torch.inference_mode():
        model.logits(images[:2])
    plain_forward()  # warm-up: the first full pass runs slower (allocations), it would shrink every FPE figure
    forwards = [plain_forward()]  # the unit: measured before, between and after the stages, the median kept
    legacy = None
    if not args.no_first_build:
        t = time.perf_counter()
        legacy_edits(model, fitted, images, ranges)
        legacy = (time.perf_counter() - t) / n
    forwards.append(plain_forward())
    runs, timings = {}, {}
    for search in ("full", "screened"):  # LGD does not depend on the search: it runs once, on a subset, below
        timings[search] = {}
        runs[search] = collect_evidence(model, fitted, images, search=search, timings=timings[search],
                                        generators=("reco", "lnn"))
        forwards.append(plain_forward())
    lgd_images = images[:args.lgd_images]
    lgd: dict[str, float] = {}
    collect_evidence(model, fitted, lgd_images[:2], generators=("lgd",))  # warm-up: a process's first backward pass
    with_lgd = collect_evidence(model, fitted, lgd_images, generators=("reco", "lgd", "lnn"), timings=lgd)
    forwards.append(plain_forward())
    schedule = dict(cfx.evidence.LGD_SCHEDULE)
    cfx.evidence.LGD_SCHEDULE.update(steps=10, lr=1e-2)  # the schedule before this one, for the causes it names
    try:
        with_lgd_10 = collect_evidence(model, fitted, lgd_images, generators=("reco", "lgd", "lnn"))
    finally:
        cfx.evidence.LGD_SCHEDULE.update(schedule)
    for search in runs:
        timings[search]["lgd"] = lgd["lgd"] / len(lgd_images) * n
        timings[search]["total"] = sum(timings[search].values())
    forward = sorted(forwards)[len(forwards) // 2]
    print(f"{args.model}: {n} images at {tuple(images.shape[-2:])}, plain forward {forward * 1000:.2f} ms/image "
          f"(median of {', '.join(f'{f * 1000:.2f}' for f in forwards)})\n")
    print("| stage | first build | full search | screened search | screened, s per image |\n|---|---|---|---|---|")
    for stage in ["scores", "property edits", "statistics", "reco", "lgd", "lnn", "total"]:
        first = f"{legacy / forward:.0f}" if stage == "property edits" and legacy is not None else ""
        print(f"| {stage} | {first} | " + " | ".join(f"{timings[s].get(stage, 0.0) / n / forward:.1f}"
                                                  for s in runs)
              + f" | {timings['screened'].get(stage, 0.0) / n:.3f} |")
    share = agreement(fitted, images, [e.restoring_edit for e in runs["full"]],
                      [e.restoring_edit for e in runs["screened"]])
    count = n
    reporter = EvidenceReporter()
    causes = {s: [reporter.explain(e).cause for e in runs[s]] for s in runs}
    same_cause = sum(a == b for a, b in zip(causes["full"], causes["screened"])) / n
    print(f"\nrestoring edit agreement (screened vs full): {share:.3f} of {count}; same cause named: {same_cause:.3f}")
    lgd_cause = sum(reporter.explain(a).cause == reporter.explain(b).cause for a, b in zip(with_lgd, with_lgd_10))
    print(f"LGD {schedule['steps']} steps against 10 steps (evidence of Reco, LGD and LNN), {len(with_lgd)} images: "
          f"same cause named {lgd_cause / len(with_lgd):.3f}; mean final competency "
          f"{sum(lgd_after(e) for e in with_lgd) / len(with_lgd):.4f} against "
          f"{sum(lgd_after(e) for e in with_lgd_10) / len(with_lgd):.4f}")


if __name__ == "__main__":
    main()
