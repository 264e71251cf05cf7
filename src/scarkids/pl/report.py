"""One self-contained HTML page per run: ``report.html``.

Every figure is an inline PNG (base64); the page loads nothing else (no URL, script or font
from outside), so it opens from disk anywhere and can be mailed. The page is written to a
temporary file beside its path and renamed, so a reader never sees half a report.

:func:`model_report` gathers what a model and its data show (curves, UMAPs, predictions);
:func:`write_report` lays out what it is given. The command line calls them after its
outputs are written (``--mode train``, ``--mode inference``, ``scarkids report RUN_DIR``),
and :meth:`scarkids.SCARKIDS.report` in Python.
"""

from __future__ import annotations

import base64
import html
import io
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scarkids.data.files import write_atomic
from scarkids.pl import figures

#: file name of the report in a run's output folder
REPORT_FILE = "report.html"
#: default cap on the cells drawn in the UMAPs (a seeded subsample)
MAX_UMAP_CELLS = 10_000
#: the sections of every report, in page order: (id, heading)
SECTIONS = (
    ("summary", "Run"),
    ("training", "Training curves"),
    ("metrics", "Validation metrics"),
    ("umap", "UMAP"),
    ("composition", "Composition"),
    ("predictions", "Predictions"),
    ("warnings", "Warnings"),
    ("outputs", "Output files"),
)
#: (metrics key, label, which way is better, the seed's expected range, lo, hi); {n} batches
METRICS = (
    ("batch_silhouette", "Batch silhouette", "1 = batches mixed", "> 0.3", 0.3, None),
    ("celltype_silhouette", "Cell-type silhouette", "higher = types apart", "> 0.4", 0.4, None),
    ("cLISI", "cLISI", "1 = types pure", "1.0-2.0", 1.0, 2.0),
    ("bLISI", "bLISI", "{n} = batches mixed", "2.0-3.0", 2.0, 3.0),
)


@dataclass
class ReportContent:
    """What a report shows; every part is optional (its section then says it is missing).

    ``obs`` holds one row per cell of the data, with the columns named by ``batch_key`` and
    ``label_key`` and, after predictions, ``predicted_label``, ``probability`` and
    ``unknown``; ``latent`` and ``counts`` are rows of the same cells (``counts``: raw counts
    for the uncorrected UMAP).
    """

    title: str
    header: list[tuple[str, str]] = field(default_factory=list)
    history: Mapping[str, Sequence[float]] | None = None
    best_epoch: int | None = None
    metrics: Mapping[str, float] | None = None
    metrics_note: str = ""
    obs: pd.DataFrame | None = None
    batch_key: str = "batch"
    label_key: str | None = None
    latent: np.ndarray | None = None
    counts: Any = None
    confidence_threshold: float | None = None
    warnings: list[str] = field(default_factory=list)
    outputs: list[tuple[str, str]] = field(default_factory=list)
    max_cells: int = MAX_UMAP_CELLS
    seed: int = 0
    #: cells in the data when ``obs`` holds a seeded subsample of them (None: ``obs`` is all)
    n_cells: int | None = None
    #: the label value that means "no label" (as missing values)
    unlabeled_category: str = "Unknown"


