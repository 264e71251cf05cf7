"""Out-of-core data: counts read from an ``.h5ad`` on disk in chunks of cells.

``anndata.read_h5ad(path, backed="r")`` keeps ``obs``/``var`` in memory and leaves ``X`` on
disk; slicing a contiguous range of rows of its sparse dataset reads just those rows. That is
all this module needs, so it uses anndata's own backed mode (maintained with anndata, no
extra dependency) rather than a separate loader. Training shuffles by chunk: each epoch
visits the chunks in a random order, holds a buffer of ``buffer_chunks`` of them in memory,
and shuffles the cells inside the buffer. Memory is bounded by the buffer, not the data.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

from scarkids.data.counts import check_counts, select_columns
from scarkids.data.store import DeviceMatrix
from scarkids.distributions.counts import NonZeros
from scarkids.errors import InputDataError


class BackedCounts:
    """The count matrix of a backed AnnData: contiguous row slices come back as checked
    float32 CSR (the raw-count checks run on each slice read). ``columns`` selects and orders
    genes (-1 = a gene the file lacks, read as zeros)."""

    def __init__(self, adata, *, where: str, columns: np.ndarray | None = None):
        self.adata = adata
        self.where = where
        self.columns = columns
        n_genes = adata.n_vars if columns is None else len(columns)
        self.shape = (adata.n_obs, n_genes)

    def with_columns(self, columns: np.ndarray) -> BackedCounts:
        return BackedCounts(self.adata, where=self.where, columns=columns)

    def __getitem__(self, rows: slice) -> sp.csr_matrix:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("BackedCounts reads contiguous row ranges only")
        try:
            block = self.adata.X[rows]
        except AttributeError as err:  # anndata <= 0.12.6 calls a method scipy 1.17 removed
            raise InputDataError(
                f"{self.where}: this anndata cannot read rows of a backed sparse matrix with "
                f"this scipy ({err}); install anndata>=0.12.7 or scipy<1.17, or read the file "
                "into memory (anndata.read_h5ad without backed=)"
            ) from err
        X = check_counts(block, where=self.where)
        return X if self.columns is None else select_columns(X, self.columns)


class ChunkedStore:
    """The training-data store for :class:`BackedCounts`, with the interface of
    :class:`~scarkids.data.DeviceMatrix` (``shuffle``, ``rows``, ``rows_and_nonzeros``,
    ``end_epoch``). Rows asked for must be gathered in the order :meth:`shuffle` returned
    (training) or in ascending order (validation, inference): a request for rows not in the
    buffer loads the chunks holding them, and during an epoch the rest of their group."""

    def __init__(
        self,
        counts: BackedCounts,
        device: torch.device,
        *,
        chunk_cells: int = 8192,
        buffer_chunks: int = 8,
    ):
        self.counts = counts
        self.shape = counts.shape
        self.device = torch.device(device)
        self.dense = False
        self.chunk_cells = chunk_cells
        self.buffer_chunks = buffer_chunks
        self.n_chunks = math.ceil(self.shape[0] / chunk_cells)
        self._local = np.full(self.shape[0], -1, dtype=np.int64)  # cell -> buffer row
        self._buffer: DeviceMatrix | None = None
        self._group: dict[int, list[int]] = {}  # chunk -> the chunks loaded with it
        self.chunks_read = 0

    # the epoch plan --------------------------------------------------------------------
    def shuffle(self, index: torch.Tensor, generator: torch.Generator | None = None):
        """A chunk-shuffled order of the cells ``index``: chunks in random order, in groups
        of ``buffer_chunks``; cells shuffled within their group."""
        idx = index.cpu()
        chunk_order = torch.randperm(self.n_chunks, generator=generator).tolist()
        cell_chunk = idx // self.chunk_cells
        parts = []
        self._group = {}
        for g in range(0, self.n_chunks, self.buffer_chunks):
            group = sorted(chunk_order[g : g + self.buffer_chunks])
            for c in group:
                self._group[c] = group
            cells = idx[torch.isin(cell_chunk, torch.tensor(group))]
            parts.append(cells[torch.randperm(cells.numel(), generator=generator)])
        return torch.cat(parts).to(index.device)

    def end_epoch(self) -> None:
        """Forget the epoch's groups: later reads (validation) load only what they need."""
        self._group = {}

    # gathering -------------------------------------------------------------------------
    def row_block(self, start: int, end: int) -> torch.Tensor:
        return self.rows_and_nonzeros(torch.arange(start, end, device=self.device))[0]

    def rows_and_nonzeros(self, index: torch.Tensor) -> tuple[torch.Tensor, NonZeros | None]:
        cells = index.cpu().numpy()
        local = self._local[cells]
        if (local < 0).any():
            chunks = set((cells // self.chunk_cells).tolist())
            for c in set((cells[local < 0] // self.chunk_cells).tolist()):
                chunks.update(self._group.get(c, [c]))
            self._load(sorted(chunks))
            local = self._local[cells]
        return self._buffer.rows_and_nonzeros(torch.as_tensor(local, device=self.device))

    def _load(self, chunks: list[int]) -> None:
        self._local[:] = -1
        self._buffer = None  # free the old buffer before reading the new one
        parts, position = [], 0
        for c in chunks:
            start, end = c * self.chunk_cells, min((c + 1) * self.chunk_cells, self.shape[0])
            parts.append(self.counts[start:end])
            self._local[start:end] = np.arange(position, position + end - start)
            position += end - start
        self.chunks_read += len(chunks)
        X = sp.vstack(parts, format="csr") if len(parts) > 1 else parts[0]
        del parts
        self._buffer = DeviceMatrix(X, self.device)
