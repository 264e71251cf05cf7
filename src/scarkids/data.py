"""AnnData registration, input checks and device-resident data.

The registry records where the counts, batches and labels are and the order of every
category, so that any later AnnData (validation, test, a later session, a query) is encoded
with the same indices, matched by name, never re-derived per file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .distributions import NonZeros
from .errors import CheckpointError, InputDataError

#: adata.uns key written by :func:`setup_anndata`
SETUP_KEY = "_scarkids_setup"
#: fraction of the model's genes a new AnnData must have for name alignment
MIN_GENE_OVERLAP = 0.5
#: counts deviating from integers by more than this are "not counts"
INTEGER_TOLERANCE = 1e-3


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
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Registry:
        return cls(**d)


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
                "set data.counts_layer to the layer holding raw counts, or null to use X"
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
        from .backed import BackedCounts  # out-of-core: read and checked chunk by chunk

        return BackedCounts(adata, where=where)
    return check_counts(X, where=where, what=what)


def check_counts(X, *, where: str, what: str = "X") -> sp.csr_matrix:
    """``X`` as float32 CSR after the raw-count checks of :func:`get_counts`."""
    if not sp.issparse(X):
        X = sp.csr_matrix(np.asarray(X))
    X = sp.csr_matrix(X, dtype=np.float32)
    data = X.data
    if data.size:
        # min/max propagate NaN and see inf: no full-size boolean temporary
        if not (np.isfinite(data.min()) and np.isfinite(data.max())):
            raise InputDataError(
                f"{where}: {what} contains NaN or inf values; scARKIDS needs raw counts"
            )
        if data.min() < 0:
            raise InputDataError(
                f"{where}: {what} has negative values (min {data.min():.3g}); it looks scaled or "
                "normalised, give raw counts (set data.counts_layer if they are in a layer)"
            )
        example = _first_non_integer(data)
        if example is not None:
            hint = "it looks log-normalised" if data.max() < 20 else "values are not integers"
            raise InputDataError(
                f"{where}: {what} does not hold raw counts ({hint}, e.g. {example:.4g}); "
                "give integer counts (set data.counts_layer if they are in a layer, or round them)"
            )
    return X


def _first_non_integer(data: np.ndarray, piece: int = 1 << 24) -> float | None:
    """A value of ``data`` that is not an integer (beyond the tolerance), or None. Checked
    in pieces: no full-size temporaries for hundreds of millions of values."""
    for start in range(0, data.size, piece):
        part = data[start : start + piece]
        frac = np.abs(part - np.round(part))
        if frac.max() > INTEGER_TOLERANCE:
            return float(part[frac.argmax()])
    return None


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
    """Category names in their categorical order (or sorted), NaN and ``exclude`` removed."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        cats = [str(c) for c in series.cat.categories if (series == c).any()]
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


def select_columns(X: sp.csr_matrix, positions: np.ndarray) -> sp.csr_matrix:
    """Columns ``positions`` of ``X`` in that order; -1 gives an all-zero column."""
    if hasattr(X, "with_columns"):  # counts on disk: selected as each chunk is read
        return X.with_columns(positions)
    if (positions >= 0).all():
        if np.array_equal(positions, np.arange(X.shape[1])):
            return X
        return X[:, positions].tocsr()
    present = positions >= 0
    sub = X[:, positions[present]].tocsc()
    out = sp.hstack(
        [sub, sp.csc_matrix((X.shape[0], int((~present).sum())), dtype=X.dtype)]
    ).tocsc()
    order = np.concatenate([np.flatnonzero(present), np.flatnonzero(~present)])
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return out[:, inverse].tocsr()


