"""Which per-cell score flags a left-out cell type? An exploration beside uncertainty.py.

    python benchmarks/novelty_scores.py --splits "B cells,CD14,CD4 T,CD8 T"

On kang's leave-one-type-out splits of ``uncertainty.py`` (scARKIDS reference with
``encode_batch=True``, ``load_query_data``, unsupervised query session), prints and writes
(``benchmarks/results/novelty_scores.md``) the AUROC of flagging the left-out type's query
cells by:

- the prior's novelty (``SCARKIDS.novelty``) and the mean distance to the 15 nearest
  reference codes (latent scores);
- the reconstruction NLL per count (ZINB at the encoder mean, own batch), and the same
  reconstruction as a goodness of fit: ``(NLL - E[NLL]) / sd[NLL]`` with the expectation and
  sd over 4 count vectors drawn from the cell's own decoded ZINB, which removes what the NLL
  owes to the cell's depth and profile (decoder scores);
- the density ratio ``log p_query(z) / p_ref(z)`` from the distances to the 30th nearest
  query and reference code (where the query has cells the reference lacks);
- where the left-out type lands (``lands on``): the reference type that most of its cells'
  15 nearest reference codes have, with the share of its cells for which it is so;
- the separability of the left-out type in the query codes, a reference point for any score
  computed from them: 5-fold cross-validated AUROC of a 15-NN classifier trained on the
  query codes *with* the true new / known labels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import uncertainty  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "novelty_scores.md"
N_FIT_DRAWS = 4


def decoder_scores(model, adata, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: reconstruction NLL per count, and its goodness-of-fit z-score."""
    import torch

    from scarkids.distributions.counts import count_log_prob_sum, sample_counts

    rng = np.random.default_rng(seed)
    per_count, fit = [], []
    with torch.no_grad():
        for _, x, b in model._chunks(adata, 1024):
            inf = model.module.inference(x, b, sample=False)
            g = model.module.generative(inf["z"], b, inf["log_library"])
            args = (g["log_mu"], g["log_theta"], g["dropout_logits"])
            nll = -count_log_prob_sum(x, *args)
            sims = torch.stack(
                [
                    -count_log_prob_sum(torch.as_tensor(sample_counts(*args, rng)), *args)
                    for _ in range(N_FIT_DRAWS)
                ]
            )
            per_count.append((nll / x.sum(-1).clamp_min(1)).numpy())
            fit.append(((nll - sims.mean(0)) / sims.std(0).clamp_min(1e-6)).numpy())
    return np.concatenate(per_count), np.concatenate(fit)


def scores_of_split(
    ref, query, is_new, seed: int = 0, classification_weight: float | None = None
) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

    from scarkids import SCARKIDS

    SCARKIDS.setup_anndata(ref, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS(ref, seed=seed, encode_batch=True)
    weight = (
        {} if classification_weight is None else {"classification_weight": classification_weight}
    )
    model.train(seed=seed, progress_bar=False, **weight)
    zr = model.get_latent_representation(ref)
    q = query.copy()
    q.obs = q.obs[["batch"]].copy()
    SCARKIDS.setup_anndata(q, batch_key="batch")
    mapped = SCARKIDS.load_query_data(q, model).train(seed=seed, progress_bar=False)
    z = mapped.get_latent_representation(q)
    out = {"prior novelty": mapped.novelty(latent=z)}
    out["kNN distance"] = NearestNeighbors(n_neighbors=15).fit(zr).kneighbors(z)[0].mean(1)
    out["reconstruction NLL per count"], out["goodness of fit"] = decoder_scores(mapped, q)
    d_ref = NearestNeighbors(n_neighbors=30).fit(zr).kneighbors(z)[0][:, -1]
    d_query = NearestNeighbors(n_neighbors=31).fit(z).kneighbors(z)[0][:, -1]
    out["density ratio"] = z.shape[1] * (np.log(d_ref) - np.log(d_query))
    auroc = {k: roc_auc_score(is_new, v) for k, v in out.items()}
    # where the left-out type lands: the reference type most of its cells' 15 nearest
    # reference codes have, and the share of its cells with that majority
    near = NearestNeighbors(n_neighbors=15).fit(zr).kneighbors(z[is_new])[1]
    ref_types = ref.obs["cell_type"].astype(str).to_numpy()[near]
    majority = pd.DataFrame(ref_types).mode(axis=1)[0]
    top = majority.value_counts()
    auroc["lands on"] = f"{top.index[0]} ({top.iloc[0] / len(majority):.0%})"
    oracle = cross_val_predict(KNeighborsClassifier(15), z, is_new, cv=5, method="predict_proba")[
        :, 1
    ]
    auroc["separability (15-NN trained on the query codes)"] = roc_auc_score(is_new, oracle)
    return auroc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", default="B cells,CD14,CD4 T,CD8 T")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--classification_weight", type=float, help="of the reference's training (default: 50)"
    )
    args = parser.parse_args(argv)
    if not uncertainty.DATA.exists():
        print(f"{uncertainty.DATA} not found: the shared datasets are needed; nothing to do")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for split, ref, query, left in uncertainty.splits("kang"):
        if not any(k in split for k in args.splits.split(",")):
            continue
        is_new = query.obs["cell_type"].astype(str).to_numpy() == left
        res = scores_of_split(ref, query, is_new, classification_weight=args.classification_weight)
        print(split, res, flush=True)
        rows.append((split, res))
    if not rows:
        print(f"no kang split matches --splits {args.splits!r}; nothing to do")
        return 1
    cols = list(rows[0][1])
    lines = [
        f"# Scores for a left-out type (`python benchmarks/novelty_scores.py --splits "
        f'"{args.splits}"`)',
        "",
        "kang ctrl -> stim, seed 0, reference with `encode_batch=True`; AUROC of flagging the "
        "left-out type's stim cells (see the script's docstring for each score).",
        "",
        "| split | " + " | ".join(cols) + " |",
        "|" + "---|" * (len(cols) + 1),
    ]
    fmt = lambda v: v if isinstance(v, str) else f"{v:.3f}"  # noqa: E731
    lines += [f"| {s} | " + " | ".join(fmt(r[c]) for c in cols) + " |" for s, r in rows]
    means = [
        "" if isinstance(rows[0][1][c], str) else f"{np.mean([r[c] for _, r in rows]):.3f}"
        for c in cols
    ]
    lines.append("| **mean** | " + " | ".join(means) + " |")
    out = OUT
    if args.classification_weight is not None:
        out = OUT.with_name(f"novelty_scores_weight{args.classification_weight:g}.md")
        lines[0] += f" (`--classification_weight {args.classification_weight:g}`)"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
