"""Plots: UMAPs coloured by batch and cell type, the metrics table."""

from scarkids.pl.plots import plot_metrics_table, plot_umap

__all__ = ["plot_metrics_table", "plot_umap"]
