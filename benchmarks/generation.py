"""How real are generated cells? scARKIDS' prior samples against held-out real cells.

    python benchmarks/generation.py [--datasets kang,pbmc] [--seed 0]
    python benchmarks/generation.py --table

For each dataset (2000 seurat_v3 HVGs, counts rounded): train scARKIDS supervised on a
seeded 80% of the cells, then generate as many cells per (cell type, batch) as the held-out
20% has (``SCARKIDS.generate``: library sizes from the log-normal fit of each type in each
batch), and compare them with those held-out real cells, on log-CP10k:

- gene-mean and gene-variance Spearman;
- RBF-MMD (bandwidth: the median pairwise distance of the held-out cells) and the
  2-Wasserstein distance of Gaussian fits, on 50 PCs fitted on both sides pooled;
- a random-forest real-vs-generated classifier (balanced classes, two folds of random
  halves, same PCs; see ``real_vs_generated``): accuracy and AUC (0.5: indistinguishable);
- cell-type fidelity: a kNN classifier trained on the real training cells (same PCs) labels
  the generated ones; accuracy against the requested type.

Rows: ``diffusion`` (the model's prior), ``type-gaussian`` (the same decoder, codes from a
Gaussian fitted per cell type to the training cells' codes), ``standard-normal`` (the same
decoder, codes from N(0, I)), ``train-codes`` (the same decoder at the codes of real
training cells, subsampled to the same counts per type and batch: what the decoder can do
with a perfect prior) and ``real-train`` (those real training cells: the ceiling). Runs are appended to
``benchmarks/results/generation/runs.jsonl``; ``benchmarks/results/generation.md`` is
rebuilt from all runs (``--table`` only rebuilds it), and ``generation/<dataset>.png`` shows
a UMAP of real and generated cells coloured by source and by type.

``--variant gene-batch|nb|latent20`` trains the model with another decoder design (a
dispersion per gene and batch, a negative binomial without zero inflation, 20 latent
dimensions); its rows are the dataset's name with the variant in brackets (no figure).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from harness import (
    DATA_DIR,
    DATASETS,
    RESULTS,
    load_dataset,
    log,
    part_parser,
    provenance,
    read_runs,
    ready_to_run,
    record_run,
    write_table,
)

RUNS = RESULTS / "generation" / "runs.jsonl"
KEY = ("dataset", "source", "seed")
N_PCS = 50
SOURCES = ("diffusion", "type-gaussian", "standard-normal", "train-codes", "real-train")


def log_cp10k(X) -> np.ndarray:
    import scipy.sparse as sp

    X = sp.csr_matrix(X, dtype=np.float64)
    total = np.asarray(X.sum(1)).ravel()
    X = sp.diags(1e4 / np.clip(total, 1, None)) @ X
    return np.log1p(X.toarray())


def mmd_rbf(a: np.ndarray, b: np.ndarray, bandwidth: float) -> float:
    from scipy.spatial.distance import cdist

    def k(x, y):
        return np.exp(-cdist(x, y, "sqeuclidean") / (2 * bandwidth**2))

    return float(k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean())


def wasserstein_gaussian(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.linalg import sqrtm

    ma, mb = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = sqrtm(sqrtm(cb) @ ca @ sqrtm(cb)).real
    return float(np.sqrt(max(((ma - mb) ** 2).sum() + np.trace(ca + cb - 2 * root), 0.0)))


def compare(real_x, real_types, gen_x, gen_types, train_lx, train_types, seed) -> dict:
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    lr, lg = log_cp10k(real_x), log_cp10k(gen_x)
    row = {
        "mean Spearman": float(spearmanr(lr.mean(0), lg.mean(0))[0]),
        "var Spearman": float(spearmanr(lr.var(0), lg.var(0))[0]),
    }
    # PCs of both sides pooled: PCs fitted on one side only carry that side's own noise
    # directions, which tells the sides apart (held-out cells against anything, or training
    # cells against held-out ones)
    pca = PCA(N_PCS, random_state=seed).fit(np.vstack([lr, lg]))
    pr, pg = pca.transform(lr), pca.transform(lg)
    bandwidth = float(np.median(pdist(pr[: min(len(pr), 2000)])))
    row["MMD"] = mmd_rbf(pr, pg, bandwidth)
    row["W2"] = wasserstein_gaussian(pr, pg)
    row["RF accuracy"], row["RF AUC"] = real_vs_generated(pr, pg, seed)
    knn = KNeighborsClassifier(15).fit(pca.transform(train_lx), train_types)
    row["type fidelity"] = float((knn.predict(pg) == gen_types).mean())
    row["n cells"] = int(len(pg))
    return row


def real_vs_generated(pr: np.ndarray, pg: np.ndarray, seed: int) -> tuple[float, float]:
    """Balanced accuracy and AUC of a random forest telling real from generated cells.

    Two folds, each side split in random halves: trained on one half of each, tested on the
    other halves. (Cross-validation over one pooled set is biased below 0.5 when the two
    sets are alike and balanced within each cell type: leaving a cell out tips its
    neighbourhood towards the other class.)
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    rng = np.random.default_rng(seed)
    hr, hg = rng.permutation(len(pr)) % 2, rng.permutation(len(pg)) % 2
    acc, auc = [], []
    for fold in (0, 1):
        X = np.vstack([pr[hr == fold], pg[hg == fold]])
        y = np.r_[np.zeros((hr == fold).sum()), np.ones((hg == fold).sum())]
        Xt = np.vstack([pr[hr != fold], pg[hg != fold]])
        yt = np.r_[np.zeros((hr != fold).sum()), np.ones((hg != fold).sum())]
        rf = RandomForestClassifier(300, class_weight="balanced", random_state=seed, n_jobs=2)
        proba = rf.fit(X, y).predict_proba(Xt)[:, 1]
        acc.append(balanced_accuracy_score(yt, proba > 0.5))
        auc.append(roc_auc_score(yt, proba))
    return float(np.mean(acc)), float(np.mean(auc))


