"""Unsupervised cell-type recovery: scARKIDS' own cluster predictions vs clustering scVI.

For each dataset, seed and K (the true number of types, and twice that: ``n_cell_types`` is a
maximum), trains scARKIDS unsupervised and scores ``model.predict()`` against the author
labels: Hungarian-matched accuracy (one cluster per type), majority-mapped accuracy (each
cluster named after its most frequent type), ARI, NMI, the number of clusters in use and
the NMI of the clusters with the batch (lower = clusters follow the batch less). At K above
the true number, the same model is also scored with its clusters merged down to the true
number (``predict(max_clusters=...)``, method ``scARKIDS merged``). Peers in the same run, on scVI's latent (scVI defaults): Leiden (scanpy defaults, resolution 1.0) and
k-means at K.

    python benchmarks/clustering.py --datasets pbmc,cellbench --seeds 0,1,2 --k_factors 1,2

``--cluster_factor 1`` trains every mixture component as a cluster (rows ``scARKIDS cf=1``,
the earlier default); the default, 2, merges twice as many components after training.

Each run is appended to ``benchmarks/results/clustering/runs.jsonl`` (a rerun of the same
dataset / method / seed / K replaces its row), and the table of means and sds over seeds,
``benchmarks/results/clustering.md``, is rebuilt from every run there, so the benchmark can
run in parts. ``--table`` only rebuilds the table.
"""

from __future__ import annotations

import argparse
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
    provenance,
    read_runs,
    record_run,
    train_scvi,
    write_table,
)

ALL = {**DATASETS, "kang_all": "kang_ifnb_all.h5ad"}
#: labels of kang_all's cells without an author label: trained on, not scored
UNLABELLED = "unlabeled"
RUNS = RESULTS / "clustering" / "runs.jsonl"
METHODS = ("scARKIDS", "scARKIDS merged", "scVI+Leiden", "scVI+kmeans")
#: rows of models whose every mixture component was a cluster (``cluster_factor=1``, the
#: earlier default): "scARKIDS cf=1" and "scARKIDS cf=1 merged"
TABLE_ORDER = ("scARKIDS cf=1", "scARKIDS cf=1 merged", "scARKIDS", "scARKIDS merged")


def hungarian_accuracy(truth, pred) -> float:
    """Accuracy after the one-to-one matching of clusters to types that maximises it."""
    from scipy.optimize import linear_sum_assignment

    table = pd.crosstab(pd.Series(pred, name="p"), pd.Series(truth, name="t")).to_numpy()
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(truth))


def majority_accuracy(truth, pred) -> float:
    """Accuracy when each cluster is named after its most frequent type."""
    table = pd.crosstab(pd.Series(pred, name="p"), pd.Series(truth, name="t"))
    return float(table.max(axis=1).sum() / len(truth))


def scores(truth, pred, batch) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {
        "hungarian_accuracy": hungarian_accuracy(truth, pred),
        "majority_accuracy": majority_accuracy(truth, pred),
        "ARI": float(adjusted_rand_score(truth, pred)),
        "NMI": float(normalized_mutual_info_score(truth, pred)),
        "clusters_used": int(len(np.unique(pred))),
        "NMI_batch": float(normalized_mutual_info_score(batch, pred)),
    }


def run_scarkids(adata, k: int, seed: int, cluster_factor: int = 2):
    """The trained unsupervised model, ``k`` clusters at most."""
    from scarkids import SCARKIDS

    a = adata.copy()
    SCARKIDS.setup_anndata(a, batch_key="batch", layer="counts")
    model = SCARKIDS(a, n_labels=k, cluster_factor=cluster_factor, seed=seed)
    model.train(seed=seed, progress_bar=False)
    return model


def leiden(z: np.ndarray, seed: int) -> np.ndarray:
    import anndata as ad
    import scanpy as sc

    b = ad.AnnData(np.asarray(z, dtype=np.float32))
    sc.pp.neighbors(b, use_rep="X", random_state=seed)
    sc.tl.leiden(b, resolution=1.0, random_state=seed, flavor="igraph", n_iterations=2)
    return b.obs["leiden"].to_numpy()


