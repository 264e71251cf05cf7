"""Seed-to-seed spread of the integration benchmark: is a difference bigger than the noise?

    python benchmarks/integration.py --datasets cellbench --seed 1 --out benchmarks/results/seed1
    python benchmarks/integration.py --datasets cellbench --seed 2 --out benchmarks/results/seed2
    python benchmarks/seed_spread.py --dataset cellbench \\
        --runs benchmarks/results,benchmarks/results/seed1,benchmarks/results/seed2

Each ``--runs`` folder is an ``integration.py --out`` folder (one seed each: the seed changes
the PCA, Harmony, scVI/scANVI and scARKIDS initialisation and minibatches, and the held-out
cells). Prints, per method, the scIB Total of every seed with its mean and standard
deviation, and the paired difference of two methods (``--compare``) per seed; writes the
table to ``benchmarks/results/<dataset>_seeds.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"


def load_runs(dataset: str, folders: list[Path]) -> pd.DataFrame:
    """scIB Total per (method, seed) from the given integration.py output folders."""
    columns = {}
    for folder in folders:
        table = pd.read_csv(folder / f"{dataset}.tsv", sep="\t", index_col=0)
        runs = json.loads((folder / f"{dataset}.json").read_text())["runs"]
        seed = runs[-1]["seed"]
        if seed in columns:
            raise SystemExit(f"{folder}: seed {seed} appears twice in --runs")
        columns[seed] = table["Total"]
    return pd.DataFrame(columns).sort_index(axis=1)


def spread_table(totals: pd.DataFrame, compare: tuple[str, str]) -> str:
    seeds = list(totals.columns)
    head = ["method", *[f"seed {s}" for s in seeds], "mean", "sd"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, row in totals.iterrows():
        values = [f"{v:.4f}" if pd.notna(v) else "-" for v in row]
        sd = f"{row.std():.4f}" if row.notna().sum() > 1 else "-"
        lines.append(f"| {method} | " + " | ".join(values) + f" | {row.mean():.4f} | {sd} |")
    a, b = compare
    if a in totals.index and b in totals.index:
        diff = totals.loc[a] - totals.loc[b]
        values = [f"{v:+.4f}" for v in diff]
        lines.append(
            f"| {a} − {b} | " + " | ".join(values) + f" | {diff.mean():+.4f} | {diff.std():.4f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="cellbench")
    p.add_argument("--runs", required=True, help="comma-separated integration.py --out folders")
    p.add_argument("--compare", default="scARKIDS-sup,scANVI", help="two methods: A,B (A − B)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    folders = [Path(f) for f in args.runs.split(",")]
    totals = load_runs(args.dataset, folders)
    compare = tuple(args.compare.split(","))
    text = (
        f"scIB Total (scib-metrics, unscaled) on {args.dataset} per seed "
        f"(`python benchmarks/seed_spread.py --dataset {args.dataset} --runs {args.runs}`):\n\n"
        + spread_table(totals, compare)
        + "\n"
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.dataset}_seeds.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
