"""Does the diffusion prior earn its place? The same model with simpler priors, scIB-scored.

For each dataset, mode (supervised, unsupervised), prior (diffusion, gaussian, mixture) and
seed, trains scARKIDS with ``prior=...`` and everything else at its defaults, and scores the
embedding with the harness of ``integration.py`` (scib-metrics 0.5, unscaled Totals, the same
2000 HVGs). Supervised runs also train on the labels with a seeded 20% hidden and report the
held-out accuracy and macro-F1 on those cells. ``kang_all`` is semi-supervised: its 8,911
unlabelled cells stay unlabelled, 20% of the labelled ones are hidden too, and everything is
scored on the labelled cells.

    python benchmarks/prior_ablation.py --datasets pbmc,cellbench --priors diffusion,gaussian,mixture --modes sup,unsup --seeds 0,1,2
    python benchmarks/prior_ablation.py --table

``--hidden 0.6,0.9`` hides those shares of the labelled cells instead of 20% in supervised
mode (recorded as modes ``sup60``, ``sup90``): does the prior matter more as labels get
scarce? ``--datasets kang_all --unlabelled 3000`` keeps a seeded 3,000 of kang_all's 8,911
unlabelled cells (dataset ``kang_all@3000u``; the labelled cells and the genes unchanged).

Each run is appended to ``benchmarks/results/prior_ablation/runs.jsonl`` (a rerun of the same
dataset / mode / prior / seed replaces its row), and ``benchmarks/results/prior_ablation.md``
is rebuilt from all runs: mean and sd over seeds per (dataset, mode, prior), and the
difference of each prior to ``diffusion`` over the seeds both have (mean and sd of the
paired differences). About a hundred trainings in all: run it in parts.

``--variants cw5,wide,...`` trains design variants of each prior (``VARIANTS``: a lower
classification weight, a wider and deeper noise network, the prior trained on the ELBO's
own gradient; these two are trained for the diffusion prior only); their rows are named
``prior[variant]`` and compared with ``diffusion[variant]``, and ``diffusion[variant]``
with plain ``diffusion``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from harness import (
    DATA_DIR,
    DATASETS,
    HIDDEN_FRACTION,
    N_LATENT,
    RESULTS,
    UNKNOWN,
    load_dataset,
    log,
    prediction_scores,
    provenance,
    read_runs,
    record_run,
    score,
    write_table,
)

ALL = {**DATASETS, "kang_all": "kang_ifnb_all.h5ad"}
UNLABELLED = "unlabeled"  # kang_all's cells without an author label
PRIORS = ("diffusion", "gaussian", "mixture")
MODES = ("sup", "unsup")
RUNS = RESULTS / "prior_ablation" / "runs.jsonl"
KEY = ("dataset", "mode", "prior", "seed")


#: design variants (``--variants``): (model keyword arguments, train keyword arguments);
#: a variant's rows are the prior's name with the variant in brackets, e.g. "diffusion[cw5]"
VARIANTS = {
    "cw5": ({}, {"classification_weight": 5.0}),
    "cw1": ({}, {"classification_weight": 1.0}),
    "wide": ({"noise_hidden_dim": 256, "noise_n_layers": 3}, {}),
    "elbo": ({"prior_training": "elbo"}, {}),
}
#: variants that change nothing but the diffusion prior (not trained for the others)
DIFFUSION_ONLY = {"wide", "elbo"}


def train(adata, labels_key: str | None, n_labels: int, prior: str, seed: int):
    from scarkids import SCARKIDS

    prior, _, variant = prior.partition("[")
    model_kwargs, train_kwargs = VARIANTS[variant.rstrip("]")] if variant else ({}, {})
    a = adata.copy()
    SCARKIDS.setup_anndata(
        a, batch_key="batch", labels_key=labels_key, layer="counts", unlabeled_category=UNKNOWN
    )
    model = SCARKIDS(
        a, n_latent=N_LATENT, n_labels=n_labels, seed=seed, prior=prior, **model_kwargs
    )
    model.train(seed=seed, progress_bar=False, **train_kwargs)
    return model, a


def keep_unlabelled(adata, n: int, seed: int):
    """``adata`` with a seeded random ``n`` of its unlabelled cells (all labelled cells kept;
    the genes, chosen on the whole dataset, unchanged)."""
    unlabelled = np.flatnonzero(adata.obs["cell_type"].astype(str).to_numpy() == UNLABELLED)
    if not 0 <= n <= unlabelled.size:
        raise SystemExit(f"--unlabelled must be between 0 and {unlabelled.size}, got {n}")
    drop = np.random.default_rng(seed).choice(unlabelled, unlabelled.size - n, replace=False)
    keep = np.ones(adata.n_obs, dtype=bool)
    keep[drop] = False
    return adata[keep].copy()


def recorded_mode(mode: str, hidden: float) -> str:
    """The mode a run is recorded under: ``unsup``; ``sup`` for a supervised run that hides
    the default 20% of the labelled cells, else ``sup<percent>`` (``sup90``)."""
    if mode == "unsup" or hidden == HIDDEN_FRACTION:
        return mode
    return f"sup{round(100 * hidden)}"


def run_one(
    adata, name: str, mode: str, prior: str, seed: int, hidden_fraction: float = HIDDEN_FRACTION
) -> dict:
    import torch

    truth = adata.obs["cell_type"].astype(str).to_numpy()
    labelled = truth != UNLABELLED
    k = len(np.unique(truth[labelled]))
    row = {"dataset": name, "mode": recorded_mode(mode, hidden_fraction), "prior": prior}
    row.update({"seed": seed, "hidden_fraction": hidden_fraction})
    row.update(provenance(torch.get_num_threads()))
    t = time.perf_counter()
    if mode == "unsup":
        model, a = train(adata, None, k, prior, seed)
        z = model.get_latent_representation(a)
    else:
        # the same seeded cells hidden as in integration.py; kang_all's unlabelled stay so
        hidden = np.zeros(adata.n_obs, dtype=bool)
        pool = np.flatnonzero(labelled)
        rng = np.random.default_rng(seed)
        hidden[rng.choice(pool, round(hidden_fraction * pool.size), replace=False)] = True
        b = adata.copy()
        b.obs["cell_type_masked"] = pd.Categorical(np.where(hidden | ~labelled, UNKNOWN, truth))
        model, a = train(b, "cell_type_masked", k, prior, seed)
        z = model.get_latent_representation(a)
        row.update(prediction_scores(truth[hidden], np.asarray(model.predict(a))[hidden]))
    row["train_s"] = time.perf_counter() - t
    ev = adata[labelled].copy()
    table = score(ev, {"emb": np.asarray(z)[labelled]}, seed)
    row.update({c: float(table.loc["emb", c]) for c in table.columns})
    return row


def record(row: dict) -> None:
    record_run(RUNS, row, KEY)


def _cell(values: pd.Series) -> str:
    v = values.dropna().astype(float)
    if v.empty:
        return "-"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def write_tables() -> Path:
    df = pd.DataFrame(read_runs(RUNS))
    for col in ("accuracy", "macro_f1"):
        if col not in df:
            df[col] = np.nan
    cols = ["Total", "Bio conservation", "Batch correction", "accuracy", "macro_f1", "train_s"]
    lines = [
        "# Prior ablation (`python benchmarks/prior_ablation.py`)",
        "",
        "Mean ± sd over seeds (n seeds); scIB Totals unscaled (scib-metrics 0.5), accuracy and "
        "macro-F1 on the seeded 20% of cells whose labels were hidden (supervised mode; "
        "mode supN: N% hidden). "
        "Δ Total: the prior's Total minus the diffusion prior's, paired by seed (mean ± sd); "
        "a design variant `prior[variant]` is compared with `diffusion[variant]`, and "
        "`diffusion[variant]` with plain `diffusion`.",
        "",
        "| dataset | mode | prior | n | " + " | ".join(cols) + " | Δ Total vs diffusion |",
        "|" + "---|" * (5 + len(cols)),
    ]
    order = {p: i for i, p in enumerate(PRIORS)}
    rank = lambda p: (order.get(p.partition("[")[0], 99), p)  # noqa: E731
    for (ds, mode), g in df.groupby(["dataset", "mode"], sort=True):
        totals = {p: h.set_index("seed")["Total"] for p, h in g.groupby("prior")}
        for prior in sorted(g["prior"].unique(), key=rank):
            h = g[g["prior"] == prior]
            delta = "-"
            # against diffusion with the same variant (a variant of diffusion: plain diffusion)
            variant = prior[prior.index("[") :] if "[" in prior else ""
            base = f"diffusion{variant}"
            if prior == base:
                base = "diffusion"
            if prior != base and base in totals:
                d = (h.set_index("seed")["Total"] - totals[base]).dropna()
                delta = _cell(d) + (f" (vs {base})" if base != "diffusion" else "")
            cells = " | ".join(_cell(h[c]) for c in cols)
            lines.append(f"| {ds} | {mode} | {prior} | {len(h)} | {cells} | {delta} |")
    return write_table(RESULTS / "prior_ablation.md", lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="kang,pbmc,cellbench,panc8,kang_all")
    parser.add_argument("--priors", default=",".join(PRIORS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--variants",
        help=f"design variants of every prior, comma-separated: {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--hidden",
        default=str(HIDDEN_FRACTION),
        help="supervised mode: shares of the labelled cells whose labels are hidden, "
        "comma-separated; a share other than 0.2 is recorded as mode sup<percent> (sup90)",
    )
    parser.add_argument(
        "--unlabelled",
        type=int,
        help="kang_all: keep a seeded N of its unlabelled cells (recorded as dataset "
        "kang_all@Nu): does the diffusion prior's lead follow the number of cells?",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="only rebuild the table")
    parser.add_argument(
        "--missing", action="store_true", help="skip the runs already in runs.jsonl"
    )
    args = parser.parse_args(argv)
    done = {tuple(r[k] for k in KEY) for r in read_runs(RUNS)} if args.missing else set()
    if not args.table:
        import torch

        torch.set_num_threads(args.threads)
        modes = []  # (mode, hidden share): one supervised run per share
        for mode in args.modes.split(","):
            shares = args.hidden.split(",") if mode == "sup" else [HIDDEN_FRACTION]
            modes += [(mode, float(h)) for h in shares]
        priors = args.priors.split(",")
        if args.variants:  # a noise-network variant exists for diffusion only
            priors = [
                f"{p}[{v}]"
                for p in priors
                for v in args.variants.split(",")
                if p == "diffusion" or v not in DIFFUSION_ONLY
            ]
        for name in args.datasets.split(","):
            if name not in ALL:
                parser.error(f"unknown dataset {name!r}; choose from {', '.join(ALL)}")
            path = DATA_DIR / ALL[name]
            if not path.exists():
                log(f"{path} not found: the shared datasets are needed; skipping {name}")
                continue
            if args.unlabelled is not None:
                name = f"{name}@{args.unlabelled}u"
            for seed in (int(s) for s in args.seeds.split(",")):
                adata = load_dataset(path, seed)
                if args.unlabelled is not None:
                    adata = keep_unlabelled(adata, args.unlabelled, seed)
                for mode, hidden in modes:
                    for prior in priors:
                        if (name, recorded_mode(mode, hidden), prior, seed) in done:
                            continue
                        log(f"{name} {recorded_mode(mode, hidden)} {prior} seed {seed} ...")
                        row = run_one(adata, name, mode, prior, seed, hidden)
                        record(row)
                        log(f"  Total {row['Total']:.3f} ({row['train_s']:.0f} s)")
    if RUNS.exists():
        print(write_tables().read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
