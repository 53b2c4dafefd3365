"""Scale-out on Ray: explaining flagged photographs with EfficientNet-Lite0 at 224 px, locally and on Ray actors.

Builds a flat folder (no labels) of 224-px crops of scikit-image's photographs, half of them with a cause applied
(the recipe of ``bench/unlabelled_photos.py``), then runs the same ``cfx explain --flag-share 20`` (no fitted
folder) three ways, one after another in this run:

- **local**: one process, torch on every core of the machine;
- **ray ×1**: ``--ray --ray-actors 1`` (one actor, 1 CPU);
- **ray ×2**: ``--ray --ray-actors 2`` (two actors, 1 CPU each).

Throughput is flagged images explained per second of the explaining stage (``timing.explain_seconds`` of each
run's summary.json: it includes creating the actor pool, each actor loading the model). It also prints each run's
wall time and Ray's fixed cost: starting a local Ray and creating and loading an actor pool, measured on its own.
Checks that the three runs flag the same images and name the same causes.

    python bench/ray_scale.py [--clean 100] [--generators nn] [--out /tmp/cfx-ray-bench]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from unlabelled_photos import MODEL, cfx, crops, photographs, write_folder  # noqa: E402


def ray_fixed_cost() -> dict[str, float]:
    """Seconds to start (and stop) a local Ray, and to create a 2-actor pool that loads the model, doing nothing."""
    import ray

    from cfx.core.data import FlatFolder
    from cfx.core.models import load_classifier
    from cfx.jobs.distributed import RayEngine, ray_map, ray_session, worker_context

    class Nothing:
        def __init__(self, context):
            from cfx.jobs.distributed import open_worker

            open_worker(context)

        def run(self, item):
            return item

    t = time.perf_counter()
    engine = RayEngine(actors=2)
    with ray_session(engine):
        started = time.perf_counter() - t
        classifier = load_classifier(MODEL[1], image_size=MODEL[3], mean=[float(v) for v in MODEL[5].split(",")],
                                     std=[float(v) for v in MODEL[7].split(",")])
        context = worker_context(engine, classifier, None, FlatFolder(ROOT / "bench"))
        t1 = time.perf_counter()
        list(ray_map(engine, Nothing, {"context": context}, [{"k": 0}, {"k": 1}]))
        pool = time.perf_counter() - t1
    assert not ray.is_initialized()
    return {"start_local_ray_s": round(started, 2), "actor_pool_with_model_s": round(pool, 2),
            "total_s": round(time.perf_counter() - t, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean", type=int, default=100, help="clean crops (each gets a corrupted copy)")
    parser.add_argument("--generators", default="nn")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="/tmp/cfx-ray-bench")
    args = parser.parse_args()
    out = Path(args.out)
    photos = photographs()
    write_folder(out / "photos", crops(photos, args.clean, args.seed), corrupt=True, seed=args.seed)
    common = [*MODEL, "--data", str(out / "photos"), "--flag-share", "20", "--generators", args.generators,
              "--restart"]
    ways = {"local": [], "ray x1": ["--ray", "--ray-actors", "1"], "ray x2": ["--ray", "--ray-actors", "2"]}
    results = {}
    for name, extra in ways.items():
        folder = out / name.replace(" ", "")
        _, wall = cfx("explain", *common, "--out", str(folder), *extra)
        summary = json.loads((folder / "summary.json").read_text())
        explained = summary["counts"]["explained"]
        seconds = summary["timing"]["explain_seconds"]
        results[name] = {"flagged": summary["counts"]["flagged"], "explained": explained,
                         "explain_seconds": round(seconds, 1), "flagged_per_s": explained / seconds,
                         "wall_s": round(wall, 1), "causes": summary["counts"]["causes"],
                         "flags": [s["id"] for s in summary["samples"] if s["flagged"]],
                         "by_id": {s["id"]: s.get("cause") for s in summary["samples"] if s["flagged"]}}
        print(f"{name:7s} flagged {results[name]['flagged']}, explained {explained} in {seconds:.1f} s "
              f"({explained / seconds:.3f} flagged/s); wall {wall:.1f} s", flush=True)
    fixed = ray_fixed_cost()
    same = all(r["flags"] == results["local"]["flags"] and r["by_id"] == results["local"]["by_id"]
               for r in results.values())
    two_vs_one = results["ray x2"]["flagged_per_s"] / results["ray x1"]["flagged_per_s"]
    two_vs_local = results["ray x2"]["flagged_per_s"] / results["local"]["flagged_per_s"]
    print(f"ray x2 / ray x1 throughput: {two_vs_one:.2f} (goal >= 1.6)")
    print(f"ray x2 / local throughput:  {two_vs_local:.2f} (goal >= 0.8)")
    print(f"Ray fixed cost: start a local Ray {fixed['start_local_ray_s']} s, a 2-actor pool loading the model "
          f"{fixed['actor_pool_with_model_s']} s")
    print(f"same flags and causes in all three runs: {same}")
    (out / "results.json").write_text(json.dumps({
        "runs": {k: {kk: vv for kk, vv in v.items() if kk not in ("flags", "by_id")} for k, v in results.items()},
        "ray2_over_ray1": two_vs_one, "ray2_over_local": two_vs_local, "fixed_cost": fixed, "same": same}, indent=1))


if __name__ == "__main__":
    main()
