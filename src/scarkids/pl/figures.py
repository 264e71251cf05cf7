"""Figures of a run: training curves, composition, confidence, ``unknown`` cells, confusion.

Each function returns a :class:`matplotlib.figure.Figure` drawn on an Agg canvas (no display,
the caller's pyplot backend untouched); save it with ``fig.savefig(path)``. The run report
(:func:`scarkids.pl.report.write_report`) is built from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from scarkids.errors import InputDataError
from scarkids.pl.plots import _categorical_panel, _new_figure, _palette, _umap_coordinates

#: (history key suffix, panel title) of the loss terms, in the order of the log's epoch line
LOSS_TERMS = (
    ("reconstruction", "Reconstruction NLL"),
    ("vae_kl", "VAE KL"),
    ("diffusion_kl", "Diffusion KL"),
    ("classification", "Classification loss"),
    ("accuracy", "Classification accuracy"),
    ("elbo", "ELBO"),
)


def training_curves(model_or_history, *, best_epoch: int | None = None) -> Figure:
    """One panel per term of the loss, train and validation, against the epoch.

    Parameters
    ----------
    model_or_history
        A trained :class:`~scarkids.SCARKIDS` (its ``history``) or a history mapping
        (``{"train_reconstruction": [...], "val_reconstruction": [...], ...}``).
    best_epoch
        The epoch that was kept (1-based), marked by a dashed line; default: the model's
        ``training_state.best_epoch`` when there is one.

    Returns
    -------
    matplotlib.figure.Figure
        The panels; terms without finite values (accuracy without labels) are left out.

    Raises
    ------
    InputDataError
        When the history holds no epoch.
    """
    history = getattr(model_or_history, "history", model_or_history)
    if best_epoch is None:
        state = getattr(model_or_history, "training_state", None)
        best = getattr(state, "best_epoch", -1)
        best_epoch = best + 1 if best is not None and best >= 0 else None
    if not isinstance(history, Mapping) or not any(
        len(history.get(f"train_{k}", [])) for k, _ in LOSS_TERMS
    ):
        raise InputDataError("the model has no training history: train it first")
    terms = [(k, t) for k, t in LOSS_TERMS if _finite(history, k)]
    n_cols = 3
    n_rows = -(-len(terms) // n_cols)
    fig = _new_figure(4.2 * n_cols, 3.0 * n_rows, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, (key, title) in zip(axes, terms, strict=False):
        for split, style in (("train", "-"), ("val", "--")):
            values = np.asarray(history.get(f"{split}_{key}", []), dtype=float)
            if len(values) and np.isfinite(values).any():
                epochs = np.arange(1, len(values) + 1)
                label = "train" if split == "train" else "validation"
                ax.plot(
                    epochs, values, style, marker="." if len(values) < 30 else None, label=label
                )
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.4", linestyle=":", linewidth=1, label="kept epoch")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7, frameon=False)
    for ax in axes[len(terms) :]:
        ax.set_visible(False)
    return fig


def _finite(history: Mapping, key: str) -> bool:
    for split in ("train", "val"):
        values = np.asarray(history.get(f"{split}_{key}", []), dtype=float)
        if len(values) and np.isfinite(values).any():
            return True
    return False


def umap_coordinates(embedding, *, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """2-d UMAP coordinates of an embedding, computed once to colour it several ways.

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` array, e.g. ``model.get_latent_representation()``.
    seed
        Seed of the neighbour graph and the UMAP.
    n_neighbors
        Neighbours of the UMAP graph (kept between 2 and ``n_cells - 1``).

    Returns
    -------
    numpy.ndarray
        ``(n_cells, 2)`` coordinates, for :func:`umap_figure`.
    """
    return _umap_coordinates(embedding, seed, n_neighbors)


def umap_figure(
    coords,
    obs: pd.DataFrame,
    color: Sequence[str],
    *,
    title: str | None = None,
    seed: int = 0,
) -> Figure:
    """UMAP coordinates coloured by columns of ``obs``, one panel per column.

    Parameters
    ----------
    coords
        ``(n_cells, 2)`` coordinates (:func:`umap_coordinates`).
    obs
        One row per cell of ``coords``; a numeric column is drawn on a colour scale, any
        other by its categories (missing values in grey).
    color
        Columns of ``obs`` to draw.
    title
        Title above the panels.
    seed
        Seed of the drawing order of the cells (no batch drawn on top).

    Returns
    -------
    matplotlib.figure.Figure
        The panels, points rasterized.

    Raises
    ------
    InputDataError
        When a column is missing or the rows do not match.
    """
    coords = np.asarray(coords)
    if len(obs) != coords.shape[0]:
        raise InputDataError(f"{coords.shape[0]} coordinates but {len(obs)} rows of obs")
    for col in color:
        if col not in obs.columns:
            raise InputDataError(f"obs column '{col}' not found: cannot colour by it")
    n = max(len(color), 1)
    n_cols = min(n, 3)
    n_rows = -(-n // n_cols)
    fig = _new_figure(5.2 * n_cols, 4.0 * n_rows, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    size = float(np.clip(12000 / max(len(obs), 1), 0.5, 20))
    order = np.random.default_rng(seed).permutation(len(obs))
    for ax, col in zip(axes, color, strict=False):
        values = obs[col]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            points = ax.scatter(
                coords[order, 0],
                coords[order, 1],
                s=size,
                c=values.to_numpy(dtype=float)[order],
                cmap="viridis",
                linewidths=0,
                rasterized=True,
            )
            fig.colorbar(points, ax=ax, shrink=0.8)
        else:
            _categorical_panel(ax, coords, values, order, size)
        ax.set_title(col)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return fig


def composition(adata_or_obs, *, batch_key: str = "batch", label_key: str = "cell_type") -> Figure:
    """Share of each cell type (or cluster, or prediction) in each batch, stacked bars.

    Parameters
    ----------
    adata_or_obs
        An AnnData or its ``obs`` table.
    batch_key
        Column of the batches (one bar each).
    label_key
        Column of the labels (one colour each; missing values as ``NA``).

    Returns
    -------
    matplotlib.figure.Figure
        Bars of shares (0 to 1) with the batch sizes in the tick labels.

    Raises
    ------
    InputDataError
        When a column is missing.
    """
    obs = _obs(adata_or_obs, batch_key, label_key)
    labels = obs[label_key].astype("object").fillna("NA").astype(str)
    table = pd.crosstab(obs[batch_key].astype(str), labels)
    shares = table.div(table.sum(axis=1), axis=0)
    fig = _new_figure(2.5 + 0.6 * len(shares), 3.8, layout="constrained")
    ax = fig.add_subplot(111)
    colors = _palette(shares.shape[1])
    bottom = np.zeros(len(shares))
    x = np.arange(len(shares))
    for j, label in enumerate(shares.columns):
        ax.bar(x, shares[label].to_numpy(), bottom=bottom, color=colors[j], label=label)
        bottom += shares[label].to_numpy()
    ax.set_xticks(x)
    ax.set_xticklabels(
        [f"{b}\n(n={n:,})" for b, n in table.sum(axis=1).items()], rotation=45, ha="right"
    )
    ax.set_ylabel(f"share of {label_key}")
    ax.set_ylim(0, 1)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=7)
    return fig


def confidence_histogram(
    predictions, *, column: str = "probability", threshold: float | None = None
) -> Figure:
    """Histogram of the prediction probability, split into called and ``unknown`` cells.

    Parameters
    ----------
    predictions
        The table of :meth:`~scarkids.SCARKIDS.predict_with_uncertainty` (or
        ``cell_type_predictions.csv``), or an array of probabilities.
    column
        Column of the probabilities.
    threshold
        ``inference.confidence_threshold``, drawn as a line when given.

    Returns
    -------
    matplotlib.figure.Figure
        The histogram (0 to 1, 40 bins).

    Raises
    ------
    InputDataError
        When the column is missing.
    """
    if isinstance(predictions, pd.DataFrame):
        if column not in predictions.columns:
            raise InputDataError(f"no column '{column}' in the predictions")
        prob = predictions[column].to_numpy(dtype=float)
        unknown = predictions["unknown"].to_numpy(dtype=bool) if "unknown" in predictions else None
    else:
        prob, unknown = np.asarray(predictions, dtype=float), None
    fig = _new_figure(5.0, 3.2, layout="constrained")
    ax = fig.add_subplot(111)
    bins = np.linspace(0, 1, 41)
    if unknown is None:
        ax.hist(prob, bins=bins, color="C0")
    else:
        ax.hist(
            [prob[~unknown], prob[unknown]],
            bins=bins,
            stacked=True,
            color=["C0", "C3"],
            label=["called", "unknown"],
        )
        ax.legend(frameon=False, fontsize=8)
    if threshold is not None:
        ax.axvline(threshold, color="0.3", linestyle="--", linewidth=1)
    ax.set_xlabel("prediction probability (calibrated)")
    ax.set_ylabel("cells")
    return fig


def unknown_per_batch(predictions: pd.DataFrame, batch) -> Figure:
    """Number of ``unknown`` cells in each batch, by reason, with each batch's share.

    Parameters
    ----------
    predictions
        Table with a boolean ``unknown`` column (and ``unknown_reason`` when known).
    batch
        The batch of each row of ``predictions`` (array or Series).

    Returns
    -------
    matplotlib.figure.Figure
        Stacked bars of counts, one per batch, the share written above each.

    Raises
    ------
    InputDataError
        When ``unknown`` is missing or the lengths differ.
    """
    if "unknown" not in predictions.columns:
        raise InputDataError("no column 'unknown' in the predictions")
    batch = np.asarray(batch).astype(str)
    if len(batch) != len(predictions):
        raise InputDataError(f"{len(batch)} batch values for {len(predictions)} predictions")
    unknown = predictions["unknown"].to_numpy(dtype=bool)
    reason = predictions.get("unknown_reason", pd.Series("unknown", index=predictions.index))
    reason = np.where(unknown, reason.astype("object").fillna("unknown").astype(str), "")
    table = pd.crosstab(batch, reason)
    totals = table.sum(axis=1)
    table = table.drop(columns=[""], errors="ignore")
    fig = _new_figure(2.5 + 0.6 * len(totals), 3.4, layout="constrained")
    ax = fig.add_subplot(111)
    x = np.arange(len(totals))
    bottom = np.zeros(len(totals))
    for j, col in enumerate(table.columns):
        ax.bar(x, table[col].to_numpy(), bottom=bottom, color=f"C{3 + j}", label=col)
        bottom += table[col].to_numpy()
    for i, (n_unknown, n) in enumerate(zip(bottom, totals, strict=True)):
        ax.text(i, n_unknown, f"{n_unknown / max(n, 1):.0%}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{b}\n(n={n:,})" for b, n in totals.items()], rotation=45, ha="right")
    ax.set_ylabel("unknown cells")
    ax.set_ylim(0, max(1.0, float(bottom.max()) * 1.15))
    if len(table.columns):
        ax.legend(frameon=False, fontsize=7)
    return fig


def confusion_matrix(labels, predicted, *, normalize: bool = True, max_classes: int = 40) -> Figure:
    """Predicted labels (columns) against the given labels (rows).

    Parameters
    ----------
    labels
        The known label of each cell; missing values are left out.
    predicted
        The predicted label of each cell (``unknown`` is a column of its own).
    normalize
        Show each row's shares (rows sum to 1) instead of counts; counts are written in the
        cells either way.
    max_classes
        The most rows and columns drawn (the largest classes).

    Returns
    -------
    matplotlib.figure.Figure
        The matrix, with the accuracy on the labelled cells in the title.

    Raises
    ------
    InputDataError
        When the lengths differ or no cell has a label.
    """
    labels = pd.Series(np.asarray(labels, dtype=object))
    predicted = pd.Series(np.asarray(predicted, dtype=object)).astype(str)
    if len(labels) != len(predicted):
        raise InputDataError(f"{len(labels)} labels for {len(predicted)} predictions")
    keep = labels.notna().to_numpy()
    if not keep.any():
        raise InputDataError("no cell has a label: no confusion matrix")
    labels, predicted = labels[keep].astype(str), predicted[keep]
    table = pd.crosstab(labels, predicted)
    rows = table.sum(axis=1).sort_values(ascending=False).index[:max_classes]
    cols = table.sum(axis=0).sort_values(ascending=False).index[:max_classes]
    order = [c for c in rows if c in cols] + [c for c in cols if c not in rows]
    table = table.loc[rows, order]
    shares = table.div(table.sum(axis=1).clip(lower=1), axis=0)
    fig = _new_figure(2.5 + 0.45 * table.shape[1], 2.0 + 0.4 * table.shape[0], layout="constrained")
    ax = fig.add_subplot(111)
    ax.imshow(shares if normalize else table, cmap=colormaps["Blues"], aspect="auto", vmin=0)
    if table.size <= 400:
        for i in range(table.shape[0]):
            for j in range(table.shape[1]):
                dark = shares.iat[i, j] > 0.6
                ax.text(
                    j, i, str(table.iat[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if dark else "black",
                )  # fmt: skip
    ax.set_xticks(range(table.shape[1]))
    ax.set_xticklabels(table.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(table.shape[0]))
    ax.set_yticklabels(table.index, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    accuracy = float((labels.to_numpy() == predicted.to_numpy()).mean())
    ax.set_title(f"accuracy {accuracy:.3f} on {int(keep.sum()):,} labelled cells", fontsize=10)
    return fig


def _obs(adata_or_obs, *columns: str) -> pd.DataFrame:
    obs = getattr(adata_or_obs, "obs", adata_or_obs)
    for col in columns:
        if col not in obs.columns:
            raise InputDataError(f"obs column '{col}' not found")
    return obs
