"""Fast integration metrics for logs: batch and cell-type silhouettes and LISI, with numpy,
scipy and scikit-learn only (no scib-metrics). The command line logs them after training;
the full scIB set is :func:`scarkids.evaluation.evaluate`."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import silhouette_samples
from sklearn.neighbors import NearestNeighbors

from scarkids.errors import InputDataError


def _missing_label_mask(labels: np.ndarray, unlabeled_category: str | None) -> np.ndarray:
    """True where a label is missing (None/NaN or the unlabeled category)."""
    missing = pd.isna(labels)
    if unlabeled_category is not None:
        missing |= np.asarray(labels == unlabeled_category, dtype=bool)
    return np.asarray(missing, dtype=bool)


def _simpson_lisi(
    distances: np.ndarray,
    neighbor_codes: np.ndarray,
    n_categories: int,
    perplexity: float,
    tol: float = 1e-5,
    max_iter: int = 50,
) -> np.ndarray:
    """Inverse Simpson index per cell (LISI, Korsunsky et al. 2019).

    A Gaussian kernel ``exp(-beta * d)`` over each cell's neighbours, with ``beta`` found by a
    binary search (run on all cells at once) so that the kernel's entropy is ``log(perplexity)``.
    """
    n_cells = distances.shape[0]
    # Shifting each row by its smallest distance leaves the normalised kernel and its entropy
    # unchanged, and keeps exp() from underflowing for far-away neighbourhoods.
    dist = distances - distances.min(axis=1, keepdims=True)
    target = math.log(perplexity)
    beta = np.ones(n_cells)
    beta_min = np.full(n_cells, -np.inf)
    beta_max = np.full(n_cells, np.inf)

    def entropy_and_kernel(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.exp(-dist * b[:, None])
        sum_p = p.sum(axis=1)
        h = np.log(sum_p) + b * (dist * p).sum(axis=1) / sum_p
        return h, p / sum_p[:, None]

    h, p = entropy_and_kernel(beta)
    for _ in range(max_iter):
        diff = h - target
        active = np.abs(diff) >= tol
        if not active.any():
            break
        up = diff > 0  # entropy too high: sharpen the kernel (larger beta)
        beta_min = np.where(active & up, beta, beta_min)
        beta_max = np.where(active & ~up, beta, beta_max)
        grow = np.where(np.isinf(beta_max), beta * 2, (beta + beta_max) / 2)
        shrink = np.where(np.isinf(beta_min), beta / 2, (beta + beta_min) / 2)
        beta = np.where(active, np.where(up, grow, shrink), beta)
        h, p = entropy_and_kernel(beta)

    # Kernel mass per category and cell in one bincount, then the Simpson index sum(mass^2).
    flat = (np.arange(n_cells)[:, None] * n_categories + neighbor_codes).ravel()
    mass = np.bincount(flat, weights=p.ravel(), minlength=n_cells * n_categories)
    simpson = (mass.reshape(n_cells, n_categories) ** 2).sum(axis=1)
    return 1.0 / simpson


def _silhouette_batch(x: np.ndarray, batch: np.ndarray, labels: np.ndarray | None) -> float:
    """scIB batch ASW: ``1 - |silhouette on batch|``, averaged per label (or globally)."""
    groups = (
        [np.arange(len(batch))]
        if labels is None
        else [np.flatnonzero(labels == g) for g in np.unique(labels)]
    )
    scores = []
    for idx in groups:
        n_batches = len(np.unique(batch[idx]))
        if n_batches < 2 or n_batches >= len(idx):
            continue
        scores.append(np.mean(1.0 - np.abs(silhouette_samples(x[idx], batch[idx]))))
    return float(np.mean(scores)) if scores else float("nan")


def quick_metrics(
    embedding,
    batch,
    labels=None,
    *,
    n_neighbors: int = 30,
    max_cells: int = 5000,
    seed: int = 0,
    unlabeled_category: str | None = "Unknown",
) -> dict[str, float]:
    """Fast integration metrics computed with numpy, scipy and scikit-learn only.

    Returns ``batch_silhouette`` (scIB batch ASW, ``1 - |ASW on batch|`` averaged per label,
    or over all cells when ``labels`` is None; higher means better mixing; NaN with a single
    batch) and ``bLISI`` (median inverse Simpson index of batches; 1 = unmixed, the number of
    batches = perfectly mixed). With ``labels`` also ``celltype_silhouette`` (``(ASW + 1) / 2``
    on labels; higher is better) and ``cLISI`` (median inverse Simpson index of labels; 1 =
    pure neighbourhoods). LISI uses ``n_neighbors`` nearest neighbours (self excluded) and a
    Gaussian kernel of perplexity ``n_neighbors / 3``. Cells whose label is missing or equals
    ``unlabeled_category`` are left out of the label metrics. At most ``max_cells`` cells,
    drawn at random with ``seed``, are used.

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` embedding, finite values.
    batch
        ``(n_cells,)`` batch of each cell.
    labels
        ``(n_cells,)`` cell type of each cell; ``None``: batch metrics only.
    n_neighbors
        Neighbours of each cell for LISI.
    max_cells
        Largest number of cells used.
    seed
        Seed of the subsample of ``max_cells`` cells.
    unlabeled_category
        Label value of unlabelled cells; ``None``: only missing labels count as unlabelled.

    Returns
    -------
    dict of str to float
        ``batch_silhouette`` and ``bLISI``, and with ``labels`` also
        ``celltype_silhouette`` and ``cLISI`` (NaN where a metric is undefined). With
        ``labels``, ``batch_silhouette`` is computed on the labelled cells only.

    Raises
    ------
    InputDataError
        When the shapes disagree, the embedding is not 2-d or not finite, or there are
        fewer than 3 cells.
    """
    x = np.asarray(embedding, dtype=np.float64)
    batch = np.asarray(batch, dtype=object)
    if x.ndim != 2 or x.shape[0] != batch.shape[0]:
        raise InputDataError(
            f"embedding has shape {x.shape} but batch has {batch.shape[0]} entries: pass one "
            "2-d embedding row per cell"
        )
    if labels is not None:
        labels = np.asarray(labels, dtype=object)
        if labels.shape[0] != x.shape[0]:
            raise InputDataError(
                f"labels has {labels.shape[0]} entries but the embedding has {x.shape[0]} rows: "
                "pass one label per cell"
            )
    if not np.isfinite(x).all():
        raise InputDataError("embedding contains NaN or infinite values: check the model output")
    if x.shape[0] < 3:
        raise InputDataError("quick_metrics needs at least 3 cells")

    if x.shape[0] > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_cells, replace=False))
        x, batch = x[keep], batch[keep]
        labels = labels[keep] if labels is not None else None

    batch_codes, _ = pd.factorize(pd.Series(batch).astype(str))

    out: dict[str, float] = {}
    if labels is None:
        out["batch_silhouette"] = _silhouette_batch(x, batch_codes, None)
    else:
        labelled = ~_missing_label_mask(labels, unlabeled_category)
        lab = pd.Series(labels[labelled]).astype(str).to_numpy()
        xl = x[labelled]
        out["batch_silhouette"] = _silhouette_batch(xl, batch_codes[labelled], lab)
        if 2 <= len(np.unique(lab)) < lab.size:
            asw = float(np.mean(silhouette_samples(xl, lab)))
            out["celltype_silhouette"] = (asw + 1.0) / 2.0
        else:
            out["celltype_silhouette"] = float("nan")
        if lab.size >= 3:
            label_codes, uniques = pd.factorize(lab)
            out["cLISI"] = _median_lisi(xl, label_codes, len(uniques), n_neighbors)
        else:
            out["cLISI"] = float("nan")
    out["bLISI"] = _median_lisi(x, batch_codes, int(batch_codes.max()) + 1, n_neighbors)
    return out


def _median_lisi(x: np.ndarray, codes: np.ndarray, n_categories: int, n_neighbors: int) -> float:
    """Median LISI over ``n_neighbors`` nearest neighbours (self excluded), perplexity k/3."""
    k = min(n_neighbors, x.shape[0] - 1)
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    dist, idx = dist[:, 1:], idx[:, 1:]  # drop self
    lisi = _simpson_lisi(dist, codes[idx], n_categories, perplexity=max(k / 3.0, 1.0))
    return float(np.median(lisi))
