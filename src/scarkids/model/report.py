"""``model.report(path)``: the run report of a model, as the command line writes it.

A mixin of :class:`scarkids.model.SCARKIDS`; the page is laid out by
:mod:`scarkids.pl.report` (``pl`` sits beside the model, not under it: the plots read a
model's history and outputs and import nothing of it, so the model may import them;
docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


class ModelReport:
    """Writes ``report.html`` for a model and, optionally, its data."""

    def report(
        self,
        path="report.html",
        adata=None,
        *,
        metrics: Mapping[str, float] | None = None,
        label_key: str | None = None,
        confidence_threshold: float | None = 0.5,
        novelty_quantile: float | None = 0.99,
        max_cells: int | None = 10_000,
        seed: int = 0,
    ) -> Path:
        """Write one self-contained HTML report: curves, UMAPs, predictions, composition.

        The page holds every image inline (PNG as base64) and loads nothing from outside, so
        it opens from disk anywhere and can be mailed; it is written to a temporary file
        beside ``path`` and renamed.

        Parameters
        ----------
        path
            The ``.html`` file to write.
        adata
            Cells to embed, predict and draw (registered like the training data, or a query
            set up with :meth:`setup_anndata`); default: the data the model was trained on,
            when it holds it. Without data, the report shows the training curves only.
        metrics
            Integration metrics to show, e.g. :func:`scarkids.metrics.quick_metrics` of the
            latent (``batch_silhouette``, ``celltype_silhouette``, ``cLISI``, ``bLISI``).
        label_key
            ``adata.obs`` column of known labels for the composition and the confusion
            matrix; default: the model's labels column.
        confidence_threshold, novelty_quantile
            The ``unknown`` rules, as in :meth:`predict_with_uncertainty`.
        max_cells
            The latent, the predictions and the UMAPs use a seeded subsample of at most this
            many cells (``None``: every cell).
        seed
            Seed of the subsample and the UMAP.

        Returns
        -------
        pathlib.Path
            The report written.

        Examples
        --------
        >>> model.report("report.html", adata)  # doctest: +SKIP
        """
        from scarkids.pl.report import model_report

        data = adata if adata is not None else getattr(self, "adata", None)
        return model_report(
            self,
            path,
            data,
            metrics=metrics,
            title=f"scARKIDS report: {type(self).__name__} ({self.registry.batch_key})",
            label_key=label_key,
            confidence_threshold=confidence_threshold,
            novelty_quantile=novelty_quantile,
            max_cells=max_cells,
            seed=seed,
        )
