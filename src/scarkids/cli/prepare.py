"""The command line's file preparation: reading ``.h5ad`` files, checking their columns,
selecting genes, handling zero-count cells, with errors that name the file.

Everything here works on AnnData and file paths; nothing touches the model. Each check raises
:class:`~scarkids.errors.InputDataError` with one line that names the file, the key or column
and what to do, in the config's terms.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from scarkids.data.registry import get_counts
from scarkids.data.simulate import BUILTIN_PATH, builtin_dataset
from scarkids.errors import InputDataError, ScarkidsError

logger = logging.getLogger(__name__)

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: fewer varying genes than this in a batch and skmisc's loess may crash the process
_MIN_VARYING_GENES = 50


@contextmanager
def config_key(
    key: str, errors: type[ScarkidsError] | tuple[type[ScarkidsError], ...] = ScarkidsError
) -> Iterator[None]:
    """Name the config key behind an argument the command line passes to the library.

    The library's errors name its Python arguments (``layer=``); an error of type ``errors``
    (any :class:`~scarkids.errors.ScarkidsError` by default) raised in the block is raised
    again, the same type, with ``"; in config.yaml: <key>"`` appended to its one-line
    message. Other errors pass unchanged.
    """
    try:
        yield
    except errors as e:
        raise type(e)(f"{e}; in config.yaml: {key}") from e


def _counts(adata, layer: str | None, source: str):
    """:func:`~scarkids.data.registry.get_counts`, its errors naming ``data.counts_layer``."""
    with config_key("data.counts_layer"):
        return get_counts(adata, layer, source=source)


def read_h5ad(path: str | os.PathLike, *, what: str = "data file"):
    """Read ``path`` fully into memory, or raise an InputDataError naming it.

    ``"builtin:simulated"`` is the built-in simulated dataset
    (:func:`scarkids.data.simulate.builtin_dataset`), so that the shipped ``config.yaml``
    trains on a fresh machine.

    Distinguishes a missing file, a directory, a file that is not HDF5 (not an h5ad) and an
    HDF5 file that anndata cannot read (truncated or not written by anndata).
    """
    import anndata as ad

    if str(path) == BUILTIN_PATH:  # the built-in dataset: runs work on a fresh machine
        return builtin_dataset()
    if str(path).startswith("builtin:"):
        raise InputDataError(
            f"{path}: no such built-in dataset; the built-in one is {BUILTIN_PATH!r}"
        )
    p = Path(path)
    if not p.exists():
        raise InputDataError(
            f"{p}: {what} not found; check the path (data.*_data_path or --data_path)"
        )
    if p.is_dir():
        raise InputDataError(f"{p}: {what} is a directory, expected an .h5ad file")
    try:
        with open(p, "rb") as f:
            head = f.read(len(_HDF5_MAGIC))
    except OSError as e:
        raise InputDataError(f"{p}: cannot read {what} ({e.strerror})") from e
    if head != _HDF5_MAGIC:
        raise InputDataError(
            f"{p}: not an .h5ad file (no HDF5 header); convert it with anndata "
            "(e.g. sc.read_csv / sc.read_10x_mtx, then adata.write_h5ad)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            adata = ad.read_h5ad(p)
    except Exception as e:  # h5py / anndata raise many types for a damaged file
        raise InputDataError(
            f"{p}: cannot read {what} as AnnData ({type(e).__name__}); the file is truncated "
            "or was not written by anndata: write it again"
        ) from e
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputDataError(
            f"{p}: {what} is empty ({adata.n_obs} cells x {adata.n_vars} genes); give a file "
            "with cells and genes"
        )
    adata.obs_names = adata.obs_names.astype(str)
    adata.var_names = adata.var_names.astype(str)
    if not adata.obs_names.is_unique:
        adata.obs_names_make_unique()
        logger.warning("%s: cell names (obs_names) were not unique; made them unique", p)
    if not adata.var_names.is_unique:
        raise InputDataError(
            f"{p}: gene names (var_names) are not unique; run adata.var_names_make_unique()"
        )
    return adata


def check_columns(adata, source: str, *, batch_key: str, labels_key: str | None) -> None:
    """The batch column (and the label column when given) exist; no NaN batches."""
    available = ", ".join(map(repr, list(adata.obs.columns)[:12])) or "none"
    for key, role, config_key in (
        (batch_key, "batch", "data.batch_key"),
        (labels_key, "cell type", "data.cell_type_key"),
    ):
        if key is not None and key not in adata.obs.columns:
            raise InputDataError(
                f"{source}: obs column {key!r} ({role}, {config_key}) not found; available: "
                f"{available}"
            )
    n_nan = int(adata.obs[batch_key].isna().sum())
    if n_nan:
        raise InputDataError(
            f"{source}: obs[{batch_key!r}] has {n_nan} missing (NaN) values; fill them or drop "
            "those cells"
        )
    if labels_key is not None and adata.obs[labels_key].isna().all():
        raise InputDataError(
            f"{source}: obs[{labels_key!r}] has no labels (all NaN); set global.supervised: false "
            "or give labels"
        )


def zero_count_cells(adata, source: str, *, layer: str | None, mode: str, drop: bool = True):
    """Return ``adata`` without the cells whose counts are all zero.

    ``mode="error"`` raises instead. With ``drop=False`` the cells are kept (inference keeps
    the input's rows) and only a warning is logged.
    """
    counts = _counts(adata, layer, source)
    empty = np.asarray(counts.sum(axis=1)).ravel() <= 0
    n = int(empty.sum())
    if not n:
        return adata
    if mode == "error":
        raise InputDataError(
            f"{source}: {n} of {adata.n_obs} cells have zero counts; filter them "
            "(sc.pp.filter_cells(adata, min_counts=1)) or set data.zero_count_cells: drop"
        )
    if n == adata.n_obs:
        raise InputDataError(f"{source}: every cell has zero counts in the genes used")
    if not drop:
        logger.warning(
            "%s: %d cells have zero counts; their outputs carry no information", source, n
        )
        return adata
    logger.warning("%s: dropped %d of %d cells with zero counts", source, n, adata.n_obs)
    return adata[~empty].copy()


def select_genes(
    adata,
    source: str,
    *,
    n_genes: int | None,
    flavor: str,
    batch_key: str | None,
    layer: str | None,
):
    """Highly variable genes (seurat_v3 on counts) when the file has more than ``n_genes``.

    Returns ``adata`` itself when no selection is needed, otherwise a subset copy that keeps
    the file's gene order. Scanpy runs on a copy; a batch-aware selection that fails (one
    batch, or batches too small for its loess fit) is retried without the batch key.
    """
    if n_genes is None or adata.n_vars <= n_genes:
        return adata
    if flavor == "none":
        raise InputDataError(
            f"{source}: has {adata.n_vars} genes, more than global.n_genes ({n_genes}); set "
            "data.hvg_flavor: seurat_v3 to select genes, or raise global.n_genes"
        )
    import anndata as ad
    import scanpy as sc

    tmp = ad.AnnData(X=_counts(adata, layer, source), obs=adata.obs[[]].copy())
    tmp.var_names = adata.var_names
    if batch_key is not None:
        tmp.obs["batch"] = adata.obs[batch_key].astype(str).to_numpy()
    attempts = [("batch", "batch-aware")] if batch_key is not None else []
    attempts.append((None, "ignoring batches"))
    error: Exception | None = None
    for key, label in attempts:
        groups = tmp.obs["batch"].to_numpy() if key is not None else np.zeros(tmp.n_obs)
        if key is not None and len(np.unique(groups)) < 2:
            continue
        if not _loess_safe(tmp.X, groups):
            # skmisc's loess crashes the process (not an exception) on such groups
            error = ValueError(f"a group has under {_MIN_VARYING_GENES} varying genes")
            logger.info("%s: HVG selection (%s) skipped: %s", source, label, error)
            continue
        threads = torch.get_num_threads()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = sc.pp.highly_variable_genes(
                    tmp, flavor="seurat_v3", n_top_genes=n_genes, batch_key=key, inplace=False
                )
        except Exception as e:  # scanpy/skmisc raise ValueError, LinAlgError, ...
            error = e
            logger.info("%s: HVG selection (%s) failed: %s", source, label, e)
            continue
        finally:  # scanpy's seurat_v3 resets the OpenMP thread count torch uses
            torch.set_num_threads(threads)
        mask = np.asarray(table["highly_variable"], dtype=bool)
        logger.info(
            "%s: selected %d highly variable genes of %d (seurat_v3, %s)",
            source,
            int(mask.sum()),
            adata.n_vars,
            label,
        )
        return adata[:, mask].copy()
    raise InputDataError(
        f"{source}: highly variable gene selection failed ({type(error).__name__}: {error}); "
        "set global.n_genes: null to keep every gene"
    )


def _loess_safe(X, groups: np.ndarray) -> bool:
    """Every group has enough cells and genes with non-zero variance for seurat_v3's loess."""
    for g in np.unique(groups):
        rows = X[groups == g]
        if rows.shape[0] < 3:
            return False
        mean = np.asarray(rows.mean(axis=0)).ravel()
        sq = np.asarray(rows.multiply(rows).mean(axis=0)).ravel()
        if int(((sq - mean**2) > 1e-12).sum()) < _MIN_VARYING_GENES:
            return False
    return True