def decode(model, z: np.ndarray, batch_codes: np.ndarray, types: np.ndarray, seed: int):
    """Counts from the model's decoder at codes ``z`` and batches, library sizes drawn from
    the log-normal fit of each cell's type in its batch (as ``SCARKIDS.generate`` does)."""
    rng = np.random.default_rng([seed, 2])
    labels = model.registry.label_categories
    fit = np.array(
        [model._library_params(labels.index(t), b) for t, b in zip(types, batch_codes, strict=True)]
    )
    log_lib = rng.normal(fit[:, 0], fit[:, 1])
    return model.decode_counts(z, batch_codes, log_lib, rng)


#: decoder designs of ``--variant``: keyword arguments of ``SCARKIDS``
VARIANTS = {
    "gene-batch": {"dispersion": "gene-batch"},
    "nb": {"likelihood": "nb"},
    "latent20": {"n_latent": 20},
}


def run_dataset(name: str, seed: int, variant: str | None = None) -> list[dict]:
    import torch

    from scarkids import SCARKIDS

    adata = load_dataset(DATA_DIR / DATASETS[name], seed)
    rng = np.random.default_rng(seed)
    held = np.zeros(adata.n_obs, dtype=bool)
    held[rng.choice(adata.n_obs, round(0.2 * adata.n_obs), replace=False)] = True
    train, test = adata[~held].copy(), adata[held].copy()
    SCARKIDS.setup_anndata(train, batch_key="batch", labels_key="cell_type", layer="counts")
    t0 = time.perf_counter()
    model = SCARKIDS(train, seed=seed, **VARIANTS.get(variant, {}))
    model.train(seed=seed, progress_bar=False)
    train_s = time.perf_counter() - t0
    counts = test.obs.groupby(["cell_type", "batch"], observed=True).size()
    request = {k: int(v) for k, v in counts.items() if v > 0}
    t0 = time.perf_counter()
    gen = model.generate(cell_type=request, seed=seed, paired=False)
    gen_s = time.perf_counter() - t0
    real_x, real_types = test.layers["counts"], test.obs["cell_type"].astype(str).to_numpy()
    train_lx = log_cp10k(train.layers["counts"])
    train_types = train.obs["cell_type"].astype(str).to_numpy()
    z_train = model.get_latent_representation(train)
    b_codes = np.array([model.registry.batch_categories.index(b) for b in gen.obs["batch"]])
    gen_types = gen.obs["cell_type"].astype(str).to_numpy()
    sources = {"diffusion": gen.X}
    zg = np.empty_like(gen.obsm["X_scarkids"])
    for t in np.unique(gen_types):
        m = gen_types == t
        zt = z_train[train_types == t]
        zg[m] = rng.multivariate_normal(zt.mean(0), np.cov(zt, rowvar=False), m.sum())
    sources["type-gaussian"] = decode(model, zg, b_codes, gen_types, seed)
    sources["standard-normal"] = decode(
        model, rng.standard_normal(zg.shape), b_codes, gen_types, seed
    )
    pick = []
    for (t, b), n in request.items():
        pool = np.flatnonzero((train.obs["cell_type"] == t) & (train.obs["batch"] == b))
        pick += list(rng.choice(pool, n, replace=len(pool) < n))
    sources["real-train"] = train.layers["counts"][np.asarray(pick)]
    # the decoder's own ceiling: the codes of those real training cells, decoded again
    pick_b = np.array(
        [model.registry.batch_categories.index(b) for b in train.obs["batch"].iloc[pick]]
    )
    sources["train-codes"] = decode(
        model, z_train[np.asarray(pick)], pick_b, train_types[np.asarray(pick)], seed
    )
    rows = []
    for source, x in sources.items():
        real_side = source in ("real-train", "train-codes")
        types = train_types[np.asarray(pick)] if real_side else gen_types
        label = f"{name} [{variant}]" if variant else name
        row = {"dataset": label, "source": source, "seed": seed}
        row.update(provenance(torch.get_num_threads()))
        row.update(compare(real_x, real_types, x, types, train_lx, train_types, seed))
        if source == "diffusion":
            row.update({"train_s": train_s, "generate_s": gen_s})
        rows.append(row)
        log(f"  {row}")
    if variant is None:
        plot(name, test, gen)
    return rows


