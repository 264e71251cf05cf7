"""Label transfer through the seed's sessions, with default settings, against scANVI + scArches.

    python benchmarks/session_mapping.py [--datasets kang,cellbench] [--seed 0]
        [--variant default] [--set section.key=value ...] [--methods scARKIDS,scANVI]
    python benchmarks/session_mapping.py --table

What a new user does (the seed's Option B): session 1 trains supervised on the reference
(``examples/sess1.yaml`` with the paths filled in, 60 epochs), session 2 unsupervised on the
query with ``resume_from`` session 1 (``examples/sess2.yaml``, 30 epochs), then ``--mode
inference`` on the query cells. Everything else is the shipped default. Splits:

- kang: reference = ctrl, query = stim (every query type is in the reference);
- cellbench: reference = the three CEL-seq2_5cl plates, query = Drop-seq_3cl.

Scored on the query's ``cell_type_predictions.csv``: accuracy of ``predicted_label`` (an
``unknown`` call counts as wrong) and of ``top_label``, the share of cells called
``unknown`` and by which rule. scANVI + scArches (``harness.scanvi_mapping``, scvi-tools'
recommended mapping settings) runs on the same split in the same run; its accuracy is of its
argmax (it has no reject option).

``--set`` changes config keys of both sessions (e.g. ``encoder.use_batch=true``) and
``--variant`` names that row. Rows go to ``benchmarks/results/session_mapping/runs.jsonl``
(a rerun replaces its row), the table to ``benchmarks/results/session_mapping.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
import numpy as np
import pandas as pd
import yaml
from harness import REPO, RESULTS, log

RUNS = RESULTS / "session_mapping" / "runs.jsonl"
TABLE = RESULTS / "session_mapping.md"
KEY = ("dataset", "method", "variant", "seed")
EPOCHS = (60, 30)


def split(name: str):
    """``(reference, query)`` AnnData of raw counts."""
    import scanpy as sc

    if name == "kang":
        adata = sc.read_h5ad(harness.DATA_DIR / "kang_ifnb_labeled.h5ad")
        is_query = (adata.obs["batch"] == "stim").to_numpy()
    elif name == "cellbench":
        adata = sc.read_h5ad(harness.DATA_DIR / "cellbench_5batch.h5ad")
        is_ref = adata.obs["batch"].str.startswith("CEL-seq2_5cl").to_numpy()
        keep = is_ref | (adata.obs["batch"] == "Drop-seq_3cl").to_numpy()
        adata = adata[keep].copy()
        is_query = ~is_ref[keep]
    else:
        raise SystemExit(f"unknown dataset {name!r}: kang or cellbench")
    adata.obs = adata.obs[["batch", "cell_type"]].copy()
    for key in ("batch", "cell_type"):
        adata.obs[key] = adata.obs[key].astype(str).astype("category")
    return adata[~is_query].copy(), adata[is_query].copy()


def _set(cfg: dict, assignments: list[str]) -> None:
    for item in assignments:
        path, _, value = item.partition("=")
        section, _, key = path.partition(".")
        cfg.setdefault(section, {})[key] = yaml.safe_load(value)


def run_scarkids(ref, query, work: Path, seed: int, assignments: list[str]) -> dict:
    """The seed's two sessions and inference through ``main.py``; the query's predictions."""
    ref.write_h5ad(work / "session_1.h5ad")
    query.write_h5ad(work / "session_2.h5ad")
    configs = []
    for k, epochs in zip((1, 2), EPOCHS, strict=True):
        cfg = yaml.safe_load((REPO / "examples" / f"sess{k}.yaml").read_text())
        cfg["data"]["train_data_path"] = str(work / f"session_{k}.h5ad")
        cfg["data"]["test_data_path"] = str(work / "session_2.h5ad")
        cfg["training"]["n_epochs"] = epochs
        cfg["training"]["checkpoint_dir"] = str(work / f"checkpoints/session_{k}")
        cfg["training"]["output_checkpoint"] = str(work / f"checkpoints/session_{k}_best.pt")
        cfg["training"]["log_dir"] = str(work / "logs")
        if k == 2:
            cfg["training"]["resume_from"] = str(work / "checkpoints/session_1_best.pt")
        _set(cfg, assignments)
        path = work / f"sess{k}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        configs.append(path)
    main = [sys.executable, str(REPO / "main.py")]
    t0 = time.perf_counter()
    for path in configs:
        subprocess.run(
            [*main, "--mode", "train", "--config", str(path), "--seed", "42"], check=True
        )
    out = work / "results"
    infer = [*main, "--mode", "inference", "--config", str(configs[1])]
    infer += ["--checkpoint", str(work / "checkpoints/session_2_best.pt")]
    infer += ["--data_path", str(work / "session_2.h5ad"), "--output_dir", str(out)]
    run = subprocess.run(infer, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    print(run.stderr[-3000:] + run.stdout[-3000:])
    pred = pd.read_csv(out / "cell_type_predictions.csv", index_col="cell_id")
    pred = pred.loc[query.obs_names.astype(str)]
    truth = query.obs["cell_type"].astype(str).to_numpy()
    unknown = pred["unknown"].to_numpy(dtype=bool)
    row = {
        "accuracy predicted_label": float(np.mean(pred["predicted_label"].to_numpy() == truth)),
        "accuracy top_label": float(np.mean(pred["top_label"].to_numpy() == truth)),
        "unknown": float(unknown.mean()),
        "time s": seconds,
        "log": [line for line in (run.stderr + run.stdout).splitlines() if "nknown" in line],
    }
    if "unknown_reason" in pred:
        reason = pred["unknown_reason"].fillna("").astype(str).to_numpy()
        for r in ("novelty", "probability"):
            row[f"unknown by {r}"] = float(np.mean([r in x for x in reason]))
    return row


def run_scanvi(ref, query, seed: int) -> dict:
    t0 = time.perf_counter()
    soft, _ = harness.scanvi_mapping(ref, query, seed=seed)
    truth = query.obs["cell_type"].astype(str).to_numpy()
    pred = soft.columns.to_numpy()[soft.to_numpy().argmax(1)]
    acc = float(np.mean(pred == truth))
    return {
        "accuracy predicted_label": acc,
        "accuracy top_label": acc,
        "unknown": 0.0,
        "time s": time.perf_counter() - t0,
    }


def write_table() -> None:
    rows = harness.read_runs(RUNS)
    cols = ["accuracy predicted_label", "accuracy top_label", "unknown"]
    cols += ["unknown by novelty", "unknown by probability", "time s"]
    lines = ["# Label transfer through the seed's sessions (`benchmarks/session_mapping.py`)", ""]
    lines += ["\n\n".join(__doc__.split("\n\n")[2:5]).strip(), ""]
    for dataset in sorted({r["dataset"] for r in rows}):
        lines += [f"## {dataset}", ""]
        body = []
        for r in sorted(
            (r for r in rows if r["dataset"] == dataset),
            key=lambda r: (r["method"], r["variant"], r["seed"]),
        ):
            cells = [r["method"], r["variant"], str(r["seed"])]
            cells += [f"{r[c]:.3f}" if isinstance(r.get(c), float) else "-" for c in cols]
            cells += [r["commit"]]
            body.append(cells)
        lines += harness.md_table(["method", "variant", "seed", *cols, "commit"], body)
        lines.append("")
    lines += ["Commands (one per row group):", ""]
    for cmd in sorted({r["command"] for r in rows}):
        lines.append(f"- `{cmd}`")
    TABLE.write_text("\n".join(lines) + "\n")
    log(f"wrote {TABLE}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="kang,cellbench")
    parser.add_argument("--methods", default="scARKIDS,scANVI")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default="default")
    parser.add_argument("--set", action="append", default=[], dest="assignments")
    parser.add_argument("--table", action="store_true", help="only rebuild the table")
    parser.add_argument(
        "--workdir", help="keep the sessions' files here (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    if not args.table and harness.data_or_skip():
        for dataset in args.datasets.split(","):
            ref, query = split(dataset)
            for method in args.methods.split(","):
                log(f"{dataset}: {method} ({args.variant})")
                if method == "scARKIDS":
                    with tempfile.TemporaryDirectory() as tmp:
                        work = Path(args.workdir or tmp) / dataset
                        work.mkdir(parents=True, exist_ok=True)
                        row = run_scarkids(ref, query, work, args.seed, args.assignments)
                    variant = args.variant
                else:
                    row = run_scanvi(ref, query, args.seed)
                    variant = "scArches recipe"
                row.update(dataset=dataset, method=method, variant=variant, seed=args.seed)
                row.update(harness.provenance(), settings=args.assignments)
                harness.record_run(RUNS, row, KEY)
                log(
                    f"  predicted_label {row['accuracy predicted_label']:.3f}, "
                    f"top_label {row['accuracy top_label']:.3f}, unknown {row['unknown']:.3f}"
                )
                write_table()
    write_table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
