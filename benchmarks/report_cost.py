"""What report.html adds to an inference run: ``scarkids infer`` with and without it.

    python benchmarks/report_cost.py [--cells 100000] [--threads 2] [--max_cells 10000]

On the simulated counts of ``speed.py`` (2000 genes, 4 batches, 8 cell types), trains a
model for ``--epochs`` epochs through the command line, then runs ``scarkids infer`` twice in
fresh processes on ``--threads`` threads: with ``report: false`` and with the report (UMAPs
on at most ``--max_cells`` cells). Each is timed as a whole (wall clock of the process, the
imports and numba's compilation of UMAP included); the report's own time is read from its
log line (``Report: ... (12.3 s)``). The issue's budget: the report adds at most 15% at
100k cells on 2 CPU threads.

Every inference run is a row of ``benchmarks/results/report_cost/runs.jsonl`` (``--repeats``
of each, alternating; a rerun at the same commit replaces its rows), and
``benchmarks/results/report_cost.md`` is rebuilt from all rows: per cells, report size,
machine and commit, the median wall time of each and the report's share computed from the
medians (``--table`` only rebuilds it).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
import yaml
from speed import data_file

SCARKIDS = [sys.executable, "-m", "scarkids"]
RUNS = harness.runs_file("report_cost")
TABLE = harness.RESULTS / "report_cost.md"
KEY = ("cells", "max_cells", "epochs", "threads", "run", "commit", "repeat")
RUN_NAMES = ("inference, report: false", "inference + report")


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


def write_table() -> Path:
    """report_cost.md from every recorded run: per cells, report size, machine and commit,
    the median of each run's wall time and of the report's own time."""
    rows = harness.read_runs(RUNS)
    lines = [
        "# What report.html adds to `scarkids infer` (`python benchmarks/report_cost.py`)",
        "",
        "Simulated counts (speed.py's), `scarkids infer` in fresh processes with and without "
        "the report, timed as a whole; medians over the recorded runs; the share is the "
        "difference of the medians over the median without the report.",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["cells"], r["max_cells"], r.get("machine"), harness.code_label(r))
        groups.setdefault(key, []).append(r)
    for (cells, max_cells, _, code), runs in groups.items():
        train = harness.median(r.get("train_s") for r in runs)
        lines += ["", f"## {cells:,} cells, report on at most {max_cells:,}, code {code}", ""]
        lines += [f"Training ({runs[0]['epochs']} epoch): {train:.1f} s.", ""]
        wall = {n: harness.median(r["wall_s"] for r in runs if r["run"] == n) for n in RUN_NAMES}
        body = []
        for name in RUN_NAMES:
            got = [r for r in runs if r["run"] == name]
            report = harness.median(r.get("report_s") for r in got)
            base = wall[RUN_NAMES[0]]
            share = "-" if name == RUN_NAMES[0] else f"+{(wall[name] - base) / base:.1%}"
            shown = "-" if math.isnan(report) else f"{report:.1f}"  # NaN: no report line
            body.append([name, str(sum(r.get("repeats", 1) for r in got)), f"{wall[name]:.1f}",
                         shown, share])  # fmt: skip
        head = ["run", "runs", "wall s", "report s (its log line)"]
        lines += harness.md_table([*head, "vs inference without the report"], body)
        lines += ["", *harness.runs_section(runs)]
    return harness.write_table(TABLE, lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1, help="training epochs (the model is a prop)")
    p.add_argument("--max_cells", type=int, default=10_000, help="report.max_cells")
    p.add_argument("--repeats", type=int, default=3, help="runs of each, alternating; medians")
    harness.table_option(p)
    args = p.parse_args()
    if args.table:
        print(write_table().read_text())
        return
    data = data_file(args.cells, 2000, seed=0)
    prov = harness.provenance(args.threads)
    common = dict(cells=args.cells, max_cells=args.max_cells, epochs=args.epochs,
                  threads=args.threads)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="scarkids_report_cost_") as tmp:
        work = Path(tmp)
        kw = {"max_cells": args.max_cells, "epochs": args.epochs}
        plain = config(work, data, report=False, **kw)
        with_report = config(work, data, report=True, **kw)
        train_s, _ = timed([*SCARKIDS, "train", "--config", str(plain)], args.threads)
        for repeat in range(args.repeats):
            for name, cfg in zip(RUN_NAMES, (plain, with_report), strict=True):
                seconds, log = timed([*SCARKIDS, "infer", "--config", str(cfg)], args.threads)
                found = re.search(r"Report: \S+ \(([0-9.]+) s\)", log)
                row = dict(common, run=name, repeat=repeat, wall_s=seconds, train_s=train_s)
                row["report_s"] = float(found.group(1)) if found else None
                harness.record_run(RUNS, {**row, **prov}, KEY)
    print(write_table().read_text())


if __name__ == "__main__":
    main()
