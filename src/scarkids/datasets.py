"""Built-in data: a count simulator with cell types and batch effects, and the shared files."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def simulate(
    n_cells: int = 3000,
    n_genes: int = 1000,
    *,
    n_batches: int = 3,
    n_cell_types: int = 5,
    de_fraction: float = 0.1,
    de_scale: float = 1.5,
    batch_effect: float = 0.6,
    library_size: float = 3000.0,
    library_shift: float = 0.4,
    dispersion: float = 5.0,
    seed: int = 0,
    chunk_size: int = 20_000,
) -> ad.AnnData:
    """Simulate raw counts with cell-type programmes and batch effects.

    Each cell type up- or down-regulates its own random ``de_fraction`` of genes (log-fold
    changes ~ N(0, de_scale)). Each batch multiplies every gene by a log-normal factor
    (sd ``batch_effect``) and shifts the mean library size by ``exp(N(0, library_shift))``.
    Counts are negative binomial with inverse dispersion ``dispersion``. Cell types are drawn
    with batch-specific proportions (each type present in every batch).

    Returns
    -------
    AnnData with CSR float32 counts in ``X`` (cells x genes), categorical
    ``obs['batch']`` (``batch_0`` ...) and ``obs['cell_type']`` (``type_0`` ...), and
    ``obs['library_size']``.
    """
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 1.0, n_genes)  # log relative expression per gene
    programmes = np.zeros((n_cell_types, n_genes))
    n_de = max(1, int(round(de_fraction * n_genes)))
    for k in range(n_cell_types):
        genes = rng.choice(n_genes, n_de, replace=False)
        programmes[k, genes] = rng.normal(0.0, de_scale, n_de)
    batch_factors = rng.normal(0.0, batch_effect, (n_batches, n_genes))
    batch_library = np.exp(rng.normal(0.0, library_shift, n_batches))

    batch = rng.integers(0, n_batches, n_cells)
    proportions = rng.dirichlet(np.full(n_cell_types, 3.0), size=n_batches)
    u = rng.random(n_cells)[:, None]
    cell_type = (u > np.cumsum(proportions[batch], axis=1)).sum(1).clip(max=n_cell_types - 1)

    lib = library_size * batch_library[batch] * np.exp(rng.normal(0.0, 0.25, n_cells))
    # cells are drawn in chunks so that a million cells never need a dense matrix
    chunks = []
    for start in range(0, n_cells, chunk_size):
        sl = slice(start, min(start + chunk_size, n_cells))
        log_rate = base[None, :] + programmes[cell_type[sl]] + batch_factors[batch[sl]]
        rho = np.exp(log_rate - log_rate.max(1, keepdims=True))
        rho /= rho.sum(1, keepdims=True)
        mu = rho * lib[sl, None]
        gamma = rng.gamma(dispersion, mu / dispersion)  # NB as a gamma-Poisson mixture
        chunks.append(sp.csr_matrix(rng.poisson(gamma).astype(np.float32)))
    counts = sp.vstack(chunks).tocsr() if len(chunks) > 1 else chunks[0]

    obs = pd.DataFrame(
        {
            "batch": pd.Categorical(
                [f"batch_{b}" for b in batch], [f"batch_{b}" for b in range(n_batches)]
            ),
            "cell_type": pd.Categorical(
                [f"type_{c}" for c in cell_type], [f"type_{c}" for c in range(n_cell_types)]
            ),
        },
        index=pd.Index([f"cell_{i}" for i in range(n_cells)]),
    )
    obs["library_size"] = np.asarray(counts.sum(1)).ravel()
    var = pd.DataFrame(index=[f"gene_{g}" for g in range(n_genes)])
    return ad.AnnData(X=counts, obs=obs, var=var)
