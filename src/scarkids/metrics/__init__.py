"""Integration metrics: fast numpy ones for the training log, the scIB benchmark, and what
the labels don't name (fine types under coarse labels, structure within each batch)."""

from scarkids.metrics.quick import quick_metrics
from scarkids.metrics.scib import evaluate, write_evaluation
from scarkids.metrics.structure import (
    fine_label_structure,
    neighbour_overlap,
    within_batch_structure,
)

__all__ = [
    "evaluate",
    "fine_label_structure",
    "neighbour_overlap",
    "quick_metrics",
    "within_batch_structure",
    "write_evaluation",
]
