"""Integration benchmark: scARKIDS against unintegrated PCA, Harmony, scVI and scANVI.

For each real dataset in ``../shared/data`` (relative to the repository) every method embeds the
same 2000 HVGs with the same seed, all embeddings are scored with :func:`scarkids.evaluate`
(scIB metrics, unscaled), and the results go to ``benchmarks/results/``:

* ``<dataset>.tsv``: every metric per method plus ``time_s`` (wall time);
* ``<dataset>_heldout.tsv``: scANVI and scARKIDS-sup trained with a seeded random 20% of the
  labels hidden, scored on exactly those cells (accuracy, macro-F1, scIB metrics);
* ``<dataset>.json``: per run: command, code commit, methods, epochs, machine, versions;
* ``summary.md``: rebuilt from every dataset in the folder, so a run on some datasets (or some
  methods) merges with earlier ones instead of replacing them.

Usage: ``python benchmarks/integration.py [--datasets kang,pbmc,cellbench,panc8]
[--methods ...] [--quick] [--seed 0] [--out benchmarks/results]`` (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from harness import (
    DATA_DIR,
    DATASETS,
    HIDDEN_FRACTION,
    QUICK_EPOCHS,
    REFINE_STEPS,
    RESULTS,
    SCORES,
    fmt,
    git_state,
    hide_labels,
    load_dataset,
    log,
    machine,
    md_table,
    n_epochs,
    prediction_scores,
    run_harmony,
    score,
    train_scanvi,
    train_scarkids,
    train_scvi,
    versions,
)

METHODS = "Unintegrated Harmony scVI scANVI scARKIDS-unsup scARKIDS-sup scARKIDS-sup+refine".split()
#: run only when named in --methods: unsupervised with twice the true number of clusters
EXTRA_METHODS = ["scARKIDS-unsup-2x"]
BAR_HEADER = (
    "dataset|unsup − scVI (Total)|unsup − Harmony (Total)|sup − scANVI (Total)|"
    "refine − sup (Total)|sup − scANVI (held-out accuracy)"
).split("|")


# ------------------------------------------------------------------------ benchmark
def benchmark_dataset(adata, methods: list[str], seed: int, quick: bool):
    """Returns (metrics table, held-out table, epochs run per model)."""
    times: dict[str, float] = {"Unintegrated": 0.0}  # the PCA is shared preprocessing

    def timed(name: str, fn, *args, **kwargs):
        log(f"  {name} ...")
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        times[name] = time.perf_counter() - t0
        log(f"  {name} done in {times[name]:.1f} s")
        return out

    emb: dict[str, np.ndarray] = {"Unintegrated": adata.obsm["X_pca"]}
    epochs: dict[str, int] = {}
    k = adata.obs["cell_type"].nunique()
    if "Harmony" in methods:
        emb["Harmony"] = timed("Harmony", run_harmony, adata, seed)

    # Held-out labels: the same seeded random cells are hidden from scANVI and scARKIDS-sup.
    hidden = hide_labels(adata, seed)
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    held: dict[str, dict] = {}
    held_emb: dict[str, np.ndarray] = {}

    if {"scVI", "scANVI"} & set(methods):
        scvi_model = timed("scVI", train_scvi, adata.copy(), seed, quick)
        emb["scVI"] = scvi_model.get_latent_representation()
        epochs["scVI"] = n_epochs(scvi_model.history)
        if "scANVI" in methods:
            m = timed("scANVI", train_scanvi, scvi_model, "cell_type", seed, quick)
            emb["scANVI"], epochs["scANVI"] = m.get_latent_representation(), n_epochs(m.history)
            times["scANVI"] += times["scVI"]  # scANVI's cost includes its scVI pretraining
            # the scVI pretraining never sees labels, so the held-out run can share it
            m = timed("scANVI heldout", train_scanvi, scvi_model, "cell_type_masked", seed, quick)
            held_emb["scANVI"] = m.get_latent_representation()
            held["scANVI"] = prediction_scores(truth[hidden], m.predict()[hidden])
            held["scANVI"]["time_s"] = times["scANVI heldout"] + times["scVI"]
        del scvi_model
    if "scARKIDS-unsup" in methods:
        m, a = timed("scARKIDS-unsup", train_scarkids, adata, None, k, seed, quick)
        emb["scARKIDS-unsup"] = m.get_latent_representation(a)
        epochs["scARKIDS-unsup"] = n_epochs(m.history)
    if "scARKIDS-unsup-2x" in methods:  # twice the clusters (not in the default run)
        m, a = timed("scARKIDS-unsup-2x", train_scarkids, adata, None, 2 * k, seed, quick)
        emb["scARKIDS-unsup-2x"] = m.get_latent_representation(a)
        epochs["scARKIDS-unsup-2x"] = n_epochs(m.history)
    if {"scARKIDS-sup", "scARKIDS-sup+refine"} & set(methods):
        m, a = timed("scARKIDS-sup", train_scarkids, adata, "cell_type", k, seed, quick)
        emb["scARKIDS-sup"] = m.get_latent_representation(a)
        epochs["scARKIDS-sup"] = n_epochs(m.history)
        if "scARKIDS-sup+refine" in methods:
            emb["scARKIDS-sup+refine"] = timed(
                "scARKIDS-sup+refine", m.refine_latent, a, n_steps=REFINE_STEPS, seed=seed
            )
            times["scARKIDS-sup+refine"] += times["scARKIDS-sup"]  # cost includes training
        name = "scARKIDS-sup heldout"
        m, a = timed(name, train_scarkids, adata, "cell_type_masked", k, seed, quick)
        held_emb["scARKIDS-sup"] = m.get_latent_representation(a)
        held["scARKIDS-sup"] = prediction_scores(truth[hidden], m.predict(a)[hidden])
        held["scARKIDS-sup"]["time_s"] = times[name]
        if "scARKIDS-sup+refine" in methods:
            # refinement conditions on the model's own predictions: no hidden label is used
            held_emb["scARKIDS-sup+refine"] = timed(
                "refine heldout", m.refine_latent, a, n_steps=REFINE_STEPS, seed=seed
            )
            t_refine = times[name] + times["refine heldout"]  # predictions are unchanged
            held["scARKIDS-sup+refine"] = dict(accuracy=np.nan, macro_f1=np.nan, time_s=t_refine)
    emb = {key: z for key, z in emb.items() if key in methods}

    log("  scoring ...")
    table = score(adata, emb, seed)
    table["time_s"] = [times[key] for key in table.index]
    heldout = pd.DataFrame.from_dict(held, orient="index")
    heldout.index.name = "Embedding"
    if held:
        try:
            sub = {key: np.asarray(z)[hidden] for key, z in held_emb.items()}
            heldout = heldout.join(score(adata[hidden], sub, seed)[SCORES])
        except Exception as exc:  # tiny held-out sets can break a metric
            log(f"  scIB on the held-out cells failed ({exc!r}); reporting accuracy only")
    return table, heldout, epochs, int(hidden.sum())


# -------------------------------------------------------------------------- output
def merge_tsv(path: Path, new: pd.DataFrame) -> None:
    """Write ``new``; earlier rows of other methods in ``path`` are kept (merge by method)."""
    if path.exists():
        old = pd.read_csv(path, sep="\t", index_col=0)
        new = pd.concat([old.drop(index=new.index, errors="ignore"), new])
    new = new.loc[
        sorted(
            new.index,
            key=lambda m: (
                (METHODS + EXTRA_METHODS).index(m) if m in METHODS + EXTRA_METHODS else 99
            ),
        )
    ]
    new.index.name = "Embedding"
    new.to_csv(path, sep="\t", float_format="%.6g")


def write_summary(out: Path) -> Path:
    order = {m: i for i, m in enumerate(METHODS + EXTRA_METHODS)}
    lines = ["# Integration benchmark: summary", ""]
    bars = []
    for name in DATASETS:
        tsv, meta_path = out / f"{name}.tsv", out / f"{name}.json"
        if not (tsv.exists() and meta_path.exists()):
            continue
        meta = json.loads(meta_path.read_text())
        tab = pd.read_csv(tsv, sep="\t", index_col=0)
        tab = tab.loc[sorted(tab.index, key=lambda m: order.get(m, 99))]
        lines += [
            f"## {name}",
            "",
            f"{meta['n_obs']} cells, {meta['n_vars']} genes, {meta['n_batches']} batches, "
            f"{meta['n_labels']} cell types. Runs merged into this table (latest last):",
            "",
        ]
        for run in meta.get("runs", [meta]):  # files of older runs hold one run, unnested
            epochs = ", ".join(f"{m} {e}" for m, e in run.get("epochs", {}).items()) or "none"
            quick = " **QUICK (smoke test)**" if run.get("quick") else ""
            methods = ", ".join(run.get("methods", [])) or "see the table"
            lines.append(
                f"- {run['date']}, code {run.get('code', '?')}{quick}: `{run['command']}` "
                f"({methods}; epochs run: {epochs})"
            )
        lines.append("")
        rows = [[m, *(fmt(r[c]) for c in SCORES), fmt(r["time_s"], 1)] for m, r in tab.iterrows()]
        lines += md_table(["method", *SCORES, "time s"], rows) + [""]
        held_path = out / f"{name}_heldout.tsv"
        held = pd.read_csv(held_path, sep="\t", index_col=0) if held_path.exists() else None
        if held is not None and len(held):
            lines += [
                f"Held-out labels ({meta.get('n_hidden', '?')} cells, "
                f"{HIDDEN_FRACTION:.0%} hidden at random; scIB on those cells only):",
                "",
            ]
            cols = [c for c in ("accuracy", "macro_f1", *SCORES) if c in held.columns]
            rows = [
                [m, *(fmt(r[c]) for c in cols), fmt(r["time_s"], 1)] for m, r in held.iterrows()
            ]
            lines += md_table(["method", *cols, "time s"], rows) + [""]
        tot = tab["Total"]

        def diff(a, b, s=tot):
            return fmt(s[a] - s[b]) if a in s.index and b in s.index else "—"

        acc = held["accuracy"] if held is not None and "accuracy" in held else pd.Series()
        pairs = [("scARKIDS-unsup", "scVI"), ("scARKIDS-unsup", "Harmony")]
        pairs += [("scARKIDS-sup", "scANVI"), ("scARKIDS-sup+refine", "scARKIDS-sup")]
        bars.append([name, *(diff(a, b) for a, b in pairs), diff("scARKIDS-sup", "scANVI", acc)])
    if bars:
        lines += ["## Quality bar (differences; >= 0 means the bar is met)", ""]
        lines += md_table(BAR_HEADER, bars) + [""]
    lines += [
        f"Machine: {machine()}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        "",
    ]
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs (smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = p.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for given, known in ((args.datasets, DATASETS), (args.methods, METHODS + EXTRA_METHODS)):
        if bad := [x for x in given if x not in known]:
            p.error(f"unknown {bad}; choose from {', '.join(known)}")
    if "Unintegrated" not in args.methods:  # the baseline is free and anchors PCR comparison
        args.methods.insert(0, "Unintegrated")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.data_dir.is_dir():
        print(f"data folder {args.data_dir} not found: nothing to benchmark")
        return 0
    import scib_metrics  # noqa: F401  (imported first so that its loggers can be quietened)
    import scvi
    import torch
    from threadpoolctl import threadpool_limits

    import scarkids.model.base  # noqa: F401  (loaded now, so that `code` names the code that runs)

    code = git_state()

    torch.set_num_threads(2)
    scvi.settings.verbosity = logging.WARNING
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi", "scib_metrics"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/integration.py " + " ".join(argv if argv else sys.argv[1:])
    with threadpool_limits(2):
        for name in args.datasets:
            path = args.data_dir / DATASETS[name]
            if not path.exists():
                log(f"{name}: {path} not found, skipped")
                continue
            log(f"{name}: loading {path.name}")
            adata = load_dataset(path, args.seed)
            table, heldout, epochs, n_hidden = benchmark_dataset(
                adata, args.methods, args.seed, args.quick
            )
            merge_tsv(args.out / f"{name}.tsv", table)
            if len(heldout):
                merge_tsv(args.out / f"{name}_heldout.tsv", heldout)
            meta_path = args.out / f"{name}.json"
            old = json.loads(meta_path.read_text()) if meta_path.exists() else {}
            run = dict(
                date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                code=code,
                command=command.strip(),
                quick=args.quick,
                seed=args.seed,
                methods=args.methods,
                epochs=epochs,
                machine=machine(),
                versions=versions(),
            )
            meta = dict(
                n_obs=adata.n_obs,
                n_vars=adata.n_vars,
                n_batches=int(adata.obs["batch"].nunique()),
                n_labels=int(adata.obs["cell_type"].nunique()),
                n_hidden=n_hidden,
                runs=[*old.get("runs", []), run],
            )
            meta_path.write_text(json.dumps(meta, indent=2) + "\n")
            log(f"{name}: written\n" + table[SCORES + ["time_s"]].round(3).to_string())
            if len(heldout):
                log(f"{name} held-out:\n" + heldout.round(3).to_string())
    log(f"summary: {write_summary(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
