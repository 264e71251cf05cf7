"""Plots: UMAPs, training curves, composition, confidence, ``unknown`` cells, confusion, the
metrics table, and the run report (``report.html``).

Every function returning a figure returns a :class:`matplotlib.figure.Figure` (no pyplot
state is touched); ``fig.savefig("name.png")`` writes it.
"""

from scarkids.pl.figures import (
    composition,
    confidence_histogram,
    confusion_matrix,
    training_curves,
    umap_coordinates,
    umap_figure,
    unknown_per_batch,
)
from scarkids.pl.plots import plot_metrics_table, plot_umap
from scarkids.pl.report import model_report, write_report

__all__ = [
    "composition",
    "confidence_histogram",
    "confusion_matrix",
    "model_report",
    "plot_metrics_table",
    "plot_umap",
    "training_curves",
    "umap_coordinates",
    "umap_figure",
    "unknown_per_batch",
    "write_report",
]
