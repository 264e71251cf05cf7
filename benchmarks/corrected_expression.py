"""Corrected expression, measured: is the batch gone from it, and is the biology still there?

    python benchmarks/corrected_expression.py [--datasets cellbench,pbmc,kang] [--methods scARKIDS-sup,scARKIDS-unsup,scVI]
    python benchmarks/corrected_expression.py --table

On the 2000 HVGs of ``integration.py`` (same loading), every cell is decoded as if measured
in one batch (kang: ``ctrl``; otherwise the largest batch) by
``SCARKIDS.get_normalized_expression(transform_batch=...)`` and by scVI's (defaults; same
call), at 10^4 counts per cell, then ``log1p``, and compared with the uncorrected
log-CP10k:

- **batch share**: per gene, the share of its variance within a cell type that the batch
  explains (one-way ANOVA R^2 over the batches with at least 10 cells of that type; types
  weighted by their cells); median over genes. Lower is better; ``reduction`` is the
  uncorrected share over the corrected one. ``pooled``: the share of all genes' within-type
  variance together, so that genes count by their variance (in raw log-CP10k most of a
  lowly expressed gene's variance is counting noise, which batch cannot explain and which
  decoded expression no longer has: the per-gene median favours the uncorrected data).
- **reduction vs own-batch decode**: the same model's decode with each cell's own batch
  (``transform_batch=None``: as smooth as the corrected one, only the batch differs) over
  the corrected share: how much of the batch the transform itself removes.
- **fold-change Spearman**: per type, the Spearman correlation over genes of the log fold
  change (type vs the other cells) before and after; mean over types. ``expressed``: over
  the 500 genes of highest mean uncorrected expression, whose fold changes are not noise.
- **marker recovery**: the share of each type's top-50 Wilcoxon markers of the uncorrected
  data that are also top-50 in the corrected data; mean over types.
- **why markers move**: the within-type share of the latent's variance; per gene, the
  within-type sd over the total sd of the matrix (median); the median detection rate and
  uncorrected fold change of the markers the matrix adds and of those it misses.
- **kang, interferon genes**: stim minus ctrl mean log expression of ISG15, IFI6 and IFIT1
  within each type, before and after (the stimulation *is* kang's batch, so decoding both
  conditions as ctrl removes the response by design).

For each scARKIDS model a second row, ``<method>, counts``, scores its
``get_normalized_expression(source="counts")`` from the same model: each cell's own counts
(per 10^4) times the decoded batch effect ``rho(z0, target) / rho(z0, own batch)``; its
own-batch matrix is the uncorrected counts per 10^4. ``scVI, counts`` is the same rescaling
with scVI's decoded expression (its target over its own-batch decode, each the mean of 10
posterior draws), so that the two models are compared on the same recipe.

scARKIDS-sup trains on the labels with the seeded 20% of ``integration.py`` hidden. Each
run is appended to ``benchmarks/results/corrected_expression/runs.jsonl`` (a rerun replaces
its row); ``benchmarks/results/corrected_expression.md`` is rebuilt from all runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from harness import (
    DATA_DIR,
    DATASETS,
    RESULTS,
    hide_labels,
    load_dataset,
    log,
    md_table,
    part_parser,
    provenance,
    read_runs,
    ready_to_run,
    record_run,
    train_scarkids,
    train_scvi,
    write_table,
)

RUNS = RESULTS / "corrected_expression" / "runs.jsonl"
KEY = ("dataset", "method", "seed")
MIN_CELLS = 10
N_MARKERS = 50
N_EXPRESSED = 500
ISG = ("ISG15", "IFI6", "IFIT1")
METHODS = ("scARKIDS-sup", "scARKIDS-unsup", "scVI")


def batch_shares(X: np.ndarray, types: np.ndarray, batches: np.ndarray) -> tuple[float, float]:
    """The within-type variance share explained by batch: median over genes, and pooled (the
    share of all genes' within-type variance together, genes weighted by variance)."""
    num = np.zeros(X.shape[1])
    den = np.zeros(X.shape[1])
    between_sum = total_sum = 0.0
    for t in np.unique(types):
        in_t = types == t
        sizes = pd.Series(batches[in_t]).value_counts()
        kept = sizes[sizes >= MIN_CELLS].index
        if len(kept) < 2:
            continue
        cells = in_t & np.isin(batches, kept)
        Xt = X[cells]
        mean = Xt.mean(0)
        total = ((Xt - mean) ** 2).sum(0)
        between = np.zeros(X.shape[1])
        for b in kept:
            Xb = Xt[batches[cells] == b]
            between += len(Xb) * (Xb.mean(0) - mean) ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, between / total, np.nan)
        between_sum, total_sum = between_sum + between.sum(), total_sum + total.sum()
        ok = np.isfinite(share)
        num[ok] += cells.sum() * share[ok]
        den[ok] += cells.sum()
    with np.errstate(invalid="ignore"):
        median = float(np.nanmedian(np.where(den > 0, num / den, np.nan)))
    return median, float(between_sum / total_sum)


