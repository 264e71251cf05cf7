"""Integration benchmark: scARKIDS against unintegrated PCA, Harmony, scVI and scANVI.

For each real dataset in ``../shared/data`` (relative to the repository) every method embeds the
same 2000 HVGs with the same seed, and all embeddings are scored with
:func:`scarkids.evaluate` (scIB metrics, unscaled). scANVI and scARKIDS-sup are also trained
with a seeded random 20% of the labels hidden and scored on exactly those cells (accuracy,
macro-F1, scIB metrics).

Every (dataset, seed, method, part) is a row of ``<out>/integration/runs.jsonl`` (part: all
cells, or the held-out cells), with every metric, the wall time, the epochs run, the
dataset's size and the run's commit, command line, versions and machine; a rerun replaces
its rows, so runs on some datasets, methods or seeds merge with the earlier ones. From all
rows, ``<out>/integration.md`` (the three scores per dataset and seed, the held-out tables,
the quality bar, the runs), ``<out>/integration/metrics.md`` (every metric) and
``<out>/integration/seeds.md`` (the Total per seed, its mean and sd, for datasets run with
several seeds) are rebuilt; ``--table`` only rebuilds them.

Usage: ``python benchmarks/integration.py [--datasets kang,pbmc,cellbench,panc8]
[--methods ...] [--quick] [--seed 0] [--out benchmarks/results] [--table]`` (see
benchmarks/README.md).
"""

from __future__ import annotations

import argparse
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
    hide_labels,
    load_dataset,
    log,
    md_table,
    n_epochs,
    prediction_scores,
    provenance,
    read_runs,
    record_run,
    run_harmony,
    runs_file,
    runs_section,
    score,
    short_commit,
    table_option,
    train_scanvi,
    train_scarkids,
    train_scvi,
    write_table,
)

