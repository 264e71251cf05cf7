"""What the labels don't name: fine types under coarse labels, structure within each batch.

    python benchmarks/label_granularity.py [--datasets kang,panc8] [--seed 0]
        [--methods Unintegrated,Harmony,scVI,scANVI,scARKIDS-unsup,scARKIDS-sup]
    python benchmarks/label_granularity.py --table

Supervised methods are trained with coarse labels (``COARSE``):

- kang: ``T cells`` = CD4 T + CD8 T, ``Monocytes`` = CD14+ + FCGR3A+ monocytes;
- panc8: ``endocrine`` = alpha + beta + delta, ``exocrine`` = acinar + ductal.

scANVI (from the same run's scVI) gets the same coarse labels as scARKIDS-sup; scVI, Harmony
and scARKIDS-unsup (as many clusters as fine types) get none. ``scARKIDS-sup-fine`` trains
with the fine labels (what the label pressure costs within each batch), and a prior in
brackets (``scARKIDS-sup[mixture]``, ``scARKIDS-unsup[gaussian]``) swaps the diffusion prior,
and settings in braces (``scARKIDS-sup{classifier_dims=5}``,
``scARKIDS-sup{classification_weight=10}``) are design variants.

Each embedding is scored on the fine labels with :mod:`scarkids.metrics.structure`:

- within each coarse type of two or more fine types, the balanced accuracy of a 15-NN
  classifier of the fine label (5-fold stratified cross-validation inside the coarse type),
  the ARI of k-means (k = number of fine types) with the fine labels, and the silhouette of
  the fine labels (scIB-E's intra-cell-type idea: a label metric at a finer level than
  training's); means over the coarse types;
- without labels, the overlap of each cell's 15 nearest same-batch neighbours in its batch's
  own PCA (log-CP10k of the 2000 HVGs, 30 PCs) and in the embedding, mean over cells;
- and the scIB Total (scib-metrics, unscaled) with the fine labels.

Rows go to ``benchmarks/results/label_granularity/runs.jsonl`` (a rerun replaces its row),
the table (mean ± sd over seeds) to ``benchmarks/results/label_granularity.md``.
"""

from __future__ import annotations

import time

import harness
import numpy as np
import pandas as pd
from harness import DATA_DIR, DATASETS, RESULTS, log

from scarkids.metrics import fine_label_structure, within_batch_structure

RUNS = RESULTS / "label_granularity" / "runs.jsonl"
TABLE = RESULTS / "label_granularity.md"
KEY = ("dataset", "method", "seed")
COARSE = {
    "kang": {
        "CD4 T cells": "T cells",
        "CD8 T cells": "T cells",
        "CD14+ Monocytes": "Monocytes",
        "FCGR3A+ Monocytes": "Monocytes",
    },
    "panc8": {
        "alpha": "endocrine",
        "beta": "endocrine",
        "delta": "endocrine",
        "acinar": "exocrine",
        "ductal": "exocrine",
    },
}
METHODS = ["Unintegrated", "Harmony", "scVI", "scANVI", "scARKIDS-unsup", "scARKIDS-sup"]
COLUMNS = ["knn_balanced_accuracy", "kmeans_ari", "fine_asw", "within_batch", "Total"]
LABELS = {
    "knn_balanced_accuracy": "fine 15-NN bal. acc.",
    "kmeans_ari": "fine k-means ARI",
    "fine_asw": "fine ASW",
    "within_batch": "within-batch overlap",
    "Total": "scIB Total (fine)",
}


def prepare(name: str, seed: int):
    """The preprocessed dataset with ``obs['coarse']`` (and unchanged fine ``cell_type``)."""
    adata = harness.load_dataset(DATA_DIR / DATASETS[name], seed)
    fine = adata.obs["cell_type"].astype(str)
    adata.obs["coarse"] = pd.Categorical(fine.map(lambda t: COARSE[name].get(t, t)))
    return adata


def embed(method: str, adata, seed: int, cache: dict) -> np.ndarray:
    """The embedding of ``method`` (scANVI reuses the run's scVI model from ``cache``)."""
    if method == "Unintegrated":
        return adata.obsm["X_pca"]
    if method == "Harmony":
        return harness.run_harmony(adata, seed)
    if method in ("scVI", "scANVI"):
        if "scvi" not in cache:
            cache["scvi"] = harness.train_scvi(adata.copy(), seed, quick=False)
        if method == "scVI":
            return cache["scvi"].get_latent_representation()
        m = harness.train_scanvi(cache["scvi"], "coarse", seed, quick=False)
        return m.get_latent_representation()
    base, model_kwargs, train_kwargs = parse_variant(method)
    labels = {"scARKIDS-sup": "coarse", "scARKIDS-sup-fine": "cell_type", "scARKIDS-unsup": None}
    labels_key = labels[base]
    k = adata.obs[labels_key or "cell_type"].nunique()
    model, a = harness.train_scarkids(
        adata, labels_key, k, seed, quick=False, train_kwargs=train_kwargs, **model_kwargs
    )
    return model.get_latent_representation(a)