def fold_changes(X: np.ndarray, types: np.ndarray) -> dict[str, np.ndarray]:
    return {t: X[types == t].mean(0) - X[types != t].mean(0) for t in np.unique(types)}


def markers(X: np.ndarray, types: np.ndarray, genes) -> dict[str, set]:
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(X=np.asarray(X, dtype=np.float32), obs=pd.DataFrame({"t": types}))
    a.var_names = list(genes)
    a.obs["t"] = a.obs["t"].astype("category")
    sc.tl.rank_genes_groups(a, "t", method="wilcoxon", n_genes=N_MARKERS)
    names = a.uns["rank_genes_groups"]["names"]
    return {t: set(names[t]) for t in names.dtype.names}


def isg_response(X: np.ndarray, genes, types, batches) -> dict[str, float]:
    """Mean over types of stim - ctrl mean log expression, per interferon gene."""
    out = {}
    genes = list(genes)
    for g in ISG:
        if g not in genes:
            continue
        col = X[:, genes.index(g)]
        diffs = [
            col[(types == t) & (batches == "stim")].mean()
            - col[(types == t) & (batches == "ctrl")].mean()
            for t in np.unique(types)
            if min(((types == t) & (batches == b)).sum() for b in ("ctrl", "stim")) >= MIN_CELLS
        ]
        out[g] = float(np.mean(diffs))
    return out


def corrected(method: str, adata, target: str, seed: int) -> dict[str, tuple]:
    """Per variant of ``method``: ``log1p`` of the expression decoded as batch ``target``, of
    the same model's decode with each cell's own batch (10^4 counts per cell), and the
    within-type share of the latent's variance. scARKIDS
    adds the variant ``"<method>, counts"``: its ``source="counts"`` expression (each cell's
    counts with the decoded batch effect divided out) from the same model; scVI's variant
    is the same rescaling computed with scVI's decoded expression."""
    out = {}
    if method == "scVI":
        model = train_scvi(adata.copy(), seed, quick=False)
        out[method] = [
            model.get_normalized_expression(
                transform_batch=batch, library_size=1e4, return_numpy=True
            )
            for batch in (target, None)
        ]
        z = model.get_latent_representation()
        # the same rescaling of each cell's counts with scVI's decoder, for a fair comparison
        counts = adata.layers["counts"]
        counts = np.asarray(counts.toarray() if hasattr(counts, "toarray") else counts, float)
        # (averaged over 10 posterior draws: the default decode draws one z per call, and
        # a ratio of two independent draws would add noise that is not scVI's batch effect)
        target_decode, own_decode = (
            np.asarray(
                model.get_normalized_expression(
                    transform_batch=batch, library_size=1e4, n_samples=10, return_mean=True,
                    return_numpy=True,
                ),
                dtype=np.float64,
            )
            for batch in (target, None)
        )  # fmt: skip
        rescaled = counts / np.maximum(counts.sum(1, keepdims=True), 1) * target_decode
        rescaled /= np.maximum(own_decode, 1e-30)
        total = rescaled.sum(1, keepdims=True)
        rescaled = np.divide(1e4 * rescaled, total, out=np.zeros_like(rescaled), where=total > 0)
        plain = np.divide(1e4 * counts, counts.sum(1, keepdims=True), out=np.zeros_like(counts),
                          where=counts.sum(1, keepdims=True) > 0)  # fmt: skip
        out[f"{method}, counts"] = [rescaled, plain]
    else:
        labels = "cell_type_masked" if method == "scARKIDS-sup" else None
        k = adata.obs["cell_type"].nunique()
        model, a = train_scarkids(adata, labels, k, seed, quick=False)
        for source, name in (("decoded", method), ("counts", f"{method}, counts")):
            out[name] = [
                model.get_normalized_expression(
                    a, transform_batch=batch, return_numpy=True, source=source
                )
                for batch in (target, None)
            ]
        z = model.get_latent_representation(a)
    share = latent_within_share(z, adata.obs["cell_type"].astype(str).to_numpy())
    return {
        name: (*(np.log1p(np.asarray(e, dtype=np.float64)) for e in pair), share)
        for name, pair in out.items()
    }


