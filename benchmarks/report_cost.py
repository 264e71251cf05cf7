"""What report.html adds to an inference run: ``scarkids infer`` with and without it.

    python benchmarks/report_cost.py [--cells 100000] [--threads 2] [--max_cells 10000]

On the simulated counts of ``speed.py`` (2000 genes, 4 batches, 8 cell types), trains a
model for ``--epochs`` epochs through the command line, then runs ``scarkids infer`` twice in
fresh processes on ``--threads`` threads: with ``report: false`` and with the report (UMAPs
on at most ``--max_cells`` cells). Each is timed as a whole (wall clock of the process, the
imports and numba's compilation of UMAP included); the report's own time is read from its
log line (``Report: ... (12.3 s)``). The issue's budget: the report adds at most 15% at
100k cells on 2 CPU threads. Prints a table and writes it to
benchmarks/results/report_cost_<cells>.md.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from harness import RESULTS, provenance
from speed import data_file

SCARKIDS = [sys.executable, "-m", "scarkids"]


def config(work: Path, data: Path, *, report: bool, max_cells: int, epochs: int) -> Path:
    path = work / ("with_report.yaml" if report else "no_report.yaml")
    cfg = {
        "global": {"n_genes": None, "n_cell_types": 8},
        "data": {"train_data_path": str(data), "test_data_path": str(data), "val_fraction": 0.1},
        "training": {
            "n_epochs": epochs,
            "device": "cpu",
            "seed": 0,
            "checkpoint_dir": str(work / "checkpoints"),
            "log_dir": str(work / "logs"),
        },
        "inference": {"device": "cpu", "output_dir": str(work / "results")},
        "report": {"enabled": report, "max_cells": max_cells},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def timed(argv: list[str], threads: int) -> tuple[float, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["NUMBA_NUM_THREADS"] = str(threads)
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1, help="training epochs (the model is a prop)")
    p.add_argument("--max_cells", type=int, default=10_000, help="report.max_cells")
    p.add_argument("--repeats", type=int, default=3, help="runs of each, alternating; medians")
    args = p.parse_args()
    data = data_file(args.cells, 2000, seed=0)
    with tempfile.TemporaryDirectory(prefix="scarkids_report_cost_") as tmp:
        work = Path(tmp)
        kw = {"max_cells": args.max_cells, "epochs": args.epochs}
        plain = config(work, data, report=False, **kw)
        with_report = config(work, data, report=True, **kw)
        train_s, _ = timed([*SCARKIDS, "train", "--config", str(plain)], args.threads)
        runs: dict[str, list] = {"inference, report: false": [], "inference + report": []}
        for _ in range(args.repeats):
            for name, cfg in zip(runs, (plain, with_report), strict=True):
                seconds, log = timed([*SCARKIDS, "infer", "--config", str(cfg)], args.threads)
                found = re.search(r"Report: \S+ \(([0-9.]+) s\)", log)
                runs[name].append((seconds, float(found.group(1)) if found else None))
    rows = []
    for name, got in runs.items():
        report_s = [r for _, r in got if r is not None]
        rows.append(
            (name, float(np.median([w for w, _ in got])),
             float(np.median(report_s)) if report_s else None)
        )  # fmt: skip
    base = rows[0][1]
    prov = provenance(args.threads)
    lines = [
        f"`{prov['command']}` at {prov['commit']}; {prov['machine']}; "
        + ", ".join(f"{k} {v}" for k, v in prov["versions"].items())
        + f"; training ({args.epochs} epoch): {train_s:.1f} s. Medians of {args.repeats} "
        "runs of each, alternating.",
        "",
        "| run | wall s | report s (its log line) | vs inference without the report |",
        "|---|---|---|---|",
    ]
    for name, seconds, report_s in rows:
        share = f"+{(seconds - base) / base:.1%}" if seconds != base else "-"
        shown = f"{report_s:.1f}" if report_s is not None else "-"
        lines.append(f"| {name} | {seconds:.1f} | {shown} | {share} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = RESULTS / f"report_cost_{args.cells}.md"
    out.write_text(text)
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