#: settings of a variant (``{name=value}``) that go to ``train``; the others go to the model
TRAIN_SETTINGS = ("classification_weight",)


def parse_variant(method: str) -> tuple[str, dict, dict]:
    """``scARKIDS-sup[mixture]{classifier_dims=5}`` -> ``("scARKIDS-sup", model kwargs,
    train kwargs)``: the prior in brackets (default diffusion), settings in braces (``;`` between them)."""
    head, _, settings = method.partition("{")
    base, _, prior = head.partition("[")
    model_kwargs: dict = {"prior": prior.rstrip("]") or "diffusion"}
    train_kwargs: dict = {}
    for item in filter(None, settings.rstrip("}").split(";")):
        key, _, value = item.partition("=")
        target = train_kwargs if key in TRAIN_SETTINGS else model_kwargs
        target[key] = float(value) if "." in value else int(value)
    return base, model_kwargs, train_kwargs


def scores(adata, z: np.ndarray, seed: int) -> dict[str, float]:
    """The fine-label, within-batch and scIB scores of one embedding."""
    fine = fine_label_structure(z, adata.obs["coarse"], adata.obs["cell_type"], seed=seed)
    within = within_batch_structure(adata.X, z, adata.obs["batch"], seed=seed)
    total = harness.score(adata, {"emb": z}, seed).iloc[0]
    return {
        **{c: float(fine[c].mean()) for c in ("knn_balanced_accuracy", "kmeans_ari", "fine_asw")},
        "within_batch": float(within["all"]),
        **{s: float(total[s]) for s in harness.SCORES},
        "per_coarse": fine.reset_index().to_dict(orient="records"),
    }


def write_table() -> None:
    """Mean ± sd over seeds per dataset and method."""
    runs = pd.DataFrame(harness.read_runs(RUNS))
    lines = [
        "# What the labels don't name (`python benchmarks/label_granularity.py`)",
        "",
        "Supervised methods trained with coarse labels, scored on the fine ones (see the "
        "script's docstring). Mean ± sd over seeds (n = seeds); `within-batch overlap` uses "
        "no label.",
        "",
    ]
    if runs.empty:
        TABLE.write_text("\n".join(lines) + "\n")
        return
    order = {m: i for i, m in enumerate(METHODS)}
    header = ["dataset", "method", "n", *(LABELS[c] for c in COLUMNS)]
    rows = []
    for (ds, method), g in sorted(
        runs.groupby(["dataset", "method"]), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99))
    ):
        cells = [
            f"{g[c].mean():.3f} ± {g[c].std(ddof=1):.3f}" if len(g) > 1 else f"{g[c].mean():.3f}"
            for c in COLUMNS
        ]
        rows.append([ds, method, str(len(g)), *cells])
    lines += harness.md_table(header, rows)
    last = runs.iloc[-1]["provenance"]
    commits = sorted({harness.short_commit(p) for p in runs["provenance"]})
    lines += ["", f"Commits: {', '.join(commits)}. Last run: {last['command']}, "
              f"{last['machine']}, " + ", ".join(f"{k} {v}" for k, v in last["versions"].items())]  # fmt: skip
    TABLE.write_text("\n".join(lines) + "\n")
    log(f"wrote {TABLE}")


def main(argv=None) -> int:
    parser = harness.part_parser(__doc__, "kang,panc8")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    if harness.ready_to_run(args):
        for dataset in args.datasets.split(","):
            adata, cache = prepare(dataset, args.seed), {}
            for method in args.methods.split(","):
                log(f"{dataset} seed {args.seed}: {method}")
                t0 = time.perf_counter()
                z = embed(method, adata, args.seed, cache)
                seconds = time.perf_counter() - t0
                row = {"dataset": dataset, "method": method, "seed": args.seed,
                       "seconds": seconds, **scores(adata, z, args.seed),
                       "provenance": harness.provenance(args.threads)}  # fmt: skip
                log("  " + ", ".join(f"{c} {row[c]:.3f}" for c in COLUMNS))
                harness.record_run(RUNS, row, KEY)
    write_table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
