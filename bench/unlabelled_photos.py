"""No labels, nothing fitted: the real ImageNet EfficientNet-Lite0 on a folder of photographs, through the CLI.

Builds a flat folder (no labels) of ``--clean`` 224-px crops of scikit-image's photographs at several positions and
scales, plus the same crops with a cause applied (one per crop, in turn: darkened ×0.35, washed out to 30 %
contrast, Gaussian noise σ = 0.12, Gaussian blur radius 3). Then, as a user would:

1. ``cfx explain`` with no ``--fitted`` and ``--flag-share 20``;
2. ``cfx audit`` with no ``--fitted`` on the same folder;
3. ``cfx fit`` on a separate folder of unlabelled reference crops, then ``cfx explain --fitted`` on a subset.

Prints the flag rate of clean and of each cause, the corrupted/clean ratio, whether every flagged image got
counterfactuals, a restoring edit and an explanation, the causes named per injected cause, and seconds per flagged
image. The crop seed (7) and the photographs held out from the flag-score measurement
(``bench/flag_score_variants.py``: the stereo motorcycle pair) are reported separately.

    python bench/unlabelled_photos.py [--clean 200] [--fitted-clean 60] [--out /tmp/cfx-photos]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from real_224 import crops as crop_photos  # noqa: E402  (one crop recipe for both photograph benchmarks)
sys.path.insert(0, str(ROOT / "tests"))
from factories import LITE_CLI  # noqa: E402  (EfficientNet-Lite0's own normalisation)
MODEL = ["--model", f"python:{ROOT / 'tests' / 'factories.py'}:efficientnet_lite0", *LITE_CLI]
HELD_OUT = ("motorcycle_left", "motorcycle_right")
CAUSES = ("dark", "washed_out", "noise", "blur")


def photographs() -> dict[str, np.ndarray]:
    import skimage.data as data

    out = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field", "immunohistochemistry",
                 "retina", "camera", "coins", "moon", "brick", "grass", "gravel", "clock", "horse"):
        img = np.asarray(getattr(data, name)())
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        out[name] = img[..., :3].astype(np.uint8)
    left, right = data.stereo_motorcycle()[:2]
    out["motorcycle_left"], out["motorcycle_right"] = left[..., :3], right[..., :3]
    return out


def crops(photos: dict[str, np.ndarray], n: int, seed: int) -> list[tuple[str, Image.Image]]:
    return crop_photos(photos, n, np.random.default_rng(seed), scale=(0.35, 0.95))


def apply(cause: str, img: Image.Image, rng: np.random.Generator) -> Image.Image:
    if cause == "blur":
        return img.filter(ImageFilter.GaussianBlur(3))
    x = np.asarray(img, dtype=np.float32) / 255
    if cause == "dark":
        x = x * 0.35
    elif cause == "washed_out":
        x = x.mean() + 0.3 * (x - x.mean())
    elif cause == "noise":
        x = x + rng.normal(0, 0.12, x.shape)
    return Image.fromarray((x.clip(0, 1) * 255).round().astype(np.uint8))


def folder_items(items: list[tuple[str, Image.Image]], corrupt: bool, seed: int):
    """``(name, cause, photo, image)`` of the folder, in order: each crop ("clean") and, with ``corrupt``, its
    corrupted copy (the causes in turn, one seeded generator for the noise)."""
    rng = np.random.default_rng(seed)
    for i, (photo, img) in enumerate(items):
        yield f"{i:04d}-c", "clean", photo, img
        if corrupt:
            cause = CAUSES[i % len(CAUSES)]
            yield f"{i:04d}-x", cause, photo, apply(cause, img, rng)


def write_folder(folder: Path, items: list[tuple[str, Image.Image]], corrupt: bool, seed: int) -> dict[str, str]:
    """PNG files named by index; returns file name → cause ("clean" or the cause) and photo."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    truth = {}
    for name, cause, photo, img in folder_items(items, corrupt, seed):
        img.save(folder / f"{name}.png")
        truth[name] = (cause, photo)
    return truth


def _truth(items: list[tuple[str, Image.Image]]):
    """The names and causes :func:`write_folder` gives, without writing anything."""
    for i, (photo, _) in enumerate(items):
        yield f"{i:04d}-c", ("clean", photo)
        yield f"{i:04d}-x", (CAUSES[i % len(CAUSES)], photo)


def cfx(*args: str) -> tuple[str, float]:
    t = time.perf_counter()
    command = shutil.which("cfx") or str(Path(sys.executable).parent / "cfx")  # the installed console script
    result = subprocess.run([command, *args, "--quiet"], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"cfx {' '.join(args)} failed:\n{result.stdout}\n{result.stderr[-3000:]}")
    return result.stdout, time.perf_counter() - t


