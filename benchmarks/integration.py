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
import os
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
DATASETS = {
    "kang": "kang_ifnb_labeled.h5ad",
    "pbmc": "pbmc_3chem_symphony.h5ad",
    "cellbench": "cellbench_5batch.h5ad",
    "panc8": "panc8_small_5tech.h5ad",
}
METHODS = "Unintegrated Harmony scVI scANVI scARKIDS-unsup scARKIDS-sup scARKIDS-sup+refine".split()
#: run only when named in --methods: unsupervised with twice the true number of clusters
EXTRA_METHODS = ["scARKIDS-unsup-2x"]
N_HVG, N_PCS, N_LATENT = 2000, 30, 10
HIDDEN_FRACTION, REFINE_STEPS = 0.2, 20
SCANVI_EPOCHS, SCANVI_SAMPLES_PER_LABEL = 20, 100  # scvi-tools tutorial recommendation
QUICK_EPOCHS = 20
UNKNOWN = "Unknown"
SCORES = ["Bio conservation", "Batch correction", "Total"]
PACKAGES = ("scarkids", "torch", "scvi-tools", "scib-metrics", "harmonypy", "scanpy", "anndata")
BAR_HEADER = (
    "dataset|unsup − scVI (Total)|unsup − Harmony (Total)|sup − scANVI (Total)|"
    "refine − sup (Total)|sup − scANVI (held-out accuracy)"
).split("|")


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


# ----------------------------------------------------------------------------- data
def dataset_arguments(parser) -> None:
    """``--dataset``, ``--threads`` and ``--seed``, as the single-dataset scripts take them."""
    parser.add_argument("--dataset", default="kang", choices=sorted(DATASETS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)


def open_dataset(args):
    """The preprocessed dataset named by :func:`dataset_arguments` (torch's threads set),
    or None, after saying why, where the shared data are absent."""
    path = DATA_DIR / DATASETS[args.dataset]
    if not path.exists():
        print(f"{path} not found: the shared datasets are needed; nothing to do")
        return None
    import torch

    torch.set_num_threads(args.threads)
    return load_dataset(path, args.seed)


def load_dataset(path: Path, seed: int):
    """Counts rounded to integers in ``layers['counts']``, the 2000 HVGs (all genes when there
    are fewer), log-CP10k in X and a 30-PC PCA in ``obsm['X_pca']``."""
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    adata = ad.read_h5ad(path)
    X = sp.csr_matrix(adata.X, dtype=np.float32)
    X.data = np.round(X.data)  # panc8: celseq, celseq2 and fluidigmc1 are non-integer
    X.eliminate_zeros()
    adata = ad.AnnData(X=X, obs=adata.obs[["batch", "cell_type"]].copy(), var=adata.var[[]])
    for col in ("batch", "cell_type"):
        adata.obs[col] = adata.obs[col].astype(str).astype("category")
    adata.layers["counts"] = adata.X.copy()
    if adata.n_vars > N_HVG:
        sc.pp.highly_variable_genes(
            adata, flavor="seurat_v3", n_top_genes=N_HVG, batch_key="batch", layer="counts"
        )
        adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=N_PCS, mask_var=None, random_state=seed)
    return adata


# -------------------------------------------------------------------------- methods
def run_harmony(adata, seed: int) -> np.ndarray:
    import harmonypy

    ho = harmonypy.run_harmony(
        adata.obsm["X_pca"], adata.obs, "batch", random_state=seed, verbose=False, ncores=2
    )
    z = np.asarray(ho.Z_corr)
    return z if z.shape[0] == adata.n_obs else z.T


def train_scvi(adata, seed: int, quick: bool):
    import scvi

    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    model = scvi.model.SCVI(adata)  # defaults: n_latent=10, ZINB, 1 layer of 128
    model.train(max_epochs=QUICK_EPOCHS if quick else None, enable_progress_bar=False)
    return model


def train_scanvi(scvi_model, labels_key: str, seed: int, quick: bool):
    import scvi

    scvi.settings.seed = seed
    model = scvi.model.SCANVI.from_scvi_model(
        scvi_model, unlabeled_category=UNKNOWN, labels_key=labels_key
    )
    model.train(
        max_epochs=min(SCANVI_EPOCHS, QUICK_EPOCHS) if quick else SCANVI_EPOCHS,
        n_samples_per_label=SCANVI_SAMPLES_PER_LABEL,
        enable_progress_bar=False,
    )
    return model


