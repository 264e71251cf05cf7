"""Integration quality against batch size: what large (GPU-sized) batches cost in scIB Total.

    python benchmarks/batch_size_quality.py [--dataset kang] [--batch_sizes 128,1024,4096]
    python benchmarks/batch_size_quality.py --simulate 200000 [--batch_sizes 128,auto]

Same preprocessing and scoring as benchmarks/integration.py. scARKIDS unsupervised (scVI's
peer) trains once per batch size with the default epoch budget, at the default learning
rate (1e-3) and at the learning rate scaled by sqrt(batch / 128) (the usual rule for Adam).
Larger batches mean fewer optimizer steps per epoch; on a GPU they are what makes an epoch
fast (benchmarks/README.md).

``--simulate N``: instead of a dataset, N simulated cells x 2000 genes, 20 batches, 30 cell
types of which 3 rare (0.5% of the cells each), and ``auto`` in ``--batch_sizes`` is the
batch size that ``default_batch_size`` picks for N cells on a GPU (trained here on the CPU:
the same optimisation, slower). Each batch size trains once at the default (scaled)
learning rate; scores: the same-batch and same-type fractions of the 15 nearest neighbours
on all cells, and the scIB Total on a 20,000-cell subsample.

Every (dataset, seed, batch size, learning rate) is a row of
``benchmarks/results/batch_size_quality/runs.jsonl`` (a rerun replaces its row), and
``benchmarks/results/batch_size_quality.md`` is rebuilt from all rows, one table per
dataset (``--table`` only rebuilds it).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import harness
import numpy as np
from harness import N_LATENT, dataset_arguments, open_dataset, score

N_SIM_BATCHES, N_SIM_TYPES, N_RARE, RARE_SHARE, SCIB_CELLS = 20, 30, 3, 0.005, 20_000
RUNS = harness.runs_file("batch_size_quality")
TABLE = harness.RESULTS / "batch_size_quality.md"
KEY = ("dataset", "seed", "batch_size", "learning_rate")


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
    types = adata.obs["cell_type"].value_counts()
    facts = dict(dataset=f"simulated {n}", seed=args.seed, n_obs=adata.n_obs, n_vars=2000,
                 rarest=int(types.min()), threads=args.threads)  # fmt: skip
    prov = harness.provenance(args.threads)
    for spec in args.batch_sizes.split(","):
        batch_size = default_batch_size(adata.n_obs, "cuda") if spec == "auto" else int(spec)
        b = adata.copy()
        SCARKIDS.setup_anndata(b, batch_key="batch", layer="counts")
        model = SCARKIDS(b, n_latent=N_LATENT, n_labels=N_SIM_TYPES, seed=args.seed)
        t = time.perf_counter()
        model.train(batch_size=batch_size, seed=args.seed, progress_bar=False, device="cpu")
        train_s = time.perf_counter() - t
        z = model.get_latent_representation()
        row = dict(facts, batch_size=batch_size, auto=spec == "auto", learning_rate=None)
        row.update(neighbour_fractions(z, adata))
        total = float(score(adata[keep].copy(), {"m": z[keep]}, args.seed).loc["m", "Total"])
        row.update({"total": total, "epochs": len(model.history["train_loss"]),
                    "train_s": train_s})  # fmt: skip
        harness.record_run(RUNS, {**row, **prov}, KEY)
        print(row, flush=True)
    print(write_table().read_text())


def simulated_lines(rows: list[dict]) -> list[str]:
    r = rows[0]
    lines = [f"{r['n_obs']:,} simulated cells x {r['n_vars']} genes, {N_SIM_BATCHES} batches, "
             f"{N_SIM_TYPES} types, the rarest {r['rarest']} cells; scARKIDS unsupervised, "
             f"default epochs and learning rate; {r['threads']} CPU threads.", ""]  # fmt: skip
    head = ["batch size", "same batch", "same type", "scIB Total (20k cells)", "epochs"]
    body = [
        [f"{r['batch_size']}" + (" (auto, GPU)" if r.get("auto") else ""),
         f"{r['same batch']:.4f}", f"{r['same type']:.4f}", f"{r['total']:.4f}",
         str(r["epochs"]), f"{r['train_s']:.0f}", harness.code_label(r)]
        for r in rows
    ]  # fmt: skip
    return lines + harness.md_table([*head, "train s (CPU)", "commit"], body)


def dataset_lines(rows: list[dict]) -> list[str]:
    r = rows[0]
    lines = [f"{r['n_obs']:,} cells, {r['n_vars']} HVGs, {r['threads']} CPU threads.", ""]
    head = ["batch size", "learning rate", "epochs", "optimizer steps", "train s (CPU)"]
    body = [
        [str(r["batch_size"]), f"{r['learning_rate']:.2g}", str(r["epochs"]), str(r["steps"]),
         f"{r['train_s']:.0f}", f"{r['total']:.3f}", harness.code_label(r)]
        for r in rows
    ]  # fmt: skip
    return lines + harness.md_table([*head, "scIB Total", "commit"], body)


def write_table() -> Path:
    """batch_size_quality.md: one table per dataset (and seed) from every recorded row."""
    rows = harness.read_runs(RUNS)
    lines = [
        "# Integration quality against batch size (`python benchmarks/batch_size_quality.py`)",
        "",
        "scARKIDS unsupervised, the default epoch budget at each batch size; scIB Total as "
        "integration.py scores it (datasets), or the same-batch and same-type shares of the "
        "15 nearest neighbours and the Total on 20,000 cells (simulated).",
    ]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        for seed in sorted({r["seed"] for r in rows if r["dataset"] == name}):
            got = [r for r in rows if (r["dataset"], r["seed"]) == (name, seed)]
            build = simulated_lines if name.startswith("simulated") else dataset_lines
            lines += [
                "",
                f"## {name}, seed {seed}",
                "",
                *build(got),
                "",
                *harness.runs_section(got),
            ]
    return harness.write_table(TABLE, lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    dataset_arguments(p)
    p.add_argument("--batch_sizes", default="128,1024,4096")
    p.add_argument("--simulate", type=int, help="simulated cells instead of --dataset")
    harness.table_option(p)
    args = p.parse_args()
    if args.table:
        print(write_table().read_text())
        return
    if args.simulate:
        simulate_main(args)
        return
    adata = open_dataset(args)
    if adata is None:
        return
    from scarkids import SCARKIDS

    n_labels = adata.obs["cell_type"].nunique()
    prov = harness.provenance(args.threads)
    facts = dict(dataset=args.dataset, seed=args.seed, n_obs=adata.n_obs, n_vars=adata.n_vars,
                 threads=args.threads)  # fmt: skip
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
            row = dict(facts, batch_size=batch_size, learning_rate=1e-3 * lr_scale,
                       epochs=epochs, steps=steps, train_s=train_s, total=total)  # fmt: skip
            harness.record_run(RUNS, {**row, **prov}, KEY)
            print(row, flush=True)
    print(write_table().read_text())


if __name__ == "__main__":
    main()
