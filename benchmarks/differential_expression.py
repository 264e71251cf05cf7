"""Differential expression from the models against pseudobulk DESeq2 on the raw counts.

    python benchmarks/differential_expression.py [--datasets kang,cellbench] [--seed 0]
        [--methods scARKIDS-sup,scARKIDS-unsup,scVI,Wilcoxon] [--quick]
    python benchmarks/differential_expression.py --table

The comparisons (genes: the 2000 seurat_v3 HVGs of ``harness.load_dataset``):

- kang: stim against ctrl within each cell type with at least 50 cells in each condition.
  The condition is the biology here, so every model is trained with the donor as its batch
  (the README's advice: what a user wants to keep does not go in ``batch_key``).
- cellbench: each cell line against the rest; the protocol plates are the batches.

The reference is pseudobulk DESeq2 (``pydeseq2``): counts summed per (batch, group), design
``~ block + group`` (block = donor on kang, plate on cellbench), the contrast group 1 against
group 2. Its DE set: padj < 0.05 and |log2FC| > 1.

The methods, trained in the same run on the same cells:

- scARKIDS supervised (``cell_type`` labels) and unsupervised, ``differential_expression``
  with mode "change", ``delta`` 0.25, ``batch_correction=True``; genes ranked as the table
  sorts them (``proba_de``, then ``|lfc_mean|``);
- scVI (its defaults, batch = donor/plate), ``differential_expression`` with mode "change"
  and the same ``delta``, otherwise its defaults; ranked the same way;
- scanpy's Wilcoxon ``rank_genes_groups`` on log-CP10k of the two groups' cells, ranked by
  ``|score|``, called at Benjamini-Hochberg ``pvals_adj`` < 0.05.

Scores per comparison, then their mean: AUPRC of the ranking against the DESeq2 set, the
precision of the top 100, the Spearman correlation of the LFC with DESeq2's log2FC over the
genes expressed (count > 0) in at least 10% of either group's cells, the number of genes the
method calls at its own FDR target 0.05, and the share of those that DESeq2 does not call at
padj < 0.1. Wall times: training, the comparisons, and (kang) the full one-against-rest
table of ``cell_type`` (``groupby="cell_type"``) for scARKIDS-sup and scVI.

Rows go to ``benchmarks/results/differential_expression/runs.jsonl`` (a rerun replaces its
row), the table to ``benchmarks/results/differential_expression.md``.
"""

from __future__ import annotations

import time

import harness
import numpy as np
import pandas as pd
from harness import DATA_DIR, DATASETS, RESULTS, log

RUNS = RESULTS / "differential_expression" / "runs.jsonl"
TABLE = RESULTS / "differential_expression.md"
KEY = ("dataset", "method", "seed")
METHODS = ["scARKIDS-sup", "scARKIDS-unsup", "scVI", "Wilcoxon"]
DELTA, FDR, MIN_CELLS, TOP = 0.25, 0.05, 50, 100
REF_PADJ, REF_LFC, CALLED_PADJ, EXPRESSED = 0.05, 1.0, 0.1, 0.10
SCORES = ["auprc", "top100_precision", "lfc_spearman", "n_called", "called_outside_deseq2"]


def prepare(name: str, seed: int):
    """``(adata, comparisons)``: the preprocessed dataset with the models' batch in
    ``obs['batch']`` and the comparisons ``[(name, mask1, mask2)]``."""
    if name == "kang":
        adata = harness.load_dataset(DATA_DIR / DATASETS[name], seed, extra_obs=("donor",))
        adata.obs["condition"] = adata.obs["batch"]
        adata.obs["batch"] = adata.obs["donor"]
        cond = adata.obs["condition"].astype(str).to_numpy()
        types = adata.obs["cell_type"].astype(str).to_numpy()
        comparisons = []
        for t in sorted(set(types)):
            m1, m2 = (types == t) & (cond == "stim"), (types == t) & (cond == "ctrl")
            if min(m1.sum(), m2.sum()) >= MIN_CELLS:
                comparisons.append((f"{t}: stim vs ctrl", m1, m2))
        return adata, comparisons
    adata = harness.load_dataset(DATA_DIR / DATASETS[name], seed)
    types = adata.obs["cell_type"].astype(str).to_numpy()
    return adata, [(f"{t} vs rest", types == t, types != t) for t in sorted(set(types))]


