"""Out-of-core training: one epoch on a simulated .h5ad far larger than the memory it uses.

    python benchmarks/out_of_core.py [--cells 2000000] [--genes 2000] [--path /tmp/x.h5ad]
    python benchmarks/out_of_core.py --table

Writes the simulated file chunk by chunk (not committed; reused when it exists), then, in a
fresh process so that the peak RSS is the training run's alone, opens it with
``anndata.read_h5ad(path, backed="r")``, trains scARKIDS for ``--epochs`` epochs (counts read
in chunks of ``--chunk_cells`` cells, 8 chunks buffered) and embeds every cell.

Every run is a row of ``benchmarks/results/out_of_core/runs.jsonl`` (key: cells, genes,
library size, epochs, batch size, chunk size, threads; a rerun replaces its row), and
``benchmarks/results/out_of_core.md`` is rebuilt from all rows (``--table`` only rebuilds
it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import harness

RUNS = harness.runs_file("out_of_core")
TABLE = harness.RESULTS / "out_of_core.md"
KEY = ("cells", "genes", "library_size", "epochs", "batch_size", "chunk_cells", "threads")


def worker(args) -> dict:
    import anndata as ad
    import numpy as np
    import torch

    from scarkids import SCARKIDS

    torch.set_num_threads(args.threads)
    adata = ad.read_h5ad(args.path, backed="r")
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS(adata, seed=0)
    t = time.perf_counter()
    model.train(
        args.epochs, batch_size=args.batch_size, chunk_cells=args.chunk_cells, progress_bar=False
    )
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    z = model.get_latent_representation(batch_size=8192)
    embed_s = time.perf_counter() - t
    out = Path(args.path).with_suffix(".latent.npy")
    np.save(out, z)
    n_train = int(round(0.9 * adata.n_obs))
    return {
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "epochs": args.epochs,
        "train_s": train_s,
        "train_cells_per_s": n_train * args.epochs / train_s,
        "embed_cells_per_s": adata.n_obs / embed_s,
        "final_train_loss": model.history["train_loss"][-1],
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def write_table() -> Path:
    """out_of_core.md: one row per recorded run."""
    rows = harness.read_runs(RUNS)
    head = ["cells", "genes", "non-zeros", "file GiB", "CSR in memory would be GiB", "epochs"]
    head += ["threads", "batch", "chunk cells", "train cells/s", "embed cells/s"]
    head += ["peak RSS GiB", "writing the file s", "commit"]
    body = [
        [f"{r['cells']:,}", str(r["genes"]), f"{r['nnz']:,}", f"{r['file_gib']:.1f}",
         f"{r['csr_gib']:.1f}", str(r["epochs"]), str(r["threads"]), str(r["batch_size"]),
         str(r["chunk_cells"]), f"{r['train_cells_per_s']:,.0f}",
         f"{r['embed_cells_per_s']:,.0f}", f"{r['peak_rss_gib']:.2f}",
         "-" if r.get("write_s") is None else f"{r['write_s']:.0f}", harness.code_label(r)]
        for r in rows
    ]  # fmt: skip
    lines = [
        "# Out-of-core training (`python benchmarks/out_of_core.py`)",
        "",
        "scARKIDS trained from a backed, simulated `.h5ad` (4 batches, 8 cell types) in a "
        "fresh process, counts read in chunks (8 buffered); 90% of cells train, 10% validate "
        "(each epoch); then every cell embedded. Peak RSS: the training process's.",
        "",
        *harness.md_table(head, body),
        "",
        *harness.runs_section(rows),
    ]
    return harness.write_table(TABLE, lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cells", type=int, default=2_000_000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--library_size", type=float, default=1000.0)
    p.add_argument("--path", default="/tmp/scarkids_out_of_core.h5ad")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--chunk_cells", type=int, default=8192)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    harness.table_option(p)
    args = p.parse_args()
    if args.table:
        print(write_table().read_text())
        return
    if args.worker:
        print(json.dumps(worker(args)))
        return

    path = Path(args.path)
    write_s = None
    if not path.exists():
        from scarkids.data.simulate import write_simulated_h5ad

        print(f"writing {args.cells:,} x {args.genes} simulated cells to {path} ...", flush=True)
        t = time.perf_counter()
        tmp = path.with_suffix(".partial.h5ad")
        write_simulated_h5ad(
            tmp,
            args.cells,
            args.genes,
            n_batches=4,
            n_cell_types=8,
            library_size=args.library_size,
            progress=True,
        )
        os.replace(tmp, path)
        write_s = time.perf_counter() - t
    cmd = [sys.executable, __file__, "--worker"] + [
        f"--{k}={v}" for k, v in vars(args).items() if k not in ("worker", "table")
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"training run failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    import h5py

    with h5py.File(path, "r") as f:
        nnz = f["X"]["data"].shape[0]
    row = dict(r, library_size=args.library_size, batch_size=args.batch_size,
               chunk_cells=args.chunk_cells, threads=args.threads, nnz=nnz,
               file_gib=path.stat().st_size / 2**30,
               csr_gib=nnz * 8 / 2**30,  # float32 values + int32 indices, as anndata holds CSR
               write_s=write_s)  # fmt: skip
    harness.record_run(RUNS, {**row, **harness.provenance(args.threads)}, KEY)
    print(write_table().read_text())


if __name__ == "__main__":
    main()
