"""Cell types the reference never saw: leave-one-cell-type-out reference mapping.

    python benchmarks/uncertainty.py [--datasets kang,cellbench] [--methods scARKIDS,scANVI]
    python benchmarks/uncertainty.py --table

Splits. kang_ifnb_labeled: reference = ctrl, query = stim, each cell type with at least 50
stim cells left out of the reference in turn. cellbench_5batch: reference = the three
CEL-seq2_5cl plates, query = CEL-seq2_3cl or Drop-seq_3cl, each of H1975, H2228 and HCC827
left out of the reference in turn. Both methods get the same 2000 seurat_v3 HVGs (of the
reference cells), the same reference cells with labels, the same query cells without.

- scARKIDS: supervised reference (defaults, but ``encode_batch=True``: the setting for
  reference mapping, as scArches' for scVI, so that a query session learns its new
  batches' offsets in the encoder too and the query's known cells land on the reference's
  types), ``load_query_data`` and an unsupervised query session (the sessions path); ``predict_with_uncertainty``: novelty, calibrated probability,
  entropy, ``unknown`` at the default threshold (99th percentile of the reference cells'
  novelty moved by the query batch's median shift; no probability rule).
- scANVI: scvi-tools' recommended mapping recipe (``harness.scanvi_mapping``: scVI with
  ``encode_covariates=True`` and layer norm -> ``from_scvi_model`` 20 epochs ->
  ``load_query_data`` + 100 query epochs, weight_decay 0), its ``predict(soft=True)``. Rows
  named "scANVI, default scVI (superseded)" are the earlier runs from a default scVI, and
  "scARKIDS, before #36" the rows before the per-batch novelty threshold; both are kept for
  the record. Means are over the splits that every current method completed.

Per split: AUROC and AUPRC of flagging the left-out type by each score; expected calibration
error (15 bins) on the known-type query cells (ours before and after temperature scaling);
accuracy on the known types; the share of the left-out type and of known cells flagged.
Each run is appended to ``benchmarks/results/uncertainty/runs.jsonl`` (a rerun replaces
its row) and ``benchmarks/results/uncertainty.md`` is rebuilt from all runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import harness
import numpy as np
import pandas as pd
from harness import log, part_parser, read_runs, ready_to_run, record_run

DATA = harness.DATA_DIR
OUT = harness.RESULTS
RUNS = OUT / "uncertainty" / "runs.jsonl"
KEY = ("dataset", "split", "method", "seed")
MIN_QUERY_CELLS = 50
CELLBENCH_REF = ("CEL-seq2_5cl_p1", "CEL-seq2_5cl_p2", "CEL-seq2_5cl_p3")
CELLBENCH_QUERIES = ("CEL-seq2_3cl", "Drop-seq_3cl")


def ece(probs: np.ndarray, truth_idx: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the top probability (equal-width bins)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == truth_idx
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(conf[inside].mean() - correct[inside].mean())
    return float(total)


def splits(name: str):
    """``(split name, reference AnnData, query AnnData, left-out type)`` per split."""
    import scanpy as sc

    if name == "kang":
        adata = sc.read_h5ad(DATA / "kang_ifnb_labeled.h5ad")
        is_query = (adata.obs["batch"] == "stim").to_numpy()
        sizes = adata.obs["cell_type"][is_query].value_counts()
        pairs = [(is_query, t) for t in sorted(sizes[sizes >= MIN_QUERY_CELLS].index)]
        pairs = [(f"{t} out", q, t) for q, t in pairs]
    elif name == "cellbench":
        adata = sc.read_h5ad(DATA / "cellbench_5batch.h5ad")
        batch = adata.obs["batch"].astype(str)
        pairs = []
        for query in CELLBENCH_QUERIES:
            for t in ("H1975", "H2228", "HCC827"):
                pairs.append((f"{query}, {t} out", (batch == query).to_numpy(), t))
        keep = batch.isin([*CELLBENCH_REF, *CELLBENCH_QUERIES]).to_numpy()
    else:
        raise ValueError(name)
    for split, is_query, left_out in pairs:
        in_ref = ~is_query & (adata.obs["cell_type"] != left_out).to_numpy()
        if name == "cellbench":
            in_ref &= keep
        ref = adata[in_ref].copy()
        ref.X = ref.X.astype(np.float32)
        sc.pp.highly_variable_genes(ref, flavor="seurat_v3", n_top_genes=2000, batch_key="batch")
        genes = ref.var_names[ref.var["highly_variable"]]
        query = adata[is_query, genes].copy()
        query.X = query.X.astype(np.float32)
        yield split, ref[:, genes].copy(), query, left_out


def run_scarkids(ref, query, seed: int) -> dict:
    from scarkids import SCARKIDS

    SCARKIDS.setup_anndata(ref, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS(ref, seed=seed, encode_batch=True)
    model.train(seed=seed, progress_bar=False)
    q = query.copy()
    q.obs = q.obs[["batch"]].copy()
    SCARKIDS.setup_anndata(q, batch_key="batch")
    mapped = SCARKIDS.load_query_data(q, model)
    mapped.train(seed=seed, progress_bar=False)
    z = mapped.get_latent_representation(q)
    table = mapped.predict_with_uncertainty(q, latent=z)
    names = mapped.label_names
    import torch

    raw = mapped.module.label_log_probs(torch.as_tensor(z), 1.0).exp().numpy()
    cal = mapped.predict(q, soft=True)[names].to_numpy()
    return {
        "names": names,
        "probs": cal,
        "probs_uncalibrated": raw,
        "novelty": table["novelty"].to_numpy(),
        "unknown": table["unknown"].to_numpy(),
        "unknown by novelty": (table["unknown_reason"].str.contains("novelty")).to_numpy(),
        "temperature": mapped.temperature,
        "reference_novelty": np.asarray(mapped.calibration["validation_novelty"]),
        "truth_batch": q.obs["batch"].astype(str).to_numpy(),
    }


def run_scanvi(ref, query, seed: int) -> dict:
    soft, _ = harness.scanvi_mapping(ref, query, seed=seed)
    return {"names": list(soft.columns), "probs": soft.to_numpy()}


def scores(out: dict, truth: np.ndarray, left_out: str) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    is_new = truth == left_out
    probs = out["probs"]
    entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(1)
    flags = {"1-maxp": 1 - probs.max(1), "entropy": entropy}
    if "novelty" in out:
        flags = {"novelty": out["novelty"], **flags}
    row = {}
    for name, s in flags.items():
        row[f"AUROC {name}"] = roc_auc_score(is_new, s)
        row[f"AUPRC {name}"] = average_precision_score(is_new, s)
    names = list(out["names"])
    known = ~is_new
    idx = np.array([names.index(t) if t in names else -1 for t in truth[known]])
    row["accuracy known"] = float((probs[known].argmax(1) == idx).mean())
    row["ECE"] = ece(probs[known], idx)
    if "probs_uncalibrated" in out:
        row["ECE uncalibrated"] = ece(out["probs_uncalibrated"][known], idx)
        row["flagged new"] = float(out["unknown"][is_new].mean())
        row["flagged known"] = float(out["unknown"][known].mean())
        row["flagged new by novelty"] = float(out["unknown by novelty"][is_new].mean())
        row["flagged known by novelty"] = float(out["unknown by novelty"][known].mean())
        row["temperature"] = out["temperature"]
    row["n new"], row["n known"] = int(is_new.sum()), int(known.sum())
    return row


METHODS = {"scARKIDS": run_scarkids, "scANVI": run_scanvi}
COLUMNS = [
    "AUROC novelty",
    "AUROC 1-maxp",
    "AUROC entropy",
    "AUPRC novelty",
    "AUPRC 1-maxp",
    "AUPRC entropy",
    "ECE uncalibrated",
    "ECE",
    "accuracy known",
    "flagged new",
    "flagged known",
    "flagged new by novelty",
    "flagged known by novelty",
]
CURRENT = ("scARKIDS", "scANVI")


def write_table() -> Path:
    df = pd.DataFrame(read_runs(RUNS))
    for c in COLUMNS:
        if c not in df:
            df[c] = np.nan
    lines = [
        "# Unseen cell types and calibration (`python benchmarks/uncertainty.py`)",
        "",
        "Leave-one-cell-type-out reference mapping (see the script's docstring). AUROC / "
        "AUPRC: flagging the left-out type's query cells by each score; ECE (15 bins) and "
        "accuracy on the known-type query cells; flagged: share marked `unknown` at the "
        "default threshold (scARKIDS only; scANVI has no reject option).",
        "",
    ]
    fmt = lambda v: "-" if pd.isna(v) else f"{v:.3f}"  # noqa: E731
    for ds, g in df.groupby("dataset", sort=True):
        lines += [f"## {ds}", "", "| split | method | " + " | ".join(COLUMNS) + " |"]
        lines.append("|" + "---|" * (2 + len(COLUMNS)))
        for _, r in g.sort_values(["split", "method"]).iterrows():
            lines.append(
                f"| {r['split']} | {r['method']} | " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |"
            )
        current = g[g["method"].isin(CURRENT)]
        sets = [set(h["split"]) for _, h in current.groupby("method")]
        paired = set.intersection(*sets) if sets else set()
        for method, h in g.groupby("method"):
            if method in CURRENT and paired:
                h = h[h["split"].isin(paired)]
            mean = h[COLUMNS].mean()
            worst = h["AUROC novelty"].min()
            lines.append(
                f"| **mean ({len(h)} splits)** | **{method}** | "
                + " | ".join(fmt(mean[c]) for c in COLUMNS)
                + " |"
            )
            if method == "scARKIDS":
                lines.append(f"\nscARKIDS lowest split AUROC (novelty): {worst:.3f}\n")
        lines.append("")
    out = OUT / "uncertainty.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def main(argv=None) -> int:
    parser = part_parser(__doc__, "kang,cellbench")
    parser.add_argument("--methods", default="scARKIDS,scANVI")
    parser.add_argument("--splits", help="only the splits whose name contains this text")
    parser.add_argument("--dump", help="folder for each split's scores (.npz), to study rules")
    args = parser.parse_args(argv)
    if ready_to_run(args):
        for name in args.datasets.split(","):
            for split, ref, query, left_out in splits(name):
                if args.splits and args.splits not in split:
                    continue
                truth = query.obs["cell_type"].astype(str).to_numpy()
                for method in args.methods.split(","):
                    log(f"{name} {split} {method} ...")
                    t = time.perf_counter()
                    out = METHODS[method](ref.copy(), query.copy(), args.seed)
                    row = {"dataset": name, "split": split, "method": method, "seed": args.seed}
                    row.update(scores(out, truth, left_out))
                    if args.dump and "novelty" in out:
                        Path(args.dump).mkdir(parents=True, exist_ok=True)
                        np.savez(
                            Path(args.dump) / f"{name}_{split.replace(' ', '_')}.npz",
                            novelty=out["novelty"],
                            reference=out["reference_novelty"],
                            is_new=truth == left_out,
                            probs=out["probs"],
                        )
                    row.update({"time_s": time.perf_counter() - t, **harness.provenance()})
                    record_run(RUNS, row, KEY)
                    log(f"  {row}")
    if RUNS.exists():
        print(write_table().read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