def deseq2(adata, m1: np.ndarray, m2: np.ndarray) -> pd.DataFrame:
    """Pseudobulk DESeq2 of group 1 against group 2, counts summed per (batch, group),
    design ``~ block + group``: ``log2FoldChange`` and ``padj`` (NaN set to 1) per gene."""
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.ds import DeseqStats

    counts = adata.layers["counts"]
    block = adata.obs["batch"].astype(str).to_numpy()
    rows, meta = [], []
    for group, mask in (("g1", m1), ("g2", m2)):
        for b in np.unique(block[mask]):
            cells = mask & (block == b)
            rows.append(np.asarray(counts[cells].sum(0)).ravel())
            meta.append({"sample": f"{b}_{group}", "block": f"b{b}", "group": group})
    meta = pd.DataFrame(meta).set_index("sample")
    df = pd.DataFrame(np.rint(rows).astype(np.int64), index=meta.index, columns=adata.var_names)
    design = "~block + group" if meta["block"].nunique() > 1 else "~group"
    dds = DeseqDataSet(counts=df, metadata=meta, design=design, quiet=True, n_cpus=2)
    dds.deseq2()
    stats = DeseqStats(dds, contrast=["group", "g1", "g2"], quiet=True, n_cpus=2)
    stats.summary()
    res = stats.results_df[["log2FoldChange", "padj"]].copy()
    res["padj"] = res["padj"].fillna(1.0)
    return res.reindex(adata.var_names)


def lvm_ranking(table: pd.DataFrame, genes) -> pd.DataFrame:
    """``score`` (higher ranks first, in the table's own order), ``lfc`` and ``called`` per
    gene of an lvm-DE table (scARKIDS' or scVI's), reindexed to ``genes``."""
    out = pd.DataFrame(index=table.index)
    out["score"] = np.arange(len(table), 0, -1, dtype=float)
    out["lfc"] = table["lfc_mean"].to_numpy()
    out["called"] = table[f"is_de_fdr_{FDR}"].to_numpy().astype(bool)
    return out.reindex(genes)


def lvm_sorted(table: pd.DataFrame) -> pd.DataFrame:
    """scvi-tools' sort: by decreasing ``proba_de``, then by decreasing ``|lfc_mean|``."""
    order = np.lexsort((-np.abs(table["lfc_mean"].to_numpy()), -table["proba_de"].to_numpy()))
    return table.iloc[order]


def wilcoxon(adata, m1: np.ndarray, m2: np.ndarray) -> pd.DataFrame:
    """scanpy's Wilcoxon test of group 1 against group 2 on log-CP10k (``adata.X``)."""
    import scanpy as sc

    sub = adata[m1 | m2].copy()
    sub.obs["de_group"] = pd.Categorical(np.where(m1[m1 | m2], "g1", "g2"))
    sc.tl.rank_genes_groups(
        sub, "de_group", groups=["g1"], reference="g2", method="wilcoxon", tie_correct=True
    )
    res = sc.get.rank_genes_groups_df(sub, group="g1").set_index("names")
    out = pd.DataFrame(index=res.index)
    out["score"] = np.abs(res["scores"].to_numpy())
    out["lfc"] = res["logfoldchanges"].to_numpy()
    out["called"] = (res["pvals_adj"] < FDR).to_numpy()
    return out.reindex(adata.var_names)


