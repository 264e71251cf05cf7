"""Built-in data: a count simulator with cell types and batch effects, and the shared files."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scarkids.data.files import write_h5ad

#: the built-in dataset (``data.*_data_path: builtin:simulated``, and ``scarkids demo``)
BUILTIN = {"n_cells": 3000, "n_genes": 1000, "n_batches": 3, "n_cell_types": 5, "batch_effect": 0.5}
#: the data path that names it
BUILTIN_PATH = "builtin:simulated"


def builtin_dataset(seed: int = 0):
    """The built-in simulated dataset: 3,000 cells x 1,000 genes, 3 batches, 5 cell types
    (raw counts; ``obs["batch"]``, ``obs["cell_type"]``), the same for a given ``seed``.

    Parameters
    ----------
    seed
        Seed of the simulation.

    Returns
    -------
    anndata.AnnData
        The counts, as :func:`simulate` returns them.
    """
    b = BUILTIN
    return simulate(
        b["n_cells"],
        b["n_genes"],
        n_batches=b["n_batches"],
        n_cell_types=b["n_cell_types"],
        batch_effect=b["batch_effect"],
        seed=seed,
    )


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
    device: str | None = None,
) -> ad.AnnData:
    """Simulate raw counts with cell-type programmes and batch effects.

    Each cell type up- or down-regulates its own random ``de_fraction`` of genes (log-fold
    changes ~ N(0, de_scale)). Each batch multiplies every gene by a log-normal factor
    (sd ``batch_effect``) and shifts the mean library size by ``exp(N(0, library_shift))``.
    Counts are negative binomial with inverse dispersion ``dispersion``. Cell types are drawn
    with batch-specific proportions (each type present in every batch). ``device`` (e.g.
    ``"cuda"``) draws the counts with torch there: the same design and distribution, another
    random stream, a million cells in seconds.

    Parameters
    ----------
    n_cells
        Number of cells.
    n_genes
        Number of genes.
    n_batches
        Number of batches; each cell is drawn into one uniformly at random.
    n_cell_types
        Number of cell types.
    de_fraction
        Fraction of the genes each cell type changes (at least one gene).
    de_scale
        Standard deviation of the cell types' log-fold changes.
    batch_effect
        Standard deviation of the batches' per-gene log factors.
    library_size
        Typical expected total count of a cell, before the batch shift and a per-cell
        log-normal factor (sd 0.25).
    library_shift
        Standard deviation of the batches' log library-size factors.
    dispersion
        Inverse dispersion (gamma shape) of the negative binomial.
    seed
        Seed of the design (genes, cell types, batches, libraries) and of the counts.
    chunk_size
        Cells drawn at a time. The counts depend on it as well as on ``seed``
        (:func:`write_simulated_h5ad` draws the same counts for the same ``chunk_size``).
    device
        ``None`` draws the counts with numpy; a torch device (``"cpu"``, ``"cuda"``, ...)
        draws them with torch there.

    Returns
    -------
    anndata.AnnData
        CSR float32 counts in ``X`` (cells x genes), categorical ``obs['batch']``
        (``batch_0`` ...) and ``obs['cell_type']`` (``type_0`` ...), and
        ``obs['library_size']`` (the total counts of each cell); genes are named
        ``gene_<i>`` and cells ``cell_<i>``. The truth of the design: ``varm['cell_type_lfc']``
        (genes x types) and ``varm['batch_lfc']`` (genes x batches), each programme's
        natural-log fold change of every gene (0 where a type leaves a gene alone).
    """
    plan = _Plan(
        n_cells, n_genes, n_batches, n_cell_types, de_fraction, de_scale, batch_effect,
        library_size, library_shift, dispersion, seed,
    )  # fmt: skip
    # cells are drawn in chunks so that a million cells never need a dense matrix
    draw = plan.drawer(device)
    chunks = [draw(sl) for sl in _slices(n_cells, chunk_size)]
    counts = sp.vstack(chunks).tocsr() if len(chunks) > 1 else chunks[0]
    obs = plan.obs()
    obs["library_size"] = np.asarray(counts.sum(1)).ravel()
    out = ad.AnnData(X=counts, obs=obs, var=plan.var())
    # the truth: each type's and batch's log-fold change of every gene (natural log)
    out.varm["cell_type_lfc"] = plan.programmes.T.astype(np.float32)
    out.varm["batch_lfc"] = plan.batch_factors.T.astype(np.float32)
    return out


def _slices(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


class _Plan:
    """The random design of a simulation (per-gene and per-cell parameters); counts for any
    range of cells are then drawn independently of the others."""

    def __init__(
        self, n_cells, n_genes, n_batches, n_cell_types, de_fraction, de_scale,
        batch_effect, library_size, library_shift, dispersion, seed,
    ):  # fmt: skip
        rng = np.random.default_rng(seed)
        self.rng, self.seed = rng, seed
        self.dispersion = dispersion
        self.n_batches, self.n_cell_types = n_batches, n_cell_types
        self.base = rng.normal(0.0, 1.0, n_genes)  # log relative expression per gene
        self.programmes = np.zeros((n_cell_types, n_genes))
        n_de = max(1, int(round(de_fraction * n_genes)))
        for k in range(n_cell_types):
            genes = rng.choice(n_genes, n_de, replace=False)
            self.programmes[k, genes] = rng.normal(0.0, de_scale, n_de)
        self.batch_factors = rng.normal(0.0, batch_effect, (n_batches, n_genes))
        batch_library = np.exp(rng.normal(0.0, library_shift, n_batches))
        self.batch = rng.integers(0, n_batches, n_cells)
        proportions = rng.dirichlet(np.full(n_cell_types, 3.0), size=n_batches)
        u = rng.random(n_cells)[:, None]
        self.cell_type = (
            (u > np.cumsum(proportions[self.batch], axis=1)).sum(1).clip(max=n_cell_types - 1)
        )
        self.lib = library_size * batch_library[self.batch] * np.exp(rng.normal(0.0, 0.25, n_cells))

    def counts(self, sl: slice) -> sp.csr_matrix:
        rng = self.rng
        log_rate = (
            self.base[None, :]
            + self.programmes[self.cell_type[sl]]
            + self.batch_factors[self.batch[sl]]
        )
        rho = np.exp(log_rate - log_rate.max(1, keepdims=True))
        rho /= rho.sum(1, keepdims=True)
        mu = rho * self.lib[sl, None]
        gamma = rng.gamma(self.dispersion, mu / self.dispersion)  # NB as a gamma-Poisson mixture
        return sp.csr_matrix(rng.poisson(gamma).astype(np.float32))

    def drawer(self, device: str | None):
        """:meth:`counts` (numpy) or, on a torch ``device``, :meth:`counts_torch` with a
        generator seeded like the plan."""
        if device is None:
            return self.counts
        import torch

        generator = torch.Generator(device=device).manual_seed(self.seed)
        return lambda sl: self.counts_torch(sl, generator)

    def counts_torch(self, sl: slice, generator) -> sp.csr_matrix:
        """As :meth:`counts`, drawn with torch on ``generator``'s device."""
        import torch

        dev = generator.device
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=dev)  # noqa: E731
        cell_type = torch.as_tensor(self.cell_type[sl], device=dev)
        batch = torch.as_tensor(self.batch[sl], device=dev)
        log_rate = as_t(self.base)[None, :] + as_t(self.programmes)[cell_type]
        log_rate += as_t(self.batch_factors)[batch]
        mu = torch.softmax(log_rate, 1) * as_t(self.lib[sl])[:, None]
        shape = torch.full_like(mu, self.dispersion)
        gamma = torch._standard_gamma(shape, generator=generator) * (mu / self.dispersion)
        counts = torch.poisson(gamma, generator=generator)
        n, n_genes = counts.shape
        flat = counts.view(-1).nonzero().squeeze(1)  # row-major: CSR order
        crow = torch.zeros(n + 1, dtype=torch.int64, device=dev)
        crow[1:] = torch.bincount(flat // n_genes, minlength=n).cumsum(0)
        to_np = lambda t, dtype: t.cpu().numpy().astype(dtype, copy=False)  # noqa: E731
        return sp.csr_matrix(
            (
                to_np(counts.view(-1)[flat], np.float32),
                to_np(flat % n_genes, np.int32),
                to_np(crow, np.int64),
            ),
            shape=(n, n_genes),
        )

    def var(self) -> pd.DataFrame:
        names = [f"gene_{g}" for g in range(len(self.base))]
        return pd.DataFrame(index=pd.Index(names, dtype=object))  # object strings: see obs

    def obs(self) -> pd.DataFrame:
        # object strings throughout: anndata writes pandas 3's string arrays only on opt-in
        def categorical(codes, prefix, n):
            names = pd.Index([f"{prefix}_{k}" for k in range(n)], dtype=object)
            return pd.Categorical.from_codes(codes, categories=names)

        return pd.DataFrame(
            {
                "batch": categorical(self.batch, "batch", self.n_batches),
                "cell_type": categorical(self.cell_type, "type", self.n_cell_types),
            },
            index=pd.Index([f"cell_{i}" for i in range(len(self.batch))], dtype=object),
        )


def write_simulated_h5ad(
    path,
    n_cells: int,
    n_genes: int,
    *,
    chunk_size: int = 20_000,
    progress: bool = False,
    device: str | None = None,
    **kwargs,
):
    """Simulate as :func:`simulate` does (same keyword arguments) and write an ``.h5ad``
    chunk by chunk, for data sets larger than memory (``X`` is CSR float32 on disk).
    Peak memory is one chunk. ``device`` (e.g. ``"cuda"``) draws the counts with torch
    there instead of numpy: the same design and distribution, another random stream, and a
    million cells in seconds rather than minutes. Returns the path.

    With the same arguments (``chunk_size`` included) the file holds the same data as
    :func:`simulate` returns.

    Parameters
    ----------
    path
        The ``.h5ad`` file to write (overwritten).
    n_cells
        Number of cells.
    n_genes
        Number of genes.
    chunk_size
        Cells drawn and appended to the file at a time.
    progress
        Show a progress bar over the chunks.
    device
        ``None`` draws the counts with numpy; a torch device (``"cpu"``, ``"cuda"``, ...)
        draws them with torch there.
    **kwargs
        The design arguments of :func:`simulate` (``n_batches``, ``n_cell_types``,
        ``de_fraction``, ``de_scale``, ``batch_effect``, ``library_size``,
        ``library_shift``, ``dispersion``, ``seed``), with its defaults.

    Returns
    -------
    str or os.PathLike
        ``path``, as given.
    """
    import h5py
    from anndata.io import sparse_dataset, write_elem
    from tqdm.auto import tqdm

    defaults = dict(
        n_batches=3, n_cell_types=5, de_fraction=0.1, de_scale=1.5, batch_effect=0.6,
        library_size=3000.0, library_shift=0.4, dispersion=5.0, seed=0,
    )  # fmt: skip
    defaults.update(kwargs)
    plan = _Plan(n_cells, n_genes, **defaults)
    obs = plan.obs()
    library = np.zeros(n_cells, dtype=np.float32)
    write_h5ad(ad.AnnData(obs=obs, var=plan.var()), path, atomic=False)
    draw = plan.drawer(device)
    with h5py.File(path, "a") as f:
        for i, sl in enumerate(tqdm(_slices(n_cells, chunk_size), disable=not progress)):
            chunk = draw(sl)
            library[sl] = np.asarray(chunk.sum(1)).ravel()
            if i == 0:
                write_elem(f, "X", chunk)
            else:
                sparse_dataset(f["X"]).append(chunk)
        obs["library_size"] = library
        del f["obs"]
        write_elem(f, "obs", obs)
    return path
