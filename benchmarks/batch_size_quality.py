"""Integration quality against batch size: what large (GPU-sized) batches cost in scIB Total.

    python benchmarks/batch_size_quality.py [--dataset kang] [--batch_sizes 128,1024,4096]
    python benchmarks/batch_size_quality.py --simulate 200000 [--batch_sizes 128,auto]

Same preprocessing and scoring as benchmarks/integration.py. scARKIDS unsupervised (scVI's
peer) trains once per batch size with the default epoch budget, at the default learning
rate (1e-3) and at the learning rate scaled by sqrt(batch / 128) (the usual rule for Adam).
Larger batches mean fewer optimizer steps per epoch; on a GPU they are what makes an epoch
fast (benchmarks/README.md). Writes benchmarks/results/batch_size_quality_<dataset>.md.

``--simulate N``: instead of a dataset, N simulated cells x 2000 genes, 20 batches, 30 cell
types of which 3 rare (0.5% of the cells each), and ``auto`` in ``--batch_sizes`` is the
batch size that ``default_batch_size`` picks for N cells on a GPU (trained here on the CPU:
the same optimisation, slower). Each batch size trains once at the default (scaled)
learning rate; scores: the same-batch and same-type fractions of the 15 nearest neighbours
on all cells, and the scIB Total on a 20,000-cell subsample. Writes
benchmarks/results/batch_size_quality_simulated_<N>.md.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd
from harness import N_LATENT, RESULTS, dataset_arguments, git_state, open_dataset, score

N_SIM_BATCHES, N_SIM_TYPES, N_RARE, RARE_SHARE, SCIB_CELLS = 20, 30, 3, 0.005, 20_000


def simulated(n_cells: int, seed: int):
    """``n_cells`` simulated cells with 3 rare types (0.5% each), log-CP10k in X, counts in
    ``layers['counts']``, a 30-PC PCA."""
    import scanpy as sc

    import scarkids

    pool = scarkids.datasets.simulate(
        int(n_cells * 1.3), 2000, n_batches=N_SIM_BATCHES, n_cell_types=N_SIM_TYPES, seed=seed
    )
    rng = np.random.default_rng(seed)
    types = pool.obs["cell_type"].astype(str).to_numpy()
    names = sorted(set(types))
    share = np.full(len(names), (1 - N_RARE * RARE_SHARE) / (len(names) - N_RARE))
    share[:N_RARE] = RARE_SHARE
    keep = []
    for name, p in zip(names, share, strict=True):
        cells = np.flatnonzero(types == name)
        keep.append(rng.choice(cells, min(len(cells), round(p * n_cells)), replace=False))
    adata = pool[np.sort(np.concatenate(keep))].copy()
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=30, random_state=seed)
    return adata


def neighbour_fractions(z, adata) -> dict[str, float]:
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=16).fit(z).kneighbors(z)[1][:, 1:]
    out = {}
    for col, name in (("batch", "same batch"), ("cell_type", "same type")):
        v = adata.obs[col].astype(str).to_numpy()
        out[name] = round(float((v[idx] == v[:, None]).mean()), 4)
    return out


def simulate_main(args) -> None:
    import torch

    from scarkids import SCARKIDS
    from scarkids.train import default_batch_size

    torch.set_num_threads(args.threads)
    n = args.simulate
    adata = simulated(n, args.seed)
    # the cells scIB scores (kNN fractions use all): the same for every batch size
    keep = np.zeros(adata.n_obs, dtype=bool)
    pick = np.random.default_rng(args.seed).choice(
        adata.n_obs, min(SCIB_CELLS, adata.n_obs), replace=False
    )
    keep[pick] = True
    rows = []
    for spec in args.batch_sizes.split(","):
        batch_size = default_batch_size(adata.n_obs, "cuda") if spec == "auto" else int(spec)
        b = adata.copy()
        SCARKIDS.setup_anndata(b, batch_key="batch", layer="counts")
        model = SCARKIDS(b, n_latent=N_LATENT, n_labels=N_SIM_TYPES, seed=args.seed)
        t = time.perf_counter()
        model.train(batch_size=batch_size, seed=args.seed, progress_bar=False, device="cpu")
        train_s = time.perf_counter() - t
        z = model.get_latent_representation()
        row = {"batch size": f"{batch_size}" + (" (auto, GPU)" if spec == "auto" else "")}
        row.update(neighbour_fractions(z, adata))
        total = float(score(adata[keep].copy(), {"m": z[keep]}, args.seed).loc["m", "Total"])
        row.update({
            "scIB Total (20k cells)": round(total, 4),
            "epochs": len(model.history["train_loss"]), "train s (CPU)": round(train_s),
        })  # fmt: skip
        rows.append(row)
        print(row, flush=True)
    types = adata.obs["cell_type"].value_counts()
    command = (
        f"--simulate {n} --batch_sizes {args.batch_sizes}` ({adata.n_obs:,} simulated cells x "
        f"2000 genes, {N_SIM_BATCHES} batches, {N_SIM_TYPES} types, the rarest {types.min()} "
        f"cells; scARKIDS unsupervised, default epochs and learning rate; {args.threads} CPU "
        "threads)"
    )
    write_result(rows, command, f"batch_size_quality_simulated_{n}.md")


def write_result(rows: list[dict], command: str, name: str) -> None:
    """Print and write the table of ``rows`` under its command line (the part after the
    script's name)."""
    table = pd.DataFrame(rows).to_markdown(index=False)
    text = (
        f"Command: `python benchmarks/batch_size_quality.py {command}  \n"
        f"Code: {git_state()}\n\n{table}\n"
    )
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    dataset_arguments(p)
    p.add_argument("--batch_sizes", default="128,1024,4096")
    p.add_argument("--simulate", type=int, help="simulated cells instead of --dataset")
    args = p.parse_args()
    if args.simulate:
        simulate_main(args)
        return
    adata = open_dataset(args)
    if adata is None:
        return
    from scarkids import SCARKIDS

    n_labels = adata.obs["cell_type"].nunique()
    rows = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        scales = [1.0] if batch_size == 128 else [1.0, math.sqrt(batch_size / 128)]
        for lr_scale in scales:
            b = adata.copy()
            SCARKIDS.setup_anndata(b, batch_key="batch", layer="counts")
            model = SCARKIDS(b, n_latent=N_LATENT, n_labels=n_labels, seed=args.seed)
            t = time.perf_counter()
            model.train(
                batch_size=batch_size,
                learning_rate=1e-3 * lr_scale,
                seed=args.seed,
                progress_bar=False,
            )
            train_s = time.perf_counter() - t
            z = model.get_latent_representation()
            total = float(score(adata, {"m": z}, args.seed).loc["m", "Total"])
            epochs = len(model.history["train_loss"])
            steps = epochs * math.ceil(0.9 * adata.n_obs / batch_size)
            rows.append({
                "batch size": batch_size, "learning rate": f"{1e-3 * lr_scale:.2g}",
                "epochs": epochs, "optimizer steps": steps, "train s (CPU)": round(train_s),
                "scIB Total": round(total, 3),
            })  # fmt: skip
            print(rows[-1], flush=True)
    command = (
        f"--dataset {args.dataset} --batch_sizes {args.batch_sizes}` ({adata.n_obs:,} cells, "
        f"{adata.n_vars} HVGs, {args.threads} CPU threads)"
    )
    write_result(rows, command, f"batch_size_quality_{args.dataset}.md")


if __name__ == "__main__":
    main()