def write_report(path, content: ReportContent) -> Path:
    """Write ``content`` as one self-contained HTML page at ``path`` (atomically).

    Parameters
    ----------
    path
        The ``.html`` file to write; a temporary file beside it is renamed over it.
    content
        What to show (:class:`ReportContent`).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bodies = {
            "summary": _summary(content),
            "training": _training(content),
            "metrics": _metrics(content),
            "umap": _umap(content),
            "composition": _composition(content),
            "predictions": _predictions(content),
            "warnings": _warnings(content),
            "outputs": _outputs(content),
        }
    seconds = time.perf_counter() - started
    page = _page(content.title, bodies, seconds)
    return write_atomic(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))


# --------------------------------------------------------------------------- sections


def _summary(c: ReportContent) -> str:
    rows = list(c.header)
    if c.obs is not None and c.batch_key in c.obs.columns:
        sizes = c.obs[c.batch_key].astype(str).value_counts(sort=False).sort_index()
        drawn = f" ({len(c.obs):,} drawn, seed {c.seed})" if c.n_cells else ""
        rows.insert(0, ("cells", f"{c.n_cells or len(c.obs):,}{drawn}"))
        rows.insert(1, ("batches", ", ".join(f"{b} ({n:,})" for b, n in sizes.items())))
        labels = _labels(c)
        if labels is not None:
            share = float(labels.notna().mean())
            rows.insert(2, ("labelled cells", f"{share:.1%} ({c.label_key!r})"))
    return _table(rows)


def _training(c: ReportContent) -> str:
    if not c.history or not any(len(v) for k, v in c.history.items() if k.startswith("train_")):
        return _missing("no training history (the model was not trained in this session)")
    fig = figures.training_curves(c.history, best_epoch=c.best_epoch)
    n = len(next(v for k, v in c.history.items() if k.startswith("train_")))
    kept = f"the epoch kept is {c.best_epoch}" if c.best_epoch else "the last epoch is kept"
    caption = (
        f"{n} epochs, in nats per cell (accuracy: share of labelled cells); train solid, "
        f"validation dashed; {kept} (dotted line)."
    )
    return _figure(fig, caption, "training curves")


def _metrics(c: ReportContent) -> str:
    if not c.metrics:
        return _missing("validation metrics not computed for this run")
    n = None
    if c.obs is not None and c.batch_key in c.obs.columns:
        n = c.obs[c.batch_key].nunique()
    rows = []
    for key, label, better, expected, lo, hi in METRICS:
        if key not in c.metrics:
            continue
        value = float(c.metrics[key])
        inside = (lo is None or value >= lo) and (hi is None or value <= hi)
        mark = "within" if inside else "outside"
        rows.append(
            "<tr>"
            f"<td>{label}</td><td class='num'>{value:.3f}</td>"
            f"<td>{html.escape(better.format(n=n if n else 'n batches'))}</td>"
            f"<td>{expected}</td><td class='{mark}'>{mark}</td>"
            "</tr>"
        )
    head = "<tr><th>metric</th><th>value</th><th>better</th><th>seed's range</th><th></th></tr>"
    note = f"<p class='caption'>{html.escape(c.metrics_note)}</p>" if c.metrics_note else ""
    return f"<table>{head}{''.join(rows)}</table>{note}"


def _umap(c: ReportContent) -> str:
    if c.latent is None or c.obs is None or len(c.obs) < 5:
        return _missing("no embedding of cells in this run (no data)")
    cells = subsample(len(c.obs), c.max_cells, c.seed)
    obs = c.obs.iloc[cells]
    colours = [c.batch_key] + [
        col
        for col in (c.label_key, "predicted_label", "probability", "unknown")
        if col and col in obs.columns
    ]
    obs = obs.assign(**{c.label_key: _labels(c).iloc[cells]}) if _labels(c) is not None else obs
    coords = figures.umap_coordinates(np.asarray(c.latent)[cells], seed=c.seed)
    total = c.n_cells or len(c.obs)
    which = (
        f"all {total:,} cells"
        if len(cells) == total
        else f"a seeded subsample of {len(cells):,} of {total:,} cells (seed {c.seed}, "
        f"at most {c.max_cells:,})"
    )
    out = _figure(
        figures.umap_figure(coords, obs, colours, title="scARKIDS latent", seed=c.seed),
        f"UMAP of the latent on {which}; coordinates computed once for every colouring.",
        "UMAP of the latent",
    )
    if c.counts is not None:
        uncorrected = _uncorrected_embedding(c.counts, cells, c.seed)
        coords = figures.umap_coordinates(uncorrected, seed=c.seed)
        keys = [k for k in (c.batch_key, c.label_key) if k and k in obs.columns]
        out += _figure(
            figures.umap_figure(coords, obs, keys, title="uncorrected data", seed=c.seed),
            f"UMAP of the uncorrected data (log1p of counts per 10k, 30 principal components) "
            f"on the same {len(cells):,} cells.",
            "UMAP of the uncorrected data",
        )
    return out


def _composition(c: ReportContent) -> str:
    if c.obs is None or c.batch_key not in c.obs.columns:
        return _missing("no cells in this run")
    out = []
    labels = _labels(c)
    if labels is not None and labels.notna().any():
        obs = pd.DataFrame({c.batch_key: c.obs[c.batch_key], c.label_key: labels})
        fig = figures.composition(obs, batch_key=c.batch_key, label_key=c.label_key)
        out.append(_figure(fig, f"Share of each {c.label_key} in each batch.", "composition"))
    if "predicted_label" in c.obs.columns:
        fig = figures.composition(c.obs, batch_key=c.batch_key, label_key="predicted_label")
        out.append(_figure(fig, "Share of each predicted label in each batch.", "predictions"))
    return "".join(out) or _missing("no labels and no predictions")


def _predictions(c: ReportContent) -> str:
    if c.obs is None or "probability" not in c.obs.columns:
        return _missing("no predictions in this run")
    out = [
        _figure(
            figures.confidence_histogram(c.obs, threshold=c.confidence_threshold),
            "Calibrated probability of the predicted label; cells called unknown in red"
            + (
                f"; dashed: confidence threshold {c.confidence_threshold}."
                if c.confidence_threshold
                else "."
            ),
            "confidence histogram",
        )
    ]
    if "unknown" in c.obs.columns:
        n_unknown = int(c.obs["unknown"].sum())
        out.append(
            _figure(
                figures.unknown_per_batch(c.obs, c.obs[c.batch_key]),
                f"Cells called unknown per batch, by reason ({n_unknown:,} in all); the share "
                "of the batch above each bar.",
                "unknown per batch",
            )
        )
    labels = _labels(c)
    if labels is not None and labels.notna().any() and "predicted_label" in c.obs.columns:
        fig = figures.confusion_matrix(labels, c.obs["predicted_label"])
        out.append(
            _figure(
                fig, "Predicted labels against the labels (counts; colour: row share).", "confusion"
            )
        )
    return "".join(out)


def _warnings(c: ReportContent) -> str:
    if not c.warnings:
        return "<p>No warnings.</p>"
    items = "".join(f"<li>{html.escape(w)}</li>" for w in c.warnings)
    return f"<ul class='warnings'>{items}</ul>"


def _outputs(c: ReportContent) -> str:
    if not c.outputs:
        return _missing("no output files listed")
    return _table([(f"<code>{html.escape(n)}</code>", d) for n, d in c.outputs], escape_key=False)


# --------------------------------------------------------------------------- pieces


def subsample(n: int, max_cells: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subsample of at most ``max_cells`` of ``n`` cells."""
    if max_cells is None or n <= max_cells:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_cells, replace=False))