def comparison_scores(ranking: pd.DataFrame, ref: pd.DataFrame, expressed: np.ndarray) -> dict:
    """The scores of one method's ``ranking`` on one comparison against DESeq2's ``ref``."""
    from scipy.stats import spearmanr
    from sklearn.metrics import average_precision_score

    truth = ((ref["padj"] < REF_PADJ) & (ref["log2FoldChange"].abs() > REF_LFC)).to_numpy()
    score = ranking["score"].fillna(-np.inf).to_numpy()
    top = np.argsort(-score, kind="stable")[:TOP]
    keep = expressed & np.isfinite(ref["log2FoldChange"].to_numpy()) & ranking["lfc"].notna()
    rho = spearmanr(ranking["lfc"].to_numpy()[keep], ref["log2FoldChange"].to_numpy()[keep])[0]
    called = ranking["called"].fillna(False).to_numpy().astype(bool)
    outside = called & ~(ref["padj"] < CALLED_PADJ).to_numpy()
    return {
        "n_reference": int(truth.sum()),
        "auprc": float(average_precision_score(truth, score)) if truth.any() else np.nan,
        "top100_precision": float(truth[top].mean()),
        "lfc_spearman": float(rho),
        "n_called": int(called.sum()),
        "called_outside_deseq2": float(outside.sum() / called.sum()) if called.any() else np.nan,
    }