def report_run(out: Path, truth: dict[str, tuple[str, str]], label: str) -> dict:
    import sqlite3

    summary = json.loads((out / "summary.json").read_text())
    key = lambda sid: Path(sid).stem  # noqa: E731  (a folder's ids are relative paths)
    rows = [s for s in summary["samples"] if s["error"] is None]
    rates = {}
    for group in ("clean", *CAUSES):
        flags = [s["flagged"] for s in rows if truth[key(s["id"])][0] == group]
        if flags:
            rates[group] = float(np.mean(flags))
    corrupted = [s["flagged"] for s in rows if truth[key(s["id"])][0] != "clean"]
    rates["corrupted"] = float(np.mean(corrupted)) if corrupted else float("nan")
    held = [s for s in rows if truth[key(s["id"])][1] in HELD_OUT]
    db = sqlite3.connect(out / "run.sqlite")
    kinds = Counter(k for (k,) in db.execute("SELECT kind FROM images"))
    flagged = [s for s in rows if s["flagged"]]
    complete = sum(1 for s in flagged if s["explanation"] and s["cause"])
    causes: dict[str, Counter] = {}
    for s in flagged:
        causes.setdefault(truth[key(s["id"])][0], Counter())[s["cause"]] += 1
    t = summary["timing"]
    per_flagged = (t.get("explain_seconds") or 0) / max(1, summary["counts"]["explained"])
    print(f"\n## {label}")
    print(f"flag score {summary['flag_score']['score']}: {summary['flag_score']['reason']}")
    print(f"images {len(rows)}, flagged {len(flagged)}, explained with an explanation {complete}; stored images by "
          f"kind {dict(kinds)}")
    print("flag rate: " + ", ".join(f"{k} {v:.3f}" for k, v in rates.items())
          + f"; corrupted / clean = {rates['corrupted'] / max(rates['clean'], 1e-9):.2f}")
    if held:
        hc = [s["flagged"] for s in held if truth[key(s["id"])][0] == "clean"]
        hx = [s["flagged"] for s in held if truth[key(s["id"])][0] != "clean"]
        print(f"held-out photographs ({', '.join(HELD_OUT)}): clean {np.mean(hc):.3f} (n {len(hc)}), corrupted "
              f"{np.mean(hx):.3f} (n {len(hx)})")
    print("causes named per injected cause: " + "; ".join(f"{k}: {dict(v)}" for k, v in sorted(causes.items())))
    print(f"seconds: scoring {(t.get('score_seconds') or 0) / len(rows):.3f} per image, explaining "
          f"{per_flagged:.1f} per flagged image")
    print(f"reference: {json.dumps(summary.get('reference'))}")
    share = summary["threshold"].get("share") or 20.0
    ratios = {}
    for name in rows[0]["scores"]:
        values = np.array([s["scores"][name] for s in rows], dtype=float)
        flags = values < np.percentile(values, share)
        clean = np.array([truth[key(s["id"])][0] == "clean" for s in rows])
        ratios[name] = flags[~clean].mean() / max(flags[clean].mean(), 1e-9)
    print(f"every stored score flagging the {share:g} % least trusted: corrupted / clean flag rate "
          + ", ".join(f"{k} {v:.2f}" for k, v in sorted(ratios.items(), key=lambda kv: -kv[1])))
    return {"rates": rates, "flagged": len(flagged), "complete": complete, "per_flagged": per_flagged}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", type=int, default=200, help="clean crops (each also gets one corrupted copy)")
    parser.add_argument("--fitted-clean", type=int, default=60, help="clean crops for the run with a fitted folder")
    parser.add_argument("--reference", type=int, default=120, help="unlabelled reference crops for cfx fit")
    parser.add_argument("--flag-share", type=float, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="/tmp/cfx-photos")
    parser.add_argument("--skip-fitted", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="print the tables of runs already in --out")
    parser.add_argument("--skip-explain", action="store_true", help="keep the unfitted run already in --out")
    args = parser.parse_args()
    out = Path(args.out)
    photos = photographs()
    if args.report_only:
        truth = dict(_truth(crops(photos, args.clean, args.seed)))
        report_run(out / "review", truth, "cfx explain, no labels, no fitted folder")
        if (out / "review-fitted" / "summary.json").is_file():
            small = dict(_truth(crops(photos, args.fitted_clean, args.seed + 1)))
            report_run(out / "review-fitted", small, "cfx explain --fitted (unlabelled reference)")
        return
    truth = (dict(_truth(crops(photos, args.clean, args.seed))) if args.skip_explain else
             write_folder(out / "photos", crops(photos, args.clean, args.seed), corrupt=True, seed=args.seed))
    print(f"{len(truth)} images ({args.clean} clean crops of {len(photos)} photographs + one corrupted copy each)")
    share = f"{args.flag_share:g}"
    if not args.skip_explain:
        _, seconds = cfx("explain", *MODEL, "--data", str(out / "photos"), "--flag-share", share,
                         "--out", str(out / "review"), "--restart")
        report_run(out / "review", truth, f"cfx explain, no labels, no fitted folder ({seconds:.0f} s)")
    printed, seconds = cfx("audit", *MODEL, "--data", str(out / "photos"), "--flag-share", share, "--sample", "40",
                           "--steps", "4", "--out", str(out / "audit"), "--restart")
    audit = json.loads((out / "audit" / "audit.json").read_text())
    print(f"\n## cfx audit, no fitted folder ({seconds:.0f} s)\n{printed.strip()}")
    print(f"neighbours: {audit['neighbours'].get('n')} flagged, searched in {audit['neighbours'].get('searched')}; "
          f"nearest trusted image has the predicted class in "
          f"{audit['neighbours'].get('share_agreeing_with_prediction')}")
    if args.skip_fitted:
        return
    write_folder(out / "reference", crops(photos, args.reference, args.seed + 100), corrupt=False, seed=0)
    printed, seconds = cfx("fit", *MODEL, "--train", str(out / "reference"), "--out", str(out / "fitted"))
    print(f"\n## cfx fit on {args.reference} unlabelled reference crops ({seconds:.0f} s)\n{printed.strip()}")
    small = write_folder(out / "photos-small", crops(photos, args.fitted_clean, args.seed + 1), corrupt=True,
                         seed=args.seed + 1)
    _, seconds = cfx("explain", *MODEL, "--data", str(out / "photos-small"), "--fitted", str(out / "fitted"),
                     "--flag-share", share, "--out", str(out / "review-fitted"), "--restart")
    report_run(out / "review-fitted", small, f"cfx explain --fitted (unlabelled reference) ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