def train_scarkids(adata, labels_key: str | None, n_labels: int, seed: int, quick: bool):
    from scarkids import SCARKIDS

    a = adata.copy()  # the setup lives in a.uns: one copy per model
    SCARKIDS.setup_anndata(
        a, batch_key="batch", labels_key=labels_key, layer="counts", unlabeled_category=UNKNOWN
    )
    model = SCARKIDS(a, n_latent=N_LATENT, n_labels=n_labels, seed=seed)
    model.train(max_epochs=QUICK_EPOCHS if quick else None, seed=seed, progress_bar=False)
    return model, a


def n_epochs(history) -> int:
    """Epochs actually run (early stopping may end a run before its maximum)."""
    return max((len(v) for v in dict(history).values()), default=0)


def prediction_scores(truth, pred) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    truth, pred = np.asarray(truth, dtype=str), np.asarray(pred, dtype=str)
    f1 = f1_score(truth, pred, labels=np.unique(truth), average="macro", zero_division=0)
    return {"accuracy": float(accuracy_score(truth, pred)), "macro_f1": float(f1)}


def score(adata, embeddings: dict[str, np.ndarray], seed: int) -> pd.DataFrame:
    from scarkids import evaluate

    ev = adata.copy()
    for key, z in embeddings.items():
        ev.obsm[key] = np.asarray(z, dtype=np.float32)
    keys = list(embeddings)
    return evaluate(ev, embedding_key=keys, labels_key="cell_type", seed=seed, n_jobs=2)


def hide_labels(adata, seed: int) -> np.ndarray:
    """Hide the labels of a seeded ``HIDDEN_FRACTION`` of the cells: ``obs['cell_type_masked']``
    is ``cell_type`` with those cells set to ``UNKNOWN``; returns their boolean mask."""
    n = adata.n_obs
    hidden = np.zeros(n, dtype=bool)
    hidden[np.random.default_rng(seed).choice(n, round(HIDDEN_FRACTION * n), replace=False)] = True
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    adata.obs["cell_type_masked"] = pd.Categorical(np.where(hidden, UNKNOWN, truth))
    return hidden


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
def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "n/a"
    return out


def git_state() -> str:
    """Commit of the repository, plus the package files that differ from it."""
    import subprocess

    def git(*cmd: str) -> str:
        run = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True)
        return run.stdout.strip() if run.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    # "XY path" lines; git() strips the output, so the first line may lose its leading space
    status = git("status", "--porcelain", "-uno", "src").splitlines()
    changed = [line.split(maxsplit=1)[1] for line in status]
    return commit + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{n} CPU cores ({cpu}), torch threads 2, no GPU used"


def part_parser(doc: str, datasets: str) -> argparse.ArgumentParser:
    """The options of a benchmark that runs in parts: ``--datasets``, ``--seed``,
    ``--threads`` and ``--table`` (only rebuild the table from the recorded runs)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--datasets", default=datasets)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="only rebuild the table")
    return parser


def ready_to_run(args) -> bool:
    """Whether to train: not with ``--table``, nor without the shared datasets (said so);
    sets torch's CPU threads."""
    if args.table:
        return False
    if not DATA_DIR.exists():
        log(f"{DATA_DIR} not found: the shared datasets are needed; nothing to do")
        return False
    import torch

    torch.set_num_threads(args.threads)
    return True


def read_runs(path: Path) -> list[dict]:
    """The run records of a JSON-lines results file (none when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_run(path: Path, row: dict, key: tuple[str, ...]) -> None:
    """Append ``row`` to the JSON-lines file ``path``; an earlier row with the same ``key``
    fields is replaced (so a benchmark can be rerun in parts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [r for r in read_runs(path) if tuple(r[k] for k in key) != tuple(row[k] for k in key)]
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, row]))


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


def fmt(v, digits: int = 3) -> str:
    return "—" if pd.isna(v) else f"{v:.{digits}f}"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


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
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
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