def expressed_genes(adata, m1: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """``(G,)`` bool: expressed in at least ``EXPRESSED`` of group 1's or group 2's cells."""
    counts = adata.layers["counts"]
    share = [np.asarray((counts[m] > 0).mean(0)).ravel() for m in (m1, m2)]
    return np.maximum(*share) >= EXPRESSED


def train(method: str, adata, seed: int, quick: bool):
    """The trained model and the AnnData it was set up on, or ``(None, adata)`` for Wilcoxon."""
    k = adata.obs["cell_type"].nunique()
    if method == "scARKIDS-sup":
        return harness.train_scarkids(adata, "cell_type", k, seed, quick)
    if method == "scARKIDS-unsup":
        return harness.train_scarkids(adata, None, k, seed, quick)
    if method == "scVI":
        a = adata.copy()
        return harness.train_scvi(a, seed, quick), a
    return None, adata


def rankings(method: str, model, a, comparisons, seed: int, n_samples: int) -> list:
    """One ranking per comparison (see :func:`lvm_ranking`)."""
    out = []
    for _, m1, m2 in comparisons:
        if method == "Wilcoxon":
            out.append(wilcoxon(a, m1, m2))
        elif method == "scVI":
            table = model.differential_expression(
                idx1=m1, idx2=m2, mode="change", delta=DELTA, n_samples_overall=n_samples
            )  # 5000 draws: scvi-tools' default
            out.append(lvm_ranking(lvm_sorted(table), a.var_names))
        else:
            table = model.differential_expression(
                a, idx1=m1, idx2=m2, mode="change", delta=DELTA, batch_correction=True,
                fdr_target=FDR, n_samples=n_samples, seed=seed,
            )  # fmt: skip
            out.append(lvm_ranking(table, a.var_names))
    return out


def full_table_seconds(method: str, model, a, seed: int) -> float | None:
    """Seconds for the one-against-rest table of every ``cell_type`` (lvm-DE models only)."""
    if model is None:
        return None
    t0 = time.perf_counter()
    if method == "scVI":
        model.differential_expression(groupby="cell_type", mode="change", delta=DELTA)
    else:
        model.differential_expression(a, groupby="cell_type", delta=DELTA, seed=seed)
    return time.perf_counter() - t0


def run_method(method, adata, comparisons, refs, expressed, args) -> dict:
    """Train ``method``, rank every comparison, score it: one record."""
    t0 = time.perf_counter()
    model, a = train(method, adata, args.seed, args.quick)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    ranked = rankings(method, model, a, comparisons, args.seed, 500 if args.quick else 5000)
    t_de = time.perf_counter() - t0
    per = [
        {"comparison": name, **comparison_scores(r, ref, e)}
        for (name, _, _), r, ref, e in zip(comparisons, ranked, refs, expressed, strict=True)
    ]
    full = full_table_seconds(method, model, a, args.seed) if args.dataset == "kang" else None
    mean = {s: float(np.nanmean([p[s] for p in per])) for s in SCORES}
    return {"train_seconds": t_train, "de_seconds": t_de, "full_table_seconds": full,
            "mean": mean, "comparisons": per}  # fmt: skip


def write_table() -> None:
    """The markdown table of the recorded runs: mean scores per dataset and method."""
    runs = harness.read_runs(RUNS)
    lines = [
        "# Differential expression against pseudobulk DESeq2",
        "",
        "`python benchmarks/differential_expression.py` (see its docstring). Reference: "
        f"DESeq2 padj < {REF_PADJ} and |log2FC| > {REF_LFC:g}. Means over comparisons; "
        "`outside` = share of the genes a method calls (FDR 0.05) that DESeq2 does not call "
        f"at padj < {CALLED_PADJ}. Times in seconds on the machine of each row.",
        "",
    ]
    header = ["dataset", "method", "seed", "AUPRC", "top-100 precision", "LFC Spearman",
              "called", "outside", "train s", "DE s", "full table s", "commit"]  # fmt: skip
    rows = []
    for r in sorted(runs, key=lambda r: (r["dataset"], METHODS.index(r["method"]), r["seed"])):
        m = r["mean"]
        rows.append([r["dataset"], r["method"], str(r["seed"]), harness.fmt(m["auprc"]),
                     harness.fmt(m["top100_precision"]), harness.fmt(m["lfc_spearman"]),
                     f"{m['n_called']:.0f}", harness.fmt(m["called_outside_deseq2"]),
                     f"{r['train_seconds']:.0f}", f"{r['de_seconds']:.0f}",
                     "—" if r.get("full_table_seconds") is None
                     else f"{r['full_table_seconds']:.0f}",
                     harness.short_commit(r["provenance"])])  # fmt: skip
    lines += harness.md_table(header, rows)
    lines += ["", "## Per comparison", ""]
    header = ["dataset", "comparison", "DESeq2 set", *(f"{m} AUPRC" for m in METHODS)]
    per: dict = {}
    for r in runs:
        for c in r["comparisons"]:
            key = (r["dataset"], c["comparison"])
            per.setdefault(key, {"n": c["n_reference"]})[r["method"]] = c["auprc"]
    rows = [[d, c, str(v["n"]), *(harness.fmt(v.get(m, np.nan)) for m in METHODS)]
            for (d, c), v in sorted(per.items())]  # fmt: skip
    lines += harness.md_table(header, rows)
    if runs:
        p = runs[-1]["provenance"]
        lines += ["", f"Last run: {p['command']} at {harness.short_commit(p)}, {p['machine']}, "
                  + ", ".join(f"{k} {v}" for k, v in p["versions"].items())]  # fmt: skip
    TABLE.write_text("\n".join(lines) + "\n")
    log(f"wrote {TABLE}")


def main(argv=None) -> int:
    parser = harness.part_parser(__doc__, "kang,cellbench")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--quick", action="store_true", help="20 epochs, 500 draws (a check)")
    args = parser.parse_args(argv)
    if harness.ready_to_run(args):
        for dataset in args.datasets.split(","):
            args.dataset = dataset
            adata, comparisons = prepare(dataset, args.seed)
            log(f"{dataset}: {len(comparisons)} comparisons; DESeq2 pseudobulk")
            refs = [deseq2(adata, m1, m2) for _, m1, m2 in comparisons]
            expressed = [expressed_genes(adata, m1, m2) for _, m1, m2 in comparisons]
            for method in args.methods.split(","):
                log(f"{dataset}: {method}")
                row = run_method(method, adata, comparisons, refs, expressed, args)
                row.update(dataset=dataset, method=method, seed=args.seed, quick=args.quick)
                row["provenance"] = harness.provenance(args.threads)
                log(f"{dataset} {method}: {row['mean']}")
                if not args.quick:
                    harness.record_run(RUNS, row, KEY)
    write_table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