def kmeans(z: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(z)


def record(row: dict) -> None:
    record_run(RUNS, row, ("dataset", "method", "seed", "k_factor"))


def run_dataset(
    name: str, seeds, k_factors, methods, threads: int, cluster_factor: int = 2
) -> None:
    import torch

    torch.set_num_threads(threads)
    path = DATA_DIR / ALL[name]
    if not path.exists():
        log(f"{path} not found: the shared datasets are needed; skipping {name}")
        return
    for seed in seeds:
        adata = load_dataset(path, seed)
        truth_all = adata.obs["cell_type"].astype(str).to_numpy()
        scored = truth_all != UNLABELLED
        truth, batch = truth_all[scored], adata.obs["batch"].astype(str).to_numpy()[scored]
        n_types = len(np.unique(truth))
        common = {"dataset": name, "seed": seed, "n_types": n_types}
        common.update(provenance(threads))
        for factor in k_factors:
            if "scARKIDS" in methods:
                t = time.perf_counter()
                model = run_scarkids(adata, factor * n_types, seed, cluster_factor)
                pred = np.asarray(model.predict())[scored]
                method = "scARKIDS" if cluster_factor == 2 else f"scARKIDS cf={cluster_factor}"
                row = {**common, "method": method, "k_factor": factor, "K": factor * n_types}
                record({**row, **scores(truth, pred, batch), "seconds": time.perf_counter() - t})
                log(f"{name} seed {seed} K={factor}x scARKIDS: {scores(truth, pred, batch)}")
                if factor > 1 and "scARKIDS merged" in methods:
                    pred = np.asarray(model.predict(max_clusters=n_types))[scored]
                    row = {**row, "method": f"{method} merged"}
                    record({**row, **scores(truth, pred, batch)})
                    log(f"{name} seed {seed} K={factor}x merged: {scores(truth, pred, batch)}")
        if {"scVI+Leiden", "scVI+kmeans"} & set(methods):
            t = time.perf_counter()
            z = train_scvi(adata.copy(), seed, quick=False).get_latent_representation()[scored]
            seconds = time.perf_counter() - t
            if "scVI+Leiden" in methods:
                pred = leiden(z, seed)
                row = {**common, "method": "scVI+Leiden", "k_factor": 0, "K": None}
                record({**row, **scores(truth, pred, batch), "seconds": seconds})
            for factor in k_factors if "scVI+kmeans" in methods else ():
                pred = kmeans(z, factor * n_types, seed)
                row = {**common, "method": "scVI+kmeans", "k_factor": factor}
                record({**row, "K": factor * n_types, **scores(truth, pred, batch)})
            log(f"{name} seed {seed}: scVI peers done")


def write_tables() -> Path:
    df = pd.DataFrame(read_runs(RUNS))
    cols = ["hungarian_accuracy", "majority_accuracy", "ARI", "NMI", "clusters_used", "NMI_batch"]
    lines = [
        "# Unsupervised cell-type recovery (`python benchmarks/clustering.py`)",
        "",
        "Mean ± sd over seeds (n = number of seeds). K: clusters allowed (the true number of "
        "types, or twice that; scARKIDS' `n_cell_types` is a maximum). Leiden chooses its own "
        "number (resolution 1.0). scARKIDS: the default, `cluster_factor=2` (2K mixture "
        "components merged into at most K clusters after training); scARKIDS cf=1: every "
        "component a cluster (the earlier default). merged: the same model as the row "
        "above it, its clusters merged down to the true number (`predict(max_clusters=...)`). "
        "Label-based scores on the labelled cells only.",
        "",
        "| dataset | types | method | K | n | " + " | ".join(cols) + " |",
        "|" + "---|" * (5 + len(cols)),
    ]
    order = {m: i for i, m in enumerate((*TABLE_ORDER, *METHODS[2:]))}
    df["_order"] = df["method"].map(order)
    for (ds, factor, _, method), g in df.groupby(
        ["dataset", "k_factor", "_order", "method"], sort=True
    ):
        k = "own" if factor == 0 else f"{factor}x = {int(g['K'].iloc[0])}"
        if method.endswith("merged"):
            k += f" → {int(g['n_types'].iloc[0])}"
        cells = []
        for c in cols:
            v = g[c].astype(float)
            sd = f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else ""
            cells.append(f"{v.mean():.3f}{sd}" if c != "clusters_used" else f"{v.mean():.1f}")
        lines.append(
            f"| {ds} | {int(g['n_types'].iloc[0])} | {method} | {k} | {len(g)} | "
            + " | ".join(cells)
            + " |"
        )
    return write_table(RESULTS / "clustering.md", lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="kang,pbmc,cellbench,panc8,kang_all")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--k_factors", default="1,2", help="K as multiples of the true number")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cluster_factor", type=int, default=2, help="scARKIDS' components per cluster"
    )
    parser.add_argument("--table", action="store_true", help="only rebuild the table")
    args = parser.parse_args(argv)
    if not args.table:
        for name in args.datasets.split(","):
            if name not in ALL:
                parser.error(f"unknown dataset {name!r}; choose from {', '.join(ALL)}")
            run_dataset(
                name,
                [int(s) for s in args.seeds.split(",")],
                [int(k) for k in args.k_factors.split(",")],
                args.methods.split(","),
                args.threads,
                args.cluster_factor,
            )
    if RUNS.exists():
        print(write_tables().read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