def summary(X: np.ndarray, adata, name: str, *, full: bool = True) -> dict:
    """What the scores compare, for one matrix: the batch shares and (``full``) the fold
    changes, the markers and, on kang, the interferon response."""
    types = adata.obs["cell_type"].astype(str).to_numpy()
    batches = adata.obs["batch"].astype(str).to_numpy()
    out = dict(zip(("share", "pooled"), batch_shares(X, types, batches), strict=True))
    if full:
        out["fold"] = fold_changes(X, types)
        out["markers"] = markers(X, types, adata.var_names)
        out["isg"] = isg_response(X, adata.var_names, types, batches) if name == "kang" else {}
        out["top"] = np.argsort(-X.mean(0))[:N_EXPRESSED]  # genes whose fold changes are not noise
        out["detection"] = (X > 0).mean(0)
        out["genes"] = {g: i for i, g in enumerate(adata.var_names)}
        within = np.median([X[types == t].std(0) for t in np.unique(types)], axis=0)
        out["within sd share"] = float(np.median(within / np.maximum(X.std(0), 1e-12)))
    return out


def latent_within_share(z: np.ndarray, types: np.ndarray) -> float:
    """The within-type share of the latent's variance (mean over types of the summed
    per-dimension variance, over the total)."""
    return float(np.mean([z[types == t].var(0).sum() for t in np.unique(types)]) / z.var(0).sum())


def marker_traits(before: dict, after: dict) -> dict:
    """Median detection rate and uncorrected fold change (log1p scale) of the markers the
    corrected matrix adds (top 50 there, not in the uncorrected data) and of those it misses."""
    added, missed = [], []
    for t, true in before["markers"].items():
        fold = before["fold"][t]
        for genes, into in (
            (after["markers"][t] - true, added),
            (true - after["markers"][t], missed),
        ):
            into += [
                (before["detection"][before["genes"][g]], fold[before["genes"][g]]) for g in genes
            ]
    out = {}
    for name, pairs in (("added", added), ("missed", missed)):
        if pairs:
            det, fold = np.median(np.asarray(pairs), axis=0)
            out[f"{name} markers: detection"] = float(det)
            out[f"{name} markers: uncorrected fold change"] = float(fold)
    return out


def scores(before: dict, after: dict, own: dict) -> dict:
    """The row of one corrected matrix: ``before`` (uncorrected), ``after`` (decoded as one
    batch) and ``own`` (the same model decoding each cell with its own batch) summaries."""
    from scipy.stats import spearmanr

    row = {"batch share": after["share"], "batch share uncorrected": before["share"]}
    row["reduction"] = before["share"] / after["share"]
    # the model's own smoothing, only the batch differs from "after"
    row["batch share own-batch decode"] = own["share"]
    row["reduction vs own-batch decode"] = own["share"] / after["share"]
    row["pooled batch share"] = after["pooled"]
    row["pooled batch share uncorrected"] = before["pooled"]
    row["pooled reduction"] = before["pooled"] / after["pooled"]
    fb, fa, top = before["fold"], after["fold"], before["top"]
    row["fold-change Spearman"] = float(np.mean([spearmanr(fb[t], fa[t])[0] for t in fb]))
    row["fold-change Spearman, expressed"] = float(
        np.mean([spearmanr(fb[t][top], fa[t][top])[0] for t in fb])
    )
    mb, ma = before["markers"], after["markers"]
    row["marker recovery"] = float(np.mean([len(mb[t] & ma[t]) / N_MARKERS for t in mb]))
    row["within-type sd share"] = after["within sd share"]
    row["within-type sd share uncorrected"] = before["within sd share"]
    row.update(marker_traits(before, after))
    for g, v in before["isg"].items():
        row[f"{g} stim-ctrl uncorrected"] = v
    for g, v in after["isg"].items():
        row[f"{g} stim-ctrl"] = v
    return row


