"""Can the penultimate features rescue a GradTrust variant on unlabelled photographs (issue "No labels, no fitting")?

GradTrust's ratio ``max_c E_c / mean_c E_c`` cancels the features: the squared final-layer gradient is
``m_c · h_j²`` and the per-row variance over features is ``m_c² · Var(h²)``. Taking the variance over *all*
``(c, j)`` entries instead keeps them: ``E[m²] E[h⁴] − (E[m] E[h²])²`` (``m_c``: the squared cross-entropy
gradient of logit c, averaged over the top-5 counterfactual labels). This script measures, for EfficientNet-Lite0 at
224 px on crops of scikit-image's photographs (``bench/flag_score_variants.py``'s crops and four corruptions:
darkened, washed out, noise, blur), the clean-vs-corrupted AUROC and the corrupted/clean flag-rate ratio when the 20 %
least trusted of the pooled run are flagged, for:

- ``gradtrust_topk``, ``energy``, ``msp`` (the logit scores, for reference);
- ``feat_norm`` (‖h‖), ``feat_kurt`` (−E[h⁴]/E[h²]²);
- ``var_all`` (the all-entries variance, and its negation), ``cv2_all`` (its squared coefficient of variation);
- ``gt_topk_x_hnorm`` (log GradTrust-top-5 + 2 log ‖h‖).

    python bench/gradtrust_feature_variants.py [--seeds 2] [--crops 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from flag_score_variants import corruptions, crops, photographs  # noqa: E402


def logits_and_features(model, x: torch.Tensor, batch: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    zs, hs = [], []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            z, h = model.logits_and_features(x[i:i + batch])
            zs.append(z)
            hs.append(h)
    return torch.cat(zs).double(), torch.cat(hs).double()


def variants(z: torch.Tensor, h: torch.Tensor, k: int = 5) -> dict[str, np.ndarray]:
    from cfx.trust.functional import gradtrust

    p = torch.softmax(z, 1)
    top = z.topk(k, 1).indices
    onehot = torch.zeros(len(z), k, z.shape[1], dtype=z.dtype).scatter_(2, top.unsqueeze(2), 1.0)
    m = ((p.unsqueeze(1) - onehot) ** 2).mean(1)                 # (N, C): squared CE gradient, top-k mean
    em2, em = (m ** 2).mean(1), m.mean(1)
    h2 = h ** 2
    eh4, eh2 = (h2 ** 2).mean(1), h2.mean(1)
    var_all = em2 * eh4 - (em * eh2) ** 2
    gt = gradtrust(z.float(), labels="topk").double()
    out = {"gradtrust_topk": gt, "energy": torch.logsumexp(z, 1), "msp": p.max(1).values,
           "feat_norm": h.norm(dim=1), "feat_kurt": -(eh4 / eh2 ** 2), "var_all": var_all, "neg_var_all": -var_all,
           "cv2_all": em2 * eh4 / (em * eh2) ** 2, "gt_topk_x_hnorm": gt.log() + 2 * h.norm(dim=1).log()}
    return {name: v.numpy() for name, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--crops", type=int, default=200)
    args = parser.parse_args()
    from factories import efficientnet_lite0_classifier

    torch.set_num_threads(2)
    model = efficientnet_lite0_classifier()
    photos = photographs()
    results: dict[str, list] = {}
    for seed in range(args.seeds):
        x = crops(photos, args.crops, seed)
        clean = variants(*logits_and_features(model, x))
        corrupted = {c: variants(*logits_and_features(model, xc)) for c, xc in corruptions(x, seed).items()}
        bad = np.r_[np.zeros(len(x)), np.ones(len(x) * len(corrupted))]
        for name in clean:
            s = np.concatenate([clean[name]] + [corrupted[c][name] for c in corrupted])
            flagged = np.zeros(len(s), bool)
            flagged[np.argsort(s, kind="stable")[:int(0.2 * len(s))]] = True
            ratio = flagged[bad == 1].mean() / max(flagged[bad == 0].mean(), 1e-9)
            per_cause = {c.split()[0]: roc_auc_score(np.r_[np.zeros(len(x)), np.ones(len(x))],
                                                     -np.r_[clean[name], corrupted[c][name]]) for c in corrupted}
            results.setdefault(name, []).append((roc_auc_score(bad, -s), ratio, per_cause))
    print(f"| score | AUROC clean vs corrupted | corrupted/clean flag rate at 20 % | "
          f"{' | '.join(next(iter(results.values()))[0][2])} |")
    print("|---|---|---|" + "---|" * len(next(iter(results.values()))[0][2]))
    for name, rows in results.items():
        causes = " | ".join(f"{np.mean([r[2][c] for r in rows]):.2f}" for c in rows[0][2])
        print(f"| {name} | {np.mean([r[0] for r in rows]):.3f} | {np.mean([r[1] for r in rows]):.2f} | {causes} |")


if __name__ == "__main__":
    main()