def check_maxima(
    source: str,
    *,
    batches: list[str],
    labels: list[str] | None,
    n_batches: int | None,
    n_cell_types: int | None,
) -> None:
    """Counts of batches / cell types do not exceed global.n_batches / global.n_cell_types."""
    if n_batches is not None and len(batches) > n_batches:
        raise InputDataError(
            f"{source}: {len(batches)} batches found, more than global.n_batches ({n_batches}); "
            "raise global.n_batches or set it to null"
        )
    if labels is not None and n_cell_types is not None and len(labels) > n_cell_types:
        raise InputDataError(
            f"{source}: {len(labels)} cell types found, more than global.n_cell_types "
            f"({n_cell_types}); raise global.n_cell_types or set it to null"
        )


def fingerprint(adata) -> dict:
    """Identity of a dataset: shape and a short hash of its cell and gene names."""
    import hashlib

    h = hashlib.sha256()
    h.update("\n".join(map(str, adata.obs_names)).encode("utf-8"))
    h.update(b"\0")
    h.update("\n".join(map(str, adata.var_names)).encode("utf-8"))
    return {"n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars), "sha256": h.hexdigest()[:16]}


def restrict_genes(adata, genes: list[str], source: str):
    """``adata`` with the model's ``genes`` that it has, in the model's order.

    Genes it lacks are left to the model (zero counts); too small an overlap is an error.
    """
    present = pd.Index(adata.var_names).get_indexer(genes) >= 0
    n = int(present.sum())
    if n < 0.5 * len(genes):
        raise InputDataError(
            f"{source}: has only {n} of the model's {len(genes)} genes "
            f"({n / max(len(genes), 1):.0%}); the file and the model use different gene sets "
            "(check gene identifiers: symbols vs Ensembl IDs)"
        )
    if n < len(genes):
        missing = [g for g, ok in zip(genes, present, strict=True) if not ok]
        logger.warning(
            "%s: %d of the model's %d genes are missing (e.g. %s); they count as zero",
            source,
            len(genes) - n,
            len(genes),
            ", ".join(missing[:3]),
        )
    kept = [g for g, ok in zip(genes, present, strict=True) if ok]
    if n == adata.n_vars and list(adata.var_names) == kept:
        return adata
    return adata[:, kept].copy()
