"""Which per-cell score flags a left-out cell type? An exploration beside uncertainty.py.

    python benchmarks/novelty_scores.py --splits "B cells,CD14,CD4 T,CD8 T,NK" [--cache DIR]
    python benchmarks/novelty_scores.py --dataset cellbench
    python benchmarks/novelty_scores.py --table

On the leave-one-type-out splits of ``uncertainty.py`` (``--dataset kang`` or
``cellbench``; scARKIDS reference with ``encode_batch=True``, ``load_query_data``,
unsupervised query session), the AUROC of flagging the left-out type's query cells by:

- the prior's novelty (``SCARKIDS.novelty``) and the mean distance to the 15 nearest
  reference codes (latent scores);
- the reconstruction NLL per count (ZINB at the encoder mean, own batch), and the same
  reconstruction as a goodness of fit: ``(NLL - E[NLL]) / sd[NLL]`` with the expectation and
  sd over 4 count vectors drawn from the cell's own decoded ZINB, which removes what the NLL
  owes to the cell's depth and profile (decoder scores);
- the density ratio ``log p_query(z) / p_ref(z)`` from the distances to the 30th nearest
  query and reference code (where the query has cells the reference lacks);
- per-type scores, each cell measured against the reference's validation cells of the type
  it is predicted as (the share of them with a lower score: an empirical p-value per type,
  which removes what a score owes to the type, e.g. a tight type's higher density or a
  deep type's lower NLL per count): the prior's ``-log p(z0 | predicted type)``, the
  reconstruction NLL per count, the Mahalanobis distance to the type's mean reference code
  (covariance shared by the types), and the largest of the three;
- the prior novelty before any query training: the reference model encodes the query cells
  as if measured in the reference's first batch;
- transductive: the query codes clustered by k-means (twice as many clusters as reference
  types), each cell scored by its cluster's log share of the query cells over its log share
  of the reference cells (assigned to the nearest centroid); and the larger of this score's
  and the prior novelty's rank among the query cells; and the query's share of each query
  cell's k nearest codes among the query's and the reference's together (k = 15, 150);
- transductive within the predicted type (free of the shift in type composition between
  query and reference that the global cluster ratio suffers on cellbench):
  ``within_type_ratio`` (k-means of the query cells predicted as a type, k = 2, 3, 5; each
  cluster's share of them over its share of that type's reference codes; once more with
  draws of ``p(z0 | type)`` standing in for the reference's codes) and
  ``within_type_share`` (query over reference odds among the pooled 30 nearest codes);
- the distance to the nearest reference code, and the 15-NN distance averaged over each
  cell's 15 nearest query codes; the sum of its rank and the rank of the reconstruction's
  per-type quantile averaged the same way (latent and decoder together); the decoder's
  Pearson residuals per gene averaged over the 15 nearest query codes, the mean of their 20
  largest absolute values (a new type's markers that the reference cannot decode);
- where the left-out type lands (``lands on``): the reference type that most of its cells'
  15 nearest reference codes have, with the share of its cells for which it is so;
- how far its query centroid sits from the centroid of the reference type it lands on,
  beside that type's own query cells' centroid and the reference type's rms radius;
- the separability of the left-out type in the query codes, a reference point for any score
  computed from them: 5-fold cross-validated AUROC of a 15-NN classifier trained on the
  query codes *with* the true new / known labels.

Every split is a row of ``benchmarks/results/novelty_scores/runs.jsonl`` (key: dataset,
split, ``--classification_weight``, seed; a rerun replaces its row), and
``benchmarks/results/novelty_scores.md`` is rebuilt from all rows: one table per dataset,
weight and seed, a column per split and their mean (``--table`` only rebuilds it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import harness
import numpy as np
import pandas as pd
import uncertainty

RUNS = harness.runs_file("novelty_scores")
TABLE = harness.RESULTS / "novelty_scores.md"
KEY = ("dataset", "split", "classification_weight", "seed")
N_FIT_DRAWS = 4


def decoded_chunks(model, adata):
    """``(counts, decoder outputs)`` per chunk of 1024 cells: the decoded ZINB at the encoder
    mean, with each cell's own batch and depth (no gradients)."""
    import torch

    with torch.no_grad():
        for _, x, b in model._chunks(adata, 1024):
            inf = model.module.inference(x, b, sample=False)
            yield x, model.module.generative(inf["z"], b, inf["log_library"])


