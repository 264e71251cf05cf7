"""Device-resident count matrices: counts held on the training device (dense or CSR)
and gathered there by row, with no per-cell Python.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from scarkids.distributions.counts import NonZeros


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
