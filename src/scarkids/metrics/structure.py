"""What the labels don't name: structure an embedding keeps below the labels it was given.

Two families, both numpy + scikit-learn:

- :func:`fine_label_structure`: trained with coarse labels, are the fine types inside each
  coarse type still apart? A 15-NN classifier of the fine label (balanced accuracy, k-fold
  cross-validation inside the coarse type's cells), k-means with k = number of fine types
  (ARI with the fine labels), and the silhouette of the fine labels inside the coarse type
  (scIB-E's idea: scIB's label metrics scored at a finer annotation level than the one used
  for training).
- :func:`within_batch_structure`: no label at all. For each batch, the overlap between each
  cell's nearest same-batch neighbours in that batch's own PCA and in the embedding.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: the columns of :func:`fine_label_structure`, one row per coarse type
FINE_COLUMNS = ["n_cells", "n_fine", "knn_balanced_accuracy", "kmeans_ari", "fine_asw"]


def _as_str(values, name: str, n: int) -> np.ndarray:
    arr = np.asarray(values).astype(str)
    if arr.shape != (n,):
        raise ValueError(f"{name} needs one entry per cell ({n}), got shape {arr.shape}")
    return arr


def fine_label_structure(
    embedding: np.ndarray,
    coarse,
    fine,
    *,
    n_neighbors: int = 15,
    n_folds: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """How well each coarse type's fine types stay apart in an embedding.

    Parameters
    ----------
    embedding
        ``(n_cells, d)`` cell coordinates (e.g. ``adata.obsm["X_scarkids"]``).
    coarse
        ``(n_cells,)`` the labels a model was trained with.
    fine
        ``(n_cells,)`` finer labels, each nested in one coarse label.
    n_neighbors
        Neighbours of the kNN classifier (at most the training fold's size minus one).
    n_folds
        Folds of the stratified cross-validation (at most the smallest fine type's size).
    seed
        Seed of the folds and of k-means.

    Returns
    -------
    pandas.DataFrame
        One row per coarse type that holds two or more fine types, indexed by the coarse
        label, with :data:`FINE_COLUMNS`: the balanced accuracy of the cross-validated kNN
        prediction of the fine label, the adjusted Rand index of k-means (k = ``n_fine``,
        10 starts) with the fine labels, and the mean silhouette width of the fine labels
        (Euclidean, in [-1, 1]). Empty when no coarse type holds two fine types.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, balanced_accuracy_score, silhouette_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    x = np.asarray(embedding, dtype=np.float64)
    coarse, fine = _as_str(coarse, "coarse", len(x)), _as_str(fine, "fine", len(x))
    rows = {}
    for c in sorted(set(coarse)):
        cells = coarse == c
        xc, yc = x[cells], fine[cells]
        kinds, counts = np.unique(yc, return_counts=True)
        if len(kinds) < 2:
            continue
        folds = int(min(n_folds, counts.min()))
        if folds >= 2:
            k = int(min(n_neighbors, len(xc) - len(xc) // folds - 1))
            cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
            pred = cross_val_predict(KNeighborsClassifier(k), xc, yc, cv=cv)
            knn = float(balanced_accuracy_score(yc, pred))
        else:
            knn = np.nan  # a fine type of one cell cannot be held out
        km = KMeans(len(kinds), n_init=10, random_state=seed).fit_predict(xc)
        rows[c] = {
            "n_cells": int(cells.sum()),
            "n_fine": len(kinds),
            "knn_balanced_accuracy": knn,
            "kmeans_ari": float(adjusted_rand_score(yc, km)),
            "fine_asw": float(silhouette_score(xc, yc)),
        }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=FINE_COLUMNS)
    table.index.name = "coarse"
    return table


def _knn_sets(x: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` indices of each row's ``k`` nearest other rows (Euclidean, exact)."""
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)
    out = np.empty((len(x), k), dtype=np.int64)
    for i, row in enumerate(idx):
        row = row[row != i]
        out[i] = row[:k]
    return out


def neighbour_overlap(a: np.ndarray, b: np.ndarray, *, n_neighbors: int = 15) -> np.ndarray:
    """``(n,)`` share of each cell's ``n_neighbors`` nearest neighbours in ``a`` that are also
    among its ``n_neighbors`` nearest in ``b`` (both ``(n, d)`` of the same cells)."""
    k = int(min(n_neighbors, len(a) - 1))
    na, nb = _knn_sets(np.asarray(a, np.float64), k), _knn_sets(np.asarray(b, np.float64), k)
    shared = [len(np.intersect1d(r, s, assume_unique=True)) for r, s in zip(na, nb, strict=True)]
    return np.asarray(shared, dtype=np.float64) / k


def within_batch_structure(
    expression,
    embedding: np.ndarray,
    batch,
    *,
    n_neighbors: int = 15,
    n_pcs: int = 30,
    seed: int = 0,
) -> pd.Series:
    """Label-free structure kept inside each batch: the neighbour overlap between the
    batch's own PCA and the embedding.

    Parameters
    ----------
    expression
        ``(n_cells, n_genes)`` log-normalised expression (e.g. log-CP10k of the 2000 HVGs),
        dense or sparse.
    embedding
        ``(n_cells, d)`` cell coordinates.
    batch
        ``(n_cells,)`` batch of each cell.
    n_neighbors
        Neighbours compared per cell.
    n_pcs
        Principal components of each batch's own PCA (fewer when the batch is small).
    seed
        Seed of the PCA's randomised solver.

    Returns
    -------
    pandas.Series
        Mean overlap (in [0, 1]) per batch, and ``"all"``: the mean over all cells of
        batches with more than ``n_neighbors`` cells.
    """
    import scipy.sparse as sp
    from sklearn.decomposition import PCA

    x = np.asarray(embedding, dtype=np.float64)
    batch = _as_str(batch, "batch", len(x))
    per, overlaps = {}, []
    for b in sorted(set(batch)):
        cells = np.flatnonzero(batch == b)
        if len(cells) <= n_neighbors:
            continue
        e = expression[cells]
        e = e.toarray() if sp.issparse(e) else np.asarray(e)
        n_comp = int(min(n_pcs, len(cells) - 1, e.shape[1]))
        pcs = PCA(n_comp, random_state=seed).fit_transform(e.astype(np.float64))
        o = neighbour_overlap(pcs, x[cells], n_neighbors=n_neighbors)
        per[b], overlaps = float(o.mean()), [*overlaps, o]
    per["all"] = float(np.concatenate(overlaps).mean()) if overlaps else np.nan
    return pd.Series(per, name="within_batch_overlap")