def decoder_scores(model, adata, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: reconstruction NLL per count, and its goodness-of-fit z-score."""
    import torch

    from scarkids.distributions.counts import count_log_prob_sum, sample_counts

    rng = np.random.default_rng(seed)
    per_count, fit = [], []
    for x, g in decoded_chunks(model, adata):
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


def pearson_residuals(model, adata) -> np.ndarray:
    """``(n, G)`` Pearson residuals of the counts under the decoded ZINB at the encoder mean
    (own batch and depth): ``(x - E[x]) / sd[x]``."""
    import torch

    out = []
    for x, g in decoded_chunks(model, adata):
        mu, theta = g["log_mu"].exp(), g["log_theta"].exp()
        pi = torch.sigmoid(g["dropout_logits"])
        mean = (1 - pi) * mu
        var = mean + (1 - pi) * mu**2 / theta + pi * (1 - pi) * mu**2
        out.append(((x - mean) / var.clamp_min(1e-8).sqrt()).numpy())
    return np.concatenate(out)


def label_nll(model, z: np.ndarray, n_draws: int = 32) -> tuple[np.ndarray, list[str]]:
    """``(n, L)`` prior estimates of ``-log p(z0 | c)`` per label in use (the draws of
    ``SCARKIDS.novelty``), and those labels' names."""
    import torch

    draws = model._novelty_draws(n_draws, 0)
    out = [
        model._label_nll(torch.as_tensor(z[i : i + 4096]), draws) for i in range(0, len(z), 4096)
    ]
    names = [model.registry.label_categories[i] for i in out[0][1].tolist()]
    return np.concatenate([o[0].numpy() for o in out]), names


def type_quantile(score, pred, ref_score, ref_type) -> np.ndarray:
    """Per cell: the share of the reference's validation cells *of its predicted type* whose
    score is below the cell's (an empirical p-value per type; types without validation
    cells use all of them)."""
    out = np.empty(len(score))
    for t in np.unique(pred):
        ref = np.sort(ref_score[ref_type == t] if (ref_type == t).sum() >= 10 else ref_score)
        rows = pred == t
        out[rows] = np.searchsorted(ref, score[rows]) / len(ref)
    return out


def within_type_ratio(z, pred, zr, ref_type, n_clusters: int = 3, seed: int = 0) -> np.ndarray:
    """Per query cell: how much more of the query than of the reference its region holds,
    *within the type it is predicted as*.

    For each predicted type ``t``, the query cells predicted ``t`` are clustered by k-means
    (``n_clusters``, fewer for small types) and the reference codes ``zr`` of type ``t`` are
    assigned to the nearest centroid; a cluster scores ``log (q_c / r_c)``, its share of the
    query's ``t`` cells over its share of the reference's (pseudocount 1). Within a type
    this is free of the shift in type composition between query and reference, which
    breaks the global cluster ratio on cellbench (a query of 3 of the 5 lines).
    """
    from sklearn.cluster import KMeans

    out = np.zeros(len(z))
    for t in np.unique(pred):
        rows = np.flatnonzero(pred == t)
        ref = zr[ref_type == t]
        k = int(min(n_clusters, max(1, len(rows) // 50)))
        if k < 2 or len(ref) == 0:
            continue
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(z[rows])
        n_q = np.bincount(km.labels_, minlength=k)
        n_r = np.bincount(km.predict(ref), minlength=k)
        ratio = np.log((n_q + 1) / (len(rows) + k)) - np.log((n_r + 1) / (len(ref) + k))
        out[rows] = ratio[km.labels_]
    return out


def within_type_share(z, pred, zr, ref_type, k: int = 30) -> np.ndarray:
    """Per query cell: the log odds of query over reference among its ``k`` nearest codes
    of the pooled query cells predicted as its type and that type's reference codes, each
    side weighted by its size (a kNN density ratio within the predicted type)."""
    from sklearn.neighbors import NearestNeighbors

    out = np.zeros(len(z))
    for t in np.unique(pred):
        rows = np.flatnonzero(pred == t)
        ref = zr[ref_type == t]
        if len(ref) == 0 or len(rows) < 2:
            continue
        pooled = np.concatenate([z[rows], ref])
        is_q = np.r_[np.ones(len(rows)), np.zeros(len(ref))]
        kk = min(k, len(pooled) - 1)
        near = NearestNeighbors(n_neighbors=kk + 1).fit(pooled).kneighbors(z[rows])[1][:, 1:]
        n_q = is_q[near].sum(1)
        out[rows] = np.log((n_q + 0.5) / len(rows)) - np.log((kk - n_q + 0.5) / len(ref))
    return out


def trained_models(ref, query, seed: int, weight: dict, cache: Path | None):
    """The reference and the mapped query model of a split (reloaded from ``cache`` when it
    holds them)."""
    from scarkids import SCARKIDS

    SCARKIDS.setup_anndata(ref, batch_key="batch", labels_key="cell_type")
    q = query.copy()
    q.obs = q.obs[["batch"]].copy()
    SCARKIDS.setup_anndata(q, batch_key="batch")
    if cache is not None and (cache / "mapped.pt").exists():
        return SCARKIDS.load(cache / "ref.pt", ref), SCARKIDS.load(cache / "mapped.pt", q), q
    model = SCARKIDS(ref, seed=seed, encode_batch=True)
    model.train(seed=seed, progress_bar=False, **weight)
    mapped = SCARKIDS.load_query_data(q, model).train(seed=seed, progress_bar=False)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        model.save(cache / "ref.pt")
        mapped.save(cache / "mapped.pt")
    return model, mapped, q


def scores_of_split(
    ref,
    query,
    is_new,
    seed: int = 0,
    classification_weight: float | None = None,
    cache: Path | None = None,
) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

    weight = (
        {} if classification_weight is None else {"classification_weight": classification_weight}
    )
    model, mapped, q = trained_models(ref, query, seed, weight, cache)
    zr = model.get_latent_representation(ref)
    z = mapped.get_latent_representation(q)
    # the reference's validation cells (the split of ``train(seed=seed)``), the known cells
    # every per-type score is measured against
    n_val = int(round(0.1 * ref.n_obs))
    val = np.sort(np.random.default_rng(seed).permutation(ref.n_obs)[:n_val])
    fit = np.setdiff1d(np.arange(ref.n_obs), val)
    names = list(mapped.label_names)
    ref_type = ref.obs["cell_type"].astype(str).to_numpy()[val]
    pred = np.asarray(names)[mapped.predict(q, soft=True)[names].to_numpy().argmax(1)]

    out = {"prior novelty": mapped.novelty(latent=z)}
    # the same score before any query training: the reference model encodes the query cells
    # as if measured in its first batch (does the mapping, or the reference, hide the type?)
    from scarkids import SCARKIDS

    as_ref = q.copy()
    as_ref.obs["batch"] = pd.Categorical([str(ref.obs["batch"].iloc[0])] * q.n_obs)
    SCARKIDS.setup_anndata(as_ref, batch_key="batch")
    out["prior novelty, unmapped (query encoded as the reference's first batch)"] = model.novelty(
        latent=model.get_latent_representation(as_ref)
    )
    out["kNN distance"] = NearestNeighbors(n_neighbors=15).fit(zr).kneighbors(z)[0].mean(1)
    out["reconstruction NLL per count"], out["goodness of fit"] = decoder_scores(mapped, q)
    d_ref = NearestNeighbors(n_neighbors=30).fit(zr).kneighbors(z)[0][:, -1]
    d_query = NearestNeighbors(n_neighbors=31).fit(z).kneighbors(z)[0][:, -1]
    out["density ratio"] = z.shape[1] * (np.log(d_ref) - np.log(d_query))

    # per-type scores: each cell against the validation cells of the type it is predicted as
    (nll_q, used), (nll_v, _) = label_nll(mapped, z), label_nll(mapped, zr[val])
    col = {t: i for i, t in enumerate(used)}
    own_q = nll_q[np.arange(len(z)), [col[t] for t in pred]]
    own_v = nll_v[np.arange(len(val)), [col[t] for t in ref_type]]
    out["prior novelty of the predicted type (per-type quantile)"] = type_quantile(
        own_q, pred, own_v, ref_type
    )
    rec_q = out["reconstruction NLL per count"]
    rec_v = decoder_scores(model, ref[val])[0]
    out["reconstruction (per-type quantile)"] = type_quantile(rec_q, pred, rec_v, ref_type)
    # Mahalanobis distance to the predicted type's reference codes (tied covariance)
    fit_type = ref.obs["cell_type"].astype(str).to_numpy()[fit]
    means = {t: zr[fit][fit_type == t].mean(0) for t in np.unique(fit_type)}
    resid = np.concatenate([zr[fit][fit_type == t] - m for t, m in means.items()])
    prec = np.linalg.inv(np.cov(resid.T) + 1e-6 * np.eye(z.shape[1]))

    def maha(codes, types):
        d = codes - np.stack([means[t] for t in types])
        return np.einsum("ij,jk,ik->i", d, prec, d)

    out["Mahalanobis (per-type quantile)"] = type_quantile(
        maha(z, pred), pred, maha(zr[val], ref_type), ref_type
    )
    out["max of the per-type quantiles"] = np.maximum.reduce(
        [out[k] for k in out if k.endswith("(per-type quantile)")]
    )
    # transductive: query clusters that the reference's cells do not fill
    from sklearn.cluster import KMeans

    k = 2 * len(means)
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(z)
    n_q = np.bincount(km.labels_, minlength=k)
    n_r = np.bincount(km.predict(zr), minlength=k)
    ratio = np.log((n_q + 1) / len(z)) - np.log((n_r + 1) / len(zr))
    out["density ratio of query clusters"] = ratio[km.labels_]

    # transductive, local: the query's share of each query cell's k nearest codes among the
    # query's and the reference's together (a kNN density-ratio classifier)
    pooled = np.concatenate([z, zr])
    from_query = np.r_[np.ones(len(z)), np.zeros(len(zr))]
    near_pooled = NearestNeighbors(n_neighbors=151).fit(pooled).kneighbors(z)[1][:, 1:]
    for k in (15, 150):  # one neighbour search for both (its first column: the cell itself)
        out[f"query share of the pooled {k}-NN"] = from_query[near_pooled[:, :k]].mean(1)

    # transductive, within the predicted type (free of the shift in type composition)
    all_type = ref.obs["cell_type"].astype(str).to_numpy()
    for n in (2, 3, 5):
        out[f"within-type ratio of query clusters (k = {n})"] = within_type_ratio(
            z, pred, zr, all_type, n_clusters=n, seed=seed
        )
    out["within-type query odds of the pooled 30-NN"] = within_type_share(z, pred, zr, all_type)
    # the same with the prior standing in for the reference's codes: draws of p(z0 | type)
    cats = list(mapped.registry.label_categories)
    drawn = [
        (t, mapped._draw_codes(cats.index(t), int((all_type == t).sum()), None, (seed, i), 4096))
        for i, t in enumerate(np.unique(all_type))
    ]
    z_prior = np.concatenate([d.cpu().numpy() for _, d in drawn])
    prior_type = np.concatenate([[t] * len(d) for t, d in drawn])
    out["within-type ratio of query clusters (k = 3), prior draws"] = within_type_ratio(
        z, pred, z_prior, prior_type, n_clusters=3, seed=seed
    )

    # the nearest reference code, and the 15-NN distance averaged over the cell's 15 nearest
    # query codes (a query cluster's distance from the reference, without a clustering)
    out["distance to the nearest reference code"] = (
        NearestNeighbors(n_neighbors=1).fit(zr).kneighbors(z)[0][:, 0]
    )
    near_query = NearestNeighbors(n_neighbors=15).fit(z).kneighbors(z)[1]
    out["kNN distance, smoothed over the 15 nearest query codes"] = out["kNN distance"][
        near_query
    ].mean(1)

    # the decoder's gene-level misfit where a whole neighbourhood shares it: each cell's
    # Pearson residuals averaged over its 15 nearest query codes, the mean of the 20 largest
    # in absolute value (a new type's own markers, which the reference cannot decode)
    resid = pearson_residuals(mapped, q)[near_query].mean(1)
    out["decoder residuals, 20 largest genes, smoothed over the 15 nearest query codes"] = -np.sort(
        -np.abs(resid), axis=1
    )[:, :20].mean(1)

    def rank(v):
        return pd.Series(v).rank(pct=True).to_numpy()

    # the latent's best score and the decoder's, each smoothed over the 15 nearest query codes
    smooth_rec = out["reconstruction (per-type quantile)"][near_query].mean(1)
    out["mean rank: smoothed kNN distance, smoothed reconstruction (per-type quantile)"] = rank(
        out["kNN distance, smoothed over the 15 nearest query codes"]
    ) + rank(smooth_rec)
    out["max rank: prior novelty, cluster density ratio"] = np.maximum(
        rank(out["prior novelty"]), rank(out["density ratio of query clusters"])
    )
    auroc = {k: roc_auc_score(is_new, v) for k, v in out.items()}
    # where the left-out type lands: the reference type most of its cells' 15 nearest
    # reference codes have, and the share of its cells with that majority
    near = NearestNeighbors(n_neighbors=15).fit(zr).kneighbors(z[is_new])[1]
    ref_types = ref.obs["cell_type"].astype(str).to_numpy()[near]
    majority = pd.DataFrame(ref_types).mode(axis=1)[0]
    top = majority.value_counts()
    auroc["lands on"] = f"{top.index[0]} ({top.iloc[0] / len(majority):.0%})"
    # where the left-out type's codes sit: its query centroid's distance to the centroid of
    # the reference type it lands on, beside that type's own query cells' (and the reference
    # type's rms radius around its centroid)
    home = top.index[0]
    centre = zr[all_type == home]
    radius = np.sqrt(((centre - centre.mean(0)) ** 2).sum(1).mean())
    q_type = query.obs["cell_type"].astype(str).to_numpy()
    d_new = np.linalg.norm(z[is_new].mean(0) - centre.mean(0))
    d_own = np.linalg.norm(z[q_type == home].mean(0) - centre.mean(0))
    auroc["centroid distance to where it lands: left-out / that type's query cells / radius"] = (
        f"{d_new:.2f} / {d_own:.2f} / {radius:.2f}"
    )
    oracle = cross_val_predict(KNeighborsClassifier(15), z, is_new, cv=5, method="predict_proba")[
        :, 1
    ]
    auroc["separability (15-NN trained on the query codes)"] = roc_auc_score(is_new, oracle)
    return auroc


def section(rows: list[dict]) -> list[str]:
    """One dataset, weight and seed: a row per score, a column per split, and the mean."""
    names = list(dict.fromkeys(k for r in rows for k in r["scores"]))
    lines = ["| score | " + " | ".join(r["split"] for r in rows) + " | mean |"]
    lines.append("|" + "---|" * (len(rows) + 2))
    for c in names:
        vals = [r["scores"].get(c) for r in rows]
        if any(isinstance(v, str) for v in vals):
            lines.append(f"| {c} | " + " | ".join(str(v or "-") for v in vals) + " |  |")
        else:
            nums = [v for v in vals if v is not None]
            cells = [f"{v:.3f}" if v is not None else "-" for v in vals]
            lines.append(f"| {c} | " + " | ".join(cells) + f" | **{np.mean(nums):.3f}** |")
    return lines


def write_table() -> Path:
    """novelty_scores.md from every recorded split."""
    rows = harness.read_runs(RUNS)
    lines = [
        "# Scores for a left-out type (`python benchmarks/novelty_scores.py`)",
        "",
        "Reference with `encode_batch=True`; AUROC of flagging the left-out type's query cells "
        "by each score (see the script's docstring); `lands on`: the reference type most of "
        "the left-out cells' 15 nearest reference codes have.",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["classification_weight"], r["seed"]), []).append(r)
    for (dataset, weight, seed), got in groups.items():
        weight_text = "" if weight is None else f", classification weight {weight:g}"
        lines += ["", f"## {dataset}{weight_text}, seed {seed}", "", *section(got)]
        lines += ["", *harness.runs_section(got)]
    return harness.write_table(TABLE, lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="kang", choices=["kang", "cellbench"])
    parser.add_argument(
        "--splits", default="out", help="comma-separated: the splits whose name contains one"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--classification_weight", type=float, help="of the reference's training (default: 50)"
    )
    parser.add_argument(
        "--cache", help="folder keeping each split's trained models, reused when present"
    )
    harness.table_option(parser)
    args = parser.parse_args(argv)
    if args.table:
        print(write_table().read_text())
        return 0
    if not uncertainty.DATA.exists():
        print(f"{uncertainty.DATA} not found: the shared datasets are needed; nothing to do")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    prov = harness.provenance(args.threads)
    found = 0
    for split, ref, query, left in uncertainty.splits(args.dataset):
        if not any(k in split for k in args.splits.split(",")):
            continue
        is_new = query.obs["cell_type"].astype(str).to_numpy() == left
        cache = None
        if args.cache is not None:
            cache = Path(args.cache) / args.dataset / split.replace(" ", "_").replace(",", "")
        res = scores_of_split(
            ref, query, is_new, classification_weight=args.classification_weight, cache=cache
        )
        print(split, res, flush=True)
        scores = {k: v if isinstance(v, str) else float(v) for k, v in res.items()}
        row = dict(dataset=args.dataset, split=split, seed=0, scores=scores,
                   classification_weight=args.classification_weight)  # fmt: skip
        harness.record_run(RUNS, {**row, **prov}, KEY)
        found += 1
    if not found:
        print(f"no {args.dataset} split matches --splits {args.splits!r}; nothing to do")
        return 1
    print(write_table().read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
