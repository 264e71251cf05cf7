"""Label transfer to unseen batches: scARKIDS reference mapping vs scANVI (scArches), same splits.

    python benchmarks/label_transfer.py [--datasets cellbench,kang] [--seed 0] [--quick]
    python benchmarks/label_transfer.py --table

cellbench: leave-one-batch-out over the batches whose cell types all occur in the reference
(the reference is the other four batches). kang: reference = ctrl, query = stim.
Both methods get the same HVGs (2000 seurat_v3 on the reference), the same reference cells
with labels and the same query cells without labels. scANVI is mapped at scvi-tools'
documented scArches settings (``harness.scanvi_mapping``; ``--quick`` shortens its epochs).
Reports accuracy and macro-F1 on the query cells.

Every (split, method, seed) is a row of ``benchmarks/results/label_transfer/runs.jsonl`` (a
rerun replaces its row; ``--quick`` runs are printed, not recorded), and
``benchmarks/results/label_transfer.md`` is rebuilt from all rows (``--table`` only
rebuilds it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import harness
import numpy as np
import pandas as pd
from harness import DATA_DIR, data_or_skip, scanvi_mapping

RUNS = harness.runs_file("label_transfer")
TABLE = harness.RESULTS / "label_transfer.md"
KEY = ("split", "method", "seed")


def hvg_split(adata, is_query):
    import scanpy as sc

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
    import scanpy as sc

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


def write_table() -> Path:
    """label_transfer.md: every recorded (split, method, seed), and the mean over the
    cellbench held-out batches per method and seed."""
    rows = harness.read_runs(RUNS)
    cols = ["accuracy", "macro_f1", "query cells", "time s"]
    lines = [
        "# Label transfer to unseen batches (`python benchmarks/label_transfer.py`)",
        "",
        "scARKIDS reference mapping (supervised reference, `load_query_data`, unsupervised "
        "query session) against scANVI + scArches at scvi-tools' documented settings, on the "
        "same splits and HVGs; accuracy and macro-F1 on the query cells.",
        "",
    ]
    body = [
        [r["split"], r["method"], str(r["seed"]), f"{r['accuracy']:.3f}",
         f"{r['macro_f1']:.3f}", str(r["query cells"]), f"{r['time s']:.3f}",
         harness.code_label(r)]
        for r in rows
    ]  # fmt: skip
    lines += harness.md_table(["split", "method", "seed", *cols, "commit"], body)
    bench = pd.DataFrame([r for r in rows if r["split"].startswith("cellbench")])
    if len(bench):
        means = bench.groupby(["method", "seed"])[["accuracy", "macro_f1"]].mean()
        lines += ["", "Mean over cellbench held-out batches:", ""]
        body = [[m, str(s), f"{v['accuracy']:.3f}", f"{v['macro_f1']:.3f}"]
                for (m, s), v in means.iterrows()]  # fmt: skip
        lines += harness.md_table(["method", "seed", "accuracy", "macro_f1"], body)
    return harness.write_table(TABLE, lines + ["", *harness.runs_section(rows)])


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", default="cellbench,kang")
    p.add_argument("--quick", action="store_true", help="few epochs, to check the script runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    harness.table_option(p)
    args = p.parse_args()
    if args.table:
        print(write_table().read_text())
        return
    if not data_or_skip():
        return
    import torch
    from sklearn.metrics import accuracy_score, f1_score

    torch.set_num_threads(args.threads)
    epochs = 10 if args.quick else None
    prov = harness.provenance(args.threads)
    for name in args.datasets.split(","):
        for split, adata, is_query in splits(name):
            ref, query = hvg_split(adata, is_query)
            truth = query.obs["cell_type"].astype(str).to_numpy()
            for method, fn in (("scARKIDS", run_scarkids), ("scANVI", run_scanvi)):
                t = time.perf_counter()
                pred = np.asarray(fn(ref, query, epochs, args.seed)).astype(str)
                row = {
                    "split": split,
                    "method": method,
                    "seed": args.seed,
                    "accuracy": accuracy_score(truth, pred),
                    "macro_f1": f1_score(truth, pred, average="macro"),
                    "query cells": len(truth),
                    "time s": time.perf_counter() - t,
                }
                print(row, flush=True)
                if not args.quick:
                    harness.record_run(RUNS, {**row, **prov}, KEY)
    print(write_table().read_text())


if __name__ == "__main__":
    main()
