"""Other `unknown` thresholds, scored on the leave-one-type-out splits' per-cell scores.

    python benchmarks/uncertainty.py --methods scARKIDS --dump /tmp/unknown_scores
    python benchmarks/unknown_rules.py /tmp/unknown_scores
    python benchmarks/unknown_rules.py --table

For each novelty quantile of the reference cells' novelty, with and without the raise by
the query batch's shift (``SCARKIDS.novelty_threshold``), and the low-probability rule
(0.5) in batches that sit on the reference (shift at most 1, as the default): the mean share
of the left-out type's cells and of known cells flagged, per dataset, and the worst split's
known share. Prints a markdown table (docs/benchmarks/uncertainty.md quotes it).

Every (dataset, quantile, raise) is a row of ``benchmarks/results/unknown_rules/runs.jsonl``
(a rerun replaces its row), and ``benchmarks/results/unknown_rules.md`` is rebuilt from all
rows (``--table`` only rebuilds it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import harness
import numpy as np

ALIGNED_SHIFT, CONFIDENCE = 1.0, 0.5
QUANTILES = (0.99, 0.98, 0.975, 0.95)
RUNS = harness.runs_file("unknown_rules")
TABLE = harness.RESULTS / "unknown_rules.md"
KEY = ("dataset", "quantile", "raised")


def flags(d, quantile: float, raise_by_shift: bool) -> np.ndarray:
    """The cells flagged ``unknown`` in one split's dump under one rule."""
    q, ref, p = d["novelty"], d["reference"], d["probs"].max(1)
    q10, q50 = np.quantile(ref, [0.1, 0.5])
    shift = (np.quantile(q, 0.1) - q10) / max(q50 - q10, 1e-6)
    if shift > ALIGNED_SHIFT:  # off the reference: no call
        return np.zeros(q.shape, dtype=bool)
    threshold = np.quantile(ref, quantile) + (
        max(0.0, shift) * (q50 - q10) if raise_by_shift else 0
    )
    return (q > threshold) | (p < CONFIDENCE)


def table_lines(rows: list[dict]) -> list[str]:
    """One line per rule, a column per dataset: left-out / known share (worst split)."""
    datasets = sorted({r["dataset"] for r in rows})
    header = ["novelty quantile, raise by the batch shift"]
    header += [f"{ds} left-out / known (worst split)" for ds in datasets]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_rule = {(r["quantile"], r["raised"], r["dataset"]): r for r in rows}
    for quantile in sorted({r["quantile"] for r in rows}, reverse=True):
        for raised in (True, False):
            cells = [f"{quantile}, {'raised' if raised else 'not raised'}"]
            for ds in datasets:
                r = by_rule.get((quantile, raised, ds))
                cells.append("-" if r is None else
                             f"{r['left_out']:.3f} / {r['known']:.3f} ({r['worst_known']:.3f})")  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_table() -> Path:
    """unknown_rules.md from every recorded row."""
    rows = harness.read_runs(RUNS)
    lines = [
        "# Other `unknown` thresholds (`python benchmarks/unknown_rules.py`)",
        "",
        "On the leave-one-type-out splits' per-cell scores dumped by `uncertainty.py --dump`: "
        "the mean share of the left-out type's cells and of known cells flagged, and the worst "
        "split's known share.",
        "",
        *table_lines(rows),
        "",
        *harness.runs_section(rows),
    ]
    return harness.write_table(TABLE, lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default="/tmp/unknown_scores")
    harness.table_option(parser)
    args = parser.parse_args(argv)
    if args.table:
        if not RUNS.exists():
            print(f"{RUNS} not found: no runs recorded yet")
            return 0
        print(write_table().read_text())
        return 0
    files = sorted(Path(args.folder).glob("*.npz"))
    if not files:
        print(f"no .npz files in {args.folder}: run uncertainty.py with --dump {args.folder} first")
        return 1
    prov = harness.provenance()
    rows = []
    for ds in sorted({f.name.split("_")[0] for f in files}):
        dumps = [np.load(f) for f in files if f.name.split("_")[0] == ds]
        for quantile in QUANTILES:
            for raised in (True, False):
                shares = []
                for d in dumps:
                    flagged, new = flags(d, quantile, raised), d["is_new"]
                    shares.append((flagged[new].mean(), flagged[~new].mean()))
                left_out, known = np.mean(shares, axis=0)
                rows.append(dict(dataset=ds, quantile=quantile, raised=raised,
                                 left_out=float(left_out), known=float(known),
                                 worst_known=float(max(s[1] for s in shares)),
                                 n_splits=len(dumps), dumps=args.folder))  # fmt: skip
    for row in rows:
        harness.record_run(RUNS, {**row, **prov}, KEY)
    print("\n".join(table_lines(rows)))
    write_table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
