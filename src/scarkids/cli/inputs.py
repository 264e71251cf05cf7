"""Reading the train and validation files of a resolved config for the command line:
columns checked, genes selected, zero-count cells handled, categories checked against a
resumed model. Each check raises :class:`~scarkids.errors.InputDataError` with one line that
names the file, the key or column and what to do.
"""

from __future__ import annotations

import logging
from pathlib import Path

from scarkids.cli.prepare import (
    check_columns,
    check_maxima,
    read_h5ad,
    restrict_genes,
    select_genes,
    zero_count_cells,
)
from scarkids.config.translate import n_labels, setup_kwargs
from scarkids.data.registry import sorted_categories
from scarkids.errors import ConfigError

logger = logging.getLogger(__name__)


def read_training_file(cfg, path: str, what: str, labels_key, genes):
    """Read a train / validation file of a resolved config: columns checked, genes selected
    (HVG) or restricted to ``genes``, zero-count cells handled, set up for the model.
    Returns the AnnData and the number of genes in the file."""
    data, glob = cfg["data"], cfg["global"]
    adata = read_h5ad(path, what=what)
    check_columns(adata, path, batch_key=data["batch_key"], labels_key=labels_key)
    n_file_genes = adata.n_vars
    if genes is None:
        adata = select_genes(
            adata,
            path,
            n_genes=glob["n_genes"],
            flavor=data["hvg_flavor"],
            batch_key=data["batch_key"],
            layer=data["counts_layer"],
        )
    else:
        adata = restrict_genes(adata, genes, path)
    adata = zero_count_cells(adata, path, layer=data["counts_layer"], mode=data["zero_count_cells"])
    _setup(adata, cfg, labels_key)
    return adata, n_file_genes


def _setup(adata, cfg, labels_key) -> None:
    """Set ``adata`` up with the config's keys and ``labels_key`` (a resumed model's may differ
    from the config's)."""
    from scarkids.model.scarkids import SCARKIDS

    SCARKIDS.setup_anndata(adata, **{**setup_kwargs(cfg), "labels_key": labels_key})


def read_validation_file(cfg, labels_key, genes):
    """``data.val_data_path`` prepared like the train file, or None (split the train cells)."""
    path = cfg["data"]["val_data_path"]
    if path is None:
        return None
    if not Path(path).exists():
        logger.warning(
            "data.val_data_path: %s not found; holding out %.0f%% of the train cells instead",
            path,
            100 * cfg["data"]["val_fraction"],
        )
        return None
    adata, _ = read_training_file(cfg, path, "validation data file", labels_key, genes)
    return adata


def check_categories(cfg, adata, val_adata, base, labels_key, source: str) -> None:
    """Batches and cell types within the configured maxima; prior probabilities that fit."""
    glob, data = cfg["global"], cfg["data"]
    frames = [a for a in (adata, val_adata) if a is not None]
    batches = set().union(*(sorted_categories(a.obs[data["batch_key"]]) for a in frames))
    labels = None
    if labels_key is not None:
        labels = set().union(
            *(sorted_categories(a.obs[labels_key], data["unlabeled_category"]) for a in frames)
        )
    if base is not None:
        batches |= set(base.registry.batch_categories)
        if labels is not None and not base.registry.labels_are_clusters:
            labels |= set(base.registry.label_categories)
    check_maxima(
        source,
        batches=sorted(batches),
        labels=sorted(labels) if labels is not None else None,
        n_batches=glob["n_batches"],
        n_cell_types=glob["n_cell_types"],
    )
    probs = cfg["prior"]["cell_type_prior_probs"]
    if probs is None:
        return
    if base is not None:
        logger.warning("prior.cell_type_prior_probs is ignored: the model comes from resume_from")
        return
    if labels_key is not None:
        n, what = (
            len(sorted_categories(adata.obs[labels_key], data["unlabeled_category"])),
            "cell types in the train data",
        )
    else:
        n, what = n_labels(cfg), "clusters (global.n_cell_types)"
    if len(probs) != n:
        raise ConfigError(
            f"prior.cell_type_prior_probs: has {len(probs)} values but there are {n} {what}; "
            "give one probability per cell type (sorted by name) or null"
        )
