"""Out-of-core training: one epoch on a simulated .h5ad far larger than the memory it uses.

    python benchmarks/out_of_core.py [--cells 2000000] [--genes 2000] [--path /tmp/x.h5ad]

Writes the simulated file chunk by chunk (not committed; reused when it exists), then, in a
fresh process so that the peak RSS is the training run's alone, opens it with
``anndata.read_h5ad(path, backed="r")``, trains scARKIDS for ``--epochs`` epochs (counts read
in chunks of ``--chunk_cells`` cells, 8 chunks buffered) and embeds every cell. Prints a table
and writes benchmarks/results/out_of_core.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


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
    args = p.parse_args()
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
        f"--{k}={v}" for k, v in vars(args).items() if k != "worker"
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"training run failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    import h5py

    with h5py.File(path, "r") as f:
        nnz = f["X"]["data"].shape[0]
    size_gib = path.stat().st_size / 2**30
    in_memory_gib = nnz * 8 / 2**30  # float32 values + int32 indices, as anndata holds CSR
    table = "\n".join(
        [
            "| cells | genes | non-zeros | file GiB | CSR in memory would be GiB | epochs "
            "| train cells/s | embed cells/s | peak RSS GiB |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {r['cells']:,} | {r['genes']} | {nnz:,} | {size_gib:.1f} | {in_memory_gib:.1f} "
            f"| {r['epochs']} | {r['train_cells_per_s']:,.0f} | {r['embed_cells_per_s']:,.0f} "
            f"| {r['peak_rss_gib']:.2f} |",
        ]
    )
    header = (
        f"Command: `python benchmarks/out_of_core.py --cells {args.cells} --genes {args.genes} "
        f"--epochs {args.epochs} --threads {args.threads}`  \n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads. "
        f"Chunks of {args.chunk_cells} cells, 8 buffered, batch size {args.batch_size}; "
        "90% of cells train, 10% validate (evaluated each epoch)."
        + (f" Writing the file took {write_s:.0f} s." if write_s else "")
        + "\n\n"
    )
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "out_of_core.md").write_text(header + table + "\n")


if __name__ == "__main__":
    main()
