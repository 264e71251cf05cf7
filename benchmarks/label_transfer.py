"""Label transfer to unseen batches: scARKIDS reference mapping vs scANVI (scArches), same splits.

    python benchmarks/label_transfer.py [--datasets cellbench,kang] [--quick]

cellbench: leave-one-batch-out over the batches whose cell types all occur in the reference
(the reference is the other four batches). kang: reference = ctrl, query = stim.
Both methods get the same HVGs (2000 seurat_v3 on the reference), the same reference cells
with labels and the same query cells without labels. scANVI is mapped at scvi-tools'
documented scArches settings (``harness.scanvi_mapping``; ``--quick`` shortens its epochs).
Reports accuracy and macro-F1 on the query cells and writes
benchmarks/results/label_transfer.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import scanpy as sc
import torch
from harness import DATA_DIR, RESULTS, data_or_skip, scanvi_mapping
from sklearn.metrics import accuracy_score, f1_score


def hvg_split(adata, is_query):
    adata.X = adata.X.astype(np.float32)
    ref = adata[~is_query].copy()
    sc.pp.highly_variable_genes(ref, flavor="seurat_v3", n_top_genes=2000, batch_key="batch")
    genes = ref.var_names[ref.var["highly_variable"]]
    return adata[~is_query, genes].copy(), adata[is_query, genes].copy()


def run_scarkids(ref, query, epochs, seed):
    from scarkids import SCARKIDS

    SCARKIDS.setup_anndata(ref, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS(ref, seed=seed)
    model.train(epochs, progress_bar=False, seed=seed)
    q = query.copy()
    SCARKIDS.setup_anndata(q, batch_key="batch")
    mapped = SCARKIDS.load_query_data(q, model)
    mapped.train(epochs and max(epochs // 4, 5), progress_bar=False, seed=seed)
    return mapped.predict(q)


def run_scanvi(ref, query, epochs, seed):
    soft, _ = scanvi_mapping(ref, query, seed=seed, epochs=epochs)
    return soft.idxmax(axis=1).to_numpy()


def splits(name):
    if name == "cellbench":
        adata = sc.read_h5ad(DATA_DIR / "cellbench_5batch.h5ad")
        for held in adata.obs["batch"].cat.categories:
            is_query = (adata.obs["batch"] == held).to_numpy()
            ref_types = set(adata.obs["cell_type"][~is_query])
            if set(adata.obs["cell_type"][is_query]) <= ref_types:
                yield f"cellbench: {held}", adata, is_query
    elif name == "kang":
        adata = sc.read_h5ad(DATA_DIR / "kang_ifnb_labeled.h5ad")
        yield "kang: ctrl -> stim", adata, (adata.obs["batch"] == "stim").to_numpy()


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", default="cellbench,kang")
    p.add_argument("--quick", action="store_true", help="few epochs, to check the script runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args()
    if not data_or_skip():
        return
    torch.set_num_threads(args.threads)
    epochs = 10 if args.quick else None
    rows = []
    for name in args.datasets.split(","):
        for split, adata, is_query in splits(name):
            ref, query = hvg_split(adata, is_query)
            truth = query.obs["cell_type"].astype(str).to_numpy()
            for method, fn in (("scARKIDS", run_scarkids), ("scANVI", run_scanvi)):
                t = time.perf_counter()
                pred = np.asarray(fn(ref, query, epochs, args.seed)).astype(str)
                rows.append(
                    {
                        "split": split,
                        "method": method,
                        "accuracy": accuracy_score(truth, pred),
                        "macro_f1": f1_score(truth, pred, average="macro"),
                        "query cells": len(truth),
                        "time s": time.perf_counter() - t,
                    }
                )
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    means = (
        table[table["split"].str.startswith("cellbench")]
        .groupby("method")[["accuracy", "macro_f1"]]
        .mean()
    )
    text = table.to_markdown(index=False, floatfmt=".3f")
    if len(means):
        text += "\n\nMean over cellbench held-out batches:\n\n" + means.to_markdown(floatfmt=".3f")
    cmd = "python benchmarks/label_transfer.py" + (" --quick" if args.quick else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "label_transfer.md").write_text(
        f"Command: `{cmd}` ({args.threads} CPU threads)\n\n{text}\n"
    )
    print(text)


if __name__ == "__main__":
    main()