def _labels(c: ReportContent) -> pd.Series | None:
    """The label column with the unlabelled category as missing, or None."""
    if c.obs is None or not c.label_key or c.label_key not in c.obs.columns:
        return None
    labels = c.obs[c.label_key].astype("object")
    return labels.where(labels.astype(str) != c.unlabeled_category)


def _uncorrected_embedding(counts, cells: np.ndarray, seed: int) -> np.ndarray:
    """30 principal components of log1p(counts per 10k) of ``cells``."""
    import scipy.sparse as sp
    from sklearn.decomposition import TruncatedSVD

    x = counts[cells]
    x = x.tocsr().astype(np.float32) if sp.issparse(x) else np.asarray(x, dtype=np.float32)
    total = np.asarray(x.sum(axis=1)).ravel()
    scale = 1e4 / np.maximum(total, 1)
    if sp.issparse(x):
        x = sp.diags(scale) @ x
        x.data = np.log1p(x.data)
        x = x.toarray()
    else:
        x = np.log1p(x * scale[:, None])
    x = x - x.mean(axis=0)
    n_comp = max(2, min(30, x.shape[1] - 1, x.shape[0] - 1))
    return TruncatedSVD(n_comp, random_state=seed).fit_transform(x)


def _png(fig, dpi: int = 80) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(fig, caption: str, alt: str) -> str:
    return (
        f"<figure><img alt='{html.escape(alt)}' src='data:image/png;base64,{_png(fig)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _table(rows, escape_key: bool = True) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(str(k)) if escape_key else k}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table class='kv'>{cells}</table>"


def _missing(why: str) -> str:
    return f"<p class='missing'>{html.escape(why)}.</p>"


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1200px;padding:0 1.5em 3em;color:#222;line-height:1.4}
h1{font-size:1.5em;border-bottom:2px solid #444;padding-bottom:.3em}
h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}
nav a{margin-right:1em}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.within{color:#1a7f37}.outside{color:#b35900}
figure{margin:1em 0}figure img{max-width:100%;height:auto}
figcaption,.caption{font-size:.9em;color:#555}
.missing{color:#777;font-style:italic}
ul.warnings li{color:#8a4b00}
footer{margin-top:3em;font-size:.8em;color:#777}
"""

#: marks the page as rendered: the number of sections, of images that decoded and of resources
#: fetched (0: everything is inline); the browser test reads them from the DOM
_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, decoded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { decoded++; }
  }
  document.body.dataset.sections = document.querySelectorAll("section").length;
  document.body.dataset.images = images.length;
  document.body.dataset.imagesDecoded = decoded;
  var fetched = (window.performance && performance.getEntriesByType)
    ? performance.getEntriesByType("resource").length : 0;
  document.body.dataset.requests = fetched;
  document.body.dataset.rendered = "yes";
});
"""


def _page(title: str, bodies: Mapping[str, str], seconds: float) -> str:
    nav = "".join(f"<a href='#{sid}'>{name}</a>" for sid, name in SECTIONS)
    sections = "".join(
        f"<section id='{sid}'><h2>{name}</h2>{bodies[sid]}</section>" for sid, name in SECTIONS
    )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><nav>{nav}</nav>{sections}"
        f"<footer>Written {stamp} by scARKIDS in {seconds:.1f} s.</footer>"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


def model_report(
    model,
    path,
    adata=None,
    *,
    latent=None,
    predictions: pd.DataFrame | None = None,
    metrics: Mapping[str, float] | None = None,
    title: str | None = None,
    header: Sequence[tuple[str, str]] = (),
    warnings: Sequence[str] = (),
    outputs: Sequence[tuple[str, str]] = (),
    batch_key: str | None = None,
    label_key: str | None = None,
    confidence_threshold: float | None = 0.5,
    novelty_quantile: float | None = 0.99,
    max_cells: int | None = MAX_UMAP_CELLS,
    seed: int = 0,
    metrics_note: str = "",
) -> Path:
    """The report of a trained model, with its data's embedding and predictions when given.

    Without ``latent``, the latent and predictions are computed on a seeded subsample of
    at most ``max_cells`` cells of ``adata`` (the report stays cheap on large data); with
    them (one row per cell of ``adata``), the histograms and counts use every cell and the
    UMAP a subsample.

    Parameters
    ----------
    model
        A trained :class:`~scarkids.SCARKIDS` (its ``history``, ``registry``, ``extra``).
    path
        The ``.html`` file to write (atomically).
    adata
        Cells to draw, registered for the model; None: the training curves alone.
    latent, predictions
        The embedding and :meth:`~scarkids.SCARKIDS.predict_with_uncertainty` table of every
        cell of ``adata``, when already computed.
    metrics
        Integration metrics (``batch_silhouette``, ``celltype_silhouette``, ``cLISI``,
        ``bLISI``), shown with the seed's expected ranges; ``metrics_note`` says on what.
    title, header, warnings, outputs
        The page title, extra ``(name, value)`` rows of the first table, the run's warnings,
        and ``(file name, what it holds)`` rows.
    batch_key, label_key
        ``adata.obs`` columns of the batches (default: the model's) and of known labels.
    confidence_threshold, novelty_quantile
        The ``unknown`` rules of the predictions.
    max_cells, seed
        The cap on the cells drawn and the seed of the subsample and the UMAP.
    metrics_note
        A sentence under the metrics table.

    Returns
    -------
    pathlib.Path
        The report written.
    """
    reg = model.registry
    batch_key = batch_key or reg.batch_key
    content = ReportContent(
        title=title or "scARKIDS report",
        header=list(header),
        history=getattr(model, "history", None) or None,
        best_epoch=_best_epoch(model),
        metrics=metrics,
        metrics_note=metrics_note,
        batch_key=batch_key,
        confidence_threshold=confidence_threshold,
        warnings=list(warnings),
        outputs=list(outputs),
        max_cells=max_cells or 10**12,
        seed=seed,
        unlabeled_category=reg.unlabeled_category,
    )
    if adata is not None:
        if latent is None:
            cells = subsample(adata.n_obs, max_cells, seed)
            content.n_cells = adata.n_obs if len(cells) < adata.n_obs else None
            adata = adata if len(cells) == adata.n_obs else subset_rows(adata, cells)
            latent = model.get_latent_representation(adata)
        if predictions is None:
            predictions = model.predict_with_uncertainty(
                adata,
                latent=latent,
                confidence_threshold=confidence_threshold,
                novelty_quantile=novelty_quantile,
                warn_share=None,
            )
        label_key = label_key or reg.labels_key
        keep = [k for k in (batch_key, label_key) if k and k in adata.obs.columns]
        obs = adata.obs[keep].copy()
        for col in ("predicted_label", "probability", "unknown", "unknown_reason"):
            obs[col] = predictions[col].to_numpy()
        content.obs, content.latent = obs, np.asarray(latent)
        content.label_key = label_key if label_key in obs.columns else None
        content.counts = _counts(adata, reg.layer)
    return write_report(path, content)


def subset_rows(adata, cells: np.ndarray):
    """An in-memory AnnData of ``cells`` (rows) of ``adata``, backed or not."""
    view = adata[cells]
    return view.to_memory() if getattr(adata, "isbacked", False) else view.copy()


def _best_epoch(model) -> int | None:
    extra = getattr(model, "extra", None) or {}
    if extra.get("best_epoch"):
        return int(extra["best_epoch"])
    state = getattr(model, "training_state", None)
    best = getattr(state, "best_epoch", -1)
    return best + 1 if best is not None and best >= 0 else None


def _counts(adata, layer: str | None):
    """The raw counts of an in-memory AnnData (None for a backed one)."""
    if getattr(adata, "isbacked", False):
        return None
    x = adata.layers[layer] if layer and layer in adata.layers else adata.X
    return x if x is not None and x.shape[1] > 1 else None