def _scatter_csr_rows(
    lengths: torch.Tensor, col: torch.Tensor, values: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """Write consecutive CSR rows (entries per row ``lengths``, their ``col`` and ``values``,
    already on ``out``'s device) into the zeroed dense block ``out`` (rows x genes)."""
    n, n_genes = out.shape
    row = torch.repeat_interleave(
        torch.arange(n, device=out.device), lengths, output_size=values.shape[0]
    )
    out.view(-1).index_copy_(0, row * n_genes + col, values)
    return out


def _dense_on_device(X, device: torch.device, block_cells: int = 65_536) -> torch.Tensor:
    """``X`` (cells x genes, sparse or dense) as a dense float32 tensor on ``device``, filled
    block by block. A CSR block travels as its three arrays (slices, no copy on the host)
    and is scattered into place on the device: for a million cells seconds instead of the
    ~20 s (on this project's 2-core machine) that densifying on the host would take."""
    n = X.shape[0]
    out = torch.zeros(X.shape, dtype=torch.float32, device=device)
    if not sp.issparse(X):
        for start in range(0, n, block_cells):
            out[start : start + block_cells] = torch.as_tensor(
                np.asarray(X[start : start + block_cells]), dtype=torch.float32
            )
        return out
    X = sp.csr_matrix(X)
    if not X.has_canonical_format:  # duplicates summed, as toarray() would
        X = X.copy()
        X.sum_duplicates()
    for start in range(0, n, block_cells):
        end = min(start + block_cells, n)
        lo, hi = int(X.indptr[start]), int(X.indptr[end])
        _scatter_csr_rows(
            torch.as_tensor(np.diff(X.indptr[start : end + 1]), device=device),
            torch.as_tensor(X.indices[lo:hi], device=device).long(),
            torch.as_tensor(X.data[lo:hi], device=device).float(),
            out[start:end],
        )
    return out


class DeviceMatrix:
    """A cells x genes count matrix resident on a device, with row gathering there.

    On CPUs it is kept as CSR (three tensors, plus ``lgamma(count + 1)`` per stored entry):
    a minibatch gather then also yields its non-zero entries, which the likelihood needs
    (:class:`~scarkids.distributions.NonZeros`), without scanning the dense rows. On GPUs it
    is dense when it fits under ``dense_limit_bytes`` (default: half the device's free
    memory; the likelihood then works densely, without host syncs) and CSR otherwise.
    """

    def __init__(
        self, X: sp.csr_matrix, device: torch.device, *, dense_limit_bytes: float | None = None
    ):
        self.shape = X.shape
        self.device = torch.device(device)
        if dense_limit_bytes is None:
            dense_limit_bytes = (
                0.5 * torch.cuda.mem_get_info(self.device)[0]
                if self.device.type == "cuda"
                else 2**30
            )
        fits = X.shape[0] * X.shape[1] * 4 <= dense_limit_bytes
        self.dense = fits and self.device.type != "cpu"
        if self.dense:
            self.values = _dense_on_device(X, self.device)
        else:
            X = sp.csr_matrix(X)
            X.sum_duplicates()
            X.eliminate_zeros()
            self.crow = torch.as_tensor(X.indptr.astype(np.int64), device=device)
            # on CPUs these share the scipy arrays (no copy of the data)
            self.col = torch.as_tensor(X.indices.astype(np.int32, copy=False), device=device)
            self.val = torch.as_tensor(X.data, dtype=torch.float32, device=device)
            # lgamma(x + 1) per stored value saves time per step; above 256M values it would
            # cost more memory than it is worth and is computed per minibatch instead
            self.log_factorial = (
                torch.lgamma(self.val + 1.0) if self.val.numel() <= 1 << 28 else None
            )

    def shuffle(
        self, index: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The cells ``index`` in a random order (one epoch's visiting order)."""
        if generator is not None:  # a CPU generator shared by all ranks of a distributed run
            order = torch.randperm(index.shape[0], generator=generator).to(index.device)
        else:
            order = torch.randperm(index.shape[0], device=index.device)
        return index[order]

    def end_epoch(self) -> None:
        """Nothing to release: all rows stay on the device (see ChunkedStore)."""

    def row_block(self, start: int, end: int) -> torch.Tensor:
        """Dense float32 rows ``start:end`` (a contiguous block: a slice of the CSR arrays,
        no gather), shape ``(end - start, n_genes)``."""
        if self.dense:
            return self.values[start:end]
        lo, hi = int(self.crow[start]), int(self.crow[end])
        return _scatter_csr_rows(
            self.crow[start + 1 : end + 1] - self.crow[start:end],
            self.col[lo:hi],
            self.val[lo:hi],
            torch.zeros((end - start, self.shape[1]), dtype=torch.float32, device=self.device),
        )

    def rows_and_nonzeros(self, index: torch.Tensor) -> tuple[torch.Tensor, NonZeros | None]:
        """Dense rows ``index`` and, from a CSR store, their non-zero entries (else None)."""
        if self.dense:
            return self.values.index_select(0, index), None
        starts = self.crow.index_select(0, index)
        lengths = self.crow.index_select(0, index + 1) - starts
        n, n_genes = index.shape[0], self.shape[1]
        total = int(lengths.sum())
        row = torch.repeat_interleave(
            torch.arange(n, device=self.device), lengths, output_size=total
        )
        # position in the store of each gathered entry: its rank within the output,
        # minus the output offset of its row, plus the row's start in the store
        shift = (starts - (torch.cumsum(lengths, 0) - lengths)).index_select(0, row)
        pos = torch.arange(total, device=self.device) + shift
        gene = self.col.index_select(0, pos).long()
        flat = row * n_genes + gene
        counts = self.val.index_select(0, pos)
        out = torch.zeros(n * n_genes, dtype=torch.float32, device=self.device)
        out.index_copy_(0, flat, counts)
        log_factorial = (
            self.log_factorial.index_select(0, pos)
            if self.log_factorial is not None
            else torch.lgamma(counts + 1.0)
        )
        nonzeros = NonZeros(flat, row, gene, counts, log_factorial)
        return out.view(n, n_genes), nonzeros
