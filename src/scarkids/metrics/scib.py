"""Integration metrics: fast validation metrics and the full scIB benchmark.

* :func:`quick_metrics` (in :mod:`scarkids.metrics.quick`) needs only numpy, scipy and
  scikit-learn. The command line logs it after training.
* :func:`evaluate` runs the scIB metric set through ``scib-metrics`` 0.5 (an optional
  dependency: ``pip install 'scarkids[eval]'``), which is imported only when it is called.
* :func:`write_evaluation` writes a metrics table to disk as TSV, JSON and figures.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score
from sklearn.neighbors import NearestNeighbors

from scarkids.constants import LATENT_KEY
from scarkids.errors import InputDataError
from scarkids.metrics.quick import _missing_label_mask, _silhouette_batch

#: Column names of the table returned by :func:`evaluate` (the names scib-metrics uses).
BIO_METRICS = ("Isolated labels", "Leiden NMI", "Leiden ARI", "Silhouette label", "cLISI")
BATCH_METRICS = ("Silhouette batch", "iLISI", "KBET", "Graph connectivity", "PCR comparison")
SCORE_COLUMNS = ("Bio conservation", "Batch correction", "Total")
PREDICTION_METRICS = ("accuracy", "macro_f1")

_SCIB_MISSING = "scarkids.evaluate needs scib-metrics: pip install 'scarkids[eval]'"


def _obs_column(adata, key: str, role: str) -> pd.Series:
    if key not in adata.obs.columns:
        raise InputDataError(
            f"obs column '{key}' ({role}) not found in the AnnData: pass an existing column "
            f"(available: {', '.join(map(str, adata.obs.columns[:20]))})"
        )
    return adata.obs[key]


def _unintegrated_pca(adata, cells: np.ndarray, n_comps: int = 50) -> np.ndarray:
    """50-PC PCA of ``adata.X`` on ``cells``: log1p-normalised first if X holds raw counts."""
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    if adata.X is None:
        raise InputDataError(
            "adata.X is empty and obsm['X_pca'] is missing: PCR comparison needs one of them"
        )
    x = adata.X[cells]
    x = x.astype(np.float32) if sp.issparse(x) else np.asarray(x, dtype=np.float32)
    sample = x.data[:100_000] if sp.issparse(x) else x.ravel()[:100_000]
    looks_like_counts = sample.size > 0 and sample.min() >= 0 and np.all(sample == np.round(sample))
    tmp = ad.AnnData(x)
    if looks_like_counts:
        sc.pp.normalize_total(tmp, target_sum=1e4)
        sc.pp.log1p(tmp)
    n_comps = max(1, min(n_comps, tmp.n_obs - 1, tmp.n_vars - 1))
    sc.pp.pca(tmp, n_comps=n_comps, svd_solver="arpack", mask_var=None, random_state=0)
    return np.asarray(tmp.obsm["X_pca"])


def _exact_knn(x: np.ndarray, n_neighbors: int, n_jobs: int = 1, **_):
    """Exact kNN (self first) as a scib-metrics ``NeighborsResults``; avoids pynndescent's
    ~30 s numba compilation on the first call in a process."""
    from scib_metrics.nearest_neighbors import NeighborsResults

    k = min(n_neighbors, x.shape[0])
    dist, idx = NearestNeighbors(n_neighbors=k, n_jobs=n_jobs).fit(x).kneighbors(x)
    return NeighborsResults(indices=idx, distances=dist.astype(np.float32))


def _kbet_numpy(X, batches, alpha: float = 0.05):
    """``scib_metrics.kbet`` (chi-square test of the batch mix in each cell's neighbourhood)
    in numpy; the jax original recompiles for every label's cell count (~1 s per label)."""
    from scipy.stats import chi2

    codes = np.asarray(pd.Categorical(batches).codes)
    n_batches = int(codes.max()) + 1
    expected = np.bincount(codes, minlength=n_batches) / codes.size * X.indices.shape[1]
    neigh = codes[X.indices]
    flat = (np.arange(neigh.shape[0])[:, None] * n_batches + neigh).ravel()
    observed = np.bincount(flat, minlength=neigh.shape[0] * n_batches).reshape(-1, n_batches)
    stats = ((observed - expected) ** 2 / expected).sum(axis=1)
    p_values = chi2.sf(stats, n_batches - 1)
    return float((p_values >= alpha).mean()), stats, p_values


@contextmanager
def _fast_kbet_backend():
    """Run scib-metrics 0.5's ``kbet_per_label`` (same algorithm) on faster pieces.

    Per label it runs a 100-component ARPACK eigensolve, a pynndescent search and a jax test.
    Multi-threaded BLAS makes those small eigensolves ~15x slower, pynndescent compiles for
    ~30 s on first use and jax recompiles per label, so while kBET runs BLAS is pinned to one
    thread and the search and test are swapped for exact kNN and numpy. If the library's
    layout differs from 0.5's, its own functions are kept.
    """
    from threadpoolctl import threadpool_limits

    patches = []
    try:
        import scib_metrics.metrics._kbet as kbet_module
        import scib_metrics.utils._diffusion_nn as diffusion_module
    except ImportError:
        kbet_module = diffusion_module = None
    if hasattr(getattr(diffusion_module, "nearest_neighbors", None), "pynndescent"):
        patches.append(
            (diffusion_module, "nearest_neighbors", SimpleNamespace(pynndescent=_exact_knn))
        )
    if callable(getattr(kbet_module, "kbet", None)):
        patches.append((kbet_module, "kbet", _kbet_numpy))
    originals = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    try:
        for mod, name, value in patches:
            setattr(mod, name, value)
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        for mod, name, value in originals:
            setattr(mod, name, value)


def _scib_scores(scib_metrics, x, x_pre, labels, batch, n_jobs: int) -> dict:
    nn = _exact_knn(x, 90, n_jobs=n_jobs)
    nn15 = nn.subset_neighbors(min(15, nn.n_neighbors))
    nn50 = nn.subset_neighbors(min(50, nn.n_neighbors))
    leiden = scib_metrics.nmi_ari_cluster_labels_leiden(nn15, labels, n_jobs=n_jobs)
    scores = {
        "Isolated labels": scib_metrics.isolated_labels(x, labels, batch),
        "Leiden NMI": leiden["nmi"],
        "Leiden ARI": leiden["ari"],
        "Silhouette label": scib_metrics.silhouette_label(x, labels),
        "cLISI": scib_metrics.clisi_knn(nn, labels),
        # Same formula as scib_metrics.silhouette_batch, via scikit-learn: the jax version
        # recompiles for every label's cell count (~1 s per label).
        "Silhouette batch": _silhouette_batch(x, batch, labels),
        "iLISI": scib_metrics.ilisi_knn(nn, batch),
    }
    with _fast_kbet_backend():
        scores["KBET"] = scib_metrics.kbet_per_label(nn50, batch, labels)
    scores["Graph connectivity"] = scib_metrics.graph_connectivity(nn15, labels)
    scores["PCR comparison"] = scib_metrics.pcr_comparison(x_pre, x, batch, categorical=True)
    return {k: float(v) for k, v in scores.items()}


def evaluate(
    adata,
    *,
    embedding_key: str | Sequence[str] = LATENT_KEY,
    batch_key: str = "batch",
    labels_key: str = "cell_type",
    prediction_key: str | None = None,
    unlabeled_category: str | None = "Unknown",
    subsample: int | None = None,
    seed: int = 0,
    n_jobs: int = 1,
) -> pd.DataFrame:
    """Score one or more embeddings with the scIB metrics (scib-metrics 0.5).

    Metrics: bio conservation = isolated labels, Leiden NMI and ARI, silhouette label, cLISI;
    batch correction = silhouette batch, iLISI, kBET, graph connectivity, PCR comparison (the
    original scIB set). The scib-metrics functions are called directly rather than through
    ``Benchmarker``, whose defaults differ between 0.5.x releases (0.5.10 swaps silhouette
    batch for BRAS and Leiden for k-means), on one exact 90-nearest-neighbour graph (15 for
    Leiden and graph connectivity, 50 for kBET). Silhouette batch and kBET's test run in
    scikit-learn/numpy with the same formulas, to avoid jax recompiling per label. Scores are
    NOT min-max scaled, so they compare across runs: ``Bio conservation`` and ``Batch
    correction`` are the means of their metrics and ``Total = 0.6 * bio + 0.4 * batch``.

    Only labelled cells are evaluated: cells whose ``labels_key`` is missing or equals
    ``unlabeled_category`` are dropped before anything is computed. ``subsample`` then keeps a
    random subset of that many labelled cells (drawn with ``seed``). PCR comparison uses
    ``obsm['X_pca']`` as the unintegrated embedding, or a 50-PC PCA of ``adata.X``
    (normalised and log1p-transformed first if X holds counts) when it is absent.

    With ``prediction_key`` (an obs column of predicted labels) the columns ``accuracy`` and
    ``macro_f1`` against ``labels_key`` are added, computed on all labelled cells.

    Returns one row per embedding (index ``Embedding``). ``adata`` is not modified.

    Parameters
    ----------
    adata
        AnnData holding the embeddings in ``obsm`` and the batch and label columns in
        ``obs``.
    embedding_key
        ``adata.obsm`` key, or several, of the ``(n_cells, n_dims)`` embeddings to score.
    batch_key
        ``adata.obs`` column of the batches.
    labels_key
        ``adata.obs`` column of the true cell types.
    prediction_key
        ``adata.obs`` column of predicted cell types; ``None``: no prediction metrics.
    unlabeled_category
        Label value of unlabelled cells (dropped, as missing labels are); ``None``: only
        missing labels are dropped.
    subsample
        Number of labelled cells to evaluate, drawn at random; ``None``: all of them.
    seed
        Seed of the subsample.
    n_jobs
        Parallel jobs of the nearest-neighbour search and the Leiden clustering.

    Returns
    -------
    pandas.DataFrame
        One row per embedding (index ``Embedding``), columns :data:`BIO_METRICS`,
        :data:`BATCH_METRICS`, :data:`SCORE_COLUMNS` and, with ``prediction_key``,
        :data:`PREDICTION_METRICS`; ``attrs["n_cells"]`` is the number of cells evaluated.

    Raises
    ------
    InputDataError
        When a key or column is missing, fewer than 10 cells are labelled, the evaluated
        cells hold a single batch or a single label, or an embedding has non-finite values.
    ImportError
        When scib-metrics is not installed.
    """
    keys = _embedding_keys(adata, embedding_key)
    batch_all = _obs_column(adata, batch_key, "batch_key").astype(str).to_numpy()
    labels_obj = _obs_column(adata, labels_key, "labels_key").to_numpy(dtype=object)
    preds = None
    if prediction_key is not None:
        preds = _obs_column(adata, prediction_key, "prediction_key").to_numpy(dtype=object)

    labelled = np.flatnonzero(~_missing_label_mask(labels_obj, unlabeled_category))
    if labelled.size < 10:
        raise InputDataError(
            f"only {labelled.size} cells have a label in obs column '{labels_key}' (missing or "
            f"'{unlabeled_category}' are excluded): evaluation needs labelled cells"
        )
    labels_all = pd.Series(labels_obj).astype(str).to_numpy()

    try:
        import scib_metrics
    except ImportError as exc:
        raise ImportError(_SCIB_MISSING) from exc

    cells = labelled
    if subsample is not None and subsample < cells.size:
        rng = np.random.default_rng(seed)
        cells = np.sort(rng.choice(cells, int(subsample), replace=False))
    labels, batch = labels_all[cells], batch_all[cells]
    for key, values, what in ((batch_key, batch, "batch"), (labels_key, labels, "label")):
        if len(np.unique(values)) < 2:
            raise InputDataError(
                f"obs column '{key}' has a single {what} among the evaluated cells: "
                "the metrics need at least two"
            )

    if "X_pca" in adata.obsm:
        x_pre = np.asarray(adata.obsm["X_pca"])[cells]
    else:
        x_pre = _unintegrated_pca(adata, cells)
    x_pre = np.asarray(x_pre, dtype=np.float32)

    rows = {}
    for key in keys:
        x = np.asarray(adata.obsm[key])[cells].astype(np.float32)
        if not np.isfinite(x).all():
            raise InputDataError(f"obsm['{key}'] contains NaN or infinite values")
        rows[key] = _score_embedding(scib_metrics, x, x_pre, labels, batch, n_jobs)

    table = pd.DataFrame.from_dict(rows, orient="index")
    table = table[list(BIO_METRICS + BATCH_METRICS + SCORE_COLUMNS)]
    if preds is not None:
        truth = labels_all[labelled]
        pred = pd.Series(preds[labelled]).astype(str).to_numpy()
        table["accuracy"] = float(accuracy_score(truth, pred))
        table["macro_f1"] = float(
            f1_score(truth, pred, labels=np.unique(truth), average="macro", zero_division=0)
        )
    table.index.name = "Embedding"
    table.attrs["n_cells"] = int(cells.size)
    return table


def _embedding_keys(adata, embedding_key) -> list[str]:
    keys = [embedding_key] if isinstance(embedding_key, str) else list(embedding_key)
    if not keys:
        raise InputDataError("embedding_key is empty: name at least one obsm key to evaluate")
    for key in keys:
        if key not in adata.obsm:
            raise InputDataError(
                f"obsm key '{key}' not found in the AnnData: train or embed first, or pass an "
                f"existing key (available: {', '.join(adata.obsm.keys()) or 'none'})"
            )
    return keys


def _score_embedding(scib_metrics, x, x_pre, labels, batch, n_jobs: int) -> dict[str, float]:
    """Every metric of one embedding, the two means and ``Total = 0.6 bio + 0.4 batch``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PCR comparison score is negative")
        warnings.filterwarnings("ignore", category=FutureWarning)
        row = _scib_scores(scib_metrics, x, x_pre, labels, batch, n_jobs)
    bio = float(np.nanmean([row[m] for m in BIO_METRICS]))
    bat = float(np.nanmean([row[m] for m in BATCH_METRICS]))
    row.update({"Bio conservation": bio, "Batch correction": bat})
    row["Total"] = 0.6 * bio + 0.4 * bat
    return row


def write_evaluation(
    table: pd.DataFrame,
    output_dir,
    *,
    adata=None,
    embedding_key: str | Sequence[str] | None = None,
    batch_key: str = "batch",
    labels_key: str | None = "cell_type",
    seed: int = 0,
) -> list[Path]:
    """Write ``metrics.tsv``, ``metrics.json`` and ``metrics_table.png`` to ``output_dir``.

    With ``adata`` also ``umap_<embedding>.png`` per embedding (``embedding_key``, by default
    every row of ``table``): a UMAP of the embedding coloured by batch and by cell type.
    Returns the paths written.

    Parameters
    ----------
    table
        Metrics table, one row per embedding, as :func:`evaluate` returns it (numeric
        values only).
    output_dir
        Folder to write to; created when missing. Existing files are overwritten.
    adata
        AnnData holding the embeddings, for the UMAPs; ``None``: no UMAPs.
    embedding_key
        ``adata.obsm`` key, or several, to draw; ``None``: the index of ``table``.
    batch_key
        ``adata.obs`` column the UMAPs are coloured by.
    labels_key
        ``adata.obs`` column of the cell types the UMAPs are also coloured by; ``None``:
        batches only.
    seed
        Seed of the UMAPs.

    Returns
    -------
    list of pathlib.Path
        The files written, in the order above.
    """
    from scarkids.pl import plots as plotting

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    tsv = out / "metrics.tsv"
    table.to_csv(tsv, sep="\t", float_format="%.6g")
    written.append(tsv)

    records = {
        str(idx): {str(c): None if pd.isna(v) else float(v) for c, v in row.items()}
        for idx, row in table.iterrows()
    }
    js = out / "metrics.json"
    js.write_text(json.dumps(records, indent=2) + "\n")
    written.append(js)

    png = out / "metrics_table.png"
    plotting.plot_metrics_table(table, png)
    written.append(png)

    if adata is not None:
        if embedding_key is None:
            keys = [str(k) for k in table.index]
        elif isinstance(embedding_key, str):
            keys = [embedding_key]
        else:
            keys = list(embedding_key)
        color = [c for c in (batch_key, labels_key) if c is not None]
        for key in keys:
            path = out / f"umap_{_safe_name(key)}.png"
            plotting.plot_umap(adata, embedding_key=key, color=color, path=path, seed=seed)
            written.append(path)
    return written


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