METHODS = "Unintegrated Harmony scVI scANVI scARKIDS-unsup scARKIDS-sup scARKIDS-sup+refine".split()
#: run only when named in --methods: unsupervised with twice the true number of clusters
EXTRA_METHODS = ["scARKIDS-unsup-2x"]
KEY = ("dataset", "seed", "method", "part")
ALL, HELDOUT = "all cells", "held-out"
#: the paired difference of the seed table (integration/seeds.md): A − B per seed
SEED_COMPARE = ("scARKIDS-sup", "scANVI")
BAR_HEADER = (
    "dataset|seed|unsup − scVI (Total)|unsup − Harmony (Total)|sup − scANVI (Total)|"
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


# -------------------------------------------------------------------------- records
def _number(v):
    """A JSON-safe float: None for NaN."""
    return None if pd.isna(v) else float(v)


def dataset_rows(name, adata, table, heldout, epochs, n_hidden, args, prov) -> list[dict]:
    """The rows of one dataset's run: one per method and part (all cells, held-out)."""
    facts = dict(
        n_obs=adata.n_obs,
        n_vars=adata.n_vars,
        n_batches=int(adata.obs["batch"].nunique()),
        n_labels=int(adata.obs["cell_type"].nunique()),
        n_hidden=n_hidden,
    )
    common = dict(dataset=name, seed=args.seed, quick=args.quick, methods=args.methods)
    rows = []
    for part, tab in ((ALL, table), (HELDOUT, heldout)):
        for method, r in tab.iterrows():
            scores = {c: _number(v) for c, v in r.items() if c != "time_s"}
            rows.append(
                dict(common, method=method, part=part, scores=scores, time_s=_number(r["time_s"]),
                     epochs=epochs.get(method) if part == ALL else None, **facts, **prov)
            )  # fmt: skip
    return rows


# -------------------------------------------------------------------------- tables
def _ordered(rows: list[dict]) -> list[dict]:
    order = {m: i for i, m in enumerate(METHODS + EXTRA_METHODS)}
    return sorted(rows, key=lambda r: order.get(r["method"], 99))


def _groups(rows: list[dict]) -> list[tuple[str, int, list[dict]]]:
    """(dataset, seed, its rows) in the order of DATASETS, then by seed."""
    names = [d for d in DATASETS if any(r["dataset"] == d for r in rows)]
    names += sorted({r["dataset"] for r in rows} - set(names))
    out = []
    for name in names:
        for seed in sorted({r["seed"] for r in rows if r["dataset"] == name}):
            out.append((name, seed, [r for r in rows if (r["dataset"], r["seed"]) == (name, seed)]))
    return out


def _commit(r: dict) -> str:
    return short_commit(r) + (" **QUICK**" if r.get("quick") else "")


def _bar(name: str, seed: int, rows: list[dict]) -> list[str]:
    """The quality-bar differences of one (dataset, seed)."""
    tot = {r["method"]: r["scores"].get("Total") for r in rows if r["part"] == ALL}
    acc = {r["method"]: r["scores"].get("accuracy") for r in rows if r["part"] == HELDOUT}

    def diff(a, b, s=tot):
        return fmt(s[a] - s[b]) if s.get(a) is not None and s.get(b) is not None else "—"

    pairs = [("scARKIDS-unsup", "scVI"), ("scARKIDS-unsup", "Harmony")]
    pairs += [("scARKIDS-sup", "scANVI"), ("scARKIDS-sup+refine", "scARKIDS-sup")]
    return [name, str(seed), *(diff(a, b) for a, b in pairs), diff("scARKIDS-sup", "scANVI", acc)]


def summary_lines(rows: list[dict]) -> list[str]:
    """integration.md: the three scores, the held-out table and the quality bar per dataset
    and seed, then the runs behind the rows."""
    lines = [
        "# Integration benchmark (`python benchmarks/integration.py`)",
        "",
        "scIB metrics (`scarkids.evaluate`, unscaled: Total = 0.6 × Bio conservation + 0.4 × "
        "Batch correction) on the same 2000 HVGs for every method. Times: wall seconds on the "
        "machine of each row's run (see the runs at the bottom); every metric in "
        "`integration/metrics.md`, the seed spread in `integration/seeds.md`.",
        "",
    ]
    bars = []
    for name, seed, group in _groups(rows):
        facts = group[-1]
        lines += [
            f"## {name}, seed {seed}",
            "",
            f"{facts['n_obs']} cells, {facts['n_vars']} genes, {facts['n_batches']} batches, "
            f"{facts['n_labels']} cell types.",
            "",
        ]
        body = [
            [r["method"], *(fmt(r["scores"].get(c)) for c in SCORES), fmt(r["time_s"], 1),
             str(r["epochs"] or "—"), _commit(r)]
            for r in _ordered([r for r in group if r["part"] == ALL])
        ]  # fmt: skip
        lines += md_table(["method", *SCORES, "time s", "epochs", "commit"], body) + [""]
        held = _ordered([r for r in group if r["part"] == HELDOUT])
        if held:
            cols = [c for c in ("accuracy", "macro_f1", *SCORES) if c in held[0]["scores"]]
            lines += [
                f"Held-out labels ({facts.get('n_hidden', '?')} cells, {HIDDEN_FRACTION:.0%} "
                "hidden at random; scIB on those cells only):",
                "",
            ]
            body = [
                [r["method"], *(fmt(r["scores"].get(c)) for c in cols), fmt(r["time_s"], 1),
                 _commit(r)]
                for r in held
            ]  # fmt: skip
            lines += md_table(["method", *cols, "time s", "commit"], body) + [""]
        bars.append(_bar(name, seed, group))
    if bars:
        lines += ["## Quality bar (differences; >= 0 means the bar is met)", ""]
        lines += md_table(BAR_HEADER, bars) + [""]
    return lines + ["## Runs", "", *runs_section(rows)]


def metrics_lines(rows: list[dict]) -> list[str]:
    """integration/metrics.md: every scIB metric per dataset, seed and method."""
    lines = ["# Integration benchmark: every metric (`python benchmarks/integration.py`)", ""]
    lines += ["Unscaled scib-metrics scores on all cells; the runs are listed in integration.md."]
    for name, seed, group in _groups(rows):
        scored = _ordered([r for r in group if r["part"] == ALL])
        if not scored:
            continue
        cols = list(scored[0]["scores"])
        body = [[r["method"], *(fmt(r["scores"].get(c)) for c in cols)] for r in scored]
        lines += ["", f"## {name}, seed {seed}", "", *md_table(["method", *cols], body)]
    return lines


def seeds_lines(rows: list[dict]) -> list[str]:
    """integration/seeds.md: the scIB Total per seed, its mean and sd, and the paired
    difference :data:`SEED_COMPARE`, for each dataset run with several seeds."""
    lines = ["# Integration benchmark: seed-to-seed spread (`python benchmarks/integration.py`)"]
    lines += ["", "scIB Total (scib-metrics, unscaled) per seed; sd over seeds (ddof 1)."]
    order = {m: i for i, m in enumerate(METHODS + EXTRA_METHODS)}
    for name in dict.fromkeys(name for name, _, _ in _groups(rows)):
        got = [r for r in rows if r["dataset"] == name and r["part"] == ALL]
        seeds = sorted({r["seed"] for r in got})
        if len(seeds) < 2:
            continue
        totals = pd.DataFrame(
            {
                s: {r["method"]: r["scores"].get("Total") for r in got if r["seed"] == s}
                for s in seeds
            }
        ).astype(float)
        totals = totals.loc[sorted(totals.index, key=lambda m: (order.get(m, 99), m))]
        lines += ["", f"## {name}", "", *spread_table(totals, SEED_COMPARE)]
    return lines


def spread_table(totals: pd.DataFrame, compare: tuple[str, str]) -> list[str]:
    """Methods x seeds of Totals as a table with each row's mean and sd, and the paired
    difference of the two methods in ``compare``."""

    def cells(v: pd.Series, sign: str = "") -> list[str]:
        values = [f"{x:{sign}.4f}" if pd.notna(x) else "-" for x in v]
        sd = f"{v.std():.4f}" if v.notna().sum() > 1 else "-"
        return [*values, f"{v.mean():{sign}.4f}", sd]

    head = ["method", *[f"seed {s}" for s in totals.columns], "mean", "sd"]
    body = [[str(m), *cells(v)] for m, v in totals.iterrows()]
    a, b = compare
    if a in totals.index and b in totals.index:
        body.append([f"{a} − {b}", *cells(totals.loc[a] - totals.loc[b], "+")])
    return md_table(head, body)


def write_tables(out: Path) -> Path:
    """Rebuild integration.md, integration/metrics.md and integration/seeds.md from every
    row of ``out/integration/runs.jsonl``."""
    rows = read_runs(runs_file("integration", out))
    write_table(out / "integration" / "metrics.md", metrics_lines(rows))
    write_table(out / "integration" / "seeds.md", seeds_lines(rows))
    return write_table(out / "integration.md", summary_lines(rows))


# ---------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs (smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS, help="the results folder")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    table_option(p)
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
    if args.table:
        log(f"tables: {write_tables(args.out)}")
        return 0
    if not args.data_dir.is_dir():
        print(f"data folder {args.data_dir} not found: nothing to benchmark")
        return 0
    import scib_metrics  # noqa: F401  (imported first so that its loggers can be quietened)
    import scvi
    import torch
    from threadpoolctl import threadpool_limits

    import scarkids.model.scarkids  # noqa: F401  (loaded now, so that `commit` names the code that runs)

    prov = provenance(threads=2)

    torch.set_num_threads(2)
    scvi.settings.verbosity = logging.WARNING
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi", "scib_metrics"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    runs = runs_file("integration", args.out)
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
            prov["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            for row in dataset_rows(name, adata, table, heldout, epochs, n_hidden, args, prov):
                record_run(runs, row, KEY)
            log(f"{name}: written\n" + table[SCORES + ["time_s"]].round(3).to_string())
            if len(heldout):
                log(f"{name} held-out:\n" + heldout.round(3).to_string())
    log(f"summary: {write_tables(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