def write_tables() -> Path:
    df = pd.DataFrame(read_runs(RUNS))
    cols = [
        "batch share uncorrected",
        "batch share",
        "reduction",
        "batch share own-batch decode",
        "reduction vs own-batch decode",
        "pooled batch share uncorrected",
        "pooled batch share",
        "pooled reduction",
        "fold-change Spearman",
        "fold-change Spearman, expressed",
        "marker recovery",
    ]
    for c in cols:
        if c not in df:
            df[c] = np.nan
    isg = [c for c in df.columns if "stim-ctrl" in c]
    lines = [
        "# Corrected expression (`python benchmarks/corrected_expression.py`)",
        "",
        "Every cell decoded as one batch (kang: ctrl; otherwise the largest batch), log1p of "
        "10^4 counts per cell, 2000 HVGs; see the script's docstring for each score. Mean "
        "(and sd when there are several) over seeds.",
        "",
    ]

    def cell(v: pd.Series) -> str:
        v = v.dropna()
        if v.empty:
            return "-"
        return f"{v.mean():.3f}" + (f" ± {v.std():.3f}" if len(v) > 1 else "")

    groups = df.groupby(["dataset", "method"], sort=True)
    lines += md_table(
        ["dataset", "method", "n seeds", *cols],
        [[ds, method, str(len(g)), *(cell(g[c]) for c in cols)] for (ds, method), g in groups],
    )
    why = [
        "latent within-type variance share",
        "within-type sd share uncorrected",
        "within-type sd share",
        "added markers: detection",
        "added markers: uncorrected fold change",
        "missed markers: detection",
        "missed markers: uncorrected fold change",
    ]
    if all(c in df for c in why):
        known = df.dropna(subset=why)
        lines += [
            "",
            "Why markers move: the within-type share of the latent's variance; per gene, the "
            "within-type sd over the total sd (median over genes; log1p scale); and the median "
            "detection rate and uncorrected log1p fold change of the top-50 markers the matrix "
            "adds (not top-50 in the uncorrected data) and of those it misses.",
            "",
        ]
        lines += md_table(
            ["dataset", "method", *why],
            [
                [ds, method, *(cell(g[c]) for c in why)]
                for (ds, method), g in known.groupby(["dataset", "method"], sort=True)
            ],
        )
    if isg:
        lines += [
            "",
            "kang: stim minus ctrl mean log expression within each type (mean over types), "
            "before and after decoding both conditions as ctrl.",
            "",
        ]
        lines += md_table(
            ["method", *isg],
            [
                [method, *(cell(g[c]) for c in isg)]
                for method, g in df[df["dataset"] == "kang"].groupby("method")
            ],
        )
    return write_table(RESULTS / "corrected_expression.md", lines)


def main(argv=None) -> int:
    parser = part_parser(__doc__, "cellbench,pbmc,kang")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    if ready_to_run(args):
        for name in args.datasets.split(","):
            adata = load_dataset(DATA_DIR / DATASETS[name], args.seed)
            hide_labels(adata, args.seed)
            batches = adata.obs["batch"].astype(str)
            target = "ctrl" if name == "kang" else batches.value_counts().index[0]
            before = summary(adata.X.toarray().astype(np.float64), adata, name)
            for method in args.methods.split(","):
                log(f"{name} {method} (decoded as {target}) ...")
                t = time.perf_counter()
                variants = corrected(method, adata, target, args.seed)
                train_s = time.perf_counter() - t
                for variant, (after, own, share) in variants.items():
                    row = {"dataset": name, "method": variant, "seed": args.seed}
                    row.update(target=target, train_s=train_s)
                    row["latent within-type variance share"] = share
                    own = summary(own, adata, name, full=False)
                    row.update(scores(before, summary(after, adata, name), own))
                    row.update(provenance(args.threads))
                    record_run(RUNS, row, KEY)
                    log(f"  {row}")
    if RUNS.exists():
        print(write_tables().read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
