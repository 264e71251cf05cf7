"""Figures for evaluation results.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with an Agg canvas, so nothing
here needs a display or changes the pyplot backend of the calling process.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from scarkids.errors import InputDataError

_GROUPS = {
    "Bio conservation": (
        "Isolated labels",
        "Leiden NMI",
        "Leiden ARI",
        "Silhouette label",
        "cLISI",
    ),
    "Batch correction": (
        "Silhouette batch",
        "iLISI",
        "KBET",
        "Graph connectivity",
        "PCR comparison",
    ),
    "Aggregate score": ("Bio conservation", "Batch correction", "Total"),
    "Label transfer": ("accuracy", "macro_f1"),
}


def _new_figure(width: float, height: float, layout: str | None = None) -> Figure:
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _palette(n: int) -> list:
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    cmap = colormaps["gist_ncar"]
    return [cmap(0.05 + 0.9 * i / max(n - 1, 1)) for i in range(n)]


def plot_umap(
    adata,
    *,
    embedding_key: str,
    color: Sequence[str] = ("batch", "cell_type"),
    path,
    seed: int = 0,
    n_neighbors: int = 15,
) -> Path:
    """UMAP of ``adata.obsm[embedding_key]`` with one panel per obs column in ``color``.

    The neighbour graph and UMAP are computed with scanpy on a small copy; ``adata`` is left
    unchanged. Returns the path of the PNG written.

    Parameters
    ----------
    adata
        AnnData holding the embedding and the ``color`` columns.
    embedding_key
        ``adata.obsm`` key of the ``(n_cells, n_dims)`` embedding.
    color
        ``adata.obs`` column, or several, each drawn as one panel coloured by its categories
        (missing values in grey); an empty list draws one grey panel.
    path
        PNG file to write; its folder is created when missing.
    seed
        Seed of the neighbour graph, the UMAP and the drawing order of the cells.
    n_neighbors
        Neighbours of the UMAP graph (kept between 2 and ``n_cells - 1``).

    Returns
    -------
    pathlib.Path
        The PNG file written.

    Raises
    ------
    InputDataError
        When ``embedding_key`` or a ``color`` column is missing.
    """
    if embedding_key not in adata.obsm:
        raise InputDataError(
            f"obsm key '{embedding_key}' not found in the AnnData: pass an existing embedding"
        )
    color = [color] if isinstance(color, str) else list(color)
    for col in color:
        if col not in adata.obs.columns:
            raise InputDataError(
                f"obs column '{col}' not found in the AnnData: cannot colour by it"
            )

    coords = _umap_coordinates(adata.obsm[embedding_key], seed, n_neighbors)
    n_panels = max(len(color), 1)
    fig = _new_figure(6.0 * n_panels, 4.8, layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    size = float(np.clip(12000 / max(adata.n_obs, 1), 0.5, 20))
    order = np.random.default_rng(seed).permutation(adata.n_obs)  # no batch drawn on top
    for ax, col in zip(axes, color or [None], strict=False):
        if col is None:
            ax.scatter(coords[order, 0], coords[order, 1], s=size, c="0.3", linewidths=0)
        else:
            _categorical_panel(ax, coords, adata.obs[col], order, size)
            ax.set_title(col)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP1")
        ax.set_ylabel("UMAP2")
    fig.suptitle(embedding_key)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def warm_umap() -> threading.Thread:
    """Start importing umap-learn and compiling its numba code (about 12 s on 2 CPU threads,
    the same in every new process) in a daemon thread, so that a run which will draw UMAPs
    at its end pays it while it computes. Returns the started thread."""

    def compile_once() -> None:
        try:
            tiny = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
            _umap_coordinates(tiny, 0, 15)
        except Exception:  # the real call will say what is wrong
            pass

    thread = threading.Thread(target=compile_once, name="scarkids-warm-umap", daemon=True)
    thread.start()
    return thread


def _umap_coordinates(embedding, seed: int, n_neighbors: int) -> np.ndarray:
    """2-d UMAP coordinates (n, 2) of ``embedding`` (n, d): exact neighbours (scikit-learn),
    then umap-learn's layout, 200 epochs up to 5,000 cells and 100 above (scanpy's neighbour
    search fails above 4,096 cells with recent scipy, and pynndescent compiles for seconds)."""
    import umap
    from sklearn.neighbors import NearestNeighbors

    emb = np.asarray(embedding, dtype=np.float32)
    if emb.shape[0] < 4:  # too few cells for a graph: the first two dimensions
        return np.pad(emb[:, :2], ((0, 0), (0, max(0, 2 - emb.shape[1]))))
    n_neighbors = max(2, min(n_neighbors, emb.shape[0] - 1))
    dist, index = NearestNeighbors(n_neighbors=n_neighbors).fit(emb).kneighbors(emb)
    with warnings.catch_warnings():  # n_jobs set to 1 by random_state; disconnected graphs
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(
            n_neighbors=n_neighbors,
            random_state=seed,
            min_dist=0.5,
            n_epochs=200 if emb.shape[0] <= 5000 else 100,
            precomputed_knn=(index, dist, None),
        )
        return np.asarray(reducer.fit_transform(emb))


def _categorical_panel(ax, coords: np.ndarray, column: pd.Series, order, size: float) -> None:
    """Scatter coloured by the categories of ``column`` (missing values in grey), legend
    beside the panel (at most 40 entries)."""
    values = column.astype("object").fillna("NA").astype(str)
    cats = pd.Categorical(values)
    colors = np.array(_palette(len(cats.categories)))
    if "NA" in cats.categories:
        colors[list(cats.categories).index("NA")] = (0.75, 0.75, 0.75, 1.0)
    ax.scatter(
        coords[order, 0],
        coords[order, 1],
        s=size,
        c=colors[cats.codes[order]],
        linewidths=0,
        rasterized=True,
    )
    handles = [
        ax.scatter([], [], s=30, color=colors[i], label=str(c))
        for i, c in enumerate(cats.categories[:40])
    ]
    ax.legend(
        handles=handles,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        frameon=False,
        fontsize=7,
        ncol=1 if len(handles) <= 20 else 2,
        markerscale=1.0,
    )


def plot_metrics_table(table: pd.DataFrame, path) -> Path:
    """Draw a metrics table (rows = embeddings, columns = metrics) as a coloured grid.

    Values are printed in each cell. Columns whose values all lie in [0, 1] are coloured on
    that absolute scale (so figures compare across runs); other columns are min-max scaled.
    Rows are sorted by ``Total`` when present. Returns the path of the PNG written.

    Parameters
    ----------
    table
        Metrics table, as :func:`scarkids.evaluation.evaluate` returns it; only its numeric
        columns are drawn, NaN values as ``NA``.
    path
        PNG file to write; its folder is created when missing.

    Returns
    -------
    pathlib.Path
        The PNG file written.

    Raises
    ------
    InputDataError
        When the table has no numeric values.
    """
    df = table.select_dtypes(include=[np.number]).astype(float)
    if df.shape[1] == 0 or df.shape[0] == 0:
        raise InputDataError("the metrics table has no numeric values to plot")
    if "Total" in df.columns:
        df = df.sort_values("Total", ascending=False)
    values = df.to_numpy()

    shade = np.full(values.shape, np.nan)
    for j in range(values.shape[1]):
        col = values[:, j]
        finite = np.isfinite(col)
        if not finite.any():
            continue
        lo, hi = np.nanmin(col), np.nanmax(col)
        if lo >= 0 and hi <= 1:
            shade[:, j] = col
        else:
            shade[:, j] = (col - lo) / (hi - lo) if hi > lo else 0.5

    n_rows, n_cols = values.shape
    fig = _new_figure(2.0 + 0.95 * n_cols, 1.6 + 0.45 * n_rows)
    ax = fig.add_subplot(111)
    cmap = colormaps["YlGnBu"].with_extremes(bad="0.85")
    ax.imshow(np.ma.masked_invalid(shade), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            text = "NA" if not np.isfinite(v) else f"{v:.3f}" if abs(v) < 100 else f"{v:.3g}"
            s = shade[i, j]
            rgb = to_rgb(cmap(s)) if np.isfinite(s) else (0.85, 0.85, 0.85)
            luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8,
                color="white" if luminance < 0.5 else "black",
            )
    ax.set_xticks(range(n_cols))
    ax.set_xticklabels(df.columns, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels([str(i) for i in df.index], fontsize=9, fontweight="bold")
    ax.tick_params(length=0)
    # Vertical separators between metric groups (bio | batch | aggregate | prediction).
    group_of = {m: g for g, ms in _GROUPS.items() for m in ms}
    for j in range(1, n_cols):
        if group_of.get(df.columns[j]) != group_of.get(df.columns[j - 1]):
            ax.axvline(j - 0.5, color="black", linewidth=1.5)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title("Integration metrics (unscaled)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    return path
