"""Data: AnnData registration, raw-count checks, device-resident and on-disk stores, gene
selection, h5ad writing, and the simulator."""

from scarkids.data.backed import BackedCounts, ChunkedStore
from scarkids.data.counts import check_counts, select_columns
from scarkids.data.registry import (
    SETUP_KEY,
    Registry,
    align_genes,
    category_codes,
    get_counts,
    obs_column,
    sorted_categories,
)
from scarkids.data.store import DeviceMatrix

__all__ = [
    "SETUP_KEY",
    "BackedCounts",
    "ChunkedStore",
    "DeviceMatrix",
    "Registry",
    "align_genes",
    "category_codes",
    "check_counts",
    "get_counts",
    "obs_column",
    "select_columns",
    "sorted_categories",
]
