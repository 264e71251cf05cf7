"""What the benchmark scripts share: the datasets and their preprocessing, the peers at their
documented settings, scARKIDS' training, the scores, provenance (commit, command line,
versions, machine) and the ``runs.jsonl`` records.

Scripts in this folder import it as ``import harness`` or ``from harness import ...`` (Python
puts a script's own folder on ``sys.path``), never through a path hack.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
DATASETS = {
    "kang": "kang_ifnb_labeled.h5ad",
    "pbmc": "pbmc_3chem_symphony.h5ad",
    "cellbench": "cellbench_5batch.h5ad",
    "panc8": "panc8_small_5tech.h5ad",
}
PACKAGES = ("scarkids", "torch", "scvi-tools", "scib-metrics", "harmonypy", "scanpy", "anndata")
N_HVG, N_PCS, N_LATENT = 2000, 30, 10
HIDDEN_FRACTION, REFINE_STEPS = 0.2, 20
QUICK_EPOCHS = 20
UNKNOWN = "Unknown"
SCORES = ["Bio conservation", "Batch correction", "Total"]

#: scArches' recommended scVI architecture for reference mapping (scvi-tools' scArches
#: tutorial): covariates into the encoder, layer norm instead of batch norm
SCARCHES_SCVI = {
    "use_layer_norm": "both",
    "use_batch_norm": "none",
    "encode_covariates": True,
    "dropout_rate": 0.2,
    "n_layers": 2,
}
#: scANVI's epochs and labelled cells per minibatch label (scvi-tools tutorial
#: recommendation), and the query's epochs in scArches mapping
SCANVI_EPOCHS, SCANVI_SAMPLES_PER_LABEL, SCANVI_QUERY_EPOCHS = 20, 100, 100


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


# ----------------------------------------------------------------------------- data
def data_or_skip() -> bool:
    """Whether ``../shared/data`` is there; says so when it is not."""
    if DATA_DIR.exists():
        return True
    log(f"{DATA_DIR} not found: the shared datasets are needed; nothing to do")
    return False


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


def load_dataset(path: Path, seed: int, extra_obs: tuple[str, ...] = ()):
    """Counts rounded to integers in ``layers['counts']``, the 2000 HVGs (all genes when there
    are fewer), log-CP10k in X and a 30-PC PCA in ``obsm['X_pca']``; ``obs`` keeps ``batch``,
    ``cell_type`` and the columns of ``extra_obs``."""
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    adata = ad.read_h5ad(path)
    X = sp.csr_matrix(adata.X, dtype=np.float32)
    X.data = np.round(X.data)  # panc8: celseq, celseq2 and fluidigmc1 are non-integer
    X.eliminate_zeros()
    adata = ad.AnnData(
        X=X, obs=adata.obs[["batch", "cell_type", *extra_obs]].copy(), var=adata.var[[]]
    )
    for col in ("batch", "cell_type", *extra_obs):
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


def hide_labels(adata, seed: int) -> np.ndarray:
    """Hide the labels of a seeded ``HIDDEN_FRACTION`` of the cells: ``obs['cell_type_masked']``
    is ``cell_type`` with those cells set to ``UNKNOWN``; returns their boolean mask."""
    n = adata.n_obs
    hidden = np.zeros(n, dtype=bool)
    hidden[np.random.default_rng(seed).choice(n, round(HIDDEN_FRACTION * n), replace=False)] = True
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    adata.obs["cell_type_masked"] = pd.Categorical(np.where(hidden, UNKNOWN, truth))
    return hidden


# ---------------------------------------------------------------------- peers
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


def scanvi_mapping(
    ref,
    query,
    *,
    seed: int,
    labels_key: str = "cell_type",
    batch_key: str = "batch",
    epochs: int | None = None,
):
    """scANVI + scArches label transfer at scvi-tools' documented settings for mapping.

    Reference: scVI with :data:`SCARCHES_SCVI` (default epochs), ``SCANVI.from_scvi_model``
    trained :data:`SCANVI_EPOCHS` epochs with ``n_samples_per_label=100``. Query:
    ``prepare_query_anndata`` + ``load_query_data`` (new batches), trained
    :data:`SCANVI_QUERY_EPOCHS` epochs with ``weight_decay=0`` (the tutorial's recipe).

    ``ref`` and ``query`` hold raw counts in ``X`` over the same genes. ``epochs`` (a smoke
    test's budget; None: the settings above) trains scVI that many epochs, scANVI a tenth of
    them (at least 2) and the query a quarter (at least 5). Returns the query's soft
    predictions (``pandas.DataFrame``, cells x labels) and the query latent.
    """
    import scvi

    scvi.settings.seed = seed
    ref = ref.copy()
    scvi.model.SCVI.setup_anndata(ref, batch_key=batch_key, labels_key=labels_key)
    vae = scvi.model.SCVI(ref, **SCARCHES_SCVI)
    vae.train(max_epochs=epochs, enable_progress_bar=False)
    lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=UNKNOWN)
    lvae.train(
        max_epochs=SCANVI_EPOCHS if epochs is None else max(epochs // 10, 2),
        n_samples_per_label=SCANVI_SAMPLES_PER_LABEL,
        enable_progress_bar=False,
    )
    q = query.copy()
    q.obs[labels_key] = UNKNOWN
    scvi.model.SCANVI.prepare_query_anndata(q, lvae)
    qm = scvi.model.SCANVI.load_query_data(q, lvae)
    qm.train(
        max_epochs=SCANVI_QUERY_EPOCHS if epochs is None else max(epochs // 4, 5),
        plan_kwargs={"weight_decay": 0.0},
        check_val_every_n_epoch=10,
        enable_progress_bar=False,
    )
    soft = qm.predict(q, soft=True)
    return soft, np.asarray(qm.get_latent_representation(q))


# ------------------------------------------------------------------- scARKIDS
def train_scarkids(
    adata,
    labels_key: str | None,
    n_labels: int,
    seed: int,
    quick: bool,
    train_kwargs: dict | None = None,
    **model_kwargs,
):
    """scARKIDS on a copy of ``adata`` at its defaults (``model_kwargs``, e.g. ``prior``, go
    to the model, ``train_kwargs``, e.g. ``classification_weight``, to ``train``); returns
    ``(model, the copy it was set up on)``."""
    from scarkids import SCARKIDS

    a = adata.copy()  # the setup lives in a.uns: one copy per model
    SCARKIDS.setup_anndata(
        a, batch_key="batch", labels_key=labels_key, layer="counts", unlabeled_category=UNKNOWN
    )
    model = SCARKIDS(a, n_latent=N_LATENT, n_labels=n_labels, seed=seed, **model_kwargs)
    model.train(
        max_epochs=QUICK_EPOCHS if quick else None,
        seed=seed,
        progress_bar=False,
        **(train_kwargs or {}),
    )
    return model, a


def n_epochs(history) -> int:
    """Epochs actually run (early stopping may end a run before its maximum)."""
    return max((len(v) for v in dict(history).values()), default=0)


# --------------------------------------------------------------------- scores
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


# ----------------------------------------------------------------- provenance
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

    def git(*cmd: str) -> str:
        run = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True)
        return run.stdout.strip() if run.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    # "XY path" lines; git() strips the output, so the first line may lose its leading space
    status = git("status", "--porcelain", "-uno", "src").splitlines()
    changed = [line.split(maxsplit=1)[1] for line in status]
    return commit + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def machine(threads: int | None = 2, device: str = "cpu") -> str:
    """The CPU and its cores, and ``threads``, torch's CPU threads (2 by default, as
    ``integration.py`` sets them; None leaves them out); with ``device="cuda"``, the GPU."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch_threads = "" if threads is None else f", torch threads {threads}"
    gpu = "no GPU used"
    if device.startswith("cuda"):
        import torch

        gpu = f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{n} CPU cores ({cpu}){torch_threads}, {gpu}"


def provenance(threads: int | None = None, device: str = "cpu") -> dict:
    """Commit, command line, versions, machine and time of this run: the fields every
    recorded row carries (``row.update(provenance(...))``)."""
    return {
        "commit": git_state(),
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "versions": versions(),
        "machine": machine(threads, device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# -------------------------------------------------------------- runs and tables
def part_parser(doc: str, datasets: str) -> argparse.ArgumentParser:
    """The options of a benchmark that runs in parts: ``--datasets``, ``--seed``,
    ``--threads`` and ``--table`` (only rebuild the table from the recorded runs)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--datasets", default=datasets)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    table_option(parser)
    return parser


def table_option(parser: argparse.ArgumentParser) -> None:
    """``--table``: only rebuild the table(s) from the recorded runs (no data, no training)."""
    parser.add_argument(
        "--table", action="store_true", help="only rebuild the table(s) from the recorded runs"
    )


def ready_to_run(args) -> bool:
    """Whether to train: not with ``--table``, nor without the shared datasets (said so);
    sets torch's CPU threads."""
    if args.table or not data_or_skip():
        return False
    import torch

    torch.set_num_threads(args.threads)
    return True


def runs_file(bench: str, root: Path = RESULTS) -> Path:
    """``<root>/<bench>/runs.jsonl``: every recorded run (or part of a run) of a benchmark."""
    return root / bench / "runs.jsonl"


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


def drop_runs(path: Path, **match) -> None:
    """Remove the rows whose fields equal every value of ``match`` (a rerun that replaces
    all the rows of, say, one dataset and seed, some of which it may not write again)."""
    if path.exists():
        rows = [r for r in read_runs(path) if any(r.get(k) != v for k, v in match.items())]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def short_commit(provenance: dict) -> str:
    """A record's commit for a table: the short hash, ``+`` when package files differed."""
    commit = provenance["commit"]
    return commit.split(" ")[0] + ("+" if "uncommitted" in commit else "")


def code_label(row: dict) -> str:
    """A row's commit for a table (:func:`short_commit`); for a row migrated from a results
    file that did not record its commit, the commit that last changed that file, said so."""
    label = short_commit(row)
    if "commit unknown" in (row.get("provenance") or ""):
        label = f"unknown (file last changed in {label})"
    return label


def fmt(v, digits: int = 3) -> str:
    return "—" if pd.isna(v) else f"{v:.{digits}f}"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def median(values) -> float:
    """The median of the values that are numbers (NaN when there are none)."""
    v = [float(x) for x in values if isinstance(x, (int, float)) and not pd.isna(x)]
    return float(np.median(v)) if v else float("nan")


def write_table(path: Path, lines: list[str]) -> Path:
    """Write a table built from the recorded runs to ``path`` (``<bench>.md``).

    The hand-written notes of ``<bench>/notes.md`` (what the rows cannot say: how old runs
    were recovered, what a run was for), when that file exists, go after the title (the
    first two lines), so that a rebuild keeps them.
    """
    notes = path.with_suffix("") / "notes.md"
    if notes.exists():
        lines = [*lines[:2], notes.read_text().rstrip("\n"), "", *lines[2:]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    where = path.resolve()
    log(f"wrote {where.relative_to(REPO) if where.is_relative_to(REPO) else where}")
    return path


def runs_section(rows: list[dict]) -> list[str]:
    """The runs behind a table's rows, one line each (command, commit, machine, dates and,
    for a row migrated from an older results file, where it came from), then each
    distinct set of package versions."""
    runs: dict[tuple, list[str]] = {}
    for r in rows:
        key = (
            r.get("command") or "command not recorded",
            r.get("commit") or "unknown",
            r.get("machine") or "machine not recorded",
            r.get("provenance") or "",
            r.get("note") or "",
        )
        runs.setdefault(key, []).append(r.get("date") or "")
    lines = ["Runs behind these rows (oldest first):", ""]
    for (command, commit, where, migrated, note), dates in sorted(
        runs.items(), key=lambda kv: min(kv[1])
    ):
        known = sorted(d for d in dates if d)
        when = "date not recorded" if not known else known[0]
        if len(set(known)) > 1:
            when += f" to {known[-1]}"
        extra = "".join(f"; {x}" for x in (migrated, note) if x)
        lines.append(f"- `{command}` at {commit}; {where}; {when}{extra}")
    seen = {json.dumps(r["versions"]) for r in rows if r.get("versions")}
    for v in sorted(seen):
        lines.append("")
        lines.append("Versions: " + ", ".join(f"{k} {x}" for k, x in json.loads(v).items()) + ".")
    return lines