def plot(name: str, test, gen) -> None:
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    real = ad.AnnData(X=test.layers["counts"], obs=test.obs[["cell_type", "batch"]].copy())
    fake = ad.AnnData(X=gen.X, obs=gen.obs[["cell_type", "batch"]].copy())
    both = ad.concat({"real (held out)": real, "generated": fake}, label="source")
    both.obs_names_make_unique()
    sc.pp.normalize_total(both, target_sum=1e4)
    sc.pp.log1p(both)
    sc.pp.pca(both, n_comps=N_PCS, random_state=0)
    sc.pp.neighbors(both, random_state=0)
    sc.tl.umap(both, random_state=0)
    fig = sc.pl.umap(both, color=["source", "cell_type"], wspace=0.45, return_fig=True, show=False)
    (RESULTS / "generation").mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "generation" / f"{name}.png", dpi=110, bbox_inches="tight")


def write_tables() -> Path:
    df = pd.DataFrame(read_runs(RUNS))
    cols = [
        "mean Spearman",
        "var Spearman",
        "MMD",
        "W2",
        "RF accuracy",
        "RF AUC",
        "type fidelity",
        "n cells",
    ]
    lines = [
        "# Generated cells against held-out real cells (`python benchmarks/generation.py`)",
        "",
        "Mean over seeds (n). Lower is better for MMD, W2 and the random forest (0.5: it "
        "cannot tell generated from real); higher for the Spearmans and type fidelity. "
        "scDiffusion's own evaluation (another dataset): RF accuracy 0.705, gene-mean "
        "Spearman 0.994.",
        "",
        "| dataset | source | n | " + " | ".join(cols) + " |",
        "|" + "---|" * (3 + len(cols)),
    ]
    order = {s: i for i, s in enumerate(SOURCES)}
    for (ds, source), g in sorted(
        df.groupby(["dataset", "source"]), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9))
    ):
        digits = {"n cells": 0, "MMD": 4}
        vals = " | ".join(f"{g[c].mean():.{digits.get(c, 3)}f}" for c in cols)
        lines.append(f"| {ds} | {source} | {len(g)} | {vals} |")
    return write_table(RESULTS / "generation.md", lines)


def main(argv=None) -> int:
    parser = part_parser(__doc__, "kang,pbmc")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="another decoder design")
    args = parser.parse_args(argv)
    if ready_to_run(args):
        for name in args.datasets.split(","):
            log(f"{name} seed {args.seed} {args.variant or ''} ...")
            for row in run_dataset(name, args.seed, args.variant):
                record_run(RUNS, row, KEY)
    if RUNS.exists():
        print(write_tables().read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
