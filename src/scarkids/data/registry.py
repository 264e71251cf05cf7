"""AnnData registration: where the counts, batches and labels are, and every category's index.

The registry records where the counts, batches and labels are and the order of every
category, so that any later AnnData (validation, test, a later session, a query) is encoded
with the same indices, matched by name, never re-derived per file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scarkids.constants import SETUP_KEY  # noqa: F401 (re-exported)
from scarkids.data.counts import check_counts
from scarkids.errors import CheckpointError, InputDataError

#: fraction of the model's genes a new AnnData must have for name alignment
MIN_GENE_OVERLAP = 0.5


@dataclass
class Registry:
    """Where the model's inputs live in an AnnData and what each index means."""

    batch_key: str
    labels_key: str | None
    layer: str | None
    unlabeled_category: str
    gene_names: list[str]
    batch_categories: list[str]
    label_categories: list[str]
    #: True when ``label_categories`` are unnamed clusters (unsupervised from scratch)
    labels_are_clusters: bool = False
    #: unsupervised: the most clusters the model reports (``n_labels``); the module fits
    #: mixture components, ``cluster_factor`` times as many, that training merges into them
    max_clusters: int | None = None
    #: unsupervised, once trained: the reported clusters, each a list of component names
    #: (``label_categories``), largest first; ``None``: every component is a cluster
    cluster_groups: list[list[str]] | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Registry:
        """The registry of a checkpoint's dict; keys a later version added are ignored."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def describe(adata, source: str | None) -> str:
    """The name used in error messages: the file path when known."""
    if source:
        return source
    if getattr(adata, "isbacked", False):
        return str(adata.filename)
    return "AnnData"


def get_counts(adata, layer: str | None, *, source: str | None = None) -> sp.csr_matrix:
    """Return the count matrix as float32 CSR, after checking it holds raw counts.

    Raises :class:`InputDataError` for a missing layer, an empty matrix, NaN/inf, negative or
    non-integer values (log-normalised data is recognised and named as such).
    """
    where = describe(adata, source)
    if layer is not None:
        if layer not in adata.layers:
            raise InputDataError(
                f"{where}: layer {layer!r} not found (layers: {sorted(adata.layers)}); "
                "pass layer= the layer holding raw counts (setup_anndata), or layer=None to use X"
            )
        X = adata.layers[layer]
        what = f"layers[{layer!r}]"
    else:
        X = adata.X
        what = "X"
    if X is None or adata.n_obs == 0 or adata.n_vars == 0:
        raise InputDataError(
            f"{where}: {what} is empty ({adata.n_obs} cells x {adata.n_vars} genes)"
        )
    if getattr(adata, "isbacked", False) and layer is None:
        from scarkids.data.backed import (
            BackedCounts,  # out-of-core: read and checked chunk by chunk
        )

        return BackedCounts(adata, where=where)
    return check_counts(X, where=where, what=what)


def category_codes(
    values: pd.Series,
    categories: list[str],
    *,
    column: str,
    source: str | None,
    unknown: str = "error",
    unlabeled_category: str | None = None,
) -> np.ndarray:
    """Map an obs column to indices of ``categories`` by name (int64, -1 for unlabelled).

    ``unknown="error"`` raises for names not in ``categories``; ``"unlabelled"`` maps them
    (and NaN, and ``unlabeled_category``) to -1.
    """
    as_str = values.astype(object)
    missing = as_str.isna().to_numpy().copy()  # writable (pandas 3 hands out read-only views)
    names = as_str.where(~missing, "").astype(str).to_numpy()
    codes = pd.Index(categories).get_indexer(names).astype(np.int64)  # -1 where unknown
    if unlabeled_category is not None:
        missing |= names == unlabeled_category
    codes[missing] = -1
    if unknown == "error":
        if missing.any():
            raise InputDataError(
                f"{describe(None, source)}: obs[{column!r}] has {int(missing.sum())} missing (NaN) "
                "values; fill them or drop those cells"
            )
        bad = sorted(set(names[codes < 0]))
        if bad:
            raise InputDataError(
                f"{describe(None, source)}: obs[{column!r}] has categories unknown to the model: "
                f"{', '.join(map(repr, bad[:5]))}{' ...' if len(bad) > 5 else ''}; "
                f"known: {', '.join(map(repr, categories[:10]))}"
            )
    return codes


def obs_column(adata, key: str, *, source: str | None, what: str) -> pd.Series:
    if key not in adata.obs.columns:
        raise InputDataError(
            f"{describe(adata, source)}: obs column {key!r} ({what}) not found; "
            f"available: {', '.join(map(repr, list(adata.obs.columns)[:12]))}"
        )
    return adata.obs[key]


def sorted_categories(series: pd.Series, exclude: str | None = None) -> list[str]:
    """Category names in their categorical order (or sorted), NaN and ``exclude`` removed.

    The one category-ordering rule: the model's registry and the command line's checks use it.
    Only categories that occur are kept.
    """
    if isinstance(series.dtype, pd.CategoricalDtype):
        used = np.zeros(len(series.cat.categories), dtype=bool)
        codes = np.asarray(series.cat.codes)
        used[codes[codes >= 0]] = True  # one pass, not one comparison per category
        cats = [str(c) for c, u in zip(series.cat.categories, used, strict=True) if u]
    else:
        cats = sorted({str(v) for v in series.dropna().unique()})
    return [c for c in cats if c != exclude]


def align_genes(adata, gene_names: list[str], *, source: str | None = None) -> np.ndarray:
    """Column index into ``adata`` for each model gene (-1 where absent).

    Raises :class:`CheckpointError` when fewer than ``MIN_GENE_OVERLAP`` of the genes match.
    """
    pos = pd.Index(adata.var_names.astype(str)).get_indexer(gene_names)
    overlap = float((pos >= 0).mean())
    if overlap < MIN_GENE_OVERLAP:
        raise CheckpointError(
            f"{describe(adata, source)}: only {int((pos >= 0).sum())} of the model's "
            f"{len(gene_names)} genes are in var_names ({overlap:.0%}); the data and the "
            "checkpoint use different gene sets (check gene identifiers: symbols vs Ensembl IDs)"
        )
    return pos
