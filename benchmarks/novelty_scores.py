"""Which per-cell score flags a left-out cell type? An exploration beside uncertainty.py.

    python benchmarks/novelty_scores.py --splits "B cells,CD4 T,CD8 T"

On kang's leave-one-type-out splits of ``uncertainty.py`` (scARKIDS reference with
``encode_batch=True``, ``load_query_data``, unsupervised query session), prints the AUROC of
flagging the left-out type's query cells by: the prior's novelty (``SCARKIDS.novelty``), the
mean distance to the 15 nearest reference codes, the reconstruction NLL per count (ZINB at
the encoder mean, own batch) and the encoder's mean posterior sd.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import uncertainty  # noqa: E402


def scores_of_split(ref, query, seed: int = 0) -> dict[str, np.ndarray]:
    import torch
    from sklearn.neighbors import NearestNeighbors

    from scarkids import SCARKIDS
    from scarkids.distributions.counts import count_log_prob

    SCARKIDS.setup_anndata(ref, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS(ref, seed=seed, encode_batch=True).train(seed=seed, progress_bar=False)
    zr = model.get_latent_representation(ref)
    q = query.copy()
    q.obs = q.obs[["batch"]].copy()
    SCARKIDS.setup_anndata(q, batch_key="batch")
    mapped = SCARKIDS.load_query_data(q, model).train(seed=seed, progress_bar=False)
    z = mapped.get_latent_representation(q)
    out = {"novelty": mapped.novelty(latent=z)}
    out["kNN distance"] = NearestNeighbors(n_neighbors=15).fit(zr).kneighbors(z)[0].mean(1)
    rec, std = [], []
    with torch.no_grad():
        for _, x, b in mapped._chunks(q, 1024):
            inf = mapped.module.inference(x, b, sample=False)
            g = mapped.module.generative(inf["z"], b, inf["log_library"])
            lp = count_log_prob(x, g["log_mu"], g["log_theta"], g["dropout_logits"]).sum(-1)
            rec.append((-lp / x.sum(-1).clamp_min(1)).numpy())
            std.append(inf["qz_std"].mean(-1).numpy())
    out["reconstruction NLL per count"] = np.concatenate(rec)
    out["posterior sd"] = np.concatenate(std)
    return out


def main(argv=None) -> int:
    from sklearn.metrics import roc_auc_score

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", default="B cells,CD4 T,CD8 T")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not uncertainty.DATA.exists():
        print(f"{uncertainty.DATA} not found: the shared datasets are needed; nothing to do")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    for split, ref, query, left in uncertainty.splits("kang"):
        if not any(k in split for k in args.splits.split(",")):
            continue
        is_new = query.obs["cell_type"].astype(str).to_numpy() == left
        res = scores_of_split(ref, query)
        print(split, {k: round(roc_auc_score(is_new, v), 3) for k, v in res.items()}, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
